//! The `KeyStore` contract, one list of checks run on every backend:
//! `store_contract::{memory,sqlite,postgres}::<check>`. Each check gets a
//! `Subject` that opens handles on one store (for SQLite and PostgreSQL each
//! handle is its own connection, as another worker's would be).
//!
//! Lease checks never rest on a short lease *not* having expired: exclusivity
//! uses long leases, expiry is awaited by polling with a generous deadline.
//!
//! Then the refresh mark (`begin_refresh`, `refresh_in_doubt`) and the dead
//! grant (`mark_needs_authorization`, `needs_authorization`): who sets them,
//! what outlives what, what clears them. Last, checks of one backend each:
//! stores created by the previous schema open and keep their credentials.

use crate::support::postgres::Postgres;
use rekey::settings::ClientSecret;
use rekey::{
    ClientAuth, Credential, DeadGrant, KeyStore, MemoryStore, Settings, StoreError, Strategy,
    TokenSet,
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
    a_huge_ttl_never_expires_and_never_overflows,
    concurrent_compare_and_set_loses_no_update,
    begin_refresh_marks_only_for_the_holder,
    begin_refresh_needs_a_live_lease,
    begin_refresh_extends_the_holders_lease,
    the_refresh_mark_outlives_release_expiry_and_takeover,
    a_successful_save_clears_the_refresh_mark,
    a_conflicting_save_keeps_both_marks,
    put_with_keys_clears_both_marks_a_settings_edit_keeps_them,
    clear_refresh_in_doubt_clears_only_the_mark,
    a_dead_grant_is_recorded_with_code_and_time,
    a_successful_save_clears_a_dead_grant,
    list_reports_both_marks,
    a_removed_credential_comes_back_without_marks,
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

/// The refresh mark and the dead grant's code, as a credential reports them.
fn marks(c: &Credential) -> (bool, Option<String>) {
    (
        c.refresh_in_doubt,
        c.needs_authorization.as_ref().map(|d| d.code.clone()),
    )
}

/// The marks of `name`, read through a new handle (another worker's view).
fn marks_of(s: &Subject, name: &str) -> (bool, Option<String>) {
    marks(&s.store().load(name).unwrap())
}

fn in_doubt(s: &Subject, name: &str) -> bool {
    marks_of(s, name).0
}

/// A credential whose refresh `holder` began (and holds the lease of).
fn begun(s: &Subject, store: &dyn KeyStore, base: &str, holder: &str) -> String {
    let name = s.credential(base);
    assert!(store.try_lease(&name, holder, LONG).unwrap());
    assert!(store.begin_refresh(&name, holder, LONG).unwrap());
    assert!(in_doubt(s, &name), "begin_refresh set the mark");
    name
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
        assert_eq!(
            marks(&got),
            (false, None),
            "a new credential carries no mark"
        );
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

fn a_huge_ttl_never_expires_and_never_overflows(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    for (i, ttl) in [
        Duration::MAX,
        Duration::from_millis(u64::MAX),
        Duration::from_secs(i64::MAX as u64),
    ]
    .into_iter()
    .enumerate()
    {
        let x = s.credential(&format!("x{i}"));
        assert!(a.try_lease(&x, "A", ttl).unwrap(), "{ttl:?}");
        assert!(!b.try_lease(&x, "B", LONG).unwrap(), "{ttl:?}: A holds it");
        assert!(a.renew_lease(&x, "A", ttl).unwrap(), "{ttl:?}: renewed");
        assert!(a.begin_refresh(&x, "A", ttl).unwrap(), "{ttl:?}: begun");
        assert!(!b.try_lease(&x, "B", LONG).unwrap(), "{ttl:?}: A holds it");
        a.release_lease(&x, "A").unwrap();
        assert!(b.try_lease(&x, "B", ttl).unwrap(), "{ttl:?}: released");
    }
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

// ---- the refresh mark ----

fn begin_refresh_marks_only_for_the_holder(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let (x, free) = (s.credential("x"), s.credential("free"));

    assert!(
        !a.begin_refresh(&free, "A", LONG).unwrap(),
        "nobody holds it"
    );
    assert!(!in_doubt(s, &free), "no lease, no mark");
    assert!(
        b.try_lease(&free, "B", LONG).unwrap(),
        "begin_refresh on a free lease does not take it"
    );

    assert!(a.try_lease(&x, "A", LONG).unwrap());
    assert!(
        !b.begin_refresh(&x, "B", LONG).unwrap(),
        "B does not hold it"
    );
    assert!(!in_doubt(s, &x), "B's refused begin_refresh left no mark");
    assert!(!b.try_lease(&x, "B", LONG).unwrap(), "and gave B nothing");
    assert!(a.begin_refresh(&x, "A", LONG).unwrap(), "A holds it");
    assert!(in_doubt(s, &x), "seen through another handle");
    assert!(a.renew_lease(&x, "A", LONG).unwrap(), "A still holds it");
    let c = b.load(&x).unwrap();
    assert_eq!(
        (stored_n(&c), c.version),
        (0, 0),
        "the mark is not a write of keys"
    );
}

fn begin_refresh_needs_a_live_lease(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let (released, taken_over) = (s.credential("released"), s.credential("taken-over"));

    assert!(a.try_lease(&released, "A", LONG).unwrap());
    a.release_lease(&released, "A").unwrap();
    assert!(!a.begin_refresh(&released, "A", LONG).unwrap(), "released");
    assert!(!in_doubt(s, &released));

    take_over_expired(a.as_ref(), b.as_ref(), &taken_over);
    assert!(
        !a.begin_refresh(&taken_over, "A", LONG).unwrap(),
        "B took it over"
    );
    assert!(!in_doubt(s, &taken_over));
    b.release_lease(&taken_over, "B").unwrap();
    assert!(
        !a.begin_refresh(&taken_over, "A", LONG).unwrap(),
        "the keys may have moved on while B held it"
    );
    assert!(!in_doubt(s, &taken_over));
}

fn begin_refresh_extends_the_holders_lease(s: &Subject) {
    // As in the_holder_extends_its_own_lease: long enough that begin_refresh
    // cannot arrive after the first lease ran out.
    const FIRST: Duration = Duration::from_secs(3);
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    let started = Instant::now();
    assert!(a.try_lease(&x, "A", FIRST).unwrap());
    assert!(a.begin_refresh(&x, "A", LONG).unwrap());
    std::thread::sleep((FIRST + Duration::from_millis(500)).saturating_sub(started.elapsed()));
    assert!(
        !b.try_lease(&x, "B", LONG).unwrap(),
        "begin_refresh extended the lease"
    );
}

fn the_refresh_mark_outlives_release_expiry_and_takeover(s: &Subject) {
    let (a, b) = (s.store(), s.store());

    let released = begun(s, a.as_ref(), "released", "A");
    a.release_lease(&released, "A").unwrap();
    assert!(in_doubt(s, &released), "release keeps the mark");
    assert!(b.try_lease(&released, "B", LONG).unwrap());
    assert!(
        b.load(&released).unwrap().refresh_in_doubt,
        "the next holder sees it"
    );

    // Taken long, then shortened by begin_refresh itself: the lease is
    // surely live when the mark is set, and runs out soon after.
    let expired = s.credential("expired");
    assert!(a.try_lease(&expired, "A", LONG).unwrap());
    assert!(a.begin_refresh(&expired, "A", SHORT).unwrap());
    eventually("B takes A's expired lease", || {
        b.try_lease(&expired, "B", LONG).unwrap()
    });
    assert!(
        b.load(&expired).unwrap().refresh_in_doubt,
        "expiry and takeover keep the mark; the next holder sees it"
    );
    b.release_lease(&expired, "B").unwrap();
    assert!(
        in_doubt(s, &expired),
        "and so does the next holder's release"
    );
}

fn a_successful_save_clears_the_refresh_mark(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let with_lease = begun(s, a.as_ref(), "by-holder", "A");
    let v = a.load(&with_lease).unwrap().version;
    assert_eq!(a.save_keys(&with_lease, &keys(1), Some(v)).unwrap(), v + 1);
    assert!(!in_doubt(s, &with_lease), "compare-and-set save");

    let unconditional = begun(s, a.as_ref(), "unconditional", "A");
    b.save_keys(&unconditional, &keys(1), None).unwrap();
    assert!(
        !in_doubt(s, &unconditional),
        "any successful save, by anyone, with or without an expected version"
    );
}

fn a_conflicting_save_keeps_both_marks(s: &Subject) {
    let a = s.store();
    let x = begun(s, a.as_ref(), "x", "A");
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    let before = a.load(&x).unwrap();
    for stale in [before.version + 1, before.version + 5] {
        let refused = a.save_keys(&x, &keys(9), Some(stale));
        assert!(
            matches!(&refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
    }
    let after = s.store().load(&x).unwrap();
    assert_eq!(state(&after), state(&before));
    assert_eq!(marks(&after), (true, Some("invalid_grant".into())));
}

fn put_with_keys_clears_both_marks_a_settings_edit_keeps_them(s: &Subject) {
    let a = s.store();
    let x = begun(s, a.as_ref(), "x", "A");
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();

    a.put(&x, &env_settings(), None).unwrap();
    assert_eq!(
        marks_of(s, &x),
        (true, Some("invalid_grant".into())),
        "a settings edit keeps both"
    );

    a.put(&x, &literal_settings(), Some(&keys(5))).unwrap();
    let c = s.store().load(&x).unwrap();
    assert_eq!(marks(&c), (false, None), "new keys clear both");
    assert_eq!((stored_n(&c), c.version), (5, 1));
}

fn clear_refresh_in_doubt_clears_only_the_mark(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = begun(s, a.as_ref(), "x", "A");
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    let before = state(&a.load(&x).unwrap());

    b.clear_refresh_in_doubt(&x).unwrap();
    let c = s.store().load(&x).unwrap();
    assert_eq!(marks(&c), (false, Some("invalid_grant".into())));
    assert_eq!(state(&c), before, "keys and version untouched");
    assert!(!b.try_lease(&x, "B", LONG).unwrap(), "A's lease untouched");
    b.clear_refresh_in_doubt(&x).unwrap();
    assert!(!in_doubt(s, &x), "clearing twice is harmless");

    let unknown = s.name("never-added");
    assert!(matches!(
        b.clear_refresh_in_doubt(&unknown),
        Err(StoreError::UnknownCredential(n)) if n == unknown
    ));
}

// ---- the dead grant ----

fn a_dead_grant_is_recorded_with_code_and_time(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    let before_state = state(&a.load(&x).unwrap());
    let before = unix_now();
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    let after = unix_now();
    let c = b.load(&x).unwrap();
    let Some(DeadGrant { code, at }) = c.needs_authorization.clone() else {
        panic!("no dead grant recorded: {c:?}");
    };
    assert_eq!(code, "invalid_grant");
    assert!(
        (before..=after).contains(&at),
        "at {at} outside {before}..={after}"
    );
    assert_eq!(state(&c), before_state, "keys and version untouched");
    assert!(!c.refresh_in_doubt, "the refresh mark untouched");

    a.mark_needs_authorization(&x, "unauthorized_client")
        .unwrap();
    assert_eq!(marks_of(s, &x).1.as_deref(), Some("unauthorized_client"));

    let unknown = s.name("never-added");
    assert!(matches!(
        a.mark_needs_authorization(&unknown, "invalid_grant"),
        Err(StoreError::UnknownCredential(n)) if n == unknown
    ));
    assert!(
        matches!(b.load(&unknown), Err(StoreError::UnknownCredential(_))),
        "marking an unknown name created nothing"
    );
}

fn a_successful_save_clears_a_dead_grant(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let x = s.credential("x");
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    let v = a.load(&x).unwrap().version;
    b.save_keys(&x, &keys(1), Some(v)).unwrap();
    assert_eq!(marks_of(s, &x), (false, None), "compare-and-set save");

    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    b.save_keys(&x, &keys(2), None).unwrap();
    assert_eq!(marks_of(s, &x), (false, None), "unconditional save");
}

fn list_reports_both_marks(s: &Subject) {
    let a = s.store();
    let plain = s.credential("plain");
    let doubt = begun(s, a.as_ref(), "doubt", "A");
    let dead = s.credential("dead");
    a.mark_needs_authorization(&dead, "invalid_grant").unwrap();
    let both = begun(s, a.as_ref(), "both", "A");
    a.mark_needs_authorization(&both, "invalid_client").unwrap();

    let mut listed: Vec<_> = s
        .store()
        .list()
        .unwrap()
        .iter()
        .filter(|c| c.name.starts_with(&s.prefix))
        .map(|c| (c.name.clone(), marks(c)))
        .collect();
    listed.sort();
    let mut expected = vec![
        (plain, (false, None)),
        (doubt, (true, None)),
        (dead.clone(), (false, Some("invalid_grant".into()))),
        (both, (true, Some("invalid_client".into()))),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    let at = |c: &Credential| c.needs_authorization.as_ref().map(|d| d.at);
    let listed_dead = s.store().list().unwrap();
    let listed_dead = listed_dead.iter().find(|c| c.name == dead).unwrap();
    assert_eq!(
        at(listed_dead),
        at(&a.load(&dead).unwrap()),
        "list and load agree"
    );
}

fn a_removed_credential_comes_back_without_marks(s: &Subject) {
    let a = s.store();
    let x = begun(s, a.as_ref(), "x", "A");
    a.mark_needs_authorization(&x, "invalid_grant").unwrap();
    assert!(a.remove(&x).unwrap());
    a.put(&x, &literal_settings(), None).unwrap();
    assert_eq!(marks_of(s, &x), (false, None));
}

// ---- stores of the previous schema ----

/// The credential an old store holds.
const OLD_KEYS: &str = r#"{"access_token":"old-at","refresh_token":"old-rt","n":3}"#;

/// What every backend must read back from an old store, and then do with it.
fn check_migrated(store: &dyn KeyStore, reopened: &dyn KeyStore) {
    let c = store.load("old").unwrap();
    assert_eq!(c.settings, literal_settings());
    assert_eq!(c.keys.as_ref().map(|k| k.expose()), Some(OLD_KEYS));
    assert_eq!((c.version, c.updated_at), (3, 1_700_000_000));
    assert_eq!(marks(&c), (false, None), "old credentials carry no mark");
    assert_eq!(store.list().unwrap().len(), 1);

    // The old lease row is live and A's: the new operations work on it.
    assert!(
        !store.try_lease("old", "B", LONG).unwrap(),
        "the old lease held"
    );
    assert!(store.begin_refresh("old", "A", LONG).unwrap());
    store
        .mark_needs_authorization("old", "invalid_grant")
        .unwrap();
    assert_eq!(
        marks(&reopened.load("old").unwrap()),
        (true, Some("invalid_grant".into()))
    );
    assert_eq!(reopened.save_keys("old", &keys(4), Some(3)).unwrap(), 4);
    assert_eq!(marks(&store.load("old").unwrap()), (false, None));
}

#[test]
fn sqlite_opens_a_store_of_the_previous_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema as the first release created it, verbatim.
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE IF NOT EXISTS credentials (
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
            ) STRICT;",
        )
        .unwrap();
        old.execute(
            "INSERT INTO credentials VALUES ('old', ?1, ?2, 3, 1700000000)",
            [
                serde_json::to_string(&literal_settings()).unwrap(),
                OLD_KEYS.into(),
            ],
        )
        .unwrap();
        let live_until = (unix_now() + 3600) * 1000;
        old.execute("INSERT INTO leases VALUES ('old', 'A', ?1)", [live_until])
            .unwrap();
    }
    // Two at once, as a machine's workers would: both migrate, neither fails.
    let opened: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || rekey::SqliteStore::open(path))
        })
        .collect();
    let mut opened = opened.into_iter().map(|t| t.join().unwrap().unwrap());
    let (store, reopened) = (opened.next().unwrap(), opened.next().unwrap());
    check_migrated(&store, &reopened);
}

