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

use crate::settings::Settings;
use crate::token_set::TokenSet;

pub(crate) use crate::token_set::json_position;

/// One stored credential: its settings and its record.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Its name (what `send` is called with).
    pub name: String,
    /// Where and how to refresh.
    pub settings: Settings,
    /// The token set; none until someone authenticates.
    pub keys: Option<TokenSet>,
    /// Starts at 0; +1 on every write of the record.
    pub version: u64,
    /// Unix seconds of the last write.
    pub updated_at: i64,
    /// The grant is dead: the token endpoint refused the refresh token.
    /// Calls fail fast, without touching the network, until new keys are put.
    pub needs_authorization: Option<DeadGrant>,
    /// The refresh lease, as the component last wrote it.
    pub lease: Option<Lease>,
    /// A refresh request may have left and its result is not stored (see
    /// [`Credential::refresh_in_doubt`]).
    pub refresh_mark: Option<RefreshMark>,
}

impl Credential {
    /// The component's record of this credential (all but its settings).
    pub fn record(&self) -> Record {
        Record {
            keys: self.keys.clone(),
            lease: self.lease.clone(),
            refresh_mark: self.refresh_mark.clone(),
            dead_grant: self.needs_authorization.clone(),
        }
    }

    /// A refresh began and its keys were never stored, and nobody holds the
    /// lease any more (at `now_ms`, wall-clock Unix milliseconds): the stored
    /// refresh token may be spent, so no call spends it until new keys are
    /// put or an operator clears the mark ([`KeyStore::clear_refresh_in_doubt`]).
    pub fn refresh_in_doubt_at(&self, now_ms: u64) -> bool {
        self.refresh_mark.is_some() && self.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms)
    }

    /// [`Credential::refresh_in_doubt_at`] now.
    pub fn refresh_in_doubt(&self) -> bool {
        self.refresh_in_doubt_at(now_ms())
    }
}

/// Everything the component's fleet protocol keeps for a credential
/// (`credential-record` in `wit/rekey.wit`): written only whole, by a
/// compare-and-swap on the version ([`KeyStore::write_record`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The token set.
    pub keys: Option<TokenSet>,
    /// Who may refresh now.
    pub lease: Option<Lease>,
    /// A refresh request may have left under this holder.
    pub refresh_mark: Option<RefreshMark>,
    /// The token endpoint declared the grant dead.
    pub dead_grant: Option<DeadGrant>,
}

/// The refresh lease: one holder at a time may refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Random, unique per call.
    pub holder: String,
    /// Wall-clock Unix milliseconds after which the lease is free.
    pub until_ms: u64,
}

/// A refresh request may have left under `holder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshMark {
    /// The lease holder that set it.
    pub holder: String,
    /// Wall-clock Unix milliseconds when it was set.
    pub at_ms: u64,
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
    /// A write failed (busy, disk full, connection lost before COMMIT):
    /// nothing was written.
    #[error("store write failed: {0}")]
    Write(String),
    /// A write may or may not have landed (the connection broke after
    /// COMMIT was sent): read the record to know.
    #[error("store write outcome unknown: {0}")]
    Unknown(String),
    /// A compare-and-swap found another version.
    #[error("credential {0:?} was changed by another worker meanwhile; nothing was overwritten")]
    Conflict(String),
}

/// What a store operation returns.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A credential store: settings for the host, and for the component one
/// record per credential with a version ([`Record`], `docs/record-store.md`).
/// The component runs the whole fleet protocol on that record; a store only
/// keeps what it is given, atomically and durably. Every backend uses the
/// same tables as the Node.js and Python hosts, so workers in all three
/// languages can share a credential.
///
/// Methods block (disk, network); the host calls them from blocking threads
/// unless [`KeyStore::blocking`] says they are instant.
pub trait KeyStore: Send + Sync + 'static {
    /// The credential `name`, as stored now.
    fn load(&self, name: &str) -> Result<Credential>;
    /// Replaces the record of `name` if its version is still `expected`, and
    /// returns the new version (`expected + 1`) once the write is durable:
    /// the component may spend what it just wrote. Else
    /// [`StoreError::Conflict`] and nothing changes. [`StoreError::Write`]
    /// when nothing was written, [`StoreError::Unknown`] when the store
    /// cannot tell.
    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64>;
    /// Creates a credential, or replaces its settings. Keys given replace the
    /// stored ones and start afresh (no lease, mark or dead grant; the
    /// version grows by one); none given keeps the record as it is, so
    /// editing settings never drops a live refresh token or upsets a refresh
    /// in flight.
    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()>;
    /// Every credential, by name.
    fn list(&self) -> Result<Vec<Credential>>;
    /// True when something was removed.
    fn remove(&self, name: &str) -> Result<bool>;

    /// Forgets the refresh mark (and any lease) of `name`: an operator
    /// checked with the provider and decided to try the stored refresh token
    /// again. [`StoreError::UnknownCredential`] for a name not stored.
    fn clear_refresh_in_doubt(&self, name: &str) -> Result<()> {
        loop {
            let c = self.load(name)?;
            let record = Record {
                lease: None,
                refresh_mark: None,
                ..c.record()
            };
            match self.write_record(name, c.version, &record) {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(drop),
            }
        }
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

/// The compare-and-swap of [`KeyStore::write_record`]: the version it
/// writes over `stored`, if that is still the `expected` one.
pub(crate) fn next_version(name: &str, stored: u64, expected: u64) -> Result<u64> {
    if expected == stored {
        Ok(stored + 1)
    } else {
        Err(StoreError::Conflict(name.into()))
    }
}

/// Wall-clock Unix milliseconds, as the component's lease and mark count.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
