//! The scheduler and the world it runs: time, the store, the provider, the
//! faults, and the workers parked at their effect calls.
//!
//! Each worker is parked at an effect call (an `Op`, applied when the
//! scheduler picks it), waiting for an answer due at some time (a `Reply`),
//! or between calls. Answers due now are delivered at once (a worker's steps
//! between effect calls touch nothing shared, so that order never matters);
//! the choice is which ready effect is applied next. When nothing is ready,
//! time jumps to the next due event.

use super::check::{self, Call, Judged, Ledger, MAX_OPS};
use super::jwt;
use super::provider::{ISSUER, Provider, TOKEN_URL};
use super::rng::{Chooser, Rng};
use super::store::Store;
use super::worker::{Next, Op, Outcome, Random, Reply, Worker};
use super::{Auth, Config, Fault, GrantKind, Stats, Violation};
use crate::fleet::Timing;
use crate::http::Request;
use crate::rekey::oauth2::types::{
    ClientAuth, FleetTiming, Grant, JwtBearer, Purpose, Settings, Signing, SigningAlgorithm,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Simulated wall clock at the start (Unix ms).
const EPOCH_MS: u64 = 1_700_000_000_000;
/// A run that takes more steps than this is looping.
const MAX_STEPS: u64 = 2_000_000;
const API_URL: &str = "http://127.0.0.1:9/api";
/// The client of the grants other than the refresh grant with a secret
/// (which keeps `testing::settings`' client), its secret (characters that
/// need encoding), and the JWT bearer grant's subject and claim.
const CLIENT_ID: &str = "sim-client";
const CLIENT_SECRET: &str = "s3cret&=+ /%";
const SUBJECT: &str = "svc-account@sim";
const SUBJECT_CLAIM: (&str, &str) = ("scope", "sim.read");

pub(super) enum St {
    /// Between calls; the next starts at this time.
    Idle(u64),
    /// Done with this phase's calls; waiting for faults to stop.
    Waiting,
    Op(Op, u64),
    Reply(Reply, u64),
    Done,
}

pub(super) struct Slot {
    pub(super) worker: Worker,
    pub(super) st: St,
    pub(super) call: Option<Call>,
    /// Calls left in this phase.
    pub(super) left: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ready {
    Worker(usize),
    Event(usize),
}

pub(super) enum Event {
    /// A duplicate of a token request reaches the provider.
    Duplicate(Request),
    Revoke,
}

pub struct Sim<'a> {
    pub(super) cfg: &'a Config,
    pub(super) chooser: &'a mut dyn Chooser,
    pub(super) rng: Rng,
    pub(super) now: u64,
    pub(super) clock: Arc<AtomicU64>,
    pub(super) store: Store,
    pub(super) provider: Provider,
    pub(super) slots: Vec<Slot>,
    pub(super) events: Vec<(u64, Event)>,
    pub(super) calm: bool,
    pub(super) ledger: Ledger,
    pub(super) trace: VecDeque<String>,
    pub(super) trace_len: usize,
    pub(super) stats: Stats,
    pub(super) last: Option<usize>,
    pub(super) calls: u64,
    pub(super) crashes_left: u32,
    /// The lease TTL and wait in effect (zeros mean the defaults).
    pub(super) timing: Timing,
    /// Every worker's settings.
    pub(super) settings: Settings,
}

/// Runs one simulation; `chooser` picks among ready events.
pub fn run(cfg: &Config, chooser: &mut dyn Chooser) -> Result<Stats, Violation> {
    let mut sim = Sim::new(cfg, chooser);
    let result = sim.main();
    sim.stats.runs = 1;
    sim.stats.grants.insert(cfg.grant_name(), 1);
    sim.stats.sim_ms = sim.now - EPOCH_MS;
    match result {
        Ok(()) => Ok(std::mem::take(&mut sim.stats)),
        Err(what) => Err(Violation {
            seed: cfg.seed,
            grant: cfg.grant_name(),
            what,
            trace: sim.trace.drain(..).collect(),
        }),
    }
}

fn settings(cfg: &Config) -> Settings {
    let base = Settings {
        grant: Grant::RefreshToken,
        token_url: TOKEN_URL.into(),
        strategy: cfg.strategy,
        fleet: FleetTiming {
            lease_ttl_ms: cfg.ttl_ms,
            lease_wait_ms: cfg.wait_ms,
        },
        ..crate::testing::settings()
    };
    if cfg.grant == GrantKind::RefreshToken && cfg.auth == Auth::SecretPost {
        return base;
    }
    let grant = match cfg.grant {
        GrantKind::RefreshToken => Grant::RefreshToken,
        GrantKind::ClientCredentials => Grant::ClientCredentials,
        GrantKind::JwtBearer => Grant::JwtBearer(JwtBearer {
            subject: SUBJECT.into(),
            claims: vec![(SUBJECT_CLAIM.0.into(), SUBJECT_CLAIM.1.into())],
        }),
    };
    // With private_key_jwt the settings keep a secret too: it must never be sent.
    let (client_auth, client_secret) = match cfg.auth {
        Auth::SecretPost => (ClientAuth::ClientSecretPost, Some(CLIENT_SECRET.into())),
        Auth::SecretBasic => (ClientAuth::ClientSecretBasic, Some(CLIENT_SECRET.into())),
        Auth::PrivateKeyJwt => (ClientAuth::PrivateKeyJwt, Some(CLIENT_SECRET.into())),
        Auth::Public => (ClientAuth::ClientSecretBasic, None),
    };
    let signing = cfg.signs().then(|| Signing {
        algorithm: if cfg.es256 {
            SigningAlgorithm::Es256
        } else {
            SigningAlgorithm::Rs256
        },
        key_id: cfg.key_id.then(|| jwt::KID.into()),
        audience: cfg.audience_issuer.then(|| ISSUER.into()),
    });
    Settings {
        grant,
        client_id: CLIENT_ID.into(),
        client_secret,
        client_auth,
        signing,
        ..base
    }
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a Config, chooser: &'a mut dyn Chooser) -> Sim<'a> {
        let mut rng = Rng::new(cfg.seed);
        let clock = Arc::new(AtomicU64::new(EPOCH_MS));
        let req = Request {
            method: "GET".into(),
            url: API_URL.into(),
            headers: vec![],
            body: vec![],
        };
        let slots = (0..cfg.workers)
            .map(|w| {
                let skew = rng.range(0, 2 * cfg.skew_ms) as i64 - cfg.skew_ms as i64;
                let worker = Worker::spawn(
                    w,
                    settings(cfg),
                    req.clone(),
                    clock.clone(),
                    skew,
                    Random {
                        seed: rng.next_u64(),
                        stuck: cfg.stuck_random,
                    },
                    cfg.off,
                );
                Slot {
                    worker,
                    st: St::Idle(if cfg.zero_latency {
                        EPOCH_MS
                    } else {
                        EPOCH_MS + rng.range(0, cfg.think_ms)
                    }),
                    call: None,
                    left: cfg.calls,
                }
            })
            .collect();
        let expires_at = (EPOCH_MS + cfg.first_access_valid_ms) / 1000;
        // The client's own grants start with nothing stored, or with an
        // access token and no refresh token.
        let keys = match cfg.grant {
            GrantKind::RefreshToken => Some(format!(
                r#"{{"access_token":"at0","refresh_token":"rt0","expires_at":{expires_at}}}"#
            )),
            _ if cfg.start_empty => None,
            _ => Some(format!(
                r#"{{"access_token":"at0","expires_at":{expires_at}}}"#
            )),
        };
        let store = Store::new(keys);
        let ledger = Ledger::new(&store.data, cfg.spends());
        let mut events = Vec::new();
        let mut stats = Stats::default();
        if rng.chance(cfg.p(Fault::Revoke)) {
            events.push((EPOCH_MS + rng.range(0, 60_000), Event::Revoke));
            stats.fault(Fault::Revoke);
        }
        let trace_len = std::env::var("REKEY_SIM_TRACE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        Sim {
            cfg,
            chooser,
            rng,
            now: EPOCH_MS,
            clock,
            store,
            provider: Provider::new(
                EPOCH_MS,
                cfg.first_access_valid_ms,
                cfg.grace_ms,
                cfg.access_ttl_ms,
                settings(cfg),
                cfg.stray_refresh,
            ),
            slots,
            events,
            calm: false,
            ledger,
            trace: VecDeque::new(),
            trace_len,
            stats,
            last: None,
            calls: 0,
            crashes_left: cfg.crashes,
            timing: Timing::of(&settings(cfg).fleet),
            settings: settings(cfg),
        }
    }

    fn main(&mut self) -> Result<(), String> {
        loop {
            self.deliver()?;
            self.maybe_calm();
            let ready = self.ready();
            if ready.is_empty() {
                match self.next_due() {
                    Some(t) => {
                        self.now = t;
                        self.clock.store(t, Ordering::SeqCst);
                        continue;
                    }
                    None => break,
                }
            }
            let current = self
                .last
                .and_then(|w| ready.iter().position(|r| *r == Ready::Worker(w)));
            let pick = ready[self.chooser.pick(ready.len(), current)];
            match pick {
                Ready::Worker(w) => self.apply(w)?,
                Ready::Event(e) => self.event(e),
            }
            self.stats.steps += 1;
            if self.stats.steps > MAX_STEPS {
                return Err(format!("the run took more than {MAX_STEPS} steps"));
            }
            self.check_calls()?;
        }
        let (stored, _) = check::generations(&self.store.data);
        if self.store.data.refresh_mark.is_some()
            && !stored.is_some_and(|g| self.ledger.maybe_spent(g))
        {
            self.stats.needless_doubts += 1;
        }
        self.ledger.final_state(&self.store, &self.provider)
    }

    pub(super) fn note(&mut self, w: Option<usize>, what: String) {
        let who = match w.and_then(|w| Some((w, self.slots[w].call.as_ref()?.id))) {
            Some((w, c)) => format!("w{w} c{c}"),
            None => "world".into(),
        };
        self.note_as(who, what);
    }

    fn note_as(&mut self, who: String, what: String) {
        let t = (self.now - EPOCH_MS) as f64 / 1000.0;
        self.trace.push_back(format!("{t:>9.3}s {who:>9}  {what}"));
        while self.trace.len() > self.trace_len {
            self.trace.pop_front();
        }
    }

    pub(super) fn latency(&mut self, lo: u64, hi: u64) -> u64 {
        if self.cfg.zero_latency {
            0
        } else {
            self.rng.range(lo, hi)
        }
    }

    /// The pause before a worker's next call (exactly `think_ms` under zero
    /// latency, so that enumerated runs line up).
    fn think(&mut self) -> u64 {
        if self.cfg.zero_latency {
            self.cfg.think_ms
        } else {
            self.rng.range(0, self.cfg.think_ms)
        }
    }

    /// Faults happen only before the calm phase.
    pub(super) fn fault(&mut self, f: Fault) -> bool {
        let hit = !self.calm && self.rng.chance(self.cfg.p(f));
        if hit {
            self.stats.fault(f);
        }
        hit
    }

    /// Starts calls that are due and delivers answers that are due.
    fn deliver(&mut self) -> Result<(), String> {
        loop {
            let mut progressed = false;
            for w in 0..self.slots.len() {
                let next = match &self.slots[w].st {
                    St::Idle(at) if *at <= self.now => {
                        self.slots[w].left -= 1;
                        self.calls += 1;
                        self.slots[w].call = Some(Call::new(self.calls, self.now, self.calm));
                        self.note(Some(w), "call starts".into());
                        self.slots[w].worker.start()?
                    }
                    St::Reply(_, at) if *at <= self.now => {
                        let St::Reply(reply, _) =
                            std::mem::replace(&mut self.slots[w].st, St::Done)
                        else {
                            unreachable!()
                        };
                        self.slots[w].worker.answer(reply)?
                    }
                    _ => continue,
                };
                progressed = true;
                self.parked(w, next)?;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// The worker reached its next effect call, or ended its call.
    fn parked(&mut self, w: usize, next: Next) -> Result<(), String> {
        let op = match next {
            Next::Done(outcome) => return self.ended(w, outcome),
            Next::Op(op) => op,
        };
        let call = self.slots[w].call.as_mut().expect("a call is running");
        call.ops += 1;
        if call.ops > MAX_OPS {
            return Err(format!("a call made more than {MAX_OPS} effect calls"));
        }
        let due = match &op {
            Op::Sleep(d) => {
                let at = self.now + d.as_millis() as u64;
                self.note(Some(w), format!("sleeps {} ms", d.as_millis()));
                self.slots[w].st = St::Reply(Reply::Slept, at);
                return Ok(());
            }
            Op::Read | Op::Write(..) => self.stall(w, 0, 20),
            Op::Http(Purpose::TokenEndpoint, _) => self.stall_by(Fault::Pause, w, 0, 50),
            Op::Http(..) => self.stall_by(Fault::Pause, w, 0, 10),
        };
        self.slots[w].st = St::Op(op, self.now + due);
        Ok(())
    }

    fn ready(&self) -> Vec<Ready> {
        let workers = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(w, s)| match s.st {
                St::Op(_, at) if at <= self.now => Some(Ready::Worker(w)),
                _ => None,
            });
        let events = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, (at, _))| *at <= self.now)
            .map(|(e, _)| Ready::Event(e));
        workers.chain(events).collect()
    }

    fn next_due(&self) -> Option<u64> {
        let slots = self.slots.iter().filter_map(|s| match s.st {
            St::Idle(at) | St::Op(_, at) | St::Reply(_, at) => Some(at),
            St::Waiting | St::Done => None,
        });
        slots.chain(self.events.iter().map(|(at, _)| *at)).min()
    }

    /// When every worker has finished its calls under faults and nothing is
    /// in flight, faults stop and each worker makes its calm calls.
    fn maybe_calm(&mut self) {
        let all_waiting = self.slots.iter().all(|s| matches!(s.st, St::Waiting));
        if self.calm || !all_waiting || !self.events.is_empty() {
            return;
        }
        self.calm = true;
        self.note(None, "faults stop".into());
        for w in 0..self.slots.len() {
            let at = self.now + self.think();
            let s = &mut self.slots[w];
            s.left = self.cfg.calm_calls;
            s.st = if s.left > 0 { St::Idle(at) } else { St::Done };
        }
    }

    fn ended(&mut self, w: usize, outcome: Outcome) -> Result<(), String> {
        let call = self.slots[w].call.take().expect("a call was running");
        let took = self.now - call.started;
        let kind = outcome_kind(&outcome);
        self.stats.calls += 1;
        *self.stats.outcomes.entry(kind).or_default() += 1;
        if call.calm {
            self.stats.calm_calls += 1;
            self.stats.longest_calm_call_ms = self.stats.longest_calm_call_ms.max(took);
        } else {
            self.stats.longest_call_ms = self.stats.longest_call_ms.max(took);
        }
        let detail = match &outcome {
            Outcome::Returned(Err(e)) => format!(": {e:?}"),
            Outcome::Panicked(m) => format!(": {m}"),
            _ => String::new(),
        };
        self.note_as(
            format!("w{w} c{}", call.id),
            format!("call ends after {took} ms: {kind}{detail}"),
        );
        let mark_orphaned = match &self.store.data.refresh_mark {
            Some(m) => match self.ledger.holders.get(&m.holder) {
                Some(&(hw, hc)) => self.slots[hw].call.as_ref().is_none_or(|c| c.id != hc),
                None => true,
            },
            None => true,
        };
        check::judge(&Judged {
            call: &call,
            outcome: &outcome,
            store: &self.store,
            provider: &self.provider,
            mark_orphaned,
            now: self.now,
            ttl_ms: self.timing.ttl_ms,
            spends: self.cfg.spends(),
        })?;
        self.ledger.nothing_lost(&call, &self.store)?;
        let at = self.now + self.think();
        let s = &mut self.slots[w];
        s.st = match (s.left, self.calm) {
            (0, false) => St::Waiting,
            (0, true) => St::Done,
            _ => St::Idle(at),
        };
        Ok(())
    }

    /// No call runs past its bound (a call that waits forever, or loops).
    fn check_calls(&self) -> Result<(), String> {
        for s in &self.slots {
            if let Some(c) = &s.call {
                let bound = check::bound_ms(self.timing, c);
                if self.now - c.started > bound {
                    return Err(format!(
                        "call {} has run {} ms, past its bound of {bound} ms",
                        c.id,
                        self.now - c.started
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn opt(g: Option<u64>) -> String {
    g.map_or("-".into(), |g| g.to_string())
}

pub fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Returned(Ok(_)) => "ok",
        Outcome::Crashed => "crashed",
        Outcome::Panicked(_) => "panicked",
        Outcome::Returned(Err(e)) => e.kind(),
    }
}
