//! `http-send`: one real HTTP exchange (reqwest over rustls), no redirects,
//! bounded in time and size, to `localhost` only on loopback addresses.

mod loopback;

use crate::Response;
use crate::bindings::rekey::oauth2::types::{RequestHead, TransportError};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug)]
/// Bounds on every HTTP exchange the host makes for the guest.
pub struct HttpConfig {
    /// Until the connection (TLS included) is up.
    pub connect_timeout: Duration,
    /// The whole exchange, body included.
    pub total_timeout: Duration,
    /// Larger response bodies fail with `too-large` instead of filling memory.
    pub max_response_bytes: u64,
    /// Presented to a server that asks for a client certificate (mutual
    /// TLS); None: none is presented.
    pub client_identity: Option<crate::tls::ClientIdentity>,
    /// A proxy that https:// requests tunnel through (HTTP CONNECT: it sees
    /// the host and port, never a token). Plain-http requests, which go only
    /// to loopback, never use it; the environment's proxies are never used.
    pub https_proxy: Option<HttpsProxy>,
}

/// An explicit proxy for https:// requests (`http://proxy:3128`, with
/// `user:password@` if it needs them). `Debug` never shows the URL, which may
/// carry a password.
#[derive(Clone)]
pub struct HttpsProxy(crate::Secret);

impl HttpsProxy {
    /// Checks `url`: `http://` or `https://`, a host, no path, query or fragment.
    /// Errors never repeat the URL.
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|_| "the https proxy is not a URL".to_owned())?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err("the https proxy must be http://host:port or https://host:port".into());
        }
        if !matches!(parsed.path(), "" | "/")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(
                "the https proxy must be an origin, without path, query or fragment".into(),
            );
        }
        Ok(HttpsProxy(crate::Secret::new(url)))
    }
}

impl std::fmt::Debug for HttpsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpsProxy([redacted])")
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 4 * 1024 * 1024,
            client_identity: None,
            https_proxy: None,
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
    lookup: loopback::Lookup,
}

impl HttpClient {
    pub fn new(config: &HttpConfig) -> Self {
        Self::with_lookup(config, loopback::system())
    }

    fn with_lookup(config: &HttpConfig, lookup: loopback::Lookup) -> Self {
        HttpClient {
            client: Arc::new(OnceLock::new()),
            config: config.clone(),
            lookup,
        }
    }

    fn client(&self) -> Result<&reqwest::Client, TransportError> {
        let built = self.client.get_or_init(|| {
            let tls = crate::tls::client_config(self.config.client_identity.as_ref())
                .map_err(|e| format!("cannot configure TLS: {e}"))?;
            let mut builder = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .redirect(reqwest::redirect::Policy::none())
                // Never the environment's proxies: `http_proxy` would carry
                // tokens and client secrets to whatever listens there.
                .no_proxy();
            if let Some(proxy) = &self.config.https_proxy {
                // https only: the tunnel carries TLS end to end.
                let proxy = reqwest::Proxy::https(proxy.0.expose())
                    .map_err(|_| "the https proxy is not usable".to_owned())?;
                builder = builder.proxy(proxy);
            }
            builder
                // Every name is resolved here: `localhost` connects only to
                // loopback addresses, checked on the resolver's answers,
                // which are the only addresses the connector dials.
                .dns_resolver(Arc::new(loopback::Guard(self.lookup.clone())))
                .connect_timeout(self.config.connect_timeout)
                .timeout(self.config.total_timeout)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        });
        built.as_ref().map_err(|e| TransportError::Other(e.clone()))
    }

