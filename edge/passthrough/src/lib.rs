//! The benchmark's baseline: the proxy's forwarding without rekey. It reads
//! the request whole, sends it to `REKEY_UPSTREAM` with the same headers
//! dropped, reads the response whole and answers it, so the difference to
//! rekey-proxy.wasm is rekey (and its adapters' keys and config reads).

#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    world: "rekey:edge/passthrough",
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

use alloc::string::ToString;
use exports::wasi::http::incoming_handler::Guest;
use rekey_edge_rt::body;
use rekey_edge_rt::wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};
use wasi::http::outgoing_handler;

struct Passthrough;

impl Guest for Passthrough {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match forward(request) {
            Ok((status, headers, data)) => {
                let response = OutgoingResponse::new(headers);
                let _ = response.set_status_code(status);
                let Ok(outgoing) = response.body() else {
                    return;
                };
                ResponseOutparam::set(out, Ok(response));
                let _ = body::write_all(outgoing, &data);
            }
            Err(e) => ResponseOutparam::set(out, Err(e)),
        }
    }
}

fn copy(fields: &Fields) -> Fields {
    let copied = Fields::new();
    for (name, value) in fields.entries() {
        // The caller's Authorization goes through: without rekey, the caller
        // holds the token.
        if !body::is_hop_by_hop(&name) {
            let _ = copied.append(&name, &value);
        }
    }
    copied
}

fn forward(request: IncomingRequest) -> Result<(u16, Fields, alloc::vec::Vec<u8>), ErrorCode> {
    let fail = |m: &str| ErrorCode::InternalError(Some(m.to_string()));
    // The environment only: the baseline imports no wasi:config.
    let upstream = rekey_edge_rt::wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, _)| k == "REKEY_UPSTREAM")
        .map(|(_, v)| v)
        .ok_or_else(|| fail("REKEY_UPSTREAM is not configured"))?;
    let (scheme, authority) = upstream
        .split_once("://")
        .ok_or_else(|| fail("REKEY_UPSTREAM is not a URL"))?;
    let authority = authority.trim_end_matches('/');
    let fields = request.headers();
    let headers = copy(&fields);
    drop(fields);
    let method = request.method();
    let path = request.path_with_query();
    let data = body::read_all(request.consume().map_err(|()| fail("body"))?, 16 << 20)
        .map_err(|_| fail("body"))?;
    if !data.is_empty() {
        let _ = headers.set("content-length", &[data.len().to_string().into_bytes()]);
    }
    let outgoing = OutgoingRequest::new(headers);
    let _ = outgoing.set_method(&method);
    let _ = outgoing.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }));
    let _ = outgoing.set_authority(Some(authority));
    let _ = outgoing.set_path_with_query(path.as_deref());
    let outgoing_body = outgoing.body().map_err(|()| fail("body"))?;
    let pending = outgoing_handler::handle(outgoing, None)?;
    body::write_all(outgoing_body, &data)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(r)) => r?,
        _ => return Err(fail("no response")),
    };
    let status = response.status();
    let fields = response.headers();
    let headers = copy(&fields);
    drop(fields);
    let data = body::read_all(response.consume().map_err(|()| fail("body"))?, 4 << 20)
        .map_err(|_| fail("body"))?;
    let _ = headers.set("content-length", &[data.len().to_string().into_bytes()]);
    Ok((status, headers, data))
}

export!(Passthrough);
