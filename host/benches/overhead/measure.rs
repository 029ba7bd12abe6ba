//! Timing and memory readings: the order the sides take turns in, summaries
//! of samples, peak RSS, and what the machine is.

use std::future::Future;
use std::time::{Duration, Instant};

/// The order `sides` take their turn in during `round`: every side once,
/// starting with side `round mod sides`, so drift (other load on the
/// machine, frequency changes) hits all of them alike.
pub fn rotation(sides: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..sides).map(move |k| (round + k) % sides)
}

/// How long `f` took, and what it returned.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

#[derive(Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub p99: f64,
}

/// In microseconds.
pub fn summarize(samples: &mut [Duration]) -> Summary {
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

pub fn median_ms(samples: &mut [Duration]) -> f64 {
    summarize(samples).median / 1000.0
}

/// Peak RSS over a run, from a high-water mark reset just before it.
pub struct Rss {
    pub before_kib: u64,
    pub peak_kib: u64,
}

/// Runs `run` with the peak-RSS mark reset just before; `None` where the
/// kernel does not let us reset or read it.
pub async fn with_peak_rss<T>(run: impl Future<Output = T>) -> (T, Option<Rss>) {
    let reset = reset_peak_rss();
    let before = proc_status_kib("VmRSS:");
    let out = run.await;
    let peak = proc_status_kib("VmHWM:");
    let rss = match (reset, before, peak) {
        (true, Some(before_kib), Some(peak_kib)) => Some(Rss {
            before_kib,
            peak_kib,
        }),
        _ => None,
    };
    (out, rss)
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

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cpu_model() -> String {
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
