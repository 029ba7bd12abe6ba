//! The first token set: the authorization code grant with PKCE through a
//! loopback redirect, and the device authorization grant. The component
//! decides (the authorization URL, `state`, PKCE, checking the redirect, the
//! code exchange, polling); this module supplies its effects: random bytes,
//! the loopback listener (RFC 8252 §7.3), discovery, and storing the token
//! response it returns as the credential's keys ([`TokenSet::import`]).
//!
//! ```no_run
//! # async fn demo(rekey: rekey::Rekey, store: std::sync::Arc<dyn rekey::KeyStore>) -> Result<(), rekey::authorize::AuthorizeError> {
//! use rekey::authorize::CodeOptions;
//! let keys = rekey
//!     .authorize_code("crm", &store.load("crm").unwrap().settings, &CodeOptions::default(), |p| {
//!         eprintln!("open {}", p.start_url); // one use; no secret in it
//!     })
//!     .await?;
//! # let _ = keys; Ok(()) }
//! ```

use crate::bindings::exports::rekey::oauth2::authorize::{
    Authorization, AuthorizeError as WitError, DeviceGrant,
};
use crate::bindings::rekey::oauth2::types as wit;
use crate::dpop::DpopSigner;
use crate::error::{Category, Error, describe_transport};
use crate::runtime::Rekey;
use crate::settings::{ClientAuth, Settings, Strategy};
use crate::signing::Signer;
use crate::token_set::TokenSet;
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long the code grant waits for the redirect unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait for the redirect: a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
/// The redirect URI when none is configured: a free port is chosen.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// Bound on one component call that makes network requests.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on reading one request at the loopback listener.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head the listener reads.
const MAX_HEAD: usize = 16 * 1024;
/// Connections the listener reads at once (each for up to `READ_TIMEOUT`),
/// so a local process holding some open cannot delay the browser's.
const MAX_CONNECTIONS: usize = 32;
/// The path prefix of the one-use start URL.
const START: &str = "/start/";
/// Where errors of the device authorization request come from.
const DEVICE_ENDPOINT: &str = "device authorization endpoint";
const TOKEN_ENDPOINT: &str = "token endpoint";

/// Why authorisation stored nothing. Messages never carry a token, code,
/// verifier, secret or provider text.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The settings cannot work for this grant.
    #[error("cannot authorise: {0}")]
    InvalidSettings(String),
    /// The person (or the provider for them) refused.
    #[error("authorisation was refused (access_denied); nothing was stored")]
    AccessDenied,
    /// The redirect's `state` was missing or not this request's.
    #[error(
        "the redirect's state does not match this authorisation request (a stale or forged redirect); nothing was exchanged or stored"
    )]
    StateMismatch,
    /// The redirect's `iss` named another issuer, or was missing although
    /// the issuer says it sends one (RFC 9207).
    #[error(
        "the redirect's iss names another issuer than the credential's, or is missing although the issuer sends it (RFC 9207 mix-up); nothing was exchanged or stored"
    )]
    IssuerMismatch,
    /// The provider answered the authorisation request with an error.
    #[error("the provider answered the authorisation request with error {0}; nothing was stored")]
    ProviderError(String),
    /// The device code expired before anyone approved it.
    #[error("the device code expired before it was approved; nothing was stored")]
    Expired,
    /// No redirect arrived in time.
    #[error("no redirect arrived within {0} s; nothing was stored (run `rekey authorize` again)")]
    Timeout(u64),
    /// The token or device endpoint refused the request.
    #[error("the {at} refused the request with {code} (HTTP {status}); nothing was stored")]
    Rejected {
        /// Which endpoint: `token endpoint` or `device authorization endpoint`.
        at: &'static str,
        /// HTTP status.
        status: u16,
        /// The OAuth error code.
        code: String,
    },
    /// The token or device endpoint failed, or answered something unusable.
    #[error("the {at} failed: {message}")]
    Endpoint {
        /// Which endpoint: `token endpoint` or `device authorization endpoint`.
        at: &'static str,
        /// What went wrong (no provider text).
        message: String,
    },
    /// The one-use start URL was fetched again: someone else may have read
    /// it (and with it this request's `state` and challenge).
    #[error(
        "the start URL was opened more than once, so another program may have read this authorisation request; nothing was stored (run `rekey authorize` again)"
    )]
    StartReused,
    /// A request could not be sent.
    #[error("request failed: {0}")]
    Transport(String),
    /// Discovery (`/.well-known/...`) failed.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// The loopback listener could not be set up or read.
    #[error("the loopback redirect listener failed: {0}")]
    Listener(String),
    /// The store, the component or the token set failed.
    #[error(transparent)]
    Host(#[from] Error),
}

