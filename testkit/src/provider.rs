//! A loopback OAuth2 provider and protected API, for `rekey demo` and the
//! end-to-end tests. It behaves like a strict real one: short-lived access
//! tokens, refresh-token rotation and reuse detection (a spent refresh token
//! comes back `invalid_grant` and revokes the whole grant, RFC 9700 §4.14),
//! client authentication checked. Knobs let tests make it misbehave.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client authentication method (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// In the form body (`client_secret_post`).
    Post,
}

/// What happens to a refresh the provider has already granted (and so
/// rotated): the answer is lost on the way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostAnswer {
    /// Answer this status instead (e.g. 502 from a gateway).
    Status(u16),
    /// Send the headers, then cut the connection mid-body.
    Reset,
    /// Answer only after this long (past the client's timeout).
    Hang(Duration),
}

/// Requests kept in the API log; enough for any scenario, bounded for load runs.
const API_LOG_LIMIT: usize = 1000;

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Require this client authentication; none accepts either.
    pub client_auth: Option<ClientAuth>,
    pub access_ttl: Duration,
    /// Issue a new refresh token on every refresh.
    pub rotate_refresh_tokens: bool,
    /// Fields added to every token response (e.g. `instance_url`).
    pub extra_token_fields: serde_json::Map<String, Value>,
    /// A rotated refresh token still works this long after it was spent
    /// (Okta, Auth0, Cognito and others have such a grace period); zero is
    /// strict reuse detection: a spent token revokes the grant.
    pub grace_period: Duration,
    /// Every granted refresh is answered only after this long (a slow
    /// token endpoint; the refresh is granted, and rotated, at once).
    pub token_delay: Duration,
    /// Token responses say nothing of the access token's lifetime (as
    /// Salesforce, GitHub and Slack do): a client learns it from a 401.
    pub omit_expires_in: bool,
    /// The client's public key (PEM `PUBLIC KEY`, RSA or P-256): with it the
    /// token endpoint accepts `private_key_jwt` client authentication and
    /// the JWT bearer grant (RFC 7523), each assertion checked as
    /// `assertion::verify` says.
    pub assertion_key: Option<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            client_id: "rekey-demo".into(),
            client_secret: "demo-client-secret".into(),
            client_auth: None,
            access_ttl: Duration::from_secs(2),
            rotate_refresh_tokens: true,
            extra_token_fields: serde_json::Map::new(),
            grace_period: Duration::ZERO,
            token_delay: Duration::ZERO,
            omit_expires_in: false,
            assertion_key: None,
        }
    }
}

/// The confidential client the provider accepts.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
}

/// What the provider saw; read with [`Provider::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub token_calls: u32,
    pub refreshes_granted: u32,
    pub invalid_grant: u32,
    /// Refresh tokens presented after they were spent: must stay 0.
    pub reused_refresh_tokens: u32,
    pub basic_auth_calls: u32,
    pub post_auth_calls: u32,
    pub api_calls: u32,
    pub api_unauthorized: u32,
    /// API refusals of tokens past their lifetime (as on a loaded machine,
    /// where a fresh 1-second token can expire on its way).
    pub api_refused_expired: u32,
    /// API refusals of tokens never issued or of revoked grants: a client
    /// that sends those has a bug.
    pub api_refused_unknown_or_revoked: u32,
    /// Tokens issued to the client itself (RFC 6749 §4.4): no refresh token.
    pub client_credentials_granted: u32,
    /// Token requests whose client authenticated with a signed assertion.
    pub client_assertions_ok: u32,
    /// Assertions refused (signature, claims, expiry or a replayed `jti`).
    pub assertions_refused: u32,
    /// Token requests refused for using more than one client
    /// authentication method at once (RFC 6749 §2.3).
    pub multiple_client_auth: u32,
    /// Tokens issued for JWT bearer grant assertions: no refresh token.
    pub jwt_bearer_granted: u32,
    /// The `sub` of the last JWT bearer grant assertion accepted.
    pub last_assertion_subject: Option<String>,
}

/// One API request as received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub authorized: bool,
    /// Why the token was refused, when it was.
    pub refused: Option<Refusal>,
}

