//! The simulator's runs: random seeds (a soak with `REKEY_SIM_SEEDS`, one
//! grant with `REKEY_SIM_GRANT`), one seed replayed (`REKEY_SIM_SEED`),
//! exhaustive enumeration of small fleets, and sabotage: each protective
//! rule switched off must be caught.

use super::rng::{Dfs, Rng};
use super::{Config, FAULTS, Stats, Violation, run};
use crate::fleet::sabotage::Off;
use crate::rekey::oauth2::types::Strategy;
use std::io::Write as _;
use std::time::Instant;

/// Random seeds `cargo test` runs by default (each test below takes its share).
const DEFAULT_SEEDS: u64 = 8_000;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Every grant `Config::grant_named` knows.
const GRANTS: [&str; 8] = [
    "refresh",
    "refresh-jwt",
    "cc",
    "cc-post",
    "cc-jwt",
    "jwt-bearer",
    "jwt-bearer-basic",
    "jwt-bearer-jwt",
];

/// The seed's world with the grant `REKEY_SIM_GRANT` names, if it names one.
fn grant_from_env(c: Config) -> Config {
    match std::env::var("REKEY_SIM_GRANT") {
        Ok(name) => c
            .grant_named(&name)
            .unwrap_or_else(|| panic!("REKEY_SIM_GRANT={name}: one of {GRANTS:?}")),
        Err(_) => c,
    }
}

fn named(c: Config, grant: &str) -> Config {
    c.grant_named(grant).expect("a grant the simulator knows")
}

/// Prints past the harness's capture, so CI logs show what was covered.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs these seeds; panics on the first violation, with its trace.
fn soak(name: &str, seeds: impl Iterator<Item = u64>, config: impl Fn(u64) -> Config) -> Stats {
    let start = Instant::now();
    let mut total = Stats::default();
    for seed in seeds {
        match run(&config(seed), &mut Rng::new(seed)) {
            Ok(stats) => total.add(&stats),
            Err(v) => panic!("{v}"),
        }
    }
    say(&format!(
        "sim {name}: {total} [{:.1} s wall]",
        start.elapsed().as_secs_f64()
    ));
    total
}

/// The random seeds, split in two halves so both cores work.
fn random_half(half: u64) {
    let n = env("REKEY_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    if env("REKEY_SIM_SEED").is_some() {
        return;
    }
    let stats = soak(
        &format!("random seeds, half {half}"),
        (0..n).filter(|s| s % 2 == half),
        |s| grant_from_env(Config::random(s)),
    );
    // Not vacuous: the runs met every fault and refreshed under them.
    let refreshing: u64 = stats
        .grants
        .iter()
        .filter(|(g, _)| g.starts_with("refresh-token"))
        .map(|(_, n)| n)
        .sum();
    let own = stats.runs - refreshing;
    if n >= 100 {
        assert_eq!(stats.faults.len(), FAULTS.len(), "{stats}");
        assert!(refreshing == 0 || stats.rotations > refreshing, "{stats}");
        assert!(own == 0 || stats.fetches > own, "{stats}");
    }
    // Every grant ran, signed, fetched, retried after lost answers, and the
    // provider refused the network's duplicates of signed requests.
    if n >= 1_000 && std::env::var("REKEY_SIM_GRANT").is_err() {
        assert_eq!(stats.grants.len(), 6, "{stats}");
        assert!(2 * refreshing > stats.runs, "{stats}");
        for covered in [
            stats.assertions,
            stats.replays_refused,
            stats.retried_after_loss,
        ] {
            assert!(covered > 0, "{stats}");
        }
    }
}

#[test]
fn random_seeds_even() {
    random_half(0);
}

#[test]
fn random_seeds_odd() {
    random_half(1);
}

