//! `rekey:edge/operator`: the record's fleet state for an operator (never its
//! keys), and clearing a refresh mark once the operator has checked with the
//! provider that the stored refresh token was not spent. The component sets
//! and honours the mark; clearing it is the operator's decision, made here
//! as an edit of the record under the same compare-and-swap the component
//! uses, so it cannot land over a write it did not see.

use crate::exports::rekey::edge::operator::{ClearError, FleetState as State, Guest};
use crate::exports::rekey::oauth2::types::CredentialRecord;
use crate::{Effects, call, store};

impl Guest for Effects {
    fn read_state() -> Result<State, String> {
        let call = call()?;
        let r = store::read(&call.store)?;
        Ok(State {
            version: r.version,
            has_keys: r.data.keys.is_some(),
            lease: r.data.lease,
            refresh_mark: r.data.refresh_mark,
            dead_grant: r.data.dead_grant,
        })
    }

    fn clear_refresh_mark(at_ms: u64) -> Result<u64, ClearError> {
        let call = call().map_err(ClearError::Failed)?;
        let r = store::read(&call.store).map_err(ClearError::Failed)?;
        let Some(mark) = r.data.refresh_mark.clone() else {
            return Err(ClearError::NoMark);
        };
        if mark.at_ms != at_ms {
            return Err(ClearError::OtherMark(mark));
        }
        let now_ms = rekey_edge_rt::time::unix_ms();
        if let Some(lease) = &r.data.lease
            && lease.until_ms > now_ms
        {
            return Err(ClearError::LeaseHeld(lease.until_ms));
        }
        // The lease can lapse while its holder's token request still runs
        // (the timeouts may add up to more than the TTL): clearing the mark
        // then would let the next call spend the token that request may
        // yet rotate, and make its keys write fail. A holder renews its
        // lease before each token request, so a request began before the
        // lease's end (any lease: one taken over began after it lapsed).
        let s = &call.settings;
        let began_by = r
            .data
            .lease
            .as_ref()
            .map_or(at_ms, |l| l.until_ms.max(at_ms));
        let running_until = began_by
            .saturating_add(s.connect_timeout_ms)
            .saturating_add(s.first_byte_timeout_ms)
            .saturating_add(s.between_bytes_timeout_ms);
        if running_until > now_ms {
            return Err(ClearError::MayBeLive(running_until));
        }
        let data = CredentialRecord {
            refresh_mark: None,
            lease: None,
            ..r.data
        };
        match store::write(&call.store, r.version, &data, now_ms / 1000) {
            Ok(v) => {
                crate::log(&alloc::format!(
                    "an operator cleared the refresh mark set at {at_ms} (record version {v})"
                ));
                Ok(v)
            }
            Err(crate::exports::rekey::oauth2::types::WriteError::Conflict) => Err(
                ClearError::Failed("the record changed meanwhile: look again".into()),
            ),
            Err(
                crate::exports::rekey::oauth2::types::WriteError::Failed(m)
                | crate::exports::rekey::oauth2::types::WriteError::Unknown(m),
            ) => Err(ClearError::Failed(m)),
        }
    }
}

use alloc::string::String;
