//! How the world serves each effect call: the store and the provider, with
//! the faults the configuration asks for, and the bookkeeping the properties
//! need.

use super::check;
use super::provider::{Exchange, Form, generation};
use super::worker::{Op, Reply};
use super::world::{Event, Sim, St, opt};
use super::{Fault, HTTP_TIMEOUT_MS, TOKEN_ANSWER_MAX_MS};
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{
    CredentialRecord, Purpose, StoredRecord, TransportError, WriteError,
};

impl Sim<'_> {
    /// A store call's latency, sometimes a stall past the lease TTL.
    pub(super) fn stall(&mut self, w: usize, lo: u64, hi: u64) -> u64 {
        self.stall_by(Fault::StoreStall, w, lo, hi)
    }

    /// A latency, or with fault `f` a delay past the lease TTL.
    pub(super) fn stall_by(&mut self, f: Fault, w: usize, lo: u64, hi: u64) -> u64 {
        if self.fault(f) {
            let ttl = self.timing.ttl_ms;
            let d = self.rng.range(ttl + 1_000, 2 * ttl + 10_000);
            if let Some(c) = self.slots[w].call.as_mut() {
                c.stalled_ms += d;
            }
            self.note(Some(w), format!("{f:?}: {d} ms"));
            d
        } else {
            self.latency(lo, hi)
        }
    }

    pub(super) fn event(&mut self, e: usize) {
        let (_, event) = self.events.remove(e);
        match event {
            Event::Duplicate(req) => {
                let refresh = Form::of(&req).get("refresh_token").map(String::from);
                let (ex, _) = self.provider.token(&req, self.now);
                if matches!(ex, Exchange::Invalid(_)) {
                    self.stats.replays_refused += 1;
                }
                if matches!(ex, Exchange::Fetched(_)) {
                    self.stats.fetches += 1;
                }
                self.note(
                    None,
                    format!("a duplicate of {refresh:?} reaches the provider: {ex:?}"),
                );
            }
            Event::Revoke => {
                self.provider.revoke("revoked out of band".into());
                self.note(None, "the provider revokes the grant".into());
            }
        }
    }

    /// Applies worker `w`'s effect call now.
    pub(super) fn apply(&mut self, w: usize) -> Result<(), String> {
        let St::Op(op, _) = std::mem::replace(&mut self.slots[w].st, St::Done) else {
            unreachable!()
        };
        self.last = Some(w);
        let enumerated = if self.crashes_left > 0 {
            self.chooser.pick(3, None)
        } else {
            0
        };
        if enumerated > 0 {
            self.crashes_left -= 1;
        }
        if enumerated == 1 || self.fault(Fault::CrashBefore) {
            self.note(Some(w), format!("crashes before {}", op_name(&op)));
            self.slots[w].st = St::Reply(Reply::Crash, self.now);
            return Ok(());
        }
        let delivered = enumerated != 2 && !self.fault(Fault::CrashAfter);
        let (reply, after) = match op {
            Op::Read => self.read(w),
            Op::Write(expected, data) => self.write(w, expected, data)?,
            Op::Http(Purpose::TokenEndpoint, req) => self.token(w, &req, delivered)?,
            Op::Http(_, req) => {
                let auth = req
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.as_str());
                let resp = self.provider.api(auth, self.now);
                self.note(
                    Some(w),
                    format!("API with {} -> {}", auth.unwrap_or("-"), resp.status),
                );
                let after = self.latency(10, 200);
                (Reply::Http(Ok(resp)), after)
            }
            Op::Sleep(_) => unreachable!("sleeps are not scheduled"),
        };
        let reply = if delivered {
            reply
        } else {
            self.note(Some(w), "crashes before the answer arrives".into());
            Reply::Crash
        };
        self.slots[w].st = St::Reply(reply, self.now + after);
        Ok(())
    }

    fn show(&self, r: &StoredRecord) -> String {
        let who = |h: &str| match self.ledger.holders.get(h) {
            Some((w, c)) => format!("w{w}c{c}"),
            None => h.chars().take(6).collect(),
        };
        let (rt, at) = check::generations(&r.data);
        let mut s = format!("v{} rt{}/at{}", r.version, opt(rt), opt(at));
        if let Some(l) = &r.data.lease {
            let left = l.until_ms as i64 - self.now as i64;
            s += &format!(" lease={}({:+.1}s)", who(&l.holder), left as f64 / 1000.0);
        }
        if let Some(m) = &r.data.refresh_mark {
            s += &format!(" mark={}", who(&m.holder));
        }
        if r.data.dead_grant.is_some() {
            s += " dead";
        }
        s
    }

    fn read(&mut self, w: usize) -> (Reply, u64) {
        if self.fault(Fault::ReadError) {
            self.note(Some(w), "read -> error".into());
            return (
                Reply::Read(Err("the store is unreachable".into())),
                self.latency(0, 20),
            );
        }
        let rec = self.store.read();
        // Was a live, unhindered holder's mark here? Then this is no doubt.
        let live_mark = rec.data.refresh_mark.is_some()
            && rec.data.lease.as_ref().is_some_and(|l| {
                self.ledger.holders.get(&l.holder).is_some_and(|&(hw, hc)| {
                    self.slots[hw]
                        .call
                        .as_ref()
                        .is_some_and(|c| c.id == hc && c.stalled_ms == 0)
                })
            });
        let after = self.stall(w, 0, 20);
        let call = self.slots[w].call.as_mut().expect("a call is running");
        call.saw_live_mark = live_mark;
        call.last_read_stalled = after > 1_000;
        self.note(Some(w), format!("read -> {}", self.show(&rec)));
        (Reply::Read(Ok(rec)), after)
    }

    fn write(
        &mut self,
        w: usize,
        expected: u64,
        data: CredentialRecord,
    ) -> Result<(Reply, u64), String> {
        let failed = self.fault(Fault::WriteFailed);
        let lost = !failed && self.fault(Fault::UnknownLost);
        let lands = !failed && !lost;
        let result = if failed {
            Err(WriteError::Failed("the disk is full".into()))
        } else if lost {
            Err(WriteError::Unknown("the connection broke".into()))
        } else {
            let old = self.store.data.clone();
            let r = self.store.cas(expected, &data);
            if r.is_ok() {
                let id = self.slots[w].call.as_ref().map_or(0, |c| c.id);
                self.ledger.landed(&old, &data, (w, id))?;
            }
            match r {
                Ok(_) if self.fault(Fault::FailedButLanded) => {
                    Err(WriteError::Failed("the disk reported an error".into()))
                }
                Ok(_) if self.fault(Fault::UnknownLanded) => Err(WriteError::Unknown(
                    "the connection broke after COMMIT".into(),
                )),
                r => r,
            }
        };
        let landed = if lands && !matches!(result, Err(WriteError::Conflict)) {
            " (landed)"
        } else {
            ""
        };
        let rec = self.store.read();
        self.note(
            Some(w),
            format!(
                "write on v{expected} -> {result:?}{landed}; store {}",
                self.show(&rec)
            ),
        );
        let after = self.stall(w, 0, 20);
        Ok((Reply::Write(result), after))
    }

    /// A token request: faults before the provider, the provider, faults after.
    fn token(&mut self, w: usize, req: &Request, delivered: bool) -> Result<(Reply, u64), String> {
        self.stats.token_requests += 1;
        let form = Form::of(req);
        let refresh = form.get("refresh_token").map(String::from);
        let rgen = refresh.as_deref().and_then(|t| generation(t, "rt"));
        let spends = self.cfg.spends();
        let call = self.slots[w].call.as_mut().expect("a call is running");
        check::token_request(call, spends)?;
        let id = call.id;
        if !spends
            && call
                .unanswered_after
                .is_some_and(|k| call.token_requests > k)
        {
            self.stats.retried_after_loss += 1;
        }
        // Whatever becomes of it, the request is what the guest built.
        let jtis = self.ledger.request(id, req, &form, &self.settings)?;
        self.stats.assertions += jtis.len() as u64;
        let presented = match (&refresh, jtis.first()) {
            (Some(r), _) => format!("token request with {r}"),
            (None, Some(jti)) => format!("token request with jti {}..", &jti[..8.min(jti.len())]),
            (None, None) => "token request".into(),
        };
        if self.fault(Fault::Connect) {
            self.note(Some(w), format!("{presented} -> no connection"));
            let after = self.latency(0, 50);
            return Ok((
                Reply::Http(Err(TransportError::Connect("connection refused".into()))),
                after,
            ));
        }
        if self.fault(Fault::Busy) {
            if let Some(g) = rgen {
                self.ledger.present(g, id, false)?;
            }
            let status = if self.rng.chance(500) { 429 } else { 503 };
            let mut resp = status_only(status);
            if self.rng.chance(500) {
                let secs = self.rng.range(0, 7).to_string();
                resp.headers.push(("retry-after".into(), secs));
            }
            self.note(Some(w), format!("{presented} -> {status} (not processed)"));
            let after = self.latency(20, 500);
            return Ok((Reply::Http(Ok(resp)), after));
        }
        if let Some(g) = rgen {
            self.ledger.present(g, id, true)?;
        }
        if self.fault(Fault::Error500) {
            self.note(Some(w), format!("{presented} -> 500 (not processed)"));
            let after = self.latency(20, 500);
            self.unanswered(w, delivered);
            return Ok((Reply::Http(Ok(status_only(500))), after));
        }
        let (ex, resp) = self.provider.token(req, self.now);
        match &ex {
            Exchange::Issued(_) => self.stats.rotations += 1,
            Exchange::Fetched(_) => self.stats.fetches += 1,
            // A real server would refuse it too: a guest that sends what the
            // provider cannot accept (a replayed jti, a wrong claim, the
            // wrong client authentication) fails every such call.
            Exchange::Invalid(why) => {
                return Err(format!(
                    "the provider refused call {id}'s token request: {why}"
                ));
            }
            _ => {}
        }
        if self.fault(Fault::Duplicate) {
            let at = self.now + self.rng.range(1, 3_000);
            self.events.push((at, Event::Duplicate(req.clone())));
        }
        let mut after = self.latency(20, 1_500);
        let (answer, lost) = if self.fault(Fault::Timeout) {
            after = HTTP_TIMEOUT_MS;
            (Err(TransportError::Timeout), true)
        } else if self.fault(Fault::Reset) {
            (Err(TransportError::Other("connection reset".into())), true)
        } else if self.fault(Fault::Lost502) {
            (Ok(status_only(502)), true)
        } else {
            if self.fault(Fault::Delay) {
                after = self.rng.range(2_000, TOKEN_ANSWER_MAX_MS);
            }
            (Ok(resp), false)
        };
        let shown = match &answer {
            Ok(r) => r.status.to_string(),
            Err(e) => format!("{e:?}"),
        };
        self.note(
            Some(w),
            format!("{presented} -> provider {ex:?}, worker gets {shown} after {after} ms"),
        );
        if lost {
            self.unanswered(w, delivered);
        }
        if delivered && !lost {
            if let Some(g) = rgen {
                self.ledger.answered(g);
            }
            if let Exchange::Issued(n) | Exchange::Repeated(n) = ex {
                self.slots[w].call.as_mut().unwrap().received.push(n);
            }
        }
        Ok((Reply::Http(answer), after))
    }

    /// The call is told its attempt may have been processed.
    fn unanswered(&mut self, w: usize, delivered: bool) {
        let call = self.slots[w].call.as_mut().expect("a call is running");
        if delivered && call.unanswered_after.is_none() {
            call.unanswered_after = Some(call.token_requests);
        }
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Http(Purpose::TokenEndpoint, _) => "a token request",
        Op::Http(..) => "an API request",
        Op::Read => "a read",
        Op::Write(..) => "a write",
        Op::Sleep(_) => "a sleep",
    }
}

fn status_only(status: u16) -> Response {
    Response {
        status,
        headers: vec![],
        body: vec![],
    }
}
