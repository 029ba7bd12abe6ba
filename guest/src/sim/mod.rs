//! A deterministic simulator of the fleet protocol (issue #19).
//!
//! N workers run the guest's real routine (`flow::send`, unmodified) on OS
//! threads of their own, against one simulated world: a record store with
//! compare-and-swap whose calls stall past the lease TTL, fail, or land while
//! reporting failure; a provider that rotates refresh tokens, detects reuse
//! (optionally with a grace period), loses, delays and duplicates answers and
//! revokes grants out of band; worker crashes inside any effect call, pauses
//! past the lease TTL, and skewed wall clocks. Every effect call is a
//! scheduling point: the scheduler (`world`) serves one worker at a time,
//! picking among the ready events with a seeded generator (or enumerating
//! them, `rng::Dfs`), and simulated time advances only when nothing is
//! ready. A seed replays exactly.
//!
//! The properties (`check`) are checked after every step and at every call's
//! end; a violation is reported with its seed and the last events.
//!
//! The seed also picks the credential's grant (`Config::random`): most runs
//! spend rotating refresh tokens (the client secret in the form, or a
//! `private_key_jwt` assertion), the rest run the client's own grant
//! (client credentials) or the JWT bearer grant (RFC 7523 §2.1), whose
//! assertions the world signs with a fake key (`jwt`) and the provider
//! verifies, refusing a `jti` it has seen.
//!
//! `REKEY_SIM_SEEDS=N` runs N random seeds (a soak), `REKEY_SIM_SEED=s`
//! replays one (`REKEY_SIM_SABOTAGE=a|b|c|d|e` with a sabotage switched off),
//! `REKEY_SIM_GRANT=refresh|refresh-jwt|cc|cc-jwt|jwt-bearer|...` runs every
//! seed with one grant (`Config::grant_named`),
//! `REKEY_SIM_TRACE=N` shows the last N events of a violation, and
//! `REKEY_SIM_PREEMPTIONS=k` deepens the bounded enumerations.

mod answers;
mod check;
mod jwt;
mod provider;
mod rng;
mod serve;
mod store;
mod tests;
mod worker;
mod world;

pub use world::run;

use crate::fleet::sabotage::Off;
use crate::rekey::oauth2::types::Strategy;
use std::collections::BTreeMap;
use std::fmt;

/// The faults the world injects, each with its own probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A store call takes longer than the lease TTL (before or after it lands).
    StoreStall,
    /// The worker pauses longer than the lease TTL before an HTTP request
    /// (a suspended VM, a long GC).
    Pause,
    /// A read fails.
    ReadError,
    /// A write fails and nothing is written.
    WriteFailed,
    /// A write lands but reports `failed`.
    FailedButLanded,
    /// A write lands but reports `unknown`.
    UnknownLanded,
    /// A write reports `unknown` and nothing is written.
    UnknownLost,
    /// The token endpoint cannot be reached (nothing sent).
    Connect,
    /// 429 / 503: received, not processed.
    Busy,
    /// 500 before processing.
    Error500,
    /// Processed, answer lost: a timeout, a reset, a 502.
    Timeout,
    Reset,
    Lost502,
    /// Processed, answer late (within the host's timeout).
    Delay,
    /// The request is processed a second time later (a network duplicate).
    Duplicate,
    /// The provider revokes the grant out of band.
    Revoke,
    /// The worker dies inside an effect call, before or after its effect.
    CrashBefore,
    CrashAfter,
}

pub const FAULTS: [Fault; 18] = [
    Fault::StoreStall,
    Fault::Pause,
    Fault::ReadError,
    Fault::WriteFailed,
    Fault::FailedButLanded,
    Fault::UnknownLanded,
    Fault::UnknownLost,
    Fault::Connect,
    Fault::Busy,
    Fault::Error500,
    Fault::Timeout,
    Fault::Reset,
    Fault::Lost502,
    Fault::Delay,
    Fault::Duplicate,
    Fault::Revoke,
    Fault::CrashBefore,
    Fault::CrashAfter,
];

