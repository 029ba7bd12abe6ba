//! PostgreSQL store, for fleets: every machine's workers share one credential
//! table and one lease table. Each operation is a single statement, so it is
//! atomic on its own and durable when it returns (synchronous_commit), and the
//! lease uses the server's clock, so machines' clock skew does not matter.
//!
//! Every call is bounded ([`PostgresStore::DEFAULT_CALL_TIMEOUT`] unless set):
//! the connection lives on a thread of the store's own, and a caller waits no
//! longer than that for its answer. A connection that breaks (server
//! restarted, network reset, backend terminated) is replaced and the
//! operation retried once on the new one, in a form that is correct even if
//! the first attempt had committed. A connection that stalls is abandoned to
//! its thread, and the next call connects anew. The server and the kernel are
//! told to give up before the caller: connect, statement and TCP (keepalive,
//! `tcp_user_timeout`) timeouts derive from the call timeout, unless the URL
//! sets them (`connect_timeout`, `keepalives_idle`, `tcp_user_timeout`,
//! `options=-c statement_timeout=…`).
//!
//! Uses the blocking `postgres` client on that thread: callers block only on a
//! channel, so any thread may call, though the host calls from blocking ones.

use super::{Credential, DeadGrant, KeyStore, StoreError, json_position, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use postgres::{Client, Config, NoTls};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Tables as this version creates them; [`MIGRATE`] brings older ones up to it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rekey_credentials (
    name             TEXT PRIMARY KEY,
    settings         TEXT NOT NULL,
    keys             TEXT,
    version          BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL,
    refresh_in_doubt BOOLEAN NOT NULL DEFAULT FALSE,
    dead_grant_code  TEXT,
    dead_grant_at    BIGINT
);
CREATE TABLE IF NOT EXISTS rekey_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
";

/// Adds the columns a store created by an earlier version lacks. ALTER TABLE
/// takes an exclusive lock even when it has nothing to add, which would queue
/// a fleet's reads behind every worker's start: it only runs when needed.
const MIGRATE: &str = "
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = 'rekey_credentials'::regclass AND NOT attisdropped
          AND attname IN ('refresh_in_doubt', 'dead_grant_code', 'dead_grant_at')) < 3
    THEN
        ALTER TABLE rekey_credentials
            ADD COLUMN IF NOT EXISTS refresh_in_doubt BOOLEAN NOT NULL DEFAULT FALSE,
            ADD COLUMN IF NOT EXISTS dead_grant_code TEXT,
            ADD COLUMN IF NOT EXISTS dead_grant_at BIGINT;
    END IF;
END
$$;
";

/// Connection threads a store keeps at most, stalled ones included: while
/// PostgreSQL (or a proxy before it) accepts connections but never answers,
/// each call that times out leaves one behind, until the kernel's timeouts
/// or the peer end it. Beyond this many, calls fail at once.
const MAX_THREADS: usize = 4;

/// Longest lease the server is asked to count: a longer ttl takes the lease
/// for this long (effectively never expiring) rather than overflowing.
const MAX_TTL: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// A store in PostgreSQL tables `rekey_credentials` and `rekey_leases`.
pub struct PostgresStore {
    /// Where, for messages: the URL without its password.
    target: String,
    config: Arc<Config>,
    call_timeout: Duration,
    /// The thread that owns the connection; none after one was abandoned.
    worker: Mutex<Option<Worker>>,
    /// Numbers workers, so that a late caller abandons only its own.
    spawned: AtomicU64,
    /// Worker threads alive, abandoned ones included.
    threads: Arc<AtomicUsize>,
}

/// A thread owning one connection (made on demand), running jobs in order.
/// It ends once its queue is dropped (store dropped, worker abandoned) and
/// drained; its connection closes with it, on that plain thread.
struct Worker {
    id: u64,
    jobs: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// What a worker thread keeps between jobs.
struct Session {
    config: Arc<Config>,
    target: String,
    client: Option<Client>,
}

/// How an operation reports PostgreSQL's failure: reads say the store is
/// unusable, writes that the write failed (which the host may retry).
#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

/// An operation's failure: PostgreSQL's (maybe a lost connection), or a
/// verdict (conflict, unknown name, damaged row).
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// A retry follows a lost connection: the first attempt may have committed,
/// and the operation must allow for that.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    First,
    Retry,
}

