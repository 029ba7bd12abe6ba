//! Where credentials live: settings, the current token set and a version that
//! grows with every persisted refresh.

mod columns;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

use crate::settings::Settings;
use crate::token_set::TokenSet;

pub(crate) use crate::token_set::json_position;

/// One stored credential.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Its name (what `send` is called with).
    pub name: String,
    /// Where and how to refresh.
    pub settings: Settings,
    /// The token set; none until someone authenticates.
    pub keys: Option<TokenSet>,
    /// Starts at 0; +1 on every write of keys.
    pub version: u64,
    /// Unix seconds of the last write.
    pub updated_at: i64,
    /// The grant is dead: the token endpoint refused the refresh token.
    /// Calls fail fast, without touching the network, until new keys are put
    /// or saved ([`KeyStore::mark_needs_authorization`]).
    pub needs_authorization: Option<DeadGrant>,
    /// A refresh was begun ([`KeyStore::begin_refresh`]) and its keys never
    /// saved: the stored refresh token may be spent. Until keys are saved or
    /// put, or [`KeyStore::clear_refresh_in_doubt`] is called, no call spends it.
    pub refresh_in_doubt: bool,
}

/// Why and since when a credential needs a person to authorise again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadGrant {
    /// The OAuth error code, e.g. `invalid_grant`.
    pub code: String,
    /// Unix seconds when it was recorded.
    pub at: i64,
}

/// Why a store operation failed. Messages never hold keys or secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No credential of that name.
    #[error("no credential named {0:?} (see `rekey credential list`)")]
    UnknownCredential(String),
    /// The store cannot be opened or read.
    #[error("the store {path} cannot be used: {reason}")]
    Unusable {
        /// The store's path or URL, without a password.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stored credential cannot be read back.
    #[error("credential {name:?} is damaged in the store: {reason}")]
    Corrupt {
        /// The credential's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Keys given to the store are not a JSON object.
    #[error("keys must be a JSON object: {0}")]
    InvalidKeys(String),
    /// A write failed (busy, disk full, connection lost).
    #[error("store write failed: {0}")]
    Write(String),
    /// A compare-and-set found a newer version.
    #[error("credential {0:?} was changed by another worker meanwhile; nothing was overwritten")]
    Conflict(String),
}

/// What a store operation returns.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A credential store. Implementations must make `save_keys` durable before
/// returning `Ok`: the caller is about to spend what it just saved.
///
/// Methods block (disk, network); the host calls them from blocking threads
/// unless [`KeyStore::blocking`] says they are instant.
pub trait KeyStore: Send + Sync + 'static {
    /// The credential `name`, as stored now.
    fn load(&self, name: &str) -> Result<Credential>;
    /// Replaces the keys of an existing credential; returns the new version.
    /// With `expected_version`, only if the stored version is still that one
    /// (compare-and-set), else [`StoreError::Conflict`].
    fn save_keys(&self, name: &str, keys: &TokenSet, expected_version: Option<u64>) -> Result<u64>;
    /// Creates a credential, or replaces its settings. Keys given replace the
    /// stored ones (and bump the version); none given keeps them, so editing
    /// settings never drops a live refresh token or upsets a refresh in flight.
    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()>;
    /// Every credential, by name.
    fn list(&self) -> Result<Vec<Credential>>;
    /// True when something was removed.
    fn remove(&self, name: &str) -> Result<bool>;

    /// Takes (or, for the same `holder`, extends) the refresh lease of `name`
    /// for `ttl`. False while another holder's lease is unexpired. A store
    /// shared by processes must make this exclusive across them; the default
    /// (always true) suits stores only one process uses, where the host's
    /// in-process single-flight already suffices.
    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Extends `holder`'s lease of `name` by `ttl` only if `holder` still has
    /// it: false if it ran out and anyone else took it, even if they have
    /// released it since (the stored keys may have moved on).
    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Ends `holder`'s lease of `name`, if it still has it. A refresh mark
    /// ([`KeyStore::begin_refresh`]) outlives the lease.
    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _ = (name, holder);
        Ok(())
    }

    /// Like [`KeyStore::renew_lease`], and, when it returns true, also marks
    /// that a refresh request of `name` is about to leave: from then on the
    /// stored refresh token may be spent. The mark stays, whatever happens to
    /// the lease, until keys are saved (`save_keys`, or `put` with keys) or
    /// [`KeyStore::clear_refresh_in_doubt`]; meanwhile `load` and `list`
    /// report `refresh_in_doubt` and the host lets no call spend the token
    /// again. A `save_keys` refused ([`StoreError::Conflict`]) keeps it; a
    /// `put` without keys (a settings edit) keeps it. Renewal and mark are
    /// one durable write: the mark is stored before this returns true.
    /// The default (no mark) suits stores that cannot keep one.
    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.renew_lease(name, holder, ttl)
    }

    /// Forgets the refresh mark of `name` (an operator decided to try the
    /// stored refresh token again); nothing else changes, leases included.
    /// [`StoreError::UnknownCredential`] for a name not stored.
    fn clear_refresh_in_doubt(&self, name: &str) -> Result<()> {
        let _ = name;
        Ok(())
    }

    /// Records that the grant of `name` is dead (the token endpoint answered
    /// `code`), at the current Unix second, so later calls fail fast. Cleared
    /// by new keys (`put` with keys, a successful `save_keys`); a settings
    /// edit or a refused `save_keys` keeps it. Recording again replaces it.
    /// [`StoreError::UnknownCredential`] for a name not stored.
    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<()> {
        let _ = (name, code);
        Ok(())
    }

    /// The credential `name`, if the store can answer without waiting (a
    /// cached copy it has confirmed is current): the host then skips the
    /// blocking thread [`KeyStore::load`] runs on. `None`: call `load`.
    fn load_now(&self, name: &str) -> Option<Result<Credential>> {
        let _ = name;
        None
    }

    /// False for stores whose calls never wait (memory): the host then calls
    /// them inline instead of on a blocking thread.
    fn blocking(&self) -> bool {
        true
    }
}

