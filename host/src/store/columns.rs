//! A credential as the SQL stores (SQLite, PostgreSQL) hold it: one row of
//! text and numbers, the same columns in both. What goes in is checked here
//! and what comes out decoded here, so both stores read and refuse alike.

use super::{Credential, DeadGrant, Result, StoreError, check_keys, json_position};
use crate::settings::Settings;
use crate::token_set::TokenSet;

/// The columns [`Columns`] holds, in its order, for a store's SELECT.
pub(super) const NAMES: &str =
    "name, settings, keys, version, updated_at, refresh_in_doubt, dead_grant_code, dead_grant_at";

/// One credential's row, as read.
pub(super) struct Columns {
    pub name: String,
    /// JSON.
    pub settings: String,
    /// The token set's JSON, if any.
    pub keys: Option<String>,
    pub version: i64,
    pub updated_at: i64,
    pub refresh_in_doubt: bool,
    pub dead_grant_code: Option<String>,
    pub dead_grant_at: Option<i64>,
}

impl Columns {
    /// The credential, or why its row cannot be read back (never its keys).
    pub(super) fn into_credential(self) -> Result<Credential> {
        let settings: Settings =
            serde_json::from_str(&self.settings).map_err(|e| StoreError::Corrupt {
                name: self.name.clone(),
                reason: format!("settings: {}", json_position(&e)),
            })?;
        Ok(Credential {
            name: self.name,
            settings,
            keys: self.keys.map(TokenSet::stored),
            version: self.version.max(0) as u64,
            updated_at: self.updated_at,
            needs_authorization: self.dead_grant_code.map(|code| DeadGrant {
                code,
                at: self.dead_grant_at.unwrap_or(0),
            }),
            refresh_in_doubt: self.refresh_in_doubt,
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
