//! Many workers, one credential. Worker processes (`fleet_worker.rs`)
//! share a credential through a real store, SQLite or PostgreSQL, against a
//! provider with 1-second tokens, refresh-token rotation and reuse detection
//! (a reused refresh token revokes the grant). Bounded in count and time;
//! loopback only.

use crate::support::*;
use rekey::{ClientAuth, Request, Strategy};
use rekey_testkit::{Provider, ProviderConfig};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);
const PROCESSES: usize = 4;
const CONCURRENCY: usize = 16;

/// The fleet runs load the machine; one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    provider: Arc<Provider>,
    store_url: String,
    cache: tempfile::TempDir,
}

impl Fleet {
    async fn new(store_url: &str, ttl: Duration) -> Fleet {
        let provider = Provider::start(ProviderConfig {
            access_ttl: ttl,
            ..ProviderConfig::default()
        })
        .await
        .expect("provider");
        let settings = client_settings(&provider, Strategy::OnAuthFailure, ClientAuth::Basic);
        let keys = first_token_set(&provider);
        let url = store_url.to_owned();
        blocking(move || {
            rekey::store::open(&url)
                .unwrap()
                .put("fleet", &settings, Some(&keys))
                .unwrap()
        })
        .await;
        let fleet = Fleet {
            provider,
            store_url: store_url.into(),
            cache: tempfile::tempdir().unwrap(),
        };
        // Compile the component once; the workers load it from the cache.
        let warm = fleet.worker(&[
            "send",
            &fleet.store_url,
            "fleet",
            "http://127.0.0.1:9/",
            "1",
            "0",
            "1000",
        ]);
        assert!(warm.wait_with_output().unwrap().status.success());
        fleet
    }

    fn worker(&self, args: &[&str]) -> Child {
        crate::fleet_worker::spawn(args, self.cache.path())
    }

