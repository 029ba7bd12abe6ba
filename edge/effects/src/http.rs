//! One exchange over `wasi:http/outgoing-handler`, exactly as given: no
//! redirects (wasi:http follows none), timeouts from the settings, a response
//! size cap, and each failure mapped to the contract's `transport-error` by
//! whether the request can have left.

use crate::exports::rekey::oauth2::types::{RequestHead, TransportError};
use crate::settings::Settings;
use crate::target::Target;
use crate::wasi::http::outgoing_handler;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use rekey_edge_rt::body::{self, ReadError};
use rekey_edge_rt::wasi::http::types::{
    ErrorCode, Fields, HeaderError, Method, OutgoingRequest, RequestOptions, Scheme,
};

/// A response with its body read whole (up to the cap).
pub struct Received {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn send(
    target: &Target,
    req: &RequestHead,
    body: &[u8],
    settings: &Settings,
) -> Result<Received, TransportError> {
    let headers = Fields::new();
    for (name, value) in &req.headers {
        if body::is_hop_by_hop(name) {
            continue;
        }
        match headers.append(name, value.as_bytes()) {
            Ok(()) => {}
            // The runtime keeps some names to itself; it sets them right.
            Err(HeaderError::Forbidden) => {}
            Err(_) => {
                return Err(TransportError::InvalidRequest(format!(
                    "header {name:?} is invalid"
                )));
            }
        }
    }
    // Framing is the runtime's, but a known length beats chunked encoding,
    // which some token endpoints refuse.
    if !body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
    }
    let request = OutgoingRequest::new(headers);
    let invalid = |what: &str| TransportError::InvalidRequest(format!("invalid {what}"));
    request
        .set_method(&method(&req.method))
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        }))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| invalid("path"))?;
    let outgoing_body = request.body().map_err(|()| invalid("body"))?;

    let options = RequestOptions::new();
    let ns = |ms: u64| ms.saturating_mul(1_000_000);
    // A runtime may not support every timeout; it then applies its own.
    let _ = options.set_connect_timeout(Some(ns(settings.connect_timeout_ms)));
    let _ = options.set_first_byte_timeout(Some(ns(settings.first_byte_timeout_ms)));
    let _ = options.set_between_bytes_timeout(Some(ns(settings.between_bytes_timeout_ms)));

    let pending = outgoing_handler::handle(request, Some(options)).map_err(|e| classify(&e))?;
    body::write_all(outgoing_body, body).map_err(|e| classify(&e))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(classify(&code)),
        _ => {
            return Err(TransportError::Other(
                "the runtime lost the response".into(),
            ));
        }
    };
    let status = response.status();
    let fields = response.headers();
    let headers: Vec<(String, String)> = fields
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    drop(fields);
    let incoming = response
        .consume()
        .map_err(|()| TransportError::Other("no response body".into()))?;
    let received = body::read_all(incoming, settings.max_response_bytes).map_err(|e| match e {
        ReadError::TooLarge(cap) => TransportError::TooLarge(cap),
        ReadError::Failed(Some(code)) => classify(&code),
        ReadError::Failed(None) => TransportError::Other("the response body broke off".into()),
    })?;
    Ok(Received {
        status,
        headers,
        body: received,
    })
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// `connect` only when the request provably never left: name resolution,
/// no route, refused, the TCP connect timing out, the TLS handshake.
/// `timeout` when it may have arrived. The messages name the failure only.
fn classify(code: &ErrorCode) -> TransportError {
    use ErrorCode as E;
    let connect = |what: &str| TransportError::Connect(what.into());
    match code {
        E::DnsTimeout | E::DnsError(_) => connect("name resolution failed"),
        E::DestinationNotFound
        | E::DestinationUnavailable
        | E::DestinationIpProhibited
        | E::DestinationIpUnroutable => connect("destination unreachable"),
        E::ConnectionRefused => connect("connection refused"),
        E::ConnectionTimeout => connect("connecting timed out"),
        E::ConnectionLimitReached => connect("connection limit reached"),
        E::TlsProtocolError | E::TlsCertificateError | E::TlsAlertReceived(_) => {
            connect("TLS handshake failed")
        }
        E::ConnectionReadTimeout | E::ConnectionWriteTimeout | E::HttpResponseTimeout => {
            TransportError::Timeout
        }
        E::HttpResponseBodySize(Some(n)) => TransportError::TooLarge(*n),
        E::HttpRequestMethodInvalid | E::HttpRequestUriInvalid | E::HttpRequestUriTooLong => {
            TransportError::InvalidRequest("the runtime refused the request line".into())
        }
        E::HttpRequestHeaderSectionSize(_) | E::HttpRequestHeaderSize(_) => {
            TransportError::InvalidRequest("the request headers are too large".into())
        }
        E::HttpRequestDenied => TransportError::Refused("the runtime denied the request".into()),
        E::ConnectionTerminated => TransportError::Other("connection closed mid-exchange".into()),
        E::InternalError(_) => TransportError::Other("runtime error".into()),
        other => TransportError::Other(format!("{other:?}")),
    }
}