#[test]
fn postgres_opens_a_store_of_the_previous_schema() {
    let Some(server) = shared_postgres() else {
        return;
    };
    // A database of its own on the shared server: the others hold new tables.
    let mut admin = ::postgres::Client::connect(&server.url, ::postgres::NoTls).unwrap();
    admin.batch_execute("CREATE DATABASE old_schema").unwrap();
    let url = format!("{}/old_schema", server.url.rsplit_once('/').unwrap().0);
    let mut old = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    // The schema as the first release created it, verbatim.
    old.batch_execute(
        "CREATE TABLE IF NOT EXISTS rekey_credentials (
            name       TEXT PRIMARY KEY,
            settings   TEXT NOT NULL,
            keys       TEXT,
            version    BIGINT NOT NULL DEFAULT 0,
            updated_at BIGINT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS rekey_leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        );
        INSERT INTO rekey_leases VALUES ('old', 'A', now() + INTERVAL '1 hour');",
    )
    .unwrap();
    let settings = serde_json::to_string(&literal_settings()).unwrap();
    old.execute(
        "INSERT INTO rekey_credentials VALUES ('old', $1, $2, 3, 1700000000)",
        &[&settings, &OLD_KEYS],
    )
    .unwrap();
    drop(old);
    let opened: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || rekey::store::open(&url))
        })
        .collect();
    let mut opened = opened.into_iter().map(|t| t.join().unwrap().unwrap());
    let (store, reopened) = (opened.next().unwrap(), opened.next().unwrap());
    check_migrated(store.as_ref(), reopened.as_ref());
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
