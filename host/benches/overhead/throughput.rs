//! Throughput of warm requests at several concurrency levels, and peak RSS
//! at the highest.

use crate::measure::{Rss, rotation, with_peak_rss};
use crate::sides::Caller;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// The level whose peak RSS is reported.
pub const RSS_AT: usize = CONCURRENCY[CONCURRENCY.len() - 1];
pub const RUN: Duration = Duration::from_millis(1500);
const WARMUP: Duration = Duration::from_millis(300);
/// Timed runs per side and level, the sides alternating.
pub const RUNS: usize = 2;

pub struct Throughput {
    /// Per concurrency level, requests per second: [first side, second side].
    pub levels: Vec<(usize, [f64; 2])>,
    /// The highest peak RSS of each side's runs at `RSS_AT`.
    pub rss: [Option<Rss>; 2],
}

/// Each level: a warm-up run per side, then `RUNS` timed runs per side.
pub async fn levels(sides: [&Caller; 2], url: &Arc<str>) -> Throughput {
    let mut levels = Vec::new();
    let mut rss: [Option<Rss>; 2] = [None, None];
    for c in CONCURRENCY {
        eprintln!("overhead: throughput at concurrency {c}…");
        for side in sides {
            run(side, url, c, WARMUP).await;
        }
        let mut rps = [0.0; 2];
        for rep in 0..RUNS {
            for i in rotation(2, rep) {
                let (r, peak) = with_peak_rss(run(sides[i], url, c, RUN)).await;
                rps[i] += r / RUNS as f64;
                if c == RSS_AT {
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
        levels.push((c, rps));
    }
    Throughput { levels, rss }
}

/// Requests per second completed by `concurrency` tasks looping until `run`
/// has passed.
pub async fn run(caller: &Caller, url: &Arc<str>, concurrency: usize, run: Duration) -> f64 {
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