impl PostgresStore {
    /// How long a call may take by default, reconnecting included: well under
    /// the host's default lease TTL (40 s), which must exceed it.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects (plain TCP: keep it on loopback or a private network) and
    /// creates the tables if needed, or adds what an older version's lack.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_call_timeout(url, Self::DEFAULT_CALL_TIMEOUT)
    }

    /// As [`PostgresStore::connect`], with every call (this one included)
    /// bounded by `call_timeout`; the connection's own timeouts derive from
    /// it. Keep it below the host's lease TTL.
    pub fn connect_with_call_timeout(
        url: &str,
        call_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let target = without_password(url);
        let config = configure(url, call_timeout).map_err(|e| StoreError::Unusable {
            path: target.clone(),
            reason: describe(&e),
        })?;
        let store = PostgresStore {
            target,
            config: Arc::new(config),
            call_timeout,
            worker: Mutex::new(None),
            spawned: AtomicU64::new(0),
            threads: Arc::default(),
        };
        // Many workers may start at once; serialise the CREATEs. The batch is
        // one transaction: a transaction-level lock is held until its commit,
        // where an unlock inside it would let the next worker in before the
        // tables are visible (its CREATE then fails on a duplicate key).
        let setup = format!("SELECT pg_advisory_xact_lock(7412); {SCHEMA} {MIGRATE}");
        store.call(Kind::Read, move |c, _| Ok(c.batch_execute(&setup)?))?;
        Ok(store)
    }

    /// Runs `op` on the worker's connection, waiting at most the call timeout
    /// for it. `op` must be correct as a [`Attempt::Retry`] too.
    fn call<R: Send + 'static>(
        &self,
        kind: Kind,
        op: impl FnMut(&mut Client, Attempt) -> Result<R, Fail> + Send + 'static,
    ) -> Result<R, StoreError> {
        let deadline = Instant::now() + self.call_timeout;
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |session: &mut Session| {
            let _ = reply.send(session.run(kind, deadline, op));
        });
        let worker = self
            .submit(job)
            .map_err(|reason| session_error(kind, &self.target, reason))?;
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(wait) => {
                // Stalled (or its thread died): leave it be, and let the next
                // call connect anew rather than queue behind it.
                self.abandon(worker);
                let reason = match wait {
                    mpsc::RecvTimeoutError::Timeout => format!(
                        "no answer from PostgreSQL within {:?} (a write may still land)",
                        self.call_timeout
                    ),
                    mpsc::RecvTimeoutError::Disconnected => "the connection's thread failed".into(),
                };
                Err(session_error(kind, &self.target, reason))
            }
        }
    }

    /// Queues `job` on the current worker, starting one if there is none;
    /// returns that worker's id.
    fn submit(&self, mut job: Job) -> Result<u64, String> {
        let mut slot = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        // Twice at most: a worker whose thread died hands the job back.
        for _ in 0..2 {
            let worker = match &mut *slot {
                Some(w) => w,
                empty => empty.insert(self.spawn()?),
            };
            match worker.jobs.send(job) {
                Ok(()) => return Ok(worker.id),
                Err(mpsc::SendError(back)) => {
                    job = back;
                    *slot = None;
                }
            }
        }
        Err("the connection's thread keeps failing".into())
    }

    fn spawn(&self) -> Result<Worker, String> {
        if self.threads.load(Ordering::SeqCst) >= MAX_THREADS {
            return Err(format!(
                "{MAX_THREADS} connections to PostgreSQL are stalled; not opening another"
            ));
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut session = Session {
            config: self.config.clone(),
            target: self.target.clone(),
            client: None,
        };
        let alive = Alive::new(self.threads.clone());
        std::thread::Builder::new()
            .name("rekey-postgres".into())
            .spawn(move || {
                let _alive = alive;
                queue.into_iter().for_each(|job| job(&mut session));
                // The connection closes here, before the thread counts as gone.
                drop(session);
            })
            .map_err(|e| format!("cannot start the connection's thread: {e}"))?;
        let id = self.spawned.fetch_add(1, Ordering::Relaxed);
        Ok(Worker { id, jobs })
    }

    fn abandon(&self, id: u64) {
        let mut slot = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|w| w.id == id) {
            *slot = None;
        }
    }
}

