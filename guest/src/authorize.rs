//! The first token set: the authorization code grant with PKCE through a
//! loopback redirect (RFC 6749 §4.1, RFC 7636, RFC 8252 §7.3, RFC 9207), and
//! the device authorization grant (RFC 8628).
//!
//! Written against [`Effects`] (HTTP, the clock, sleeping), like `flow`, so
//! the tests script every answer. Randomness comes in as an argument: the
//! component imports no `wasi:random`.

use crate::basic_auth;
use crate::dpop;
use crate::exports::rekey::oauth2::authorize::{
    Authorization, AuthorizeError, DeviceGrant, Pending,
};
use crate::flow::is_loopback_authority;
use crate::http::{self, Http, Response};
use crate::rekey::oauth2::types::{
    ClientAuth, Grant, OauthError, Purpose, SendError, Settings, TransportError,
};
use crate::token::{self, Outcome};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use core::time::Duration;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What the flows need from outside.
pub trait Effects: Http + crate::effects::Signing {
    fn now_unix(&self) -> u64;
    fn sleep(&mut self, d: Duration);
}

/// Random bytes `begin` needs: 16 for `state`, 32 for the PKCE verifier.
pub const ENTROPY: usize = 48;
/// RFC 8628 §3.2: the polling interval when the server names none.
pub const DEFAULT_INTERVAL: u32 = 5;
/// RFC 8628 §3.5: `slow_down` adds this many seconds to the interval.
pub const SLOW_DOWN: u32 = 5;
/// Longest a device grant is polled, whatever the server says.
pub const MAX_DEVICE_LIFETIME: u32 = 3600;
/// Failed polls in a row (no connection, 5xx) before giving up.
pub const POLL_FAILURES: u32 = 4;
/// Attempts at a token or device endpoint request that provably did nothing.
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Parameters of the authorization request the guest sets itself.
const RESERVED_AUTH: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

fn invalid(m: impl Into<String>) -> AuthorizeError {
    AuthorizeError::InvalidSettings(m.into())
}

/// The rule `send` applies to the token URL (`origins::check_transport`:
/// https, or http on a literal loopback address; no user information), so
/// `authorize` and `send` agree on every endpoint (RFC 6749 §3.1, §3.2).
fn check_endpoint(what: &str, url: &str) -> Result<(), AuthorizeError> {
    crate::origins::check_transport(url, &format!("the {what}")).map_err(invalid)?;
    if url.contains('#') {
        return Err(invalid(format!("the {what} must not carry a fragment")));
    }
    Ok(())
}

/// An endpoint the grant needs: configured, and https (http on loopback).
fn configured<'a>(url: Option<&'a str>, what: &str) -> Result<&'a str, AuthorizeError> {
    let url = url.ok_or_else(|| invalid(format!("no {what} is configured")))?;
    check_endpoint(what, url)?;
    Ok(url)
}

fn check_client(settings: &Settings) -> Result<(), AuthorizeError> {
    check_endpoint("token URL", &settings.token_url)?;
    if settings.client_id.is_empty() {
        return Err(invalid("the client id is empty"));
    }
    if !matches!(settings.grant, Grant::RefreshToken) {
        return Err(invalid(
            "this credential's grant needs no authorisation: its first call fetches a token",
        ));
    }
    crate::flow::check_signing(settings).map_err(invalid)
}

/// Starts the code grant: `state`, the PKCE pair, and the authorization URL.
pub fn begin(
    settings: &Settings,
    auth: &Authorization,
    entropy: &[u8],
) -> Result<Pending, AuthorizeError> {
    check_client(settings)?;
    let endpoint = configured(auth.authorization_url.as_deref(), "authorization URL")?;
    // It is shown to a person and goes out as a Location header: terminal
    // controls (C1's CSI too) and bidi overrides would speak for it.
    if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the authorization URL must be printable ASCII without spaces (percent-encode anything else)",
        ));
    }
    let redirect = auth.redirect_uri.as_str();
    if !redirect
        .strip_prefix("http://")
        .is_some_and(is_loopback_authority)
        || redirect.contains(['#', '?'])
    {
        return Err(invalid(
            "the redirect URI must be http:// on loopback (RFC 8252 §7.3), without query or fragment",
        ));
    }
    if let Some((k, _)) = auth
        .auth_params
        .iter()
        .find(|(k, _)| RESERVED_AUTH.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "the authorization parameter {} would override what rekey sets itself",
            crate::origins::quoted(k)
        )));
    }
    if entropy.len() < ENTROPY {
        return Err(invalid(format!(
            "{} random bytes given, {ENTROPY} needed",
            entropy.len()
        )));
    }
    let state = basic_auth::base64url(&entropy[..16]);
    let code_verifier = basic_auth::base64url(&entropy[16..48]);
    let challenge = basic_auth::base64url(&Sha256::digest(code_verifier.as_bytes()));
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("response_type", "code");
    query.append_pair("client_id", &settings.client_id);
    query.append_pair("redirect_uri", redirect);
    if let Some(scope) = auth.scope.as_deref().filter(|s| !s.is_empty()) {
        query.append_pair("scope", scope);
    }
    query.append_pair("state", &state);
    query.append_pair("code_challenge", &challenge);
    query.append_pair("code_challenge_method", "S256");
    for (k, v) in &auth.auth_params {
        query.append_pair(k, v);
    }
    let joiner = if endpoint.contains('?') { '&' } else { '?' };
    Ok(Pending {
        url: format!("{endpoint}{joiner}{}", query.finish()),
        state,
        code_verifier,
    })
}

/// Equal without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An OAuth error code as it may travel on (§5.2 charset, short), or
/// `unrecognised`: no provider text of unknown content goes further.
fn plausible_code(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        code.into()
    } else {
        "unrecognised".into()
    }
}

/// RFC 9207 §2.4: the redirect's `iss` names the issuer asked, and is there
/// when the issuer says it sends it. An `iss` that cannot be checked is
/// refused rather than ignored: it says which server answered, and only a
/// configured issuer can tell a mix-up from the real one.
fn check_issuer(auth: &Authorization, iss: Option<&str>) -> Result<(), AuthorizeError> {
    match (iss, auth.issuer.as_deref()) {
        (Some(_), None) => Err(invalid(
            "the redirect names its issuer (RFC 9207 `iss`) but no issuer is configured to \
             check it against: configure the issuer (`rekey credential set NAME --issuer URL`, or `issuer` \
             in the Node and Python APIs)",
        )),
        (Some(iss), Some(expected)) if iss != expected => Err(AuthorizeError::IssuerMismatch),
        (None, Some(_)) if auth.issuer_sends_iss => Err(AuthorizeError::IssuerMismatch),
        _ => Ok(()),
    }
}