/// How the simulated credential gets new tokens (the settings' `grant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantKind {
    /// Spends the stored refresh token; the provider rotates it.
    RefreshToken,
    /// The client's own grant: nothing stored first, nothing spent.
    ClientCredentials,
    /// A signed assertion for a subject (RFC 7523 §2.1): like the client's
    /// own grant, with an assertion per request.
    JwtBearer,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Auth {
    SecretPost,
    SecretBasic,
    /// A signed client assertion (RFC 7523 §2.2); the settings hold a client
    /// secret too, which must never be sent.
    PrivateKeyJwt,
    /// No secret: `client_id` only (the JWT bearer grant's public client).
    Public,
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub workers: usize,
    /// Calls per worker while faults are on (a crash ends a call; the
    /// worker's next call is a fresh one).
    pub calls: u32,
    /// Calls per worker once faults have stopped (the liveness phase).
    pub calm_calls: u32,
    pub strategy: Strategy,
    /// The settings' lease TTL and wait (zero: the contract's default).
    pub ttl_ms: u32,
    pub wait_ms: u32,
    /// Per-mille probability of each fault where it can happen.
    pub faults: [u32; FAULTS.len()],
    /// The provider accepts a just-rotated refresh token again this long.
    pub grace_ms: u64,
    /// Each worker's wall clock is off by up to this much, either way.
    pub skew_ms: u64,
    pub access_ttl_ms: u64,
    pub first_access_valid_ms: u64,
    /// Longest pause between a worker's calls.
    pub think_ms: u64,
    /// Every latency is zero (enumeration: time moves only by sleeps).
    pub zero_latency: bool,
    /// Enumerated crashes: at each effect call, while any are left, the
    /// chooser branches on no crash / crash before / crash after it.
    pub crashes: u32,
    /// Rules switched off (sabotage).
    pub off: Off,
    pub grant: GrantKind,
    pub auth: Auth,
    /// The assertions are ES256 (else RS256), carry a `kid`, and name the
    /// issuer as their audience (else the token URL).
    pub es256: bool,
    pub key_id: bool,
    pub audience_issuer: bool,
    /// Client credentials / JWT bearer: nothing is stored before the first
    /// call (else an access token without a refresh token).
    pub start_empty: bool,
    /// The provider sends a refresh token with the client's own grant too
    /// (RFC 6749 §4.4.3 says it should not).
    pub stray_refresh: bool,
    /// Sabotage of the world, not the guest: the host's random source
    /// repeats itself, so assertions repeat their `jti`.
    pub stuck_random: bool,
}

/// The grant picker's own stream, so that the rest of a seed's world is
/// what it was before the simulator ran other grants.
const GRANT_STREAM: u64 = 0x6772_616e_745f_7069;

/// Lease TTL and wait used unless a test says otherwise.
pub const TTL_MS: u32 = 15_000;
pub const WAIT_MS: u32 = 20_000;
/// The host's HTTP total timeout (must stay below the TTL).
pub const HTTP_TIMEOUT_MS: u64 = 4_000;
/// The longest honest token-endpoint answer (a delayed one).
pub const TOKEN_ANSWER_MAX_MS: u64 = 3_500;

impl Config {
    /// No faults, three workers, two calls each: tests adjust from here.
    pub fn calm(seed: u64) -> Config {
        Config {
            seed,
            workers: 3,
            calls: 2,
            calm_calls: 1,
            strategy: Strategy::OnAuthFailure,
            ttl_ms: TTL_MS,
            wait_ms: WAIT_MS,
            faults: [0; FAULTS.len()],
            grace_ms: 0,
            skew_ms: 0,
            access_ttl_ms: 60_000,
            first_access_valid_ms: 0,
            think_ms: 2_000,
            zero_latency: false,
            crashes: 0,
            off: Off::default(),
            grant: GrantKind::RefreshToken,
            auth: Auth::SecretPost,
            es256: true,
            key_id: false,
            audience_issuer: false,
            start_empty: false,
            stray_refresh: false,
            stuck_random: false,
        }
    }

