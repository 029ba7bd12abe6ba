//! Adversarial review of contract 0.3: each test here failed because of a
//! bug found in review (committed ignored, then un-ignored with the fix).

use crate::effects::Effects;
use crate::flow::{Refusal, send};
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{
    CredentialRecord, Purpose, SendError, StoredRecord, TransportError, WriteError,
};
use crate::testing::{self, BytesHttp, Script, ok, script};
use core::time::Duration;
use std::string::String;

const KEYS: &str = r#"{"access_token":"a1","refresh_token":"r1","expires_at":1500}"#;

/// What the store does with one conditional write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Write {
    /// As asked.
    Pass,
    /// Refused outright, nothing written (a transient store error).
    Fail,
    /// Written, but the answer is lost (`unknown`), and the read that
    /// follows fails too (the connection is still down).
    UnknownLanded,
}

/// A [`Script`] whose store misbehaves on chosen writes.
struct Faulty {
    inner: Script,
    /// Decides each write: its index (from 0) and the record to write.
    plan: fn(usize, &CredentialRecord) -> Write,
    writes: usize,
    failing_reads: u32,
}

impl BytesHttp for Faulty {
    fn send_bytes(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError> {
        self.inner.send_bytes(purpose, req)
    }
}

impl Effects for Faulty {
    fn read_record(&mut self) -> Result<StoredRecord, String> {
        if self.failing_reads > 0 {
            self.failing_reads -= 1;
            return Err("connection reset".into());
        }
        self.inner.read_record()
    }
    fn write_record(
        &mut self,
        expected: u64,
        record: &CredentialRecord,
    ) -> Result<u64, WriteError> {
        let n = self.writes;
        self.writes += 1;
        match (self.plan)(n, record) {
            Write::Pass => self.inner.write_record(expected, record),
            Write::Fail => Err(WriteError::Failed("database is locked".into())),
            Write::UnknownLanded => {
                let landed = self.inner.write_record(expected, record);
                assert!(landed.is_ok(), "the faulty write was to land");
                self.failing_reads = 1;
                Err(WriteError::Unknown("connection lost after COMMIT".into()))
            }
        }
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    fn sleep(&mut self, d: Duration) {
        self.inner.sleep(d)
    }
}

impl crate::effects::Signing for Faulty {
    fn random_u64(&mut self) -> u64 {
        crate::effects::Signing::random_u64(&mut self.inner)
    }
    fn sign(
        &mut self,
        alg: crate::rekey::oauth2::types::SigningAlgorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        crate::effects::Signing::sign(&mut self.inner, alg, input)
    }
}

fn faulty(
    answers: impl IntoIterator<Item = Result<Response, TransportError>>,
    plan: fn(usize, &CredentialRecord) -> Write,
) -> Faulty {
    let mut inner = script(answers);
    inner.record.data.keys = Some(KEYS.into());
    Faulty {
        inner,
        plan,
        writes: 0,
        failing_reads: 0,
    }
}

fn api() -> Request {
    Request {
        method: "GET".into(),
        url: "http://127.0.0.1:9/api".into(),
        headers: vec![],
        body: vec![],
    }
}

fn connect() -> Result<Response, TransportError> {
    Err(TransportError::Connect("connection refused".into()))
}

/// The token endpoint is unreachable on every attempt (provably nothing
/// spent), and the one write that lifts lease and mark fails once, as a
/// store under load does. Nothing retries it: the mark stays, the lease
/// runs out, and from then on every call of every worker answers
/// `refresh-in-doubt` until an operator clears it, although this call
/// knew the refresh token was never presented.
#[test]
fn a_provably_unspent_refresh_leaves_no_mark_when_the_release_write_fails_once() {
    let mut fx = faulty([ok(401, ""), connect(), connect(), connect()], |n, r| {
        // Writes 0 (the lease) and 1-3 (the mark before each attempt) pass;
        // write 4, the release, fails once.
        match n == 4 && r.lease.is_none() && r.refresh_mark.is_none() {
            true => Write::Fail,
            false => Write::Pass,
        }
    });
    let err = send(&mut fx, &testing::settings(), &api()).unwrap_err();
    assert!(
        matches!(err, Refusal::Error(SendError::TokenEndpoint(_))),
        "{err:?}"
    );
    let token_requests = fx
        .inner
        .purposes
        .iter()
        .filter(|p| **p == Purpose::TokenEndpoint)
        .count();
    assert_eq!(token_requests, 3, "every attempt failed to connect");
    assert!(
        fx.inner.record.data.refresh_mark.is_none(),
        "nothing was spent, yet the record keeps the mark: the next call after the lease \
         runs out answers refresh-in-doubt"
    );
}

/// The write that sets the refresh mark lands, but its answer is lost and
/// the read-back fails too: the call rightly sends no token request, and
/// releases. The release is written on the version before the mark, so it
/// conflicts and is dropped: the mark stays on a refresh token nobody sent.
#[test]
fn a_mark_written_with_a_lost_answer_is_lifted_when_no_request_left() {
    let mut fx = faulty([ok(401, "")], |n, _| match n {
        // 0: the lease; 1: the mark.
        1 => Write::UnknownLanded,
        _ => Write::Pass,
    });
    let err = send(&mut fx, &testing::settings(), &api()).unwrap_err();
    assert!(
        !matches!(err, Refusal::Error(SendError::RefreshInDoubt(_))),
        "no token request left: {err:?}"
    );
    assert_eq!(fx.inner.sent.len(), 1, "only the API request left");
    assert!(
        fx.inner.record.data.refresh_mark.is_none() && fx.inner.record.data.lease.is_none(),
        "the mark on an unspent refresh token stays"
    );
}
