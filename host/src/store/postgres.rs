//! PostgreSQL store, for fleets: every machine's workers, in any of rekey's
//! host languages, share one credential table (`docs/record-store.md`,
//! schema version 3). Each write is a single statement, so it is atomic on
//! its own and durable when it returns (committed).
//!
//! Every call is bounded ([`PostgresStore::DEFAULT_CALL_TIMEOUT`] unless set):
//! the connection lives on a thread of the store's own, and a caller waits no
//! longer than that for its answer. A connection that breaks (server
//! restarted, network reset, backend terminated) is replaced and the
//! operation retried once on the new one, in a form that is correct even if
//! the first attempt had committed; a write whose outcome that cannot settle
//! is reported [`StoreError::Unknown`]. A connection that stalls is abandoned to
//! its thread, and the next call connects anew. The server and the kernel are
//! told to give up before the caller: connect, statement and TCP (keepalive,
//! `tcp_user_timeout`) timeouts derive from the call timeout, unless the URL
//! sets them (`connect_timeout`, `keepalives_idle`, `tcp_user_timeout`,
//! `options=-c statement_timeout=…`).
//!
//! Uses the blocking `postgres` client on that thread: callers block only on a
//! channel, so any thread may call, though the host calls from blocking ones.
//!
//! TLS (rustls, with ring) as the URL's `sslmode` asks, with libpq's meanings:
//! none given or `disable`, plain TCP (rekey's default, unlike libpq's
//! `prefer`); `allow` or `prefer`, TLS if the server offers it, unverified,
//! else plain; `require`, TLS or no connection, the certificate unverified
//! (or its chain, when `sslrootcert` is given); `verify-ca`, the chain must
//! lead to `sslrootcert`; `verify-full`, that and the URL's host named in the
//! certificate. `sslrootcert=PATH` is a PEM file of CA certificates, `system`
//! the machine's. `postgres` knows neither the `verify-*` modes nor
//! `sslrootcert`: both are taken out of the URL and handled here.
//!
//! No password reaches a message: the URL is shown without it (userinfo or
//! query, any case or encoding) and every form of it is cut out of the
//! `postgres` crate's messages too.

use super::columns::{
    self, Columns, MIGRATED_MARK_HOLDER, RecordColumns, SCHEMA_VERSION, check_schema_version,
    keys_json, settings_json,
};
use super::{Credential, KeyStore, Record, Result, StoreError, now_unix};
use crate::settings::Settings;
use crate::tls::{CertCheck, Presented};
use crate::token_set::TokenSet;
use percent_encoding::percent_decode_str;
use postgres::config::SslMode as PgSslMode;
use postgres::{Client, Config, NoTls};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, RootCertStore};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Schema version 3, as `docs/record-store.md` gives it.
const CREATE: &str = "
CREATE TABLE IF NOT EXISTS rekey_credentials (
    name            TEXT PRIMARY KEY,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   BIGINT,
    lease_holder    TEXT,
    lease_until_ms  BIGINT,
    mark_holder     TEXT,
    mark_at_ms      BIGINT
);
CREATE TABLE IF NOT EXISTS rekey_schema (version INTEGER NOT NULL);
";

/// 0.2 → 3 (stores before 3 carry no version). The first release lacked
/// the 0.2 columns: `IF NOT EXISTS` adds them, so every such store is 0.2
/// first. Then the lease and mark columns; a refresh in doubt stays in
/// doubt as a mark set when the keys were last written; the 0.2 lease table
/// goes (a lease is at most a TTL old: nothing is lost).
fn from_0_2() -> String {
    format!(
        "ALTER TABLE rekey_credentials
             ADD COLUMN IF NOT EXISTS refresh_in_doubt BOOLEAN NOT NULL DEFAULT FALSE,
             ADD COLUMN IF NOT EXISTS dead_grant_code TEXT,
             ADD COLUMN IF NOT EXISTS dead_grant_at BIGINT,
             ADD COLUMN lease_holder TEXT,
             ADD COLUMN lease_until_ms BIGINT,
             ADD COLUMN mark_holder TEXT,
             ADD COLUMN mark_at_ms BIGINT;
         UPDATE rekey_credentials SET mark_holder = '{MIGRATED_MARK_HOLDER}',
             mark_at_ms = updated_at * 1000
         WHERE refresh_in_doubt;
         ALTER TABLE rekey_credentials DROP COLUMN refresh_in_doubt;
         DROP TABLE IF EXISTS rekey_leases;
         CREATE TABLE IF NOT EXISTS rekey_schema (version INTEGER NOT NULL);"
    )
}

