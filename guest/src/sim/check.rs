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
//! - The client's own grants (client credentials, JWT bearer) spend nothing:
//!   no refresh token is ever stored (not even one the provider sends
//!   anyway) and no refresh mark set (checked at every write that lands),
//!   no token request presents a refresh token, no call ends in
//!   `refresh-in-doubt` or `reauthorization-required`, and a lost answer is
//!   simply retried: a call gives up at the token endpoint only after all
//!   its attempts, and never makes more.
//! - Signed assertions: every `jti` the fleet sends is new (whatever the
//!   retries, crashes and duplicates), and with `private_key_jwt` the client
//!   secret is in no token request. The provider checks the rest (signature,
//!   `iss`, `sub`, `aud`, `exp`, `iat`): a request it refuses as a real
//!   server would is a violation.

use super::TOKEN_ANSWER_MAX_MS;
use super::jwt;
use super::provider::{Form, Provider, generation};
use super::store::Store;
use super::worker::Outcome;
use crate::fleet::{MAX_POLL, Timing};
use crate::flow::TOKEN_ATTEMPTS;
use crate::http::Request;
use crate::keys::Keys;
use crate::rekey::oauth2::types::{ClientAuth, CredentialRecord, Settings};
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
    /// The renewals spend the stored refresh token (else the client's own
    /// grant: nothing is spent).
    spends: bool,
    /// Every assertion's `jti` -> the call that sent it.
    jtis: BTreeMap<String, u64>,
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

/// Whether the record's keys hold a refresh token.
fn holds_refresh_token(record: &CredentialRecord) -> bool {
    record
        .keys
        .as_deref()
        .and_then(|k| Keys::parse(k).ok())
        .is_some_and(|k| k.refresh_token().is_some())
}

impl Ledger {
    pub fn new(initial: &CredentialRecord, spends: bool) -> Ledger {
        let mut l = Ledger {
            spends,
            ..Ledger::default()
        };
        l.stored.extend(generations(initial).0);
        l
    }