/// Counts a worker thread while it lives (also when spawning it failed).
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Alive(count)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    /// The connection, made anew if there is none or it closed.
    fn client(&mut self) -> Result<&mut Client, postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(self.config.connect(NoTls)?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// The connection, if it is ready while the caller still waits: a call
    /// queued behind a stalled one, or whose connect took too long, must not
    /// start its statement (a write would land after its error was reported).
    fn client_before(&mut self, deadline: Instant) -> Result<&mut Client, String> {
        let late = || "not started: the caller stopped waiting".to_owned();
        if Instant::now() >= deadline {
            return Err(late());
        }
        if let Err(e) = self.client() {
            return Err(format!("cannot connect: {}", describe(&e)));
        }
        if Instant::now() >= deadline {
            return Err(late());
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    fn run<R>(
        &mut self,
        kind: Kind,
        deadline: Instant,
        mut op: impl FnMut(&mut Client, Attempt) -> Result<R, Fail>,
    ) -> Result<R, StoreError> {
        let first = match self.client_before(deadline) {
            Ok(c) => op(c, Attempt::First),
            Err(reason) => return Err(self.error(kind, reason)),
        };
        let lost = match first {
            Err(Fail::Pg(e)) if self.lost(&e) => e,
            other => return other.map_err(|f| self.fail(kind, f)),
        };
        // The connection is gone (server restarted, reset, backend killed):
        // once more on a new one, if the caller is still waiting.
        self.client = None;
        let second = match self.client_before(deadline) {
            Ok(c) => op(c, Attempt::Retry),
            Err(reason) => {
                return Err(self.error(kind, format!("{}; then {reason}", describe(&lost))));
            }
        };
        if let Err(Fail::Pg(e)) = &second
            && self.lost(e)
        {
            self.client = None;
        }
        second.map_err(|f| self.fail(kind, f))
    }

    /// Whether `e` leaves the connection unusable, as opposed to a statement's
    /// own error (say, its timeout) on a healthy connection.
    fn lost(&self, e: &postgres::Error) -> bool {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            return true;
        }
        match e.as_db_error() {
            // FATAL: the server ended the session (shutdown, terminated
            // backend); class 08: a connection exception.
            Some(db) => {
                matches!(db.severity(), "FATAL" | "PANIC") || db.code().code().starts_with("08")
            }
            // I/O, a closed connection, a protocol error: nothing to trust.
            None => true,
        }
    }

    fn fail(&self, kind: Kind, f: Fail) -> StoreError {
        match f {
            Fail::Store(e) => e,
            Fail::Pg(e) => self.error(kind, describe(&e)),
        }
    }

    fn error(&self, kind: Kind, reason: String) -> StoreError {
        session_error(kind, &self.target, reason)
    }
}

fn session_error(kind: Kind, target: &str, reason: String) -> StoreError {
    match kind {
        Kind::Read => StoreError::Unusable {
            path: target.to_owned(),
            reason,
        },
        Kind::Write => StoreError::Write(reason),
    }
}

/// The URL's settings, plus timeouts derived from `call` where it sets none,
/// so that the server and the kernel give up before the caller does.
fn configure(url: &str, call: Duration) -> Result<Config, postgres::Error> {
    let mut config: Config = url.parse()?;
    let at_least_1s = |d: Duration| d.max(Duration::from_secs(1));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(at_least_1s(call / 4));
    }
    // Data sent and unacknowledged this long ends the connection (Linux).
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(at_least_1s(call / 2));
    }
    // On by default, but probing only after 2 h idle: a peer gone while the
    // connection idled between calls would be found by the next call.
    if config.get_keepalives() && config.get_keepalives_idle() == Duration::from_secs(7200) {
        config.keepalives_idle(at_least_1s(call / 4));
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(1));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
    }
    let options = config.get_options().unwrap_or("").to_owned();
    if !options.contains("statement_timeout") {
        // The server cancels (and rolls back) a statement before the caller
        // gives up on it, so that a slow write fails cleanly, not in doubt.
        let ms = (call / 2).as_millis();
        config.options(format!("{options} -c statement_timeout={ms}").trim_start());
    }
    Ok(config)
}

/// The server's message when there is one (its Display is just "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

const SELECT: &str = "SELECT name, settings, keys, version, updated_at,
    refresh_in_doubt, dead_grant_code, dead_grant_at FROM rekey_credentials";

fn to_credential(row: &postgres::Row) -> Result<Credential, StoreError> {
    let name: String = row.get(0);
    let settings: String = row.get(1);
    let settings: Settings = serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt {
        name: name.clone(),
        reason: format!("settings: {}", json_position(&e)),
    })?;
    let keys: Option<String> = row.get(2);
    let version: i64 = row.get(3);
    let dead_grant_code: Option<String> = row.get(6);
    let dead_grant_at: Option<i64> = row.get(7);
    Ok(Credential {
        name,
        settings,
        keys: keys.map(TokenSet::stored),
        version: version.max(0) as u64,
        updated_at: row.get(4),
        needs_authorization: dead_grant_code.map(|code| DeadGrant {
            code,
            at: dead_grant_at.unwrap_or(0),
        }),
        refresh_in_doubt: row.get(5),
    })
}

