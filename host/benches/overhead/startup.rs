//! Fixed costs: `Rekey::new` compiling or loading the component, its pieces
//! rebuilt alone with the library's own functions, and instantiation (the
//! per-call cost).

use crate::measure::{Summary, median_ms, summarize, timed};
use crate::native;
use crate::sides::{config, default_pool};
use rekey::cache::{self, Origin};
use rekey::{GUEST_WASM, Rekey};
use std::path::Path;
use std::time::{Duration, Instant};

pub const COMPILES: usize = 3;
pub const CACHE_LOADS: usize = 20;
const INSTANTIATIONS: usize = 20_000;

/// `Rekey::new` compiling vs loading native code compiled earlier, in ms.
pub struct ColdStart {
    pub compile_ms: f64,
    pub load_ms: f64,
    pub load_min_ms: f64,
    pub engine_ms: f64,
    pub http_client_ms: f64,
    pub cache_load_ms: f64,
}

/// Runs before anything else so nothing competes for the cores.
pub fn cold_start(cache_dir: &Path) -> ColdStart {
    let pooled = |cache| config(Some(default_pool()), cache);
    let mut compiles: Vec<Duration> = (0..COMPILES)
        .map(|_| {
            let (r, e) = timed(|| Rekey::new(pooled(None)).expect("compile the component"));
            assert_eq!(r.origin(), Origin::Compiled);
            e
        })
        .collect();
    let first = Rekey::new(pooled(Some(cache_dir))).expect("compile and cache");
    assert_eq!(first.origin(), Origin::CompiledAndCached);
    drop(first);
    let mut loads: Vec<Duration> = (0..CACHE_LOADS)
        .map(|_| {
            let (r, e) = timed(|| Rekey::new(pooled(Some(cache_dir))).expect("load from cache"));
            assert_eq!(r.origin(), Origin::LoadedFromCache, "not a cache hit");
            e
        })
        .collect();

    // Pieces of the precompiled load: the engine `Rekey::new` builds for this
    // very config, the client `HttpClient` builds, the library's cache load.
    let mut engine_t = Vec::new();
    let mut client_t = Vec::new();
    let mut cache_t = Vec::new();
    for _ in 0..CACHE_LOADS {
        let (engine, t) = timed(|| {
            let engine_config = rekey::engine_config(&pooled(Some(cache_dir)));
            wasmtime::Engine::new(&engine_config).expect("engine")
        });
        engine_t.push(t);
        client_t.push(timed(|| drop(native::client())).1);
        let ((_, origin), t) = timed(|| {
            cache::load_or_compile(&engine, GUEST_WASM, Some(cache_dir)).expect("cache load")
        });
        assert_eq!(origin, Origin::LoadedFromCache, "not a cache hit");
        cache_t.push(t);
    }
    ColdStart {
        compile_ms: median_ms(&mut compiles),
        load_ms: median_ms(&mut loads),
        load_min_ms: loads[0].as_secs_f64() * 1e3,
        engine_ms: median_ms(&mut engine_t),
        http_client_ms: median_ms(&mut client_t),
        cache_load_ms: median_ms(&mut cache_t),
    }
}

pub struct Instantiation {
    pub pooled: Summary,
    pub on_demand: Summary,
    /// `WasiCtx::builder().build()`, one piece of each call's fixed cost.
    pub wasi: Summary,
}

/// `Store` + `InstancePre` instantiation, with the default pool and on demand.
pub async fn instantiation(cache_dir: &Path) -> Instantiation {
    let on_demand = Rekey::new(config(None, Some(cache_dir))).expect("load rekey, no pool");
    let pooled =
        Rekey::new(config(Some(default_pool()), Some(cache_dir))).expect("load rekey, pooled");
    let i_pooled = instantiations(&pooled, INSTANTIATIONS).await;
    let i_on_demand = instantiations(&on_demand, INSTANTIATIONS / 4).await;
    drop((pooled, on_demand));
    let mut wasi: Vec<Duration> = (0..INSTANTIATIONS)
        .map(|_| {
            timed(|| {
                drop(std::hint::black_box(
                    wasmtime_wasi::WasiCtx::builder().build(),
                ))
            })
            .1
        })
        .collect();
    Instantiation {
        pooled: i_pooled,
        on_demand: i_on_demand,
        wasi: summarize(&mut wasi),
    }
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