    /// A random world for this seed: sizes, strategy, provider and faults.
    pub fn random(seed: u64) -> Config {
        let mut r = rng::Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut faults = [0; FAULTS.len()];
        // One seed in five runs fault-free; the rest switch each fault on
        // with probability one half.
        if !r.chance(200) {
            for (i, f) in FAULTS.iter().enumerate() {
                if r.chance(500) {
                    faults[i] = match f {
                        Fault::CrashBefore
                        | Fault::CrashAfter
                        | Fault::StoreStall
                        | Fault::Pause => r.range(5, 30) as u32,
                        Fault::Revoke => 300,
                        _ => r.range(10, 120) as u32,
                    };
                }
            }
        }
        let access_ttl_ms = [5_000, 20_000, 60_000, 600_000][r.below(4) as usize];
        // One run in four on the contract's defaults (40 s / 60 s).
        let defaults = r.chance(250);
        // Seven seeds in ten spend refresh tokens with a client secret, as
        // every seed did before; the others draw their grant and client
        // authentication from a stream of their own.
        let mut g = rng::Rng::new(seed ^ GRANT_STREAM);
        let (grant, auth) = match g.below(100) {
            0..70 => (GrantKind::RefreshToken, Auth::SecretPost),
            70..78 => (GrantKind::RefreshToken, Auth::PrivateKeyJwt),
            78..89 => (
                GrantKind::ClientCredentials,
                [Auth::SecretBasic, Auth::SecretPost, Auth::PrivateKeyJwt][g.below(3) as usize],
            ),
            _ => (
                GrantKind::JwtBearer,
                [Auth::Public, Auth::SecretBasic, Auth::PrivateKeyJwt][g.below(3) as usize],
            ),
        };
        Config {
            seed,
            workers: r.range(2, 6) as usize,
            calls: r.range(2, 5) as u32,
            calm_calls: r.range(1, 2) as u32,
            strategy: match r.below(10) {
                0..=5 => Strategy::OnAuthFailure,
                6 | 7 => Strategy::EveryRequest,
                _ => Strategy::BeforeExpiry(r.range(0, 60) as u32),
            },
            ttl_ms: if defaults { 0 } else { TTL_MS },
            wait_ms: if defaults { 0 } else { WAIT_MS },
            faults,
            grace_ms: if r.chance(500) {
                0
            } else {
                r.range(1_000, 5_000)
            },
            skew_ms: r.range(0, 500),
            access_ttl_ms,
            first_access_valid_ms: r.range(0, access_ttl_ms),
            think_ms: r.range(0, 3_000),
            zero_latency: false,
            crashes: 0,
            off: Off::default(),
            grant,
            auth,
            es256: g.chance(500),
            key_id: g.chance(500),
            audience_issuer: g.chance(500),
            start_empty: g.chance(500),
            stray_refresh: g.chance(300),
            stuck_random: false,
        }
    }

    /// This world with another grant (`REKEY_SIM_GRANT`): `refresh`,
    /// `refresh-jwt` (private_key_jwt), `cc` (secret, Basic), `cc-post`,
    /// `cc-jwt`, `jwt-bearer` (public client), `jwt-bearer-basic`,
    /// `jwt-bearer-jwt`.
    pub fn grant_named(self, name: &str) -> Option<Config> {
        let (grant, auth) = match name {
            "refresh" => (GrantKind::RefreshToken, Auth::SecretPost),
            "refresh-jwt" => (GrantKind::RefreshToken, Auth::PrivateKeyJwt),
            "cc" => (GrantKind::ClientCredentials, Auth::SecretBasic),
            "cc-post" => (GrantKind::ClientCredentials, Auth::SecretPost),
            "cc-jwt" => (GrantKind::ClientCredentials, Auth::PrivateKeyJwt),
            "jwt-bearer" => (GrantKind::JwtBearer, Auth::Public),
            "jwt-bearer-basic" => (GrantKind::JwtBearer, Auth::SecretBasic),
            "jwt-bearer-jwt" => (GrantKind::JwtBearer, Auth::PrivateKeyJwt),
            _ => return None,
        };
        Some(Config {
            grant,
            auth,
            ..self
        })
    }

    /// Whether a renewal spends the stored refresh token.
    pub fn spends(&self) -> bool {
        self.grant == GrantKind::RefreshToken
    }

    /// Whether the token requests carry signed assertions.
    pub fn signs(&self) -> bool {
        self.auth == Auth::PrivateKeyJwt || self.grant == GrantKind::JwtBearer
    }

