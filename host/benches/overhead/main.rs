//! `cargo bench -p rekey --bench overhead`: what the sandbox costs, measured
//! in one run against the same requests sent natively (issue 5).
//!
//! Everything talks to the loopback provider of `rekey-testkit` (the same
//! server in the same process for both sides, so its bookkeeping cancels out).
//! rekey runs on the engine `Rekey::new` builds from `Config::default()`
//! (only the observer, a no-op, and the cache directory differ); the native
//! side uses a reqwest client with the same options as `host/src/http.rs`
//! and reqwest's own TLS set-up (`native.rs`). rekey reads keys from a `MemoryStore` so the store is not
//! what is measured (extra rows: `SqliteStore`, and a server of the bench's
//! own that takes ~1 ms, like a nearby real API). It prints a table and never
//! fails on timing; it panics only if a request does not do what it should.
//!
//! `REKEY_BENCH_PROFILE=<seconds>` instead loops warm rekey requests for that
//! long and exits, for `perf record`; `REKEY_BENCH_PROFILE=refresh:<seconds>`
//! loops the refresh path.
//!
//! - `sides.rs`: rekey's configuration and the warm request on either side
//! - `native.rs`: the native baseline's client and refresh
//! - `measure.rs`: rotation of the sides, summaries, peak RSS, the machine
//! - `latency.rs`, `throughput.rs`, `startup.rs`, `process.rs`: the measures
//! - `report.rs`: the table and the notes under it

mod latency;
mod measure;
mod native;
mod process;
mod report;
mod sides;
mod startup;
mod throughput;

use rekey::{KeyStore, MemoryStore, Rekey, Settings, TokenSet};
use rekey_testkit::{Provider, ProviderConfig};
use sides::{Caller, REFRESH, WARM, config, default_pool, rekey_refresh};
use startup::ColdStart;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROFILE: &str = "REKEY_BENCH_PROFILE";

fn main() {
    let started = Instant::now();
    let cache = tempfile::tempdir().expect("temp dir");
    let cache_dir = cache.path().join("cache");
    eprintln!(
        "overhead: cold start ({} compiles, {} cached loads)…",
        startup::COMPILES,
        startup::CACHE_LOADS
    );
    let cold = std::env::var_os(PROFILE)
        .is_none()
        .then(|| startup::cold_start(&cache_dir));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let workers = rt.metrics().num_workers();
    // The measuring loops run as runtime tasks, like an application's would.
    rt.block_on(async move {
        tokio::spawn(run(cache_dir, cold, workers))
            .await
            .expect("bench task");
    });
    drop(cache);
    eprintln!("overhead: done in {:.0?}", started.elapsed());
}

async fn run(cache_dir: PathBuf, cold: Option<ColdStart>, workers: usize) {
    let provider = Provider::start(ProviderConfig {
        // The warm token must outlive the run.
        access_ttl: Duration::from_secs(3600),
        rotate_refresh_tokens: true,
        ..ProviderConfig::default()
    })
    .await
    .expect("start the provider");
    let api: Arc<str> = provider.api_url("me").into();

    let client = provider.client();
    let mut settings =
        Settings::new(client.token_url, client.client_id).with_secret(client.client_secret);
    // Any origin, explicitly: the bench's own servers (~1 ms, body sizes)
    // listen on ports chosen at run time.
    settings.api_origins = vec![rekey::origins::ANY.to_owned()];
    let put = |store: &dyn KeyStore, name: &str| {
        let keys = TokenSet::import(&provider.authorize().to_string()).expect("token response");
        store.put(name, &settings, Some(&keys)).expect("put");
    };
    let memory: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    put(&*memory, WARM);
    put(&*memory, REFRESH);
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn KeyStore> =
        Arc::new(rekey::SqliteStore::open(sqlite_dir.path().join("rekey.db")).expect("sqlite"));
    put(&*sqlite, WARM);

    let rekey = Rekey::new(config(Some(default_pool()), Some(&cache_dir))).expect("load rekey");
    let client = native::client();
    let via_rekey = Caller::Rekey {
        rekey: rekey.clone(),
        store: memory.clone(),
    };
    let via_sqlite = Caller::Rekey {
        rekey: rekey.clone(),
        store: sqlite.clone(),
    };
    let native = Caller::Native {
        client: client.clone(),
        token: provider.authorize()["access_token"]
            .as_str()
            .expect("access token")
            .into(),
    };

    if let Ok(spec) = std::env::var(PROFILE) {
        return profile(&spec, &rekey, &memory, &via_rekey, &api).await;
    }
    let cold = cold.expect("cold start measured");
    let load_before = measure::load_average();

    // 1. Warm path, three sides interleaved (order rotates every round).
    eprintln!("overhead: warm path…");
    let [w_rekey, w_native, w_sqlite] =
        latency::warm([&via_rekey, &native, &via_sqlite], &api).await;
    // 1b. The same against a server that takes ~1 ms.
    let near = latency::near([&via_rekey, &native]).await;

    // 1c. An empty and a 1 MiB response: bodies cost no more per byte.
    eprintln!("overhead: response bodies…");
    let bodies = latency::body_sizes([&via_rekey, &native]).await;

    // 2. Refresh path: 401 → refresh → retry.
    eprintln!("overhead: refresh path…");
    let refresh = latency::refresh(&rekey, &memory, &client, &provider, &api).await;

    // 3 + 6. Throughput, and peak RSS at the highest concurrency.
    let throughput = throughput::levels([&via_rekey, &native], &api).await;

    // 4. Instantiation, pooled and on demand.
    eprintln!("overhead: instantiation…");
    let instantiation = startup::instantiation(&cache_dir).await;

    // 7. `rekey send` as a process against curl.
    eprintln!(
        "overhead: `rekey send` process vs curl ({} pairs)…",
        process::PAIRS
    );
    let target = process::Target {
        base_url: provider.base_url(),
        api_url: api.to_string(),
        token_url: provider.token_url(),
        client_id: provider.config().client_id.clone(),
        keys: provider.authorize(),
    };
    let process = tokio::task::spawn_blocking(move || process::measure(&target))
        .await
        .expect("process measure");

    report::print(&report::Results {
        warm: [w_rekey, w_native],
        warm_sqlite: w_sqlite,
        near,
        bodies,
        refresh,
        throughput,
        instantiation,
        process,
        cold,
        pool: default_pool(),
        api_logged: provider.api_log().len(),
        load_before,
        load_after: measure::load_average(),
        workers,
    });
}

/// `REKEY_BENCH_PROFILE`: loops one path for `perf record`, prints its rate.
async fn profile(
    spec: &str,
    rekey: &Rekey,
    store: &Arc<dyn KeyStore>,
    via_rekey: &Caller,
    api: &Arc<str>,
) {
    let (refresh, secs) = match spec.strip_prefix("refresh:") {
        Some(secs) => (true, secs),
        None => (false, spec),
    };
    let run = Duration::from_secs(secs.parse().expect("REKEY_BENCH_PROFILE seconds"));
    eprintln!("overhead: profiling mode, refresh path: {refresh}, for {run:?}");
    if !refresh {
        let rps = throughput::run(via_rekey, api, 1, run).await;
        eprintln!("overhead: {rps:.0} requests/s");
        return;
    }
    let (started, mut done) = (Instant::now(), 0u32);
    while started.elapsed() < run {
        rekey_refresh(rekey, store, api).await;
        done += 1;
    }
    eprintln!(
        "overhead: {:.0} refreshes/s",
        f64::from(done) / run.as_secs_f64()
    );
}
