//! The rekey component: OAuth2 refresh-and-retry against the host interface.
//!
//! `flow` is the state machine, written against the [`flow::Effects`] trait so it
//! reads like the routine it implements and can be unit-tested natively; this
//! file only binds it to the WIT imports and export.
//!
//! `no_std` in the component (std natively, for the tests): see Cargo.toml.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod authorize;
mod basic_auth;
mod challenge;
mod flow;
mod keys;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testing;
mod token;

wit_bindgen::generate!({
    world: "refresher",
    path: "../wit",
    // The two WASI clock interfaces are ours to bind: no wasi crate (and so
    // no std) is pulled in for them.
    generate_all,
});

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use exports::rekey::oauth2::authorize::{Authorization, AuthorizeError, DeviceGrant, Pending};
use exports::rekey::oauth2::client::Guest;
use rekey::oauth2::host;
use rekey::oauth2::types::{Lease, Request, Response, SendError, Settings, TransportError};
use wasi::clocks::{monotonic_clock, wall_clock};

#[cfg(target_arch = "wasm32")]
mod wasm_rt;

/// The real effects: the host interface plus the WASI clocks.
struct HostEffects;

impl flow::Effects for HostEffects {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        host::http_send(req)
    }
    fn emit_update_keys(&mut self, keys: &str) -> Result<(), String> {
        host::emit_update_keys(keys)
    }
    fn acquire_lease(&mut self) -> Result<Lease, String> {
        host::acquire_refresh_lease()
    }
    fn release_lease(&mut self) {
        host::release_refresh_lease()
    }
    fn now_unix(&self) -> u64 {
        wall_clock::now().seconds
    }
    fn sleep(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        monotonic_clock::subscribe_duration(nanos).block();
    }
}

impl authorize::Effects for HostEffects {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        host::http_send(req)
    }
    fn now_unix(&self) -> u64 {
        wall_clock::now().seconds
    }
    fn sleep(&mut self, d: Duration) {
        flow::Effects::sleep(self, d)
    }
}

struct Component;

impl Guest for Component {
    fn send(settings: Settings, keys: Option<String>, req: Request) -> Result<Response, SendError> {
        flow::send(&mut HostEffects, &settings, keys.as_deref(), &req)
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