/// Checks the redirect and exchanges its code.
pub fn finish(
    fx: &mut impl Effects,
    settings: &Settings,
    auth: &Authorization,
    pending: &Pending,
    query: &str,
) -> Result<String, AuthorizeError> {
    check_client(settings)?;
    let mut state = None;
    let mut code = None;
    let mut iss = None;
    let mut error = None;
    let mut repeated = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "state" => &mut state,
            "code" => &mut code,
            "iss" => &mut iss,
            "error" => &mut error,
            _ => continue,
        };
        // RFC 6749 §3.1: parameters must not be repeated.
        repeated |= slot.is_some();
        *slot = Some(v.into_owned());
    }
    // State first: a redirect that is not ours says nothing, error or not.
    if repeated || !state.is_some_and(|s| same(&s, &pending.state)) {
        return Err(AuthorizeError::StateMismatch);
    }
    check_issuer(auth, iss.as_deref())?;
    match error.as_deref() {
        Some("access_denied") => return Err(AuthorizeError::AccessDenied),
        Some(e) => return Err(AuthorizeError::ProviderError(plausible_code(e))),
        None => {}
    }
    let code = code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| AuthorizeError::ProviderError("no_code".into()))?;
    let form = token::Form {
        url: &settings.token_url,
        fields: vec![
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &auth.redirect_uri),
            ("code_verifier", &pending.code_verifier),
        ],
        bearer: None,
    };
    exchange(fx, settings, &form)
}

/// Sends one attempt's request (`token::Form::request`, with a DPoP proof
/// when the settings have a DPoP key): its signed assertion and proof, if
/// any, are new.
fn send_form<F: Effects>(
    fx: &mut F,
    settings: &Settings,
    form: &token::Form,
) -> Result<Result<http::Response, TransportError>, AuthorizeError> {
    let now = fx.now_unix();
    dpop::token_exchange(fx, settings, Purpose::TokenEndpoint, now, form, |fx| {
        fx.now_unix()
    })
    .map_err(invalid)
}

/// One answer of a token endpoint, as the grants need it.
enum Answer {
    /// A usable token response: the body, as sent.
    Tokens(String),
    /// An OAuth error code (RFC 6749 §5.2, RFC 8628 §3.5).
    Error(u16, String),
    /// Worth another attempt: the request provably did nothing (429, 503,
    /// no connection), or (`maybe_processed`) it may have.
    Retry {
        reason: String,
        maybe_processed: bool,
    },
    /// Final.
    Fail(AuthorizeError),
}

fn read_answer(result: Result<Response, TransportError>) -> Answer {
    let resp = match result {
        Ok(resp) => resp,
        Err(TransportError::Connect(m)) => {
            return Answer::Retry {
                reason: format!("endpoint unreachable: {m}"),
                maybe_processed: false,
            };
        }
        Err(e @ (TransportError::Timeout | TransportError::Other(_))) => {
            let reason = match &e {
                TransportError::Other(m) => format!("exchange failed: {m}"),
                _ => "endpoint timed out".into(),
            };
            return Answer::Retry {
                reason,
                maybe_processed: true,
            };
        }
        Err(e) => return Answer::Fail(AuthorizeError::Transport(e)),
    };
    let code = error_code(&resp);
    match token::classify(&resp) {
        Outcome::Tokens(_) => match String::from_utf8(resp.body) {
            Ok(body) => Answer::Tokens(body),
            Err(_) => Answer::Fail(AuthorizeError::Endpoint(
                "token response is not UTF-8".into(),
            )),
        },
        Outcome::Retry {
            reason,
            maybe_processed,
            ..
        } => Answer::Retry {
            reason,
            maybe_processed,
        },
        Outcome::Fail(e) => match (code, e) {
            (Some(code), _) => Answer::Error(resp.status, code),
            (None, SendError::TokenEndpoint(m) | SendError::InvalidSettings(m)) => {
                Answer::Fail(AuthorizeError::Endpoint(m))
            }
            (None, _) => Answer::Fail(AuthorizeError::Endpoint("unusable answer".into())),
        },
    }
}

/// The `error` of a JSON error body, when there is one.
fn error_code(resp: &Response) -> Option<String> {
    if resp.body.len() > token::MAX_TOKEN_RESPONSE {
        return None;
    }
    match serde_json::from_slice::<Value>(&resp.body).ok()? {
        Value::Object(map) => Some(plausible_code(map.get("error")?.as_str()?)),
        _ => None,
    }
}

fn rejected(status: u16, code: String) -> AuthorizeError {
    match code.as_str() {
        "access_denied" => AuthorizeError::AccessDenied,
        "expired_token" => AuthorizeError::Expired,
        _ => AuthorizeError::Rejected(OauthError { status, code }),
    }
}

/// Sends a request that must not be repeated once it may have been
/// processed (a code is single use): retried only when it provably did
/// nothing.
fn exchange(
    fx: &mut impl Effects,
    settings: &Settings,
    form: &token::Form,
) -> Result<String, AuthorizeError> {
    let mut delay = BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match read_answer(send_form(fx, settings, form)?) {
            Answer::Tokens(body) => return Ok(body),
            Answer::Error(status, code) => return Err(rejected(status, code)),
            Answer::Fail(e) => return Err(e),
            Answer::Retry {
                reason,
                maybe_processed,
            } => {
                if maybe_processed || attempt == ATTEMPTS {
                    return Err(AuthorizeError::Endpoint(format!(
                        "{reason} ({attempt} attempts)"
                    )));
                }
            }
        }
        fx.sleep(delay);
        delay *= 2;
    }
    unreachable!("the last attempt returns")
}

/// A device grant request: RFC 8628 §3.1 and §3.4 put `client_id` in the
/// body even when the client authenticates with HTTP Basic, and some servers
/// (django-oauth-toolkit) require it there.
fn device_post<'a>(
    settings: &'a Settings,
    url: &'a str,
    fields: &[(&'a str, &'a str)],
) -> token::Form<'a> {
    let mut fields = fields.to_vec();
    if settings.client_auth == ClientAuth::ClientSecretBasic && settings.client_secret.is_some() {
        fields.push(("client_id", &settings.client_id));
    }
    token::Form {
        url,
        fields,
        bearer: None,
    }
}

/// Starts the device grant (RFC 8628 §3.1, §3.2).
pub fn device_start(
    fx: &mut impl Effects,
    settings: &Settings,
    auth: &Authorization,
) -> Result<DeviceGrant, AuthorizeError> {
    check_client(settings)?;
    let url = configured(auth.device_url.as_deref(), "device authorization URL")?;
    let mut fields = vec![];
    if let Some(scope) = auth.scope.as_deref().filter(|s| !s.is_empty()) {
        fields.push(("scope", scope));
    }
    let form = device_post(settings, url, &fields);
    let body = exchange_device(fx, settings, &form)?;
    parse_device_grant(&body)
}

