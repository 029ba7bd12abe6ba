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

mod authorize;
mod basic_auth;
mod challenge;
mod effects;
mod fleet;
mod flow;
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
    // The protocol compares a record it wrote with the one read back.
    additional_derives: [PartialEq],
});

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use exports::rekey::oauth2::authorize::{Authorization, AuthorizeError, DeviceGrant, Pending};
use exports::rekey::oauth2::client::Guest;
use rekey::oauth2::host;
use rekey::oauth2::types::{
    CredentialRecord, Purpose, Request, Response, SendError, Settings, StoredRecord,
    TransportError, WriteError,
};
use wasi::clocks::{monotonic_clock, wall_clock};
use wasi::random::random;

#[cfg(target_arch = "wasm32")]
mod wasm_rt;

/// The real effects: the host interface, the WASI clocks and randomness.
struct HostEffects;

impl effects::Effects for HostEffects {
    fn http_send(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError> {
        host::http_send(purpose, req)
    }
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
    fn random_u64(&mut self) -> u64 {
        random::get_random_u64()
    }
}

impl authorize::Effects for HostEffects {
    fn http_send(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError> {
        host::http_send(purpose, req)
    }
    fn now_unix(&self) -> u64 {
        wall_clock::now().seconds
    }
    fn sleep(&mut self, d: Duration) {
        effects::Effects::sleep(self, d)
    }
}

struct Component;

impl Guest for Component {
    fn send(settings: Settings, req: Request) -> Result<Response, SendError> {
        flow::send(&mut HostEffects, &settings, &req)
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