/// A lease's ttl in milliseconds, for `$3::BIGINT * INTERVAL '1 millisecond'`.
fn ttl_millis(ttl: Duration) -> i64 {
    ttl.min(MAX_TTL).as_millis() as i64
}

/// Extends a live lease of its holder ($1 name, $2 holder, $3 ttl in ms).
const RENEW: &str = "UPDATE rekey_leases
    SET expires_at = clock_timestamp() + $3::BIGINT * INTERVAL '1 millisecond'
    WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()";

/// `save_keys` in one statement: the compare-and-set ($4, the expected
/// version, or NULL for none) and what was stored before it. On a retry
/// ($5), keys already stored count as saved by the first attempt, and are not
/// written twice. A successful save clears both marks.
const SAVE_KEYS: &str = "
WITH saved AS (
    UPDATE rekey_credentials
    SET keys = $2, version = version + 1, updated_at = $3,
        refresh_in_doubt = FALSE, dead_grant_code = NULL, dead_grant_at = NULL
    WHERE name = $1 AND CASE
        WHEN $4::BIGINT IS NULL THEN NOT ($5::BOOLEAN AND keys IS NOT DISTINCT FROM $2::TEXT)
        ELSE version = $4
    END
    RETURNING version
)
SELECT (SELECT version FROM saved), version, keys IS NOT DISTINCT FROM $2::TEXT
FROM rekey_credentials WHERE name = $1";

/// Whether `put` brings new keys ($3 the keys or NULL): on a retry ($5), keys
/// already stored were the first attempt's, and not new again (no second
/// version bump; marks set since then stay).
macro_rules! new_keys {
    () => {
        "($3::TEXT IS NOT NULL AND NOT ($5::BOOLEAN AND rekey_credentials.keys IS NOT DISTINCT FROM $3::TEXT))"
    };
}

/// New keys clear both marks; a settings edit keeps them.
const PUT: &str = concat!(
    "INSERT INTO rekey_credentials (name, settings, keys, version, updated_at)
     VALUES ($1, $2, $3, 0, $4)
     ON CONFLICT (name) DO UPDATE SET
         settings = $2,
         keys = COALESCE($3, rekey_credentials.keys),
         updated_at = $4,
         version = rekey_credentials.version + CASE WHEN ",
    new_keys!(),
    " THEN 1 ELSE 0 END,
         refresh_in_doubt = rekey_credentials.refresh_in_doubt AND NOT ",
    new_keys!(),
    ",
         dead_grant_code = CASE WHEN ",
    new_keys!(),
    " THEN NULL ELSE rekey_credentials.dead_grant_code END,
         dead_grant_at = CASE WHEN ",
    new_keys!(),
    " THEN NULL ELSE rekey_credentials.dead_grant_at END"
);