/// `REKEY_SIM_SEED=s`: replays one seed and prints its summary (add
/// `REKEY_SIM_TRACE=100000` to see every event of a violation,
/// `REKEY_SIM_SABOTAGE=a|b|c|d|e` to replay a sabotage test's seed, and
/// `REKEY_SIM_GRANT` for a seed of a one-grant soak).
#[test]
fn replay() {
    let seed = env("REKEY_SIM_SEED").unwrap_or(7);
    let sabotage = std::env::var("REKEY_SIM_SABOTAGE").unwrap_or_default();
    let config = |seed| {
        let mut c = grant_from_env(Config::random(seed));
        match sabotage.as_str() {
            "a" => c.off.fencing = true,
            "b" => c.off.mark = true,
            "c" => c.off.holder_check = true,
            "d" => c.ttl_ms = SHORT_TTL_MS,
            "e" => c = stuck_random(seed),
            _ => {}
        }
        c
    };
    say(&format!("sim replay: {:?}", config(seed)));
    soak("replay", std::iter::once(seed), config);
}

/// A seed replays exactly: the same steps, outcomes and trace.
#[test]
fn a_seed_replays_exactly() {
    let twice = |cfg: &Config| {
        [0, 1].map(|_| match run(cfg, &mut Rng::new(cfg.seed)) {
            Ok(stats) => format!("{stats:?}"),
            Err(v) => format!("{v}"),
        })
    };
    for seed in 0..20 {
        let [a, b] = twice(&Config::random(seed));
        assert_eq!(a, b, "seed {seed}");
    }
    // Every grant (their assertions' jtis and signatures come from the
    // workers' seeded random sources).
    for grant in GRANTS {
        for seed in 20..24 {
            let [a, b] = twice(&named(Config::random(seed), grant));
            assert_eq!(a, b, "{grant}, seed {seed}");
            assert!(!a.contains("VIOLATION"), "{a}");
        }
    }
    // A violation's trace too.
    let no_mark = sabotaged(Off {
        mark: true,
        ..Off::default()
    });
    let seed = caught("(b), for a replay", 2_000, &no_mark).seed;
    let [a, b] = twice(&no_mark(seed));
    assert!(a.contains("VIOLATION"), "{a}");
    assert_eq!(a, b);
    // And a violation of a signed grant's.
    let seed = caught("(e), for a replay", 2_000, &stuck_random).seed;
    let [a, b] = twice(&stuck_random(seed));
    assert!(a.contains("VIOLATION") && a.contains("jti"), "{a}");
    assert_eq!(a, b);
}

/// Without faults, every call succeeds (the liveness phase is the whole
/// run), whatever the grant.
#[test]
fn a_calm_fleet_always_succeeds() {
    let calm = |c: Config| Config {
        faults: [0; FAULTS.len()],
        ..c
    };
    let stats = soak("calm fleets", 0..40, |seed| calm(Config::random(seed)));
    assert_eq!(
        stats.outcomes.keys().copied().collect::<Vec<_>>(),
        ["ok"],
        "{stats}"
    );
    let stats = soak("calm fleets, every grant", 0..8 * 8, |seed| {
        calm(named(Config::random(seed), GRANTS[seed as usize % 8]))
    });
    assert_eq!(
        stats.outcomes.keys().copied().collect::<Vec<_>>(),
        ["ok"],
        "{stats}"
    );
    assert_eq!(stats.grants.len(), 6, "{stats}");
}

/// Every schedule of a small fleet, by depth-first enumeration.
fn exhaustive(name: &str, cfg: &Config, preemptions: Option<u32>, max_runs: u64) -> Stats {
    let start = Instant::now();
    let mut dfs = Dfs::new(preemptions);
    let mut total = Stats::default();
    loop {
        match run(cfg, &mut dfs) {
            Ok(stats) => total.add(&stats),
            Err(v) => panic!("{v}"),
        }
        if !dfs.advance() {
            break;
        }
        assert!(
            total.runs < max_runs,
            "{name}: more than {max_runs} schedules; raise the bound or shrink the fleet"
        );
    }
    say(&format!(
        "sim exhaustive {name}: all {} schedules; {total} [{:.1} s wall]",
        total.runs,
        start.elapsed().as_secs_f64()
    ));
    total
}

/// Zero latencies, no think time: only the order of effects varies.
fn small(workers: usize, calls: u32) -> Config {
    let mut c = Config::calm(0);
    c.workers = workers;
    c.calls = calls;
    c.calm_calls = 0;
    c.zero_latency = true;
    c.think_ms = 0;
    c
}

/// The preemption bound of the bounded enumerations (`REKEY_SIM_PREEMPTIONS`
/// raises it for a deeper soak).
fn preemptions(default: u32) -> Option<u32> {
    Some(env("REKEY_SIM_PREEMPTIONS").map_or(default, |p| p as u32))
}

