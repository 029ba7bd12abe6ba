//! The printed report: a Markdown table of rekey against native with the
//! targets and verdicts, and where the differences go.

use crate::measure::{Summary, cpu_model, mib};
use crate::process::{self, Process};
use crate::startup::{ColdStart, Instantiation};
use crate::throughput::{self, RSS_AT, Throughput};

// Issue 14's targets: ratios of medians measured in the same run.
const WARM_RATIO_TARGET: f64 = 1.25;
const NEAR_RATIO_TARGET: f64 = 1.05;
const SQLITE_VS_MEMORY_TARGET: f64 = 1.15;
const REFRESH_RATIO_TARGET: f64 = 1.5;
/// rekey's extra time over native for a 1 MiB response, against its extra
/// time for an empty one (contract 0.3: bodies are handles).
const BODY_EXTRA_RATIO_TARGET: f64 = 1.2;
const THROUGHPUT_RATIO_TARGET: f64 = 0.8;
const PROCESS_RATIO_TARGET: f64 = 1.10;
const INSTANTIATE_TARGET_US: f64 = 10.0;
const PRECOMPILED_TARGET_MS: f64 = 2.0;
const COMPONENT_TARGET_BYTES: usize = 150_000;

/// Everything one run measured.
pub struct Results {
    pub warm: [Summary; 2],
    pub warm_sqlite: Summary,
    pub near: [Summary; 2],
    /// `[[rekey, native] empty, [rekey, native] 1 MiB]`.
    pub bodies: [[Summary; 2]; 2],
    pub refresh: [Summary; 2],
    pub throughput: Throughput,
    pub instantiation: Instantiation,
    pub process: Process,
    pub cold: ColdStart,
    pub pool: u32,
    pub api_logged: usize,
    pub load_before: String,
    pub load_after: String,
    pub workers: usize,
}

pub fn print(r: &Results) {
    let [w_rekey, w_native] = r.warm;
    let [r_rekey, r_native] = r.refresh;
    let inst = &r.instantiation;
    let cold = &r.cold;
    println!();
    println!("rekey overhead: rekey (wasmtime component) vs the same requests sent natively");
    println!(
        "machine: {} ({} CPUs, {} tokio workers); load average before/after: {} / {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
        r.workers,
        r.load_before,
        r.load_after,
    );
    println!(
        "server: rekey-testkit provider on 127.0.0.1 (HTTP/1.1, keep-alive), shared by both sides; \
         store: MemoryStore; observer: no-op; refresh tokens rotate"
    );
    println!(
        "samples: warm {} per side, refresh {} per side, throughput {}×{:?} per side and level, \
         instantiate {} / {}",
        w_rekey.n,
        r_rekey.n,
        throughput::RUNS,
        throughput::RUN,
        inst.pooled.n,
        inst.on_demand.n
    );
    println!();
    table(r).print();
    println!();
    println!("where the differences go (medians):");
    println!(
        "  warm, rekey − native: {:.1} µs (store load, guest run, canonical-ABI copies, host http-send checks); \
         a credential's calls reuse one instance, so no instantiation is in it",
        w_rekey.median - w_native.median
    );
    println!(
        "  a credential's first call (or the first after a trap) also instantiates: {:.1} µs \
         (of which WasiCtx::builder().build(): {:.1} µs)",
        inst.pooled.median, inst.wasi.median
    );
    println!(
        "  SqliteStore − MemoryStore, warm: {:.1} µs",
        r.warm_sqlite.median - w_rekey.median
    );
    println!(
        "  refresh path, rekey − native: {:.1} µs",
        r_rekey.median - r_native.median
    );
    println!(
        "precompiled Rekey::new pieces (medians, rebuilt alone with the library's functions):"
    );
    println!(
        "  Rekey::new from cache {:.2} ms (fastest {:.2}) = Engine::new(engine_config) with pooling {:.2} ms \
         + cache::load_or_compile (key, checks, deserialize) {:.2} ms + linker/instantiate_pre/ticker; \
         a reqwest client built with reqwest's own TLS set-up costs {:.2} ms (parsing the system's CA \
         certificates); rekey's loads them at its first TLS handshake instead",
        cold.load_ms, cold.load_min_ms, cold.engine_ms, cold.cache_load_ms, cold.http_client_ms,
    );
    println!("provider api_log entries at the end: {}", r.api_logged);
    if let Process::Measured { curl, .. } = &r.process {
        println!(
            "7. `rekey send` (this bench's release binary, SQLite store, cached component) vs {curl} \
             with the same Bearer token, {} pairs in alternating order; peak RSS under GNU time",
            process::PAIRS
        );
    }
}

