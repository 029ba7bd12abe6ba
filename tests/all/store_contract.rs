//! The `KeyStore` contract, one list of checks run on every backend:
//! `store_contract::{memory,sqlite,postgres}::<check>`. Each check gets a
//! `Subject` that opens handles on one store (for SQLite and PostgreSQL each
//! handle is its own connection, as another worker's would be).
//!
//! Lease checks never rest on a short lease *not* having expired: exclusivity
//! uses long leases, expiry is awaited by polling with a generous deadline.

use crate::support::postgres::Postgres;
use rekey::settings::ClientSecret;
use rekey::{
    ClientAuth, Credential, KeyStore, MemoryStore, Settings, StoreError, Strategy, TokenSet,
};
use std::sync::{Arc, Barrier, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A lease no test outlives.
const LONG: Duration = Duration::from_secs(120);
/// A lease a test waits out.
const SHORT: Duration = Duration::from_millis(300);
/// How long to poll for something that must happen (an expiry) before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// One backend's store for one check.
struct Subject {
    open: Box<dyn Fn() -> Arc<dyn KeyStore>>,
    /// Credential names are prefixed with the check's name: a PostgreSQL
    /// server is shared by the checks running at the same time.
    prefix: String,
    _keep: Box<dyn std::any::Any>,
}

impl Subject {
    /// A new handle on the same store.
    fn store(&self) -> Arc<dyn KeyStore> {
        (self.open)()
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// A credential to lease: the host only leases credentials that exist.
    fn credential(&self, base: &str) -> String {
        let name = self.name(base);
        self.store()
            .put(&name, &literal_settings(), Some(&keys(0)))
            .unwrap();
        name
    }
}

fn open_memory(check: &str) -> Option<Subject> {
    let store = Arc::new(MemoryStore::new());
    Some(Subject {
        open: Box::new(move || store.clone()),
        prefix: format!("{check}/"),
        _keep: Box::new(()),
    })
}

fn open_sqlite(check: &str) -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.db");
    Some(Subject {
        open: Box::new(move || Arc::new(rekey::SqliteStore::open(&path).unwrap())),
        prefix: format!("{check}/"),
        _keep: Box::new(dir),
    })
}

fn open_postgres(check: &str) -> Option<Subject> {
    let server = shared_postgres()?;
    let url = server.url.clone();
    Some(Subject {
        open: Box::new(move || rekey::store::open(&url).unwrap()),
        prefix: format!("{check}/"),
        _keep: Box::new(server),
    })
}

/// One server while any check uses it: the last check out stops it (a server
/// in a plain static would never be dropped, so never stopped).
fn shared_postgres() -> Option<Arc<Postgres>> {
    static SERVER: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
    let mut server = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(running) = server.upgrade() {
        return Some(running);
    }
    let started = Arc::new(crate::support::postgres::start()?);
    *server = Arc::downgrade(&started);
    Some(started)
}

fn run(backend: fn(&str) -> Option<Subject>, check_name: &str, check: fn(&Subject)) {
    if let Some(subject) = backend(check_name) {
        check(&subject);
    }
}

/// Every check, as a test on every backend.
macro_rules! contract {
    ($($check:ident),+ $(,)?) => {
        mod memory {
            $(#[test] fn $check() { super::run(super::open_memory, stringify!($check), super::$check) })+
        }
        mod sqlite {
            $(#[test] fn $check() { super::run(super::open_sqlite, stringify!($check), super::$check) })+
        }
        mod postgres {
            $(#[test] fn $check() { super::run(super::open_postgres, stringify!($check), super::$check) })+
        }
    };
}

contract!(
    put_then_load_round_trips,
    remove_reports_whether_it_removed,
    unknown_names_are_unknown_credential,
    compare_and_set_bumps_the_version_by_one,
    a_stale_writer_gets_conflict_and_changes_nothing,
    versions_only_grow,
    editing_settings_keeps_keys_and_version,
    put_with_keys_replaces_them,
    non_object_keys_are_refused_without_echo,
    lease_is_exclusive,
    the_holder_extends_its_own_lease,
    renew_is_for_the_holder_only,
    release_frees_the_lease_for_others,
    an_expired_lease_can_be_taken,
    a_late_release_never_frees_the_successors_lease,
    renew_fails_after_a_takeover_even_once_released,
    concurrent_compare_and_set_loses_no_update,
);

// ---- fixtures ----

/// Every field away from its default, so a field the store drops shows.
fn literal_settings() -> Settings {
    let mut s = Settings::new("https://idp.example/oauth2/token", "contract-app")
        .with_secret("literal-client-secret")
        .with_auth(ClientAuth::Post)
        .with_strategy(Strategy::BeforeExpiry);
    s.scope = Some("read write".into());
    s.extra_params = vec![("audience".into(), "https://api.example".into())];
    s.expiry_margin_secs = 90;
    s.rejected_statuses = vec![401, 403];
    s
}

fn env_settings() -> Settings {
    let mut s = Settings::new("https://idp.example/token", "env-app");
    s.client_secret = Some(ClientSecret::Env("REKEY_CONTRACT_CLIENT_SECRET".into()));
    s
}

/// A token set whose `n` tells one write from another.
fn keys(n: u64) -> TokenSet {
    TokenSet::stored(
        serde_json::json!({
            "access_token": format!("at-{n}"),
            "refresh_token": format!("rt-{n}"),
            "n": n,
        })
        .to_string(),
    )
}

fn stored_n(c: &Credential) -> u64 {
    let keys = c.keys.as_ref().expect("keys stored");
    let v: serde_json::Value = serde_json::from_str(keys.expose()).expect("stored keys are JSON");
    v["n"].as_u64().expect("n")
}

/// What a credential holds, comparable.
fn state(c: &Credential) -> (String, Settings, Option<String>, u64) {
    (
        c.name.clone(),
        c.settings.clone(),
        c.keys.as_ref().map(|k| k.expose().to_owned()),
        c.version,
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `done` until it holds; fails after `PATIENCE`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `a` takes a SHORT lease, then `b` takes it over once it has expired.
fn take_over_expired(a: &dyn KeyStore, b: &dyn KeyStore, name: &str) {
    let taken = Instant::now();
    assert!(a.try_lease(name, "A", SHORT).unwrap());
    eventually("B takes A's expired lease", || {
        b.try_lease(name, "B", LONG).unwrap()
    });
    assert!(
        taken.elapsed() >= SHORT,
        "B took A's lease after {:?}, before its ttl ran out",
        taken.elapsed()
    );
}

// ---- credentials and versions ----

fn put_then_load_round_trips(s: &Subject) {
    let (writer, reader) = (s.store(), s.store());
    let (literal, env, bare) = (s.name("literal"), s.name("env"), s.name("bare"));
    let before = unix_now();
    writer
        .put(&literal, &literal_settings(), Some(&keys(7)))
        .unwrap();
    writer.put(&env, &env_settings(), Some(&keys(8))).unwrap();
    writer.put(&bare, &env_settings(), None).unwrap();
    let after = unix_now();

    let expected = [
        (literal.clone(), literal_settings(), Some(keys(7)), 0),
        (env.clone(), env_settings(), Some(keys(8)), 0),
        (bare.clone(), env_settings(), None, 0),
    ]
    .map(|(n, s, k, v)| (n, s, k.map(|k| k.expose().to_owned()), v));
    for want in &expected {
        let got = reader.load(&want.0).unwrap();
        assert_eq!(&state(&got), want, "read back through another handle");
        assert!(
            (before..=after).contains(&got.updated_at),
            "updated_at {} outside {before}..={after}",
            got.updated_at
        );
    }

    let mut listed: Vec<_> = reader
        .list()
        .unwrap()
        .iter()
        .filter(|c| c.name.starts_with(&s.prefix))
        .map(state)
        .collect();
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected = expected.to_vec();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(listed, expected);
}

fn remove_reports_whether_it_removed(s: &Subject) {
    let store = s.store();
    let (gone, kept) = (s.name("gone"), s.name("kept"));
    store
        .put(&gone, &literal_settings(), Some(&keys(1)))
        .unwrap();
    store.put(&kept, &env_settings(), Some(&keys(2))).unwrap();
    assert!(store.remove(&gone).unwrap());
    assert!(!store.remove(&gone).unwrap(), "nothing left to remove");
    assert!(matches!(
        s.store().load(&gone),
        Err(StoreError::UnknownCredential(n)) if n == gone
    ));
    let names: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with(&s.prefix))
        .collect();
    assert_eq!(names, [kept.as_str()]);
    assert_eq!(stored_n(&store.load(&kept).unwrap()), 2);
}

fn unknown_names_are_unknown_credential(s: &Subject) {
    let store = s.store();
    let name = s.name("never-added");
    assert!(matches!(
        store.load(&name),
        Err(StoreError::UnknownCredential(n)) if n == name
    ));
    for expected in [None, Some(0)] {
        let saved = store.save_keys(&name, &keys(1), expected);
        assert!(
            matches!(saved, Err(StoreError::UnknownCredential(_))),
            "save_keys(expected {expected:?}) on an unknown name: {saved:?}"
        );
    }
    assert!(!store.remove(&name).unwrap());
    assert!(
        matches!(store.load(&name), Err(StoreError::UnknownCredential(_))),
        "a refused save_keys created nothing"
    );
}

fn compare_and_set_bumps_the_version_by_one(s: &Subject) {
    let store = s.store();
    let name = s.name("c");
    store
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    for n in 1..=3 {
        let current = store.load(&name).unwrap().version;
        assert_eq!(
            store.save_keys(&name, &keys(n), Some(current)).unwrap(),
            current + 1
        );
        let c = s.store().load(&name).unwrap();
        assert_eq!((c.version, stored_n(&c)), (current + 1, n));
    }
}

fn a_stale_writer_gets_conflict_and_changes_nothing(s: &Subject) {
    let (first, late) = (s.store(), s.store());
    let name = s.name("c");
    first
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    let seen = late.load(&name).unwrap().version;
    assert_eq!(first.save_keys(&name, &keys(1), Some(seen)).unwrap(), 1);
    let before = state(&first.load(&name).unwrap());

    for stale in [seen, seen + 5] {
        let refused = late.save_keys(&name, &keys(99), Some(stale));
        assert!(
            matches!(&refused, Err(StoreError::Conflict(n)) if *n == name),
            "expected version {stale} against stored 1: {refused:?}"
        );
    }
    assert_eq!(state(&first.load(&name).unwrap()), before);
}

fn versions_only_grow(s: &Subject) {
    let store = s.store();
    let name = s.name("c");
    let version = || store.load(&name).unwrap().version;
    let mut seen = Vec::new();
    store
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    seen.push(version());
    store.save_keys(&name, &keys(1), Some(0)).unwrap();
    seen.push(version());
    store.save_keys(&name, &keys(2), None).unwrap();
    seen.push(version());
    store.put(&name, &env_settings(), None).unwrap();
    seen.push(version());
    store.put(&name, &env_settings(), Some(&keys(3))).unwrap();
    seen.push(version());
    let _ = store.save_keys(&name, &keys(4), Some(0));
    seen.push(version());
    store.save_keys(&name, &keys(5), None).unwrap();
    seen.push(version());
    assert_eq!(seen, [0, 1, 2, 2, 3, 3, 4]);
}

fn editing_settings_keeps_keys_and_version(s: &Subject) {
    let store = s.store();
    let name = s.name("c");
    store
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    store.save_keys(&name, &keys(1), Some(0)).unwrap();
    let in_flight = store.load(&name).unwrap().version;

    store.put(&name, &env_settings(), None).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!(c.settings, env_settings());
    assert_eq!((stored_n(&c), c.version), (1, 1));
    assert_eq!(
        store.save_keys(&name, &keys(2), Some(in_flight)).unwrap(),
        2,
        "a refresh in flight is not upset by a settings edit"
    );

    let bare = s.name("bare");
    store.put(&bare, &literal_settings(), None).unwrap();
    store.put(&bare, &env_settings(), None).unwrap();
    let c = store.load(&bare).unwrap();
    assert_eq!((c.keys.is_none(), c.version), (true, 0));
}

fn put_with_keys_replaces_them(s: &Subject) {
    let store = s.store();
    let name = s.name("c");
    store
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    store.save_keys(&name, &keys(1), Some(0)).unwrap();
    store.put(&name, &env_settings(), Some(&keys(9))).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!(c.settings, env_settings());
    assert_eq!((stored_n(&c), c.version), (9, 2));
    assert!(
        matches!(
            store.save_keys(&name, &keys(2), Some(1)),
            Err(StoreError::Conflict(_))
        ),
        "a refresh that began before the keys were replaced must not overwrite them"
    );

    let bare = s.name("bare");
    store.put(&bare, &literal_settings(), None).unwrap();
    store
        .put(&bare, &literal_settings(), Some(&keys(3)))
        .unwrap();
    let c = store.load(&bare).unwrap();
    assert_eq!((stored_n(&c), c.version), (3, 1));
}

fn non_object_keys_are_refused_without_echo(s: &Subject) {
    let store = s.store();
    let name = s.name("c");
    store
        .put(&name, &literal_settings(), Some(&keys(1)))
        .unwrap();
    let before = state(&store.load(&name).unwrap());
    let fresh = s.name("fresh");
    for bad in [
        r#"["sekrit-in-an-array"]"#,
        r#""sekrit-as-a-string""#,
        r#"{"refresh_token": "sekrit-truncated"#,
        "sekrit-bare-words",
        "",
    ] {
        let bad_keys = TokenSet::stored(bad);
        let refusals = [
            store.put(&fresh, &literal_settings(), Some(&bad_keys)),
            store.put(&name, &env_settings(), Some(&bad_keys)),
            store.save_keys(&name, &bad_keys, None).map(drop),
            store.save_keys(&name, &bad_keys, Some(0)).map(drop),
        ];
        for refused in refusals {
            let err = refused.expect_err(&format!("keys {bad:?} were accepted"));
            assert!(
                matches!(err, StoreError::InvalidKeys(_)),
                "{bad:?}: {err:?}"
            );
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("sekrit"),
                "the error echoes the keys: {shown}"
            );
        }
        assert!(
            matches!(store.load(&fresh), Err(StoreError::UnknownCredential(_))),
            "a refused put created the credential"
        );
        assert_eq!(state(&store.load(&name).unwrap()), before);
    }
}

// ---- the refresh lease ----

fn lease_is_exclusive(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let (x, y) = (s.credential("x"), s.credential("y"));
    assert!(a.try_lease(&x, "A", LONG).unwrap());
    assert!(!b.try_lease(&x, "B", LONG).unwrap(), "A holds it");
    assert!(
        a.try_lease(&x, "A", LONG).unwrap(),
        "A may take its own again"
    );
    assert!(!b.try_lease(&x, "B", LONG).unwrap(), "A still holds it");
    assert!(
        b.try_lease(&y, "B", LONG).unwrap(),
        "one lease per credential"
    );
    assert!(!a.try_lease(&y, "A", LONG).unwrap(), "B holds y");
}

fn the_holder_extends_its_own_lease(s: &Subject) {
    // Long enough that A's second call cannot arrive after the first lease ran
    // out, however loaded the machine.
    const FIRST: Duration = Duration::from_secs(3);
    let (a, b) = (s.store(), s.store());
    let (by_try, by_renew) = (s.credential("by-try"), s.credential("by-renew"));
    let started = Instant::now();
    assert!(a.try_lease(&by_try, "A", FIRST).unwrap());
    assert!(a.try_lease(&by_renew, "A", FIRST).unwrap());
    assert!(a.try_lease(&by_try, "A", LONG).unwrap());
    assert!(a.renew_lease(&by_renew, "A", LONG).unwrap());
    std::thread::sleep((FIRST + Duration::from_millis(500)).saturating_sub(started.elapsed()));
    assert!(
        !b.try_lease(&by_try, "B", LONG).unwrap(),
        "try_lease by the holder extended it"
    );
    assert!(
        !b.try_lease(&by_renew, "B", LONG).unwrap(),
        "renew_lease extended it"
    );
}

fn renew_is_for_the_holder_only(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let (x, free) = (s.credential("x"), s.credential("free"));
    assert!(a.try_lease(&x, "A", LONG).unwrap());
    assert!(a.renew_lease(&x, "A", LONG).unwrap());
    assert!(!b.renew_lease(&x, "B", LONG).unwrap(), "B does not hold it");
    assert!(
        !b.try_lease(&x, "B", LONG).unwrap(),
        "B's renew gave B nothing"
    );
    assert!(a.renew_lease(&x, "A", LONG).unwrap(), "A still holds it");

    assert!(!b.renew_lease(&free, "B", LONG).unwrap(), "nobody holds it");
    assert!(
        a.try_lease(&free, "A", LONG).unwrap(),
        "renewing a free lease does not take it"
    );
}

fn release_frees_the_lease_for_others(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    assert!(a.try_lease(&x, "A", LONG).unwrap());
    b.release_lease(&x, "B").unwrap();
    assert!(
        !b.try_lease(&x, "B", LONG).unwrap(),
        "B cannot release A's lease"
    );
    a.release_lease(&x, "A").unwrap();
    assert!(
        !a.renew_lease(&x, "A", LONG).unwrap(),
        "released is not held"
    );
    assert!(
        b.try_lease(&x, "B", LONG).unwrap(),
        "free after A's release"
    );
    assert!(!a.try_lease(&x, "A", LONG).unwrap(), "B holds it now");
}

fn an_expired_lease_can_be_taken(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    take_over_expired(a.as_ref(), b.as_ref(), &x);
    assert!(!a.try_lease(&x, "A", LONG).unwrap(), "B holds it now");
}

fn a_late_release_never_frees_the_successors_lease(s: &Subject) {
    let (a, b, c) = (s.store(), s.store(), s.store());
    let x = s.credential("x");
    take_over_expired(a.as_ref(), b.as_ref(), &x);
    a.release_lease(&x, "A").unwrap();
    assert!(!c.try_lease(&x, "C", LONG).unwrap(), "B still holds it");
    assert!(b.renew_lease(&x, "B", LONG).unwrap(), "B still holds it");
}

fn renew_fails_after_a_takeover_even_once_released(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    take_over_expired(a.as_ref(), b.as_ref(), &x);
    assert!(!a.renew_lease(&x, "A", LONG).unwrap(), "B took it over");
    b.release_lease(&x, "B").unwrap();
    assert!(
        !a.renew_lease(&x, "A", LONG).unwrap(),
        "the keys may have moved on while B held it"
    );
    assert!(a.try_lease(&x, "A", LONG).unwrap(), "A may take it anew");
}

// ---- concurrency ----

fn concurrent_compare_and_set_loses_no_update(s: &Subject) {
    const WORKERS: usize = 8;
    const ROUNDS: u64 = 5;
    let name = s.name("counter");
    s.store()
        .put(&name, &literal_settings(), Some(&keys(0)))
        .unwrap();
    let start = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (store, name, start) = (s.store(), name.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..ROUNDS {
                    // Each retry follows another worker's success, so this ends.
                    loop {
                        let c = store.load(&name).unwrap();
                        let n = stored_n(&c);
                        assert_eq!(n, c.version, "keys and version are read together");
                        match store.save_keys(&name, &keys(n + 1), Some(c.version)) {
                            Ok(v) => {
                                assert_eq!(v, c.version + 1);
                                break;
                            }
                            Err(StoreError::Conflict(_)) => continue,
                            Err(e) => panic!("save_keys: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let c = s.store().load(&name).unwrap();
    let total = WORKERS as u64 * ROUNDS;
    assert_eq!(
        (c.version, stored_n(&c)),
        (total, total),
        "an update was lost"
    );
}

// ---- PostgreSQL only ----

/// A fleet's workers start at once on a new database: every one of them must
/// connect, though all try to create the tables at the same moment.
#[test]
fn postgres_workers_may_first_connect_at_once() {
    const WORKERS: usize = 8;
    // A server of its own: on the shared one the tables may exist already.
    let Some(server) = crate::support::postgres::start() else {
        return;
    };
    let start = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (url, start) = (server.url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                rekey::store::open(&url).map(drop)
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.join().expect("worker") {
            panic!("a worker could not connect: {e}");
        }
    }
}
