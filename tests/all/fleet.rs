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
    async fn new(store_url: &str) -> Fleet {
        let provider = Provider::start(ProviderConfig {
            access_ttl: TTL,
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
    let fleet = Fleet::new(store_url).await;
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
    let fleet = Fleet::new(store_url).await;
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
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["keys"]["refresh_token"], "[redacted]");
    assert_eq!(provider.stats().refreshes_granted, 1);
}
