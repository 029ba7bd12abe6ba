//! The properties, and the bookkeeping they need.
//!
//! - A refresh token is spent by one call only: after a call presented it
//!   (unless the answer proved it unprocessed: 429, 503, no connection), no
//!   other call presents it, and that call presents it again only as the one
//!   prompt retry after an unanswered attempt.
//! - The store never goes back to an older token set, and every rotated
//!   refresh token a worker received is stored or the credential is marked in
//!   doubt (checked when the call ends, and for the whole run at its end: the
//!   stored refresh token is the provider's live one, or the record says why
//!   not).
//! - At the token endpoint, a call makes at most three attempts plus the
//!   one prompt retry after an attempt that may have been processed.
//! - Every call ends, within bounds, in success or a send error the world
//!   can explain: `reauthorization-required` only for a revoked grant,
//!   `refresh-in-doubt` only when the mark's holder is gone (or a fault made
//!   it too slow), nothing about settings, keys or authentication.
//! - Once faults stop, calls succeed within one lease TTL plus the
//!   provider's answer time, unless the credential is in doubt or dead.

use super::TOKEN_ANSWER_MAX_MS;
use super::provider::{Provider, generation};
use super::store::Store;
use super::worker::Outcome;
use crate::fleet::{MAX_POLL, Timing};
use crate::flow::TOKEN_ATTEMPTS;
use crate::keys::Keys;
use crate::rekey::oauth2::types::CredentialRecord;
use std::collections::{BTreeMap, BTreeSet};

/// Effect calls one call may make before it counts as looping.
pub const MAX_OPS: u32 = 1_000;

/// One call in progress.
#[derive(Debug)]
pub struct Call {
    pub id: u64,
    pub started: u64,
    pub ops: u32,
    /// Started after faults stopped.
    pub calm: bool,
    /// This call sent a token request.
    pub sent_token: bool,
    /// Token requests this call sent, and how many it had sent when an
    /// answer said its attempt may have been processed (5xx but 503, a
    /// timeout, a reset).
    pub token_requests: u32,
    pub unanswered_after: Option<u32>,
    /// Stall faults hit this call (ms): it may lose its lease honestly.
    pub stalled_ms: u64,
    /// Refresh token generations this call received.
    pub received: Vec<u64>,
    /// Its last read showed a refresh mark under a lease whose holder was
    /// still working and not slowed by a fault; or it was itself stalled.
    pub saw_live_mark: bool,
    pub last_read_stalled: bool,
}

impl Call {
    pub fn new(id: u64, started: u64, calm: bool) -> Call {
        Call {
            id,
            started,
            ops: 0,
            calm,
            sent_token: false,
            token_requests: 0,
            unanswered_after: None,
            stalled_ms: 0,
            received: Vec::new(),
            saw_live_mark: false,
            last_read_stalled: false,
        }
    }
}

/// Who spent a refresh token.
struct Spend {
    call: u64,
    presentations: u32,
    /// The call got a definite answer for it (tokens or a refusal).
    answered: bool,
}

#[derive(Default)]
pub struct Ledger {
    spent: BTreeMap<u64, Spend>,
    /// Every refresh token generation a write put in the store.
    stored: BTreeSet<u64>,
    /// Holder id -> (worker, call).
    pub holders: BTreeMap<String, (usize, u64)>,
}

/// (refresh, access) generations of a stored token set.
pub fn generations(record: &CredentialRecord) -> (Option<u64>, Option<u64>) {
    let Some(keys) = record.keys.as_deref().and_then(|k| Keys::parse(k).ok()) else {
        return (None, None);
    };
    (
        keys.refresh_token().and_then(|t| generation(t, "rt")),
        keys.access_token().and_then(|t| generation(t, "at")),
    )
}

impl Ledger {
    pub fn new(initial: &CredentialRecord) -> Ledger {
        let mut l = Ledger::default();
        l.stored.extend(generations(initial).0);
        l
    }

    /// Call `call` presents refresh token `rgen`; `spends`: unless the answer
    /// proves it was not processed.
    pub fn present(&mut self, rgen: u64, call: u64, spends: bool) -> Result<(), String> {
        if let Some(s) = self.spent.get_mut(&rgen) {
            if s.call != call {
                return Err(format!(
                    "rt{rgen} presented by call {call}, but call {} already spent it",
                    s.call
                ));
            }
            if s.answered {
                return Err(format!(
                    "rt{rgen} presented again by call {call} after a definite answer"
                ));
            }
            if spends && s.presentations >= 2 {
                return Err(format!(
                    "rt{rgen} presented a third time by call {call} (one prompt retry at most)"
                ));
            }
        }
        if spends {
            let s = self.spent.entry(rgen).or_insert(Spend {
                call,
                presentations: 0,
                answered: false,
            });
            s.presentations += 1;
        }
        Ok(())
    }

    /// Whether this refresh token was ever presented in a way that may
    /// have spent it.
    pub fn maybe_spent(&self, rgen: u64) -> bool {
        self.spent.contains_key(&rgen)
    }

    pub fn answered(&mut self, rgen: u64) {
        if let Some(s) = self.spent.get_mut(&rgen) {
            s.answered = true;
        }
    }