/// Why the protected API refused a request: tests assert on the cause, not
/// only on the count (a token can expire between mint and use on a loaded
/// machine; that is not the same failure as a stale token being sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token.
    Missing,
    /// A token this provider never issued.
    Unknown,
    /// Issued, and past its lifetime.
    Expired,
    /// Issued for a grant since revoked.
    Revoked,
    /// `/api/reject` refuses every token.
    AlwaysRejects,
}

struct Grant {
    revoked: bool,
}

struct RefreshToken {
    grant: u64,
    /// When it was exchanged (rotation on): reuse after the grace period is
    /// reuse.
    spent_at: Option<Instant>,
}

#[derive(Default)]
struct ProviderState {
    grants: HashMap<u64, Grant>,
    access: HashMap<String, (u64, Instant)>,
    refresh: HashMap<String, RefreshToken>,
    forced_token_responses: VecDeque<(u16, String)>,
    last_token_form: Vec<(String, String)>,
    api_log: Vec<ApiRequest>,
    refresh_times: Vec<Instant>,
    stats: Stats,
    next_grant: u64,
    omit_refresh_token: bool,
    lost_answers: VecDeque<LostAnswer>,
    /// Every accepted assertion's `jti`: a replay is refused.
    seen_jti: std::collections::HashSet<String>,
}

/// What [`Provider::before_refresh_answer`] runs.
type RefreshHook = Arc<dyn Fn(u32) + Send + Sync>;

pub struct Provider {
    config: ProviderConfig,
    assertion_key: Option<crate::assertion::PublicKey>,
    addr: SocketAddr,
    state: Mutex<ProviderState>,
    before_refresh_answer: Mutex<Option<RefreshHook>>,
}

