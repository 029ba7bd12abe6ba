//! `http` types at the edges and a `tower::Service`: code written against
//! `http::Request` and tower stacks sends through rekey by using a
//! credential's handle as its service (`ServiceExt::oneshot`, a `Buffer`, a
//! layer's inner service). Bodies are `Bytes`, whole: rekey may send a
//! request twice (once more after a refresh), so it holds the body anyway.

use crate::{CredentialHandle, Error, Request, Response};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

impl TryFrom<http::Request<Bytes>> for Request {
    type Error = Error;

    /// Needs an absolute URI; header values must be text (rekey's requests
    /// carry them as strings), or this is [`Error::InvalidRequest`].
    fn try_from(req: http::Request<Bytes>) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
            return Err(Error::InvalidRequest(
                "the request's URI must be absolute (scheme and host)".into(),
            ));
        }
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let value = value.to_str().map_err(|_| {
                Error::InvalidRequest(format!("header {name} is not visible ASCII text"))
            })?;
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
        Ok(Request {
            method: parts.method.as_str().to_owned(),
            url: parts.uri.to_string(),
            headers,
            body: body.into(),
        })
    }
}

impl From<Response> for http::Response<Bytes> {
    fn from(resp: Response) -> Self {
        let mut out = http::Response::new(Bytes::from(resp.body));
        // The status and names came from an HTTP response the host parsed:
        // they are valid; anything that is not is dropped rather than invented.
        *out.status_mut() = http::StatusCode::from_u16(resp.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in resp.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::try_from(value),
            ) {
                out.headers_mut().append(name, value);
            }
        }
        out
    }
}

impl tower_service::Service<http::Request<Bytes>> for CredentialHandle {
    type Response = http::Response<Bytes>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    /// Always ready: rekey's own bounds (instance slots, the credential's
    /// share) apply inside the call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let handle = self.clone();
        Box::pin(async move {
            let req = Request::try_from(req)?;
            handle.send(req).await.map(Into::into)
        })
    }
}
