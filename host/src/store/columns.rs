//! A credential as the SQL stores (SQLite, PostgreSQL) hold it: one row of
//! text and numbers, the same columns in both (`docs/record-store.md`,
//! schema version 3). What goes in is checked here and what comes out
//! decoded here, so both stores read and refuse alike.

use super::{
    Credential, DeadGrant, Lease, Record, RefreshMark, Result, StoreError, check_keys,
    json_position,
};
use crate::settings::Settings;
use crate::token_set::TokenSet;

/// The schema version this host writes and reads (`PRAGMA user_version`,
/// table `rekey_schema`).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// What the 0.2 → 3 migration sets where a 0.2 refresh was in doubt.
pub(super) const MIGRATED_MARK_HOLDER: &str = "migrated-0.2";

/// The columns [`Columns`] holds, in its order, for a store's SELECT.
pub(super) const NAMES: &str = "name, settings, keys, version, updated_at, dead_grant_code, \
    dead_grant_at, lease_holder, lease_until_ms, mark_holder, mark_at_ms";

/// One credential's row, as read.
pub(super) struct Columns {
    pub name: String,
    /// JSON.
    pub settings: String,
    /// The token set's JSON, if any.
    pub keys: Option<String>,
    pub version: i64,
    pub updated_at: i64,
    pub dead_grant_code: Option<String>,
    pub dead_grant_at: Option<i64>,
    pub lease_holder: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub mark_holder: Option<String>,
    pub mark_at_ms: Option<i64>,
}

impl Columns {
    /// The credential, or why its row cannot be read back (never its keys).
    pub(super) fn into_credential(self) -> Result<Credential> {
        let name = self.name;
        let corrupt = |reason: String| StoreError::Corrupt {
            name: name.clone(),
            reason,
        };
        let settings = Settings::from_stored_json(&self.settings)
            .map_err(|e| corrupt(format!("settings: {}", json_position(&e))))?;
        let version = u64::try_from(self.version)
            .map_err(|_| corrupt(format!("negative version {}", self.version)))?;
        let lease = pair("lease_holder", self.lease_holder, self.lease_until_ms)
            .map_err(&corrupt)?
            .map(|(holder, until_ms)| Lease { holder, until_ms });
        let refresh_mark = pair("mark_holder", self.mark_holder, self.mark_at_ms)
            .map_err(&corrupt)?
            .map(|(holder, at_ms)| RefreshMark { holder, at_ms });
        Ok(Credential {
            settings,
            keys: self.keys.map(TokenSet::stored),
            version,
            updated_at: self.updated_at,
            // A code without a time (never written so) still means dead.
            needs_authorization: self.dead_grant_code.map(|code| DeadGrant {
                code,
                at: self.dead_grant_at.unwrap_or(0),
            }),
            lease,
            refresh_mark,
            name,
        })
    }
}

/// A `*_holder` / `*_ms` pair: NULL together, or a holder and a time that
/// is not negative. Anything else is a damaged row, never a guess: the
/// component decides who may spend the refresh token from these.
fn pair(
    what: &str,
    holder: Option<String>,
    ms: Option<i64>,
) -> Result<Option<(String, u64)>, String> {
    match (holder, ms) {
        (None, None) => Ok(None),
        (Some(holder), Some(ms)) => match u64::try_from(ms) {
            Ok(ms) => Ok(Some((holder, ms))),
            Err(_) => Err(format!("{what}'s time {ms} is negative")),
        },
        (Some(_), None) => Err(format!("{what} is set and its time is NULL")),
        (None, Some(_)) => Err(format!("{what} is NULL and its time is set")),
    }
}

/// The record's columns as a conditional write stores them.
pub(super) struct RecordColumns {
    pub keys: Option<String>,
    pub lease_holder: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub mark_holder: Option<String>,
    pub mark_at_ms: Option<i64>,
    pub dead_grant_code: Option<String>,
    pub dead_grant_at: Option<i64>,
}

impl RecordColumns {
    /// The record's columns, once its keys are checked to be an object and
    /// its times fit a signed 64-bit column; else the write is refused whole
    /// (nothing written), naming no key.
    pub(super) fn of(record: &Record) -> Result<Self> {
        let ms = |what: &str, ms: u64| {
            i64::try_from(ms).map_err(|_| {
                StoreError::Write(format!(
                    "{what} {ms} is beyond what the store can hold; nothing was written"
                ))
            })
        };
        let keys = record.keys.as_ref().map(keys_json).transpose()?;
        let (lease_holder, lease_until_ms) = match &record.lease {
            Some(l) => (
                Some(l.holder.clone()),
                Some(ms("lease until_ms", l.until_ms)?),
            ),
            None => (None, None),
        };
        let (mark_holder, mark_at_ms) = match &record.refresh_mark {
            Some(m) => (
                Some(m.holder.clone()),
                Some(ms("refresh mark at_ms", m.at_ms)?),
            ),
            None => (None, None),
        };
        let (dead_grant_code, dead_grant_at) = match &record.dead_grant {
            Some(d) => (Some(d.code.clone()), Some(d.at)),
            None => (None, None),
        };
        Ok(RecordColumns {
            keys: keys.map(str::to_owned),
            lease_holder,
            lease_until_ms,
            mark_holder,
            mark_at_ms,
            dead_grant_code,
            dead_grant_at,
        })
    }
}

/// The `settings` column.
pub(super) fn settings_json(settings: &Settings) -> String {
    serde_json::to_string(settings).expect("settings serialize")
}

/// The `keys` column: the keys' JSON, once checked to be an object. The
/// stores take the text to write only from here, so none skips the check.
pub(super) fn keys_json(keys: &TokenSet) -> Result<&str> {
    check_keys(keys)?;
    Ok(keys.expose())
}

/// Refuses a store whose schema is newer than this host knows (or a version
/// no rekey ever wrote), in words an operator can act on.
pub(super) fn check_schema_version(found: i64) -> Result<(), String> {
    match found {
        0 | SCHEMA_VERSION => Ok(()),
        newer if newer > SCHEMA_VERSION => Err(format!(
            "its schema version is {newer}, newer than this rekey knows ({SCHEMA_VERSION}): \
             a newer rekey (or another host) upgraded it; upgrade this one too"
        )),
        other => Err(format!(
            "its schema version is {other}, which no rekey ever wrote (known: 0.2 stores, \
             unversioned, and {SCHEMA_VERSION}); nothing was changed"
        )),
    }
}
