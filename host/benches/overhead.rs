//! `cargo bench -p rekey --bench overhead`: what the sandbox costs, measured
//! in one run against the same requests sent natively (issue 5).
//!
//! Everything talks to the loopback provider of `rekey-testkit` (the same
//! server in the same process for both sides, so its bookkeeping cancels out),
//! both sides use one reqwest client built like `host/src/http.rs` builds its
//! own, and rekey reads keys from a `MemoryStore` so the store is not what is
//! measured (extra rows: `SqliteStore`, and a server of the bench's own that
//! takes ~1 ms, like a nearby real API). It prints a table and never
//! fails on timing; it panics only if a request does not do what it should.
//!
//! `REKEY_BENCH_PROFILE=<seconds>` instead loops warm rekey requests for that
//! long and exits, for `perf record`; `REKEY_BENCH_PROFILE=refresh:<seconds>`
//! loops the refresh path.

use rekey::cache::Origin;
use rekey::observe::{Event, Observer};
use rekey::{Config, KeyStore, MemoryStore, Rekey, Request, Settings, TokenSet};
use rekey_testkit::{Provider, ProviderConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency runs alternate rekey and native in rounds, so drift (other load
/// on the machine, frequency changes) hits both sides alike.
const WARM_ROUNDS: usize = 20;
const WARM_PER_ROUND: usize = 500;
const NEAR_ROUNDS: usize = 10;
const NEAR_PER_ROUND: usize = 100;
const REFRESH_ROUNDS: usize = 20;
const REFRESH_PER_ROUND: usize = 100;
/// Throughput: per concurrency level, two timed runs per side, alternating.
const CONCURRENCY: [usize; 3] = [1, 8, 64];
const THROUGHPUT_RUN: Duration = Duration::from_millis(1500);
const THROUGHPUT_WARMUP: Duration = Duration::from_millis(300);
const INSTANTIATIONS: usize = 20_000;
const COMPILES: usize = 3;
const CACHE_LOADS: usize = 20;

const WARM_RATIO_TARGET: f64 = 1.10;
const INSTANTIATE_TARGET_US: f64 = 10.0;
const PRECOMPILED_TARGET_MS: f64 = 2.0;
const COMPONENT_TARGET_BYTES: usize = 150_000;

/// Events cost nothing here: the native side logs nothing either.
struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

fn config(pooling: Option<u32>, cache_dir: Option<&Path>) -> Config {
    Config {
        observer: Arc::new(Quiet),
        pooling,
        cache_dir: cache_dir.map(Path::to_path_buf),
        ..Config::default()
    }
}

/// The native baseline's client: what `HttpClient::new` builds (no
/// redirects, the same timeouts, rustls with ring).
fn native_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = rekey::HttpConfig::default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(http.connect_timeout)
        .timeout(http.total_timeout)
        .build()
        .expect("build the native client")
}

/// One side of a comparison, sending the warm request (valid token, 200).
#[derive(Clone)]
enum Caller {
    Rekey {
        rekey: Rekey,
        store: Arc<dyn KeyStore>,
        name: &'static str,
    },
    Native {
        client: reqwest::Client,
        token: Arc<str>,
    },
}

impl Caller {
    async fn warm(&self, url: &str) {
        let status = match self {
            Caller::Rekey { rekey, store, name } => {
                let resp = rekey
                    .send(store.clone(), name, Request::get(url))
                    .await
                    .expect("rekey warm request");
                resp.status
            }
            Caller::Native { client, token } => {
                let resp = client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("native warm request");
                let status = resp.status().as_u16();
                resp.bytes().await.expect("native warm body");
                status
            }
        };
        assert_eq!(status, 200, "warm request was not accepted");
    }
}

/// The three exchanges rekey does on a rejected token, written the way an
/// application would: 401, refresh (client_secret_basic, like rekey's
/// default), parse, retry. Keeps the rotated refresh token.
async fn native_refresh(
    client: &reqwest::Client,
    provider: &Provider,
    api: &str,
    refresh_token: &mut String,
) {
    let resp = client
        .get(api)
        .bearer_auth("expired")
        .send()
        .await
        .expect("native first request");
    assert_eq!(resp.status().as_u16(), 401, "expired token was accepted");
    resp.bytes().await.expect("native 401 body");

    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token)
        .finish();
    let cfg = provider.config();
    let resp = client
        .post(provider.token_url())
        .basic_auth(&cfg.client_id, Some(&cfg.client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form)
        .send()
        .await
        .expect("native token request");
    assert_eq!(resp.status().as_u16(), 200, "native refresh refused");
    let body = resp.bytes().await.expect("native token body");
    let tokens: serde_json::Value = serde_json::from_slice(&body).expect("token JSON");
    if let Some(rotated) = tokens["refresh_token"].as_str() {
        *refresh_token = rotated.to_owned();
    }
    let access = tokens["access_token"].as_str().expect("access_token");

    let resp = client
        .get(api)
        .bearer_auth(access)
        .send()
        .await
        .expect("native retry");
    assert_eq!(resp.status().as_u16(), 200, "native retry rejected");
    resp.bytes().await.expect("native retry body");
}

/// Rejected access token, currently valid (latest rotated) refresh token.
fn expire_access_token(store: &dyn KeyStore, name: &str) {
    let keys = store.load(name).expect("credential").keys.expect("keys");
    let keys: serde_json::Value = serde_json::from_str(keys.expose()).expect("keys JSON");
    let refresh = keys["refresh_token"].as_str().expect("refresh token");
    let reset = serde_json::json!({ "access_token": "expired", "refresh_token": refresh });
    store
        .save_keys(name, &TokenSet::stored(reset.to_string()), None)
        .expect("reset keys");
}

#[derive(Clone, Copy)]
struct Summary {
    n: usize,
    mean: f64,
    median: f64,
    p99: f64,
}

/// In microseconds.
fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = samples.len();
    Summary {
        n,
        mean: samples.iter().map(|d| us(*d)).sum::<f64>() / n as f64,
        median: us(samples[n / 2]),
        p99: us(samples[(n * 99 / 100).min(n - 1)]),
    }
}

