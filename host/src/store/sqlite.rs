//! The default store: one SQLite file, WAL, `synchronous=FULL`, every write in
//! its own transaction, so `save_keys` returning `Ok` means it is on disk.

use super::{Credential, DeadGrant, KeyStore, StoreError, json_position, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS credentials (
    name             TEXT PRIMARY KEY NOT NULL,
    settings         TEXT NOT NULL,
    keys             TEXT,
    version          INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL,
    refresh_in_doubt INTEGER NOT NULL DEFAULT 0,
    dead_grant_code  TEXT,
    dead_grant_at    INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS leases (
    name          TEXT PRIMARY KEY NOT NULL,
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
";

/// Columns added since the first schema: a store created before them gets
/// them at open (`ALTER TABLE … ADD COLUMN`), keeping its credentials.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("refresh_in_doubt", "INTEGER NOT NULL DEFAULT 0"),
    ("dead_grant_code", "TEXT"),
    ("dead_grant_at", "INTEGER"),
];

fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<(&'static str, &'static str)>> {
    let present = conn
        .prepare("SELECT name FROM pragma_table_info('credentials')")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ADDED_COLUMNS
        .into_iter()
        .filter(|(column, _)| !present.iter().any(|p| p == column))
        .collect())
}

/// Brings an older store's tables up to [`SCHEMA`].
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    // The common case, an up-to-date store, takes no write lock.
    if missing_columns(conn)?.is_empty() {
        return Ok(());
    }
    // Under the write lock, looked at again: another process opening the
    // same old store may have added them meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (column, declaration) in missing_columns(&tx)? {
        tx.execute_batch(&format!(
            "ALTER TABLE credentials ADD COLUMN {column} {declaration}"
        ))?;
    }
    tx.commit()
}

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

/// When a lease taken at `now` for `ttl` runs out; a ttl too long to count
/// in milliseconds saturates (never), where a cast would wrap into the past.
fn expiry_millis(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Extends a live lease of its holder: ?3 the new expiry, ?4 now.
const RENEW: &str = "UPDATE leases SET expires_at_ms = ?3
     WHERE name = ?1 AND holder = ?2 AND expires_at_ms > ?4";

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
        let mut conn = Connection::open(&path).map_err(unusable)?;
        conn.busy_timeout(busy).map_err(unusable)?;
        // journal_mode is the first statement that reads the file: a file that
        // is not a database fails here, with SQLite's own words.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unusable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unusable)?;
        conn.execute_batch(SCHEMA).map_err(unusable)?;
        migrate(&mut conn).map_err(unusable)?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The file this store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it. IMMEDIATE
    /// takes SQLite's write lock first, so a check-and-write is one step for
    /// every process on this machine.
    fn immediate<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(write)?;
        let result = f(&tx)?;
        tx.commit().map_err(write)?;
        Ok(result)
    }

    /// One UPDATE of the credential `name`; unknown if it touched no row.
    fn update_credential(
        &self,
        name: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        match self.conn().execute(sql, params).map_err(write)? {
            0 => Err(StoreError::UnknownCredential(name.into())),
            _ => Ok(()),
        }
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

/// The columns `read_row` reads, in its order.
const COLUMNS: &str =
    "name, settings, keys, version, updated_at, refresh_in_doubt, dead_grant_code, dead_grant_at";

struct Row {
    name: String,
    settings: String,
    keys: Option<String>,
    version: i64,
    updated_at: i64,
    refresh_in_doubt: bool,
    dead_grant_code: Option<String>,
    dead_grant_at: Option<i64>,
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        name: r.get(0)?,
        settings: r.get(1)?,
        keys: r.get(2)?,
        version: r.get(3)?,
        updated_at: r.get(4)?,
        refresh_in_doubt: r.get::<_, i64>(5)? != 0,
        dead_grant_code: r.get(6)?,
        dead_grant_at: r.get(7)?,
    })
}