fn table(r: &Results) -> Table {
    let [w_rekey, w_native] = r.warm;
    let [n_rekey, n_native] = r.near;
    let [r_rekey, r_native] = r.refresh;
    let inst = &r.instantiation;
    let pool = r.pool;
    let mut t = Table { rows: Vec::new() };
    t.latency("1. warm request", w_rekey, w_native, WARM_RATIO_TARGET);
    t.compare(
        "1. warm request, ~1 ms server, median µs",
        n_rekey.median,
        n_native.median,
        1,
        &format!("≤ {NEAR_RATIO_TARGET:.2}"),
        &verdict(n_rekey.median / n_native.median, NEAR_RATIO_TARGET, ""),
    );
    t.row([
        "1. warm, SqliteStore vs MemoryStore, median µs",
        &format!("{:.1}", r.warm_sqlite.median),
        &format!("{:.1} (Memory)", w_rekey.median),
        &format!("{:.2}", r.warm_sqlite.median / w_rekey.median),
        &format!("≤ {SQLITE_VS_MEMORY_TARGET:.2}"),
        &verdict(
            r.warm_sqlite.median / w_rekey.median,
            SQLITE_VS_MEMORY_TARGET,
            "",
        ),
    ]);
    let [[e_rekey, e_native], [l_rekey, l_native]] = r.bodies;
    t.compare(
        "1. warm, empty response, median µs",
        e_rekey.median,
        e_native.median,
        1,
        "",
        "",
    );
    t.compare(
        "1. warm, 1 MiB response, median µs",
        l_rekey.median,
        l_native.median,
        1,
        "",
        "",
    );
    let (extra_empty, extra_large) = (
        e_rekey.median - e_native.median,
        l_rekey.median - l_native.median,
    );
    let ratio = extra_large / extra_empty;
    t.row([
        "1. rekey's extra µs, 1 MiB vs empty response",
        &format!("{extra_large:.1}"),
        &format!("{extra_empty:.1} (empty)"),
        &format!("{ratio:.2}"),
        &format!("≤ {BODY_EXTRA_RATIO_TARGET:.2}"),
        &verdict(ratio, BODY_EXTRA_RATIO_TARGET, ""),
    ]);
    t.latency(
        "2. 401→refresh→retry",
        r_rekey,
        r_native,
        REFRESH_RATIO_TARGET,
    );
    for (c, [rk, nt]) in &r.throughput.levels {
        let ratio = rk / nt;
        t.compare(
            &format!("3. throughput c={c}, req/s"),
            *rk,
            *nt,
            0,
            &format!("≥ {THROUGHPUT_RATIO_TARGET:.2}"),
            &if ratio >= THROUGHPUT_RATIO_TARGET {
                "met".to_owned()
            } else {
                format!("missed by {:.2}", THROUGHPUT_RATIO_TARGET - ratio)
            },
        );
    }
    for (stat, v) in [("median", inst.pooled.median), ("mean", inst.pooled.mean)] {
        t.alone(
            &format!("4. instantiate, pooling({pool}), {stat} µs"),
            format!("{v:.1}"),
            &format!("≤ {INSTANTIATE_TARGET_US:.0}"),
            &verdict(v, INSTANTIATE_TARGET_US, " µs"),
        );
    }
    for (stat, v) in [
        ("median", inst.on_demand.median),
        ("mean", inst.on_demand.mean),
    ] {
        t.alone(
            &format!("4. instantiate, on demand, {stat} µs"),
            format!("{v:.1}"),
            "",
            "",
        );
    }
    let cold = &r.cold;
    t.alone(
        "5. Rekey::new compiling, median ms",
        format!("{:.1}", cold.compile_ms),
        "",
        "",
    );
    t.alone(
        "5. Rekey::new precompiled, median ms",
        format!("{:.2}", cold.load_ms),
        &format!("≤ {PRECOMPILED_TARGET_MS:.0}"),
        &verdict(cold.load_ms, PRECOMPILED_TARGET_MS, " ms"),
    );
    let size = rekey::GUEST_WASM.len();
    t.alone(
        "5. guest component, bytes",
        size.to_string(),
        &format!("≤ {COMPONENT_TARGET_BYTES}"),
        &if size <= COMPONENT_TARGET_BYTES {
            "met".to_owned()
        } else {
            format!("missed by {} bytes", size - COMPONENT_TARGET_BYTES)
        },
    );
    match &r.throughput.rss {
        [Some(rk), Some(nt)] => t.row([
            &format!("6. peak RSS during c={RSS_AT}, MiB (before)"),
            &format!("{:.1} ({:.1})", mib(rk.peak_kib), mib(rk.before_kib)),
            &format!("{:.1} ({:.1})", mib(nt.peak_kib), mib(nt.before_kib)),
            &format!("{:.2}", rk.peak_kib as f64 / nt.peak_kib as f64),
            "",
            "",
        ]),
        _ => t.row([
            &format!("6. peak RSS during c={RSS_AT}"),
            "n/a",
            "n/a",
            "",
            "",
            "/proc/self/clear_refs unusable",
        ]),
    }
    match &r.process {
        Process::Measured {
            wall_ms: [rk, curl],
            rss_mib,
            ..
        } => {
            t.compare(
                "7. `rekey send` process vs curl, median ms",
                *rk,
                *curl,
                2,
                &format!("≤ {PROCESS_RATIO_TARGET:.2}"),
                &verdict(rk / curl, PROCESS_RATIO_TARGET, ""),
            );
            if let Some([rk, curl]) = rss_mib {
                t.compare("7. peak RSS of one process, MiB", *rk, *curl, 1, "", "");
            }
        }
        Process::Skipped(why) => t.row(["7. `rekey send` process vs curl", "", "", "", "", why]),
    }
    t
}