impl Provider {
    /// Starts on an ephemeral loopback port, on the current tokio runtime.
    pub async fn start(config: ProviderConfig) -> std::io::Result<Arc<Provider>> {
        let assertion_key = match &config.assertion_key {
            Some(pem) => Some(
                crate::assertion::PublicKey::from_pem(pem)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let provider = Arc::new(Provider {
            assertion_key,
            config,
            addr: listener.local_addr()?,
            state: Mutex::new(ProviderState::default()),
            before_refresh_answer: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/api/{*path}", any(api))
            .nest("/_testkit", crate::admin::routes())
            .with_state(provider.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(provider)
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The client this provider accepts, as a credential would name it.
    pub fn client(&self) -> TestClient {
        TestClient {
            token_url: self.token_url(),
            client_id: self.config.client_id.clone(),
            client_secret: self.config.client_secret.clone(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `/api/<path>`: 200 with a valid token, 401 otherwise. `/api/reject`
    /// always answers 401; `/api/scoped` answers a valid token 401
    /// `insufficient_scope` (scope "api admin"); `/api/big` answers 2 MiB; `/api/redirect` answers
    /// 302 to `/api/me`; `/api/slow` starts answering after 2 s.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}/api/{}", self.addr, path.trim_start_matches('/'))
    }

    /// A new grant, as if a person had just authorised: the token response
    /// a real authorization-code exchange would return.
    pub fn authorize(&self) -> Value {
        let mut s = self.lock();
        s.next_grant += 1;
        let grant = s.next_grant;
        s.grants.insert(grant, Grant { revoked: false });
        let mut body = self.issue(&mut s, grant, true);
        body.insert("id_token".into(), json!(format!("idt_{}", random_hex())));
        Value::Object(body)
    }

    /// The next token endpoint calls answer these instead, in order.
    pub fn force_token_responses(&self, responses: impl IntoIterator<Item = (u16, String)>) {
        self.lock().forced_token_responses.extend(responses);
    }

    /// The next granted refreshes lose their answers this way, in order.
    pub fn lose_answers(&self, faults: impl IntoIterator<Item = LostAnswer>) {
        self.lock().lost_answers.extend(faults);
    }

    /// Runs `hook` after each granted refresh, once the refresh token is
    /// rotated and before the answer leaves, with the refresh's number (1 for
    /// the first this provider granted). It runs on a blocking thread and the
    /// answer waits for it, so a test acts at exactly that moment (fills a
    /// disk, stops a database) without sleeping. Replaces an earlier hook.
    pub fn before_refresh_answer(&self, hook: impl Fn(u32) + Send + Sync + 'static) {
        *self
            .before_refresh_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    /// Ends every access token issued so far (as if their lifetime had run
    /// out): a test gets its expiry without waiting, and later tokens keep
    /// the configured lifetime.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for (_, until) in self.lock().access.values_mut() {
            *until = (*until).min(now);
        }
    }

    /// Revokes every grant (as an administrator or a password change would).
    pub fn revoke_all(&self) {
        for g in self.lock().grants.values_mut() {
            g.revoked = true;
        }
    }

    /// Refresh responses without `refresh_token` from now on.
    pub fn omit_refresh_token(&self, omit: bool) {
        self.lock().omit_refresh_token = omit;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn api_log(&self) -> Vec<ApiRequest> {
        self.lock().api_log.clone()
    }

    /// When each refresh was granted, in order.
    pub fn refresh_times(&self) -> Vec<Instant> {
        self.lock().refresh_times.clone()
    }

    /// The form fields of the last token request.
    pub fn last_token_form(&self) -> Vec<(String, String)> {
        self.lock().last_token_form.clone()
    }

    /// Whether `refresh_token` could still be exchanged.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        let s = self.lock();
        s.refresh.get(refresh_token).is_some_and(|r| {
            r.spent_at.is_none() && s.grants.get(&r.grant).is_some_and(|g| !g.revoked)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProviderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn issue(
        &self,
        s: &mut ProviderState,
        grant: u64,
        with_refresh: bool,
    ) -> serde_json::Map<String, Value> {
        let access = format!("at_{}", random_hex());
        s.access.insert(
            access.clone(),
            (grant, Instant::now() + self.config.access_ttl),
        );
        let mut body = serde_json::Map::new();
        body.insert("access_token".into(), json!(access));
        body.insert("token_type".into(), json!("Bearer"));
        if !self.config.omit_expires_in {
            body.insert("expires_in".into(), json!(self.config.access_ttl.as_secs()));
        }
        body.insert("scope".into(), json!("api"));
        if with_refresh {
            let refresh = format!("rt_{}", random_hex());
            s.refresh.insert(
                refresh.clone(),
                RefreshToken {
                    grant,
                    spent_at: None,
                },
            );
            body.insert("refresh_token".into(), json!(refresh));
        }
        for (k, v) in &self.config.extra_token_fields {
            body.insert(k.clone(), v.clone());
        }
        body
    }
}

/// `client_assertion_type` of `private_key_jwt` (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl Provider {
    /// Verifies an assertion against the registered key (none registered:
    /// refused), counting refusals.
    fn check_assertion(
        &self,
        s: &mut ProviderState,
        jwt: &str,
        subject: Option<&str>,
    ) -> Result<String, &'static str> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (issuer, token_url) = (self.base_url(), self.token_url());
        let result = match &self.assertion_key {
            None => Err("no key registered"),
            Some(key) => crate::assertion::verify(
                jwt,
                key,
                &crate::assertion::Expect {
                    issuer: &self.config.client_id,
                    subject,
                    audiences: [&issuer, &token_url],
                    now,
                },
                &mut s.seen_jti,
            ),
        };
        if let Err(why) = result {
            s.stats.assertions_refused += 1;
            eprintln!("rekey-testkit: assertion refused: {why}");
        }
        result
    }
}

fn random_hex() -> String {
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{a:016x}{b:016x}")
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(json!({ "error": code }))).into_response()
}

/// Which client authentication was presented, and the client it names.
fn client_of(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(ClientAuth, String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| -> String {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Some((ClientAuth::Basic, unescape(id), unescape(secret)));
    }
    let id = form.get("client_id")?.clone();
    let secret = form.get("client_secret")?.clone();
    Some((ClientAuth::Post, id, secret))
}

async fn token(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let (body, lost, number) = match grant_refresh(&p, &headers, &body) {
        Ok(granted) => granted,
        Err(refused) => return refused,
    };
    let hook = p
        .before_refresh_answer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(hook) = hook {
        // A hook that panics has said so on stderr; the answer still leaves.
        let _ = tokio::task::spawn_blocking(move || hook(number)).await;
    }
    if !p.config.token_delay.is_zero() {
        tokio::time::sleep(p.config.token_delay).await;
    }
    match lost {
        None => axum::Json(Value::Object(body)).into_response(),
        Some(LostAnswer::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, "upstream failed").into_response()
        }
        Some(LostAnswer::Hang(d)) => {
            tokio::time::sleep(d).await;
            axum::Json(Value::Object(body)).into_response()
        }
        Some(LostAnswer::Reset) => {
            // A body that fails after the headers: the connection is cut.
            let broken =
                futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("cut")) });
            (
                [(header::CONTENT_LENGTH, "1000")],
                axum::body::Body::from_stream(broken),
            )
                .into_response()
        }
    }
}

/// Checks and grants a refresh (under the state lock, nothing awaited): the
/// new token set, how its answer is to be lost, if it is, and the refresh's
/// number (1 for the first granted).
#[allow(clippy::result_large_err, clippy::type_complexity)]
fn grant_refresh(
    p: &Provider,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(serde_json::Map<String, Value>, Option<LostAnswer>, u32), Response> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let form: HashMap<String, String> = pairs.iter().cloned().collect();
    let mut guard = p.lock();
    let s = &mut *guard;
    s.stats.token_calls += 1;
    s.last_token_form = pairs;
    if let Some((status, body)) = s.forced_token_responses.pop_front() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    }

    let grant_type = form.get("grant_type").map(String::as_str);
    let bearer_grant = grant_type == Some(JWT_BEARER_GRANT);
    // RFC 6749 §2.3: a client MUST NOT use more than one authentication
    // method in a request (an assertion beside Basic or a secret).
    let methods = usize::from(headers.contains_key(header::AUTHORIZATION))
        + usize::from(form.contains_key("client_secret"))
        + usize::from(
            form.contains_key("client_assertion_type") || form.contains_key("client_assertion"),
        );
    if methods > 1 {
        s.stats.multiple_client_auth += 1;
        return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request"));
    }
    if form.get("client_assertion_type").map(String::as_str) == Some(CLIENT_ASSERTION_TYPE) {
        let subject = Some(p.config.client_id.as_str());
        let named = form
            .get("client_id")
            .is_none_or(|id| *id == p.config.client_id);
        let checked = form
            .get("client_assertion")
            .map(|jwt| p.check_assertion(s, jwt, subject));
        if !named || !matches!(checked, Some(Ok(_))) {
            return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
        }
        s.stats.client_assertions_ok += 1;
    } else if let Some((method, id, secret)) = client_of(headers, &form) {
        match method {
            ClientAuth::Basic => s.stats.basic_auth_calls += 1,
            ClientAuth::Post => s.stats.post_auth_calls += 1,
        }
        let wrong_method = p
            .config
            .client_auth
            .is_some_and(|required| required != method);
        if wrong_method || id != p.config.client_id || secret != p.config.client_secret {
            return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
        }
    } else if !(bearer_grant && form.get("client_id") == Some(&p.config.client_id)) {
        // Only the JWT bearer grant may come from a client that names
        // itself without authenticating: the assertion proves it.
        return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    if bearer_grant {
        let Some(Ok(subject)) = form
            .get("assertion")
            .map(|jwt| p.check_assertion(s, jwt, None))
        else {
            return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
        };
        s.next_grant += 1;
        let grant = s.next_grant;
        s.grants.insert(grant, Grant { revoked: false });
        s.stats.jwt_bearer_granted += 1;
        s.stats.last_assertion_subject = Some(subject);
        let body = p.issue(s, grant, false);
        return Ok((body, s.lost_answers.pop_front(), s.stats.jwt_bearer_granted));
    }
    if form.get("grant_type").map(String::as_str) == Some("client_credentials") {
        // The client's own grant: a new one per request, never a refresh token.
        s.next_grant += 1;
        let grant = s.next_grant;
        s.grants.insert(grant, Grant { revoked: false });
        s.stats.client_credentials_granted += 1;
        let body = p.issue(s, grant, false);
        return Ok((
            body,
            s.lost_answers.pop_front(),
            s.stats.client_credentials_granted,
        ));
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ));
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let Some(rt) = s.refresh.get_mut(&presented) else {
        s.stats.invalid_grant += 1;
        return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
    };
    let grant = rt.grant;
    let reused = rt
        .spent_at
        .is_some_and(|at| at.elapsed() >= p.config.grace_period);
    if reused {
        // Reuse detection: someone replayed a rotated token. Kill the grant.
        s.stats.reused_refresh_tokens += 1;
        s.stats.invalid_grant += 1;
        if let Some(g) = s.grants.get_mut(&grant) {
            g.revoked = true;
        }
        return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
    }
    if s.grants.get(&grant).is_none_or(|g| g.revoked) {
        s.stats.invalid_grant += 1;
        return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
    }
    // A response without a refresh token means "keep using yours": the
    // presented one stays live (as at providers that do not rotate).
    let rotate = p.config.rotate_refresh_tokens && !s.omit_refresh_token;
    if rotate && rt.spent_at.is_none() {
        rt.spent_at = Some(Instant::now());
    }
    s.stats.refreshes_granted += 1;
    s.refresh_times.push(Instant::now());
    let body = p.issue(s, grant, rotate);
    Ok((body, s.lost_answers.pop_front(), s.stats.refreshes_granted))
}

async fn api(
    State(p): State<Arc<Provider>>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if path == "slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut guard = p.lock();
    let s = &mut *guard;
    s.stats.api_calls += 1;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refused = match token.map(|t| s.access.get(t)) {
        None => Some(Refusal::Missing),
        Some(None) => Some(Refusal::Unknown),
        Some(Some((grant, until))) => {
            if s.grants.get(grant).is_none_or(|g| g.revoked) {
                Some(Refusal::Revoked)
            } else if Instant::now() >= *until {
                Some(Refusal::Expired)
            } else if path == "reject" {
                Some(Refusal::AlwaysRejects)
            } else {
                None
            }
        }
    };
    let authorized = refused.is_none();
    match refused {
        Some(Refusal::Expired) => s.stats.api_refused_expired += 1,
        Some(Refusal::Unknown | Refusal::Revoked) => s.stats.api_refused_unknown_or_revoked += 1,
        _ => {}
    }
    if s.api_log.len() < API_LOG_LIMIT {
        s.api_log.push(ApiRequest {
            method: method.to_string(),
            path: path.clone(),
            body: body.to_vec(),
            authorized,
            refused,
        });
    }
    if !authorized {
        s.stats.api_unauthorized += 1;
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
            "",
        )
            .into_response();
    }
    match path.as_str() {
        "big" => return vec![b'x'; 2 * 1024 * 1024].into_response(),
        // The request body back, byte for byte (bodies passing through rekey).
        "echo" => return body.into_response(),
        "redirect" => return (StatusCode::FOUND, [(header::LOCATION, "/api/me")]).into_response(),
        // A valid token without the scope this resource needs (RFC 6750
        // §3.1), answered 401 as some APIs do: a refresh cannot help.
        "scoped" => {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    r#"Bearer error="insufficient_scope", scope="api admin""#,
                )],
                "",
            )
                .into_response();
        }
        _ => {}
    }
    let call = s.stats.api_calls;
    axum::Json(json!({ "ok": true, "path": path, "method": method.as_str(), "bytes": body.len(), "call": call }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        Provider {
            assertion_key: None,
            config: ProviderConfig::default(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: Mutex::new(ProviderState::default()),
            before_refresh_answer: Mutex::new(None),
        }
    }

    fn basic(p: &Provider) -> HeaderMap {
        let pair = format!("{}:{}", p.config.client_id, p.config.client_secret);
        let value = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {value}").parse().unwrap(),
        );
        headers
    }

    /// RFC 6749 §2.3: two client authentication methods in one request are
    /// refused and counted, so a host that sent Basic beside an assertion
    /// (or a secret) fails its tests instead of passing unnoticed.
    #[test]
    fn more_than_one_client_authentication_method_is_refused() {
        let p = provider();
        let id = p.config.client_id.clone();
        let secret = p.config.client_secret.clone();
        let assertion = format!(
            "grant_type=client_credentials&client_id={id}\
             &client_assertion_type={CLIENT_ASSERTION_TYPE}&client_assertion=x.y.z"
        );
        let with_secret =
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
        for (headers, body) in [
            (basic(&p), assertion.clone()),
            (basic(&p), with_secret.clone()),
            (
                HeaderMap::new(),
                format!("{with_secret}&client_assertion_type={CLIENT_ASSERTION_TYPE}"),
            ),
        ] {
            let refused = grant_refresh(&p, &headers, &Bytes::from(body)).err();
            assert_eq!(refused.map(|r| r.status()), Some(StatusCode::BAD_REQUEST));
        }
        assert_eq!(p.stats().multiple_client_auth, 3);
        // One method alone is judged on its merits (here: granted).
        assert!(
            grant_refresh(
                &p,
                &basic(&p),
                &Bytes::from("grant_type=client_credentials")
            )
            .is_ok()
        );
        assert_eq!(p.stats().multiple_client_auth, 3);
    }
}