    /// Sends `req` with `body` to `url`, which [`parse_url`] made of
    /// `req.url` (parsed once: every check of the host is made on the URL it
    /// sends to).
    pub(crate) async fn send_to(
        &self,
        url: reqwest::Url,
        req: &RequestHead,
        body: Bytes,
    ) -> Result<Response, TransportError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| TransportError::InvalidRequest("invalid HTTP method".into()))?;
        // The sandbox's boundary: whatever the guest decided, nothing rekey
        // sends (every request carries a bearer token, a refresh token or a
        // client secret) leaves in clear text but to this machine. Checked
        // on the URL exactly as it is sent.
        if url.scheme() == "http" && !is_loopback(&url) {
            return Err(TransportError::Refused(
                "credentials go over plain http:// only to loopback; use https://".into(),
            ));
        }
        let mut builder = self.client()?.request(method, url);
        for (name, value) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TransportError::InvalidRequest("invalid header name".into()))?;
            // The Host sent is always the URL's own (reqwest writes it): the
            // component refuses one naming another site; this is the second
            // line (no domain fronting).
            if name == reqwest::header::HOST {
                continue;
            }
            // Never echo a value: this may be the Authorization header.
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                TransportError::InvalidRequest(format!("invalid value for header {name}"))
            })?;
            builder = builder.header(name, value);
        }
        let mut resp = builder.body(body).send().await.map_err(transport_error)?;

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

/// `url` as the client will send to it: http or https only.
pub(crate) fn parse_url(url: &str) -> Result<reqwest::Url, TransportError> {
    let url = reqwest::Url::parse(url)
        .map_err(|e| TransportError::InvalidRequest(format!("invalid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TransportError::InvalidRequest(
            "URL scheme must be http or https".into(),
        ));
    }
    Ok(url)
}

