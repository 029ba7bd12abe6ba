//! The proxy's entry point: `wasi:http/incoming-handler`. An incoming request
//! is forwarded to the configured upstream through rekey's `client.send`,
//! which reads the credential's record itself; rekey's errors become small
//! JSON answers with no secret.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod answer;
mod forward;
mod gate;
mod operator;
mod settings;

wit_bindgen::generate!({
    world: "rekey:edge/front",
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

use answer::Answer;
use exports::wasi::http::incoming_handler::Guest;
use rekey::oauth2::client;
use rekey_edge_rt::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Front;

impl Guest for Front {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        proxy(request).send(out);
    }
}

/// The gate, in this order: nothing about the credential is read, and
/// nothing is sent, before the caller is known and the request allowed.
fn proxy(request: IncomingRequest) -> Answer {
    let settings = match settings::Settings::load() {
        Ok(s) => s,
        Err(e) => return Answer::misconfigured(&e),
    };
    let access = &settings.access;
    let seen = forward::Incoming::read(&request);
    if gate::never_allowed(&seen.method) {
        return Answer::method_not_allowed(&access.methods);
    }
    if seen.hosts.is_empty()
        || !seen
            .hosts
            .iter()
            .all(|h| gate::host_allowed(h, &access.hosts))
    {
        return Answer::host_not_allowed();
    }
    if operator::is_operator_path(&seen.target) {
        return operator::handle(&seen, access, &settings.rekey);
    }
    if !seen
        .bearer()
        .is_some_and(|s| gate::secret_matches(s, &access.callers))
    {
        return Answer::unauthenticated("rekey-proxy");
    }
    if !gate::method_allowed(&seen.method, &access.methods) {
        return Answer::method_not_allowed(&access.methods);
    }
    match gate::check_path(&seen.target, &access.paths) {
        Ok(()) => {}
        Err(gate::BadPath::Malformed(why)) => return Answer::bad_path(why),
        Err(gate::BadPath::NotAllowed) => return Answer::path_not_allowed(),
    }
    let req = match forward::request(request, seen, &settings) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match client::send(&settings.rekey, req) {
        Ok(response) => Answer::upstream(response),
        Err(e) => Answer::from_send_error(e),
    }
}

export!(Front);
