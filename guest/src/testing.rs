//! Test doubles shared by the unit tests of `flow` and `authorize`: scripted
//! effects over an in-memory record, and the responses they answer with.

use crate::authorize;
use crate::effects::{Effects, Signing};
use crate::http::{Http, Request, Response};
use crate::rekey::oauth2::types::{
    ClientAuth, CredentialRecord, FleetTiming, Purpose, RefreshMark, Settings, SigningAlgorithm,
    StoredRecord, Strategy, TransportError, WriteError,
};
use core::time::Duration;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::string::String;
use std::vec::Vec;

/// The clock's reading when a test does not set it (unix seconds).
const START: u64 = 1_000;

/// Scripted effects: answers in order, records what was sent, stored and
/// slept, and keeps the credential's record in memory. The clock moves only
/// by what is slept.
pub struct Script {
    answers: VecDeque<Result<Response, TransportError>>,
    pub sent: Vec<Request>,
    pub purposes: Vec<Purpose>,
    /// Every token set written, in order.
    pub emitted: Vec<String>,
    emit_fails: bool,
    pub record: StoredRecord,
    /// Applied while the first request is in flight: another worker's doing.
    meanwhile: Option<CredentialRecord>,
    now_ms: u64,
    /// Writes that took the lease, and writes that ended it without keys.
    pub leases: u32,
    pub releases: u32,
    pub slept: Vec<Duration>,
    random: u64,
    /// `sign` fails with this.
    pub sign_error: Option<String>,
    /// What was given to `sign`, in order.
    pub signed: Vec<(SigningAlgorithm, Vec<u8>)>,
    /// How long each answer takes to arrive (the clock moves by it).
    pub answer_takes_ms: u64,
    /// The public JWK `dpop_public_key` answers; none: no DPoP key.
    pub dpop_key: Option<String>,
    /// What was given to `dpop_sign`, in order.
    pub dpop_signed: Vec<(SigningAlgorithm, Vec<u8>)>,
}

/// The fake signer's signatures begin with these bytes.
pub const FAKE_SIGNATURE_PREFIX: &[u8] = b"fake-signature:";

/// The fake signer's signature of `input`: 64 bytes (an ES256 signature's
/// length), the prefix, then the input's SHA-256, zero-padded.
pub fn fake_signature(input: &str) -> Vec<u8> {
    let mut sig = FAKE_SIGNATURE_PREFIX.to_vec();
    sig.extend_from_slice(&Sha256::digest(input.as_bytes()));
    sig.resize(64, 0);
    sig
}

/// A JWT part's JSON (unpadded base64url).
pub fn jwt_part(part: &str) -> serde_json::Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

/// Effects that answer these, in order, and otherwise default.
pub fn script(answers: impl IntoIterator<Item = Result<Response, TransportError>>) -> Script {
    Script {
        answers: answers.into_iter().collect(),
        sent: Vec::new(),
        purposes: Vec::new(),
        emitted: Vec::new(),
        emit_fails: false,
        record: StoredRecord {
            version: 1,
            data: empty_record(),
        },
        meanwhile: None,
        now_ms: START * 1000,
        leases: 0,
        releases: 0,
        slept: Vec::new(),
        random: 0x5eed,
        sign_error: None,
        signed: Vec::new(),
        answer_takes_ms: 0,
        dpop_key: None,
        dpop_signed: Vec::new(),
    }
}

pub fn empty_record() -> CredentialRecord {
    CredentialRecord {
        keys: None,
        lease: None,
        refresh_mark: None,
        dead_grant: None,
    }
}

impl Script {
    /// The clock reads `now` (Unix seconds, before any sleep).
    pub fn at(mut self, now: u64) -> Self {
        self.now_ms = now * 1000;
        self
    }

    /// More answers, after any left.
    pub fn answer(&mut self, more: impl IntoIterator<Item = Result<Response, TransportError>>) {
        self.answers.extend(more);
    }

    /// While the first request is in flight, another worker stores these keys.
    pub fn lease_shows(mut self, keys: &str) -> Self {
        let mut next = self.meanwhile.take().unwrap_or_else(empty_record);
        next.keys = Some(keys.into());
        self.meanwhile = Some(next);
        self
    }

    /// While the first request is in flight, another worker begins a refresh
    /// and vanishes: its mark stays, its lease runs out.
    pub fn in_doubt(mut self) -> Self {
        let mut next = self
            .meanwhile
            .take()
            .unwrap_or_else(|| self.record.data.clone());
        next.refresh_mark = Some(RefreshMark {
            holder: "vanished".into(),
            at_ms: 1,
        });
        self.meanwhile = Some(next);
        self
    }

