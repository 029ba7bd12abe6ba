//! The incoming request as rekey's request to the upstream: same method,
//! path, query, headers and body; minus the caller's `Authorization` (rekey
//! adds the credential's) and the hop-by-hop headers.

use crate::answer::Answer;
use crate::rekey::edge::relay::{self, ReceiveError};
use crate::rekey::oauth2::types::Request;
use crate::settings::Settings;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use rekey_edge_rt::body;
use rekey_edge_rt::wasi::http::types::{IncomingRequest, Method};

pub fn request(incoming: IncomingRequest, settings: &Settings) -> Result<Request, Answer> {
    let method = method(&incoming.method());
    let path = incoming
        .path_with_query()
        .unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        return Err(Answer::bad_request("the request target must be a path"));
    }
    let fields = incoming.headers();
    let headers: Vec<(String, String)> = fields
        .entries()
        .into_iter()
        .filter(|(name, _)| !is_dropped(name))
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    drop(fields);
    let incoming_body = incoming
        .consume()
        .map_err(|()| Answer::bad_request("the request body cannot be read"))?;
    // Read by the effects adapter, which holds it for every send.
    let body = relay::receive(incoming_body, settings.max_request_bytes).map_err(|e| match e {
        ReceiveError::TooLarge => Answer::too_large(),
        ReceiveError::Failed => Answer::bad_request("the request body broke off"),
    })?;
    Ok(Request {
        method,
        url: alloc::format!("{}{}", settings.upstream, path),
        headers,
        body,
    })
}

/// The caller's credentials never travel on; nor do connection headers.
fn is_dropped(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || body::is_hop_by_hop(name)
}

fn method(m: &Method) -> String {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(o) => o.as_str(),
    }
    .to_string()
}
