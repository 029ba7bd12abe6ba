//! rekey's end-to-end scenarios: one test binary, so wasmtime is linked once.
//! Everything runs for real: the `rekey` host library and binary, the guest
//! component, HTTP on loopback against the test kit's provider or
//! oidc-provider, SQLite files and PostgreSQL servers. Nothing stands in for
//! either side of the sandbox.
//!
//! `cargo test --test scenarios [filter]`; e.g. `fleet::` or `oidc_provider::`.

mod support;

mod authorize;
mod cli;
mod cli_boundaries;
mod client_credentials;
mod component;
mod dpop;
mod fleet;
mod fleet_worker;
mod full_disk;
mod http_types;
mod instance_url;
mod keepalive;
mod oidc_provider;
mod refresh_and_retry;
mod reliability;
mod runtime_edges;
mod signed_assertions;
mod store_contract;
mod store_faults;
mod store_files;
mod tls;
mod warm_instances;
