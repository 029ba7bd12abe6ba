//! The host runtime used the way an adversarial review of instance reuse
//! (host/src/warm.rs) and the call's task used it: many credentials and
//! stores against a bounded pool, stores dropped by the application, a
//! panicking observer, a caller that keeps a `send` future without polling
//! it, the CLI's current-thread runtime, a certificate for another name.
//! Each failed on the first version of those changes.

use crate::support::{client_settings, first_token_set};
use rekey::observe::{Event, Exchange, Observer};
use rekey::{
    ClientAuth, Config, KeyStore, MemoryStore, Rekey, Request, Settings, SqliteStore, Strategy,
    TokenSet,
};
use rekey_testkit::{Provider, ProviderConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

/// A loopback API answering every request 200 "ok".
fn start_api() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    origin
}

fn credential(store: &dyn KeyStore, name: &str, origin: &str) {
    let mut settings = Settings::new("http://127.0.0.1:9/token", "client");
    settings.api_origins = vec![origin.to_owned()];
    let keys = TokenSet::import(r#"{"access_token":"review","token_type":"Bearer"}"#).unwrap();
    store.put(name, &settings, Some(&keys)).unwrap();
}

// ---------------------------------------------------------------------------
// 1. Idle instances keep their Store's cached fiber stack (wasmtime keeps the
//    last async stack in the Store: `StoreOpaque::deallocate_fiber_stack`
//    parks it in `async_state.last_fiber_stack`, freed only when the Store is
//    dropped). The pool has `total_stacks(n)` for n slots and up to n idle
//    instances, so once n instances are idle no other credential can start.
// ---------------------------------------------------------------------------

async fn one_call_per_credential(pool: u32, credentials: usize) {
    let origin = start_api();
    let memory = Arc::new(MemoryStore::new());
    for i in 0..credentials {
        credential(memory.as_ref(), &format!("c{i}"), &origin);
    }
    let store: Arc<dyn KeyStore> = memory;
    let rekey = Rekey::new(Config {
        pooling: Some(pool),
        ..Config::default()
    })
    .unwrap();
    for i in 0..credentials {
        let name = format!("c{i}");
        let result = rekey
            .send(store.clone(), &name, Request::get(&format!("{origin}/x")))
            .await;
        if let Err(e) = result {
            panic!(
                "call {} of {credentials} (credential {name}, one call at a time, pool of {pool}) failed: {e}",
                i + 1
            );
        }
    }
}

/// Three credentials, one call at a time, a pool of two slots.
#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_hold_the_pools_fiber_stacks_small_pool() {
    one_call_per_credential(2, 3).await;
}

/// The default pool (128): the 129th credential of a sequential workload.
#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_hold_the_pools_fiber_stacks_default_pool() {
    one_call_per_credential(128, 129).await;
}

// ---------------------------------------------------------------------------
// 2. An idle instance keeps the last call's CallState, and with it an
//    `Arc<dyn KeyStore>` (and the refresh token it read): a store the caller
//    dropped stays open as long as the instance is idle, which is forever.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_store_the_caller_dropped_is_not_kept_alive_by_an_idle_instance() {
    let origin = start_api();
    let rekey = Rekey::new(Config::default()).unwrap();
    let memory = Arc::new(MemoryStore::new());
    credential(memory.as_ref(), "a", &origin);
    let weak = Arc::downgrade(&memory);
    let store: Arc<dyn KeyStore> = memory;
    rekey
        .send(store, "a", Request::get(&format!("{origin}/x")))
        .await
        .expect("the call");
    assert!(
        weak.upgrade().is_none(),
        "the caller holds no handle to the store any more, yet it is still alive \
         (strong count {}): the idle instance's stale CallState holds it",
        weak.strong_count()
    );
}

/// What that does to a service that opens its store per request (a
/// SqliteStore per request, as `rekey::store::open` invites): every request
/// parks an idle instance under a new store pointer; with the default pool,
/// requests stop working once the idle set holds the pool's stacks.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_opened_per_request_keeps_working() {
    let origin = start_api();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    credential(&SqliteStore::open(&path).unwrap(), "a", &origin);
    let rekey = Rekey::new(Config {
        pooling: Some(4),
        ..Config::default()
    })
    .unwrap();
    for i in 0..6 {
        let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(&path).unwrap());
        if let Err(e) = rekey
            .send(store, "a", Request::get(&format!("{origin}/x")))
            .await
        {
            panic!("request {} with a freshly opened store failed: {e}", i + 1);
        }
    }
}

// ---------------------------------------------------------------------------
// 3. A panic inside the call (a user-supplied Observer or non-blocking
//    KeyStore) used to end the call's own task (`send` returned
//    Error::Component "the call's task failed"); it now unwinds into the
//    caller, and Detached's Drop, running during that unwind, spawns the
//    poisoned future, which panics a second time on the runtime.
// ---------------------------------------------------------------------------

struct PanicsOnApiExchange;

