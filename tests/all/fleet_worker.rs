//! One worker process of a fleet, for `fleet.rs`: this test binary started
//! again ([`spawn`]) with the worker's arguments in `REKEY_FLEET_WORKER`
//! (separated by newlines), running only the ignored test below.
//!
//! `send STORE_URL CREDENTIAL API_URL CONCURRENCY DURATION_MS LEASE_TTL_MS`
//!   runs CONCURRENCY tasks sending through one `Rekey` until DURATION_MS has
//!   passed; prints `REPORT {"requests":N,"failed":F,"errors":[...]}`.
//! `hold-lease STORE_URL CREDENTIAL LEASE_TTL_MS`
//!   takes the credential's refresh lease through the store, prints `HELD`,
//!   and sleeps until killed.

use rekey::{Config, Rekey, Request};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Starts a worker process with these arguments; stdout and stderr piped.
pub fn spawn(args: &[&str], cache_dir: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--ignored", "--exact", "fleet_worker::worker_process"])
        .args(["--nocapture", "--test-threads=1", "-q"])
        .env("REKEY_FLEET_WORKER", args.join("\n"))
        .env("REKEY_CACHE_DIR", cache_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker")
}

/// The line a worker prints with `prefix`, from its whole stdout.
pub fn line_after<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(prefix))
}

/// Not a check: the entry point of a worker process (ignored, so a normal
/// run skips it; [`spawn`] runs it with `--ignored`).
#[test]
#[ignore = "a fleet worker process, started by fleet.rs"]
fn worker_process() {
    let Ok(spec) = std::env::var("REKEY_FLEET_WORKER") else {
        return;
    };
    let args: Vec<String> = spec.split('\n').map(str::to_owned).collect();
    let arg = |i: usize| {
        args.get(i)
            .unwrap_or_else(|| panic!("missing argument {i}: see the usage at the top"))
    };
    let ms = |i: usize| Duration::from_millis(arg(i).parse().expect("milliseconds"));
    match arg(0).as_str() {
        "send" => send(
            arg(1),
            arg(2),
            arg(3),
            arg(4).parse().expect("concurrency"),
            ms(5),
            ms(6),
        ),
        "hold-lease" => hold_lease(arg(1), arg(2), ms(3)),
        other => panic!("unknown mode {other}"),
    }
}

fn hold_lease(store_url: &str, credential: &str, ttl: Duration) {
    let store = rekey::store::open(store_url).expect("open the store");
    let holder = format!("doomed-{}", std::process::id());
    assert!(
        store
            .try_lease(credential, &holder, ttl)
            .expect("try_lease"),
        "lease was not free"
    );
    println!("HELD");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn send(
    store_url: &str,
    credential: &str,
    api: &str,
    concurrency: usize,
    duration: Duration,
    lease_ttl: Duration,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rekey::store::open(store_url).expect("open the store");
    let config = Config {
        lease_ttl,
        // The lease must outlast one token-endpoint attempt.
        http: rekey::HttpConfig {
            total_timeout: lease_ttl / 2,
            ..Default::default()
        },
        pooling: Some(concurrency as u32),
        cache_dir: std::env::var_os("REKEY_CACHE_DIR").map(Into::into),
        ..Config::default()
    };
    let rekey = Rekey::new(config).expect("load the component");
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + duration;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let (rekey, store, requests, errors) = (
                    rekey.clone(),
                    store.clone(),
                    requests.clone(),
                    errors.clone(),
                );
                let (credential, api) = (credential.to_owned(), api.to_owned());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        requests.fetch_add(1, Ordering::Relaxed);
                        match rekey
                            .send(store.clone(), &credential, Request::get(&api))
                            .await
                        {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => errors.lock().unwrap().push(format!("status {}", r.status)),
                            Err(e) => errors.lock().unwrap().push(e.to_string()),
                        }
                        // Staggered pacing: the tasks do not move in lockstep.
                        tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 7) % 40)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("worker task");
        }
    });
    let errors = errors.lock().unwrap();
    // A retry's token that expired on its way is told apart from every other
    // failure (fleet.rs checks the provider's view of those).
    let other: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("freshly refreshed token"))
        .collect();
    let report = serde_json::json!({
        "requests": requests.load(Ordering::Relaxed),
        "failed": errors.len(),
        "errors": other.iter().take(5).collect::<Vec<_>>(),
        "other_failures": other.len(),
    });
    println!("REPORT {report}");
}
