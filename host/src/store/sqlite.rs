//! The default store: one SQLite file, WAL, `synchronous=FULL`, every write in
//! a `BEGIN IMMEDIATE` transaction, so a write returning `Ok` is on disk.
//! Tables and migration as `docs/record-store.md` says (schema version 3 in
//! `PRAGMA user_version`), shared with the Node.js and Python hosts.

use super::columns::{
    self, Columns, MIGRATED_MARK_HOLDER, RecordColumns, SCHEMA_VERSION, check_schema_version,
    keys_json, settings_json,
};
use super::{Credential, KeyStore, Record, Result, StoreError, now_unix};
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

/// Schema version 3, as `docs/record-store.md` gives it.
const CREATE: &str = "
CREATE TABLE IF NOT EXISTS credentials (
    name            TEXT PRIMARY KEY NOT NULL,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   INTEGER,
    lease_holder    TEXT,
    lease_until_ms  INTEGER,
    mark_holder     TEXT,
    mark_at_ms      INTEGER
) STRICT;
";

/// Columns of 0.2 the first release lacked. Stores before version 3 carry
/// no version, so these are looked for; once present, the store is 0.2.
const COLUMNS_OF_0_2: [(&str, &str); 3] = [
    ("refresh_in_doubt", "INTEGER NOT NULL DEFAULT 0"),
    ("dead_grant_code", "TEXT"),
    ("dead_grant_at", "INTEGER"),
];

/// 0.2 → 3: the lease and mark columns; a refresh in doubt stays in doubt
/// as a mark (?1 its holder) set when the keys were last written; the 0.2
/// lease table goes (a lease is at most a TTL old: nothing is lost).
const FROM_0_2: [&str; 7] = [
    "ALTER TABLE credentials ADD COLUMN lease_holder TEXT",
    "ALTER TABLE credentials ADD COLUMN lease_until_ms INTEGER",
    "ALTER TABLE credentials ADD COLUMN mark_holder TEXT",
    "ALTER TABLE credentials ADD COLUMN mark_at_ms INTEGER",
    "UPDATE credentials SET mark_holder = ?1, mark_at_ms = updated_at * 1000
     WHERE refresh_in_doubt != 0",
    "ALTER TABLE credentials DROP COLUMN refresh_in_doubt",
    "DROP TABLE IF EXISTS leases",
];

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Creates the tables, or brings a 0.2 store to version 3, in one IMMEDIATE
/// transaction: of several processes opening one store at once, one does
/// it and the others then find version 3. A newer schema is refused.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let text = |e: rusqlite::Error| e.to_string();
    // The common case, an up-to-date store, takes no write lock.
    let found = user_version(conn).map_err(text)?;
    check_schema_version(found)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(text)?;
    // Under the write lock, again: another process may have done it meanwhile.
    let found = user_version(&tx).map_err(text)?;
    check_schema_version(found)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let legacy: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'credentials'",
            [],
            |r| r.get(0),
        )
        .map_err(text)?;
    if legacy {
        from_0_2(&tx)
            .map_err(|e| format!("migrating it from rekey 0.2 failed, nothing changed: {e}"))?;
    } else {
        tx.execute_batch(CREATE).map_err(text)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(text)?;
    tx.commit().map_err(text)
}