fn verdict(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        "met".into()
    } else {
        format!("missed by {:.2}{unit}", value - target)
    }
}

/// Resets the peak-RSS mark to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `/proc/self/status` field in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn row(&mut self, cells: [&str; 6]) {
        self.rows.push(cells.map(str::to_owned));
    }

    /// A Markdown table, padded so it also reads as plain text.
    fn print(&self) {
        let header = [
            "measure",
            "rekey",
            "native",
            "rekey/native",
            "target",
            "verdict",
        ];
        let mut width = header.map(str::len);
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String; 6]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(&header.map(str::to_owned));
        line(&width.map(|w| "-".repeat(w)));
        for r in &self.rows {
            line(r);
        }
    }
}

fn latency_rows(table: &mut Table, what: &str, rekey: Summary, native: Summary) {
    for (stat, r, n) in [
        ("median", rekey.median, native.median),
        ("mean", rekey.mean, native.mean),
    ] {
        let ratio = r / n;
        table.row([
            &format!("{what}, {stat} µs"),
            &format!("{r:.1}"),
            &format!("{n:.1}"),
            &format!("{ratio:.2}"),
            &format!("≤ {WARM_RATIO_TARGET:.2}"),
            &verdict(ratio, WARM_RATIO_TARGET, ""),
        ]);
    }
    table.row([
        &format!("{what}, p99 µs"),
        &format!("{:.1}", rekey.p99),
        &format!("{:.1}", native.p99),
        &format!("{:.2}", rekey.p99 / native.p99),
        "",
        "",
    ]);
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    summarize(samples).median / 1000.0
}

/// `Rekey::new` compiling vs loading native code compiled earlier. Runs
/// before anything else so nothing competes for the two cores.
struct ColdStart {
    compile_ms: f64,
    load_ms: f64,
    load_min_ms: f64,
    engine_ms: f64,
    http_client_ms: f64,
    deserialize_ms: Option<f64>,
}

