//! Whole HTTP bodies in and out of wasi:http streams, and the headers a proxy
//! never forwards.

use crate::wasi::http::types::{ErrorCode, IncomingBody, OutgoingBody, http_error_code};
use crate::wasi::io::streams::StreamError;
use alloc::string::String;
use alloc::vec::Vec;

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// More than the cap (bytes).
    TooLarge(u64),
    /// The stream failed; the HTTP error code when the runtime gave one.
    Failed(Option<ErrorCode>),
}

/// Reads a body to its end, refusing more than `cap` bytes.
pub fn read_all(body: IncomingBody, cap: u64) -> Result<Vec<u8>, ReadError> {
    let stream = body.stream().map_err(|()| ReadError::Failed(None))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if out.len() as u64 + chunk.len() as u64 > cap {
                    return Err(ReadError::TooLarge(cap));
                }
                out.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ReadError::Failed(http_error_code(&e)));
            }
        }
    }
    drop(stream);
    let _trailers = IncomingBody::finish(body);
    Ok(out)
}

/// Writes `data` as the whole body and finishes it.
pub fn write_all(body: OutgoingBody, data: &[u8]) -> Result<(), ErrorCode> {
    let fail = |_| ErrorCode::InternalError(Some("writing the body failed".into()));
    let stream = body.write().map_err(|()| ErrorCode::InternalError(None))?;
    // blocking-write-and-flush takes at most 4096 bytes per call.
    for chunk in data.chunks(4096) {
        stream.blocking_write_and_flush(chunk).map_err(fail)?;
    }
    drop(stream);
    OutgoingBody::finish(body, None)
}

/// Hop-by-hop and framing headers (RFC 9110 §7.6.1): they describe one
/// connection, so a proxy drops them and the runtime frames each message.
pub fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 11] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The header names a `connection` header lists (RFC 9110 §7.6.1): they
/// describe this connection only, so a proxy drops them too.
pub fn connection_named(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Whether a proxy drops `name` in either direction: hop-by-hop, or listed
/// in `connection` (`named`, lower case).
pub fn is_connection_header(name: &str, named: &[String]) -> bool {
    is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name))
}