    /// A token request, as the guest built it: the client's own grants
    /// present no refresh token, `private_key_jwt` sends no client secret
    /// (in no field, header or URL), and every assertion carries a `jti`
    /// no request of the fleet carried before. Its `jti`s.
    pub fn request(
        &mut self,
        call: u64,
        req: &Request,
        form: &Form,
        settings: &Settings,
    ) -> Result<Vec<String>, String> {
        if !self.spends && form.get("refresh_token").is_some() {
            return Err(format!(
                "call {call} presented a refresh token with the client's own grant"
            ));
        }
        if settings.client_auth == ClientAuth::PrivateKeyJwt
            && let Some(secret) = settings.client_secret.as_deref()
        {
            let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            let body = String::from_utf8_lossy(&req.body);
            let leaked = form.get("client_secret").is_some()
                || form.fields().iter().any(|(_, v)| v.contains(secret))
                || body.contains(secret)
                || body.contains(&encoded)
                || req.url.contains(secret)
                || req
                    .headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("authorization") || v.contains(secret));
            if leaked {
                return Err(format!(
                    "call {call} sent the client secret (or an Authorization header) with \
                     private_key_jwt client authentication"
                ));
            }
        }
        let mut jtis = Vec::new();
        for name in ["client_assertion", "assertion"] {
            let Some(assertion) = form.get(name) else {
                continue;
            };
            let jti = jwt::jti(assertion)
                .ok_or_else(|| format!("call {call} sent a {name} without a jti"))?;
            if let Some(first) = self.jtis.insert(jti.clone(), call) {
                return Err(format!(
                    "call {call} sent an assertion with jti {jti}, which call {first} sent \
                     before: a server refuses it as a replay"
                ));
            }
            jtis.push(jti);
        }
        Ok(jtis)
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
        let g = |g: Option<u64>| g.map_or("-".into(), |g| g.to_string());
        if new_r < old_r || new_a < old_a {
            return Err(format!(
                "the store went back from rt{}/at{} to rt{}/at{}",
                g(old_r),
                g(old_a),
                g(new_r),
                g(new_a)
            ));
        }
        if !self.spends && new.refresh_mark.is_some() {
            return Err("a refresh mark was stored for the client's own grant".into());
        }
        if !self.spends && holds_refresh_token(new) {
            return Err(format!(
                "a refresh token (rt{}) was stored for the client's own grant",
                g(new_r)
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
        if !self.spends {
            return if rec.refresh_mark.is_some() || rec.dead_grant.is_some() {
                Err("the client's own grant ended with a refresh mark or a dead grant".into())
            } else if holds_refresh_token(rec) {
                Err("the client's own grant ended with a refresh token stored".into())
            } else {
                Ok(())
            };
        }
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
/// after that retry. Without a refresh token to spend (`spends` false) an
/// attempt that may have been processed is just another attempt.
pub fn token_request(call: &mut Call, spends: bool) -> Result<(), String> {
    call.sent_token = true;
    call.token_requests += 1;
    let n = call.token_requests;
    if !spends {
        return if n > TOKEN_ATTEMPTS {
            Err(format!(
                "call {} sent {n} token requests for the client's own grant",
                call.id
            ))
        } else {
            Ok(())
        };
    }
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
    /// The grant spends refresh tokens (else it is the client's own).
    pub spends: bool,
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
        // The client's own grant refused: its settings, as far as the guest
        // can tell (the registration or the subject's consent revoked).
        let refused_client = kind == "settings-rejected" && revoked && !j.spends;
        if !explained.contains(&kind) && !refused_client {
            return Err(format!(
                "a call ended in {e:?}, which nothing here explains"
            ));
        }
        if !j.spends && matches!(kind, "refresh-in-doubt" | "reauthorization-required") {
            return Err(format!(
                "{e:?}: the client's own grant spends nothing, so it is never in doubt or dead"
            ));
        }
        if !j.spends && kind == "token-endpoint" && j.call.token_requests < TOKEN_ATTEMPTS {
            return Err(format!(
                "{e:?} after {} token requests: with nothing to spend, a failure (a lost answer \
                 too) is retried, {TOKEN_ATTEMPTS} attempts in all",
                j.call.token_requests
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
    // A revoked client's own grant is remembered as refused settings for a
    // minute, so calls after faults stop are bounded like any other (seed
    // 5313 with client credentials waited 51.6 s for leases before).
    if j.call.calm && took > calm_bound_ms(j.ttl_ms) {
        return Err(format!(
            "after faults stopped, a call took {took} ms (bound {} ms)",
            calm_bound_ms(j.ttl_ms)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Refusal;
    use crate::rekey::oauth2::types::{RefreshMark, SendError};

    fn record(keys: &str) -> CredentialRecord {
        CredentialRecord {
            keys: Some(keys.into()),
            lease: None,
            refresh_mark: None,
            dead_grant: None,
        }
    }

    fn token_request(body: &str, headers: Vec<(String, String)>) -> Request {
        Request {
            method: "POST".into(),
            url: "http://127.0.0.1:9/token".into(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_client_own_grant_never_stores_a_refresh_token_or_a_mark() {
        let old = record(r#"{"access_token":"at1"}"#);
        let mut own = Ledger::new(&old, false);
        assert!(
            own.landed(&old, &record(r#"{"access_token":"at2"}"#), (0, 1))
                .is_ok()
        );
        let stray = record(r#"{"access_token":"at3","refresh_token":"rt3"}"#);
        assert!(
            own.landed(&old, &stray, (0, 1))
                .unwrap_err()
                .contains("refresh token")
        );
        let mut marked = record(r#"{"access_token":"at3"}"#);
        marked.refresh_mark = Some(RefreshMark {
            holder: "h".into(),
            at_ms: 1,
        });
        assert!(
            own.landed(&old, &marked, (0, 1))
                .unwrap_err()
                .contains("mark")
        );
        // The refresh grant stores both.
        let mut refresh = Ledger::new(&old, true);
        assert!(refresh.landed(&old, &stray, (0, 1)).is_ok());
        assert!(refresh.landed(&old, &marked, (0, 1)).is_ok());
    }

    #[test]
    fn a_repeated_jti_a_sent_secret_or_a_refresh_token_is_caught() {
        let mut s = crate::testing::settings();
        s.client_auth = ClientAuth::PrivateKeyJwt;
        s.client_secret = Some("s3cret&".into());
        let jwt = |jti: &str| {
            use base64::Engine as _;
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"jti":"{jti}"}}"#));
            format!("e30.{claims}.c2ln")
        };
        let mut ledger = Ledger::new(&record("{}"), false);
        let req = |body: String| token_request(&body, vec![]);
        let form = |r: &Request| Form::of(r);
        let r = req(format!(
            "grant_type=client_credentials&client_assertion={}",
            jwt("a1")
        ));
        assert_eq!(ledger.request(1, &r, &form(&r), &s).unwrap(), ["a1"]);
        // The same jti from another call, or in the grant's assertion.
        let r = req(format!("grant_type=x&assertion={}", jwt("a1")));
        let e = ledger.request(2, &r, &form(&r), &s).unwrap_err();
        assert!(e.contains("jti a1") && e.contains("call 1"), "{e}");
        for leak in [
            "client_secret=x".to_string(),
            "x=s3cret%26".into(),
            "x=s3cret&".into(),
        ] {
            let r = req(leak.clone());
            let e = ledger.request(3, &r, &form(&r), &s).unwrap_err();
            assert!(e.contains("secret"), "{leak}: {e}");
        }
        let r = token_request("", vec![("Authorization".into(), "Basic eDp5".into())]);
        assert!(ledger.request(4, &r, &form(&r), &s).is_err());
        let r = req("grant_type=client_credentials&refresh_token=rt1".into());
        let e = ledger.request(5, &r, &form(&r), &s).unwrap_err();
        assert!(e.contains("refresh token"), "{e}");
    }

    #[test]
    fn the_client_own_grant_is_never_in_doubt_and_retries_a_lost_answer() {
        let settings = crate::testing::settings();
        let provider = Provider::new(0, 0, 0, 1_000, settings, false);
        let store = Store::new(None);
        let judge_own = |e: SendError, token_requests: u32| {
            let mut call = Call::new(1, 0, false);
            call.token_requests = token_requests;
            judge(&Judged {
                call: &call,
                outcome: &Outcome::Returned(Err(Refusal::Error(e))),
                store: &store,
                provider: &provider,
                mark_orphaned: true,
                now: 0,
                ttl_ms: 1_000,
                spends: false,
            })
        };
        assert!(judge_own(SendError::RefreshInDoubt("x".into()), 2).is_err());
        assert!(judge_own(SendError::TokenEndpoint("x".into()), 2).is_err());
        assert!(judge_own(SendError::TokenEndpoint("x".into()), TOKEN_ATTEMPTS).is_ok());
        let mut call = Call::new(1, 0, false);
        for _ in 0..TOKEN_ATTEMPTS {
            assert!(super::token_request(&mut call, false).is_ok());
        }
        assert!(super::token_request(&mut call, false).is_err());
    }
}
