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

use crate::settings::ClientAuth;

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
        }
    }
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
}

/// One API request as received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub authorized: bool,
}

struct Grant {
    revoked: bool,
}

struct RefreshToken {
    grant: u64,
    spent: bool,
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
}

pub struct Provider {
    config: ProviderConfig,
    addr: SocketAddr,
    state: Mutex<ProviderState>,
}

impl Provider {
    /// Starts on an ephemeral loopback port, on the current tokio runtime.
    pub async fn start(config: ProviderConfig) -> std::io::Result<Arc<Provider>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let provider = Arc::new(Provider {
            config,
            addr: listener.local_addr()?,
            state: Mutex::new(ProviderState::default()),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/api/{*path}", any(api))
            .with_state(provider.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(provider)
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `/api/<path>`: 200 with a valid token, 401 otherwise. `/api/reject`
    /// always answers 401; `/api/big` answers 2 MiB; `/api/redirect` answers
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
        s.refresh
            .get(refresh_token)
            .is_some_and(|r| !r.spent && s.grants.get(&r.grant).is_some_and(|g| !g.revoked))
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
        body.insert("expires_in".into(), json!(self.config.access_ttl.as_secs()));
        body.insert("scope".into(), json!("api"));
        if with_refresh {
            let refresh = format!("rt_{}", random_hex());
            s.refresh.insert(
                refresh.clone(),
                RefreshToken {
                    grant,
                    spent: false,
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
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let form: HashMap<String, String> = pairs.iter().cloned().collect();
    let mut guard = p.lock();
    let s = &mut *guard;
    s.stats.token_calls += 1;
    s.last_token_form = pairs;
    if let Some((status, body)) = s.forced_token_responses.pop_front() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }

    let Some((method, id, secret)) = client_of(&headers, &form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    match method {
        ClientAuth::Basic => s.stats.basic_auth_calls += 1,
        ClientAuth::Post => s.stats.post_auth_calls += 1,
    }
    let wrong_method = p
        .config
        .client_auth
        .is_some_and(|required| required != method);
    if wrong_method || id != p.config.client_id || secret != p.config.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let Some(rt) = s.refresh.get_mut(&presented) else {
        s.stats.invalid_grant += 1;
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let grant = rt.grant;
    if rt.spent {
        // Reuse detection: someone replayed a rotated token. Kill the grant.
        s.stats.reused_refresh_tokens += 1;
        s.stats.invalid_grant += 1;
        if let Some(g) = s.grants.get_mut(&grant) {
            g.revoked = true;
        }
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if s.grants.get(&grant).is_none_or(|g| g.revoked) {
        s.stats.invalid_grant += 1;
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let rotate = p.config.rotate_refresh_tokens;
    if rotate {
        rt.spent = true;
    }
    s.stats.refreshes_granted += 1;
    s.refresh_times.push(Instant::now());
    let mut body = p.issue(s, grant, rotate);
    if s.omit_refresh_token {
        body.remove("refresh_token");
    }
    axum::Json(Value::Object(body)).into_response()
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
    let valid = token
        .and_then(|t| s.access.get(t))
        .is_some_and(|(grant, until)| {
            Instant::now() < *until && s.grants.get(grant).is_some_and(|g| !g.revoked)
        });
    let authorized = valid && path != "reject";
    if s.api_log.len() < API_LOG_LIMIT {
        s.api_log.push(ApiRequest {
            method: method.to_string(),
            path: path.clone(),
            body: body.to_vec(),
            authorized,
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
        "redirect" => return (StatusCode::FOUND, [(header::LOCATION, "/api/me")]).into_response(),
        _ => {}
    }
    let call = s.stats.api_calls;
    axum::Json(json!({ "ok": true, "path": path, "method": method.as_str(), "bytes": body.len(), "call": call }))
        .into_response()
}