    /// Every write of new keys fails.
    pub fn failing_emits(mut self) -> Self {
        self.emit_fails = true;
        self
    }
}

/// HTTP for test doubles: bodies are their bytes, every request is seen whole.
pub trait BytesHttp {
    fn send_bytes(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError>;
}

impl<T: BytesHttp> Http for T {
    type Body = Vec<u8>;
    fn http_send(
        &mut self,
        purpose: Purpose,
        req: &Request<&Vec<u8>>,
    ) -> Result<Response, TransportError> {
        let whole = Request {
            method: req.method.clone(),
            url: req.url.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        };
        self.send_bytes(purpose, &whole)
    }
    fn new_body(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    fn read_body(&mut self, body: &Vec<u8>, limit: u64) -> Vec<u8> {
        body[..body.len().min(usize::try_from(limit).unwrap_or(usize::MAX))].to_vec()
    }
}

impl BytesHttp for Script {
    fn send_bytes(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError> {
        if let Some(mut next) = self.meanwhile.take() {
            if next.keys.is_none() {
                next.keys = self.record.data.keys.clone();
            }
            self.record = StoredRecord {
                version: self.record.version + 1,
                data: next,
            };
        }
        self.sent.push(req.clone());
        self.purposes.push(purpose);
        self.now_ms += self.answer_takes_ms;
        self.answers.pop_front().expect("unexpected request")
    }
}

impl Effects for Script {
    fn read_record(&mut self) -> Result<StoredRecord, String> {
        Ok(self.record.clone())
    }
    fn write_record(
        &mut self,
        expected: u64,
        record: &CredentialRecord,
    ) -> Result<u64, WriteError> {
        let old = &self.record.data;
        let new_keys = record.keys != old.keys;
        if self.emit_fails && new_keys {
            return Err(WriteError::Failed("disk full".into()));
        }
        if expected != self.record.version {
            return Err(WriteError::Conflict);
        }
        let holder = |r: &CredentialRecord| r.lease.as_ref().map(|l| l.holder.clone());
        if record.lease.is_some() && holder(record) != holder(old) {
            self.leases += 1;
        }
        if record.lease.is_none() && old.lease.is_some() && !new_keys {
            self.releases += 1;
        }
        if new_keys {
            self.emitted.extend(record.keys.clone());
        }
        self.record = StoredRecord {
            version: expected + 1,
            data: record.clone(),
        };
        Ok(expected + 1)
    }
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn sleep(&mut self, d: Duration) {
        self.now_ms += d.as_millis() as u64;
        self.slept.push(d);
    }
}

impl Signing for Script {
    fn random_u64(&mut self) -> u64 {
        self.random = self
            .random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        self.random
    }
    fn sign(&mut self, alg: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        self.signed.push((alg, input.to_vec()));
        if let Some(e) = &self.sign_error {
            return Err(e.clone());
        }
        Ok(fake_signature(core::str::from_utf8(input).expect("ASCII")))
    }
    fn dpop_public_key(&mut self, _alg: SigningAlgorithm) -> Result<String, String> {
        self.dpop_key
            .clone()
            .ok_or_else(|| "no DPoP key configured".into())
    }
    fn dpop_sign(&mut self, alg: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        self.dpop_signed.push((alg, input.to_vec()));
        Ok(fake_signature(core::str::from_utf8(input).expect("ASCII")))
    }
}

impl authorize::Effects for Script {
    fn now_unix(&self) -> u64 {
        Effects::now_unix(self)
    }
    fn sleep(&mut self, d: Duration) {
        Effects::sleep(self, d)
    }
}

/// A confidential client (secret in the form) of a loopback token endpoint,
/// refreshing when the API answers 401: tests override what they are about.
pub fn settings() -> Settings {
    Settings {
        grant: crate::rekey::oauth2::types::Grant::RefreshToken,
        token_url: "http://127.0.0.1:9/token".into(),
        client_id: "id".into(),
        client_secret: Some("secret".into()),
        client_auth: ClientAuth::ClientSecretPost,
        scope: None,
        extra_params: vec![],
        strategy: Strategy::OnAuthFailure,
        rejected_statuses: vec![],
        // Bound to the one loopback API the tests call.
        api_origins: vec!["http://127.0.0.1:9".into()],
        instance_url_origins: vec![],
        fleet: FleetTiming {
            lease_ttl_ms: 0,
            lease_wait_ms: 0,
        },
        signing: None,
        dpop: None,
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
