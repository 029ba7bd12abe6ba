//! The default store: one SQLite file, WAL, `synchronous=FULL`, every write in
//! its own transaction, so `save_keys` returning `Ok` means it is on disk.

use super::columns::{self, Columns, keys_json, settings_json};
use super::{Credential, KeyStore, Result, StoreError, next_version, now_unix};
use crate::private_fs::{self, FileProblem};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// Opens the store file as only its owner could have made it, or says why
/// not (no secrets in it: paths, uids and modes). Like ssh with `~/.ssh`: its
/// directory must be ours or root's and writable by nobody else (SQLite
/// creates the -wal and -shm files there by name, so even a sticky shared
/// directory such as /tmp would let another user plant them), each directory
/// above it ours or root's and writable by others only if sticky; the file is
/// not a link, is ours, and nobody else may write it. A new file is made 0600
/// without following links (`O_CREAT | O_EXCL | O_NOFOLLOW`), and every check
/// is made on the open descriptor. A file others may only read is made 0600
/// (with a warning). Returns the descriptor, to be held while SQLite opens
/// the returned path, which resolves no link.
fn open_private(path: &Path) -> Result<(File, PathBuf), String> {
    let name = path
        .file_name()
        .ok_or_else(|| "not a file name".to_owned())?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| format!("its directory {}: {e}", parent.display()))?;
    let d = std::fs::metadata(&dir).map_err(|e| format!("its directory {}: {e}", dir.display()))?;
    let (shown_dir, mode) = (dir.display(), d.mode() & 0o7777);
    if !private_fs::ours_or_roots(&d) {
        return Err(format!(
            "its directory {shown_dir} belongs to another user (uid {}), who could replace the \
             store: keep it in a directory of your own",
            d.uid()
        ));
    }
    if private_fs::writable_by_others(&d) && mode & 0o1000 != 0 {
        return Err(format!(
            "its directory {shown_dir} is shared (mode {mode:04o}): another user could plant \
             the store's -wal or -shm file there, and SQLite would use it: keep the store in a \
             directory only you can write"
        ));
    }
    if private_fs::writable_by_others(&d) {
        return Err(format!(
            "its directory {shown_dir} can be written by other users (mode {mode:04o}), who \
             could replace the store: chmod go-w {shown_dir}, or keep the store elsewhere"
        ));
    }
    private_fs::check_ancestors(&dir)
        .map_err(|why| format!("{why}: keep the store where only you (and root) can write"))?;
    let real = dir.join(name);
    let shown = path.display();
    let file = match private_fs::open_nofollow(&real) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match private_fs::create_new_private(&real) {
                // Created meanwhile by another process: judge what is there.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    private_fs::open_nofollow(&real)
                }
                created => created,
            }
        }
        other => other,
    }
    .map_err(|e| {
        if private_fs::is_link_refused(&e) {
            "it is a symbolic link; rekey does not follow links to its store (one planted \
             there could send the tokens elsewhere): give the path of the file itself"
                .to_owned()
        } else {
            e.to_string()
        }
    })?;
    let m = file.metadata().map_err(|e| e.to_string())?;
    match private_fs::file_problem(&m) {
        None => {}
        Some(FileProblem::NotRegular) => return Err("it is not a regular file".into()),
        Some(FileProblem::Foreign(uid)) => {
            return Err(format!(
                "it belongs to another user (uid {uid}; you are uid {}), who could read or \
                 rewrite its tokens and settings: use a store of your own",
                private_fs::euid()
            ));
        }
        Some(FileProblem::WritableByOthers(mode)) => {
            return Err(format!(
                "it can be written by other users (mode {mode:04o}), who could have rewritten \
                 its token URLs: if you trust what is in it, chmod 600 {shown}"
            ));
        }
        Some(FileProblem::ReadableByOthers(mode)) => {
            // Ours, and nobody else could write it: close it from now on.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| {
                    format!("{shown} can be read by other users and chmod 600 failed: {e}")
                })?;
            tracing::warn!(
                path = %shown,
                mode = format!("{mode:04o}"),
                "the store could be read by other users; it is now 0600 (replace its secrets if anyone may have read them)"
            );
            tighten_sidecars(&real);
        }
    }
    Ok((file, real))
}

