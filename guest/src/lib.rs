//! The rekey component: OAuth2 refresh-and-retry against the host interface.
//!
//! `flow` is the routine and `fleet` the protocol on the credential's record,
//! both written against the [`effects::Effects`] trait, so they read like what
//! they implement and run natively in unit tests and the fleet simulator; this
//! file only binds them to the WIT imports and exports.
//!
//! `no_std` in the component (std natively, for the tests): see Cargo.toml.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod assertion;
mod authorize;
mod basic_auth;
mod challenge;
mod dpop;
mod effects;
mod fleet;
mod flow;
mod http;
mod keys;
mod origins;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testing;
mod token;

wit_bindgen::generate!({
    world: "refresher",
    path: "../wit",
    // The two WASI clock interfaces are ours to bind: no wasi crate (and so
    // no std) is pulled in for them.
    generate_all,
    // The protocol compares a record it wrote with the one read back. The
    // types that hold a body handle cannot be compared (nor need to be).
    additional_derives: [PartialEq],
    additional_derives_ignore: ["request", "response", "scope-challenge", "send-error"],
});

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use exports::rekey::oauth2::authorize::{Authorization, AuthorizeError, DeviceGrant, Pending};
use exports::rekey::oauth2::client::{Guest, KeepaliveOutcome};
use rekey::oauth2::types::{
    Body, CredentialRecord, Purpose, Request, RequestHead, Response, ScopeChallenge, SendError,
    Settings, SigningAlgorithm, StoredRecord, TransportError, WriteError,
};
use rekey::oauth2::{host, signer};
use wasi::clocks::{monotonic_clock, wall_clock};
use wasi::random::random;

#[cfg(target_arch = "wasm32")]
mod wasm_rt;

/// The real effects: the host interface, the WASI clocks and randomness.
struct HostEffects;

impl http::Http for HostEffects {
    type Body = Body;
    fn http_send(
        &mut self,
        purpose: Purpose,
        req: &http::Request<&Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let head = RequestHead {
            method: req.method.clone(),
            url: req.url.clone(),
            headers: req.headers.clone(),
        };
        let resp = host::http_send(purpose, &head, req.body)?;
        Ok(http::Response {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        })
    }
    fn new_body(&mut self, bytes: Vec<u8>) -> Body {
        Body::new(&bytes)
    }
    fn read_body(&mut self, body: &Body, limit: u64) -> Vec<u8> {
        body.read(limit)
    }
}

impl effects::Effects for HostEffects {
    fn read_record(&mut self) -> Result<StoredRecord, String> {
        host::read_record()
    }
    fn write_record(
        &mut self,
        expected: u64,
        record: &CredentialRecord,
    ) -> Result<u64, WriteError> {
        host::emit_update_keys(expected, record)
    }
    fn now_ms(&self) -> u64 {
        let now = wall_clock::now();
        now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
    }
    fn sleep(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        monotonic_clock::subscribe_duration(nanos).block();
    }
}

impl effects::Signing for HostEffects {
    fn random_u64(&mut self) -> u64 {
        random::get_random_u64()
    }
    fn sign(&mut self, alg: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        signer::sign(alg, input)
    }
    fn dpop_public_key(&mut self, alg: SigningAlgorithm) -> Result<String, String> {
        signer::dpop_public_key(alg)
    }
    fn dpop_sign(&mut self, alg: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        signer::dpop_sign(alg, input)
    }
}

impl authorize::Effects for HostEffects {
    fn now_unix(&self) -> u64 {
        wall_clock::now().seconds
    }
    fn sleep(&mut self, d: Duration) {
        effects::Effects::sleep(self, d)
    }
}

/// The WIT response, from the routine's.
fn response(r: http::Response<Body>) -> Response {
    Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

struct Component;

impl Guest for Component {
    fn send(settings: Settings, req: Request) -> Result<Response, SendError> {
        let req = http::Request {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
        };
        flow::send(&mut HostEffects, &settings, &req)
            .map(response)
            .map_err(|refusal| match refusal {
                flow::Refusal::Error(e) => e,
                flow::Refusal::RejectedAfterRefresh(r) => {
                    SendError::RejectedAfterRefresh(response(r))
                }
                flow::Refusal::InsufficientScope(scope, r) => {
                    SendError::InsufficientScope(ScopeChallenge {
                        scope,
                        response: response(r),
                    })
                }
            })
    }

    fn check_settings(settings: Settings) -> Result<(), String> {
        flow::check_settings(&settings)
    }

    fn keepalive(settings: Settings, older_than_secs: u64) -> Result<KeepaliveOutcome, SendError> {
        Ok(
            match flow::keepalive(&mut HostEffects, &settings, older_than_secs)? {
                flow::Kept::Fresh => KeepaliveOutcome::Fresh,
                flow::Kept::Refreshed => KeepaliveOutcome::Refreshed,
                flow::Kept::NothingToKeep => KeepaliveOutcome::NothingToKeep,
            },
        )
    }
}

impl exports::rekey::oauth2::authorize::Guest for Component {
    fn begin(
        settings: Settings,
        authorization: Authorization,
        entropy: Vec<u8>,
    ) -> Result<Pending, AuthorizeError> {
        authorize::begin(&settings, &authorization, &entropy)
    }

    fn finish(
        settings: Settings,
        authorization: Authorization,
        pending: Pending,
        query: String,
    ) -> Result<String, AuthorizeError> {
        authorize::finish(
            &mut HostEffects,
            &settings,
            &authorization,
            &pending,
            &query,
        )
    }

    fn device_start(
        settings: Settings,
        authorization: Authorization,
    ) -> Result<DeviceGrant, AuthorizeError> {
        authorize::device_start(&mut HostEffects, &settings, &authorization)
    }

    fn device_poll(settings: Settings, grant: DeviceGrant) -> Result<String, AuthorizeError> {
        authorize::device_poll(&mut HostEffects, &settings, &grant)
    }
}

export!(Component);
