//! What the edge adapters (`effects`, `front`, `passthrough`) share: the WASI
//! 0.2.0 bindings they all import (the adapters bind the rest `with` these),
//! the no_std runtime, configuration, logs, sleeps and HTTP bodies.

#![no_std]

extern crate alloc;

pub mod body;
pub mod config;
pub mod log;
pub mod time;
#[cfg(target_arch = "wasm32")]
mod wasm_rt;

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "rekey:edge/common",
        path: "../wit",
        generate_all,
    });
}

pub use bindings::wasi;
