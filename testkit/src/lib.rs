//! rekey's test kit: a loopback OAuth2 provider and protected API that behaves
//! like a strict real one (short-lived access tokens, refresh-token rotation,
//! reuse detection that revokes the grant, client authentication checked),
//! with knobs to make it misbehave. The demo, every host's tests and the
//! benchmarks run against it; it never ships in the `rekey` library.
//!
//! In Rust, start it in-process with [`Provider::start`]. From other
//! languages, run the `rekey-testkit` binary: it prints one JSON line with
//! its URLs and client, then serves until killed; `/_testkit/…` exposes the
//! knobs and counters over HTTP (see `admin.rs`).

mod admin;
pub mod assertion;
mod provider;

pub use admin::stats_json;
pub use provider::{
    ApiRequest, ClientAuth, LostAnswer, Provider, ProviderConfig, Refusal, Stats, TestClient,
};