fn cold_start(cache: &Path) -> ColdStart {
    let mut compiles: Vec<Duration> = (0..COMPILES)
        .map(|_| {
            let t = Instant::now();
            let r = Rekey::new(config(Some(128), None)).expect("compile the component");
            let e = t.elapsed();
            assert_eq!(r.origin(), Origin::Compiled);
            e
        })
        .collect();
    let first = Rekey::new(config(Some(128), Some(cache))).expect("compile and cache");
    assert_eq!(first.origin(), Origin::CompiledAndCached);
    drop(first);
    let mut loads: Vec<Duration> = (0..CACHE_LOADS)
        .map(|_| {
            let t = Instant::now();
            let r = Rekey::new(config(Some(128), Some(cache))).expect("load from cache");
            let e = t.elapsed();
            assert_eq!(r.origin(), Origin::LoadedFromCache, "not a cache hit");
            e
        })
        .collect();

    // Pieces of the precompiled load, rebuilt here as runtime.rs builds them.
    let mut engine_t = Vec::new();
    let mut client_t = Vec::new();
    let mut deser_t = Vec::new();
    let cwasm = std::fs::read_dir(cache)
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"));
    for _ in 0..CACHE_LOADS {
        let t = Instant::now();
        let engine = pooled_engine();
        engine_t.push(t.elapsed());
        let t = Instant::now();
        drop(native_client());
        client_t.push(t.elapsed());
        if let Some(path) = &cwasm {
            let t = Instant::now();
            // SAFETY: written by this process's `Rekey` a moment ago, for an
            // engine configured like this one; wasmtime checks its header.
            let loaded = unsafe { wasmtime::component::Component::deserialize_file(&engine, path) };
            if loaded.is_ok() {
                deser_t.push(t.elapsed());
            }
        }
    }
    ColdStart {
        compile_ms: median_ms(&mut compiles),
        load_ms: median_ms(&mut loads),
        load_min_ms: loads[0].as_secs_f64() * 1e3,
        engine_ms: median_ms(&mut engine_t),
        http_client_ms: median_ms(&mut client_t),
        deserialize_ms: (!deser_t.is_empty()).then(|| median_ms(&mut deser_t)),
    }
}

/// The engine `Rekey::new` makes with the default config (pooling, 128 slots).
fn pooled_engine() -> wasmtime::Engine {
    wasmtime::Engine::new(&rekey::engine_config(&Config::default())).expect("engine")
}

async fn instantiations(rekey: &Rekey, n: usize) -> Summary {
    for _ in 0..n / 10 {
        rekey.instantiate_only().await.expect("instantiate");
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        rekey.instantiate_only().await.expect("instantiate");
        samples.push(t.elapsed());
    }
    summarize(&mut samples)
}

/// `GET /me` answering 200 after ~1 ms; it checks no token.
async fn slow_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the slow server");
    let addr = listener.local_addr().expect("slow server address");
    let app = axum::Router::new().route(
        "/me",
        axum::routing::get(|| async {
            // A blocking-thread sleep: tokio's timer would round the delay
            // up to a millisecond tick and add phase noise to both sides.
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1))).await;
            r#"{"ok":true}"#
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/me")
}

