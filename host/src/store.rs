//! Where credentials live: settings, the current token set and a version that
//! grows with every persisted refresh.

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::secret::Secret;
use crate::settings::Settings;

#[derive(Clone, Debug)]
pub struct Credential {
    pub name: String,
    pub settings: Settings,
    /// The token set as a JSON object; none until someone authenticates.
    pub keys: Option<Secret>,
    /// Starts at 0; +1 on every write of keys.
    pub version: u64,
    /// Unix seconds of the last write.
    pub updated_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no credential named {0:?} (see `rekey credential list`)")]
    UnknownCredential(String),
    #[error("the store {path} cannot be used: {reason}")]
    Unusable { path: String, reason: String },
    #[error("credential {name:?} is damaged in the store: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("keys must be a JSON object: {0}")]
    InvalidKeys(String),
    #[error("store write failed: {0}")]
    Write(String),
}

/// A credential store. Implementations must make `save_keys` durable before
/// returning `Ok`: the caller is about to spend what it just saved.
pub trait KeyStore: Send + Sync + 'static {
    fn load(&self, name: &str) -> Result<Credential, StoreError>;
    /// Replaces the keys of an existing credential; returns the new version.
    fn save_keys(&self, name: &str, keys: &Secret) -> Result<u64, StoreError>;
    /// Creates or replaces a credential (settings and keys).
    fn put(&self, name: &str, settings: &Settings, keys: Option<&Secret>) -> Result<(), StoreError>;
    fn list(&self) -> Result<Vec<Credential>, StoreError>;
    /// True when something was removed.
    fn remove(&self, name: &str) -> Result<bool, StoreError>;
}

/// Checks that `keys` is a JSON object without echoing any of it.
pub fn validate_keys(keys: &Secret) -> Result<(), StoreError> {
    match serde_json::from_str::<serde_json::Value>(keys.expose()) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(StoreError::InvalidKeys("not an object".into())),
        Err(e) => Err(StoreError::InvalidKeys(json_position(&e))),
    }
}

/// A serde_json error as a position only: typed errors can quote values.
pub(crate) fn json_position(e: &serde_json::Error) -> String {
    format!("invalid JSON at line {} column {}", e.line(), e.column())
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
