//! One worker process of a fleet, for `fleet.rs`: this test binary started
//! again ([`spawn`]) with the worker's arguments in `REKEY_FLEET_WORKER`
//! (separated by newlines), running only the ignored test below.
//!
//! `send STORE_URL CREDENTIAL API_URL CONCURRENCY DURATION_MS LEASE_TTL_MS`
//!   runs CONCURRENCY tasks sending through one `Rekey` until DURATION_MS has
//!   passed; prints `REPORT {"requests":N,"failed":F,"errors":[...]}`.
//! `serve STORE_URL CREDENTIAL API_URL CONCURRENCY LEASE_TTL_MS`
//!   as `send`, but until stdin closes, and steered through it: each line
//!   `MARK` starts the next epoch (1, 2, …; printed back as `EPOCH <n>` once
//!   in force). The first call begun in the current epoch that fails (other
//!   than a refused retry) prints `ERR <n>`, the first that succeeds `OK <n>`.
//!   The first failed write of refreshed keys (`write_record`) in an epoch
//!   prints `SAVE-FAILED <n>` (the host retries it). The first failure of
//!   each kind in each span is told on stderr as `epochs A-B: KIND: message`.
//!   Ends with `REPORT {"pid":…,"requests":N,"ok":N,"refused_retries":N,
//!   "failed_saves":N,
//!   "failures":{"<epoch it began in>-<epoch it ended in>":{"<kind>":N}},
//!   "examples":{"<kind>":"<message>"}}`; a kind is the error's variant, e.g.
//!   `Store(Unusable)` or `LeaseUnavailable`.
//! `hold-lease STORE_URL CREDENTIAL LEASE_TTL_MS`
//!   takes the credential's refresh lease through the store, prints `HELD`,
//!   and sleeps until killed.

use rekey::{Config, Credential, KeyStore, Record, Rekey, Request, Settings, StoreError, TokenSet};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts a worker process with these arguments; stdin, stdout and stderr
/// piped.
pub fn spawn(args: &[&str], cache_dir: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--ignored", "--exact", "fleet_worker::worker_process"])
        .args(["--nocapture", "--test-threads=1", "-q"])
        .env("REKEY_FLEET_WORKER", args.join("\n"))
        .env("REKEY_CACHE_DIR", cache_dir)
        .stdin(Stdio::piped())
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
        "serve" => serve(
            arg(1),
            arg(2),
            arg(3),
            arg(4).parse().expect("concurrency"),
            ms(5),
        ),
        "hold-lease" => hold_lease(arg(1), arg(2), ms(3)),
        other => panic!("unknown mode {other}"),
    }
}

/// Takes the lease as the component does (a worker that dies right after
/// taking it leaves exactly this record behind).
fn hold_lease(store_url: &str, credential: &str, ttl: Duration) {
    let store = rekey::store::open(store_url).expect("open the store");
    let c = store.load(credential).expect("load");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        c.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms),
        "lease was not free"
    );
    let record = rekey::Record {
        lease: Some(rekey::Lease {
            holder: format!("doomed-{}", std::process::id()),
            until_ms: now_ms + ttl.as_millis() as u64,
        }),
        ..c.record()
    };
    store
        .write_record(credential, c.version, &record)
        .expect("take the lease");
    println!("HELD");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A worker's one `Rekey`.