fn row_to_credential(row: Row) -> Result<Credential, StoreError> {
    let settings: Settings =
        serde_json::from_str(&row.settings).map_err(|e| StoreError::Corrupt {
            name: row.name.clone(),
            reason: format!("settings: {}", json_position(&e)),
        })?;
    Ok(Credential {
        name: row.name,
        settings,
        keys: row.keys.map(TokenSet::stored),
        version: row.version.max(0) as u64,
        updated_at: row.updated_at,
        needs_authorization: row.dead_grant_code.map(|code| DeadGrant {
            code,
            at: row.dead_grant_at.unwrap_or(0),
        }),
        refresh_in_doubt: row.refresh_in_doubt,
    })
}

fn write(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

impl KeyStore for SqliteStore {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM credentials WHERE name = ?1"),
                [name],
                read_row,
            )
            .optional()
            .map_err(|e| self.unusable(e))?
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
        row_to_credential(row)
    }

    fn save_keys(
        &self,
        name: &str,
        keys: &TokenSet,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_keys(Some(keys))?;
        self.immediate(|tx| {
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
                // Saved keys settle a refresh in doubt and revive a dead grant.
                "UPDATE credentials SET keys = ?2, version = ?3, updated_at = ?4,
                 refresh_in_doubt = 0, dead_grant_code = NULL, dead_grant_at = NULL
             WHERE name = ?1",
                params![name, keys.expose(), current + 1, now_unix()],
            )
            .map_err(write)?;
            Ok(current as u64 + 1)
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.immediate(|tx| {
        let now = now_millis();
        let taken = tx
            .execute(
                "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                 WHERE leases.expires_at_ms <= ?4 OR leases.holder = excluded.holder",
                params![name, holder, expiry_millis(now, ttl), now],
            )
            .map_err(write)?;
        Ok(taken == 1)
        })
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_millis();
        let renewed = self
            .conn()
            .execute(RENEW, params![name, holder, expiry_millis(now, ttl), now])
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

    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // Renewal and mark commit together (synchronous=FULL): the mark is on
        // disk before the refresh request leaves, and only a holder sets it.
        self.immediate(|tx| {
            let now = now_millis();
            let renewed = tx
                .execute(RENEW, params![name, holder, expiry_millis(now, ttl), now])
                .map_err(write)?;
            if renewed == 1 {
                tx.execute(
                    "UPDATE credentials SET refresh_in_doubt = 1 WHERE name = ?1",
                    [name],
                )
                .map_err(write)?;
            }
            Ok(renewed == 1)
        })
    }

    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), StoreError> {
        self.update_credential(
            name,
            "UPDATE credentials SET refresh_in_doubt = 0 WHERE name = ?1",
            params![name],
        )
    }

    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<(), StoreError> {
        self.update_credential(
            name,
            "UPDATE credentials SET dead_grant_code = ?2, dead_grant_at = ?3 WHERE name = ?1",
            params![name, code, now_unix()],
        )
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        validate_keys(keys)?;
        let settings = serde_json::to_string(settings).expect("settings serialize");
        self.conn()
            .execute(
                // New keys start afresh (no refresh in doubt, no dead
                // grant); a settings edit keeps both marks.
                "INSERT INTO credentials (name, settings, keys, version, updated_at)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (name) DO UPDATE SET settings = ?2, keys = COALESCE(?3, keys),
                     version = version + (?3 IS NOT NULL), updated_at = ?4,
                     refresh_in_doubt = CASE WHEN ?3 IS NULL THEN refresh_in_doubt ELSE 0 END,
                     dead_grant_code = CASE WHEN ?3 IS NULL THEN dead_grant_code END,
                     dead_grant_at = CASE WHEN ?3 IS NULL THEN dead_grant_at END",
                params![name, settings, keys.map(TokenSet::expose), now_unix()],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM credentials ORDER BY name"))
            .map_err(|e| self.unusable(e))?;
        let rows = stmt
            .query_map([], read_row)
            .map_err(|e| self.unusable(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.unusable(e))?;
        rows.into_iter().map(row_to_credential).collect()
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
    //! What only SQLite has; the KeyStore contract itself runs on every
    //! backend in tests/all/store_contract.rs.
    use super::*;

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