/// The device authorization request changes nothing at the server until a
/// person acts, so any failure may be retried.
fn exchange_device(
    fx: &mut impl Effects,
    settings: &Settings,
    form: &token::Form,
) -> Result<Map<String, Value>, AuthorizeError> {
    let mut delay = BACKOFF;
    for attempt in 1..=ATTEMPTS {
        // No DPoP proof: this is not the token endpoint (RFC 9449 §5).
        let now = fx.now_unix();
        let req = form.request(fx, settings, now).map_err(invalid)?;
        let result = http::exchange(fx, Purpose::DeviceEndpoint, &req);
        let reason = match result {
            Ok(resp) if (200..300).contains(&resp.status) && error_code(&resp).is_none() => {
                return match serde_json::from_slice::<Value>(&resp.body) {
                    Ok(Value::Object(map)) if resp.body.len() <= token::MAX_TOKEN_RESPONSE => {
                        Ok(map)
                    }
                    _ => Err(AuthorizeError::Endpoint(
                        "device authorization response is not a JSON object".into(),
                    )),
                };
            }
            Ok(resp) if resp.status == 429 || resp.status >= 500 => {
                format!("device authorization endpoint answered {}", resp.status)
            }
            Ok(resp) => {
                return Err(match error_code(&resp) {
                    Some(code) => rejected(resp.status, code),
                    None => AuthorizeError::Endpoint(format!(
                        "device authorization endpoint answered {}",
                        resp.status
                    )),
                });
            }
            Err(TransportError::Connect(m)) => format!("endpoint unreachable: {m}"),
            Err(TransportError::Timeout) => "endpoint timed out".into(),
            Err(TransportError::Other(m)) => format!("exchange failed: {m}"),
            Err(e) => return Err(AuthorizeError::Transport(e)),
        };
        if attempt == ATTEMPTS {
            return Err(AuthorizeError::Endpoint(format!(
                "{reason} ({attempt} attempts)"
            )));
        }
        fx.sleep(delay);
        delay *= 2;
    }
    unreachable!("the last attempt returns")
}