/// Creates the tables, or brings a 0.2 store to version 3, in one
/// transaction under `pg_advisory_xact_lock(7301)`: of many workers (of any
/// host language) starting at once, one does it and the others then find
/// version 3. The lock is held until COMMIT, where an unlock inside would
/// let the next worker in before the tables are visible. `Ok(Err(why))`: the
/// schema is one this host must not touch (newer); nothing was changed.
fn set_up(c: &mut Client) -> Result<Result<(), String>, postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7301)", &[])?;
    let mut exists = |table: &str| -> Result<bool, postgres::Error> {
        Ok(tx
            .query_one("SELECT to_regclass($1::TEXT) IS NOT NULL", &[&table])?
            .get(0))
    };
    let (versioned, legacy) = (exists("rekey_schema")?, exists("rekey_credentials")?);
    let found: i64 = match versioned {
        true => tx
            .query_one(
                "SELECT COALESCE(max(version), 0)::BIGINT FROM rekey_schema",
                &[],
            )?
            .get(0),
        false => 0,
    };
    if let Err(why) = check_schema_version(found) {
        return Ok(Err(why));
    }
    if found == 0 {
        tx.batch_execute(&match legacy {
            true => from_0_2(),
            false => CREATE.to_owned(),
        })?;
        tx.batch_execute("DELETE FROM rekey_schema")?;
        let version = SCHEMA_VERSION as i32;
        tx.execute(
            "INSERT INTO rekey_schema (version) VALUES ($1)",
            &[&version],
        )?;
    }
    tx.commit()?;
    Ok(Ok(()))
}

/// Connection threads a store keeps at most, stalled ones included: while
/// PostgreSQL (or a proxy before it) accepts connections but never answers,
/// each call that times out leaves one behind, until the kernel's timeouts
/// or the peer end it. Beyond this many, calls fail at once.
const MAX_THREADS: usize = 4;

/// A store in PostgreSQL table `rekey_credentials` (version in `rekey_schema`).
pub struct PostgresStore {
    /// Where, for messages: the URL without its password.
    target: Arc<Target>,
    config: Arc<Config>,
    tls: Tls,
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
    tls: Tls,
    target: Arc<Target>,
    client: Option<Client>,
}

