//! Test doubles shared by the unit tests of `flow` and `authorize`: scripted
//! effects and the responses they answer with.

use crate::rekey::oauth2::types::{
    ClientAuth, Lease, Request, Response, Settings, Strategy, TransportError,
};
use crate::{authorize, flow};
use core::time::Duration;
use std::collections::VecDeque;
use std::string::String;
use std::vec::Vec;

/// The clock's reading when a test does not set it (unix seconds).
const START: u64 = 1_000;

/// Scripted effects: answers in order, records what was sent, stored and
/// slept. The clock moves only by whole seconds slept, like the device
/// grant's polling; the lease shows what [`Script::lease_shows`] set.
pub struct Script {
    answers: VecDeque<Result<Response, TransportError>>,
    pub sent: Vec<Request>,
    pub emitted: Vec<String>,
    emit_fails: bool,
    stored_now: Option<String>,
    in_doubt: bool,
    now: u64,
    pub leases: u32,
    pub releases: u32,
    pub slept: Vec<Duration>,
}

/// Effects that answer these, in order, and otherwise default.
pub fn script(answers: impl IntoIterator<Item = Result<Response, TransportError>>) -> Script {
    Script {
        answers: answers.into_iter().collect(),
        sent: Vec::new(),
        emitted: Vec::new(),
        emit_fails: false,
        stored_now: None,
        in_doubt: false,
        now: START,
        leases: 0,
        releases: 0,
        slept: Vec::new(),
    }
}

impl Script {
    /// The clock reads `now` (before any sleep).
    pub fn at(mut self, now: u64) -> Self {
        self.now = now;
        self
    }

    /// The lease shows these keys: another worker stored them meanwhile.
    pub fn lease_shows(mut self, keys: &str) -> Self {
        self.stored_now = Some(keys.into());
        self
    }

    /// The lease comes with an unfinished refresh of a vanished holder.
    pub fn in_doubt(mut self) -> Self {
        self.in_doubt = true;
        self
    }

    /// Every keys write fails.
    pub fn failing_emits(mut self) -> Self {
        self.emit_fails = true;
        self
    }
}

impl flow::Effects for Script {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        self.sent.push(req.clone());
        self.answers.pop_front().expect("unexpected request")
    }
    fn emit_update_keys(&mut self, keys: &str) -> Result<(), String> {
        if self.emit_fails {
            return Err("disk full".into());
        }
        self.emitted.push(keys.into());
        Ok(())
    }
    fn acquire_lease(&mut self) -> Result<Lease, String> {
        self.leases += 1;
        Ok(Lease {
            keys: self.stored_now.clone(),
            in_doubt: self.in_doubt,
        })
    }
    fn release_lease(&mut self) {
        self.releases += 1;
    }
    fn now_unix(&self) -> u64 {
        self.now
    }
    fn sleep(&mut self, d: Duration) {
        self.now += d.as_secs();
        self.slept.push(d);
    }
}

impl authorize::Effects for Script {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        flow::Effects::http_send(self, req)
    }
    fn now_unix(&self) -> u64 {
        flow::Effects::now_unix(self)
    }
    fn sleep(&mut self, d: Duration) {
        flow::Effects::sleep(self, d)
    }
}

/// A confidential client (secret in the form) of a loopback token endpoint,
/// refreshing when the API answers 401: tests override what they are about.
pub fn settings() -> Settings {
    Settings {
        token_url: "http://127.0.0.1:9/token".into(),
        client_id: "id".into(),
        client_secret: Some("secret".into()),
        client_auth: ClientAuth::ClientSecretPost,
        scope: None,
        extra_params: vec![],
        strategy: Strategy::OnAuthFailure,
        rejected_statuses: vec![],
    }
}

/// An answer with this status and body, no headers.
pub fn ok(status: u16, body: &str) -> Result<Response, TransportError> {
    Ok(Response {
        status,
        headers: vec![],
        body: body.into(),
    })
}

/// Whole seconds, to compare with [`Script::slept`].
pub fn secs<const N: usize>(secs: [u64; N]) -> [Duration; N] {
    secs.map(Duration::from_secs)
}