#[test]
fn exhaustive_two_workers_refresh_first() {
    // Each call refreshes first: the second worker adopts the first one's
    // token, or (reading after it was stored) refreshes again.
    let mut cfg = small(2, 1);
    cfg.strategy = Strategy::EveryRequest;
    let stats = exhaustive("2 workers x 1 call, refresh first", &cfg, None, 100_000);
    assert!(stats.rotations > stats.runs, "{stats}");
    assert_eq!(
        stats.outcomes.keys().copied().collect::<Vec<_>>(),
        ["ok"],
        "{stats}"
    );
}

#[test]
fn exhaustive_two_workers_two_refreshes() {
    // The stored token has expired, and so has the next one when the second
    // calls begin a second later: two refreshes, whoever makes them.
    let mut cfg = small(2, 2);
    cfg.think_ms = 1_000;
    cfg.access_ttl_ms = 500;
    let stats = exhaustive(
        "2 workers x 2 calls, 2 refreshes, <= 3 preemptions",
        &cfg,
        preemptions(3),
        100_000,
    );
    assert_eq!(stats.rotations, 2 * stats.runs, "{stats}");
    assert_eq!(
        stats.outcomes.keys().copied().collect::<Vec<_>>(),
        ["ok"],
        "{stats}"
    );
}

#[test]
fn exhaustive_three_workers_bounded() {
    let cfg = small(3, 1);
    let stats = exhaustive(
        "3 workers x 1 call, <= 2 preemptions",
        &cfg,
        preemptions(2),
        100_000,
    );
    assert_eq!(stats.rotations, stats.runs, "{stats}");
}

#[test]
fn exhaustive_a_crash_at_any_effect_call() {
    // One worker dies before or after any effect call of either worker (its
    // next call is a fresh one); the other goes on.
    let mut cfg = small(2, 2);
    cfg.crashes = 1;
    let stats = exhaustive(
        "2 workers x 2 calls, 1 crash anywhere, <= 1 preemption",
        &cfg,
        preemptions(1),
        100_000,
    );
    for kind in ["crashed", "ok", "refresh-in-doubt"] {
        assert!(stats.outcomes.contains_key(kind), "{stats}");
    }
}

/// The client's own grant, signed (`private_key_jwt`), nothing stored at
/// first: one worker dies before or after any effect call. Nothing is ever
/// in doubt, nothing is marked, every assertion is fresh.
#[test]
fn exhaustive_client_credentials_a_crash_at_any_effect_call() {
    let mut cfg = named(small(2, 2), "cc-jwt");
    cfg.crashes = 1;
    cfg.start_empty = true;
    let stats = exhaustive(
        "client credentials, private_key_jwt, 2 workers x 2 calls, 1 crash anywhere, <= 1 preemption",
        &cfg,
        preemptions(1),
        100_000,
    );
    assert!(stats.fetches >= stats.runs, "{stats}");
    assert!(stats.assertions >= stats.fetches, "{stats}");
    let kinds: Vec<&str> = stats.outcomes.keys().copied().collect();
    assert!(
        kinds.contains(&"crashed") && kinds.contains(&"ok"),
        "{stats}"
    );
}

/// The JWT bearer grant, a public client, nothing stored: the first calls
/// of two workers race to fetch; one fetches, or both do, one after the
/// other, and each call succeeds.
#[test]
fn exhaustive_two_workers_jwt_bearer_from_nothing() {
    let mut cfg = named(small(2, 1), "jwt-bearer");
    cfg.start_empty = true;
    cfg.stray_refresh = true;
    let stats = exhaustive(
        "jwt bearer, nothing stored, 2 workers x 1 call",
        &cfg,
        None,
        100_000,
    );
    assert!(stats.fetches >= stats.runs, "{stats}");
    assert_eq!(
        stats.outcomes.keys().copied().collect::<Vec<_>>(),
        ["ok"],
        "{stats}"
    );
}