/// How an operation reports PostgreSQL's failure: reads say the store is
/// unusable; writes that the write failed (which the host may retry), or,
/// when the statement may have run and its outcome could not be settled,
/// that it is unknown.
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

    /// Connects to `url` (`postgres://` or `postgresql://`; TLS as its
    /// `sslmode` says, plain TCP without one: see the module's doc) and
    /// creates the tables if needed, or migrates a 0.2 store to version 3;
    /// refuses a store of a newer schema.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with_call_timeout(url, Self::DEFAULT_CALL_TIMEOUT)
    }

    /// As [`PostgresStore::connect`], with every call (this one included)
    /// bounded by `call_timeout`; the connection's own timeouts derive from
    /// it. Keep it below the host's lease TTL.
    pub fn connect_with_call_timeout(url: &str, call_timeout: Duration) -> Result<Self> {
        let mut target = Target::of(url);
        let configured = configure(url, call_timeout);
        if let Ok((config, _)) = &configured
            && let Some(password) = config.get_password()
        {
            target.also_hide(&String::from_utf8_lossy(password));
        }
        let target = Arc::new(target);
        let (config, tls) = configured.map_err(|reason| StoreError::Unusable {
            path: target.shown.clone(),
            reason: target.scrub(reason),
        })?;
        let store = PostgresStore {
            target,
            config: Arc::new(config),
            tls,
            call_timeout,
            worker: Mutex::new(None),
            spawned: AtomicU64::new(0),
            threads: Arc::default(),
        };
        let shown = store.target.shown.clone();
        store.call(Kind::Read, move |c, _| match set_up(c)? {
            Ok(()) => Ok(()),
            Err(reason) => Err(Fail::Store(StoreError::Unusable {
                path: shown.clone(),
                reason,
            })),
        })?;
        Ok(store)
    }

    /// Runs `op` on the worker's connection, waiting at most the call timeout
    /// for it. `op` must be correct as a [`Attempt::Retry`] too.
    fn call<R: Send + 'static>(
        &self,
        kind: Kind,
        op: impl FnMut(&mut Client, Attempt) -> Result<R, Fail> + Send + 'static,
    ) -> Result<R> {
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
                // The statement may have been sent, and may still run.
                Err(uncertain(kind, &self.target, reason))
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
            tls: self.tls.clone(),
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
            self.client = Some(match &self.tls {
                Tls::Off => self.config.connect(NoTls)?,
                Tls::On(tls) => self.config.connect(tls.clone())?,
            });
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
    ) -> Result<R> {
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
        // The first attempt may have committed: unless the retry settles
        // it (its answer, or a verdict), a write's outcome is unknown.
        let second = match self.client_before(deadline) {
            Ok(c) => op(c, Attempt::Retry),
            Err(reason) => {
                let reason = format!("{}; then {reason}", describe(&lost));
                return Err(uncertain(kind, &self.target, reason));
            }
        };
        match second {
            Err(Fail::Pg(e)) => {
                if self.lost(&e) {
                    self.client = None;
                }
                let reason = format!("{}; then {}", describe(&lost), describe(&e));
                Err(uncertain(kind, &self.target, reason))
            }
            other => other.map_err(|f| self.fail(kind, f)),
        }
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

/// A failure after a statement may have run: for a write, its outcome is
/// unknown (read the record to know).
fn uncertain(kind: Kind, target: &Target, reason: String) -> StoreError {
    match kind {
        Kind::Read => session_error(kind, target, reason),
        Kind::Write => StoreError::Unknown(target.scrub(reason)),
    }
}

/// Every message about the store passes here (or through [`uncertain`]): no
/// form of the password in it.
fn session_error(kind: Kind, target: &Target, reason: String) -> StoreError {
    let reason = target.scrub(reason);
    match kind {
        Kind::Read => StoreError::Unusable {
            path: target.shown.clone(),
            reason,
        },
        Kind::Write => StoreError::Write(reason),
    }
}

/// The URL's settings and how to connect (TLS), plus timeouts derived from
/// `call` where it sets none, so that the server and the kernel give up
/// before the caller does.
fn configure(url: &str, call: Duration) -> Result<(Config, Tls), String> {
    let (url, ssl) = take_ssl_params(url)?;
    let mut config: Config = url.parse().map_err(|e| describe(&e))?;
    let (mode, tls) = ssl.connector()?;
    config.ssl_mode(mode);
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
    Ok((config, tls))
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

/// A store URL as messages may show it, and what they must never show:
/// the password, in every form the URL holds it.
struct Target {
    /// The URL without its password (userinfo, or a query parameter whose
    /// name says password, in any case or encoding).
    shown: String,
    /// Each password as written and as decoded, longest first, cut out of
    /// every message (the `postgres` crate's included).
    secrets: Vec<String>,
}

impl Target {
    fn of(url: &str) -> Target {
        let mut target = Target {
            shown: String::new(),
            secrets: Vec::new(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            target.shown = "(not a URL, not shown)".into();
            return target;
        };
        // `postgres` ends the password at the first '@', a URL parser at the
        // authority's last: hide what either takes, show what both agree on.
        if let Some((_, password)) = rest.split_once('@').and_then(|(c, _)| c.split_once(':')) {
            target.also_hide(password);
            target.also_hide(&percent_decode_str(password).decode_utf8_lossy());
        }
        if ambiguous_credentials(rest) {
            // Parsers disagree on where the password ends: show nothing of it.
            target.shown = format!("{scheme}://…");
            return target;
        }
        let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (user, after) = match rest[..authority].rfind('@') {
            Some(at) => {
                let (user, password) = match rest[..at].split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (&rest[..at], None),
                };
                if let Some(password) = password {
                    target.also_hide(password);
                    target.also_hide(&percent_decode_str(password).decode_utf8_lossy());
                }
                (format!("{user}@"), &rest[at + 1..])
            }
            None => (String::new(), rest),
        };
        let shown_after = match after.split_once('?') {
            None => after.to_owned(),
            Some((path, query)) => {
                let pieces: Vec<String> = query
                    .split('&')
                    .map(|piece| match password_in(piece) {
                        None => piece.to_owned(),
                        Some((key, raw, decoded)) => {
                            target.also_hide(raw);
                            target.also_hide(&decoded);
                            format!("{key}=[redacted]")
                        }
                    })
                    .collect();
                format!("{path}?{}", pieces.join("&"))
            }
        };
        // A password may also stand elsewhere (a stray `?hunter2&…`).
        target.shown = target.scrub(format!("{scheme}://{user}{shown_after}"));
        target
    }

    /// Adds `secret` to what no message, the shown URL included, may hold.
    fn also_hide(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
            self.shown = self.shown.replace(secret, "[redacted]");
        }
    }

    /// `message` without any form of the password.
    fn scrub(&self, message: String) -> String {
        self.secrets.iter().fold(message, |m, secret| {
            m.replace(secret.as_str(), "[redacted]")
        })
    }
}

/// A query parameter that holds a password (`password`, `PASSWORD`,
/// `%70assword`, `sslpassword`, `password%3D…`): its name, decoded, and its
/// value as written and decoded.
fn password_in(piece: &str) -> Option<(String, &str, String)> {
    let decoded = percent_decode_str(piece).decode_utf8_lossy();
    let (key, value) = decoded.split_once('=').unwrap_or((&*decoded, ""));
    if !key.to_ascii_lowercase().contains("password") {
        return None;
    }
    // As written: after a literal '=', or all of it if the '=' was encoded.
    let raw = piece.split_once('=').map_or(piece, |(_, v)| v);
    Some((key.trim().to_owned(), raw, value.to_owned()))
}

/// True when parsers would disagree on where the credentials of `rest` (the
/// URL after `://`) end: `postgres` takes everything up to the first '@', so
/// a '/', '?' or '#' before it (unencoded in a password, or an '@' in the
/// path or query) would make the URL mean two things.
fn ambiguous_credentials(rest: &str) -> bool {
    rest.find('@')
        .is_some_and(|at| rest[..at].contains(['/', '?', '#']))
}

/// What the URL says about TLS, taken out of it: `postgres` does not know
/// `verify-ca`, `verify-full` or `sslrootcert`.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<String>,
    rootcert: Option<OsString>,
}

