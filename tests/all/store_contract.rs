//! The `KeyStore` contract (`docs/record-store.md`), one list of checks run
//! on every backend: `store_contract::{memory,sqlite,postgres}::<check>`.
//! Each check gets a `Subject` that opens handles on one store (for SQLite
//! and PostgreSQL each handle is its own connection, as another worker's
//! would be; processes open it by URL).
//!
//! The store keeps what it is given: the lease, the refresh mark and the
//! dead grant are the component's business (guest/src/fleet.rs), so these
//! checks only write records and read them back. Then checks of one backend
//! each: the schema as created, stores of 0.2 and of the first release
//! migrated in place, a newer schema refused.

use crate::support::postgres::Postgres;
use rekey::settings::ClientSecret;
use rekey::{
    ClientAuth, Credential, DeadGrant, KeyStore, Lease, MemoryStore, Record, RefreshMark, Settings,
    StoreError, Strategy, TokenSet,
};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// One backend's store for one check.
struct Subject {
    open: Box<dyn Fn() -> Arc<dyn KeyStore>>,
    /// What `rekey::store::open` takes, for another process; none for a
    /// store that lives in this process only.
    url: Option<String>,
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

    /// A credential with keys, at version 0.
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
        url: None,
        prefix: format!("{check}/"),
        _keep: Box::new(()),
    })
}

fn open_sqlite(check: &str) -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.db");
    let url = path.to_str().unwrap().to_owned();
    Some(Subject {
        open: Box::new(move || Arc::new(rekey::SqliteStore::open(&path).unwrap())),
        url: Some(url),
        prefix: format!("{check}/"),
        _keep: Box::new(dir),
    })
}

