//! `types.body`: the component holds handles, the host the bytes. An API
//! body is never copied into the component's memory (it reads only the
//! token endpoint's answers), and a request body sent twice (the resend
//! after a refresh) is shared with the HTTP client, not copied.

use crate::bindings::rekey::oauth2::types::{self as wit, HostBody};
use crate::call::CallState;
use crate::{Request, Response};
use bytes::Bytes;
use wasmtime::component::Resource;

/// The host side of one `body` handle.
pub struct Body(pub(crate) Bytes);

/// A new handle in the call's table.
pub(crate) fn put(state: &mut CallState, bytes: Bytes) -> wasmtime::Result<Resource<Body>> {
    Ok(state.table.push(Body(bytes))?)
}

/// The bytes of a handle the component handed back (ends the handle).
pub(crate) fn take(state: &mut CallState, body: Resource<Body>) -> wasmtime::Result<Bytes> {
    Ok(state.table.delete(body)?.0)
}

/// The bytes of a handle the component lent (the handle stays).
pub(crate) fn get(state: &CallState, body: &Resource<Body>) -> wasmtime::Result<Bytes> {
    Ok(state.table.get(body)?.0.clone())
}

/// The component's view of a caller's request: its body a handle.
pub(crate) fn request(state: &mut CallState, req: Request) -> wasmtime::Result<wit::Request> {
    Ok(wit::Request {
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: put(state, req.body.into())?,
    })
}

/// A response the component returned, its body taken back from the table.
pub(crate) fn response(state: &mut CallState, resp: wit::Response) -> wasmtime::Result<Response> {
    Ok(Response {
        status: resp.status,
        headers: resp.headers,
        // Unshared by now (the table held the only other reference), so
        // this takes the buffer back without copying it.
        body: take(state, resp.body)?.into(),
    })
}

impl HostBody for CallState {
    fn new(&mut self, bytes: Vec<u8>) -> wasmtime::Result<Resource<Body>> {
        put(self, bytes.into())
    }

    fn read(&mut self, body: Resource<Body>, limit: u64) -> wasmtime::Result<Vec<u8>> {
        let bytes = &self.table.get(&body)?.0;
        let n = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Ok(bytes[..n].to_vec())
    }

    fn drop(&mut self, body: Resource<Body>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}