impl AuthorizeError {
    /// Who can fix this.
    pub fn category(&self) -> Category {
        match self {
            AuthorizeError::InvalidSettings(_) | AuthorizeError::Discovery(_) => {
                Category::SettingsWrong
            }
            // The authorization request itself is wrong (RFC 6749 §4.1.2.1):
            // asking again the same way cannot help.
            AuthorizeError::ProviderError(code)
                if matches!(
                    code.as_str(),
                    "invalid_scope"
                        | "invalid_request"
                        | "unauthorized_client"
                        | "unsupported_response_type"
                ) =>
            {
                Category::SettingsWrong
            }
            AuthorizeError::Rejected { code, .. } if code != "invalid_grant" => {
                Category::SettingsWrong
            }
            AuthorizeError::AccessDenied
            | AuthorizeError::StateMismatch
            | AuthorizeError::IssuerMismatch
            | AuthorizeError::ProviderError(_)
            | AuthorizeError::Expired
            | AuthorizeError::Timeout(_)
            | AuthorizeError::StartReused
            | AuthorizeError::Rejected { .. } => Category::NeedsAuthorization,
            AuthorizeError::Endpoint { .. } => Category::TokenEndpoint,
            AuthorizeError::Transport(_) | AuthorizeError::Listener(_) => Category::Transport,
            AuthorizeError::Host(e) => e.category(),
        }
    }
}

impl From<WitError> for AuthorizeError {
    fn from(e: WitError) -> Self {
        AuthorizeError::at(TOKEN_ENDPOINT, e)
    }
}

impl AuthorizeError {
    /// The component's error, from a call that talked to the endpoint `at`.
    fn at(at: &'static str, e: WitError) -> Self {
        match e {
            WitError::InvalidSettings(m) => AuthorizeError::InvalidSettings(m),
            WitError::AccessDenied => AuthorizeError::AccessDenied,
            WitError::StateMismatch => AuthorizeError::StateMismatch,
            WitError::IssuerMismatch => AuthorizeError::IssuerMismatch,
            WitError::ProviderError(c) => AuthorizeError::ProviderError(c),
            WitError::Expired => AuthorizeError::Expired,
            WitError::Rejected(e) => AuthorizeError::Rejected {
                at,
                status: e.status,
                code: e.code,
            },
            WitError::Endpoint(message) => AuthorizeError::Endpoint { at, message },
            WitError::Transport(t) => AuthorizeError::Transport(describe_transport(&t)),
        }
    }
}

