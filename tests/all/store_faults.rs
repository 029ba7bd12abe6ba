//! The PostgreSQL store under faults: a server that restarts or goes away,
//! a connection that freezes (a proxy that stops forwarding without closing),
//! and a reply lost after its statement committed. Each test has a server of
//! its own: they stop it or cut its connections.
//!
//! Waits for something that must happen are polled with generous deadlines;
//! the only upper bounds asserted are a frozen call's, with seconds of slack.

use crate::support::postgres::Postgres;
use rekey::store::PostgresStore;
use rekey::{KeyStore, Settings, StoreError, TokenSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The call timeout the stores under test are opened with.
const CALL: Duration = Duration::from_secs(2);
/// Slack over `CALL` for a call to come back on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
/// A lease no test outlives.
const LONG: Duration = Duration::from_secs(120);

fn settings() -> Settings {
    Settings::new("https://idp.example/token", "faults-app")
}

fn keys(n: u64) -> TokenSet {
    TokenSet::stored(format!(
        r#"{{"access_token":"at-{n}","refresh_token":"rt-{n}","n":{n}}}"#
    ))
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
    let steps: [Step; 10] = [
        ("load", |s| assert_eq!(stored_n(s, "c"), (0, 0))),
        ("save_keys", |s| {
            assert_eq!(s.save_keys("c", &keys(1), Some(0)).unwrap(), 1)
        }),
        ("try_lease", |s| {
            assert!(s.try_lease("c", "A", LONG).unwrap())
        }),
        ("renew_lease", |s| {
            assert!(s.renew_lease("c", "A", LONG).unwrap())
        }),
        ("begin_refresh", |s| {
            assert!(s.begin_refresh("c", "A", LONG).unwrap());
            assert!(s.load("c").unwrap().refresh_in_doubt);
        }),
        ("release_lease", |s| s.release_lease("c", "A").unwrap()),
        ("clear_refresh_in_doubt", |s| {
            s.clear_refresh_in_doubt("c").unwrap()
        }),
        ("mark_needs_authorization", |s| {
            s.mark_needs_authorization("c", "invalid_grant").unwrap()
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
        .map(|c| {
            (
                c.name,
                c.version,
                c.refresh_in_doubt,
                c.needs_authorization.is_some(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("c".into(), 1, false, true), ("e".into(), 0, false, false)],
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
    for _ in 0..2 {
        let s = store.clone();
        let (loaded, _) = bounded("load while down", move || s.load("c"));
        assert!(
            matches!(loaded, Err(StoreError::Unusable { .. })),
            "{loaded:?}"
        );
        let s = store.clone();
        let (saved, _) = bounded("save while down", move || {
            s.save_keys("c", &keys(1), Some(0))
        });
        assert!(matches!(saved, Err(StoreError::Write(_))), "{saved:?}");
    }
    pg.start_again();
    assert_eq!(store.save_keys("c", &keys(1), Some(0)).unwrap(), 1);
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
    let (saved, took) = bounded("save while frozen", move || {
        s.save_keys("c", &keys(1), Some(0))
    });
    assert!(matches!(saved, Err(StoreError::Write(_))), "{saved:?}");
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
    assert_eq!(store.save_keys("c", &keys(2), Some(1)).unwrap(), 2);
    assert!(store.try_lease("c", "A", LONG).unwrap());
    assert!(store.begin_refresh("c", "A", LONG).unwrap());
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

    lose("compare-and-set save", &|| {
        assert_eq!(store.save_keys("c", &keys(1), Some(0)).unwrap(), 1)
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (1, 1));
    lose("unconditional save", &|| {
        assert_eq!(store.save_keys("c", &keys(2), None).unwrap(), 2)
    });
    assert_eq!(
        stored_n(store.as_ref(), "c"),
        (2, 2),
        "saved once, not twice"
    );
    lose("put with keys", &|| {
        store.put("c", &settings(), Some(&keys(3))).unwrap()
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (3, 3), "put once, not twice");
    lose("a stale save", &|| {
        assert!(matches!(
            store.save_keys("c", &keys(9), Some(0)),
            Err(StoreError::Conflict(_))
        ))
    });
    assert_eq!(stored_n(store.as_ref(), "c"), (3, 3));

    lose("try_lease", &|| {
        assert!(store.try_lease("c", "A", LONG).unwrap())
    });
    lose("begin_refresh", &|| {
        assert!(store.begin_refresh("c", "A", LONG).unwrap())
    });
    assert!(store.load("c").unwrap().refresh_in_doubt);
    lose("release_lease", &|| store.release_lease("c", "A").unwrap());
    assert!(store.try_lease("c", "B", LONG).unwrap(), "released");

    // Whether it removed it cannot be told: an error that says so, never a
    // false "nothing to remove".
    lose("remove", &|| {
        let removed = store.remove("gone");
        assert!(matches!(removed, Err(StoreError::Write(_))), "{removed:?}");
    });
    assert!(matches!(
        store.load("gone"),
        Err(StoreError::UnknownCredential(_))
    ));
}