fn open_postgres(check: &str) -> Option<Subject> {
    let server = shared_postgres()?;
    let url = server.url.clone();
    Some(Subject {
        open: Box::new(move || rekey::store::open(&url).unwrap()),
        url: Some(server.url.clone()),
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
    write_record_bumps_the_version_by_one,
    a_stale_writer_gets_conflict_and_changes_nothing,
    versions_only_grow,
    every_field_round_trips_nulls_included,
    times_at_the_columns_edge_round_trip_or_are_refused_whole,
    editing_settings_keeps_the_record,
    put_with_keys_starts_the_record_afresh,
    non_object_keys_are_refused_without_echo,
    clear_refresh_in_doubt_clears_lease_and_mark_only,
    a_removed_credential_comes_back_empty,
    list_and_load_agree,
    concurrent_writes_lose_no_update,
    one_of_many_writers_on_one_version_wins,
    one_of_many_writer_processes_on_one_version_wins,
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

/// A record with keys `n` and nothing else.
fn keys_only(n: u64) -> Record {
    Record {
        keys: Some(keys(n)),
        ..Record::default()
    }
}

/// What a holder writes as it takes the lease and sets the mark: its own
/// name in both, so the record tells which writer it came from.
fn claim(holder: &str, n: u64) -> Record {
    Record {
        keys: Some(keys(n)),
        lease: Some(Lease {
            holder: holder.into(),
            until_ms: 1_700_000_040_000 + n,
        }),
        refresh_mark: Some(RefreshMark {
            holder: holder.into(),
            at_ms: 1_700_000_000_000 + n,
        }),
        dead_grant: None,
    }
}

fn stored_n(c: &Credential) -> u64 {
    let keys = c.keys.as_ref().expect("keys stored");
    let v: serde_json::Value = serde_json::from_str(keys.expose()).expect("stored keys are JSON");
    v["n"].as_u64().expect("n")
}

/// What a credential holds, comparable.
fn state(c: &Credential) -> (String, Settings, Record, u64) {
    (c.name.clone(), c.settings.clone(), c.record(), c.version)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The credentials of this check, by name.
fn listed(s: &Subject, store: &dyn KeyStore) -> Vec<Credential> {
    let mut all: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .filter(|c| c.name.starts_with(&s.prefix))
        .collect();
    all.sort_by(|x, y| x.name.cmp(&y.name));
    all
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

    let mut expected = vec![
        (literal.clone(), literal_settings(), keys_only(7), 0),
        (env.clone(), env_settings(), keys_only(8), 0),
        (bare.clone(), env_settings(), Record::default(), 0),
    ];
    for want in &expected {
        let got = reader.load(&want.0).unwrap();
        assert_eq!(&state(&got), want, "read back through another handle");
        assert!(
            (before..=after).contains(&got.updated_at),
            "updated_at {} outside {before}..={after}",
            got.updated_at
        );
    }
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    let listed: Vec<_> = listed(s, reader.as_ref()).iter().map(state).collect();
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
    let names: Vec<_> = listed(s, store.as_ref())
        .into_iter()
        .map(|c| c.name)
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
    for expected in [0, 1, u64::MAX] {
        let written = store.write_record(&name, expected, &claim("A", 1));
        assert!(
            matches!(&written, Err(StoreError::UnknownCredential(n)) if *n == name),
            "write_record(expected {expected}) on an unknown name: {written:?}"
        );
    }
    assert!(matches!(
        store.clear_refresh_in_doubt(&name),
        Err(StoreError::UnknownCredential(n)) if n == name
    ));
    assert!(!store.remove(&name).unwrap());
    assert!(
        matches!(s.store().load(&name), Err(StoreError::UnknownCredential(_))),
        "a refused write created nothing"
    );
    assert!(listed(s, store.as_ref()).is_empty());
}

fn write_record_bumps_the_version_by_one(s: &Subject) {
    let store = s.store();
    let name = s.credential("c");
    let before = unix_now();
    for n in 1..=3 {
        let current = store.load(&name).unwrap().version;
        assert_eq!(
            store.write_record(&name, current, &keys_only(n)).unwrap(),
            current + 1
        );
        let c = s.store().load(&name).unwrap();
        assert_eq!((c.version, stored_n(&c)), (current + 1, n));
        assert!((before..=unix_now()).contains(&c.updated_at), "updated_at");
    }
}

fn a_stale_writer_gets_conflict_and_changes_nothing(s: &Subject) {
    let (first, late) = (s.store(), s.store());
    let name = s.credential("c");
    let seen = late.load(&name).unwrap().version;
    assert_eq!(first.write_record(&name, seen, &claim("A", 1)).unwrap(), 1);
    let before = first.load(&name).unwrap();

    for stale in [seen, seen + 2, seen + 5, u64::MAX] {
        let refused = late.write_record(&name, stale, &claim("B", 99));
        assert!(
            matches!(&refused, Err(StoreError::Conflict(n)) if *n == name),
            "expected version {stale} against stored 1: {refused:?}"
        );
    }
    let after = s.store().load(&name).unwrap();
    assert_eq!(state(&after), state(&before));
    assert_eq!(after.updated_at, before.updated_at, "not even touched");
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
    store.write_record(&name, 0, &keys_only(1)).unwrap();
    seen.push(version());
    store.write_record(&name, 1, &Record::default()).unwrap();
    seen.push(version());
    store.put(&name, &env_settings(), None).unwrap();
    seen.push(version());
    store.put(&name, &env_settings(), Some(&keys(3))).unwrap();
    seen.push(version());
    let _ = store.write_record(&name, 0, &keys_only(4));
    seen.push(version());
    store.clear_refresh_in_doubt(&name).unwrap();
    seen.push(version());
    assert_eq!(seen, [0, 1, 2, 2, 3, 3, 4]);
}

/// Records that set each field alone, all, none, and odd values: each is
/// written, then read back through a new handle once the writer is gone
/// (the write was durable when it returned), by `load` and by `list`.
fn every_field_round_trips_nulls_included(s: &Subject) {
    let name = s.credential("c");
    let lease = Lease {
        holder: "holder-a".into(),
        until_ms: 1_700_000_040_000,
    };
    let mark = RefreshMark {
        holder: "holder-a".into(),
        at_ms: 1_700_000_001_234,
    };
    let dead = DeadGrant {
        code: "invalid_grant".into(),
        at: 1_700_000_002,
    };
    let records = [
        Record {
            keys: Some(keys(1)),
            lease: Some(lease.clone()),
            refresh_mark: Some(mark.clone()),
            dead_grant: Some(dead.clone()),
        },
        Record::default(),
        keys_only(2),
        Record {
            lease: Some(lease.clone()),
            ..Record::default()
        },
        Record {
            refresh_mark: Some(mark.clone()),
            ..Record::default()
        },
        Record {
            dead_grant: Some(dead.clone()),
            ..Record::default()
        },
        Record {
            keys: Some(TokenSet::stored(
                r#"{"access_token":"ünïcode ✓ \"quoted\"","nested":{"a":[1,2.5,null]}}"#,
            )),
            lease: Some(Lease {
                holder: String::new(),
                until_ms: 0,
            }),
            refresh_mark: Some(RefreshMark {
                holder: "ünïcode ✓".into(),
                at_ms: 0,
            }),
            dead_grant: Some(DeadGrant {
                code: String::new(),
                at: -1,
            }),
        },
        Record::default(),
    ];
    for (i, record) in records.iter().enumerate() {
        let expected = i as u64;
        {
            let writer = s.store();
            let written = writer.write_record(&name, expected, record).unwrap();
            assert_eq!(written, expected + 1, "record {i}");
        }
        let reader = s.store();
        let c = reader.load(&name).unwrap();
        assert_eq!(&c.record(), record, "record {i}, by load");
        assert_eq!(c.version, expected + 1, "record {i}");
        assert_eq!(c.settings, literal_settings(), "settings untouched");
        let listed = listed(s, reader.as_ref());
        assert_eq!(listed.len(), 1);
        assert_eq!(&listed[0].record(), record, "record {i}, by list");
    }
}

/// Times as large as a signed 64-bit column holds round-trip; larger ones
/// are stored exactly or refused whole (nothing written), never cut.
fn times_at_the_columns_edge_round_trip_or_are_refused_whole(s: &Subject) {
    let store = s.store();
    let name = s.credential("c");
    let at = |ms: u64| Record {
        keys: Some(keys(ms % 1000)),
        lease: Some(Lease {
            holder: "A".into(),
            until_ms: ms,
        }),
        refresh_mark: Some(RefreshMark {
            holder: "A".into(),
            at_ms: ms,
        }),
        dead_grant: Some(DeadGrant {
            code: "invalid_grant".into(),
            at: i64::MAX,
        }),
    };
    let edge = at(i64::MAX as u64);
    assert_eq!(store.write_record(&name, 0, &edge).unwrap(), 1);
    assert_eq!(s.store().load(&name).unwrap().record(), edge);

    for beyond in [i64::MAX as u64 + 1, u64::MAX] {
        let current = store.load(&name).unwrap();
        match store.write_record(&name, current.version, &at(beyond)) {
            Ok(v) => {
                assert_eq!(v, current.version + 1);
                assert_eq!(s.store().load(&name).unwrap().record(), at(beyond));
            }
            Err(StoreError::Write(why)) => {
                assert!(why.contains("nothing was written"), "{why}");
                assert_eq!(state(&s.store().load(&name).unwrap()), state(&current));
            }
            Err(e) => panic!("{beyond}: {e:?}"),
        }
    }
}

fn editing_settings_keeps_the_record(s: &Subject) {
    let store = s.store();
    let name = s.credential("c");
    let mut record = claim("A", 1);
    record.dead_grant = Some(DeadGrant {
        code: "invalid_grant".into(),
        at: 1_700_000_000,
    });
    store.write_record(&name, 0, &record).unwrap();
    store.put(&name, &env_settings(), None).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!(c.settings, env_settings());
    assert_eq!(
        (c.record(), c.version),
        (record, 1),
        "keys, lease, mark, dead grant and version kept: a refresh in flight goes on"
    );
    assert_eq!(
        store.write_record(&name, 1, &keys_only(2)).unwrap(),
        2,
        "the holder's next write still lands"
    );
}

fn put_with_keys_starts_the_record_afresh(s: &Subject) {
    let store = s.store();
    let name = s.credential("c");
    let mut record = claim("A", 1);
    record.dead_grant = Some(DeadGrant {
        code: "invalid_grant".into(),
        at: 1_700_000_000,
    });
    store.write_record(&name, 0, &record).unwrap();
    store.put(&name, &env_settings(), Some(&keys(9))).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!(c.settings, env_settings());
    assert_eq!(
        (c.record(), c.version),
        (keys_only(9), 2),
        "new keys: no lease, no mark, no dead grant, version + 1"
    );
    assert!(
        matches!(
            store.write_record(&name, 1, &keys_only(2)),
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
    assert_eq!((c.record(), c.version), (keys_only(3), 1));
}

fn non_object_keys_are_refused_without_echo(s: &Subject) {
    let store = s.store();
    let name = s.credential("c");
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
        let bad_record = Record {
            keys: Some(bad_keys.clone()),
            ..claim("A", 1)
        };
        let refusals = [
            store.put(&fresh, &literal_settings(), Some(&bad_keys)),
            store.put(&name, &env_settings(), Some(&bad_keys)),
            store.write_record(&name, 0, &bad_record).map(drop),
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

fn clear_refresh_in_doubt_clears_lease_and_mark_only(s: &Subject) {
    let (a, b) = (s.store(), s.store());
    let name = s.credential("c");
    let mut record = claim("A", 1);
    record.dead_grant = Some(DeadGrant {
        code: "invalid_grant".into(),
        at: 1_700_000_000,
    });
    a.write_record(&name, 0, &record).unwrap();
    assert!(a.load(&name).unwrap().refresh_in_doubt_at(u64::MAX));

    b.clear_refresh_in_doubt(&name).unwrap();
    let c = s.store().load(&name).unwrap();
    let cleared = Record {
        lease: None,
        refresh_mark: None,
        ..record
    };
    assert_eq!((c.record(), c.version), (cleared.clone(), 2));
    assert!(!c.refresh_in_doubt_at(0));
    b.clear_refresh_in_doubt(&name).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!(
        (c.record(), c.version),
        (cleared, 3),
        "clearing twice is harmless (a write all the same)"
    );
    assert!(
        matches!(
            a.write_record(&name, 1, &keys_only(5)),
            Err(StoreError::Conflict(_))
        ),
        "the holder whose mark was cleared is fenced off"
    );
}

fn a_removed_credential_comes_back_empty(s: &Subject) {
    let a = s.store();
    let name = s.credential("c");
    a.write_record(&name, 0, &claim("A", 1)).unwrap();
    assert!(a.remove(&name).unwrap());
    a.put(&name, &literal_settings(), None).unwrap();
    let c = s.store().load(&name).unwrap();
    assert_eq!((c.record(), c.version), (Record::default(), 0));
}

fn list_and_load_agree(s: &Subject) {
    let a = s.store();
    let plain = s.credential("plain");
    let claimed = s.credential("claimed");
    a.write_record(&claimed, 0, &claim("A", 1)).unwrap();
    let dead = s.credential("dead");
    let dead_record = Record {
        dead_grant: Some(DeadGrant {
            code: "invalid_client".into(),
            at: 1_700_000_000,
        }),
        ..keys_only(0)
    };
    a.write_record(&dead, 0, &dead_record).unwrap();
    let listed = listed(s, s.store().as_ref());
    let names: Vec<_> = listed.iter().map(|c| c.name.clone()).collect();
    let mut expected = vec![plain, claimed, dead];
    expected.sort();
    assert_eq!(names, expected);
    for c in &listed {
        let loaded = a.load(&c.name).unwrap();
        assert_eq!(state(c), state(&loaded));
        assert_eq!(c.updated_at, loaded.updated_at);
    }
}

// ---- concurrency ----

fn concurrent_writes_lose_no_update(s: &Subject) {
    const WORKERS: usize = 8;
    const ROUNDS: u64 = 5;
    let name = s.credential("counter");
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
                        match store.write_record(&name, c.version, &keys_only(n + 1)) {
                            Ok(v) => {
                                assert_eq!(v, c.version + 1);
                                break;
                            }
                            Err(StoreError::Conflict(_)) => continue,
                            Err(e) => panic!("write_record: {e}"),
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

/// The verdict of several writers on one expected version: exactly one
/// `Ok(1)`, every other a conflict, and the stored record the winner's.
fn exactly_one_won(s: &Subject, name: &str, results: &[(String, Result<u64, String>)]) {
    let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "winners: {results:?}");
    let (winner, version) = won[0];
    assert_eq!(version, &Ok(1), "{results:?}");
    for (who, r) in results {
        if who != winner {
            assert_eq!(r, &Err("conflict".into()), "{who}");
        }
    }
    let c = s.store().load(name).unwrap();
    assert_eq!(c.version, 1);
    let holder = c.lease.as_ref().map(|l| l.holder.clone());
    assert_eq!(
        holder.as_ref(),
        Some(winner),
        "the winner's record is stored"
    );
    assert_eq!(c.record(), claim(winner, stored_n(&c)));
}

fn verdict(r: Result<u64, StoreError>) -> Result<u64, String> {
    r.map_err(|e| match e {
        StoreError::Conflict(_) => "conflict".to_owned(),
        other => format!("{other:?}"),
    })
}

fn one_of_many_writers_on_one_version_wins(s: &Subject) {
    const WRITERS: u64 = 8;
    let name = s.credential("c");
    let start = Arc::new(Barrier::new(WRITERS as usize));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, name, start) = (s.store(), name.clone(), start.clone());
            std::thread::spawn(move || {
                let holder = format!("thread-{i}");
                start.wait();
                let r = store.write_record(&name, 0, &claim(&holder, i));
                (holder, verdict(r))
            })
        })
        .collect();
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    exactly_one_won(s, &name, &results);
}

/// As above, each writer a process of its own ([`writer_process`]) that
/// opens the store by URL, says it is ready, and writes once told to.
fn one_of_many_writer_processes_on_one_version_wins(s: &Subject) {
    const WRITERS: u64 = 6;
    let Some(url) = &s.url else {
        return; // a store of this process only
    };
    let name = s.credential("c");
    let mut writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let holder = format!("process-{i}");
            let spec = [url.as_str(), &name, "0", &holder, &i.to_string()].join("\n");
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "store_contract::writer_process"])
                .args(["--nocapture", "--test-threads=1", "-q"])
                .env("REKEY_STORE_WRITER", spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a writer process");
            let out = BufReader::new(child.stdout.take().unwrap());
            (holder, child, out)
        })
        .collect();
    let said = |out: &mut BufReader<_>| -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "a writer ended early"
            );
            if let Some(rest) = line.trim_end().strip_prefix("WRITER ") {
                return rest.to_owned();
            }
        }
    };
    // Every one connected before any writes.
    for (holder, _, out) in &mut writers {
        assert_eq!(said(out), "ready", "{holder}");
    }
    for (_, child, _) in &mut writers {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let results: Vec<_> = writers
        .into_iter()
        .map(|(holder, mut child, mut out)| {
            let answer = said(&mut out);
            assert!(child.wait().unwrap().success(), "{holder}");
            let r = match answer.strip_prefix("won ") {
                Some(v) => Ok(v.parse().unwrap()),
                None => Err(answer),
            };
            (holder, r)
        })
        .collect();
    exactly_one_won(s, &name, &results);
}

/// Not a check: a writer process for
/// [`one_of_many_writer_processes_on_one_version_wins`], which starts this
/// test binary again with `REKEY_STORE_WRITER` = URL, credential, expected
/// version, holder and n (one a line).
#[test]
#[ignore = "a writer process, started by the contract's process check"]
fn writer_process() {
    let Ok(spec) = std::env::var("REKEY_STORE_WRITER") else {
        return;
    };
    let args: Vec<&str> = spec.split('\n').collect();
    let [url, name, expected, holder, n] = args[..] else {
        panic!("REKEY_STORE_WRITER: {spec:?}");
    };
    let store = rekey::store::open(url).unwrap();
    println!("WRITER ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let r = store.write_record(
        name,
        expected.parse().unwrap(),
        &claim(holder, n.parse().unwrap()),
    );
    match verdict(r) {
        Ok(v) => println!("WRITER won {v}"),
        Err(e) => println!("WRITER {e}"),
    }
}

// ---- the schema, and stores of earlier versions ----

/// The columns of the v3 table, as `docs/record-store.md` lists them.
const V3_COLUMNS: [&str; 11] = [
    "name",
    "settings",
    "keys",
    "version",
    "updated_at",
    "dead_grant_code",
    "dead_grant_at",
    "lease_holder",
    "lease_until_ms",
    "mark_holder",
    "mark_at_ms",
];

/// The keys every old store holds.
const OLD_KEYS: &str = r#"{"access_token":"old-at","refresh_token":"old-rt","n":3}"#;

/// What an old store's three credentials hold once migrated: `doubt` was
/// in doubt (and had a live lease), `dead` had a dead grant, `bare` no
/// keys. The first release had neither flag: `with_flags` false.
fn check_migrated(store: &dyn KeyStore, reopened: &dyn KeyStore, with_flags: bool) {
    let doubt = store.load("doubt").unwrap();
    assert_eq!(doubt.settings, literal_settings());
    assert_eq!(doubt.keys.as_ref().map(|k| k.expose()), Some(OLD_KEYS));
    assert_eq!((doubt.version, doubt.updated_at), (3, 1_700_000_000));
    let mark = with_flags.then(|| RefreshMark {
        holder: "migrated-0.2".into(),
        at_ms: 1_700_000_000_000,
    });
    assert_eq!(
        doubt.refresh_mark, mark,
        "a 0.2 refresh in doubt stays in doubt"
    );
    assert_eq!(doubt.lease, None, "the 0.2 lease is gone");
    assert_eq!(doubt.needs_authorization, None);
    assert_eq!(doubt.refresh_in_doubt(), with_flags);

    let dead = store.load("dead").unwrap();
    let grant = with_flags.then(|| DeadGrant {
        code: "invalid_grant".into(),
        at: 1_700_000_050,
    });
    assert_eq!(
        (dead.record(), dead.version),
        (
            Record {
                keys: Some(TokenSet::stored(OLD_KEYS)),
                dead_grant: grant,
                ..Record::default()
            },
            7
        )
    );
    let bare = store.load("bare").unwrap();
    assert_eq!((bare.record(), bare.version), (Record::default(), 0));
    assert_eq!(store.list().unwrap().len(), 3);

    // The record works as any other: compare-and-swap on the old version.
    assert_eq!(
        reopened.write_record("doubt", 3, &claim("A", 4)).unwrap(),
        4
    );
    assert!(matches!(
        store.write_record("doubt", 3, &claim("B", 5)),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.load("doubt").unwrap().record(), claim("A", 4));
}

/// Opens `open(i)` twice at once, as a machine's workers would: both see
/// the store migrated (by one of them), neither fails.
fn open_twice_at_once<S: Send + 'static>(
    open: impl Fn() -> Result<S, StoreError> + Clone + Send + 'static,
) -> (S, S) {
    let start = Arc::new(Barrier::new(2));
    let opened: Vec<_> = (0..2)
        .map(|_| {
            let (open, start) = (open.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                open()
            })
        })
        .collect();
    let mut opened = opened.into_iter().map(|t| t.join().unwrap().unwrap());
    (opened.next().unwrap(), opened.next().unwrap())
}