/// How the code grant runs.
#[derive(Clone, Debug)]
pub struct CodeOptions {
    /// Where the provider sends the browser back; the host listens there.
    /// `http://127.0.0.1/callback` (no port: a free one is chosen, as RFC
    /// 8252 §7.3 lets native clients) unless the provider wants an exact,
    /// registered URI.
    pub redirect_uri: Option<String>,
    /// How long to wait for the redirect, at most [`MAX_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for CodeOptions {
    fn default() -> Self {
        CodeOptions {
            redirect_uri: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a person needs to approve a device grant.
#[derive(Clone)]
pub struct DevicePrompt {
    /// The code to type in.
    pub user_code: String,
    /// Where to type it in.
    pub verification_uri: String,
    /// The same with the code filled in, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// Seconds the code stays valid.
    pub expires_in: u32,
    /// Seconds between polls.
    pub interval: u32,
}

/// https://, or http:// on loopback only; no fragment.
pub(crate) fn check_endpoint(what: &str, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("the {what} is not a URL: {e}"))?;
    let ok = match parsed.scheme() {
        "https" => true,
        "http" => crate::http::is_loopback(&parsed),
        _ => false,
    };
    if !ok || parsed.fragment().is_some() {
        return Err(format!(
            "the {what} must be https:// without a fragment (http:// only on loopback)"
        ));
    }
    Ok(())
}

/// The component's `authorization` record for these settings.
fn authorization(settings: &Settings, redirect_uri: String) -> Authorization {
    let scope = settings
        .auth_params
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .or_else(|| settings.scope.clone());
    Authorization {
        authorization_url: settings.authorization_url.clone(),
        device_url: settings.device_url.clone(),
        redirect_uri,
        scope,
        auth_params: settings
            .auth_params
            .iter()
            .filter(|(k, _)| k != "scope")
            .cloned()
            .collect(),
        issuer: settings.issuer.clone(),
        issuer_sends_iss: settings.issuer_sends_iss,
    }
}

/// Random bytes from the operating system, through the TLS stack's CSPRNG.
fn random(n: usize) -> Result<Vec<u8>, AuthorizeError> {
    let mut bytes = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| AuthorizeError::InvalidSettings("no random bytes available".into()))?;
    Ok(bytes)
}

/// 32 random bytes as 64 hex digits: the start URL's one-use token.
fn start_token() -> Result<String, AuthorizeError> {
    Ok(random(32)?.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The WIT settings, and the signers of this flow's client assertions
/// (private_key_jwt) and DPoP proofs: none when nothing is signed. Their
/// keys are loaded once now, so an unusable one is said before a person
/// starts the flow; the signers read them again for each signature, after
/// their check of what they are asked to sign.
#[allow(clippy::type_complexity)]
fn wit_settings(
    settings: &Settings,
) -> Result<(wit::Settings, (Option<Signer>, Option<DpopSigner>)), AuthorizeError> {
    let wit = settings.to_wit().map_err(AuthorizeError::InvalidSettings)?;
    settings
        .signing_key()
        .map_err(AuthorizeError::InvalidSettings)?;
    settings
        .dpop_key()
        .map_err(AuthorizeError::InvalidSettings)?;
    let signer = Signer::new(settings.signing.as_ref(), &wit);
    let dpop = DpopSigner::new(settings.dpop.as_ref(), &wit.token_url);
    Ok((wit, (signer, dpop)))
}

/// What a person needs to start the code grant.
pub struct CodePrompt {
    /// `http://127.0.0.1:PORT/start/<token>`: the listener answers it once
    /// with a redirect to the authorization URL. Holds no `state` or
    /// challenge, so it is what goes to a browser opener's command line.
    pub start_url: String,
    /// The authorization URL itself, with this request's `state` and PKCE
    /// challenge: show it only to the person running the flow.
    pub authorization_url: String,
}

impl std::fmt::Debug for CodePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodePrompt")
            .field("start_url", &"[redacted]")
            .field("authorization_url", &"[redacted]")
            .finish()
    }
}

impl Rekey {
    /// The authorization code grant with PKCE: binds the loopback listener,
    /// hands the one-use start URL (and the authorization URL) to `show`
    /// (print it, open a browser), serves the start URL once, and exchanges
    /// the code of the first redirect whose `state` is this request's
    /// (others are answered 400 and waited past). Returns the token
    /// response as a first token set for `name`; the caller stores it.
    pub async fn authorize_code(
        &self,
        name: &str,
        settings: &Settings,
        options: &CodeOptions,
        show: impl FnOnce(&CodePrompt),
    ) -> Result<TokenSet, AuthorizeError> {
        let (wsettings, key) = wit_settings(settings)?;
        // Checked first: a deadline past the clock's range would panic.
        if options.timeout > MAX_TIMEOUT {
            return Err(AuthorizeError::InvalidSettings(format!(
                "the timeout may be at most {} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        let configured = options
            .redirect_uri
            .as_deref()
            .unwrap_or(DEFAULT_REDIRECT_URI);
        let listener = Listener::bind(configured).await?;
        let auth = authorization(settings, listener.redirect_uri.clone());
        let bytes = random(48)?;
        let pending = self
            .run_authorize(
                name,
                &wsettings.token_url,
                None,
                key.clone(),
                CALL_TIMEOUT,
                async |g, s| g.call_begin(s, &wsettings, &auth, &bytes).await,
            )
            .await??;
        // Second line (the component refuses these): it goes into a
        // Location header and may be printed.
        if !pending.url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthorizeError::InvalidSettings(
                "the authorization URL is not printable ASCII".into(),
            ));
        }
        let token = start_token()?;
        show(&CodePrompt {
            start_url: format!("{}{START}{token}", listener.origin),
            authorization_url: pending.url.clone(),
        });
        let deadline = Instant::now() + options.timeout;
        let mut requests = listener.serve(name);
        let mut started = false;
        loop {
            let next = tokio::time::timeout_at(deadline.into(), requests.recv()).await;
            let Ok(Some((mut stream, target))) = next else {
                return Err(AuthorizeError::Timeout(options.timeout.as_secs()));
            };
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            if path != listener.path {
                let ours = path.strip_prefix(START).is_some_and(|t| same(t, &token));
                if ours && !started {
                    started = true;
                    redirect(&mut stream, &pending.url).await;
                    continue;
                }
                respond_status(&mut stream, "404 Not Found", "not found").await;
                if ours {
                    return Err(AuthorizeError::StartReused);
                }
                continue;
            }
            let result = self
                .run_authorize(
                    name,
                    &wsettings.token_url,
                    None,
                    key.clone(),
                    CALL_TIMEOUT,
                    async |g, s| g.call_finish(s, &wsettings, &auth, &pending, query).await,
                )
                .await
                .map_err(AuthorizeError::from)
                .and_then(|r| r.map_err(AuthorizeError::from));
            if let Err(AuthorizeError::StateMismatch) = result {
                // Not this request's redirect (the guest checked `state`
                // before anything else): it ends nothing.
                tracing::warn!(
                    credential = name,
                    "a redirect without this request's state reached the listener; still waiting"
                );
                respond(
                    &mut stream,
                    false,
                    &AuthorizeError::StateMismatch.to_string(),
                )
                .await;
                continue;
            }
            let result = result.and_then(|body| {
                TokenSet::import(&body).map_err(|e| AuthorizeError::Endpoint {
                    at: TOKEN_ENDPOINT,
                    message: format!("the token response is unusable: {e}"),
                })
            });
            let page = match &result {
                Ok(_) => "rekey: authorised. You can close this window.".to_owned(),
                Err(e) => format!("rekey: authorisation failed: {e}"),
            };
            respond(&mut stream, result.is_ok(), &page).await;
            return result;
        }
    }

    /// The device authorization grant for `name`: shows what a person must
    /// see, then polls until they approve.
    pub async fn authorize_device(
        &self,
        name: &str,
        settings: &Settings,
        show: impl FnOnce(&DevicePrompt),
    ) -> Result<TokenSet, AuthorizeError> {
        let (wsettings, key) = wit_settings(settings)?;
        let auth = authorization(settings, String::new());
        let grant: DeviceGrant = self
            .run_authorize(
                name,
                &wsettings.token_url,
                auth.device_url.as_deref(),
                key.clone(),
                CALL_TIMEOUT,
                async |g, s| g.call_device_start(s, &wsettings, &auth).await,
            )
            .await?
            .map_err(|e| AuthorizeError::at(DEVICE_ENDPOINT, e))?;
        show(&DevicePrompt {
            user_code: grant.user_code.clone(),
            verification_uri: grant.verification_uri.clone(),
            verification_uri_complete: grant.verification_uri_complete.clone(),
            expires_in: grant.expires_in,
            interval: grant.interval,
        });
        let bound = Duration::from_secs(u64::from(grant.expires_in)) + CALL_TIMEOUT;
        let body = self
            .run_authorize(
                name,
                &wsettings.token_url,
                None,
                key,
                bound,
                async |g, s| g.call_device_poll(s, &wsettings, &grant).await,
            )
            .await??;
        TokenSet::import(&body).map_err(|e| AuthorizeError::Endpoint {
            at: TOKEN_ENDPOINT,
            message: format!("the token response is unusable: {e}"),
        })
    }
}

/// The loopback listener the browser starts at and the redirect arrives at.
struct Listener {
    listener: std::sync::Arc<TcpListener>,
    /// As sent in the authorization request, with the port bound.
    redirect_uri: String,
    /// `http://127.0.0.1:PORT`, as bound.
    origin: String,
    path: String,
}

impl Listener {
    async fn bind(configured: &str) -> Result<Listener, AuthorizeError> {
        let bad = |m: &str| AuthorizeError::InvalidSettings(format!("redirect URI: {m}"));
        let url = url::Url::parse(configured).map_err(|_| bad("not a URL"))?;
        if url.scheme() != "http" || !crate::http::is_loopback(&url) {
            return Err(bad(
                "must be http:// on loopback (127.0.0.1, [::1] or localhost)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must have no query or fragment"));
        }
        if url.path().starts_with(START) {
            return Err(bad(&format!("its path may not start with {START}")));
        }
        // localhost is bound as 127.0.0.1 (RFC 8252 §8.3 prefers the literal).
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            _ => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        };
        let port = url.port().unwrap_or(0);
        let listener = TcpListener::bind((host, port)).await.map_err(|e| {
            AuthorizeError::Listener(format!("cannot listen on {host}:{port}: {e}"))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| AuthorizeError::Listener(e.to_string()))?;
        let mut redirect = url.clone();
        let _ = redirect.set_port(Some(bound.port()));
        Ok(Listener {
            listener: std::sync::Arc::new(listener),
            redirect_uri: redirect.to_string(),
            origin: format!("http://{bound}"),
            path: url.path().to_owned(),
        })
    }

    /// Every `GET` from a program of this user that arrives (its stream, to
    /// answer, and its target), in the order their heads are read: each
    /// connection is read on its own task, so a slow one delays no other.
    /// Another user's connection is answered 403 before a byte of it is
    /// read, so it holds no slot. Stops when the receiver goes.
    fn serve(&self, name: &str) -> mpsc::Receiver<(TcpStream, String)> {
        let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
        let listener = self.listener.clone();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = tx.closed() => return,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let tx = tx.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    if !same_user(&stream) {
                        // Another local user (who may have read the start URL
                        // on the opener's command line) gets neither the
                        // authorization URL nor a say in the redirect, and
                        // holds no slot while its bytes are discarded.
                        drop(slot);
                        tracing::warn!(
                            credential = name,
                            "another user's program reached the listener; refused"
                        );
                        refuse(&mut stream).await;
                        return;
                    }
                    if let Some(target) = read_target(&mut stream).await {
                        let _ = tx.send((stream, target)).await;
                    }
                    drop(slot);
                });
            }
        });
        rx
    }
}