/// `url` without `sslmode` and `sslrootcert` (last one wins, as in libpq),
/// and what they said. Refuses a URL whose credentials are ambiguous.
fn take_ssl_params(url: &str) -> Result<(String, SslParams), String> {
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .ok_or_else(|| "not a postgres:// or postgresql:// URL".to_owned())?;
    if ambiguous_credentials(rest) {
        return Err(
            "a '/', '?' or '#' in the user name or password, and an '@' after the host, \
                    must be percent-encoded (%2F, %3F, %23, %40)"
                .into(),
        );
    }
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SslParams::default()));
    };
    let mut ssl = SslParams::default();
    let mut kept = Vec::new();
    for piece in query.split('&') {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let value = || percent_decode_str(value).collect::<Vec<u8>>();
        match &*percent_decode_str(key).decode_utf8_lossy() {
            "sslmode" => ssl.mode = Some(String::from_utf8_lossy(&value()).into_owned()),
            "sslrootcert" => ssl.rootcert = Some(OsString::from_vec(value())),
            _ => kept.push(piece),
        }
    }
    let url = match kept.is_empty() {
        true => head.to_owned(),
        false => format!("{head}?{}", kept.join("&")),
    };
    Ok((url, ssl))
}

/// How connections are made.
#[derive(Clone)]
enum Tls {
    /// Plain TCP.
    Off,
    /// TLS through rustls, verifying as `sslmode` asked.
    On(tokio_postgres_rustls::MakeRustlsConnect),
}