    /// A write landed: the store must not go back to older tokens.
    pub fn landed(
        &mut self,
        old: &CredentialRecord,
        new: &CredentialRecord,
        who: (usize, u64),
    ) -> Result<(), String> {
        let (old_r, old_a) = generations(old);
        let (new_r, new_a) = generations(new);
        if new_r < old_r || new_a < old_a {
            let g = |g: Option<u64>| g.map_or("-".into(), |g| g.to_string());
            return Err(format!(
                "the store went back from rt{}/at{} to rt{}/at{}",
                g(old_r),
                g(old_a),
                g(new_r),
                g(new_a)
            ));
        }
        self.stored.extend(new_r);
        if let Some(l) = &new.lease {
            self.holders.entry(l.holder.clone()).or_insert(who);
        }
        Ok(())
    }

    /// What a call leaves behind: every refresh token it received is stored,
    /// or the record carries a mark.
    pub fn nothing_lost(&self, call: &Call, store: &Store) -> Result<(), String> {
        for g in &call.received {
            if !self.stored.contains(g) && store.data.refresh_mark.is_none() {
                return Err(format!(
                    "call {} received rt{g}, which was never stored, and no mark says the \
                     credential is in doubt",
                    call.id
                ));
            }
        }
        Ok(())
    }

    /// The end of the run: the stored refresh token is the provider's live
    /// one, or the record says why not.
    pub fn final_state(&self, store: &Store, provider: &Provider) -> Result<(), String> {
        let rec = &store.data;
        if rec.dead_grant.is_some() && provider.revoked.is_none() {
            return Err("a dead grant is recorded, but the provider never revoked it".into());
        }
        let (stored, _) = generations(rec);
        let explained =
            rec.refresh_mark.is_some() || rec.dead_grant.is_some() || provider.revoked.is_some();
        if !explained && stored != Some(provider.head) {
            return Err(format!(
                "the store holds rt{stored:?} but the provider's live token is rt{}: a rotated \
                 token was lost and nothing marks the credential in doubt",
                provider.head
            ));
        }
        Ok(())
    }
}

/// The longest a call may take once faults have stopped: a lease left by a
/// crashed worker runs out (TTL), another worker's refresh (one answer) is
/// waited for and adopted, this call's own refresh (another), plus a poll
/// interval each and store/API latencies.
pub fn calm_bound_ms(ttl_ms: u64) -> u64 {
    let poll = MAX_POLL.as_millis() as u64 * 3 / 2;
    ttl_ms + 2 * TOKEN_ANSWER_MAX_MS + 2 * poll + 1_000
}

/// The longest any call may take: three renewals that each wait out the
/// lease, three token attempts with timeouts and backoff, the keys write's
/// retries, plus whatever stalls the call met.
pub fn bound_ms(timing: Timing, call: &Call) -> u64 {
    3 * (timing.wait_ms + 2_000) + timing.ttl_ms * 3 + call.stalled_ms
}

/// The retry rules at the token endpoint (RFC 6749 §5.2 and the contract's
/// `refresh-in-doubt`): at most `TOKEN_ATTEMPTS` attempts, plus exactly one
/// prompt retry after an attempt that may have been processed, and nothing
/// after that retry.
pub fn token_request(call: &mut Call) -> Result<(), String> {
    call.sent_token = true;
    call.token_requests += 1;
    let n = call.token_requests;
    if n > TOKEN_ATTEMPTS + 1 {
        return Err(format!("call {} sent {n} token requests", call.id));
    }
    if let Some(k) = call.unanswered_after
        && n > k + 1
    {
        return Err(format!(
            "call {} sent a token request after the one retry that follows an unanswered attempt",
            call.id
        ));
    }
    Ok(())
}

/// How a call's result is explained by the world.
pub struct Judged<'a> {
    pub call: &'a Call,
    pub outcome: &'a Outcome,
    pub store: &'a Store,
    pub provider: &'a Provider,
    /// The record's mark belongs to a call that has ended (or there is none).
    pub mark_orphaned: bool,
    pub now: u64,
    pub ttl_ms: u64,
}

pub fn judge(j: &Judged) -> Result<(), String> {
    let revoked = j.provider.revoked.is_some();
    let err = match j.outcome {
        Outcome::Panicked(m) => return Err(format!("the protocol panicked: {m}")),
        Outcome::Crashed | Outcome::Returned(Ok(_)) => None,
        Outcome::Returned(Err(e)) => Some(e),
    };
    if let Some(e) = err {
        let kind = e.kind();
        let explained = [
            "token-endpoint",
            "refresh-in-doubt",
            "rejected-after-refresh",
            "keys-not-persisted",
            "lease-unavailable",
            "store-unavailable",
            "reauthorization-required",
        ];
        if !explained.contains(&kind) {
            return Err(format!(
                "a call ended in {e:?}, which nothing here explains"
            ));
        }
        if kind == "reauthorization-required" && !revoked {
            return Err(format!("{e:?}, but the provider never revoked the grant"));
        }
        if kind == "refresh-in-doubt"
            && !j.call.sent_token
            && j.call.saw_live_mark
            && !j.call.last_read_stalled
        {
            return Err(format!(
                "{e:?}, but the mark's holder was still refreshing, its lease run out \
                 without a fault"
            ));
        }
        if j.call.calm {
            let dead_or_doubt = revoked
                || (kind == "refresh-in-doubt"
                    && j.store.data.refresh_mark.is_some()
                    && j.mark_orphaned);
            if !dead_or_doubt {
                return Err(format!(
                    "after faults stopped, a call failed with {e:?} (not in doubt, not dead)"
                ));
            }
        }
    }
    let took = j.now - j.call.started;
    if j.call.calm && took > calm_bound_ms(j.ttl_ms) {
        return Err(format!(
            "after faults stopped, a call took {took} ms (bound {} ms)",
            calm_bound_ms(j.ttl_ms)
        ));
    }
    Ok(())
}