/// Exhaustive search notices sabotage too: without the refresh mark, a
/// crash after the token request lets the next holder spend the same token.
#[test]
fn exhaustive_search_catches_a_missing_mark() {
    let mut cfg = small(2, 2);
    cfg.crashes = 1;
    cfg.off.mark = true;
    let mut dfs = Dfs::new(Some(1));
    loop {
        if let Err(v) = run(&cfg, &mut dfs) {
            say(&format!("sim exhaustive sabotage (b): {}", v.what));
            return;
        }
        assert!(dfs.advance(), "no schedule shows the missing mark");
    }
}

/// Runs random seeds with `off` until the checker objects; the violation.
fn caught(name: &str, max_seeds: u64, config: &dyn Fn(u64) -> Config) -> Violation {
    let start = Instant::now();
    for seed in 0..max_seeds {
        if let Err(v) = run(&config(seed), &mut Rng::new(seed)) {
            say(&format!(
                "sim sabotage {name}: caught at seed {seed} after {:.1} s: {}",
                start.elapsed().as_secs_f64(),
                v.what
            ));
            return v;
        }
    }
    panic!("sabotage {name}: no violation in {max_seeds} seeds: the checker is blind to it");
}

fn sabotaged(off: Off) -> impl Fn(u64) -> Config {
    move |seed| Config {
        off,
        ..Config::random(seed)
    }
}

#[test]
fn sabotage_no_fencing_is_caught() {
    let off = Off {
        fencing: true,
        ..Off::default()
    };
    caught("(a) no fencing", 2_000, &sabotaged(off));
}

#[test]
fn sabotage_no_refresh_mark_is_caught() {
    let off = Off {
        mark: true,
        ..Off::default()
    };
    caught("(b) no refresh mark", 2_000, &sabotaged(off));
}

#[test]
fn sabotage_no_holder_check_is_caught() {
    let off = Off {
        holder_check: true,
        ..Off::default()
    };
    caught("(c) no holder check", 2_000, &sabotaged(off));
}

/// The world's, not the guest's: the host's random source repeats itself,
/// so each worker's assertions repeat their `jti`, and the checker (or the
/// provider, as a real server would) must object.
fn stuck_random(seed: u64) -> Config {
    let grant = ["refresh-jwt", "cc-jwt", "jwt-bearer", "jwt-bearer-jwt"][seed as usize % 4];
    Config {
        stuck_random: true,
        ..named(Config::random(seed), grant)
    }
}

#[test]
fn sabotage_a_stuck_random_source_is_caught() {
    let v = caught("(e) a stuck random source", 2_000, &stuck_random);
    assert!(v.what.contains("jti"), "{v}");
}

/// A lease TTL shorter than a token-endpoint answer (20 ms to 3.5 s).
const SHORT_TTL_MS: u32 = 300;

#[test]
fn sabotage_lease_shorter_than_the_token_call_is_caught() {
    caught("(d) lease TTL 300 ms", 2_000, &|seed| Config {
        ttl_ms: SHORT_TTL_MS,
        strategy: Strategy::OnAuthFailure,
        ..Config::random(seed)
    });
}

/// Found by the simulator: a call that waited less than a lease lives gave
/// up on a crashed holder's lease (`lease-unavailable` with a 10 s wait and a
/// 40 s TTL, seeds failing liveness). The guest now lengthens such a wait to
/// outlast the TTL, so the same runs keep every property.
#[test]
fn a_lease_wait_shorter_than_the_ttl_is_lengthened_to_keep_liveness() {
    soak("(e) lease wait 10 s < TTL 40 s", 0..500, |seed| Config {
        ttl_ms: 40_000,
        wait_ms: 10_000,
        ..Config::random(seed)
    });
}

/// Found by the simulator: a 3.4 s token answer carrying a 5 s access token.
/// The guest counted `expires_in` (and the fresh window) from the answer's
/// arrival, so when the token expired 1.6 s later, at the provider's count,
/// the API's 401 looked like the rejection of a fresh token: every call
/// failed `rejected-after-refresh` until the window closed, faults or not.
#[test]
fn seed_2888_a_token_lifetime_counts_from_the_request() {
    // As they ran when found: the refresh grant with a client secret.
    let refresh = |seed| named(Config::random(seed), "refresh");
    soak("seed 2888", std::iter::once(2888), refresh);
    soak("seed 6495", std::iter::once(6495), refresh);
}
