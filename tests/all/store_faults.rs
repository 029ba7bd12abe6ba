//! The PostgreSQL store under faults: a server that restarts or goes away,
//! a connection that freezes (a proxy that stops forwarding without closing),
//! and a reply lost after its statement committed. Each test has a server of
//! its own: they stop it or cut its connections. A write either lands once
//! or says what is known: `Write` (nothing written), `Unknown` (it may have).
//!
//! Waits for something that must happen are polled with generous deadlines;
//! the only upper bounds asserted are a frozen call's, with seconds of slack.

use crate::support::postgres::Postgres;
use rekey::store::PostgresStore;
use rekey::{DeadGrant, KeyStore, Lease, Record, RefreshMark, Settings, StoreError, TokenSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The call timeout the stores under test are opened with.
const CALL: Duration = Duration::from_secs(2);
/// Slack over `CALL` for a call to come back on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
fn settings() -> Settings {
    Settings::new("https://idp.example/token", "faults-app")
}

fn keys(n: u64) -> TokenSet {
    TokenSet::stored(format!(
        r#"{{"access_token":"at-{n}","refresh_token":"rt-{n}","n":{n}}}"#
    ))
}

fn keys_only(n: u64) -> Record {
    Record {
        keys: Some(keys(n)),
        ..Record::default()
    }
}

/// A record with every field set.
fn full(n: u64) -> Record {
    Record {
        keys: Some(keys(n)),
        lease: Some(Lease {
            holder: "A".into(),
            until_ms: 1_700_000_040_000,
        }),
        refresh_mark: Some(RefreshMark {
            holder: "A".into(),
            at_ms: 1_700_000_000_000,
        }),
        dead_grant: Some(DeadGrant {
            code: "invalid_grant".into(),
            at: 1_700_000_000,
        }),
    }
}

fn stored_n(store: &dyn KeyStore, name: &str) -> (u64, u64) {
    let c = store.load(name).unwrap();
    let v: serde_json::Value = serde_json::from_str(c.keys.unwrap().expose()).unwrap();
    (v["n"].as_u64().unwrap(), c.version)
}

fn open(url: &str) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect_with_call_timeout(url, CALL).unwrap())
}

/// Runs `op` on its own thread and fails the test if it has not returned
/// within `CALL + SLACK`: a hang is a failure, not a stuck test run.
fn bounded<R: Send + 'static>(
    what: &str,
    op: impl FnOnce() -> R + Send + 'static,
) -> (R, Duration) {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    match rx.recv_timeout(CALL + SLACK) {
        Ok(r) => (r, started.elapsed()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still waiting after {:?}", CALL + SLACK)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: failed (see above)"),
    }
}

// ---- a server that restarts ----

#[test]
fn postgres_store_survives_server_restarts() {
    let Some(pg) = crate::support::postgres::start() else {
        return;
    };
    let store = open(&pg.url);
    store.put("c", &settings(), Some(&keys(0))).unwrap();
    store.put("d", &settings(), None).unwrap();

    // Every operation, each the first on a connection the restart ended.
    type Step = (&'static str, fn(&dyn KeyStore));
    let steps: [Step; 5] = [
        ("load", |s| assert_eq!(stored_n(s, "c"), (0, 0))),
        ("write_record", |s| {
            assert_eq!(s.write_record("c", 0, &full(1)).unwrap(), 1)
        }),
        ("clear_refresh_in_doubt", |s| {
            s.clear_refresh_in_doubt("c").unwrap()
        }),
        ("put", |s| s.put("e", &settings(), Some(&keys(5))).unwrap()),
        ("remove", |s| assert!(s.remove("d").unwrap())),
    ];
    for (what, step) in steps {
        pg.restart();
        let s = store.clone();
        bounded(what, move || step(s.as_ref()));
    }
    pg.restart();
    let listed: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|c| (c.name.clone(), c.version, c.record()))
        .collect();
    let cleared = Record {
        lease: None,
        refresh_mark: None,
        ..full(1)
    };
    assert_eq!(
        listed,
        [("c".into(), 2, cleared), ("e".into(), 0, keys_only(5))],
        "every write landed once"
    );
}