/// 403 to another user's connection, at once, before a byte of it is
/// read. Then what it sends is read and discarded until it closes (at most
/// MAX_HEAD bytes, for at most READ_TIMEOUT): closing with its bytes unread
/// would reset the connection, and a program whose request came after the
/// answer (descheduled on a loaded machine) would lose the answer.
async fn refuse(stream: &mut TcpStream) {
    respond_status(stream, "403 Forbidden", "not yours").await;
    let mut buf = [0u8; 2048];
    let mut drained = 0;
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        while drained < MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    })
    .await;
}

/// The request target of a `GET`, or `None` for anything else (answered).
async fn read_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        // Only the bytes just read (and the 3 before) can complete the end
        // of the head: a peer sending one byte at a time costs no rescans.
        let mut scanned = 0;
        while head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head[scanned..].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            scanned = head.len().saturating_sub(3);
        }
        Some(())
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.ok()??;
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        respond_status(stream, "405 Method Not Allowed", "GET only").await;
        return None;
    }
    Some(target.to_owned())
}

/// Whether the program at the other end of this loopback connection runs
/// as this process's user. Linux tells (`/proc/net/tcp`, `tcp6`: the socket
/// whose local address is our peer's). A peer socket that is not in the
/// table (reset, or closed: its owner is gone) is refused: an attacker can
/// make its socket unfindable, and fail-open would then serve it. Elsewhere,
/// or where the table cannot be read at all, the state check and the
/// one-use start URL are what protect.
fn same_user(stream: &TcpStream) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return false;
        };
        let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
            return true;
        };
        match socket_uid(peer, local) {
            Err(_) => true,
            Ok(uid) => uid == Some(me),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        true
    }
}