/// Requests completed by `concurrency` tasks looping until `run` has passed.
async fn throughput(caller: &Caller, url: &Arc<str>, concurrency: usize, run: Duration) -> f64 {
    let started = Instant::now();
    let deadline = started + run;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let caller = caller.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    caller.warm(&url).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("throughput task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Peak RSS over a run, from a high-water mark reset just before it.
struct Rss {
    before_kib: u64,
    peak_kib: u64,
}

async fn throughput_with_rss(
    caller: &Caller,
    url: &Arc<str>,
    concurrency: usize,
) -> (f64, Option<Rss>) {
    let reset = reset_peak_rss();
    let before = proc_status_kib("VmRSS:");
    let rps = throughput(caller, url, concurrency, THROUGHPUT_RUN).await;
    let peak = proc_status_kib("VmHWM:");
    let rss = match (reset, before, peak) {
        (true, Some(before_kib), Some(peak_kib)) => Some(Rss {
            before_kib,
            peak_kib,
        }),
        _ => None,
    };
    (rps, rss)
}

fn main() {
    let started = Instant::now();
    let cache = tempfile::tempdir().expect("temp dir");
    let cache_dir = cache.path().join("cache");
    eprintln!("overhead: cold start ({COMPILES} compiles, {CACHE_LOADS} cached loads)…");
    let cold = (std::env::var_os("REKEY_BENCH_PROFILE").is_none()).then(|| cold_start(&cache_dir));

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

async fn run(cache_dir: std::path::PathBuf, cold: Option<ColdStart>, workers: usize) {
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
    let settings =
        Settings::new(client.token_url, client.client_id).with_secret(client.client_secret);
    let authorize = || TokenSet::import(&provider.authorize().to_string()).expect("token response");
    let memory: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    memory
        .put("warm", &settings, Some(&authorize()))
        .expect("put");
    memory
        .put("refresh", &settings, Some(&authorize()))
        .expect("put");
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn KeyStore> =
        Arc::new(rekey::SqliteStore::open(sqlite_dir.path().join("rekey.db")).expect("sqlite"));
    sqlite
        .put("warm", &settings, Some(&authorize()))
        .expect("put");

    let rekey = Rekey::new(config(Some(128), Some(&cache_dir))).expect("load rekey");
    let client = native_client();
    let native_token = provider.authorize()["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let via_rekey = Caller::Rekey {
        rekey: rekey.clone(),
        store: memory.clone(),
        name: "warm",
    };
    let via_sqlite = Caller::Rekey {
        rekey: rekey.clone(),
        store: sqlite.clone(),
        name: "warm",
    };
    let native = Caller::Native {
        client: client.clone(),
        token: native_token.into(),
    };

    if let Ok(spec) = std::env::var("REKEY_BENCH_PROFILE") {
        let (refresh, secs) = match spec.strip_prefix("refresh:") {
            Some(secs) => (true, secs),
            None => (false, spec.as_str()),
        };
        let run = Duration::from_secs(secs.parse().expect("REKEY_BENCH_PROFILE seconds"));
        eprintln!("overhead: profiling mode, refresh path: {refresh}, for {run:?}");
        if !refresh {
            let rps = throughput(&via_rekey, &api, 1, run).await;
            eprintln!("overhead: {rps:.0} requests/s");
            return;
        }
        let (started, mut done) = (Instant::now(), 0u32);
        while started.elapsed() < run {
            expire_access_token(&*memory, "refresh");
            let resp = rekey
                .send(memory.clone(), "refresh", Request::get(&api))
                .await
                .expect("rekey refresh path");
            assert_eq!(resp.status, 200, "rekey retry rejected");
            done += 1;
        }
        eprintln!(
            "overhead: {:.0} refreshes/s",
            f64::from(done) / run.as_secs_f64()
        );
        return;
    }
    let cold = cold.expect("cold start measured");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 1. Warm path, three sides interleaved (order rotates every round).
    eprintln!("overhead: warm path…");
    let sides = [&via_rekey, &native, &via_sqlite];
    for side in sides {
        for _ in 0..WARM_PER_ROUND {
            side.warm(&api).await;
        }
    }
    let mut warm: [Vec<Duration>; 3] = Default::default();
    for round in 0..WARM_ROUNDS {
        for k in 0..3 {
            let i = (round + k) % 3;
            for _ in 0..WARM_PER_ROUND {
                let t = Instant::now();
                sides[i].warm(&api).await;
                warm[i].push(t.elapsed());
            }
        }
    }
    let [w_rekey, w_native, w_sqlite] = warm.map(|mut v| summarize(&mut v));

    // 1b. The same against a server that takes ~1 ms, as a nearby real API
    // does: what the same absolute overhead amounts to off loopback.
    let slow = slow_server().await;
    let mut near: [Vec<Duration>; 2] = Default::default();
    for round in 0..NEAR_ROUNDS {
        for k in 0..2 {
            let i = (round + k) % 2;
            for _ in 0..NEAR_PER_ROUND {
                let t = Instant::now();
                sides[i].warm(&slow).await;
                near[i].push(t.elapsed());
            }
        }
    }
    let [n_rekey, n_native] = near.map(|mut v| summarize(&mut v));

    // 2. Refresh path: 401 → refresh → retry. Keys are reset outside the
    // timed region; the provider rotates refresh tokens, so the reset
    // always carries the latest one from the store.
    eprintln!("overhead: refresh path…");
    let before = provider.stats().refreshes_granted;
    let mut native_refresh_token = provider.authorize()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let mut r_rekey = Vec::new();
    let mut r_native = Vec::new();
    for round in 0..=REFRESH_ROUNDS {
        // Round 0 is the warm-up.
        let (mut rk, mut nt) = (Vec::new(), Vec::new());
        for side in [round % 2, (round + 1) % 2] {
            for _ in 0..REFRESH_PER_ROUND {
                if side == 0 {
                    expire_access_token(&*memory, "refresh");
                    let t = Instant::now();
                    let resp = rekey
                        .send(memory.clone(), "refresh", Request::get(&api))
                        .await
                        .expect("rekey refresh path");
                    rk.push(t.elapsed());
                    assert_eq!(resp.status, 200, "rekey retry rejected");
                } else {
                    let t = Instant::now();
                    native_refresh(&client, &provider, &api, &mut native_refresh_token).await;
                    nt.push(t.elapsed());
                }
            }
        }
        if round > 0 {
            r_rekey.append(&mut rk);
            r_native.append(&mut nt);
        }
    }
    let refreshes = provider.stats().refreshes_granted - before;
    let expected = 2 * (REFRESH_ROUNDS + 1) * REFRESH_PER_ROUND;
    assert_eq!(
        refreshes as usize, expected,
        "every iteration refreshes once"
    );
    let r_rekey = summarize(&mut r_rekey);
    let r_native = summarize(&mut r_native);

    // 3 + 6. Throughput, and peak RSS during the concurrency-64 runs.
    let mut tput = Vec::new();
    let mut rss: [Option<Rss>; 2] = [None, None];
    for c in CONCURRENCY {
        eprintln!("overhead: throughput at concurrency {c}…");
        throughput(&via_rekey, &api, c, THROUGHPUT_WARMUP).await;
        throughput(&native, &api, c, THROUGHPUT_WARMUP).await;
        let mut rps = [0.0; 2];
        for rep in 0..2 {
            for k in 0..2 {
                let i = (rep + k) % 2;
                let side = [&via_rekey, &native][i];
                let (r, peak) = throughput_with_rss(side, &api, c).await;
                rps[i] += r / 2.0;
                if c == 64 {
                    let higher = match (&rss[i], &peak) {
                        (Some(old), Some(new)) => new.peak_kib > old.peak_kib,
                        _ => true,
                    };
                    if higher && peak.is_some() {
                        rss[i] = peak;
                    }
                }
            }
        }
        tput.push((c, rps));
    }

    // 4. Instantiation, pooled and on demand.
    eprintln!("overhead: instantiation…");
    let on_demand = Rekey::new(config(None, Some(&cache_dir))).expect("load rekey, no pool");
    let pooled = Rekey::new(config(Some(128), Some(&cache_dir))).expect("load rekey, pooled");
    let i_pooled = instantiations(&pooled, INSTANTIATIONS).await;
    let i_on_demand = instantiations(&on_demand, INSTANTIATIONS / 4).await;
    drop((pooled, on_demand));
    // One piece of each call's fixed cost, timed alone.
    let mut wasi = Vec::with_capacity(INSTANTIATIONS);
    for _ in 0..INSTANTIATIONS {
        let t = Instant::now();
        drop(std::hint::black_box(
            wasmtime_wasi::WasiCtx::builder().build(),
        ));
        wasi.push(t.elapsed());
    }
    let wasi = summarize(&mut wasi);
    let api_logged = provider.api_log().len();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // The table.
    let mut table = Table { rows: Vec::new() };
    latency_rows(&mut table, "1. warm request", w_rekey, w_native);
    table.row([
        "1. warm request, SqliteStore, median µs",
        &format!("{:.1}", w_sqlite.median),
        &format!("{:.1}", w_native.median),
        &format!("{:.2}", w_sqlite.median / w_native.median),
        "(extra)",
        "",
    ]);
    let near_ratio = n_rekey.median / n_native.median;
    table.row([
        "1. warm request, ~1 ms server, median µs",
        &format!("{:.1}", n_rekey.median),
        &format!("{:.1}", n_native.median),
        &format!("{near_ratio:.2}"),
        &format!("(extra) ≤ {WARM_RATIO_TARGET:.2}"),
        &verdict(near_ratio, WARM_RATIO_TARGET, ""),
    ]);
    latency_rows(&mut table, "2. 401→refresh→retry", r_rekey, r_native);
    for (c, [r, n]) in &tput {
        table.row([
            &format!("3. throughput c={c}, req/s"),
            &format!("{r:.0}"),
            &format!("{n:.0}"),
            &format!("{:.2}", r / n),
            "",
            "",
        ]);
    }
    table.row([
        "4. instantiate, pooling(128), median µs",
        &format!("{:.1}", i_pooled.median),
        "",
        "",
        &format!("≤ {INSTANTIATE_TARGET_US:.0}"),
        &verdict(i_pooled.median, INSTANTIATE_TARGET_US, " µs"),
    ]);
    table.row([
        "4. instantiate, pooling(128), mean µs",
        &format!("{:.1}", i_pooled.mean),
        "",
        "",
        &format!("≤ {INSTANTIATE_TARGET_US:.0}"),
        &verdict(i_pooled.mean, INSTANTIATE_TARGET_US, " µs"),
    ]);
    table.row([
        "4. instantiate, on demand, median µs",
        &format!("{:.1}", i_on_demand.median),
        "",
        "",
        "",
        "",
    ]);
    table.row([
        "4. instantiate, on demand, mean µs",
        &format!("{:.1}", i_on_demand.mean),
        "",
        "",
        "",
        "",
    ]);
    table.row([
        "5. Rekey::new compiling, median ms",
        &format!("{:.1}", cold.compile_ms),
        "",
        "",
        "",
        "",
    ]);
    table.row([
        "5. Rekey::new precompiled, median ms",
        &format!("{:.2}", cold.load_ms),
        "",
        "",
        &format!("≤ {PRECOMPILED_TARGET_MS:.0}"),
        &verdict(cold.load_ms, PRECOMPILED_TARGET_MS, " ms"),
    ]);
    let size = rekey::GUEST_WASM.len();
    table.row([
        "5. guest component, bytes",
        &size.to_string(),
        "",
        "",
        &format!("≤ {COMPONENT_TARGET_BYTES}"),
        &if size <= COMPONENT_TARGET_BYTES {
            "met".to_owned()
        } else {
            format!("missed by {} bytes", size - COMPONENT_TARGET_BYTES)
        },
    ]);
    match &rss {
        [Some(r), Some(n)] => table.row([
            "6. peak RSS during c=64, MiB (before)",
            &format!("{:.1} ({:.1})", mib(r.peak_kib), mib(r.before_kib)),
            &format!("{:.1} ({:.1})", mib(n.peak_kib), mib(n.before_kib)),
            &format!("{:.2}", r.peak_kib as f64 / n.peak_kib as f64),
            "",
            "",
        ]),
        _ => table.row([
            "6. peak RSS during c=64",
            "n/a",
            "n/a",
            "",
            "",
            "/proc/self/clear_refs unusable",
        ]),
    }

    println!();
    println!("rekey overhead: rekey (wasmtime component) vs the same requests sent natively");
    println!(
        "machine: {} ({} CPUs, {workers} tokio workers); load average before/after: {} / {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!(
        "server: rekey-testkit provider on 127.0.0.1 (HTTP/1.1, keep-alive), shared by both sides; \
         store: MemoryStore; observer: no-op; refresh tokens rotate"
    );
    println!(
        "samples: warm {} per side, refresh {} per side, throughput 2×{:?} per side and level, \
         instantiate {} / {}",
        w_rekey.n, r_rekey.n, THROUGHPUT_RUN, i_pooled.n, i_on_demand.n
    );
    println!();
    table.print();
    println!();
    println!("where the warm-path difference goes (medians):");
    println!(
        "  rekey − native:                        {:7.1} µs",
        w_rekey.median - w_native.median
    );
    println!(
        "  instantiate_only (Store + instance):   {:7.1} µs  (of which WasiCtx::builder().build(): {:.1} µs)",
        i_pooled.median, wasi.median
    );
    println!(
        "  rest (store load, guest run, canonical-ABI copies, host http-send extras): {:.1} µs",
        w_rekey.median - w_native.median - i_pooled.median
    );
    println!(
        "  refresh path, rekey − native:          {:7.1} µs",
        r_rekey.median - r_native.median
    );
    println!("precompiled Rekey::new pieces (medians, rebuilt alone):");
    println!(
        "  Rekey::new from cache {:.2} ms (fastest {:.2}) = Engine::new with pooling {:.2} ms \
         + Component::deserialize_file {} + linker/instantiate_pre/ticker; the reqwest client \
         ({:.2} ms, mostly parsing the system CA bundle) is built lazily, on the first send",
        cold.load_ms,
        cold.load_min_ms,
        cold.engine_ms,
        cold.deserialize_ms
            .map_or("n/a".into(), |d| format!("{d:.2} ms")),
        cold.http_client_ms,
    );
    println!("provider api_log entries at the end: {api_logged}");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
