//! rekey's `host` interface for one call, as an edge runtime can supply it:
//! HTTP over `wasi:http/outgoing-handler`, the keys, the refresh lease and the
//! in-flight marker over `wasi:filesystem` (behind the `Store` seam). The
//! runtime makes one instance per incoming request, so an instance's state is
//! one call's state.

#![no_std]

extern crate alloc;

mod fs_store;
mod http;
mod lease;
mod settings;
mod store;
mod target;

wit_bindgen::generate!({
    world: "rekey:edge/effects",
    path: "../wit",
    with: {
        "wasi:cli/environment@0.2.0": rekey_edge_rt::wasi::cli::environment,
        "wasi:cli/stderr@0.2.0": rekey_edge_rt::wasi::cli::stderr,
        "wasi:io/error@0.2.0": rekey_edge_rt::wasi::io::error,
        "wasi:io/streams@0.2.0": rekey_edge_rt::wasi::io::streams,
        "wasi:io/poll@0.2.0": rekey_edge_rt::wasi::io::poll,
        "wasi:clocks/monotonic-clock@0.2.0": rekey_edge_rt::wasi::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.0": rekey_edge_rt::wasi::clocks::wall_clock,
        "wasi:http/types@0.2.0": rekey_edge_rt::wasi::http::types,
    },
    generate_all,
});

use alloc::format;
use alloc::string::{String, ToString};
use core::cell::RefCell;
use exports::rekey::edge::keys;
use exports::rekey::oauth2::host;
use exports::rekey::oauth2::types::{Lease, Request, Response, TransportError};
use lease::Call;
use settings::Settings;

struct Effects;

/// The call's state. wasm32 runs one thread, and the runtime one request per
/// instance.
struct Global(RefCell<Option<Call<fs_store::FileStore>>>);
unsafe impl Sync for Global {}
static CALL: Global = Global(RefCell::new(None));

/// Runs `f` on this instance's call, opening the store on first use. A
/// configuration or store that cannot be opened is the error.
fn with_call<T>(f: impl FnOnce(&mut Call<fs_store::FileStore>) -> T) -> Result<T, String> {
    let mut slot = CALL.0.borrow_mut();
    if slot.is_none() {
        let settings = Settings::load()?;
        let store = fs_store::FileStore::open(&settings.keys_dir, &settings.credential)
            .map_err(|e| e.to_string())?;
        *slot = Some(Call::new(store, settings));
    }
    Ok(f(slot.as_mut().expect("opened above")))
}

impl host::Guest for Effects {
    fn http_send(req: Request) -> Result<Response, TransportError> {
        with_call(|call| call.http_send(req)).unwrap_or_else(|e| Err(TransportError::Refused(e)))
    }

    fn emit_update_keys(keys: String) -> Result<(), String> {
        with_call(|call| call.save_keys(&keys)).and_then(|r| r)
    }

    fn acquire_refresh_lease() -> Result<Lease, String> {
        with_call(|call| call.acquire()).and_then(|r| r)
    }

    fn release_refresh_lease() {
        let _ = with_call(|call| call.release());
    }
}

impl keys::Guest for Effects {
    fn load() -> Result<Option<String>, String> {
        with_call(|call| call.load()).and_then(|r| r)
    }

    fn end_call() {
        let _ = with_call(|call| call.release());
    }
}

/// A short line for the server's log: never a token, secret, body or URL query.
fn log(msg: &str) {
    rekey_edge_rt::log::line(&format!("rekey-edge effects: {msg}"));
}

export!(Effects);