/// The uid owning the TCP socket `local` → `remote` from `/proc/net/tcp` or
/// `tcp6`: `Ok(None)` when no open socket has those addresses, `Err` when
/// the table cannot be read. Any state counts (a peer that half-closed after
/// its request is FIN_WAIT2 and still reads the answer); a row without an
/// inode (TIME_WAIT, or a socket its program closed) has no owner left and
/// shows uid 0, so it is not one.
#[cfg(target_os = "linux")]
fn socket_uid(
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> std::io::Result<Option<u32>> {
    let file = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    use std::io::BufRead;
    // Read row by row and stop at ours: the table grows with every socket
    // on the machine, and each connection is looked up.
    let table = std::io::BufReader::new(std::fs::File::open(file)?);
    let (local, remote) = (proc_addr(local), proc_addr(remote));
    for line in table.lines().skip(1) {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() > 9 && f[1] == local && f[2] == remote && f[9] != "0" {
            return Ok(f[7].parse().ok());
        }
    }
    Ok(None)
}

/// An address as `/proc/net/tcp*` prints it: each 32-bit word of the
/// address in host byte order, in hex, then the port.
#[cfg(target_os = "linux")]
fn proc_addr(a: std::net::SocketAddr) -> String {
    let octets = match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let words: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{words}:{:04X}", a.port())
}

/// Sends the browser on to the authorization URL; nothing caches it or
/// passes it on as a referrer.
async fn redirect(stream: &mut TcpStream, location: &str) {
    let response = format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncache-control: no-store\r\nreferrer-policy: no-referrer\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

async fn respond(stream: &mut TcpStream, ok: bool, message: &str) {
    let status = if ok { "200 OK" } else { "400 Bad Request" };
    respond_status(stream, status, message).await;
}

async fn respond_status(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rekey</title></head><body><p>{}</p></body></html>\n",
        html_escape(message)
    );
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What discovery found (RFC 8414; OpenID Connect Discovery 1.0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// The issuer the metadata names (equal to the one asked for).
    pub issuer: String,
    /// `token_endpoint`.
    pub token_url: String,
    /// `authorization_endpoint`, when the server has one.
    pub authorization_url: Option<String>,
    /// `device_authorization_endpoint`, when the server has one.
    pub device_url: Option<String>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207 §3): its
    /// redirects carry `iss`, so one without it is refused.
    pub issuer_sends_iss: bool,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: String,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// Reads the authorization server's metadata: OpenID Connect's
/// `/.well-known/openid-configuration`, else RFC 8414's
/// `/.well-known/oauth-authorization-server` (inserted before the issuer's
/// path). The metadata must name the issuer asked for, and its endpoints
/// must be https (http only on loopback).
pub async fn discover(issuer: &str) -> Result<Endpoints, AuthorizeError> {
    let fail = |m: String| AuthorizeError::Discovery(m);
    let issuer = issuer.trim_end_matches('/');
    check_endpoint("issuer", issuer).map_err(fail)?;
    let url = url::Url::parse(issuer).map_err(|e| fail(e.to_string()))?;
    if url.query().is_some() {
        return Err(fail("the issuer must have no query".into()));
    }
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let candidates = [
        format!("{issuer}/.well-known/openid-configuration"),
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ];
    // reqwest is built without a default crypto provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
    let mut tried = Vec::new();
    for candidate in candidates {
        let answer = client
            .get(&candidate)
            .header("accept", "application/json")
            .send()
            .await;
        let resp = match answer {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tried.push(format!("{candidate}: HTTP {}", r.status().as_u16()));
                continue;
            }
            Err(e) => {
                tried.push(format!("{candidate}: {}", e.without_url()));
                continue;
            }
        };
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("{candidate}: {}", e.without_url())))?;
        let meta: Metadata = serde_json::from_slice(&body).map_err(|e| {
            fail(format!(
                "{candidate} is not authorization server metadata: {}",
                crate::token_set::json_position(&e)
            ))
        })?;
        if meta.issuer.trim_end_matches('/') != issuer {
            return Err(fail(format!(
                "{candidate} names the issuer {:?}, not {issuer:?}",
                meta.issuer
            )));
        }
        for (what, u) in [
            ("token endpoint", Some(&meta.token_endpoint)),
            (
                "authorization endpoint",
                meta.authorization_endpoint.as_ref(),
            ),
            (
                "device authorization endpoint",
                meta.device_authorization_endpoint.as_ref(),
            ),
        ] {
            if let Some(u) = u {
                check_endpoint(what, u).map_err(fail)?;
            }
        }
        return Ok(Endpoints {
            issuer: meta.issuer,
            token_url: meta.token_endpoint,
            authorization_url: meta.authorization_endpoint,
            device_url: meta.device_authorization_endpoint,
            issuer_sends_iss: meta.authorization_response_iss_parameter_supported,
        });
    }
    Err(fail(format!("no metadata found ({})", tried.join("; "))))
}

