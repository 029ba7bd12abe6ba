//! The incoming request as rekey's request to the upstream: same method,
//! path and query, the allowed end-to-end headers (`gate.rs`) and the body.
//! rekey adds the credential's `Authorization`.

use crate::answer::Answer;
use crate::gate;
use crate::rekey::edge::relay::{self, ReceiveError};
use crate::rekey::oauth2::types::Request;
use crate::settings::Settings;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use rekey_edge_rt::wasi::http::types::{IncomingRequest, Method};

/// What the gate looks at, read once from the incoming request.
pub struct Incoming {
    pub method: String,
    /// `/path?query`.
    pub target: String,
    /// The request's authority and every `Host` header it carries.
    pub hosts: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl Incoming {
    pub fn read(request: &IncomingRequest) -> Incoming {
        let fields = request.headers();
        let headers: Vec<(String, String)> = fields
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        drop(fields);
        let mut hosts: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string())
            .collect();
        hosts.extend(request.authority());
        Incoming {
            method: method(&request.method()),
            target: request.path_with_query().unwrap_or_else(|| "/".to_string()),
            hosts,
            headers,
        }
    }

    /// The caller's bearer secret, if it sent exactly one `Authorization`.
    pub fn bearer(&self) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"));
        match (values.next(), values.next()) {
            (Some((_, v)), None) => gate::bearer(v),
            _ => None,
        }
    }
}

pub fn request(
    incoming: IncomingRequest,
    seen: Incoming,
    settings: &Settings,
) -> Result<Request, Answer> {
    let headers = gate::forwarded_headers(seen.headers, &settings.access.forward_headers);
    let incoming_body = incoming
        .consume()
        .map_err(|()| Answer::bad_request("the request body cannot be read"))?;
    // Read by the effects adapter, which holds it for every send.
    let body = relay::receive(incoming_body, settings.max_request_bytes).map_err(|e| match e {
        ReceiveError::TooLarge => Answer::too_large(),
        ReceiveError::Failed => Answer::bad_request("the request body broke off"),
    })?;
    Ok(Request {
        method: seen.method,
        url: alloc::format!("{}{}", settings.upstream, seen.target),
        headers,
        body,
    })
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