/// Loads `name` as a call starts: without the blocking-thread hop when the
/// store can answer at once.
pub(crate) async fn load_credential(store: &Arc<dyn KeyStore>, name: &str) -> Result<Credential> {
    if let Some(found) = store.load_now(name) {
        return found;
    }
    let name = name.to_owned();
    call_store(store, move |s| s.load(&name)).await
}

/// Runs a store operation where it may block: on a blocking thread, unless
/// the store says its calls are instant.
pub(crate) async fn call_store<R: Send + 'static>(
    store: &Arc<dyn KeyStore>,
    op: impl FnOnce(&dyn KeyStore) -> Result<R> + Send + 'static,
) -> Result<R> {
    if !store.blocking() {
        return op(store.as_ref());
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(StoreError::Write(format!("store task failed: {e}"))))
}

/// Opens a store by URL: `sqlite:PATH` or a plain path (SQLite), or
/// `postgres://…` / `postgresql://…` (PostgreSQL; TLS as its `sslmode`
/// says). A libpq key/value string (`host=db user=x password=…`) is refused,
/// not taken as a file name, and not echoed: it may hold a password. Blocks:
/// call it outside async code or on a blocking thread.
pub fn open(url: &str) -> Result<Arc<dyn KeyStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(PostgresStore::connect(url)?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Unusable {
            path: "postgres://…".into(),
            reason: "this build of rekey has no PostgreSQL support (feature `postgres`)".into(),
        });
    }
    if let Some((scheme, _)) = url.split_once("://") {
        let plain = scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        return Err(StoreError::Unusable {
            path: if plain {
                format!("{scheme}://…")
            } else {
                "(not shown)".into()
            },
            reason: "unsupported store URL: use a path, sqlite:PATH or postgres://…".into(),
        });
    }
    let path = match url.strip_prefix("sqlite:") {
        Some(path) => path,
        None if looks_like_key_value(url) => {
            return Err(StoreError::Unusable {
                path: "(not shown: it may hold a password)".into(),
                reason: "this is not a path but a libpq key/value connection string \
                         (`host=… dbname=…`), which rekey does not take: give PostgreSQL as a \
                         URL, postgres://USER@HOST/DB?sslmode=verify-full&sslrootcert=CA.pem \
                         (a file name with '=' in it as ./NAME or sqlite:NAME)"
                    .into(),
            });
        }
        None => url,
    };
    Ok(Arc::new(SqliteStore::open(path)?))
}

/// A libpq key/value connection string rather than a path: it starts with
/// `keyword=` (`host=db …`, `dbname = x`), or holds whitespace-separated
/// `keyword=` words (`/tmp/x password=y`). A path of that shape can still be
/// given as `./NAME` or `sqlite:NAME`.
fn looks_like_key_value(s: &str) -> bool {
    fn keyword(w: &str) -> bool {
        w.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }
    let starts_with_pair = s
        .split_once('=')
        .is_some_and(|(key, _)| keyword(key.trim()));
    let words: Vec<&str> = s.split_whitespace().collect();
    let has_pair_word = words.len() > 1
        && words
            .iter()
            .any(|w| w.split_once('=').is_some_and(|(key, _)| keyword(key)));
    starts_with_pair || has_pair_word
}

/// Credential names: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter
/// or digit (printed raw by `list`, used in file names by other hosts).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("a credential name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit".into())
    }
}

/// Checks keys a store is given: a JSON object. The error echoes none of it.
pub(crate) fn check_keys(keys: &TokenSet) -> Result<()> {
    keys.check()
        .map_err(|e| StoreError::InvalidKeys(e.to_string()))
}

/// The compare-and-set of [`KeyStore::save_keys`]: the version it writes
/// over `stored`, if that is still the `expected` one (when one is given).
pub(crate) fn next_version(name: &str, stored: u64, expected: Option<u64>) -> Result<u64> {
    match expected {
        Some(v) if v != stored => Err(StoreError::Conflict(name.into())),
        _ => Ok(stored + 1),
    }
}

/// Unix seconds, for `updated_at`.
pub(crate) fn now_unix() -> i64 {
    crate::token_set::now_unix() as i64
}

#[cfg(test)]
mod tests {
    use super::looks_like_key_value;

    #[test]
    fn libpq_key_value_strings_are_told_from_paths() {
        for kv in [
            "host=db user=x password=y dbname=z",
            "dbname=z",
            "  host = db port=5432",
            "password='a b' host=db",
            "/tmp/x.db password=y",
            "rekey.db host=db",
        ] {
            assert!(looks_like_key_value(kv), "{kv:?}");
        }
        for path in [
            "rekey.db",
            "./a=b.db",
            "/var/lib/rekey/a=b.db",
            "/home/me/My Stores/rekey.db",
            "stores/2024 = old.db",
            "",
        ] {
            assert!(!looks_like_key_value(path), "{path:?}");
        }
    }

    #[test]
    fn a_key_value_string_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let kv = format!("{}/host=db user=x password=hunter2", dir.path().display());
        // Starting with a path, it is still refused: a word is keyword=value.
        let err = super::open(&kv).err().expect("refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("key/value"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