/// Shown to a person: printable ASCII only (no terminal escapes).
fn showable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 2048 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn seconds(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_device_grant(map: &Map<String, Value>) -> Result<DeviceGrant, AuthorizeError> {
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(ToString::to_string);
    let bad = |m: &str| AuthorizeError::Endpoint(format!("device authorization response {m}"));
    let device_code = text("device_code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("has no device_code"))?;
    let user_code = text("user_code")
        .filter(|c| showable(c))
        .ok_or_else(|| bad("has no usable user_code"))?;
    // Google still spells it verification_url.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .filter(|u| showable(u) && (u.starts_with("https://") || u.starts_with("http://")))
        .ok_or_else(|| bad("has no usable verification_uri"))?;
    let verification_uri_complete = text("verification_uri_complete")
        .filter(|u| showable(u) && (u.starts_with("https://") || u.starts_with("http://")));
    let expires_in = seconds(map.get("expires_in"))
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("has no expires_in"))?
        .min(u64::from(MAX_DEVICE_LIFETIME)) as u32;
    let interval = seconds(map.get("interval"))
        .filter(|&s| s > 0)
        .map_or(DEFAULT_INTERVAL, |s| s.min(60) as u32);
    Ok(DeviceGrant {
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
        device_code,
    })
}

/// Polls until the person approves (the token response), refuses, or the
/// code expires (RFC 8628 §3.4, §3.5).
pub fn device_poll(
    fx: &mut impl Effects,
    settings: &Settings,
    grant: &DeviceGrant,
) -> Result<String, AuthorizeError> {
    check_client(settings)?;
    let lifetime = grant.expires_in.clamp(1, MAX_DEVICE_LIFETIME);
    let deadline = fx.now_unix().saturating_add(u64::from(lifetime));
    let mut interval = if grant.interval == 0 {
        DEFAULT_INTERVAL
    } else {
        grant.interval
    };
    let form = device_post(
        settings,
        &settings.token_url,
        &[
            ("grant_type", DEVICE_GRANT),
            ("device_code", &grant.device_code),
        ],
    );
    let mut failures = 0;
    loop {
        if fx.now_unix().saturating_add(u64::from(interval)) > deadline {
            return Err(AuthorizeError::Expired);
        }
        fx.sleep(Duration::from_secs(interval.into()));
        match read_answer(send_form(fx, settings, &form)?) {
            Answer::Tokens(body) => return Ok(body),
            Answer::Error(_, code) if code == "authorization_pending" => failures = 0,
            Answer::Error(_, code) if code == "slow_down" => {
                failures = 0;
                interval = interval.saturating_add(SLOW_DOWN);
            }
            Answer::Error(status, code) => return Err(rejected(status, code)),
            Answer::Fail(e) => return Err(e),
            Answer::Retry { reason, .. } => {
                // §3.5: back off on failures; a lost answer only costs the
                // person another approval.
                failures += 1;
                if failures == POLL_FAILURES {
                    return Err(AuthorizeError::Endpoint(format!(
                        "{reason} ({failures} polls in a row)"
                    )));
                }
                interval = interval.saturating_mul(2).min(60);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;
    use crate::rekey::oauth2::types::SigningAlgorithm;
    use crate::testing::{self, Script, ok, script, secs};
    use base64::Engine as _;
    use serde_json::json;
    use std::vec::Vec;

    fn settings(auth: ClientAuth) -> Settings {
        Settings {
            grant: crate::rekey::oauth2::types::Grant::RefreshToken,
            token_url: "https://idp.example/token".into(),
            client_id: "app id".into(),
            client_secret: Some("s&cret".into()),
            client_auth: auth,
            extra_params: vec![("format".into(), "json".into())],
            ..testing::settings()
        }
    }

    fn authorization() -> Authorization {
        Authorization {
            authorization_url: Some("https://idp.example/authorize?tenant=x".into()),
            device_url: Some("https://idp.example/device".into()),
            redirect_uri: "http://127.0.0.1:4711/callback".into(),
            scope: Some("openid offline_access".into()),
            auth_params: vec![("prompt".into(), "consent".into())],
            issuer: Some("https://idp.example".into()),
            issuer_sends_iss: false,
        }
    }

    fn entropy() -> Vec<u8> {
        (0..48u8).collect()
    }

    fn query(url: &str) -> Vec<(String, String)> {
        let q = url.split_once('?').unwrap().1;
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    fn form(req: &Request) -> Vec<(String, String)> {
        form_urlencoded::parse(&req.body).into_owned().collect()
    }

    const TOKENS: &str = r#"{"access_token":"a1","refresh_token":"r1","expires_in":60}"#;

    #[test]
    fn the_authorization_url_carries_state_and_an_s256_challenge() {
        let p = begin(
            &settings(ClientAuth::ClientSecretBasic),
            &authorization(),
            &entropy(),
        )
        .unwrap();
        assert!(
            p.url
                .starts_with("https://idp.example/authorize?tenant=x&response_type=code&")
        );
        let q = query(&p.url);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("client_id"), Some("app id"));
        assert_eq!(get("redirect_uri"), Some("http://127.0.0.1:4711/callback"));
        assert_eq!(get("scope"), Some("openid offline_access"));
        assert_eq!(get("prompt"), Some("consent"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(get("state"), Some(p.state.as_str()));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(p.state, b64.encode(&entropy()[..16]));
        assert_eq!(p.code_verifier, b64.encode(&entropy()[16..48]));
        assert_eq!(
            p.code_verifier.len(),
            43,
            "RFC 7636 §4.1: 43..128 characters"
        );
        let challenge = b64.encode(<sha2::Sha256 as sha2::Digest>::digest(&p.code_verifier));
        assert_eq!(get("code_challenge"), Some(challenge.as_str()));
        assert!(
            !p.url.contains(&p.code_verifier),
            "the verifier stays secret"
        );
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = basic_auth::base64url(&Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn begin_refuses_settings_that_cannot_work() {
        let s = settings(ClientAuth::ClientSecretBasic);
        type Mutation = Box<dyn Fn(&mut Authorization)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|a| a.authorization_url = None),
            Box::new(|a| a.authorization_url = Some("http://idp.example/authorize".into())),
            Box::new(|a| a.redirect_uri = "http://idp.example/callback".into()),
            Box::new(|a| a.redirect_uri = "https://127.0.0.1/callback".into()),
            Box::new(|a| a.redirect_uri = "http://127.0.0.1:9/callback#x".into()),
            Box::new(|a| a.auth_params.push(("state".into(), "fixed".into()))),
            Box::new(|a| {
                a.auth_params
                    .push(("code_challenge_method".into(), "plain".into()))
            }),
        ];
        // The URL is shown to a person (and sent as a Location header): a
        // discovered endpoint with terminal controls (C0, the 8-bit CSI
        // U+009B), a bidi override that makes it read as another, or a space
        // is refused; percent-encoded, each is fine.
        let mut cases = cases;
        for shown in ["\u{1b}[2J", "\u{9b}2J", "\u{202e}moc.live", " x", "\u{7f}"] {
            let url = format!("https://idp.example/authorize{shown}");
            cases.push(Box::new(move |a| a.authorization_url = Some(url.clone())));
        }
        let mut a = authorization();
        a.authorization_url = Some("https://idp.example/authorize%1B%C2%9B".into());
        assert!(begin(&s, &a, &entropy()).is_ok());
        for mutate in cases {
            let mut a = authorization();
            mutate(&mut a);
            assert!(matches!(
                begin(&s, &a, &entropy()),
                Err(AuthorizeError::InvalidSettings(_))
            ));
        }
        assert!(matches!(
            begin(&s, &authorization(), &[0; 47]),
            Err(AuthorizeError::InvalidSettings(_))
        ));
        // The token URL obeys the rule `send` applies: a name is not a
        // loopback address, and user information is refused.
        for token_url in ["http://localhost:9/token", "https://user@idp.example/token"] {
            let s = Settings {
                token_url: token_url.into(),
                ..settings(ClientAuth::ClientSecretBasic)
            };
            assert!(
                matches!(
                    begin(&s, &authorization(), &entropy()),
                    Err(AuthorizeError::InvalidSettings(_))
                ),
                "{token_url}"
            );
        }
        let s = Settings {
            token_url: "http://127.0.0.1:9/token".into(),
            ..settings(ClientAuth::ClientSecretBasic)
        };
        assert!(begin(&s, &authorization(), &entropy()).is_ok());
    }

    fn pending() -> Pending {
        begin(
            &settings(ClientAuth::ClientSecretBasic),
            &authorization(),
            &entropy(),
        )
        .unwrap()
    }

    #[test]
    fn a_token_url_that_does_not_exist_says_so() {
        let p = pending();
        let mut fx = script([ok(404, "<html>no such page</html>")]);
        let q = format!("code=c&state={}&iss=https%3A%2F%2Fidp.example", p.state);
        let err = finish(
            &mut fx,
            &settings(ClientAuth::ClientSecretBasic),
            &authorization(),
            &p,
            &q,
        )
        .unwrap_err();
        assert!(
            matches!(&err, AuthorizeError::Endpoint(m) if m.contains("404") && m.contains("token URL")),
            "{err:?}"
        );
    }

    #[test]
    fn the_code_is_exchanged_with_the_verifier_and_client_auth() {
        for auth in [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost] {
            let p = pending();
            let mut fx = script([ok(200, TOKENS)]);
            let q = format!("code=c%2B1&state={}&iss=https%3A%2F%2Fidp.example", p.state);
            let body = finish(&mut fx, &settings(auth), &authorization(), &p, &q).unwrap();
            assert_eq!(body, TOKENS);
            let f = form(&fx.sent[0]);
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("grant_type"), Some("authorization_code"));
            assert_eq!(get("code"), Some("c+1"));
            assert_eq!(get("redirect_uri"), Some("http://127.0.0.1:4711/callback"));
            assert_eq!(get("code_verifier"), Some(p.code_verifier.as_str()));
            assert_eq!(get("format"), Some("json"));
            let basic = fx.sent[0].headers.iter().any(|(k, _)| k == "authorization");
            assert_eq!(basic, matches!(auth, ClientAuth::ClientSecretBasic));
            assert_eq!(get("client_secret").is_some(), !basic);
            assert_eq!(fx.sent[0].url, "https://idp.example/token");
        }
    }

    fn private_key_jwt() -> Settings {
        Settings {
            signing: Some(crate::rekey::oauth2::types::Signing {
                algorithm: SigningAlgorithm::Es256,
                key_id: Some("k".into()),
                audience: Some("https://idp.example".into()),
            }),
            ..settings(ClientAuth::PrivateKeyJwt)
        }
    }

    #[test]
    fn private_key_jwt_signs_the_code_exchange_and_every_device_poll_anew() {
        let p = pending();
        let s = private_key_jwt();
        let mut fx = script([ok(200, TOKENS)]);
        let q = format!("code=c&state={}&iss=https%3A%2F%2Fidp.example", p.state);
        finish(&mut fx, &s, &authorization(), &p, &q).unwrap();
        let f = form(&fx.sent[0]);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("client_assertion_type").as_deref(),
            Some(crate::assertion::CLIENT_ASSERTION_TYPE)
        );
        assert!(get("client_assertion").is_some() && get("client_secret").is_none());
        assert!(!fx.sent[0].headers.iter().any(|(k, _)| k == "authorization"));
        // Two polls: two assertions, none used twice.
        let mut fx = script([
            ok(400, r#"{"error":"authorization_pending"}"#),
            ok(200, TOKENS),
        ]);
        device_poll(&mut fx, &s, &grant()).unwrap();
        let assertions: Vec<String> = fx
            .sent
            .iter()
            .map(|r| {
                form(r)
                    .into_iter()
                    .find(|(k, _)| k == "client_assertion")
                    .map(|(_, v)| v)
                    .unwrap()
            })
            .collect();
        assert_eq!(assertions.len(), 2);
        assert_ne!(assertions[0], assertions[1]);
        assert_eq!(fx.signed.len(), 2);
    }

    #[test]
    fn grants_without_a_person_and_unsigned_private_key_jwt_are_refused_before_any_request() {
        let p = pending();
        let q = format!("code=c&state={}", p.state);
        let a = authorization();
        let unsigned = Settings {
            signing: None,
            ..private_key_jwt()
        };
        let own = Settings {
            grant: crate::rekey::oauth2::types::Grant::ClientCredentials,
            ..settings(ClientAuth::ClientSecretBasic)
        };
        for (s, says) in [
            (unsigned, "needs signing settings"),
            (own, "needs no authorisation"),
        ] {
            for r in [
                begin(&s, &a, &entropy()).map(drop),
                finish(&mut NoEffects, &s, &a, &p, &q).map(drop),
                device_start(&mut NoEffects, &s, &a).map(drop),
            ] {
                assert!(
                    matches!(&r, Err(AuthorizeError::InvalidSettings(m)) if m.contains(says)),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn a_redirect_that_is_not_ours_exchanges_nothing() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let a = authorization();
        let st = &p.state;
        for (q, expected) in [
            ("code=c".to_string(), AuthorizeError::StateMismatch),
            ("code=c&state=wrong".into(), AuthorizeError::StateMismatch),
            (format!("code=c&state={st}x"), AuthorizeError::StateMismatch),
            (
                format!("code=c&state={st}&state={st}"),
                AuthorizeError::StateMismatch,
            ),
            (
                "error=access_denied&state=wrong".into(),
                AuthorizeError::StateMismatch,
            ),
            (
                format!("error=access_denied&state={st}"),
                AuthorizeError::AccessDenied,
            ),
            (
                format!("error=invalid_scope&error_description=secret+text&state={st}"),
                AuthorizeError::ProviderError("invalid_scope".into()),
            ),
            (
                format!("error=%3Cscript%3E&state={st}"),
                AuthorizeError::ProviderError("unrecognised".into()),
            ),
            (
                format!("error=vendor.error-2&state={st}"),
                AuthorizeError::ProviderError("vendor.error-2".into()),
            ),
            (
                format!("error={}&state={st}", "e".repeat(64)),
                AuthorizeError::ProviderError("e".repeat(64)),
            ),
            (
                format!("error={}&state={st}", "e".repeat(65)),
                AuthorizeError::ProviderError("unrecognised".into()),
            ),
            (
                format!("state={st}"),
                AuthorizeError::ProviderError("no_code".into()),
            ),
            (
                format!("code=c&state={st}&iss=https%3A%2F%2Fevil.example"),
                AuthorizeError::IssuerMismatch,
            ),
            (
                format!("error=access_denied&state={st}&iss=https%3A%2F%2Fevil.example"),
                AuthorizeError::IssuerMismatch,
            ),
        ] {
            let mut fx = script([]);
            let err = finish(&mut fx, &s, &a, &p, &q).unwrap_err();
            assert_eq!(format!("{err:?}"), format!("{expected:?}"), "{q}");
            assert!(fx.sent.is_empty(), "{q}: nothing exchanged");
        }
    }

    /// Effects that fail the test on any use: `finish` decides on the
    /// redirect before it sends, sleeps or reads the clock.
    struct NoEffects;
    impl testing::BytesHttp for NoEffects {
        fn send_bytes(&mut self, _: Purpose, _: &Request) -> Result<Response, TransportError> {
            panic!("a refused redirect sent a request")
        }
    }
    impl Effects for NoEffects {
        fn now_unix(&self) -> u64 {
            panic!("a refused redirect read the clock")
        }
        fn sleep(&mut self, _: Duration) {
            panic!("a refused redirect slept")
        }
    }
    impl crate::effects::Signing for NoEffects {
        fn random_u64(&mut self) -> u64 {
            panic!("a refused redirect drew a random number")
        }
        fn sign(&mut self, _: SigningAlgorithm, _: &[u8]) -> Result<Vec<u8>, String> {
            panic!("a refused redirect signed")
        }
    }

    #[test]
    fn a_wrong_state_of_the_right_length_is_refused_before_any_effect() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let mut a = authorization();
        a.issuer_sends_iss = true;
        // Every position, flipped to another state character: the length
        // check alone cannot refuse these.
        for i in 0..p.state.len() {
            let mut forged = p.state.clone().into_bytes();
            forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            for q in [
                format!("code=c&state={forged}&iss=https%3A%2F%2Fidp.example"),
                format!("error=access_denied&state={forged}"),
                format!("code=c&state={forged}&iss=https%3A%2F%2Fevil.example"),
            ] {
                let err = finish(&mut NoEffects, &s, &a, &p, &q).unwrap_err();
                assert!(matches!(err, AuthorizeError::StateMismatch), "{q}: {err:?}");
            }
        }
        // The state check comes before the issuer rules, whatever they say.
        a.issuer = None;
        let q = "code=c&state=AAAAAAAAAAAAAAAAAAAAAA&iss=x";
        assert_eq!(p.state.len(), 22);
        let err = finish(&mut NoEffects, &s, &a, &p, q).unwrap_err();
        assert!(matches!(err, AuthorizeError::StateMismatch), "{err:?}");
        assert!(same(&p.state, &p.state.clone()));
    }

    #[test]
    fn rfc9207_iss_is_checked_after_the_state_and_before_the_exchange() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let st = &p.state;
        let idp = "iss=https%3A%2F%2Fidp.example";
        let with = |issuer: Option<&str>, sends: bool| Authorization {
            issuer: issuer.map(Into::into),
            issuer_sends_iss: sends,
            ..authorization()
        };
        let known = Some("https://idp.example");
        // Refused, nothing sent.
        for (a, q, expect_settings) in [
            // The issuer says it sends `iss`: one without it is not its.
            (with(known, true), format!("code=c&state={st}"), false),
            (
                with(known, true),
                format!("error=access_denied&state={st}"),
                false,
            ),
            // Another issuer's `iss`, advertised or not.
            (
                with(known, false),
                format!("code=c&state={st}&iss=https%3A%2F%2Fevil.example"),
                false,
            ),
            (
                with(known, true),
                format!("code=c&state={st}&iss=https%3A%2F%2Fidp.example%2F"),
                false,
            ),
            (
                with(known, true),
                format!("code=c&state={st}&{idp}&{idp}"),
                false,
            ),
            // An `iss` nothing can check: configure the issuer.
            (with(None, false), format!("code=c&state={st}&iss=x"), true),
            (with(None, true), format!("code=c&state={st}&{idp}"), true),
        ] {
            let err = finish(&mut NoEffects, &s, &a, &p, &q).unwrap_err();
            if expect_settings {
                assert!(
                    matches!(&err, AuthorizeError::InvalidSettings(m) if m.contains("--issuer")),
                    "{q}: {err:?}"
                );
            } else if q.contains(&format!("{idp}&{idp}")) {
                assert!(matches!(err, AuthorizeError::StateMismatch), "{q}: {err:?}");
            } else {
                assert!(
                    matches!(err, AuthorizeError::IssuerMismatch),
                    "{q}: {err:?}"
                );
            }
        }
        // Accepted: the issuer's own `iss`, or none when none is promised.
        for (a, q) in [
            (with(known, true), format!("code=c&state={st}&{idp}")),
            (with(known, false), format!("code=c&state={st}&{idp}")),
            (with(known, false), format!("code=c&state={st}")),
            (with(None, true), format!("code=c&state={st}")),
            (with(None, false), format!("code=c&state={st}")),
        ] {
            let mut fx = script([ok(200, TOKENS)]);
            assert_eq!(finish(&mut fx, &s, &a, &p, &q).unwrap(), TOKENS, "{q}");
            assert_eq!(fx.sent.len(), 1);
        }
    }

    #[test]
    fn code_exchange_answers_are_classified() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let q = format!("code=c&state={}", p.state);
        let run = |answers: Vec<Result<Response, TransportError>>| {
            let mut fx = script(answers);
            let r = finish(&mut fx, &s, &authorization(), &p, &q);
            (r, fx.sent.len())
        };
        let (r, n) = run(vec![ok(400, r#"{"error":"invalid_grant"}"#)]);
        assert!(
            matches!(r, Err(AuthorizeError::Rejected(OauthError { status: 400, ref code })) if code == "invalid_grant")
        );
        assert_eq!(n, 1);
        let (r, _) = run(vec![ok(401, r#"{"error":"invalid_client"}"#)]);
        assert!(matches!(r, Err(AuthorizeError::Rejected(e)) if e.code == "invalid_client"));
        // Provably not processed: retried.
        let (r, n) = run(vec![
            ok(503, ""),
            Err(TransportError::Connect("refused".into())),
            ok(200, TOKENS),
        ]);
        assert!(r.is_ok());
        assert_eq!(n, 3);
        // May have been processed: a code is single use, so never again.
        for lost in [ok(502, ""), Err(TransportError::Timeout)] {
            let (r, n) = run(vec![lost]);
            assert!(matches!(r, Err(AuthorizeError::Endpoint(_))));
            assert_eq!(n, 1);
        }
        let (r, _) = run(vec![ok(200, r#"{"token_type":"bearer"}"#)]);
        assert!(matches!(r, Err(AuthorizeError::Endpoint(_))));
        let (r, _) = run(vec![Err(TransportError::Refused("no".into()))]);
        assert!(matches!(r, Err(AuthorizeError::Transport(_))));
    }

    const DEVICE: &str = r#"{"device_code":"dc","user_code":"WDJB-MJHT","verification_uri":"https://idp.example/device","verification_uri_complete":"https://idp.example/device?user_code=WDJB-MJHT","expires_in":600,"interval":5}"#;

    /// Starts the device grant with the test settings (secret in the form).
    fn start_device(fx: &mut Script) -> Result<DeviceGrant, AuthorizeError> {
        device_start(
            fx,
            &settings(ClientAuth::ClientSecretPost),
            &authorization(),
        )
    }

    fn grant() -> DeviceGrant {
        let mut fx = script([ok(200, DEVICE)]);
        start_device(&mut fx).unwrap()
    }

    #[test]
    fn the_device_grant_starts_with_the_client_and_scope() {
        let mut fx = script([ok(503, ""), ok(200, DEVICE)]);
        let g = start_device(&mut fx).unwrap();
        assert_eq!(
            (g.user_code.as_str(), g.device_code.as_str()),
            ("WDJB-MJHT", "dc")
        );
        assert_eq!((g.expires_in, g.interval), (600, 5));
        assert_eq!(fx.sent[1].url, "https://idp.example/device");
        let f = form(&fx.sent[1]);
        assert!(f.contains(&("scope".into(), "openid offline_access".into())));
        assert!(f.contains(&("client_id".into(), "app id".into())));

        // Google's spelling; no interval means 5 s.
        let google = r#"{"device_code":"dc","user_code":"ABC","verification_url":"https://www.google.com/device","expires_in":"1800"}"#;
        let mut fx = script([ok(200, google)]);
        let g = start_device(&mut fx).unwrap();
        assert_eq!(
            (g.verification_uri.as_str(), g.interval, g.expires_in),
            ("https://www.google.com/device", 5, 1800)
        );

        for bad in [
            r#"{"user_code":"ABC","verification_uri":"https://x","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"A\u001b[2J","verification_uri":"https://x","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"A","verification_uri":"javascript:x","expires_in":5}"#,
        ] {
            let mut fx = script([ok(200, bad)]);
            let r = start_device(&mut fx);
            assert!(matches!(r, Err(AuthorizeError::Endpoint(_))), "{bad}");
        }
        let mut fx = script([ok(400, r#"{"error":"invalid_client"}"#)]);
        let r = start_device(&mut fx);
        assert!(matches!(r, Err(AuthorizeError::Rejected(e)) if e.code == "invalid_client"));
        let mut a = authorization();
        a.device_url = None;
        assert!(matches!(
            device_start(&mut script([]), &settings(ClientAuth::ClientSecretPost), &a),
            Err(AuthorizeError::InvalidSettings(_))
        ));
    }

    #[test]
    fn device_requests_name_the_client_in_the_body_with_basic_auth_too() {
        let s = settings(ClientAuth::ClientSecretBasic);
        let mut fx = script([ok(200, DEVICE), ok(200, TOKENS)]);
        let g = device_start(&mut fx, &s, &authorization()).unwrap();
        device_poll(&mut fx, &s, &g).unwrap();
        for req in &fx.sent {
            let f = form(req);
            let ids: Vec<_> = f.iter().filter(|(k, _)| k == "client_id").collect();
            assert_eq!(ids, [&("client_id".to_string(), "app id".to_string())]);
            assert!(!f.iter().any(|(k, _)| k == "client_secret"));
            assert!(req.headers.iter().any(|(k, _)| k == "authorization"));
        }
        // The code exchange keeps Basic alone (RFC 6749 §2.3.1).
        let p = pending();
        let mut fx = script([ok(200, TOKENS)]);
        let q = format!("code=c&state={}", p.state);
        finish(&mut fx, &s, &authorization(), &p, &q).unwrap();
        assert!(!form(&fx.sent[0]).iter().any(|(k, _)| k == "client_id"));
    }

    const PENDING: &str = r#"{"error":"authorization_pending"}"#;
    const SLOW: &str = r#"{"error":"slow_down"}"#;

    #[test]
    fn polling_waits_the_interval_and_slow_down_adds_five_seconds() {
        let mut fx = script([
            ok(400, PENDING),
            ok(400, SLOW),
            ok(400, PENDING),
            ok(400, SLOW),
            ok(200, TOKENS),
        ]);
        let body = device_poll(&mut fx, &settings(ClientAuth::ClientSecretPost), &grant()).unwrap();
        assert_eq!(body, TOKENS);
        assert_eq!(fx.slept, secs([5, 5, 10, 10, 15]));
        let f = form(&fx.sent[0]);
        assert!(f.contains(&("grant_type".into(), DEVICE_GRANT.into())));
        assert!(f.contains(&("device_code".into(), "dc".into())));
    }

    #[test]
    fn polling_ends_cleanly_on_refusal_and_expiry() {
        let s = settings(ClientAuth::ClientSecretPost);
        let mut fx = script([ok(400, PENDING), ok(400, r#"{"error":"access_denied"}"#)]);
        assert!(matches!(
            device_poll(&mut fx, &s, &grant()),
            Err(AuthorizeError::AccessDenied)
        ));
        let mut fx = script([ok(400, r#"{"error":"expired_token"}"#)]);
        assert!(matches!(
            device_poll(&mut fx, &s, &grant()),
            Err(AuthorizeError::Expired)
        ));
        // GitHub answers 200 with the error in the body.
        let mut fx = script([ok(200, r#"{"error":"expired_token"}"#)]);
        assert!(matches!(
            device_poll(&mut fx, &s, &grant()),
            Err(AuthorizeError::Expired)
        ));

        // The code's lifetime runs out without an answer: stop, no extra poll.
        let mut g = grant();
        g.expires_in = 12;
        let mut fx = script([ok(400, PENDING), ok(400, PENDING)]);
        assert!(matches!(
            device_poll(&mut fx, &s, &g),
            Err(AuthorizeError::Expired)
        ));
        assert_eq!(fx.sent.len(), 2);

        let mut fx = script([ok(400, r#"{"error":"invalid_grant"}"#)]);
        assert!(
            matches!(device_poll(&mut fx, &s, &grant()), Err(AuthorizeError::Rejected(e)) if e.code == "invalid_grant")
        );
    }

    #[test]
    fn polling_backs_off_on_failures_and_gives_up() {
        let s = settings(ClientAuth::ClientSecretPost);
        let mut fx = script([
            Err(TransportError::Timeout),
            ok(503, ""),
            ok(400, PENDING),
            ok(200, TOKENS),
        ]);
        device_poll(&mut fx, &s, &grant()).unwrap();
        assert_eq!(fx.slept, secs([5, 10, 20, 20]));
        let mut fx = script([ok(500, ""), ok(500, ""), ok(500, ""), ok(500, "")]);
        assert!(matches!(
            device_poll(&mut fx, &s, &grant()),
            Err(AuthorizeError::Endpoint(_))
        ));
    }

    #[test]
    fn every_entry_refuses_a_client_that_cannot_work_before_any_request() {
        let p = pending();
        let q = format!("code=c&state={}", p.state);
        let g = grant();
        for (token_url, client_id) in [
            ("http://idp.example/token", "app id"),
            ("https://idp.example/token#f", "app id"),
            ("ftp://idp.example/token", "app id"),
            ("https://idp.example/token", ""),
        ] {
            let s = Settings {
                token_url: token_url.into(),
                client_id: client_id.into(),
                ..settings(ClientAuth::ClientSecretBasic)
            };
            let a = authorization();
            let refused = |r: Result<(), AuthorizeError>| {
                assert!(
                    matches!(r, Err(AuthorizeError::InvalidSettings(_))),
                    "{token_url} {client_id:?}"
                );
            };
            refused(begin(&s, &a, &entropy()).map(drop));
            refused(finish(&mut NoEffects, &s, &a, &p, &q).map(drop));
            refused(device_start(&mut NoEffects, &s, &a).map(drop));
            refused(device_poll(&mut NoEffects, &s, &g).map(drop));
        }
        // https anywhere, plain http on loopback: accepted.
        for token_url in ["https://idp.example/token", "http://127.0.0.1:9/token"] {
            let s = Settings {
                token_url: token_url.into(),
                ..settings(ClientAuth::ClientSecretBasic)
            };
            let mut fx = script([ok(200, TOKENS)]);
            finish(&mut fx, &s, &authorization(), &p, &q).unwrap();
        }
    }

    #[test]
    fn two_differences_never_cancel_out_in_the_state_comparison() {
        let p = pending();
        assert_eq!(&p.state[..2], "AA");
        // 'A' ^ '@' == 'B' ^ 'C' == 1: XOR-accumulating would cancel them.
        for forged in ["@@", "BC", "@C"] {
            let q = format!(
                "code=c&state={}{}",
                forged.replace('@', "%40"),
                &p.state[2..]
            );
            let s = settings(ClientAuth::ClientSecretBasic);
            let err = finish(&mut NoEffects, &s, &authorization(), &p, &q).unwrap_err();
            assert!(matches!(err, AuthorizeError::StateMismatch), "{forged}");
        }
        assert!(!same("AA", "@@") && !same("AB", "BA") && same("AB", "AB"));
        assert!(!same("A", "AA") && !same("AA", "A"));
    }

    #[test]
    fn code_exchange_retries_back_off_and_say_what_failed() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let q = format!("code=c&state={}", p.state);
        let mut fx = script([
            Err(TransportError::Connect("refused".into())),
            ok(429, ""),
            ok(503, ""),
        ]);
        let err = finish(&mut fx, &s, &authorization(), &p, &q).unwrap_err();
        assert!(
            matches!(&err, AuthorizeError::Endpoint(m) if m.ends_with("(3 attempts)")),
            "{err:?}"
        );
        assert_eq!(fx.slept, secs_ms([200, 400]));
        let mut fx = script([Err(TransportError::Other("reset".into()))]);
        let err = finish(&mut fx, &s, &authorization(), &p, &q).unwrap_err();
        assert!(
            matches!(&err, AuthorizeError::Endpoint(m) if m.starts_with("exchange failed: reset")),
            "{err:?}"
        );
        let mut fx = script([Err(TransportError::Timeout)]);
        let err = finish(&mut fx, &s, &authorization(), &p, &q).unwrap_err();
        assert!(
            matches!(&err, AuthorizeError::Endpoint(m) if m.starts_with("endpoint timed out")),
            "{err:?}"
        );
    }

    fn secs_ms<const N: usize>(ms: [u64; N]) -> [Duration; N] {
        ms.map(Duration::from_millis)
    }

    /// `json` padded with spaces to `len` bytes.
    fn padded(json: &str, len: usize) -> String {
        format!("{json}{}", " ".repeat(len - json.len()))
    }

    #[test]
    fn an_error_body_is_read_up_to_the_token_response_bound() {
        let p = pending();
        let s = settings(ClientAuth::ClientSecretBasic);
        let q = format!("code=c&state={}", p.state);
        let error = r#"{"error":"invalid_grant"}"#;
        let max = token::MAX_TOKEN_RESPONSE;
        let mut fx = script([ok(400, &padded(error, max))]);
        let r = finish(&mut fx, &s, &authorization(), &p, &q);
        assert!(matches!(r, Err(AuthorizeError::Rejected(e)) if e.code == "invalid_grant"));
        let mut fx = script([ok(400, &padded(error, max + 1))]);
        let r = finish(&mut fx, &s, &authorization(), &p, &q);
        assert!(matches!(r, Err(AuthorizeError::Endpoint(_))), "{r:?}");
    }

    #[test]
    fn the_device_authorization_request_retries_only_what_did_nothing() {
        let s = settings(ClientAuth::ClientSecretPost);
        let a = authorization();
        let mut fx = script([
            ok(429, ""),
            Err(TransportError::Timeout),
            Err(TransportError::Other("reset".into())),
        ]);
        let err = device_start(&mut fx, &s, &a).unwrap_err();
        assert!(
            matches!(&err, AuthorizeError::Endpoint(m) if m == "exchange failed: reset (3 attempts)"),
            "{err:?}"
        );
        assert_eq!(fx.slept, secs_ms([200, 400]));
        let mut fx = script([Err(TransportError::Connect("no".into())), ok(200, DEVICE)]);
        device_start(&mut fx, &s, &a).unwrap();
        let mut fx = script([Err(TransportError::Refused("no".into()))]);
        assert!(matches!(
            device_start(&mut fx, &s, &a),
            Err(AuthorizeError::Transport(_))
        ));
        // Refusals are final: a 200 carrying an error, a 4xx without one.
        let mut fx = script([ok(200, r#"{"error":"invalid_client"}"#)]);
        let r = device_start(&mut fx, &s, &a);
        assert!(matches!(r, Err(AuthorizeError::Rejected(e)) if e.code == "invalid_client"));
        let mut fx = script([ok(404, "not here")]);
        let r = device_start(&mut fx, &s, &a);
        assert!(
            matches!(&r, Err(AuthorizeError::Endpoint(m)) if m.contains("404")),
            "{r:?}"
        );
        // An answer over the bound is not read, even when it would do.
        let max = token::MAX_TOKEN_RESPONSE;
        let mut fx = script([ok(200, &padded(DEVICE, max + 1))]);
        assert!(matches!(
            device_start(&mut fx, &s, &a),
            Err(AuthorizeError::Endpoint(_))
        ));
        let mut fx = script([ok(200, &padded(DEVICE, max))]);
        device_start(&mut fx, &s, &a).unwrap();
    }

    fn device_answer(
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<DeviceGrant, AuthorizeError> {
        let mut map: Map<String, Value> = serde_json::from_str(DEVICE).unwrap();
        edit(&mut map);
        parse_device_grant(&map)
    }

    #[test]
    fn device_grant_fields_are_bounded() {
        let g = device_answer(|_| {}).unwrap();
        assert_eq!(
            g.verification_uri_complete.as_deref(),
            Some("https://idp.example/device?user_code=WDJB-MJHT")
        );
        for bad in ["javascript:x", "https://x/\u{1b}[2J", ""] {
            let g = device_answer(|m| {
                m.insert("verification_uri_complete".into(), bad.into());
            })
            .unwrap();
            assert_eq!(g.verification_uri_complete, None, "{bad:?}");
        }
        let g = device_answer(|m| {
            m.insert("verification_uri".into(), "http://127.0.0.1/device".into());
        })
        .unwrap();
        assert_eq!(g.verification_uri, "http://127.0.0.1/device");
        // Lifetimes: none or zero refused, capped at an hour; intervals: none
        // or zero is 5 s, capped at a minute.
        for (expires_in, expected) in [
            (json!(99_999), Some(3600)),
            (json!(1), Some(1)),
            (json!(0), None),
            (json!(true), None),
            (json!("x"), None),
        ] {
            let g = device_answer(|m| {
                m.insert("expires_in".into(), expires_in.clone());
            });
            assert_eq!(g.ok().map(|g| g.expires_in), expected, "{expires_in}");
        }
        for (interval, expected) in [
            (json!(0), 5),
            (json!(1), 1),
            (json!(600), 60),
            (json!("7"), 7),
            (json!(null), 5),
        ] {
            let g = device_answer(|m| {
                m.insert("interval".into(), interval.clone());
            })
            .unwrap();
            assert_eq!(g.interval, expected, "{interval}");
        }
        // A user code a person can read: printable ASCII, 1..=2048 bytes.
        for (code, usable) in [
            ("A".repeat(2048), true),
            ("A".repeat(2049), false),
            (String::new(), false),
            ("A~ ".into(), true),
            ("A\u{7f}".into(), false),
            ("A\u{1f}".into(), false),
        ] {
            let g = device_answer(|m| {
                m.insert("user_code".into(), code.clone().into());
            });
            assert_eq!(g.is_ok(), usable, "{code:?}");
        }
        let g = device_answer(|m| {
            m.insert("device_code".into(), "".into());
        });
        assert!(g.is_err());
    }

    #[test]
    fn device_requests_carry_one_client_id_whatever_the_client_auth() {
        for s in [
            settings(ClientAuth::ClientSecretPost),
            Settings {
                client_secret: None,
                ..settings(ClientAuth::ClientSecretBasic)
            },
        ] {
            let mut fx = script([ok(200, DEVICE), ok(200, TOKENS)]);
            let g = device_start(&mut fx, &s, &authorization()).unwrap();
            device_poll(&mut fx, &s, &g).unwrap();
            for req in &fx.sent {
                let ids = form(req).iter().filter(|(k, _)| k == "client_id").count();
                assert_eq!(ids, 1);
                assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
            }
        }
    }

    #[test]
    fn polling_keeps_to_the_grant_interval_and_lifetime() {
        let s = settings(ClientAuth::ClientSecretPost);
        let poll =
            |expires_in: u32, interval: u32, answers: Vec<Result<Response, TransportError>>| {
                let mut fx = script(answers);
                let g = DeviceGrant {
                    expires_in,
                    interval,
                    ..grant()
                };
                let r = device_poll(&mut fx, &s, &g);
                (r, fx.sent.len(), fx.slept)
            };
        let (r, _, slept) = poll(600, 7, vec![ok(200, TOKENS)]);
        assert_eq!(
            (r.unwrap().as_str(), slept),
            (TOKENS, vec![Duration::from_secs(7)])
        );
        let (_, _, slept) = poll(600, 0, vec![ok(200, TOKENS)]);
        assert_eq!(slept, secs([5]));
        // A poll at exactly the lifetime's end still goes out; none after.
        let (r, n, _) = poll(10, 5, vec![ok(400, PENDING), ok(400, PENDING)]);
        assert!(matches!(r, Err(AuthorizeError::Expired)));
        assert_eq!(n, 2);
        let (r, n, _) = poll(0, 5, vec![]);
        assert!(matches!(r, Err(AuthorizeError::Expired)));
        assert_eq!(n, 0);
        // Whatever the grant says, polling stops after an hour: 720 polls.
        let (r, n, _) = poll(u32::MAX, 5, (0..720).map(|_| ok(400, PENDING)).collect());
        assert!(matches!(r, Err(AuthorizeError::Expired)));
        assert_eq!(n, 720);
        // Failures in a row end it; a pending answer starts the count again.
        let (r, n, slept) = poll(
            3600,
            5,
            vec![
                ok(500, ""),
                ok(500, ""),
                ok(500, ""),
                ok(400, PENDING),
                ok(500, ""),
                ok(500, ""),
                ok(500, ""),
                ok(500, ""),
            ],
        );
        assert!(
            matches!(&r, Err(AuthorizeError::Endpoint(m)) if m.ends_with("(4 polls in a row)")),
            "{r:?}"
        );
        assert_eq!(n, 8);
        assert_eq!(slept, secs([5, 10, 20, 40, 40, 60, 60, 60]));
    }
}