fn verdict(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        "met".into()
    } else {
        format!("missed by {:.2}{unit}", value - target)
    }
}

struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn row(&mut self, cells: [&str; 6]) {
        self.rows.push(cells.map(str::to_owned));
    }

    /// A measure of rekey alone.
    fn alone(&mut self, measure: &str, rekey: String, target: &str, verdict: &str) {
        self.row([measure, &rekey, "", "", target, verdict]);
    }

    /// rekey and native with `decimals`, and their ratio.
    fn compare(
        &mut self,
        measure: &str,
        rekey: f64,
        native: f64,
        decimals: usize,
        target: &str,
        verdict: &str,
    ) {
        self.row([
            measure,
            &format!("{rekey:.decimals$}"),
            &format!("{native:.decimals$}"),
            &format!("{:.2}", rekey / native),
            target,
            verdict,
        ]);
    }

    /// The median against `target` (the targets are on medians); mean and
    /// p99 for the shape.
    fn latency(&mut self, what: &str, rekey: Summary, native: Summary, target: f64) {
        self.compare(
            &format!("{what}, median µs"),
            rekey.median,
            native.median,
            1,
            &format!("≤ {target:.2}"),
            &verdict(rekey.median / native.median, target, ""),
        );
        for (stat, r, n) in [
            ("mean", rekey.mean, native.mean),
            ("p99", rekey.p99, native.p99),
        ] {
            self.compare(&format!("{what}, {stat} µs"), r, n, 1, "", "");
        }
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