fn worker_rekey(concurrency: usize, lease_ttl: Duration) -> Rekey {
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
    Rekey::new(config).expect("load the component")
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
    let rekey = worker_rekey(concurrency, lease_ttl);
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

/// A failure's kind: the error's variant (the store error's too).
fn kind(e: &rekey::Error) -> String {
    let variant = |debug: String| {
        debug
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    match e {
        rekey::Error::Store(s) => format!("Store({})", variant(format!("{s:?}"))),
        other => variant(format!("{other:?}")),
    }
}

/// What a `serve` worker saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    refused_retries: u64,
    /// By "<epoch begun in>-<epoch ended in>", then by kind.
    failures: BTreeMap<String, BTreeMap<String, u64>>,
    examples: BTreeMap<String, String>,
    /// The last epoch for which `OK` / `ERR` was printed.
    said_ok: u64,
    said_err: u64,
}

/// How one call of a `serve` worker ended.
enum Outcome {
    Ok,
    /// The API refused the token of the retry.
    RefusedRetry,
    /// Anything else: its kind and message.
    Failed(String, String),
}

impl Tally {
    /// One call's outcome; it began in epoch `began` and ended in `now`.
    fn record(&mut self, outcome: Outcome, began: u64, now: u64) {
        self.requests += 1;
        match outcome {
            Outcome::RefusedRetry => self.refused_retries += 1,
            Outcome::Ok => {
                self.ok += 1;
                if began == now && self.said_ok < now {
                    self.said_ok = now;
                    println!("OK {now}");
                }
            }
            Outcome::Failed(kind, message) => {
                *self
                    .failures
                    .entry(format!("{began}-{now}"))
                    .or_default()
                    .entry(kind.clone())
                    .or_default() += 1;
                // The first of each kind in each span, as it happens.
                if *self.failures[&format!("{began}-{now}")]
                    .get(&kind)
                    .unwrap_or(&0)
                    == 1
                {
                    eprintln!("epochs {began}-{now}: {kind}: {message}");
                }
                self.examples.entry(kind).or_insert(message);
                if began == now && self.said_err < now {
                    self.said_err = now;
                    println!("ERR {now}");
                }
            }
        }
    }
}

fn serve(store_url: &str, credential: &str, api: &str, concurrency: usize, lease_ttl: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let epoch = Arc::new(AtomicU64::new(0));
    let store = Arc::new(SavesWatched {
        inner: rekey::store::open(store_url).expect("open the store"),
        epoch: epoch.clone(),
        failed: AtomicU64::new(0),
        said: AtomicU64::new(0),
    });
    let rekey = worker_rekey(concurrency, lease_ttl);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    {
        let (epoch, stop) = (epoch.clone(), stop.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line.as_deref().map(str::trim) {
                    Ok("MARK") => {
                        let n = epoch.fetch_add(1, Ordering::SeqCst) + 1;
                        println!("EPOCH {n}");
                    }
                    Ok(other) => panic!("unknown command {other:?}"),
                    Err(_) => break,
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    runtime.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let (rekey, store, epoch, stop, tally) = (
                    rekey.clone(),
                    store.clone() as Arc<dyn KeyStore>,
                    epoch.clone(),
                    stop.clone(),
                    tally.clone(),
                );
                let (credential, api) = (credential.to_owned(), api.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let began = epoch.load(Ordering::SeqCst);
                        let result = rekey
                            .send(store.clone(), &credential, Request::get(&api))
                            .await;
                        let now = epoch.load(Ordering::SeqCst);
                        let outcome = match result {
                            Ok(r) if r.status == 200 => Outcome::Ok,
                            Ok(r) => Outcome::Failed(format!("status {}", r.status), String::new()),
                            // A retry's token refused: fleet.rs checks the
                            // provider's reasons for those.
                            Err(rekey::Error::RejectedAfterRefresh(_)) => Outcome::RefusedRetry,
                            Err(e) => Outcome::Failed(kind(&e), e.to_string()),
                        };
                        tally.lock().unwrap().record(outcome, began, now);
                        continue_pacing(i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("worker task");
        }
    });
    let t = tally.lock().unwrap();
    let report = serde_json::json!({
        "pid": std::process::id(),
        "requests": t.requests,
        "ok": t.ok,
        "refused_retries": t.refused_retries,
        "failed_saves": store.failed.load(Ordering::SeqCst),
        "failures": t.failures,
        "examples": t.examples,
    });
    println!("REPORT {report}");
}

/// Staggered pacing between one task's calls: the tasks do not move in
/// lockstep.
async fn continue_pacing(task: usize) {
    tokio::time::sleep(Duration::from_millis(20 + (task as u64 * 7) % 40)).await;
}

/// A `serve` worker's store, passed through; failed writes of refreshed
/// keys are counted, and the first in each epoch is announced.
struct SavesWatched {
    inner: Arc<dyn KeyStore>,
    epoch: Arc<AtomicU64>,
    failed: AtomicU64,
    /// The last epoch announced.
    said: AtomicU64,
}

impl KeyStore for SavesWatched {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        self.inner.load(name)
    }
    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64, StoreError> {
        let saved = self.inner.write_record(name, expected, record);
        // The write that ends a refresh: the keys, no lease, no mark.
        let ends_refresh = record.lease.is_none() && record.refresh_mark.is_none();
        if ends_refresh && saved.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let now = self.epoch.load(Ordering::SeqCst);
            if self.said.fetch_max(now, Ordering::SeqCst) < now {
                println!("SAVE-FAILED {now}");
            }
        }
        saved
    }
    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        self.inner.put(name, settings, keys)
    }
    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.remove(name)
    }
    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), StoreError> {
        self.inner.clear_refresh_in_doubt(name)
    }
    fn blocking(&self) -> bool {
        self.inner.blocking()
    }
}
