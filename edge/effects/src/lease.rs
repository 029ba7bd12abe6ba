//! One call's host side: the refresh lease, the in-flight marker and the
//! checks on what may leave, over any `Store`.

use crate::exports::rekey::oauth2::types::{Lease, Request, Response, TransportError};
use crate::settings::Settings;
use crate::store::Store;
use crate::target::Target;
use crate::{http, log};
use alloc::format;
use alloc::string::{String, ToString};
use rekey_edge_rt::time;

pub struct Call<S: Store> {
    store: S,
    settings: Settings,
    /// This call's lease owner id (random).
    owner: String,
    held: bool,
    /// The fingerprint of the keys stored when the lease was taken: the
    /// in-flight marker names it, and a save replaces only those keys.
    acquired_fingerprint: Option<String>,
    /// This call wrote the in-flight marker.
    marked: bool,
    /// A token request of this lease may have been processed without its
    /// answer arriving: the marker stays until keys are saved.
    ambiguous: bool,
}

impl<S: Store> Call<S> {
    pub fn new(store: S, settings: Settings) -> Self {
        let owner = format!(
            "{:016x}{:016x}",
            crate::wasi::random::random::get_random_u64(),
            crate::wasi::random::random::get_random_u64()
        );
        Call {
            store,
            settings,
            owner,
            held: false,
            acquired_fingerprint: None,
            marked: false,
            ambiguous: false,
        }
    }

    pub fn load(&self) -> Result<Option<String>, String> {
        self.store.load().map_err(|e| e.0)
    }

    /// Waits (bounded) for the lease, then reports the keys stored now and
    /// whether a previous holder's token request is unaccounted for.
    pub fn acquire(&mut self) -> Result<Lease, String> {
        if !self.held {
            let deadline = time::mono_ms() + self.settings.lease_wait_ms;
            let ttl = self.settings.lease_ttl_ms;
            while !self
                .store
                .try_lease(&self.owner, time::unix_ms(), ttl)
                .map_err(|e| e.0)?
            {
                if time::mono_ms() >= deadline {
                    return Err(format!(
                        "the refresh lease stayed taken for {} ms",
                        self.settings.lease_wait_ms
                    ));
                }
                time::sleep_ms(20);
            }
            self.held = true;
        }
        let keys = self.load()?;
        let fingerprint = fingerprint(keys.as_deref());
        let in_doubt = match self.store.in_flight().map_err(|e| e.0)? {
            // The keys changed since the marker was written: its request's
            // result was stored (the holder died before clearing it).
            Some(marked) if marked != fingerprint => {
                let _ = self.store.clear_in_flight();
                false
            }
            Some(_) => {
                log(
                    "refresh in doubt: a previous lease holder sent a token request and stored no result",
                );
                true
            }
            None => false,
        };
        self.acquired_fingerprint = Some(fingerprint);
        Ok(Lease { keys, in_doubt })
    }

    pub fn release(&mut self) {
        if self.held {
            if let Err(e) = self.store.release_lease(&self.owner) {
                log(&format!("releasing the lease failed: {e}"));
            }
            self.held = false;
        }
    }

    /// Saves the keys durably, replacing only the keys the lease was taken
    /// over (a holder whose lease ran out must not overwrite newer keys).
    pub fn save_keys(&mut self, keys: &str) -> Result<(), String> {
        if let Some(acquired) = &self.acquired_fingerprint {
            let now = fingerprint(self.load()?.as_deref());
            if &now != acquired {
                self.release();
                return Err(
                    "the stored keys changed while this refresh ran; not overwritten".into(),
                );
            }
        }
        self.store.save(keys).map_err(|e| e.0)?;
        // Once the keys are durable the marker is accounted for; a marker left
        // behind names keys no longer stored, so a successor ignores it.
        if let Err(e) = self.store.clear_in_flight() {
            log(&format!("clearing the in-flight marker failed: {e}"));
        }
        self.marked = false;
        self.release();
        Ok(())
    }

    pub fn http_send(&mut self, req: Request) -> Result<Response, TransportError> {
        let target =
            Target::parse(&req.url).map_err(|e| TransportError::InvalidRequest(e.into()))?;
        if !target.https && !target.is_loopback() {
            return Err(TransportError::Refused(
                "plain http carries credentials only to loopback".into(),
            ));
        }
        let token_request = target.same_endpoint(&self.settings.token_url);
        if !token_request && !target.is_under(&self.settings.upstream) {
            return Err(TransportError::Refused(
                "the URL is neither the token endpoint nor under the configured upstream".into(),
            ));
        }
        if token_request {
            self.before_token_request()?;
        }
        let result = http::send(&target, req, &self.settings);
        if token_request {
            self.after_token_request(&result);
        }
        result
    }

    /// A refresh token leaves only under a live lease, with the marker down.
    fn before_token_request(&mut self) -> Result<(), TransportError> {
        if !self.held {
            return Err(TransportError::Refused(
                "a token request needs the refresh lease".into(),
            ));
        }
        let renewed = self
            .store
            .renew_lease(&self.owner, time::unix_ms(), self.settings.lease_ttl_ms)
            .map_err(|e| TransportError::Refused(e.0))?;
        if !renewed {
            self.held = false;
            return Err(TransportError::Refused("the refresh lease was lost".into()));
        }
        if !self.marked {
            let fp = self
                .acquired_fingerprint
                .clone()
                .unwrap_or_else(|| fingerprint(None));
            self.store
                .mark_in_flight(&fp)
                .map_err(|e| TransportError::Refused(format!("in-flight marker: {e}")))?;
            self.marked = true;
        }
        Ok(())
    }

    /// Clears the marker when the provider provably did not rotate: the
    /// request never left, or it was refused (4xx, 503) and no earlier
    /// attempt of this lease was ambiguous.
    fn after_token_request(&mut self, result: &Result<Response, TransportError>) {
        let definite_no = match result {
            Ok(r) => (400..500).contains(&r.status) || r.status == 503,
            Err(TransportError::Connect(_))
            | Err(TransportError::InvalidRequest(_))
            | Err(TransportError::Refused(_)) => true,
            Err(_) => false,
        };
        if !definite_no {
            self.ambiguous = true;
        } else if !self.ambiguous && self.marked {
            match self.store.clear_in_flight() {
                Ok(()) => self.marked = false,
                Err(e) => log(&format!("clearing the in-flight marker failed: {e}")),
            }
        }
    }
}

/// FNV-1a 64 of the stored keys: identifies a version without revealing it.
pub fn fingerprint(keys: Option<&str>) -> String {
    let Some(keys) = keys else {
        return "none".to_string();
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in keys.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