/// Whether the URL's host (as this client will connect to it) is loopback.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// reqwest's messages name the URL, which may carry secrets in its query:
/// keep its own words without it, plus the causes (which never name it).
fn transport_error(e: reqwest::Error) -> TransportError {
    if let Some(refusal) = loopback::refusal(&e) {
        return TransportError::Refused(refusal.to_string());
    }
    // A connect timeout is a connect failure: nothing was sent, so a refresh
    // retried after it cannot be a reuse.
    let connect = e.is_connect();
    if e.is_timeout() && !connect {
        return TransportError::Timeout;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn post(url: &str) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("authorization".into(), "Basic c2VjcmV0".into())],
        }
    }

    const BODY: &[u8] = b"grant_type=refresh_token&refresh_token=r";

    /// A listener whose accept queue is full: the kernel drops further SYNs,
    /// so a connect to it times out without ever connecting.
    fn full_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor we own; checked below.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as _;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
            assert_eq!(libc::listen(fd, 0), 0);
            std::net::TcpListener::from_raw_fd(fd)
        };
        let addr = listener.local_addr().unwrap();
        let mut fill = Vec::new();
        while fill.len() < 8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fill.push(s),
                Err(_) => break,
            }
        }
        (listener, fill)
    }

    /// A connect timeout means nothing was sent: `connect`, not `timeout`
    /// (which would make a refresh look possibly spent).
    #[tokio::test]
    async fn a_connect_timeout_is_a_connect_failure() {
        let (listener, _fill) = full_listener();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let client = HttpClient::new(&HttpConfig {
            connect_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        });
        let result = client
            .send_to(parse_url(&url).unwrap(), &post(&url), BODY.into())
            .await;
        assert!(
            matches!(result, Err(TransportError::Connect(_))),
            "{result:?}"
        );
    }

    /// The host decides with the parser it sends with: what it would send to
    /// another machine in clear text is refused before any connection.
    #[tokio::test]
    async fn plain_http_goes_only_to_loopback_as_the_sending_parser_reads_it() {
        let client = HttpClient::new(&HttpConfig::default());
        for url in [
            // WHATWG reads `\` as `/`: the host is 192.0.2.2, not 127.0.0.1.
            "http://192.0.2.2:18081\\@127.0.0.1/token",
            "http://127.0.0.1.example/token",
            "http://localhost.example/token",
            "http://127.0.0.1@192.0.2.2/token",
            "http://[::ffff:192.0.2.2]/token",
            "http://192.0.2.2/token?x=127.0.0.1",
            "http://0x7f000001.example/token",
        ] {
            let result = client
                .send_to(parse_url(url).unwrap(), &post(url), BODY.into())
                .await;
            assert!(
                matches!(result, Err(TransportError::Refused(_))),
                "{url}: {result:?}"
            );
        }
        for (url, loopback) in [
            ("http://127.0.0.1:9/", true),
            ("http://127.1.2.3/", true),
            ("http://[::1]:9/", true),
            ("http://localhost/", true),
            ("http://LOCALHOST./", false),
            ("http://0x7f000001/", true),
            ("http://2130706433/", true),
            ("http://%31%32%37.0.0.1/", true),
            ("http://127.0.0.1\t/", true),
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert_eq!(is_loopback(&parsed), loopback, "{url}");
        }
    }

    /// A client whose resolver gives these answers for every name.
    fn resolving_to(addrs: &'static [&'static str]) -> HttpClient {
        HttpClient::with_lookup(
            &HttpConfig::default(),
            Arc::new(move |_| {
                Box::pin(async move { Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()) })
            }),
        )
    }

    /// Accepts one connection on `sink`, reads the request up to its body
    /// ([`BODY`]), answers 204 and returns what it read.
    fn answer_one_request(sink: std::net::TcpListener) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::task::spawn_blocking(move || {
            let (mut conn, _) = sink.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0; 1024];
            while !seen.ends_with(BODY) {
                let n = std::io::Read::read(&mut conn, &mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                seen.extend_from_slice(&buf[..n]);
            }
            std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            seen
        })
    }

    /// `localhost` that also resolves to another machine's address is
    /// refused before any connection: the sink, listening on the loopback
    /// answer the client would otherwise dial, accepts nothing.
    #[tokio::test]
    async fn localhost_resolving_elsewhere_is_refused_before_any_byte() {
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sink.set_nonblocking(true).unwrap();
        let url = format!("http://localhost:{}/t", sink.local_addr().unwrap().port());
        for answers in [
            &["127.0.0.1:0", "10.9.9.9:0"][..],
            &["10.9.9.9:0", "127.0.0.1:0"],
            &["[::ffff:10.9.9.9]:0", "127.0.0.1:0"],
        ] {
            let result = resolving_to(answers)
                .send_to(parse_url(&url).unwrap(), &post(&url), BODY.into())
                .await;
            match result {
                Err(TransportError::Refused(m)) => {
                    assert!(m.contains("not a loopback address"), "{m}")
                }
                other => panic!("{answers:?}: {other:?}"),
            }
            assert!(sink.accept().is_err(), "{answers:?}: the sink was reached");
        }
        // The control: loopback answers alone reach the same sink.
        sink.set_nonblocking(false).unwrap();
        let answered = answer_one_request(sink);
        let result = resolving_to(&["127.0.0.1:0", "[::1]:0"])
            .send_to(parse_url(&url).unwrap(), &post(&url), BODY.into())
            .await;
        answered.await.unwrap();
        assert_eq!(result.unwrap().status, 204);
    }

    /// Second line against domain fronting: whatever `Host` the request
    /// carries, the one sent names the URL's own host and port.
    #[tokio::test]
    async fn the_host_sent_is_the_urls_own() {
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sink.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/t");
        let seen = answer_one_request(sink);
        let mut head = post(&url);
        head.headers.push(("Host".into(), "evil.example".into()));
        let result = HttpClient::new(&HttpConfig::default())
            .send_to(parse_url(&url).unwrap(), &head, BODY.into())
            .await;
        let seen = String::from_utf8_lossy(&seen.await.unwrap()).to_lowercase();
        assert_eq!(result.unwrap().status, 204);
        assert!(
            seen.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{seen}"
        );
        assert!(!seen.contains("evil.example"), "{seen}");
    }
}