/// Provider presets: endpoints, client authentication, required parameters
/// and strategy, as DATA (`host/presets.json`, reviewed as one file).
const PRESETS: &str = include_str!("../presets.json");

/// One provider preset. Each field may be left out: a preset sets only what
/// its provider needs (the tests check every one has a description).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preset {
    /// What it is for, for `--help` and errors.
    pub description: String,
    /// The issuer, for discovery or the `iss` check.
    pub issuer: Option<String>,
    /// Discover the endpoints from the issuer (generic OIDC).
    pub discover: bool,
    /// The token endpoint.
    pub token_url: Option<String>,
    /// The authorization endpoint.
    pub authorization_url: Option<String>,
    /// The device authorization endpoint.
    pub device_url: Option<String>,
    /// Client authentication at the token endpoint.
    pub client_auth: Option<ClientAuth>,
    /// Scope sent with each refresh.
    pub scope: Option<String>,
    /// Extra token request parameters.
    pub extra_params: Vec<(String, String)>,
    /// Extra authorization request parameters (a `scope` here is asked for at authorisation).
    pub auth_params: Vec<(String, String)>,
    /// When to refresh.
    pub strategy: Option<Strategy>,
    /// Where the provider's APIs are: the access token goes only there.
    pub api_origins: Vec<String>,
    /// What the token set's `instance_url` must match to be used (Salesforce).
    pub instance_url_origins: Vec<String>,
}

