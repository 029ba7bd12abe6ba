//! Where credentials live: settings, the current token set and a version that
//! grows with every persisted refresh.

mod memory;
mod postgres;
mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

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
    #[error("credential {0:?} was changed by another worker meanwhile; nothing was overwritten")]
    Conflict(String),
}

/// A credential store. Implementations must make `save_keys` durable before
/// returning `Ok`: the caller is about to spend what it just saved.
///
/// Methods block (disk, network); the host calls them from blocking threads
/// unless [`KeyStore::blocking`] says they are instant.
pub trait KeyStore: Send + Sync + 'static {
    fn load(&self, name: &str) -> Result<Credential, StoreError>;
    /// Replaces the keys of an existing credential; returns the new version.
    /// With `expected_version`, only if the stored version is still that one
    /// (compare-and-set), else [`StoreError::Conflict`].
    fn save_keys(
        &self,
        name: &str,
        keys: &Secret,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError>;
    /// Creates a credential, or replaces its settings. Keys given replace the
    /// stored ones (and bump the version); none given keeps them, so editing
    /// settings never drops a live refresh token or upsets a refresh in flight.
    fn put(&self, name: &str, settings: &Settings, keys: Option<&Secret>)
    -> Result<(), StoreError>;
    fn list(&self) -> Result<Vec<Credential>, StoreError>;
    /// True when something was removed.
    fn remove(&self, name: &str) -> Result<bool, StoreError>;

    /// Takes (or, for the same `holder`, extends) the refresh lease of `name`
    /// for `ttl`. False while another holder's lease is unexpired. A store
    /// shared by processes must make this exclusive across them; the default
    /// (always true) suits stores only one process uses, where the host's
    /// in-process single-flight already suffices.
    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Extends `holder`'s lease of `name` by `ttl` only if `holder` still has
    /// it: false if it ran out and anyone else took it, even if they have
    /// released it since (the stored keys may have moved on).
    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Ends `holder`'s lease of `name`, if it still has it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (name, holder);
        Ok(())
    }

    /// False for stores whose calls never wait (memory): the host then calls
    /// them inline instead of on a blocking thread.
    fn blocking(&self) -> bool {
        true
    }
}

/// Runs a store operation where it may block: on a blocking thread, unless
/// the store says its calls are instant.
pub(crate) async fn call_store<R: Send + 'static>(
    store: &Arc<dyn KeyStore>,
    op: impl FnOnce(&dyn KeyStore) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    if !store.blocking() {
        return op(store.as_ref());
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(StoreError::Write(format!("store task failed: {e}"))))
}

/// Opens a store by URL: `sqlite:PATH` or a plain path (SQLite), or
/// `postgres://…` / `postgresql://…` (PostgreSQL). Blocks: call it outside
/// async code or on a blocking thread.
pub fn open(url: &str) -> Result<Arc<dyn KeyStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url)?));
    }
    if url.contains("://") {
        return Err(StoreError::Unusable {
            path: url.split("://").next().unwrap_or("").to_owned() + "://…",
            reason: "unsupported store URL: use a path, sqlite:PATH or postgres://…".into(),
        });
    }
    Ok(Arc::new(SqliteStore::open(
        url.strip_prefix("sqlite:").unwrap_or(url),
    )?))
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

/// Turns a token response (as a provider or an authorization-code exchange
/// returned it) into keys to store: a JSON object holding at least an access
/// or a refresh token, with `expires_at` added from `expires_in`.
pub fn keys_from_token_response(json: &str) -> Result<Secret, StoreError> {
    let mut map = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return Err(StoreError::InvalidKeys("not an object".into())),
        Err(e) => return Err(StoreError::InvalidKeys(json_position(&e))),
    };
    let has = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty())
    };
    if !has("access_token") && !has("refresh_token") {
        return Err(StoreError::InvalidKeys(
            "it holds neither access_token nor refresh_token".into(),
        ));
    }
    if !map.contains_key("expires_at") {
        let expires_in = map.get("expires_in").and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        if let Some(secs) = expires_in {
            map.insert("expires_at".into(), (now_unix() + secs).into());
        }
    }
    Ok(Secret::new(serde_json::Value::Object(map).to_string()))
}

/// Fields of a token set that are safe to show; every other value is redacted
/// (tokens, and provider fields we cannot vouch for).
const SHOWABLE: [&str; 7] = [
    "token_type",
    "expires_in",
    "expires_at",
    "scope",
    "instance_url",
    "issued_at",
    "ext_expires_in",
];

/// A token set with every value but the harmless ones replaced by `[redacted]`.
pub fn redacted_keys(keys: &Secret) -> serde_json::Value {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(keys.expose()) else {
        return serde_json::Value::String("[unreadable]".into());
    };
    map.into_iter()
        .map(|(k, v)| {
            let v = if SHOWABLE.contains(&k.as_str()) {
                v
            } else {
                "[redacted]".into()
            };
            (k, v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_adds_expiry_and_rejects_tokenless_sets() {
        let keys = keys_from_token_response(r#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(keys.expose()).unwrap();
        assert!(v["expires_at"].as_i64().unwrap() >= now_unix() + 59);
        assert!(keys_from_token_response(r#"{"token_type":"bearer"}"#).is_err());
        let err = keys_from_token_response("{\"access_token\": \"secret-tok").unwrap_err();
        assert!(!err.to_string().contains("secret-tok"), "{err}");
    }

    #[test]
    fn redaction_keeps_only_harmless_fields() {
        let shown = redacted_keys(&Secret::new(
            r#"{"access_token":"a","refresh_token":"r","scope":"api","custom":"x"}"#,
        ));
        assert_eq!(
            shown,
            serde_json::json!({"access_token":"[redacted]","refresh_token":"[redacted]","scope":"api","custom":"[redacted]"})
        );
    }
}