    /// Runs the fleet for `duration`; returns (requests, failed). Every
    /// failure must be a retry whose token was refused (checked here).
    async fn run(&self, duration: Duration, lease_ttl: Duration) -> (u64, u64) {
        let api = self.provider.api_url("me");
        let (ms, ttl_ms) = (
            duration.as_millis().to_string(),
            lease_ttl.as_millis().to_string(),
        );
        let children: Vec<Child> = (0..PROCESSES)
            .map(|_| {
                self.worker(&[
                    "send",
                    &self.store_url,
                    "fleet",
                    &api,
                    &CONCURRENCY.to_string(),
                    &ms,
                    &ttl_ms,
                ])
            })
            .collect();
        let outputs = blocking(move || {
            children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect::<Vec<_>>()
        })
        .await;
        let (mut requests, mut failed, mut other, mut errors) = (0, 0, 0, Vec::new());
        for out in outputs {
            assert!(
                out.status.success(),
                "worker failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let report: serde_json::Value = crate::fleet_worker::line_after(&stdout, "REPORT ")
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| panic!("no worker report in: {stdout}"));
            requests += report["requests"].as_u64().unwrap();
            failed += report["failed"].as_u64().unwrap();
            other += report["other_failures"].as_u64().unwrap();
            errors.extend(
                report["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.to_string()),
            );
        }
        assert_eq!(other, 0, "failures other than a refused retry: {errors:?}");
        (requests, failed)
    }

    async fn stored_refresh_token(&self) -> String {
        let url = self.store_url.clone();
        let keys = blocking(move || {
            rekey::store::open(&url)
                .unwrap()
                .load("fleet")
                .unwrap()
                .keys
                .unwrap()
        })
        .await;
        let keys: serde_json::Value = serde_json::from_str(keys.expose()).unwrap();
        str_field(&keys, "refresh_token").to_owned()
    }
}

/// A request fails only when the token of its retry was refused (`run`
/// checks that). The provider says why: a token that expired on its way (a
/// 1-second token on a loaded machine) is scheduling, not a fault; a token it
/// never issued, or of a revoked grant, would be one.
fn only_expired_tokens_failed(failed: u64, stats: &rekey_testkit::Stats) {
    assert_eq!(stats.api_refused_unknown_or_revoked, 0, "{stats:?}");
    assert!(
        failed <= u64::from(stats.api_refused_expired),
        "{failed} failures but only {} expired-token refusals",
        stats.api_refused_expired
    );
}

/// The figures go straight to stderr, past libtest's capture, so a passing
/// run shows them too (CI logs).
pub(crate) fn report(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// 64 concurrent requests from 4 processes across at least 10 expiries.
async fn stress(store_url: &str, label: &str) {
    let _one_at_a_time = HEAVY.lock().await;
    let fleet = Fleet::new(store_url, TTL).await;
    let duration = Duration::from_secs(12);
    let started = Instant::now();
    let (requests, failed) = fleet.run(duration, Duration::from_secs(10)).await;
    let stats = fleet.provider.stats();
    let times = fleet.provider.refresh_times();
    // Each refresh makes a token that lives TTL; a second refresh for the same
    // expiry would follow the first within moments.
    let doubled = times
        .windows(2)
        .filter(|w| w[1] - w[0] < TTL.mul_f64(0.9))
        .count();
    let expiries_hit = times.len() - doubled;
    report(format!(
        "fleet on {label}: {PROCESSES} processes x {CONCURRENCY} concurrent for {:.1} s: requests {requests}, failed {failed} (token expired on its way), \
         token-endpoint calls {}, refreshes {}, invalid_grant {}, reused refresh tokens {}, expiries hit {expiries_hit}, \
         refreshes per expiry {:.2}",
        started.elapsed().as_secs_f64(),
        stats.token_calls,
        stats.refreshes_granted,
        stats.invalid_grant,
        stats.reused_refresh_tokens,
        times.len() as f64 / expiries_hit.max(1) as f64,
    ));
    only_expired_tokens_failed(failed, &stats);
    assert_eq!((stats.invalid_grant, stats.reused_refresh_tokens), (0, 0));
    assert_eq!(
        stats.token_calls as usize,
        times.len(),
        "every token-endpoint call was a granted refresh"
    );
    assert_eq!(doubled, 0, "one token-endpoint call per expiry");
    assert!(
        expiries_hit >= 10,
        "only {expiries_hit} expiries in the run"
    );
    assert!(requests >= 1000, "the fleet sent only {requests} requests");
    assert!(
        fleet
            .provider
            .refresh_token_is_live(&fleet.stored_refresh_token().await)
    );
}

/// A worker dies (SIGKILL) holding the lease: the others wait out its TTL,
/// then refresh once, and nothing is lost.
async fn killed_lease_holder(store_url: &str, label: &str) {
    let _one_at_a_time = HEAVY.lock().await;
    let fleet = Fleet::new(store_url, TTL).await;
    let lease_ttl = Duration::from_secs(3);
    let mut doomed = fleet.worker(&[
        "hold-lease",
        &fleet.store_url,
        "fleet",
        &lease_ttl.as_millis().to_string(),
    ]);
    let mut reader = std::io::BufReader::new(doomed.stdout.as_mut().unwrap());
    let mut line = String::new();
    while line.trim() != "HELD" {
        line.clear();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(n > 0, "the lease holder ended before taking the lease");
    }
    let leased_at = Instant::now();
    doomed.kill().expect("SIGKILL the lease holder");
    doomed.wait().unwrap();

    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let (requests, failed) = fleet.run(Duration::from_secs(5), lease_ttl).await;
    let stats = fleet.provider.stats();
    let times = fleet.provider.refresh_times();
    let first = times
        .first()
        .expect("someone refreshed")
        .duration_since(leased_at);
    report(format!(
        "killed lease holder on {label}: requests {requests}, failed {failed}, refreshes {}, first refresh {:.2} s after the dead worker took the lease (TTL {} s)",
        times.len(),
        first.as_secs_f64(),
        lease_ttl.as_secs()
    ));
    only_expired_tokens_failed(failed, &stats);
    assert!(
        first >= lease_ttl - Duration::from_millis(100),
        "nobody refreshed while the dead worker's lease was live"
    );
    assert_eq!((stats.invalid_grant, stats.reused_refresh_tokens), (0, 0));
    assert!(
        fleet
            .provider
            .refresh_token_is_live(&fleet.stored_refresh_token().await)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    stress(
        &format!("sqlite:{}", dir.path().join("fleet.db").display()),
        "SQLite",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_on_postgres() {
    let Some(pg) = postgres::start() else { return };
    stress(&pg.url, "PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_lease_holder_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    killed_lease_holder(
        &format!("sqlite:{}", dir.path().join("fleet.db").display()),
        "SQLite",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_lease_holder_on_postgres() {
    let Some(pg) = postgres::start() else { return };
    killed_lease_holder(&pg.url, "PostgreSQL").await;
}

/// In one process: 64 concurrent sends hit one expiry; one refresh. (The
/// refreshed token lives a minute, so no second expiry can fall inside the
/// run however slow the machine.)
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_in_one_process_refresh_once() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    f.provider.expire_access_tokens();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (rekey, store, url) = (f.rekey.clone(), f.store_dyn(), f.provider.api_url("me"));
            tokio::spawn(async move { rekey.send(store, "c", Request::get(&url)).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status, 200);
    }
    let stats = f.provider.stats();
    assert_eq!(stats.token_calls, 1);
    assert_eq!(stats.invalid_grant, 0);
}

/// The CLI on a PostgreSQL store: import, send with a refresh, show.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works_on_postgres() {
    let Some(pg) = postgres::start() else { return };
    let provider = Provider::start(ProviderConfig {
        access_ttl: TTL,
        ..ProviderConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("first.json");
    std::fs::write(&keys, provider.authorize().to_string()).unwrap();
    let store = std::path::PathBuf::from(&pg.url);
    let (token_url, api) = (provider.token_url(), provider.api_url("me"));
    let origin = api_origin(&provider);
    let out = blocking(move || {
        let add = rekey_cli(
            &store,
            &[
                "credential",
                "add",
                "pg",
                "--token-url",
                &token_url,
                "--client-id",
                "rekey-demo",
                "--client-secret",
                "demo-client-secret",
                "--strategy",
                "every-request",
                "--api-origin",
                &origin,
                "--keys",
                keys.to_str().unwrap(),
            ],
        );
        assert!(add.status.success(), "{}", all_output(&add));
        let send = rekey_cli(&store, &["send", "pg", &api]);
        (send, rekey_cli(&store, &["credential", "show", "pg"]))
    })
    .await;
    assert!(out.0.status.success(), "{}", all_output(&out.0));
    assert!(String::from_utf8_lossy(&out.0.stdout).contains("\"ok\":true"));
    let shown: serde_json::Value = serde_json::from_slice(&out.1.stdout).unwrap();
    assert_eq!(shown["version"], crate::support::WRITES_PER_REFRESH);
    assert_eq!(shown["keys"]["refresh_token"], "[redacted]");
    assert_eq!(provider.stats().refreshes_granted, 1);
}

// ---- PostgreSQL restarted under the fleet ----

/// Access-token lifetime in the restart scenario: expiries keep coming (each
/// restart happens at one), while a token rarely expires between its mint
/// and its use on a loaded machine; if one does, the provider says so and
/// the verdict allows for it.
const RESTART_TTL: Duration = Duration::from_secs(2);
/// The refresh during which the server is stopped the first time (fast
/// shutdown): after the provider rotated, before the worker could store the
/// new keys.
const STOP_AT_REFRESH: u32 = 2;
/// The workers' lease TTL; their token-endpoint timeout is half of it (30 s,
/// the library's default). A refresh's answer waits while the server stops
/// (inside the provider's hook), and its write is retried for 30 s
/// (`Config::keys_write_retry`, default) while the server is down: outages
/// took 0.4 to 2 s here, and up to 9.5 s with three busy loops on two cores.
const RESTART_LEASE_TTL: Duration = Duration::from_secs(60);
/// How long any awaited event may take before the scenario calls it a hang.
const HANG: Duration = Duration::from_secs(60);
/// Failures a store outage may cause: the store unreachable (a call's first
/// read, a write), or the lease not takeable because of it. Each is safe to
/// retry; none says a refresh token was spent or lost.
const OUTAGE_KINDS: [&str; 4] = [
    "Store(Unusable)",
    "Store(Write)",
    "StoreUnavailable",
    "LeaseUnavailable",
];

/// What one `serve` worker printed so far.
#[derive(Default)]
struct Seen {
    epoch: u64,
    ok: std::collections::BTreeSet<u64>,
    err: std::collections::BTreeSet<u64>,
    save_failed: std::collections::BTreeSet<u64>,
    report: Option<serde_json::Value>,
    /// Its stdout has closed (it exited).
    ended: bool,
    /// It failed a call in a way a store outage does not explain.
    unexpected: bool,
    stderr: String,
}

/// `serve` workers (fleet_worker.rs), steered through their stdin.
struct Steer {
    stdins: std::sync::Mutex<Vec<Option<std::process::ChildStdin>>>,
    seen: Vec<Arc<std::sync::Mutex<Seen>>>,
    marks: std::sync::atomic::AtomicU64,
}

impl Steer {
    /// Takes the workers' pipes; reads their output on threads of its own.
    fn new(children: &mut [Child]) -> Steer {
        use std::io::BufRead;
        let mut stdins = Vec::new();
        let mut seen = Vec::new();
        for child in children.iter_mut() {
            stdins.push(child.stdin.take());
            let s = Arc::new(std::sync::Mutex::new(Seen::default()));
            let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
            let s2 = s.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut s = s2.lock().unwrap();
                    let number = |p: &str| line.strip_prefix(p).and_then(|n| n.parse().ok());
                    if let Some(n) = number("EPOCH ") {
                        s.epoch = n;
                    } else if let Some(n) = number("OK ") {
                        s.ok.insert(n);
                    } else if let Some(n) = number("ERR ") {
                        s.err.insert(n);
                    } else if let Some(n) = number("SAVE-FAILED ") {
                        s.save_failed.insert(n);
                    } else if let Some(r) = line.strip_prefix("REPORT ") {
                        s.report = serde_json::from_str(r).ok();
                    }
                }
                s2.lock().unwrap().ended = true;
            });
            let s2 = s.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut s = s2.lock().unwrap();
                    // "epochs A-B: KIND: message", the first of each kind.
                    let kind = line
                        .strip_prefix("epochs ")
                        .and_then(|l| l.split(": ").nth(1));
                    if kind.is_some_and(|k| !OUTAGE_KINDS.contains(&k)) {
                        s.unexpected = true;
                    }
                    s.stderr.push_str(&line);
                    s.stderr.push('\n');
                }
            });
            seen.push(s);
        }
        Steer {
            stdins: std::sync::Mutex::new(stdins),
            seen,
            marks: Default::default(),
        }
    }

    /// Starts the next epoch in every worker; returns once each has it.
    fn mark(&self) -> u64 {
        use std::io::Write;
        let n = self.marks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        for stdin in self.stdins.lock().unwrap().iter_mut().flatten() {
            stdin.write_all(b"MARK\n").expect("steer a worker");
        }
        self.wait_all(&format!("epoch {n} in force"), |s| s.epoch >= n);
        n
    }

    /// Waits until `done` holds for every worker (a hang guard, not a
    /// verdict: what is awaited must happen).
    fn wait_all(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + HANG;
        loop {
            self.fail_fast(what);
            let mut all = true;
            for (i, s) in self.seen.iter().enumerate() {
                let s = s.lock().unwrap();
                if done(&s) {
                    continue;
                }
                assert!(!s.ended, "worker {i} ended before {what}: {}", s.stderr);
                all = false;
            }
            if all {
                return;
            }
            if Instant::now() >= deadline {
                panic!("waited {HANG:?} for {what}; {}", self.post_mortem());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `done` (a hang guard, as in [`Steer::wait_all`]), failing
    /// early if a worker ends or fails unexpectedly.
    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + HANG;
        while !done() {
            self.fail_fast(what);
            if Instant::now() >= deadline || self.seen.iter().any(|s| s.lock().unwrap().ended) {
                panic!("waited for {what} in vain; {}", self.post_mortem());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `done` holds for one worker.
    fn wait_any(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + HANG;
        while !self.seen.iter().any(|s| done(&s.lock().unwrap())) {
            self.fail_fast(what);
            if Instant::now() >= deadline {
                panic!("waited {HANG:?} for {what}; {}", self.post_mortem());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails at once when a worker failed a call in a way a store outage
    /// does not explain (nothing awaited may come then).
    fn fail_fast(&self, what: &str) {
        if self.seen.iter().any(|s| s.lock().unwrap().unexpected) {
            panic!(
                "a failure other than a store outage's, while waiting for {what}; {}",
                self.post_mortem()
            );
        }
    }

    /// For a hang: stops the workers and says what each saw.
    fn post_mortem(&self) -> String {
        self.finish();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.seen.iter().any(|s| !s.lock().unwrap().ended) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut out = String::new();
        for (i, s) in self.seen.iter().enumerate() {
            let s = s.lock().unwrap();
            out += &format!(
                "\nworker {i}: epoch {}, ok in {:?}, err in {:?}, report {:?}, stderr {}",
                s.epoch, s.ok, s.err, s.report, s.stderr
            );
        }
        out
    }

    /// Closes every worker's stdin: each finishes its calls and reports.
    fn finish(&self) {
        for stdin in self.stdins.lock().unwrap().iter_mut() {
            stdin.take();
        }
    }
}

/// Sums the workers' failures, by "<epoch begun>-<epoch ended>" and kind.
fn merge_failures(
    reports: &[serde_json::Value],
) -> std::collections::BTreeMap<(u64, u64), std::collections::BTreeMap<String, u64>> {
    let mut all: std::collections::BTreeMap<_, std::collections::BTreeMap<String, u64>> =
        Default::default();
    for r in reports {
        for (span, kinds) in r["failures"].as_object().unwrap() {
            let (began, ended) = span.split_once('-').unwrap();
            let key = (began.parse().unwrap(), ended.parse().unwrap());
            for (kind, n) in kinds.as_object().unwrap() {
                *all.entry(key).or_default().entry(kind.clone()).or_default() +=
                    n.as_u64().unwrap();
            }
        }
    }
    all
}

/// 4 worker processes x 16 concurrent calls on one credential in
/// PostgreSQL, and the server restarts twice under them, each time inside a
/// refresh: the provider has rotated the refresh token, and its answer leaves
/// only once the server is down, so that worker's write of the new keys meets
/// a dead connection, then no server, and is retried until it lands. The
/// refresh is for an expired access token, shared by every worker: all of
/// them need the new keys while the store is down. Restart 1 stops the
/// server with a fast shutdown (at refresh #2), restart 2 with an immediate
/// one (crash recovery at start; at the first refresh after every worker
/// recovered from restart 1).
///
/// Each step waits for an event, never for time: the stops happen in the
/// provider's hook; the workers' epochs (`MARK`, see fleet_worker.rs) tell
/// calls begun before a stop, while the server stopped, while it was down,
/// and after it was back; the server starts again once a call begun in the
/// outage failed and the refreshed keys' write failed, and the scenario moves
/// on only once every worker saw a call begun after the restart succeed
/// (recovery, in the same process).
///
/// Verdict: the same processes finish and report; failures only of the kinds
/// a store outage explains ([`OUTAGE_KINDS`]), none before the first stop and
/// none among the calls begun and ended while the server was back; 0
/// `invalid_grant`, 0 reused refresh tokens, every token-endpoint call a
/// granted refresh, a refused retry only for a token the provider says
/// expired; the store ends with a live grant and no refresh in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_on_postgres_survives_server_restarts() {
    let Some(pg) = postgres::start() else { return };
    let _one_at_a_time = HEAVY.lock().await;
    let pg = Arc::new(pg);
    let fleet = Fleet::new(&pg.url, RESTART_TTL).await;
    let started = Instant::now();
    let api = fleet.provider.api_url("me");
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            fleet.worker(&[
                "serve",
                &fleet.store_url,
                "fleet",
                &api,
                &CONCURRENCY.to_string(),
                &RESTART_LEASE_TTL.as_millis().to_string(),
            ])
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let steer = Arc::new(Steer::new(&mut children));

    // Each stop happens inside a refresh, after the provider rotated and
    // before its answer leaves: armed for refresh #STOP_AT_REFRESH first,
    // then for the first refresh after the fleet recovered from restart 1.
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stop_at = Arc::new(std::sync::atomic::AtomicU32::new(STOP_AT_REFRESH));
    let stops = Arc::new(std::sync::Mutex::new(Vec::<(u32, Instant)>::new()));
    {
        let (steer, pg, armed, stop_at, stops) = (
            steer.clone(),
            pg.clone(),
            armed.clone(),
            stop_at.clone(),
            stops.clone(),
        );
        fleet.provider.before_refresh_answer(move |n| {
            use std::sync::atomic::Ordering::SeqCst;
            if !(armed.load(SeqCst) && n >= stop_at.load(SeqCst) && armed.swap(false, SeqCst)) {
                return;
            }
            let first = stops.lock().unwrap().is_empty();
            steer.mark(); // stopping
            let at = Instant::now();
            if first {
                pg.stop();
            } else {
                pg.stop_immediately();
            }
            steer.mark(); // down
            stops.lock().unwrap().push((n, at));
        });
    }
    let provider = fleet.provider.clone();
    let (steer2, pg2, stops2) = (steer.clone(), pg.clone(), stops.clone());
    let outages = blocking(move || {
        use std::sync::atomic::Ordering::SeqCst;
        let (steer, pg, stops) = (steer2, pg2, stops2);
        let mut outages = Vec::new();
        for restart in 1..=2u64 {
            steer.wait_until(&format!("stop {restart} inside a refresh"), || {
                stops.lock().unwrap().len() as u64 >= restart
            });
            // The server is down: a call begun now fails (one worker's is
            // evidence enough: the tasks of the worker whose write waits
            // begin no call until it lands), and the write of the refresh
            // in whose answer the stop happened fails (the host retries it).
            let down = 3 * restart - 1;
            steer.wait_any("a call begun while the server was down failing", |s| {
                s.err.contains(&down)
            });
            steer.wait_any("the refreshed keys' write failing", |s| {
                s.save_failed.contains(&down)
            });
            pg.start_again();
            let (refresh, at) = stops.lock().unwrap()[restart as usize - 1];
            outages.push((refresh, at.elapsed()));
            let up = steer.mark();
            assert_eq!(up, 3 * restart);
            // Every worker recovers: a call it began after the restart
            // succeeded (the tokens had expired, so through a refresh).
            steer.wait_all("a call begun after the restart succeeding", |s| {
                s.ok.contains(&up)
            });
            if restart == 1 {
                stop_at.store(provider.stats().refreshes_granted + 1, SeqCst);
                armed.store(true, SeqCst);
            }
        }
        // One more expiry, refreshed as usual, then the workers stop.
        let after = provider.stats().refreshes_granted;
        steer.wait_until("a refresh after the last restart", || {
            provider.stats().refreshes_granted > after
        });
        steer.finish();
        outages
    })
    .await;

    let outputs = blocking(move || {
        children
            .into_iter()
            .map(|mut c| c.wait().unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    let mut reports = Vec::new();
    for (i, status) in outputs.iter().enumerate() {
        // The readers have seen stdout close once the process is gone.
        steer.wait_all("end of output", |s| s.ended);
        let seen = steer.seen[i].lock().unwrap();
        assert!(status.success(), "worker {i} failed: {}", seen.stderr);
        let report = seen
            .report
            .clone()
            .unwrap_or_else(|| panic!("worker {i} did not report: {}", seen.stderr));
        assert_eq!(
            report["pid"].as_u64(),
            Some(u64::from(pids[i])),
            "the worker that reports is the one started"
        );
        reports.push(report);
    }
    let sum = |field: &str| -> u64 { reports.iter().map(|r| r[field].as_u64().unwrap()).sum() };
    let (requests, ok, refused) = (sum("requests"), sum("ok"), sum("refused_retries"));
    let failures = merge_failures(&reports);
    let stats = fleet.provider.stats();
    let stored = {
        let url = fleet.store_url.clone();
        blocking(move || rekey::store::open(&url).unwrap().load("fleet").unwrap()).await
    };
    let label = |epoch: u64| match epoch {
        0 => "before",
        1 | 4 => "stopping",
        2 | 5 => "down",
        _ => "back",
    };
    let around = |restart: u64| {
        let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
        for ((_, ended), by_kind) in &failures {
            if (3 * restart - 2..=3 * restart).contains(ended) {
                for (k, n) in by_kind {
                    *kinds.entry(k.as_str()).or_default() += n;
                }
            }
        }
        kinds
    };
    let examples: Vec<String> = reports
        .iter()
        .flat_map(|r| r["examples"].as_object().unwrap().clone())
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    report(format!(
        "fleet on PostgreSQL, restarted twice: {PROCESSES} processes x {CONCURRENCY} concurrent for {:.1} s, {RESTART_TTL:?} tokens: \
         requests {requests}, ok {ok}, refused retries {refused} (token expired on its way); \
         restart 1 (fast shutdown inside refresh #{}) down {:.2} s, failed calls {:?}; \
         restart 2 (immediate shutdown inside refresh #{}) down {:.2} s, failed calls {:?}; \
         failed keys writes {} (all retried until they landed); token-endpoint calls {}, refreshes {}, invalid_grant {}, reused refresh tokens {}; \
         the same {} processes finished",
        started.elapsed().as_secs_f64(),
        outages[0].0,
        outages[0].1.as_secs_f64(),
        around(1),
        outages[1].0,
        outages[1].1.as_secs_f64(),
        around(2),
        sum("failed_saves"),
        stats.token_calls,
        stats.refreshes_granted,
        stats.invalid_grant,
        stats.reused_refresh_tokens,
        pids.len(),
    ));
    for ((began, ended), kinds) in &failures {
        let span = format!(
            "calls begun {} and ended {} (epochs {began}-{ended})",
            label(*began),
            label(*ended)
        );
        assert!(
            kinds.keys().all(|k| OUTAGE_KINDS.contains(&k.as_str())),
            "{span}: failures of other kinds than a store outage's: {kinds:?}; {examples:?}"
        );
        assert!(
            *ended != 0,
            "{span}: failed before any restart: {kinds:?}; {examples:?}"
        );
        assert!(
            !(began == ended && matches!(ended, 3 | 6)),
            "{span}: failed while the server was up: {kinds:?}; {examples:?}"
        );
    }
    only_expired_tokens_failed(refused, &stats);
    assert_eq!((stats.invalid_grant, stats.reused_refresh_tokens), (0, 0));
    assert_eq!(
        stats.token_calls, stats.refreshes_granted,
        "every token-endpoint call was a granted refresh"
    );
    assert!(
        !stored.refresh_in_doubt() && stored.needs_authorization.is_none(),
        "{stored:?}"
    );
    assert!(
        fleet
            .provider
            .refresh_token_is_live(&fleet.stored_refresh_token().await),
        "the store ends with a live grant"
    );
}
