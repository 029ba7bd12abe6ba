//! rekey's `host` interface for one call, as an edge runtime can supply it:
//! HTTP over `wasi:http/outgoing-handler` (with the second-line checks on
//! where it may go), and the credential's record over `wasi:filesystem` with
//! compare-and-swap (behind the `Cas` seam). Effects only: the component
//! runs the fleet protocol (lease, refresh mark, dead grant) on the record.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod boundary;
mod fs_cas;
mod http;
mod operator;
mod record;
mod settings;
mod store;
mod target;
mod wasi_dir;

wit_bindgen::generate!({
    world: "rekey:edge/effects",
    path: "../wit",
    with: {
        "wasi:config/store@0.2.0-draft": rekey_edge_rt::wasi::config::store,
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
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::OnceCell;
use exports::rekey::edge::relay::{self, ReceiveError};
use exports::rekey::oauth2::host;
use exports::rekey::oauth2::signer;
use exports::rekey::oauth2::types::{
    self, BodyBorrow, CredentialRecord, Purpose, RequestHead, Response, StoredRecord,
    TransportError, WriteError,
};
use fs_cas::FileCas;
use rekey_edge_rt::body::ReadError;
use rekey_edge_rt::wasi::http::types::{ErrorCode, IncomingBody, OutgoingBody};
use settings::Settings;
use target::Target;

struct Effects;

/// The configuration and the opened store. The runtime makes one instance
/// per incoming request and wasm32 runs one thread.
struct Call {
    settings: Settings,
    store: FileCas<wasi_dir::WasiDir>,
}

struct Global(OnceCell<Result<Call, String>>);
unsafe impl Sync for Global {}
static CALL: Global = Global(OnceCell::new());

/// This instance's call, opened on first use; the error says why it cannot be.
fn call() -> Result<&'static Call, String> {
    CALL.0
        .get_or_init(|| {
            let settings = Settings::load()?;
            if settings.test_hold_writes {
                // The hook ships in the proxy (the scenarios test this very
                // build): never silent. Once per instance: every request
                // under `wasmtime serve`.
                log(
                    "WARNING: REKEY_TEST_HOLD_WRITES=1 is set: a test hook can hold this proxy's \
                     record writes; for tests only, never in production",
                );
            }
            let store = wasi_dir::open(
                &settings.keys_dir,
                &settings.credential,
                settings.test_hold_writes,
            )?;
            Ok(Call { settings, store })
        })
        .as_ref()
        .map_err(String::clone)
}

/// The bytes of one `body` handle. They stay in this component: the rekey
/// component holds handles and copies only what it reads (token answers), so
/// an API body crosses into it never, whatever its size.
pub struct Bytes(Vec<u8>);

impl types::Guest for Effects {
    type Body = Bytes;
}

impl types::GuestBody for Bytes {
    fn new(bytes: Vec<u8>) -> Bytes {
        Bytes(bytes)
    }

    fn read(&self, limit: u64) -> Vec<u8> {
        let n = usize::try_from(limit).map_or(self.0.len(), |l| l.min(self.0.len()));
        self.0[..n].to_vec()
    }
}

impl relay::Guest for Effects {
    fn receive(from: IncomingBody, cap: u64) -> Result<types::Body, ReceiveError> {
        match rekey_edge_rt::body::read_all(from, cap) {
            Ok(bytes) => Ok(types::Body::new(Bytes(bytes))),
            Err(ReadError::TooLarge(_)) => Err(ReceiveError::TooLarge),
            Err(ReadError::Failed(_)) => Err(ReceiveError::Failed),
        }
    }

    fn size(b: BodyBorrow<'_>) -> u64 {
        b.get::<Bytes>().0.len() as u64
    }

    fn deliver(b: types::Body, to: OutgoingBody) -> Result<(), ErrorCode> {
        rekey_edge_rt::body::write_all(to, &b.get::<Bytes>().0)
    }
}

impl host::Guest for Effects {
    fn http_send(
        purpose: Purpose,
        head: RequestHead,
        body: BodyBorrow<'_>,
    ) -> Result<Response, TransportError> {
        let call = call().map_err(TransportError::Refused)?;
        let target =
            Target::parse(&head.url).map_err(|e| TransportError::InvalidRequest(e.into()))?;
        boundary::check(purpose, &target, &call.settings)?;
        let response = http::send(&target, &head, &body.get::<Bytes>().0, &call.settings)?;
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: types::Body::new(Bytes(response.body)),
        })
    }

    fn read_record() -> Result<StoredRecord, String> {
        store::read(&call()?.store)
    }

    fn emit_update_keys(expected_version: u64, data: CredentialRecord) -> Result<u64, WriteError> {
        let call = call().map_err(WriteError::Failed)?;
        let now = rekey_edge_rt::time::unix_ms() / 1000;
        let written = store::write(&call.store, expected_version, &data, now);
        if let Err(WriteError::Failed(m) | WriteError::Unknown(m)) = &written {
            log(&format!("writing the record: {m}"));
        }
        written
    }
}

/// The proxy holds no private keys: `REKEY_CLIENT_AUTH` and `REKEY_GRANT`
/// offer nothing that signs, so the component never asks; if it did, this
/// says why it cannot.
impl signer::Guest for Effects {
    fn sign(_: types::SigningAlgorithm, _: Vec<u8>) -> Result<Vec<u8>, String> {
        Err("the edge proxy holds no signing keys (private-key-jwt and jwt-bearer are not available at the edge)".into())
    }
    fn dpop_public_key(_: types::SigningAlgorithm) -> Result<String, String> {
        Err("the edge proxy holds no DPoP keys (DPoP is not available at the edge)".into())
    }
    fn dpop_sign(_: types::SigningAlgorithm, _: Vec<u8>) -> Result<Vec<u8>, String> {
        Err("the edge proxy holds no DPoP keys (DPoP is not available at the edge)".into())
    }
}

/// A short line for the server's log: never a token, secret, body or URL query.
fn log(msg: &str) {
    rekey_edge_rt::log::line(&format!("rekey-edge effects: {msg}"));
}

export!(Effects);