mod sqlite_schema {
    use super::*;
    use rusqlite::Connection;
    use std::path::Path;

    /// The 0.2 schema, verbatim (`git show pre-0.3:host/src/store/sqlite.rs`).
    const SCHEMA_0_2: &str = "
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
        ) STRICT;";

    /// The first release's schema, verbatim.
    const SCHEMA_0_1: &str = "
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
        ) STRICT;";

    /// Each column's name, type, NOT NULL, default and key flag.
    fn columns(conn: &Connection) -> Vec<(String, String, bool, Option<String>, i64)> {
        conn.prepare(
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('credentials')",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    /// A store as rekey 3 creates it, for comparison.
    fn fresh_columns() -> Vec<(String, String, bool, Option<String>, i64)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.db");
        rekey::SqliteStore::open(&path).unwrap();
        columns(&Connection::open(&path).unwrap())
    }

    #[test]
    fn a_new_store_has_the_documented_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        rekey::SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        assert_eq!(user_version(&conn), 3);
        assert_eq!(tables(&conn), ["credentials"]);
        let columns = columns(&conn);
        let names: Vec<_> = columns.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, V3_COLUMNS);
        let strict: bool = conn
            .query_row(
                "SELECT strict FROM pragma_table_list('credentials')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(strict);
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    /// An old store with three credentials (see [`check_migrated`]), its
    /// `doubt` one holding a live 0.2 lease.
    fn old_store(path: &Path, schema: &str, with_flags: bool) {
        let old = Connection::open(path).unwrap();
        old.execute_batch(schema).unwrap();
        let settings = serde_json::to_string(&literal_settings()).unwrap();
        let insert = |name: &str, keys: Option<&str>, version: i64, at: i64| {
            old.execute(
                "INSERT INTO credentials (name, settings, keys, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![name, settings, keys, version, at],
            )
            .unwrap();
        };
        insert("doubt", Some(OLD_KEYS), 3, 1_700_000_000);
        insert("dead", Some(OLD_KEYS), 7, 1_700_000_100);
        insert("bare", None, 0, 1_700_000_200);
        if with_flags {
            old.execute_batch(
                "UPDATE credentials SET refresh_in_doubt = 1 WHERE name = 'doubt';
                 UPDATE credentials SET dead_grant_code = 'invalid_grant',
                     dead_grant_at = 1700000050 WHERE name = 'dead';",
            )
            .unwrap();
        }
        let live_until = (unix_now() + 3600) * 1000;
        old.execute("INSERT INTO leases VALUES ('doubt', 'A', ?1)", [live_until])
            .unwrap();
    }

    fn migrates(schema: &str, with_flags: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        old_store(&path, schema, with_flags);
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        let p = path.clone();
        let (store, reopened) = open_twice_at_once(move || rekey::SqliteStore::open(&p));

        let conn = Connection::open(&path).unwrap();
        assert_eq!(user_version(&conn), 3);
        assert_eq!(tables(&conn), ["credentials"], "the leases table is gone");
        assert_eq!(columns(&conn), fresh_columns(), "as a new store's");
        let same = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(same, ino, "in place");
        check_migrated(&store, &reopened, with_flags);
    }

    #[test]
    fn a_0_2_store_is_migrated_in_place() {
        migrates(SCHEMA_0_2, true);
    }

    #[test]
    fn a_first_release_store_is_migrated_in_place() {
        migrates(SCHEMA_0_1, false);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newer.db");
        let store = rekey::SqliteStore::open(&path).unwrap();
        store.put("c", &literal_settings(), Some(&keys(1))).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 4).unwrap();
        let before = columns(&conn);
        let err = rekey::SqliteStore::open(&path).err().expect("refused");
        assert!(matches!(err, StoreError::Unusable { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("schema version is 4, newer"), "{shown}");
        assert_eq!(user_version(&conn), 4);
        assert_eq!(columns(&conn), before);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM credentials", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    /// A lease or mark half there is a damaged row, said so, never guessed.
    #[test]
    fn a_half_written_lease_is_a_damaged_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.db");
        let store = rekey::SqliteStore::open(&path).unwrap();
        store.put("c", &literal_settings(), Some(&keys(1))).unwrap();
        let conn = Connection::open(&path).unwrap();
        for damage in [
            "UPDATE credentials SET lease_holder = 'A', lease_until_ms = NULL",
            "UPDATE credentials SET lease_holder = NULL, mark_at_ms = 5",
            "UPDATE credentials SET mark_holder = 'A', mark_at_ms = -5",
            "UPDATE credentials SET version = -1",
        ] {
            conn.execute_batch(&format!(
                "UPDATE credentials SET lease_holder = NULL, lease_until_ms = NULL,
                     mark_holder = NULL, mark_at_ms = NULL, version = 1; {damage}"
            ))
            .unwrap();
            let err = store.load("c").expect_err(damage);
            assert!(
                matches!(err, StoreError::Corrupt { .. }),
                "{damage}: {err:?}"
            );
            assert!(!err.to_string().contains("at-1"), "{err}");
        }
    }
}

mod postgres_schema {
    use super::*;

    /// The 0.2 schema, verbatim (`git show pre-0.3:host/src/store/postgres.rs`).
    const SCHEMA_0_2: &str = "
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
        );";

    /// The first release's schema, verbatim.
    const SCHEMA_0_1: &str = "
        CREATE TABLE IF NOT EXISTS rekey_credentials (
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
        );";

    /// A database of its own on the shared server, and a client on it.
    fn database(name: &str) -> Option<(Arc<Postgres>, String, ::postgres::Client)> {
        let server = shared_postgres()?;
        let mut admin = ::postgres::Client::connect(&server.url, ::postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = format!("{}/{name}", server.url.rsplit_once('/').unwrap().0);
        let client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        Some((server, url, client))
    }

    type Column = (String, String, String, Option<String>);

    fn columns(c: &mut ::postgres::Client) -> Vec<Column> {
        c.query(
            "SELECT column_name::TEXT, data_type::TEXT, is_nullable::TEXT, column_default::TEXT
             FROM information_schema.columns WHERE table_name = 'rekey_credentials'
             ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }

    fn tables(c: &mut ::postgres::Client) -> Vec<String> {
        c.query(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    fn schema_rows(c: &mut ::postgres::Client) -> Vec<i32> {
        c.query("SELECT version FROM rekey_schema", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[test]
    fn a_new_store_has_the_documented_schema() {
        let Some((_server, url, mut c)) = database("new_schema") else {
            return;
        };
        rekey::store::open(&url).unwrap();
        assert_eq!(tables(&mut c), ["rekey_credentials", "rekey_schema"]);
        assert_eq!(schema_rows(&mut c), [3]);
        let names: Vec<_> = columns(&mut c).into_iter().map(|c| c.0).collect();
        assert_eq!(names, V3_COLUMNS);
        rekey::store::open(&url).unwrap();
        assert_eq!(schema_rows(&mut c), [3], "opened again: still one row");
    }

    fn migrates(db: &str, schema: &str, with_flags: bool) {
        let Some((_server, url, mut old)) = database(db) else {
            return;
        };
        old.batch_execute(schema).unwrap();
        old.batch_execute(
            "INSERT INTO rekey_leases VALUES ('doubt', 'A', now() + INTERVAL '1 hour')",
        )
        .unwrap();
        let settings = serde_json::to_string(&literal_settings()).unwrap();
        for (name, keys, version, at) in [
            ("doubt", Some(OLD_KEYS), 3i64, 1_700_000_000i64),
            ("dead", Some(OLD_KEYS), 7, 1_700_000_100),
            ("bare", None, 0, 1_700_000_200),
        ] {
            old.execute(
                "INSERT INTO rekey_credentials (name, settings, keys, version, updated_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &settings, &keys, &version, &at],
            )
            .unwrap();
        }
        if with_flags {
            old.batch_execute(
                "UPDATE rekey_credentials SET refresh_in_doubt = TRUE WHERE name = 'doubt';
                 UPDATE rekey_credentials SET dead_grant_code = 'invalid_grant',
                     dead_grant_at = 1700000050 WHERE name = 'dead';",
            )
            .unwrap();
        }
        let u = url.clone();
        let (store, reopened) = open_twice_at_once(move || rekey::store::open(&u));

        assert_eq!(tables(&mut old), ["rekey_credentials", "rekey_schema"]);
        assert_eq!(schema_rows(&mut old), [3]);
        let (_fresh_server, fresh_url, mut fresh) = database(&format!("{db}_fresh")).unwrap();
        rekey::store::open(&fresh_url).unwrap();
        assert_eq!(columns(&mut old), columns(&mut fresh), "as a new store's");
        check_migrated(store.as_ref(), reopened.as_ref(), with_flags);
    }

    #[test]
    fn a_0_2_store_is_migrated_in_place() {
        migrates("old_0_2", SCHEMA_0_2, true);
    }

    #[test]
    fn a_first_release_store_is_migrated_in_place() {
        migrates("old_0_1", SCHEMA_0_1, false);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let Some((_server, url, mut c)) = database("newer_schema") else {
            return;
        };
        let store = rekey::store::open(&url).unwrap();
        store.put("c", &literal_settings(), Some(&keys(1))).unwrap();
        c.batch_execute("UPDATE rekey_schema SET version = 4")
            .unwrap();
        let before = columns(&mut c);
        let err = rekey::store::open(&url).err().expect("refused");
        assert!(matches!(err, StoreError::Unusable { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("schema version is 4, newer"), "{shown}");
        assert_eq!(schema_rows(&mut c), [4]);
        assert_eq!(columns(&mut c), before);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    /// A fleet's workers start at once on a new database: every one of them
    /// must connect, though all try to create the tables at the same moment.
    #[test]
    fn workers_may_first_connect_at_once() {
        const WORKERS: usize = 8;
        let Some((_server, url, mut c)) = database("first_connect") else {
            return;
        };
        let start = Arc::new(Barrier::new(WORKERS));
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (url, start) = (url.clone(), start.clone());
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
        assert_eq!(schema_rows(&mut c), [3]);
    }
}