#[test]
fn postgres_store_fails_fast_while_the_server_is_down_then_recovers() {
    let Some(pg) = crate::support::postgres::start() else {
        return;
    };
    let store = open(&pg.url);
    store.put("c", &settings(), Some(&keys(0))).unwrap();
    pg.stop();
    // The first call finds its connection ended (what it sent may have
    // reached the server: a write may say unknown); later ones cannot
    // connect, so nothing was sent: a write failed.
    for round in 0..3 {
        let s = store.clone();
        let (loaded, _) = bounded("load while down", move || s.load("c"));
        assert!(
            matches!(loaded, Err(StoreError::Unusable { .. })),
            "{loaded:?}"
        );
        let s = store.clone();
        let (saved, _) = bounded("write while down", move || {
            s.write_record("c", 0, &keys_only(1))
        });
        match saved {
            Err(StoreError::Write(_)) => {}
            Err(StoreError::Unknown(_)) if round == 0 => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
    pg.start_again();
    assert_eq!(store.write_record("c", 0, &keys_only(1)).unwrap(), 1);
    assert_eq!(stored_n(store.as_ref(), "c"), (1, 1));
}

// ---- a connection that freezes, a reply that is lost ----

/// A TCP proxy to PostgreSQL that can freeze (stop forwarding, both ways,
/// without closing) or lose the reply of the next statement that completes:
/// it lets the server commit, then drops the reply and closes the client's
/// connection, as a network cut at the worst moment would.
struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    frozen: AtomicBool,
    cut_next_reply: AtomicBool,
    closed: AtomicBool,
    /// Both ends of every connection, to close them all at the end.
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn to(pg: &Postgres) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let upstream = pg.port;
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                s.streams
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (c2, s2, sh) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    s.clone(),
                );
                std::thread::spawn(move || requests(c2, s2, &sh));
                let sh = s.clone();
                std::thread::spawn(move || replies(server, client, &sh));
            }
        });
        Proxy { port, shared }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::SeqCst);
    }

    fn lose_next_reply(&self) {
        self.shared.cut_next_reply.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.freeze(false);
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which then sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Shared {
    fn wait_while_frozen(&self) {
        while self.frozen.load(Ordering::SeqCst) && !self.closed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Client to server: bytes as they come, held while frozen.
fn requests(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        shared.wait_while_frozen();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client, one protocol message at a time (a type byte, then a
/// length that counts itself), held while frozen. Losing a reply starts at a
/// CommandComplete ('C') and ends at the ReadyForQuery ('Z') that follows,
/// sent once the implicit transaction has committed.
fn replies(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut losing = false;
    loop {
        let mut header = [0u8; 5];
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut message = header.to_vec();
        message.resize(1 + len, 0);
        if from.read_exact(&mut message[5..]).is_err() {
            break;
        }
        if !losing && header[0] == b'C' && shared.cut_next_reply.swap(false, Ordering::SeqCst) {
            losing = true;
        }
        if losing {
            if header[0] == b'Z' {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            continue;
        }
        shared.wait_while_frozen();
        if to.write_all(&message).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn a_frozen_connection_fails_calls_within_the_bound_then_the_store_recovers() {
    let Some(pg) = crate::support::postgres::start() else {
        return;
    };
    let proxy = Proxy::to(&pg);
    let store = open(&proxy.url());
    store.put("c", &settings(), Some(&keys(0))).unwrap();
    assert_eq!(stored_n(store.as_ref(), "c"), (0, 0));

    proxy.freeze(true);
    // A write on the live connection, then a read (on a new connection,
    // itself frozen at its start), then several at once: each comes back
    // with an error in time, none waits for another.
    let s = store.clone();
    let (saved, took) = bounded("write while frozen", move || {
        s.write_record("c", 0, &keys_only(1))
    });
    // Sent, and held by the proxy: it may yet land.
    assert!(matches!(saved, Err(StoreError::Unknown(_))), "{saved:?}");
    assert!(
        took >= CALL,
        "gave up after {took:?}, before the call timeout"
    );
    let s = store.clone();
    let (loaded, _) = bounded("load while frozen", move || s.load("c"));
    assert!(
        matches!(loaded, Err(StoreError::Unusable { .. })),
        "{loaded:?}"
    );
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || bounded("concurrent load while frozen", move || s.load("c")))
        })
        .collect();
    for call in calls {
        let (loaded, _) = call.join().expect("a call within the bound");
        assert!(loaded.is_err());
    }

    // Each timed-out call left a connection thread stalled: a few, then the
    // store refuses to open more, at once, rather than pile them up.
    let mut refused = None;
    for _ in 0..8 {
        let s = store.clone();
        match bounded("load while frozen", move || s.load("c")).0 {
            Err(e) if e.to_string().contains("stalled") => {
                refused = Some(e);
                break;
            }
            Err(_) => {}
            Ok(c) => panic!("loaded through a frozen proxy: {c:?}"),
        }
    }
    assert!(
        refused.is_some(),
        "stalled connections pile up without a limit"
    );

    proxy.freeze(false);
    // The save that timed out was held by the proxy, not lost: it lands now
    // (its error said it might), once, as the compare-and-set it was. The
    // stalled threads end, and the store works again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.load("c") {
            Ok(c) if c.version == 1 => break,
            Ok(c) => assert_eq!(c.version, 0),
            Err(e) => assert!(e.to_string().contains("stalled"), "{e}"),
        }
        assert!(Instant::now() < deadline, "the store never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored_n(store.as_ref(), "c"), (1, 1));
    assert_eq!(store.write_record("c", 1, &full(2)).unwrap(), 2);
    assert_eq!(store.load("c").unwrap().record(), full(2));
}

#[test]
fn a_write_whose_reply_is_lost_after_commit_counts_once() {
    let Some(pg) = crate::support::postgres::start() else {
        return;
    };
    let proxy = Proxy::to(&pg);
    let store = open(&proxy.url());
    store.put("c", &settings(), Some(&keys(0))).unwrap();
    store.put("gone", &settings(), None).unwrap();
    let lose = |what: &str, op: &dyn Fn()| {
        proxy.lose_next_reply();
        op();
        assert!(
            !proxy.shared.cut_next_reply.load(Ordering::SeqCst),
            "{what}: no reply was lost; the test proves nothing"
        );
    };

    lose("compare-and-swap write", &|| {
        assert_eq!(store.write_record("c", 0, &full(1)).unwrap(), 1)
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (1, 1));
    assert_eq!(store.load("c").unwrap().record(), full(1));
    lose("a write of NULLs", &|| {
        assert_eq!(store.write_record("c", 1, &Record::default()).unwrap(), 2)
    });
    assert_eq!(store.load("c").unwrap().record(), Record::default());
    lose("put with keys", &|| {
        store.put("c", &settings(), Some(&keys(3))).unwrap()
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (3, 3), "put once, not twice");
    // Stale by one: the retry finds another record at expected + 1, so
    // the lost attempt cannot have landed.
    lose("a write stale by one", &|| {
        assert!(matches!(
            store.write_record("c", 2, &full(9)),
            Err(StoreError::Conflict(_))
        ))
    });
    // Stale by more: the lost attempt might have landed and been written
    // over since; the store cannot tell, and says so.
    lose("a write stale by more", &|| {
        let stale = store.write_record("c", 0, &full(9));
        assert!(matches!(stale, Err(StoreError::Unknown(_))), "{stale:?}");
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (3, 3));
    store.write_record("c", 3, &full(4)).unwrap();
    // Its read comes first: that is the reply lost, and read again.
    lose("clear_refresh_in_doubt", &|| {
        store.clear_refresh_in_doubt("c").unwrap()
    });
    let c = store.load("c").unwrap();
    assert_eq!(
        (c.version, c.lease, c.refresh_mark),
        (5, None, None),
        "once"
    );

    // Whether it removed it cannot be told: an error that says so, never a
    // false "nothing to remove".
    lose("remove", &|| {
        let removed = store.remove("gone");
        assert!(
            matches!(removed, Err(StoreError::Unknown(_))),
            "{removed:?}"
        );
    });
    assert!(matches!(
        store.load("gone"),
        Err(StoreError::UnknownCredential(_))
    ));
}
