//! The default store: one SQLite file, WAL, `synchronous=FULL`, every write in
//! its own transaction, so `save_keys` returning `Ok` means it is on disk.

use super::{Credential, KeyStore, StoreError, json_position, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS credentials (
    name       TEXT PRIMARY KEY NOT NULL,
    settings   TEXT NOT NULL,
    keys       TEXT,
    version    INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS leases (
    name          TEXT PRIMARY KEY NOT NULL,
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
";

/// The file holds tokens: create it readable by its owner only. SQLite gives
/// its -wal and -shm files the database file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A store in one SQLite file, shareable by the processes of one machine.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, waiting up to 5 s for
    /// a lock another process holds.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_busy_timeout(path, Duration::from_secs(5))
    }

    /// As [`SqliteStore::open`], waiting up to `busy` for another process's lock.
    pub fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy: Duration,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unusable = |e: rusqlite::Error| StoreError::Unusable {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        create_private(&path).map_err(|e| StoreError::Unusable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let conn = Connection::open(&path).map_err(unusable)?;
        conn.busy_timeout(busy).map_err(unusable)?;
        // journal_mode is the first statement that reads the file: a file that
        // is not a database fails here, with SQLite's own words.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unusable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unusable)?;
        conn.execute_batch(SCHEMA).map_err(unusable)?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The file this store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock only means another call panicked; the connection
        // itself is transactional and still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unusable(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Unusable {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

fn row_to_credential(
    name: String,
    settings: String,
    keys: Option<String>,
    version: i64,
    updated_at: i64,
) -> Result<Credential, StoreError> {
    let settings: Settings = serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt {
        name: name.clone(),
        reason: format!("settings: {}", json_position(&e)),
    })?;
    Ok(Credential {
        name,
        settings,
        keys: keys.map(TokenSet::stored),
        version: version.max(0) as u64,
        updated_at,
        needs_authorization: None,
        refresh_in_doubt: false,
    })
}

type Row = (String, String, Option<String>, i64, i64);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

impl KeyStore for SqliteStore {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT name, settings, keys, version, updated_at FROM credentials WHERE name = ?1",
                [name],
                read_row,
            )
            .optional()
            .map_err(|e| self.unusable(e))?
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
        let (name, settings, keys, version, updated_at) = row;
        row_to_credential(name, settings, keys, version, updated_at)
    }

    fn save_keys(
        &self,
        name: &str,
        keys: &TokenSet,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_keys(keys)?;
        let mut conn = self.conn();
        let write = |e: rusqlite::Error| StoreError::Write(e.to_string());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(write)?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT version FROM credentials WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(write)?;
        let current = current.ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
        if expected_version.is_some_and(|v| v as i64 != current) {
            return Err(StoreError::Conflict(name.into()));
        }
        tx.execute(
            "UPDATE credentials SET keys = ?2, version = ?3, updated_at = ?4 WHERE name = ?1",
            params![name, keys.expose(), current + 1, now_unix()],
        )
        .map_err(write)?;
        tx.commit().map_err(write)?;
        Ok(current as u64 + 1)
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let write = |e: rusqlite::Error| StoreError::Write(e.to_string());
        // IMMEDIATE takes SQLite's write lock first, so check-and-take is one
        // step for every process on this machine.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(write)?;
        let now = now_millis();
        let taken = tx
            .execute(
                "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                 WHERE leases.expires_at_ms <= ?4 OR leases.holder = excluded.holder",
                params![name, holder, now + ttl.as_millis() as i64, now],
            )
            .map_err(write)?;
        tx.commit().map_err(write)?;
        Ok(taken == 1)
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_millis();
        let renewed = self
            .conn()
            .execute(
                "UPDATE leases SET expires_at_ms = ?3 WHERE name = ?1 AND holder = ?2 AND expires_at_ms > ?4",
                params![name, holder, now + ttl.as_millis() as i64, now],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(renewed == 1)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                [name, holder],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(())
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        if let Some(k) = keys {
            validate_keys(k)?;
        }
        let settings = serde_json::to_string(settings).expect("settings serialize");
        self.conn()
            .execute(
                "INSERT INTO credentials (name, settings, keys, version, updated_at)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (name) DO UPDATE SET settings = ?2, keys = COALESCE(?3, keys),
                     version = version + (?3 IS NOT NULL), updated_at = ?4",
                params![name, settings, keys.map(TokenSet::expose), now_unix()],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT name, settings, keys, version, updated_at FROM credentials ORDER BY name",
            )
            .map_err(|e| self.unusable(e))?;
        let rows = stmt
            .query_map([], read_row)
            .map_err(|e| self.unusable(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.unusable(e))?;
        rows.into_iter()
            .map(|(n, s, k, v, u)| row_to_credential(n, s, k, v, u))
            .collect()
    }

    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM credentials WHERE name = ?1", [name])
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let settings = Settings::new("http://127.0.0.1/token", "app");
        store
            .put(
                "c",
                &settings,
                Some(&TokenSet::stored(r#"{"access_token":"a"}"#)),
            )
            .unwrap();
        assert_eq!(
            store
                .save_keys("c", &TokenSet::stored(r#"{"access_token":"b"}"#), Some(0))
                .unwrap(),
            1
        );
        let stale = store.save_keys("c", &TokenSet::stored(r#"{"access_token":"x"}"#), Some(0));
        assert!(
            matches!(stale, Err(StoreError::Conflict(_))),
            "compare-and-set refuses a stale writer"
        );
        let reopened = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let c = reopened.load("c").unwrap();
        assert_eq!(c.keys.unwrap().expose(), r#"{"access_token":"b"}"#);
        assert_eq!(c.version, 1);
        assert_eq!(c.settings, settings);
    }

    #[test]
    fn the_store_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        store
            .put(
                "c",
                &Settings::new("http://127.0.0.1/token", "app"),
                Some(&TokenSet::stored("{}")),
            )
            .unwrap();
        for file in ["s.db", "s.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
        }
    }

    #[test]
    fn editing_settings_keeps_the_keys_and_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let settings = Settings::new("http://127.0.0.1/token", "app");
        store
            .put(
                "c",
                &settings,
                Some(&TokenSet::stored(r#"{"refresh_token":"r"}"#)),
            )
            .unwrap();
        store
            .put("c", &Settings::new("http://127.0.0.1/token", "other"), None)
            .unwrap();
        let c = store.load("c").unwrap();
        assert_eq!(c.keys.unwrap().expose(), r#"{"refresh_token":"r"}"#);
        assert_eq!((c.version, c.settings.client_id.as_str()), (0, "other"));
    }

    #[test]
    fn rejects_non_object_keys_and_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        assert!(matches!(
            store.load("nope"),
            Err(StoreError::UnknownCredential(_))
        ));
        assert!(matches!(
            store.save_keys("nope", &TokenSet::stored("{}"), None),
            Err(StoreError::UnknownCredential(_))
        ));
        let settings = Settings::new("http://127.0.0.1/token", "app");
        let err = store
            .put("c", &settings, Some(&TokenSet::stored("[1, \"tok\"]")))
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidKeys(_)));
    }

    #[test]
    fn the_lease_is_exclusive_until_released_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let b = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let ttl = Duration::from_millis(300);
        assert!(a.try_lease("c", "a", ttl).unwrap());
        assert!(!b.try_lease("c", "b", ttl).unwrap(), "held by a");
        assert!(a.try_lease("c", "a", ttl).unwrap(), "a may extend its own");
        a.release_lease("c", "a").unwrap();
        assert!(b.try_lease("c", "b", ttl).unwrap(), "free after release");
        std::thread::sleep(ttl + Duration::from_millis(50));
        assert!(a.try_lease("c", "a", ttl).unwrap(), "free after expiry");
        b.release_lease("c", "b").unwrap();
        assert!(
            !b.try_lease("c", "b", ttl).unwrap(),
            "b's late release did not free a's lease"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(&path)
            .err()
            .expect("garbage must not open");
        assert!(err.to_string().contains("not a database"), "{err}");
    }
}
