//! The proxy's entry point: `wasi:http/incoming-handler`. An incoming request
//! is forwarded to the configured upstream through rekey's `client.send`,
//! which reads the credential's record itself; rekey's errors become small
//! JSON answers with no secret.

#![no_std]

extern crate alloc;

mod answer;
mod forward;
mod settings;

wit_bindgen::generate!({
    world: "rekey:edge/front",
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

fn proxy(request: IncomingRequest) -> Answer {
    let settings = match settings::Settings::load() {
        Ok(s) => s,
        Err(e) => return Answer::misconfigured(&e),
    };
    let req = match forward::request(request, &settings) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match client::send(&settings.rekey, req) {
        Ok(response) => Answer::upstream(response),
        Err(e) => Answer::from_send_error(e),
    }
}

export!(Front);