/// A store that was readable by others may have -wal and -shm files that
/// still are (SQLite gives them the database's mode when it creates them).
fn tighten_sidecars(real: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut name = real.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(f) = private_fs::open_nofollow(Path::new(&name))
            && let Ok(m) = f.metadata()
            && matches!(
                private_fs::file_problem(&m),
                Some(FileProblem::ReadableByOthers(_))
            )
        {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Whether `path` still names the file behind `checked`: what SQLite opened
/// by name is what was checked, unless the directory entry changed meanwhile.
fn still_names(path: &Path, checked: &File) -> Result<(), String> {
    let (now, then) = (
        std::fs::symlink_metadata(path).map_err(|e| e.to_string())?,
        checked.metadata().map_err(|e| e.to_string())?,
    );
    if (now.dev(), now.ino()) == (then.dev(), then.ino()) {
        Ok(())
    } else {
        Err("the file was replaced while it was being opened; nothing was read from it".into())
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
    /// Credentials as last read, each with the database state it was read
    /// in: a call's first read is then a cheap check instead of a query.
    cache: Mutex<HashMap<String, Cached>>,
}

/// A credential read at a [`Seen`] state of the database.
struct Cached {
    seen: Seen,
    credential: Credential,
}

/// What has changed the database: `PRAGMA data_version` moves when another
/// connection (another process, another `SqliteStore`) commits, and the
/// connection's total changes move with each of its own writes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    data_version: i64,
    own_changes: u64,
}

impl Seen {
    fn now(conn: &Connection) -> rusqlite::Result<Seen> {
        Ok(Seen {
            data_version: conn
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?,
            own_changes: conn.total_changes(),
        })
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, waiting up to 5 s for
    /// a lock another process holds.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_busy_timeout(path, Duration::from_secs(5))
    }

    /// As [`SqliteStore::open`], waiting up to `busy` for another process's lock.
    pub fn open_with_busy_timeout(path: impl AsRef<Path>, busy: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let refused = |reason: String| StoreError::Unusable {
            path: path.display().to_string(),
            reason,
        };
        let unusable = |e: rusqlite::Error| refused(e.to_string());
        let (checked, real) = open_private(&path).map_err(refused)?;
        // No CREATE: the file exists (checked, and held open); if it vanished
        // meanwhile SQLite must not make one with default permissions. No
        // URI: a name is a name. NOFOLLOW: SQLite refuses a link anywhere in
        // `real` (none, as resolved above, unless one was swapped in).
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&real, flags).map_err(unusable)?;
        // SQLite has opened the file by name; it reads nothing before the
        // first statement. The name must still lead to what was checked.
        still_names(&real, &checked).map_err(refused)?;
        drop(checked);
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
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The file this store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it. IMMEDIATE
    /// takes SQLite's write lock first, so a check-and-write is one step for
    /// every process on this machine.
    fn immediate<R>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R>) -> Result<R> {
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
    ) -> Result<()> {
        match self.conn().execute(sql, params).map_err(write)? {
            0 => Err(StoreError::UnknownCredential(name.into())),
            _ => Ok(()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached copy of `name`, if the database is still as it was read.
    fn cached(&self, name: &str, seen: Seen) -> Option<Credential> {
        let cache = self.cache();
        let hit = cache.get(name).filter(|c| c.seen == seen)?;
        Some(hit.credential.clone())
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

/// One credential by name (a constant, so the statement is prepared once),
/// reading [`columns::NAMES`].
const SELECT_ONE: &str = "SELECT name, settings, keys, version, updated_at, refresh_in_doubt, \
    dead_grant_code, dead_grant_at FROM credentials WHERE name = ?1";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Columns> {
    Ok(Columns {
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

fn write(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

impl KeyStore for SqliteStore {
    fn load(&self, name: &str) -> Result<Credential> {
        let conn = self.conn();
        let seen = Seen::now(&conn).map_err(|e| self.unusable(e))?;
        if let Some(credential) = self.cached(name, seen) {
            return Ok(credential);
        }
        let row = conn
            .prepare_cached(SELECT_ONE)
            .and_then(|mut stmt| stmt.query_row([name], read_row).optional())
            .map_err(|e| self.unusable(e))?;
        let Some(row) = row else {
            self.cache().remove(name);
            return Err(StoreError::UnknownCredential(name.into()));
        };
        let credential = row.into_credential()?;
        // Read after `seen`: a commit in between makes the next check miss.
        self.cache().insert(
            name.to_owned(),
            Cached {
                seen,
                credential: credential.clone(),
            },
        );
        Ok(credential)
    }

    /// A cached copy confirmed current by `PRAGMA data_version` (a read of
    /// the WAL index, which does not wait for ordinary writers) and the
    /// connection's own change count; `None` if another thread holds the
    /// connection or nothing current is cached. Runs on the caller's async
    /// thread: while another process holds the WAL index's read marks (WAL
    /// recovery after a crash), SQLite's own retries park that thread for
    /// as long, up to ~10 s, as a blocking-thread read would wait too.
    fn load_now(&self, name: &str) -> Option<Result<Credential>> {
        let conn = self.conn.try_lock().ok()?;
        let seen = Seen::now(&conn).ok()?;
        self.cached(name, seen).map(Ok)
    }

    fn save_keys(&self, name: &str, keys: &TokenSet, expected_version: Option<u64>) -> Result<u64> {
        let keys = keys_json(keys)?;
        self.immediate(|tx| {
            let stored: i64 = tx
                .query_row(
                    "SELECT version FROM credentials WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(write)?
                .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
            let version = next_version(name, stored as u64, expected_version)?;
            tx.execute(
                // Saved keys settle a refresh in doubt and revive a dead grant.
                "UPDATE credentials SET keys = ?2, version = ?3, updated_at = ?4,
                 refresh_in_doubt = 0, dead_grant_code = NULL, dead_grant_at = NULL
             WHERE name = ?1",
                params![name, keys, version as i64, now_unix()],
            )
            .map_err(write)?;
            Ok(version)
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
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

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = now_millis();
        let renewed = self
            .conn()
            .execute(RENEW, params![name, holder, expiry_millis(now, ttl), now])
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(renewed == 1)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                [name, holder],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(())
    }

    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
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

    fn clear_refresh_in_doubt(&self, name: &str) -> Result<()> {
        self.update_credential(
            name,
            "UPDATE credentials SET refresh_in_doubt = 0 WHERE name = ?1",
            params![name],
        )
    }

    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<()> {
        self.update_credential(
            name,
            "UPDATE credentials SET dead_grant_code = ?2, dead_grant_at = ?3 WHERE name = ?1",
            params![name, code, now_unix()],
        )
    }

    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()> {
        let keys = keys.map(keys_json).transpose()?;
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
                params![name, settings_json(settings), keys, now_unix()],
            )
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Credential>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM credentials ORDER BY name",
                columns::NAMES
            ))
            .map_err(|e| self.unusable(e))?;
        let rows = stmt
            .query_map([], read_row)
            .map_err(|e| self.unusable(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.unusable(e))?;
        rows.into_iter().map(Columns::into_credential).collect()
    }

    fn remove(&self, name: &str) -> Result<bool> {
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

    fn keys(access: &str) -> TokenSet {
        TokenSet::stored(format!(r#"{{"access_token":"{access}"}}"#))
    }

    fn access_token(c: &Credential) -> String {
        let keys: serde_json::Value =
            serde_json::from_str(c.keys.as_ref().unwrap().expose()).unwrap();
        keys["access_token"].as_str().unwrap().to_owned()
    }

    /// The read cache never hides a write: this store's own, or another
    /// connection's (another process would be the same to SQLite).
    #[test]
    fn cached_reads_see_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (a, b) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        let settings = Settings::new("http://127.0.0.1/token", "app");
        a.put("c", &settings, Some(&keys("one"))).unwrap();
        assert!(
            a.load_now("c").is_none(),
            "nothing read yet, nothing cached"
        );
        assert_eq!(access_token(&a.load("c").unwrap()), "one");
        let hit = a.load_now("c").expect("a current cached copy").unwrap();
        assert_eq!(access_token(&hit), "one");

        let v = a.load("c").unwrap().version;
        b.save_keys("c", &keys("two"), Some(v)).unwrap();
        assert!(a.load_now("c").is_none(), "another connection committed");
        assert_eq!(access_token(&a.load("c").unwrap()), "two");

        a.save_keys("c", &keys("three"), Some(v + 1)).unwrap();
        assert!(a.load_now("c").is_none(), "this connection wrote");
        assert_eq!(access_token(&a.load("c").unwrap()), "three");

        b.remove("c").unwrap();
        assert!(a.load_now("c").is_none());
        assert!(matches!(a.load("c"), Err(StoreError::UnknownCredential(_))));
    }

    #[test]
    fn the_one_row_query_reads_the_columns_read_row_expects() {
        assert!(SELECT_ONE.contains(columns::NAMES), "{SELECT_ONE}");
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
