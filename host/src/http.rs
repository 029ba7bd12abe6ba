//! `http-send`: one real HTTP exchange (reqwest over rustls), no redirects,
//! bounded in time and size.

use crate::bindings::rekey::oauth2::types::{Request, Response, TransportError};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    /// The whole exchange, body included.
    pub total_timeout: Duration,
    /// Larger response bodies fail with `too-large` instead of filling memory.
    pub max_response_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A pooled client shared by every call of one [`crate::Rekey`]. Built on
/// first use: building it reads and parses the system's CA bundle (~1.7 ms),
/// which a `Rekey` that is created but never sends should not pay.
#[derive(Clone)]
pub struct HttpClient {
    client: Arc<OnceLock<Result<reqwest::Client, String>>>,
    config: HttpConfig,
}

static CRYPTO: Once = Once::new();

impl HttpClient {
    pub fn new(config: &HttpConfig) -> Self {
        HttpClient {
            client: Arc::new(OnceLock::new()),
            config: config.clone(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, TransportError> {
        let built = self.client.get_or_init(|| {
            // reqwest is built without a default crypto provider; ring is ours.
            CRYPTO.call_once(|| {
                let _ = rustls::crypto::ring::default_provider().install_default();
            });
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(self.config.connect_timeout)
                .timeout(self.config.total_timeout)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        });
        built.as_ref().map_err(|e| TransportError::Other(e.clone()))
    }

    pub async fn send(&self, req: Request) -> Result<Response, TransportError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| TransportError::InvalidRequest("invalid HTTP method".into()))?;
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| TransportError::InvalidRequest(format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransportError::InvalidRequest(
                "URL scheme must be http or https".into(),
            ));
        }
        let mut builder = self.client()?.request(method, url);
        for (name, value) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TransportError::InvalidRequest("invalid header name".into()))?;
            // Never echo a value: this may be the Authorization header.
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                TransportError::InvalidRequest(format!("invalid value for header {name}"))
            })?;
            builder = builder.header(name, value);
        }
        let mut resp = builder
            .body(req.body)
            .send()
            .await
            .map_err(transport_error)?;

        let cap = self.config.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(TransportError::TooLarge(cap));
        }
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(TransportError::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// reqwest's messages name the URL, which may carry secrets in its query:
/// keep its own words without it, plus the causes (which never name it).
fn transport_error(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    let connect = e.is_connect();
    let e = e.without_url();
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    if connect {
        TransportError::Connect(message)
    } else {
        TransportError::Other(message)
    }
}