impl Observer for PanicsOnApiExchange {
    fn event(&self, event: &Event<'_>) {
        if let Event::Http {
            exchange: Exchange::Api,
            ..
        } = event
        {
            panic!("review: an observer bug");
        }
    }
}

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_observer_fails_the_call_instead_of_unwinding_into_the_caller() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.lock().unwrap().push(info.to_string());
        previous(info);
    }));
    let origin = start_api();
    let memory = Arc::new(MemoryStore::new());
    credential(memory.as_ref(), "a", &origin);
    let store: Arc<dyn KeyStore> = memory;
    let rekey = Rekey::new(Config {
        observer: Arc::new(PanicsOnApiExchange),
        ..Config::default()
    })
    .unwrap();
    let url = format!("{origin}/x");
    let joined = tokio::spawn(async move {
        let result = rekey.send(store, "a", Request::get(&url)).await;
        result.map(|r| r.status).map_err(|e| e.to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unwound = joined.as_ref().is_err_and(|e| e.is_panic());
    let resumed: Vec<String> = PANICS
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("resumed after panicking"))
        .cloned()
        .collect();
    assert!(
        resumed.is_empty() && !unwound,
        "the observer's panic unwound into the caller's task: {unwound}; the poisoned call \
         future was then spawned and polled again: {resumed:?}"
    );
    match joined {
        Ok(Err(_)) => {}
        Ok(Ok(status)) => panic!("the call succeeded ({status}) despite the panic"),
        Err(e) => panic!("the panic unwound into the caller's task: {e}"),
    }
}

// ---------------------------------------------------------------------------
// 5. A send future that is kept but not polled (a select! whose other branch
//    won, a task busy elsewhere) now stops its refresh in mid-flight while
//    holding the lease: with the spawned task it finished on its own.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_is_not_stalled_by_a_caller_that_holds_its_future_without_polling() {
    let provider = Provider::start(ProviderConfig {
        access_ttl: Duration::from_secs(60),
        ..ProviderConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
    let settings = client_settings(&provider, Strategy::OnAuthFailure, ClientAuth::Basic);
    store
        .put("c", &settings, Some(&first_token_set(&provider)))
        .unwrap();
    provider.expire_access_tokens();
    // The provider has rotated the refresh token and is about to answer.
    let rotated = Arc::new(tokio::sync::Notify::new());
    {
        let rotated = rotated.clone();
        provider.before_refresh_answer(move |_| {
            rotated.notify_one();
            // The answer leaves after the caller has stopped polling.
            std::thread::sleep(Duration::from_millis(300));
        });
    }
    let rekey = Rekey::new(Config {
        // Long: the verdict must not depend on how fast a loaded machine is.
        lease_timeout: Duration::from_secs(30),
        ..Config::default()
    })
    .unwrap();
    let store_dyn: Arc<dyn KeyStore> = store.clone();
    let first = rekey.send(
        store_dyn.clone(),
        "c",
        Request::get(&provider.api_url("orders")),
    );
    tokio::pin!(first);
    tokio::select! {
        biased;
        r = &mut first => panic!("the first call ended before its refresh was answered: {:?}", r.map(|r| r.status)),
        () = rotated.notified() => {}
    }
    // `first` is alive and unfinished; this task is now busy with a second
    // call of the same credential.
    let started = Instant::now();
    let second = rekey
        .send(store_dyn, "c", Request::get(&provider.api_url("orders")))
        .await;
    let waited = started.elapsed();
    let version_meanwhile = store.load("c").unwrap().version;
    assert!(
        second.is_ok(),
        "the second call failed after {waited:?} ({}); the first call's rotated keys were \
         still unsaved meanwhile (stored version {version_meanwhile})",
        second.err().unwrap()
    );
}

// ---------------------------------------------------------------------------
// Checked sound: `credential add --issuer` blocks on discovery with
// `Handle::block_on` from a spawn_blocking thread of the CLI's current-thread
// runtime; the main thread, inside `Runtime::block_on`, drives the IO.
// ---------------------------------------------------------------------------

#[test]
fn credential_add_with_discovery_finishes_on_the_current_thread_runtime() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let meta = format!(r#"{{"issuer":"{origin}","token_endpoint":"{origin}/token"}}"#);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{meta}",
                meta.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.db");
    let mut child = std::process::Command::new(crate::support::rekey_bin())
        .arg("--store")
        .arg(&store)
        .args([
            "credential",
            "add",
            "d",
            "--client-id",
            "c",
            "--public-client",
            "--issuer",
            &origin,
            "--api-origin",
            "https://api.example.com",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("`credential add --issuer` hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let c = SqliteStore::open(&store).unwrap().load("d").unwrap();
    assert_eq!(c.settings.token_url, format!("{origin}/token"));
}

// ---------------------------------------------------------------------------
// Checked sound: the lazily built platform verifier still checks the name.
// A certificate from a trusted CA for IP 127.0.0.1, reached as `localhost`.
// ---------------------------------------------------------------------------

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

#[test]
fn a_trusted_certificate_for_another_name_is_refused() {
    use std::process::{Command, Stdio};
    if Command::new("openssl").arg("version").output().is_err() {
        return crate::support::missing_peer("the openssl command line tool");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=review ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(d, &ca);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(d, &csr);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let store = d.join("rekey.db");
    let keys = d.join("keys.json");
    std::fs::write(
        &keys,
        r#"{"access_token":"name-test-token","token_type":"Bearer"}"#,
    )
    .unwrap();
    let send = |host: &str| {
        let origin = format!("https://{host}:{port}");
        let name = host.replace('.', "-");
        let added = crate::support::rekey_cli(
            &store,
            &[
                "credential",
                "add",
                &name,
                "--token-url",
                "http://127.0.0.1:9/token",
                "--client-id",
                "x",
                "--api-origin",
                &origin,
                "--keys",
                keys.to_str().unwrap(),
            ],
        );
        assert!(added.status.success(), "{added:?}");
        crate::support::rekey_cli_env(
            &store,
            &["send", &name, &format!("{origin}/")],
            &[
                ("SSL_CERT_FILE", d.join("ca.pem").to_str().unwrap()),
                ("SSL_CERT_DIR", "/nonexistent"),
            ],
        )
    };
    let ok = send("127.0.0.1");
    let wrong_name = send("localhost");
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok.status.success(), "{}", crate::support::all_output(&ok));
    let said = crate::support::all_output(&wrong_name);
    assert!(
        !wrong_name.status.success(),
        "a certificate for 127.0.0.1 was accepted for localhost: {said}"
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains("name-test-token"), "{said}");
}
