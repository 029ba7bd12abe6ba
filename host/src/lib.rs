//! rekey host: runs the rekey component (OAuth2 refresh-and-retry) in
//! wasmtime and supplies its imports with real HTTP and a durable store.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rekey::{Rekey, Request, SqliteStore};
//! use std::sync::Arc;
//!
//! let rekey = Rekey::new(rekey::Config::default())?;
//! let crm = rekey.credential(Arc::new(SqliteStore::open("rekey.db")?), "crm");
//! let resp = crm.send(Request::get("https://api.example.com/v1/me")).await?;
//! println!("{} {}", resp.status, resp.text()?);
//! # Ok(()) }
//! ```
//!
//! Unix only (see below); the component itself runs wherever wasmtime does.

#![warn(missing_docs)]

// Files are made owner-only as ssh does (modes, O_NOFOLLOW, owner checks),
// the loopback listener checks the peer's uid, and the CLI defers signals:
// all through Unix APIs, with no Windows equivalent written yet. Say so at
// build time rather than with a wall of unresolved imports.
#[cfg(not(unix))]
compile_error!(
    "the rekey host library runs on Unix (Linux, macOS, the BSDs) only: its private files, loopback peer checks \
     and signal handling use Unix APIs. The component itself (host/component/rekey_guest.wasm) runs anywhere \
     wasmtime does: on Windows, embed it with your own host."
);

/// Generated from `wit/`: the `rekey:oauth2@0.5.0` types are re-exported
/// below; the rest is the host's own business.
#[allow(missing_docs)] // documented in wit/rekey.wit
mod bindings {
    wasmtime::component::bindgen!({
        world: "refresher",
        path: "wit", // a link to the top-level wit/, so the packaged crate carries it
        // A body's methods only touch the call's table; a bad handle traps.
        imports: {
            default: async,
            "rekey:oauth2/types.[constructor]body": trappable,
            "rekey:oauth2/types.[method]body.read": trappable,
            "rekey:oauth2/types.[drop]body": trappable,
        },
        exports: { default: async },
        // The clocks and randomness come from wasmtime-wasi; a body is the
        // host's bytes (see `body`).
        with: {
            "rekey:oauth2/types.body": crate::body::Body,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
        },
    });
}

pub mod authorize;
mod body;
pub mod cache;
mod call;
pub mod dpop;
mod drive;
mod error;
mod handle;
mod http;
mod message;
pub mod observe;
pub mod origins;
mod private_fs;
mod runtime;
mod secret;
pub mod settings;
pub mod signing;
pub mod store;
mod tls;
mod token_set;
mod tower;
mod warm;

pub use bindings::rekey::oauth2::types::{OauthError, TransportError};
pub use dpop::Dpop;
pub use error::{Category, Error};
pub use handle::CredentialHandle;
pub use http::{HttpConfig, HttpsProxy};
pub use message::{Request, Response};
pub use runtime::{Config, KeepaliveOutcome, Rekey, engine_config};
pub use secret::Secret;
pub use settings::{ClientAuth, ClientSecret, Grant, Settings, Strategy};
pub use signing::{Signing, SigningAlgorithm, SigningKey, SigningKeySource};
pub use store::{
    Credential, DeadGrant, KeyStore, Lease, MemoryStore, Record, RefreshMark, SqliteStore,
    StoreError,
};
pub use tls::ClientIdentity;
pub use token_set::{TokenSet, TokenSetError};

/// The rekey component: `guest/` as `guest/build.sh` builds it (size-optimised),
/// committed so this crate builds without the wasm target; CI rebuilds it and
/// compares the bytes (`guest/build.sh --check`).
pub const GUEST_WASM: &[u8] = include_bytes!("../component/rekey_guest.wasm");