impl KeyStore for PostgresStore {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        let name = name.to_owned();
        self.call(Kind::Read, move |c, _| {
            let row = c
                .query_opt(&format!("{SELECT} WHERE name = $1"), &[&name])?
                .ok_or_else(|| StoreError::UnknownCredential(name.clone()))?;
            Ok(to_credential(&row)?)
        })
    }

    fn save_keys(
        &self,
        name: &str,
        keys: &TokenSet,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_keys(Some(keys))?;
        let (name, keys) = (name.to_owned(), keys.expose().to_owned());
        let expected = expected_version.map(|v| v as i64);
        self.call(Kind::Write, move |c, attempt| {
            let retry = attempt == Attempt::Retry;
            let row = c
                .query_opt(SAVE_KEYS, &[&name, &keys, &now_unix(), &expected, &retry])?
                .ok_or_else(|| StoreError::UnknownCredential(name.clone()))?;
            let (saved, stored, ours): (Option<i64>, i64, bool) =
                (row.get(0), row.get(1), row.get(2));
            match (saved, expected) {
                (Some(version), _) => Ok(version as u64),
                // The lost first attempt had committed: our keys, one past
                // what we expected (or, unconditional, simply ours).
                (None, Some(e)) if retry && ours && stored == e + 1 => Ok(stored as u64),
                (None, None) if retry && ours => Ok(stored as u64),
                (None, _) => Err(StoreError::Conflict(name.clone()).into()),
            }
        })
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        validate_keys(keys)?;
        let settings = serde_json::to_string(settings).expect("settings serialize");
        let name = name.to_owned();
        let keys = keys.map(|k| k.expose().to_owned());
        self.call(Kind::Write, move |c, attempt| {
            let retry = attempt == Attempt::Retry;
            c.execute(PUT, &[&name, &settings, &keys, &now_unix(), &retry])?;
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        self.call(Kind::Read, |c, _| {
            c.query(&format!("{SELECT} ORDER BY name"), &[])?
                .iter()
                .map(|row| to_credential(row).map_err(Fail::from))
                .collect()
        })
    }

    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(Kind::Write, move |c, attempt| {
            let n = c.execute("DELETE FROM rekey_credentials WHERE name = $1", &[&name])?;
            if n == 0 && attempt == Attempt::Retry {
                // The lost attempt may have been the one that removed it.
                let reason = "the connection was lost while removing: it may have been removed";
                return Err(StoreError::Write(reason.into()).into());
            }
            Ok(n > 0)
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (name, holder, ttl_ms) = (name.to_owned(), holder.to_owned(), ttl_millis(ttl));
        // Safe to retry: taking one's own lease again only extends it.
        self.call(Kind::Write, move |c, _| {
            let row = c.query_opt(
                "INSERT INTO rekey_leases (name, holder, expires_at)
                 VALUES ($1, $2, clock_timestamp() + $3::BIGINT * INTERVAL '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                 WHERE rekey_leases.expires_at <= clock_timestamp() OR rekey_leases.holder = EXCLUDED.holder
                 RETURNING holder",
                &[&name, &holder, &ttl_ms],
            )?;
            Ok(row.is_some())
        })
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (name, holder, ttl_ms) = (name.to_owned(), holder.to_owned(), ttl_millis(ttl));
        self.call(Kind::Write, move |c, _| {
            Ok(c.execute(RENEW, &[&name, &holder, &ttl_ms])? == 1)
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.call(Kind::Write, move |c, _| {
            c.execute(
                "DELETE FROM rekey_leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )?;
            Ok(())
        })
    }

    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (name, holder, ttl_ms) = (name.to_owned(), holder.to_owned(), ttl_millis(ttl));
        // One statement, so the renewal and the mark commit together, before
        // the refresh request leaves; a data-modifying WITH always runs in
        // full. Safe to retry: the holder renews and marks again.
        let statement = format!(
            "WITH renewed AS ({RENEW} RETURNING name),
             marked AS (
                 UPDATE rekey_credentials SET refresh_in_doubt = TRUE
                 WHERE name IN (SELECT name FROM renewed) RETURNING name
             )
             SELECT count(*) FROM renewed"
        );
        self.call(Kind::Write, move |c, _| {
            let renewed: i64 = c.query_one(&statement, &[&name, &holder, &ttl_ms])?.get(0);
            Ok(renewed == 1)
        })
    }

    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.call(Kind::Write, move |c, _| {
            let n = c.execute(
                "UPDATE rekey_credentials SET refresh_in_doubt = FALSE WHERE name = $1",
                &[&name],
            )?;
            if n == 0 {
                return Err(StoreError::UnknownCredential(name.clone()).into());
            }
            Ok(())
        })
    }

    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<(), StoreError> {
        let (name, code) = (name.to_owned(), code.to_owned());
        self.call(Kind::Write, move |c, _| {
            let n = c.execute(
                "UPDATE rekey_credentials SET dead_grant_code = $2, dead_grant_at = $3 WHERE name = $1",
                &[&name, &code, &now_unix()],
            )?;
            if n == 0 {
                return Err(StoreError::UnknownCredential(name.clone()).into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::without_password("postgres://rekey:hunter2@db.internal:5432/app"),
            "postgres://rekey@db.internal:5432/app"
        );
        assert_eq!(
            super::without_password("postgres://db/app"),
            "postgres://db/app"
        );
    }

    #[test]
    fn timeouts_derive_from_the_call_timeout_unless_the_url_sets_them() {
        let call = Duration::from_secs(10);
        let c = super::configure("postgres://u@127.0.0.1/db", call).unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_millis(2500)));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_millis(2500));
        assert_eq!(c.get_options(), Some("-c statement_timeout=5000"));

        let c = super::configure(
            "postgres://u@127.0.0.1/db?connect_timeout=7&keepalives_idle=60&options=-c%20statement_timeout%3D900",
            call,
        )
        .unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_options(), Some("-c statement_timeout=900"));
    }

    #[test]
    fn a_huge_ttl_is_capped() {
        assert_eq!(super::ttl_millis(Duration::from_millis(300)), 300);
        assert_eq!(
            super::ttl_millis(Duration::MAX),
            super::MAX_TTL.as_millis() as i64
        );
    }
}