impl SslParams {
    /// `postgres`'s mode and the connector for these parameters.
    fn connector(&self) -> Result<(PgSslMode, Tls), String> {
        let mode = self.mode.as_deref();
        let (pg_mode, verify) = match mode {
            None | Some("disable") => return Ok((PgSslMode::Disable, Tls::Off)),
            Some("allow" | "prefer") => (PgSslMode::Prefer, Verify::Nothing),
            Some("require") if self.rootcert.is_some() => (PgSslMode::Require, Verify::Chain),
            Some("require") => (PgSslMode::Require, Verify::Nothing),
            Some("verify-ca") => (PgSslMode::Require, Verify::Chain),
            Some("verify-full") => (PgSslMode::Require, Verify::ChainAndHost),
            Some(_) => {
                return Err(
                    "sslmode must be disable, allow, prefer, require, verify-ca or \
                            verify-full"
                        .into(),
                );
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => unverified(provider.clone()),
            Verify::Chain | Verify::ChainAndHost => {
                let Some(rootcert) = &self.rootcert else {
                    return Err(format!(
                        "sslmode={} needs sslrootcert=PATH (a PEM file of the CA certificates \
                         that sign the server's) or sslrootcert=system",
                        mode.unwrap_or_default()
                    ));
                };
                let roots = Arc::new(load_roots(rootcert)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
                match verify {
                    Verify::ChainAndHost => webpki,
                    _ => any_host_name(provider.clone(), webpki),
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
        Ok((pg_mode, Tls::On(tls)))
    }
}

/// What is checked of the server's certificate.
enum Verify {
    /// Nothing (`prefer`, `require` without `sslrootcert`): encrypted, but
    /// whoever answers is believed, as libpq does.
    Nothing,
    /// That it chains to `sslrootcert` (`verify-ca`, `require` with one).
    Chain,
    /// That, and that it names the URL's host (`verify-full`).
    ChainAndHost,
}

/// The CA certificates of `sslrootcert`: a PEM file, or `system`.
fn load_roots(rootcert: &std::ffi::OsStr) -> Result<RootCertStore, String> {
    let shown = rootcert.to_string_lossy();
    let certs = if rootcert == "system" {
        rustls_native_certs::load_native_certs().certs
    } else {
        CertificateDer::pem_file_iter(rootcert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslrootcert {shown}: {e}"))?
    };
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {shown}: no CA certificate in it (PEM, -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// `prefer`, and `require` without `sslrootcert`: any certificate is taken
/// (libpq's meaning: encrypted against listeners, not against a server that
/// impersonates). The handshake's signatures are still checked.
fn unverified(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(CertCheck::new("any certificate", provider, |_| {
        Ok(ServerCertVerified::assertion())
    }))
}

/// `verify-ca`: the chain is verified in full (rustls checks the name last,
/// once the chain has passed); only a name mismatch is forgiven.
fn any_host_name(
    provider: Arc<CryptoProvider>,
    chain: Arc<WebPkiServerVerifier>,
) -> Arc<dyn ServerCertVerifier> {
    let check = move |presented: &Presented<'_>| match presented.verify_with(chain.as_ref()) {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Ok(ServerCertVerified::assertion()),
        other => other,
    };
    Arc::new(CertCheck::new("chain only", provider, check))
}

/// Credentials, all columns ([`columns::NAMES`]); a WHERE or ORDER BY follows.
fn select(rest: &str) -> String {
    format!("SELECT {} FROM rekey_credentials {rest}", columns::NAMES)
}

fn to_credential(row: &postgres::Row) -> Result<Credential> {
    Columns {
        name: row.get(0),
        settings: row.get(1),
        keys: row.get(2),
        version: row.get(3),
        updated_at: row.get(4),
        dead_grant_code: row.get(5),
        dead_grant_at: row.get(6),
        lease_holder: row.get(7),
        lease_until_ms: row.get(8),
        mark_holder: row.get(9),
        mark_at_ms: row.get(10),
    }
    .into_credential()
}

/// The conditional write of `docs/record-store.md` ($1 name, $2 expected
/// version, $3..$9 the record, $10 now), in one statement, with what was
/// stored before it: the version, and whether the record was already
/// exactly ours (a lost first attempt that committed).
const WRITE_RECORD: &str = "
WITH written AS (
    UPDATE rekey_credentials
    SET keys = $3, lease_holder = $4, lease_until_ms = $5, mark_holder = $6, mark_at_ms = $7,
        dead_grant_code = $8, dead_grant_at = $9, version = version + 1, updated_at = $10
    WHERE name = $1 AND version = $2
    RETURNING version
)
SELECT (SELECT version FROM written), version,
    (keys, lease_holder, lease_until_ms, mark_holder, mark_at_ms, dead_grant_code, dead_grant_at)
    IS NOT DISTINCT FROM ($3::TEXT, $4::TEXT, $5::BIGINT, $6::TEXT, $7::BIGINT, $8::TEXT, $9::BIGINT)
FROM rekey_credentials WHERE name = $1";

/// Whether `put` brings new keys ($3 the keys or NULL): on a retry ($5), keys
/// already stored were the first attempt's, and not new again (no second
/// version bump; a lease or mark set since then stays).
macro_rules! new_keys {
    () => {
        "($3::TEXT IS NOT NULL AND NOT ($5::BOOLEAN AND rekey_credentials.keys IS NOT DISTINCT FROM $3::TEXT))"
    };
}

/// A record column that new keys clear and a settings edit keeps.
macro_rules! kept_unless_new_keys {
    ($column:literal) => {
        concat!(
            $column,
            " = CASE WHEN ",
            new_keys!(),
            " THEN NULL ELSE rekey_credentials.",
            $column,
            " END"
        )
    };
}

/// Creates a credential or replaces its settings: new keys start the
/// record afresh (version + 1), none keep it as it is.
const PUT: &str = concat!(
    "INSERT INTO rekey_credentials (name, settings, keys, version, updated_at)
     VALUES ($1, $2, $3, 0, $4)
     ON CONFLICT (name) DO UPDATE SET
         settings = $2,
         keys = COALESCE($3, rekey_credentials.keys),
         updated_at = $4,
         version = rekey_credentials.version + CASE WHEN ",
    new_keys!(),
    " THEN 1 ELSE 0 END, ",
    kept_unless_new_keys!("lease_holder"),
    ", ",
    kept_unless_new_keys!("lease_until_ms"),
    ", ",
    kept_unless_new_keys!("mark_holder"),
    ", ",
    kept_unless_new_keys!("mark_at_ms"),
    ", ",
    kept_unless_new_keys!("dead_grant_code"),
    ", ",
    kept_unless_new_keys!("dead_grant_at"),
);

impl KeyStore for PostgresStore {
    fn load(&self, name: &str) -> Result<Credential> {
        let name = name.to_owned();
        self.call(Kind::Read, move |c, _| {
            let row = c
                .query_opt(&select("WHERE name = $1"), &[&name])?
                .ok_or_else(|| StoreError::UnknownCredential(name.clone()))?;
            Ok(to_credential(&row)?)
        })
    }

    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64> {
        let c = RecordColumns::of(record)?;
        let name = name.to_owned();
        // A version beyond any row's matches none (-1: versions are >= 0).
        let expected = i64::try_from(expected).unwrap_or(-1);
        self.call(Kind::Write, move |client, attempt| {
            let row = client
                .query_opt(
                    WRITE_RECORD,
                    &[
                        &name,
                        &expected,
                        &c.keys,
                        &c.lease_holder,
                        &c.lease_until_ms,
                        &c.mark_holder,
                        &c.mark_at_ms,
                        &c.dead_grant_code,
                        &c.dead_grant_at,
                        &now_unix(),
                    ],
                )?
                .ok_or_else(|| StoreError::UnknownCredential(name.clone()))?;
            let (written, stored, ours): (Option<i64>, i64, bool) =
                (row.get(0), row.get(1), row.get(2));
            let retry = attempt == Attempt::Retry;
            match written {
                Some(version) => Ok(version as u64),
                // The lost first attempt had committed: our record, one past
                // what we expected.
                None if retry && ours && stored == expected + 1 => Ok(stored as u64),
                // Moved on further: ours may have landed, then been replaced.
                None if retry && expected >= 0 && stored > expected + 1 => {
                    Err(StoreError::Unknown(
                        "the connection was lost during the write, and the credential has been                          written again since: read it to know whether this write landed"
                            .into(),
                    )
                    .into())
                }
                None => Err(StoreError::Conflict(name.clone()).into()),
            }
        })
    }

    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()> {
        let keys = keys.map(keys_json).transpose()?.map(str::to_owned);
        let (name, settings) = (name.to_owned(), settings_json(settings));
        self.call(Kind::Write, move |c, attempt| {
            let retry = attempt == Attempt::Retry;
            c.execute(PUT, &[&name, &settings, &keys, &now_unix(), &retry])?;
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<Credential>> {
        self.call(Kind::Read, |c, _| {
            c.query(&select("ORDER BY name"), &[])?
                .iter()
                .map(|row| to_credential(row).map_err(Fail::from))
                .collect()
        })
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(Kind::Write, move |c, attempt| {
            let n = c.execute("DELETE FROM rekey_credentials WHERE name = $1", &[&name])?;
            if n == 0 && attempt == Attempt::Retry {
                // The lost attempt may have been the one that removed it.
                let reason = "the connection was lost while removing: it may have been removed";
                return Err(StoreError::Unknown(reason.into()).into());
            }
            Ok(n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{
        CertificateError, PgSslMode, RootCertStore, ServerCertVerifier, SslParams, Target, Tls,
        WebPkiServerVerifier, take_ssl_params,
    };

    /// Each form of a password in a URL: how the URL is shown, and the
    /// secrets (as written, as decoded) no message may hold.
    const PASSWORD_FORMS: &[(&str, &str, &[&str])] = &[
        (
            "postgres://rekey:hunter2@db.internal:5432/app",
            "postgres://rekey@db.internal:5432/app",
            &["hunter2"],
        ),
        (
            "postgresql://rekey:hunter%32@db/app",
            "postgresql://rekey@db/app",
            &["hunter%32", "hunter2"],
        ),
        // Unencoded '@' in the password: postgres ends it at the first.
        (
            "postgres://rekey:hun@ter2@db/app",
            "postgres://rekey@db/app",
            &["hun@ter2", "hun"],
        ),
        (
            "postgres://rekey@db/app?password=hunter2",
            "postgres://rekey@db/app?password=[redacted]",
            &["hunter2"],
        ),
        (
            "postgres://rekey@db/app?sslmode=require&password=hunter2&application_name=w",
            "postgres://rekey@db/app?sslmode=require&password=[redacted]&application_name=w",
            &["hunter2"],
        ),
        (
            "postgres://rekey@db/app?PASSWORD=hunter2",
            "postgres://rekey@db/app?PASSWORD=[redacted]",
            &["hunter2"],
        ),
        (
            "postgres://rekey@db/app?x=1&Password=hunter%32",
            "postgres://rekey@db/app?x=1&Password=[redacted]",
            &["hunter%32", "hunter2"],
        ),
        (
            "postgres://rekey@db/app?%70assword=hunter2",
            "postgres://rekey@db/app?password=[redacted]",
            &["hunter2"],
        ),
        (
            "postgres://rekey@db/app?password%3Dhunter2",
            "postgres://rekey@db/app?password=[redacted]",
            &["hunter2"],
        ),
        (
            "postgres://rekey@db/app?sslpassword=hunter2",
            "postgres://rekey@db/app?sslpassword=[redacted]",
            &["hunter2"],
        ),
        // Parsers would disagree on the password's end: nothing shown.
        (
            "postgres://rekey:hunter/2@db/app",
            "postgres://…",
            &["hunter/2"],
        ),
    ];

    #[test]
    fn every_password_form_is_redacted() {
        for (url, shown, secrets) in PASSWORD_FORMS {
            let target = Target::of(url);
            assert_eq!(&target.shown, shown, "{url}");
            for secret in *secrets {
                assert!(!target.shown.contains(secret), "{url}");
                let message = target.scrub(format!("server said: {secret}!"));
                assert!(!message.contains(secret), "{url}: {message}");
            }
        }
        assert_eq!(Target::of("postgres://db/app").shown, "postgres://db/app");
        assert!(Target::of("postgres://db/app").secrets.is_empty());
    }

    #[test]
    fn errors_from_the_postgres_crate_cannot_echo_the_password() {
        let call = Duration::from_secs(5);
        for (url, _, secrets) in PASSWORD_FORMS {
            // Port 1 on loopback: refused at once (or the URL refused first).
            let url = url.replacen("db.internal:5432", "127.0.0.1:1", 1);
            let url = url.replacen("@db/", "@127.0.0.1:1/", 1);
            let err = super::PostgresStore::connect_with_call_timeout(&url, call)
                .err()
                .expect("nothing listens there");
            let message = err.to_string();
            for secret in *secrets {
                assert!(!message.contains(secret), "{url}: {message}");
            }
        }
        // The crate's own wording, for an option it does not know, is cut too.
        let err =
            super::PostgresStore::connect("postgres://u@127.0.0.1:1/db?hunter2&password=hunter2")
                .err()
                .unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (url, ssl) = take_ssl_params(
            "postgres://u@h/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=3");
        assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
        assert_eq!(ssl.rootcert.as_deref(), Some("/etc/ca.pem".as_ref()));
        let (url, ssl) = take_ssl_params("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            (url.as_str(), ssl.mode.as_deref()),
            ("postgres://u@h/db", Some("disable"))
        );
        assert_eq!(
            take_ssl_params("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".to_owned(), SslParams::default())
        );
        // An '@' in the query would make `postgres` read a different host.
        let err = take_ssl_params("postgres://h/db?application_name=a@b").unwrap_err();
        assert!(err.contains("percent-encoded"), "{err}");
        assert!(take_ssl_params("host=h password=x").is_err());
    }

    #[test]
    fn each_sslmode_picks_its_connector() {
        let mode = |m: Option<&str>, rootcert: Option<&str>| {
            SslParams {
                mode: m.map(Into::into),
                rootcert: rootcert.map(Into::into),
            }
            .connector()
            .map(|(mode, tls)| (mode, matches!(tls, Tls::On(_))))
        };
        assert_eq!(mode(None, None), Ok((PgSslMode::Disable, false)));
        assert_eq!(mode(Some("disable"), None), Ok((PgSslMode::Disable, false)));
        assert_eq!(mode(Some("allow"), None), Ok((PgSslMode::Prefer, true)));
        assert_eq!(mode(Some("prefer"), None), Ok((PgSslMode::Prefer, true)));
        assert_eq!(mode(Some("require"), None), Ok((PgSslMode::Require, true)));
        for m in ["verify-ca", "verify-full"] {
            let err = mode(Some(m), None).unwrap_err();
            assert!(err.contains("needs sslrootcert"), "{err}");
            let err = mode(Some(m), Some("/nonexistent/ca.pem")).unwrap_err();
            assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        }
        let err = mode(Some("verify_full"), None).unwrap_err();
        assert!(err.contains("sslmode must be"), "{err}");
    }

    /// verify-ca (and require with sslrootcert) takes a certificate made out
    /// to another host if its chain holds; prefer and require take anything.
    #[test]
    fn each_verifier_forgives_what_its_sslmode_allows() {
        use crate::tls::test_certs::{CA, DB_EXAMPLE, OTHER_CA, at, der};
        use rustls::pki_types::ServerName;
        let provider = || Arc::new(rustls::crypto::ring::default_provider());
        let any_host_name_under = |ca: &str| {
            let mut roots = RootCertStore::empty();
            roots.add(der(ca)).unwrap();
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            super::any_host_name(provider(), chain)
        };
        let verdict = |verifier: &dyn ServerCertVerifier, cert: &str| {
            let name = ServerName::try_from("elsewhere.example").unwrap();
            verifier.verify_server_cert(&der(cert), &[], &name, &[], at())
        };
        assert!(verdict(&*any_host_name_under(CA), DB_EXAMPLE).is_ok());
        let err = verdict(&*any_host_name_under(OTHER_CA), DB_EXAMPLE).unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        let unverified = super::unverified(provider());
        assert!(verdict(&*unverified, OTHER_CA).is_ok());
        assert!(format!("{unverified:?}").contains("any certificate"));
    }

    #[test]
    fn timeouts_derive_from_the_call_timeout_unless_the_url_sets_them() {
        let call = Duration::from_secs(10);
        let (c, _) = super::configure("postgres://u@127.0.0.1/db", call).unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_millis(2500)));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_millis(2500));
        assert_eq!(c.get_options(), Some("-c statement_timeout=5000"));

        let (c, _) = super::configure(
            "postgres://u@127.0.0.1/db?connect_timeout=7&keepalives_idle=60&options=-c%20statement_timeout%3D900",
            call,
        )
        .unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_options(), Some("-c statement_timeout=900"));
    }
}