    /// The grant and client authentication, as the statistics count them.
    pub fn grant_name(&self) -> &'static str {
        match (self.grant, self.auth) {
            (GrantKind::RefreshToken, Auth::PrivateKeyJwt) => "refresh-token+private_key_jwt",
            (GrantKind::RefreshToken, _) => "refresh-token",
            (GrantKind::ClientCredentials, Auth::PrivateKeyJwt) => {
                "client-credentials+private_key_jwt"
            }
            (GrantKind::ClientCredentials, _) => "client-credentials",
            (GrantKind::JwtBearer, Auth::PrivateKeyJwt) => "jwt-bearer+private_key_jwt",
            (GrantKind::JwtBearer, _) => "jwt-bearer",
        }
    }

    pub fn p(&self, f: Fault) -> u32 {
        self.faults[FAULTS.iter().position(|g| *g == f).unwrap()]
    }
}

/// What runs covered, summed over seeds.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub runs: u64,
    pub steps: u64,
    pub calls: u64,
    pub calm_calls: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<Fault, u64>,
    pub token_requests: u64,
    pub rotations: u64,
    pub sim_ms: u64,
    pub longest_call_ms: u64,
    pub longest_calm_call_ms: u64,
    /// Runs that ended in doubt although the stored refresh token was never
    /// presented (a mark whose write's outcome its holder could not learn).
    pub needless_doubts: u64,
    /// Runs per grant (and client authentication).
    pub grants: BTreeMap<&'static str, u64>,
    /// Access tokens the client's own grants (client credentials, JWT
    /// bearer) were issued.
    pub fetches: u64,
    /// Signed assertions the workers sent, each with its own `jti`.
    pub assertions: u64,
    /// Network duplicates the provider refused for their replayed `jti`.
    pub replays_refused: u64,
    /// Token requests of the client's own grants sent after a lost answer
    /// in the same call (the loss simply retried).
    pub retried_after_loss: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.runs += o.runs;
        self.steps += o.steps;
        self.calls += o.calls;
        self.calm_calls += o.calm_calls;
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in &o.faults {
            *self.faults.entry(*k).or_default() += v;
        }
        self.token_requests += o.token_requests;
        self.rotations += o.rotations;
        self.sim_ms += o.sim_ms;
        self.longest_call_ms = self.longest_call_ms.max(o.longest_call_ms);
        self.longest_calm_call_ms = self.longest_calm_call_ms.max(o.longest_calm_call_ms);
        self.needless_doubts += o.needless_doubts;
        for (k, v) in &o.grants {
            *self.grants.entry(k).or_default() += v;
        }
        self.fetches += o.fetches;
        self.assertions += o.assertions;
        self.replays_refused += o.replays_refused;
        self.retried_after_loss += o.retried_after_loss;
    }

    pub fn fault(&mut self, f: Fault) {
        *self.faults.entry(f).or_default() += 1;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |m: Vec<(String, u64)>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(
            f,
            "{} runs ({}), {} steps, {} calls ({} after faults stopped), {} token requests, {} rotations, \
             {} tokens fetched by the client's own grants ({} requests after a lost answer), \
             {} assertions ({} replays refused), \
             {:.0} s simulated, longest call {:.1} s (after faults {:.1} s), {} runs left in doubt with \
             the stored token unspent; outcomes: {}; faults ({} kinds): {}",
            self.runs,
            list(
                self.grants
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            ),
            self.steps,
            self.calls,
            self.calm_calls,
            self.token_requests,
            self.rotations,
            self.fetches,
            self.retried_after_loss,
            self.assertions,
            self.replays_refused,
            self.sim_ms as f64 / 1000.0,
            self.longest_call_ms as f64 / 1000.0,
            self.longest_calm_call_ms as f64 / 1000.0,
            self.needless_doubts,
            list(
                self.outcomes
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            ),
            self.faults.len(),
            list(
                self.faults
                    .iter()
                    .map(|(k, v)| (format!("{k:?}"), *v))
                    .collect()
            ),
        )
    }
}

/// A property that did not hold.
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    /// The run's grant (`Config::grant_name`).
    pub grant: &'static str,
    pub what: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VIOLATION (seed {}, {}; replay: REKEY_SIM_SEED={} cargo test -p rekey-guest sim::tests::replay -- --nocapture, with the REKEY_SIM_GRANT of a one-grant soak):\n  {}\n  last {} events:",
            self.seed,
            self.grant,
            self.seed,
            self.what,
            self.trace.len()
        )?;
        for line in &self.trace {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}
