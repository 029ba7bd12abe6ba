//! HTTP as the routine sees it: requests and responses whose bodies are
//! whatever the effects hold them as (`types.body` handles in the component,
//! their bytes natively), so an API body passes through without a copy and
//! only the small bodies the guest decides on are read.

use crate::rekey::oauth2::types::{Purpose, TransportError};
use crate::token::MAX_TOKEN_RESPONSE;
use alloc::string::String;
use alloc::vec::Vec;

/// A request; `B` is its body (bytes by default: the guest's own forms).
#[derive(Clone, Debug, PartialEq)]
pub struct Request<B = Vec<u8>> {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: B,
}

/// A response; `B` is its body (bytes by default: a small answer, read).
#[derive(Clone, Debug, PartialEq)]
pub struct Response<B = Vec<u8>> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: B,
}

/// `host.http-send` and the body handles.
pub trait Http {
    /// A body the host holds.
    type Body;
    /// One exchange; the body is borrowed, so a request can be sent again.
    fn http_send(
        &mut self,
        purpose: Purpose,
        req: &Request<&Self::Body>,
    ) -> Result<Response<Self::Body>, TransportError>;
    /// A host body of these bytes.
    fn new_body(&mut self, bytes: Vec<u8>) -> Self::Body;
    /// The body's first `limit` bytes.
    fn read_body(&mut self, body: &Self::Body, limit: u64) -> Vec<u8>;
}

/// A token or device endpoint exchange: the form goes out as a new body, and
/// the answer is read up to one byte more than any token response may have
/// (so an oversized one is seen as such, without reading all of it).
pub fn exchange(
    fx: &mut impl Http,
    purpose: Purpose,
    req: &Request,
) -> Result<Response, TransportError> {
    let body = fx.new_body(req.body.clone());
    let sent = Request {
        method: req.method.clone(),
        url: req.url.clone(),
        headers: req.headers.clone(),
        body: &body,
    };
    let resp = fx.http_send(purpose, &sent)?;
    let bytes = fx.read_body(&resp.body, MAX_TOKEN_RESPONSE as u64 + 1);
    Ok(Response {
        status: resp.status,
        headers: resp.headers,
        body: bytes,
    })
}
