//! The rekey component: OAuth2 refresh-and-retry against two host imports.
//!
//! `flow` is the state machine, written against the [`flow::Effects`] trait so it
//! reads like the routine it implements and can be unit-tested natively; this
//! file only binds it to the WIT imports and export.

mod basic_auth;
mod flow;
mod keys;
mod token;

wit_bindgen::generate!({
    world: "client",
    path: "../wit",
});

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The real effects: the host's imports plus the WASI clocks.
struct HostEffects;

impl flow::Effects for HostEffects {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        http_send(req)
    }
    fn emit_update_keys(&mut self, keys: &str) -> Result<(), String> {
        emit_update_keys(keys)
    }
    fn acquire_lease(&mut self) -> Result<Option<String>, String> {
        acquire_refresh_lease()
    }
    fn release_lease(&mut self) {
        release_refresh_lease()
    }
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

struct Component;

impl Guest for Component {
    fn send_authorized(
        settings: Settings,
        keys: Option<String>,
        req: Request,
    ) -> Result<Response, SendError> {
        flow::send(&mut HostEffects, &settings, keys.as_deref(), &req)
    }
}

export!(Component);