fn from_0_2(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let present = tx
        .prepare("SELECT name FROM pragma_table_info('credentials')")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    for (column, declaration) in COLUMNS_OF_0_2 {
        if !present.iter().any(|p| p == column) {
            tx.execute_batch(&format!(
                "ALTER TABLE credentials ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    for step in FROM_0_2 {
        match step.contains("?1") {
            true => tx.execute(step, [MIGRATED_MARK_HOLDER])?,
            false => tx.execute(step, [])?,
        };
    }
    Ok(())
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
    let problem = private_fs::file_problem(&m);
    if !matches!(problem, Some(FileProblem::NotRegular)) {
        // Before anything changes it (its mode below, SQLite's journal
        // setup): a file given by mistake stays exactly as it was.
        check_header(&file, m.len())?;
    }
    match problem {
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

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a file that is not an SQLite database, read through the checked
/// descriptor. An empty file is a new store (SQLite's rule too; it is what
/// a first open creates).
fn check_header(file: &File, len: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(());
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match file.read_at(&mut head[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
    }
    if &head[..read] != SQLITE_MAGIC {
        return Err(
            "it is not a database (no SQLite header): nothing in it was read or \
                    changed; give the path of a rekey store, or a new file name"
                .into(),
        );
    }
    Ok(())
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

/// `PRAGMA journal_mode=WAL`, waiting up to `busy` for another
/// connection's lock as every other statement does.
///
/// A new store (or one in rollback mode) is switched by a transaction that
/// reads the file (a SHARED lock) and then writes its header (RESERVED,
/// then EXCLUSIVE). SQLite never calls the busy handler for that upgrade
/// from a read (two readers both waiting to write would wait forever), so
/// of several processes opening a new store at once (`credential add` run
/// in parallel, a fleet's first start) the one that finds another's
/// RESERVED lock got SQLITE_BUSY at once, "database is locked", whatever
/// the busy timeout. Its statement ends and its SHARED lock goes, so the
/// other switches; a retry then finds WAL set (no write, no upgrade).
fn switch_to_wal(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + busy;
    let mut delay = Duration::from_millis(1);
    // Processes started together should not retry in step.
    let jitter = Duration::from_micros(u64::from(std::process::id() % 997));
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && !left.is_zero() =>
            {
                // The last try at the deadline.
                std::thread::sleep((delay + jitter).min(left));
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

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
        switch_to_wal(&conn, busy).map_err(unusable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unusable)?;
        migrate(&mut conn).map_err(refused)?;
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
    /// every process on this machine; the commit returns once the WAL is
    /// synced (`synchronous=FULL`). Nothing is committed if `f` fails.
    fn immediate<R>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(write)?;
        let result = f(&tx)?;
        tx.commit().map_err(committing)?;
        Ok(result)
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
const SELECT_ONE: &str = "SELECT name, settings, keys, version, updated_at, dead_grant_code, \
    dead_grant_at, lease_holder, lease_until_ms, mark_holder, mark_at_ms \
    FROM credentials WHERE name = ?1";

/// The conditional write of `docs/record-store.md`.
const WRITE_RECORD: &str = "UPDATE credentials
    SET keys = ?1, lease_holder = ?2, lease_until_ms = ?3, mark_holder = ?4, mark_at_ms = ?5,
        dead_grant_code = ?6, dead_grant_at = ?7, version = version + 1, updated_at = ?8
    WHERE name = ?9 AND version = ?10";

/// Creates a credential or replaces its settings: new keys (?3) start the
/// record afresh (version + 1), none keep it as it is.
const PUT: &str = "INSERT INTO credentials (name, settings, keys, version, updated_at)
    VALUES (?1, ?2, ?3, 0, ?4)
    ON CONFLICT (name) DO UPDATE SET settings = ?2, updated_at = ?4,
        keys = COALESCE(?3, keys), version = version + (?3 IS NOT NULL),
        lease_holder = CASE WHEN ?3 IS NULL THEN lease_holder END,
        lease_until_ms = CASE WHEN ?3 IS NULL THEN lease_until_ms END,
        mark_holder = CASE WHEN ?3 IS NULL THEN mark_holder END,
        mark_at_ms = CASE WHEN ?3 IS NULL THEN mark_at_ms END,
        dead_grant_code = CASE WHEN ?3 IS NULL THEN dead_grant_code END,
        dead_grant_at = CASE WHEN ?3 IS NULL THEN dead_grant_at END";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Columns> {
    Ok(Columns {
        name: r.get(0)?,
        settings: r.get(1)?,
        keys: r.get(2)?,
        version: r.get(3)?,
        updated_at: r.get(4)?,
        dead_grant_code: r.get(5)?,
        dead_grant_at: r.get(6)?,
        lease_holder: r.get(7)?,
        lease_until_ms: r.get(8)?,
        mark_holder: r.get(9)?,
        mark_at_ms: r.get(10)?,
    })
}

/// A failure before COMMIT: the transaction rolls back, nothing is written.
fn write(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

/// A failed COMMIT. An I/O error there (a failed fsync of the WAL) may
/// leave the commit frame on disk, where recovery after a crash would find
/// it: the outcome is unknown. Anything else (disk full while appending,
/// busy) left no valid commit frame: nothing was written.
fn committing(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::SystemIoFailure) => StoreError::Unknown(format!(
            "the disk failed while committing ({e}); the write may surface after a restart"
        )),
        _ => write(e),
    }
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

    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64> {
        let c = RecordColumns::of(record)?;
        // A version beyond any row's matches none (-1: versions are >= 0).
        let expected_column = i64::try_from(expected).unwrap_or(-1);
        self.immediate(|tx| {
            let written = tx
                .prepare_cached(WRITE_RECORD)
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        c.keys,
                        c.lease_holder,
                        c.lease_until_ms,
                        c.mark_holder,
                        c.mark_at_ms,
                        c.dead_grant_code,
                        c.dead_grant_at,
                        now_unix(),
                        name,
                        expected_column,
                    ])
                })
                .map_err(write)?;
            if written == 1 {
                return Ok(expected + 1);
            }
            // Under the same write lock: the row's existence is current.
            let exists = tx
                .prepare_cached("SELECT 1 FROM credentials WHERE name = ?1")
                .and_then(|mut stmt| stmt.query_row([name], |_| Ok(())).optional())
                .map_err(write)?;
            Err(match exists {
                Some(()) => StoreError::Conflict(name.into()),
                None => StoreError::UnknownCredential(name.into()),
            })
        })
    }

    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()> {
        let keys = keys.map(keys_json).transpose()?;
        let settings = settings_json(settings);
        self.immediate(|tx| {
            tx.execute(PUT, params![name, settings, keys, now_unix()])
                .map_err(write)?;
            Ok(())
        })
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
        self.immediate(|tx| {
            let n = tx
                .execute("DELETE FROM credentials WHERE name = ?1", [name])
                .map_err(write)?;
            Ok(n > 0)
        })
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

    fn record(access: &str) -> Record {
        Record {
            keys: Some(keys(access)),
            ..Record::default()
        }
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
        b.write_record("c", v, &record("two")).unwrap();
        assert!(a.load_now("c").is_none(), "another connection committed");
        assert_eq!(access_token(&a.load("c").unwrap()), "two");

        a.write_record("c", v + 1, &record("three")).unwrap();
        assert!(a.load_now("c").is_none(), "this connection wrote");
        assert_eq!(access_token(&a.load("c").unwrap()), "three");

        // A refused write changes nothing: the cached copy stays good.
        assert!(a.load_now("c").is_some());
        assert!(matches!(
            b.write_record("c", v, &record("stale")),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(access_token(&a.load_now("c").unwrap().unwrap()), "three");

        let edited = Settings::new("http://127.0.0.1/token", "other-app");
        b.put("c", &edited, None).unwrap();
        assert!(a.load_now("c").is_none(), "a settings edit is a write");
        assert_eq!(a.load("c").unwrap().settings, edited);
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

    /// A text file given as the store by mistake is refused before its
    /// mode or a byte of it changes, even one others may read (which a
    /// store's check would otherwise make 0600).
    #[test]
    fn a_file_that_is_not_a_database_is_left_as_it_was() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let text = b"# my notes\nSQLite format 3 is not at the start\n".repeat(200);
        for (name, mode, content) in [
            ("notes.txt", 0o644, &text[..]),
            ("private.txt", 0o600, &text[..]),
            ("short.txt", 0o644, &b"SQLite"[..]),
            ("magic-late.txt", 0o640, &b"xSQLite format 3\0"[..]),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SqliteStore::open(&path)
                .err()
                .expect("a text file must not open");
            assert!(err.to_string().contains("not a database"), "{name}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "{name} changed");
            let now = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(now, mode, "{name}'s mode changed");
            for sidecar in ["-wal", "-shm", "-journal"] {
                assert!(!dir.path().join(format!("{name}{sidecar}")).exists());
            }
        }
        // An empty file is a new store, as a first open makes it.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        SqliteStore::open(&empty).unwrap();
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

    /// Another process creating the same new store holds the write lock of
    /// its own switch to WAL: this open waits for it, as the busy timeout
    /// says, instead of failing at once with "database is locked" (SQLite
    /// calls no busy handler for the switch's lock upgrade; `credential add`
    /// run in parallel on a new store failed so under load). Held longer
    /// than the timeout, the open fails, after the timeout.
    #[test]
    fn a_new_stores_switch_to_wal_waits_for_another_openers_lock() {
        use std::os::unix::fs::OpenOptionsExt;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        for (busy, held, opens) in [
            (Duration::from_secs(10), Duration::from_millis(1500), true),
            (
                Duration::from_millis(300),
                Duration::from_millis(1500),
                false,
            ),
        ] {
            let path = dir.path().join(format!("new-{}.db", busy.as_millis()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap();
            // What the other process holds in the middle of its switch.
            let other = Connection::open(&path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let releaser = std::thread::spawn(move || {
                let _ = rx.recv_timeout(held);
                other.execute_batch("COMMIT").unwrap();
            });
            let started = Instant::now();
            let opened = SqliteStore::open_with_busy_timeout(&path, busy);
            let waited = started.elapsed();
            drop(tx);
            releaser.join().unwrap();
            match opened {
                Ok(store) => {
                    assert!(opens, "opened although the lock was held past the timeout");
                    store
                        .put("c", &Settings::new("http://127.0.0.1/token", "app"), None)
                        .unwrap();
                    assert!(store.load("c").is_ok());
                }
                Err(e) => {
                    assert!(!opens, "{e}");
                    assert!(e.to_string().contains("database is locked"), "{e}");
                    assert!(
                        waited >= busy,
                        "failed after {waited:?}, before the timeout"
                    );
                }
            }
        }
    }
}