/// Every preset, by name.
pub fn presets() -> std::collections::BTreeMap<String, Preset> {
    serde_json::from_str(PRESETS).expect("host/presets.json is valid (tested)")
}

/// The preset `name`, or an error listing the known ones.
pub fn preset(name: &str) -> Result<Preset, String> {
    let all = presets();
    all.get(&name.to_ascii_lowercase()).cloned().ok_or_else(|| {
        format!(
            "unknown provider {name:?}; known: {}",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

impl Preset {
    /// Lays the preset over `s` (explicit settings are applied after it).
    pub fn apply(&self, s: &mut Settings) {
        if let Some(v) = &self.token_url {
            s.token_url = v.clone();
        }
        if let Some(v) = &self.authorization_url {
            s.authorization_url = Some(v.clone());
        }
        if let Some(v) = &self.device_url {
            s.device_url = Some(v.clone());
        }
        if let Some(v) = &self.issuer {
            s.issuer = Some(v.clone());
        }
        if let Some(v) = self.client_auth {
            s.client_auth = v;
        }
        if self.scope.is_some() {
            s.scope = self.scope.clone();
        }
        if !self.extra_params.is_empty() {
            s.extra_params = self.extra_params.clone();
        }
        if !self.auth_params.is_empty() {
            s.auth_params = self.auth_params.clone();
        }
        if let Some(v) = self.strategy {
            s.strategy = v;
        }
        if !self.api_origins.is_empty() {
            s.api_origins = self.api_origins.clone();
        }
        if !self.instance_url_origins.is_empty() {
            s.instance_url_origins = self.instance_url_origins.clone();
        }
    }
}

impl Endpoints {
    /// Lays what discovery found over `s`.
    pub fn apply(&self, s: &mut Settings) {
        s.token_url = self.token_url.clone();
        s.issuer = Some(self.issuer.clone());
        s.issuer_sends_iss = self.issuer_sends_iss;
        if self.authorization_url.is_some() {
            s.authorization_url = self.authorization_url.clone();
        }
        if self.device_url.is_some() {
            s.device_url = self.device_url.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_makes_usable_settings() {
        let all = presets();
        for (name, p) in &all {
            assert!(!p.description.is_empty(), "{name}: no description");
        }
        for name in ["salesforce", "microsoft", "google", "github", "oidc"] {
            let p = all.get(name).unwrap_or_else(|| panic!("preset {name}"));
            let mut s = Settings::new("https://placeholder.example/token", "id");
            p.apply(&mut s);
            if p.discover {
                assert!(p.token_url.is_none(), "{name}: discovered, not fixed");
                continue;
            }
            s.check().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(s.authorization_url.is_some(), "{name}");
            // Bound by default: a provider's preset names its API origins.
            assert!(!s.api_origins.is_empty(), "{name}: no API origins");
        }
        let sf = &all["salesforce"];
        assert_eq!(sf.strategy, Some(Strategy::OnAuthFailure));
        assert!(sf.extra_params.contains(&("format".into(), "json".into())));
        assert_eq!(all["microsoft"].strategy, Some(Strategy::EveryRequest));
        let ms_scope = &all["microsoft"]
            .auth_params
            .iter()
            .find(|(k, _)| k == "scope")
            .unwrap()
            .1;
        assert!(ms_scope.split(' ').any(|s| s == "offline_access"));
        let g = &all["google"].auth_params;
        assert!(g.contains(&("access_type".into(), "offline".into())));
        assert!(g.contains(&("prompt".into(), "consent".into())));
        assert!(preset("nope").unwrap_err().contains("salesforce"));
    }

    #[test]
    fn the_authorization_scope_comes_from_auth_params_first() {
        let mut s = Settings::new("https://idp/token", "id");
        s.scope = Some("refresh".into());
        assert_eq!(
            authorization(&s, String::new()).scope.as_deref(),
            Some("refresh")
        );
        s.auth_params = vec![
            ("scope".into(), "api".into()),
            ("prompt".into(), "consent".into()),
        ];
        let a = authorization(&s, String::new());
        assert_eq!(a.scope.as_deref(), Some("api"));
        assert_eq!(a.auth_params, [("prompt".to_owned(), "consent".to_owned())]);
    }

    #[test]
    fn errors_name_their_endpoint_and_a_wrong_request_is_a_settings_problem() {
        let rejected = || {
            WitError::Rejected(wit::OauthError {
                status: 400,
                code: "invalid_client".into(),
            })
        };
        let device = AuthorizeError::at(DEVICE_ENDPOINT, rejected()).to_string();
        assert!(
            device.contains("the device authorization endpoint refused"),
            "{device}"
        );
        let token = AuthorizeError::from(rejected()).to_string();
        assert!(token.contains("the token endpoint refused"), "{token}");
        let failed = AuthorizeError::at(DEVICE_ENDPOINT, WitError::Endpoint("x".into()));
        assert!(
            failed
                .to_string()
                .starts_with("the device authorization endpoint failed")
        );
        for code in ["invalid_scope", "unauthorized_client", "invalid_request"] {
            let e = AuthorizeError::ProviderError(code.into());
            assert_eq!(e.category(), Category::SettingsWrong, "{code}");
        }
        for code in ["server_error", "temporarily_unavailable", "no_code"] {
            let e = AuthorizeError::ProviderError(code.into());
            assert_eq!(e.category(), Category::NeedsAuthorization, "{code}");
        }
    }

    #[test]
    fn the_prompt_shows_no_url_in_debug() {
        let p = CodePrompt {
            start_url: "http://127.0.0.1:1/start/abc".into(),
            authorization_url: "https://idp/auth?state=s3cret".into(),
        };
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("abc") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    /// Closes with RST (SO_LINGER 0): the socket is gone at once.
    #[cfg(target_os = "linux")]
    fn abort(stream: TcpStream) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger struct of the size given.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        drop(stream);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_loopback_peer_is_found_as_this_user() {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        for ip in ["127.0.0.1", "::1"] {
            let Ok(l) = TcpListener::bind((ip, 0)).await else {
                continue; // no IPv6 here
            };
            let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            let uid = |s: &TcpStream| socket_uid(s.peer_addr().unwrap(), s.local_addr().unwrap());
            assert_eq!(uid(&server).unwrap(), Some(me), "{ip}");
            assert!(same_user(&server));
            // Half-closed after its request (FIN_WAIT2), it still reads the
            // answer: it is still found, as whoever it is.
            client.shutdown().await.unwrap();
            assert_eq!(uid(&server).unwrap(), Some(me), "{ip} half-closed");
            // Reset: its socket is gone, and an unfindable peer is refused.
            let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            let (peer, local) = (server.peer_addr().unwrap(), server.local_addr().unwrap());
            abort(client);
            assert_eq!(socket_uid(peer, local).unwrap(), None, "{ip} reset");
            assert!(!same_user(&server), "{ip} reset");
        }
        assert_eq!(
            proc_addr("127.0.0.1:8080".parse().unwrap()),
            format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]))
        );
    }

    #[tokio::test]
    async fn the_listener_takes_a_free_port_and_keeps_the_path() {
        let l = Listener::bind("http://127.0.0.1/cb").await.unwrap();
        assert!(l.redirect_uri.starts_with("http://127.0.0.1:"));
        assert!(l.redirect_uri.ends_with("/cb"));
        assert!(!l.redirect_uri.contains(":0/"));
        for bad in [
            "https://127.0.0.1/cb",
            "http://example.com/cb",
            "http://127.0.0.1/cb?x=1",
            "http://127.0.0.1/start/cb",
        ] {
            assert!(Listener::bind(bad).await.is_err(), "{bad}");
        }
    }
}
