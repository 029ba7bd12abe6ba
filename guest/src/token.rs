//! The token endpoint exchange (RFC 6749 §6): building the refresh request and
//! reading what comes back.

use crate::assertion::{self, Claims};
use crate::basic_auth;
use crate::effects::Signing;
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{ClientAuth, Grant, JwtBearer, OauthError, SendError, Settings};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;
use serde_json::{Map, Value};

/// Token responses are small; anything larger is not one.
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Upper bound on a honoured `Retry-After`, so one call cannot stall for minutes.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The §5.2 codes that say the credential's settings are wrong (the client,
/// its grant types, the scope or the request as configured), not the grant:
/// re-authorising would not help, fixing the settings would.
const SETTINGS_WRONG: [&str; 6] = [
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    // RFC 9449 §5.2: the proof (the DPoP key or its algorithm) was refused.
    // (`use_dpop_nonce` is answered once; a second is the server's trouble.)
    "invalid_dpop_proof",
];

/// Form fields the token requests set themselves: extra parameters with
/// these names are not sent (the host refuses them in settings too).
const RESERVED: [&str; 12] = [
    "grant_type",
    "refresh_token",
    "code",
    "redirect_uri",
    "code_verifier",
    "device_code",
    "client_id",
    "client_secret",
    "scope",
    "assertion",
    "client_assertion",
    "client_assertion_type",
];

/// A POST to a token (or device) endpoint, built anew for every attempt
/// (`request`): a signed JWT in it, the client's (`private_key_jwt`) or the
/// JWT bearer grant's, carries a fresh `jti` each time, and a server refuses
/// a `jti` it has seen.
pub struct Form<'a> {
    pub url: &'a str,
    pub fields: Vec<(&'a str, &'a str)>,
    /// The JWT bearer grant's assertion goes in as `assertion`.
    pub bearer: Option<&'a JwtBearer>,
}

/// The request that gets the credential a new token set: the refresh
/// (RFC 6749 §6), the client's own grant (§4.4.2) or the JWT bearer grant
/// (RFC 7523 §2.1). `refresh_token` is the stored one (refresh grant only).
pub fn grant_request<'a>(settings: &'a Settings, refresh_token: Option<&'a str>) -> Form<'a> {
    let (mut fields, bearer) = match &settings.grant {
        Grant::RefreshToken => (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.unwrap_or_default()),
            ],
            None,
        ),
        Grant::ClientCredentials => (vec![("grant_type", "client_credentials")], None),
        Grant::JwtBearer(b) => (vec![("grant_type", assertion::JWT_BEARER_GRANT)], Some(b)),
    };
    if let Some(scope) = settings.scope.as_deref().filter(|s| !s.is_empty()) {
        fields.push(("scope", scope));
    }
    Form {
        url: &settings.token_url,
        fields,
        bearer,
    }
}

impl Form<'_> {
    /// The request: the fields, the settings' extra parameters, JSON
    /// accepted, the client authentication as configured, and the signed
    /// assertions (signed now: `now` is their `iat`). An error only when
    /// an assertion cannot be signed (nothing was sent).
    pub fn request(
        &self,
        fx: &mut impl Signing,
        settings: &Settings,
        now: u64,
    ) -> Result<Request, String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.fields {
            form.append_pair(k, v);
        }
        if let Some(bearer) = self.bearer {
            let claims = Claims {
                subject: &bearer.subject,
                extra: &bearer.claims,
            };
            form.append_pair("assertion", &assertion::build(fx, settings, now, &claims)?);
        }
        for (k, v) in &settings.extra_params {
            if !RESERVED.contains(&k.as_str()) {
                form.append_pair(k, v);
            }
        }
        let mut headers = vec![
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("accept".into(), "application/json".into()),
        ];
        match (&settings.client_auth, settings.client_secret.as_deref()) {
            // The secret, if any, is never sent: the key proves the client.
            (ClientAuth::PrivateKeyJwt, _) => {
                let claims = Claims {
                    subject: &settings.client_id,
                    extra: &[],
                };
                let jwt = assertion::build(fx, settings, now, &claims)?;
                form.append_pair("client_id", &settings.client_id);
                for (k, v) in assertion::client_fields(jwt) {
                    form.append_pair(k, &v);
                }
            }
            (ClientAuth::ClientSecretBasic, Some(secret)) => {
                let value = basic_auth::header_value(&settings.client_id, secret);
                headers.push(("authorization".into(), value));
            }
            (ClientAuth::ClientSecretPost, Some(secret)) => {
                form.append_pair("client_id", &settings.client_id);
                form.append_pair("client_secret", secret);
            }
            // A public client identifies itself and nothing more.
            (_, None) => {
                form.append_pair("client_id", &settings.client_id);
            }
        }
        Ok(Request {
            method: "POST".into(),
            url: self.url.into(),
            headers,
            body: form.finish().into_bytes(),
        })
    }
}

/// What one token endpoint answer means.
pub enum Outcome {
    /// A usable token response (has a non-empty `access_token`).
    Tokens(Map<String, Value>),
    /// Worth another attempt (5xx, 429), after `retry_after` if the server said.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        /// The server may have processed the request (and so rotated the
        /// refresh token) before failing: any 5xx but 503. 429 and 503 say
        /// it was not processed.
        maybe_processed: bool,
    },
    /// Final.
    Fail(SendError),
}

pub fn classify(resp: &Response) -> Outcome {
    let status = resp.status;
    if status == 429 || (500..600).contains(&status) {
        return Outcome::Retry {
            reason: format!("token endpoint answered {status}"),
            retry_after: retry_after(resp),
            maybe_processed: !matches!(status, 429 | 503),
        };
    }
    if resp.body.len() > MAX_TOKEN_RESPONSE {
        return Outcome::Fail(SendError::TokenEndpoint(format!(
            "token response exceeds {MAX_TOKEN_RESPONSE} bytes"
        )));
    }
    let body = serde_json::from_slice::<Value>(&resp.body).ok();
    let object = match body {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    };
    if let Some(code) = object.as_ref().and_then(oauth_error_code) {
        return Outcome::Fail(if code == "invalid_grant" {
            SendError::ReauthorizationRequired(OauthError { status, code })
        } else if SETTINGS_WRONG.contains(&code.as_str()) {
            SendError::SettingsRejected(OauthError { status, code })
        } else {
            SendError::TokenEndpoint(format!(
                "token endpoint answered {status} with error {code}"
            ))
        });
    }
    // No such endpoint: the token URL is wrong, and waiting will not help.
    if matches!(status, 404 | 405 | 410) {
        return Outcome::Fail(SendError::InvalidSettings(format!(
            "the token endpoint answered {status}: check the token URL"
        )));
    }
    // A bare 401 from a token endpoint is its refusal of the client's
    // authentication (RFC 6749 §5.2 `invalid_client`, without the body).
    if status == 401 {
        return Outcome::Fail(SendError::InvalidSettings(
            "the token endpoint answered 401: check the client id and secret".into(),
        ));
    }
    if !(200..300).contains(&status) {
        return Outcome::Fail(SendError::TokenEndpoint(format!(
            "token endpoint answered {status}"
        )));
    }
    let Some(map) = object else {
        return Outcome::Fail(SendError::TokenEndpoint(
            "token response is not a JSON object".into(),
        ));
    };
    match map.get("access_token").and_then(Value::as_str) {
        None | Some("") => Outcome::Fail(SendError::TokenEndpoint(
            "token response has no access_token".into(),
        )),
        // Stored, it would break every later request (a header with CR/LF
        // or spaces): refuse it now, while the old keys are still stored.
        Some(t) if !is_b64token(t) => Outcome::Fail(SendError::TokenEndpoint(
            "token response's access_token has characters a bearer token cannot carry".into(),
        )),
        Some(_) => Outcome::Tokens(map),
    }
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The `error` code, kept only if it looks like one (§5.2: printable ASCII,
/// short), so that no provider text of unknown content travels further.
fn oauth_error_code(map: &Map<String, Value>) -> Option<String> {
    let code = map.get("error")?.as_str()?;
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    Some(if plausible {
        code.into()
    } else {
        "unrecognised".into()
    })
}

/// `Retry-After` in delta-seconds (the HTTP-date form is ignored), bounded.
fn retry_after(resp: &Response) -> Option<Duration> {
    let (_, v) = resp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rekey::oauth2::types::Strategy;

    pub fn settings(auth: ClientAuth) -> Settings {
        Settings {
            grant: crate::rekey::oauth2::types::Grant::RefreshToken,
            api_origins: vec![],
            instance_url_origins: vec![],
            fleet: crate::testing::settings().fleet,
            token_url: "http://127.0.0.1:1/token".into(),
            client_id: "app id".into(),
            client_secret: Some("s&cret".into()),
            client_auth: auth,
            scope: Some("read write".into()),
            extra_params: vec![("format".into(), "json".into())],
            strategy: Strategy::OnAuthFailure,
            rejected_statuses: vec![],
            signing: None,
            dpop: None,
        }
    }

    /// The refresh request as the first attempt sends it.
    fn refresh_request(settings: &Settings, refresh_token: &str) -> Request {
        let mut fx = crate::testing::script([]);
        grant_request(settings, Some(refresh_token))
            .request(&mut fx, settings, 1_000)
            .unwrap()
    }

    fn form_of(req: &Request) -> Vec<(String, String)> {
        form_urlencoded::parse(&req.body).into_owned().collect()
    }

    fn signing(s: &mut Settings) {
        s.signing = Some(crate::rekey::oauth2::types::Signing {
            algorithm: crate::rekey::oauth2::types::SigningAlgorithm::Es256,
            key_id: None,
            audience: Some("https://issuer.example".into()),
        });
    }

    fn claims_of(jwt: &str) -> serde_json::Value {
        let part = jwt.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn private_key_jwt_sends_a_fresh_client_assertion_and_never_the_secret() {
        let mut s = settings(ClientAuth::PrivateKeyJwt);
        signing(&mut s);
        s.extra_params
            .push(("client_assertion".into(), "forged".into()));
        let mut fx = crate::testing::script([]);
        let form = grant_request(&s, Some("rt"));
        let first = form.request(&mut fx, &s, 1_000).unwrap();
        let second = form.request(&mut fx, &s, 1_007).unwrap();
        let fields = form_of(&first);
        let get = |k: &str| {
            let found: Vec<&String> = fields
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(found.len(), 1, "{k} once: {fields:?}");
            found[0].clone()
        };
        assert_eq!(get("grant_type"), "refresh_token");
        assert_eq!(get("client_id"), "app id");
        assert_eq!(
            get("client_assertion_type"),
            assertion::CLIENT_ASSERTION_TYPE
        );
        let claims = claims_of(&get("client_assertion"));
        assert_eq!(claims["iss"], "app id");
        assert_eq!(claims["sub"], "app id");
        assert_eq!(claims["aud"], "https://issuer.example");
        assert_eq!(claims["iat"], 1_000);
        let body = String::from_utf8(first.body.clone()).unwrap();
        assert!(
            !body.contains("s%26cret") && !body.contains("client_secret"),
            "{body}"
        );
        assert!(!first.headers.iter().any(|(k, _)| k == "authorization"));
        // Each attempt is signed again: its own jti and iat.
        let again = form_of(&second);
        let jwt2 = &again
            .iter()
            .find(|(k, _)| k == "client_assertion")
            .unwrap()
            .1;
        let claims2 = claims_of(jwt2);
        assert_ne!(claims["jti"], claims2["jti"]);
        assert_eq!(claims2["iat"], 1_007);
        assert_eq!(fx.signed.len(), 2);
    }

    #[test]
    fn the_jwt_bearer_grant_sends_its_assertion_with_the_client_authentication() {
        let mut s = settings(ClientAuth::ClientSecretBasic);
        signing(&mut s);
        s.grant = Grant::JwtBearer(JwtBearer {
            subject: "svc@example".into(),
            claims: vec![("scope".into(), "read".into())],
        });
        let mut fx = crate::testing::script([]);
        let req = grant_request(&s, None).request(&mut fx, &s, 50).unwrap();
        let fields = form_of(&req);
        assert_eq!(
            fields[0],
            ("grant_type".into(), assertion::JWT_BEARER_GRANT.into())
        );
        assert!(!fields.iter().any(|(k, _)| k == "refresh_token"));
        let jwt = &fields.iter().find(|(k, _)| k == "assertion").unwrap().1;
        let claims = claims_of(jwt);
        assert_eq!(
            (claims["iss"].as_str(), claims["sub"].as_str()),
            (Some("app id"), Some("svc@example"))
        );
        assert_eq!(claims["scope"], "read");
        assert!(
            req.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v.starts_with("Basic "))
        );
        // A signer that fails: an error before anything is sent.
        fx.sign_error = Some("no key".into());
        let e = grant_request(&s, None)
            .request(&mut fx, &s, 50)
            .unwrap_err();
        assert!(e.contains("no key"), "{e}");
    }

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    use base64::Engine as _;

    #[test]
    fn no_such_endpoint_is_a_settings_problem_not_a_passing_failure() {
        for status in [404, 405, 410] {
            assert!(matches!(
                classify(&resp(status, "<html>not found</html>")),
                Outcome::Fail(SendError::InvalidSettings(m)) if m.contains("check the token URL")
            ));
        }
        // An OAuth error body still says what it says.
        assert!(matches!(
            classify(&resp(404, r#"{"error":"invalid_client"}"#)),
            Outcome::Fail(SendError::SettingsRejected(_))
        ));
        assert!(matches!(
            classify(&resp(401, "")),
            Outcome::Fail(SendError::InvalidSettings(m)) if m.contains("client id and secret")
        ));
        assert!(matches!(
            classify(&resp(403, "forbidden")),
            Outcome::Fail(SendError::TokenEndpoint(_))
        ));
    }

    #[test]
    fn post_auth_puts_credentials_in_the_form() {
        let req = refresh_request(&settings(ClientAuth::ClientSecretPost), "r t");
        let body = String::from_utf8(req.body).unwrap();
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=r+t&scope=read+write&format=json&client_id=app+id&client_secret=s%26cret"
        );
        assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
    }

    #[test]
    fn basic_auth_urlencodes_then_base64s() {
        let req = refresh_request(&settings(ClientAuth::ClientSecretBasic), "rt");
        let auth = &req
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"app+id:s%26cret");
        assert!(
            !String::from_utf8(req.body)
                .unwrap()
                .contains("client_secret")
        );
    }

    #[test]
    fn classification() {
        assert!(matches!(
            classify(&resp(200, r#"{"access_token":"a"}"#)),
            Outcome::Tokens(_)
        ));
        assert!(matches!(classify(&resp(503, "")), Outcome::Retry { .. }));
        assert!(matches!(
            classify(&resp(400, r#"{"error":"invalid_grant"}"#)),
            Outcome::Fail(SendError::ReauthorizationRequired(OauthError {
                status: 400,
                ..
            }))
        ));
        assert!(matches!(
            classify(&resp(200, r#"{"error":"invalid_grant"}"#)),
            Outcome::Fail(SendError::ReauthorizationRequired(_))
        ));
        for code in SETTINGS_WRONG {
            let body = format!(r#"{{"error":"{code}"}}"#);
            assert!(matches!(
                classify(&resp(401, &body)),
                Outcome::Fail(SendError::SettingsRejected(OauthError { status: 401, code: c })) if c == code
            ));
        }
        assert!(matches!(
            classify(&resp(400, r#"{"error":"invalid_grantx"}"#)),
            Outcome::Fail(SendError::TokenEndpoint(_))
        ));
        assert!(matches!(
            classify(&resp(502, "")),
            Outcome::Retry {
                maybe_processed: true,
                ..
            }
        ));
        assert!(matches!(
            classify(&resp(429, "")),
            Outcome::Retry {
                maybe_processed: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&resp(400, "nope")),
            Outcome::Fail(SendError::TokenEndpoint(_))
        ));
        assert!(matches!(
            classify(&resp(200, "<html>")),
            Outcome::Fail(SendError::TokenEndpoint(_))
        ));
        assert!(matches!(
            classify(&resp(200, r#"{"token_type":"bearer"}"#)),
            Outcome::Fail(SendError::TokenEndpoint(_))
        ));
        for bad in ["a b", "a\r\nX-Injected: 1", "a,b", "=", "\u{e9}"] {
            let body = serde_json::json!({ "access_token": bad }).to_string();
            assert!(
                matches!(
                    classify(&resp(200, &body)),
                    Outcome::Fail(SendError::TokenEndpoint(_))
                ),
                "{bad:?}"
            );
        }
        for good in ["abc", "a.b-c_d~e+f/g==", "A1"] {
            let body = serde_json::json!({ "access_token": good }).to_string();
            assert!(
                matches!(classify(&resp(200, &body)), Outcome::Tokens(_)),
                "{good:?}"
            );
        }
    }

    #[test]
    fn token_responses_up_to_exactly_64_kib_are_read() {
        let mut body = br#"{"access_token":"a"}"#.to_vec();
        body.resize(64 * 1024, b' ');
        let mut r = resp(200, "");
        r.body = body;
        assert!(matches!(classify(&r), Outcome::Tokens(_)));
        r.body.push(b' ');
        assert!(matches!(
            classify(&r),
            Outcome::Fail(SendError::TokenEndpoint(m)) if m.contains("exceeds 65536 bytes")
        ));
    }

    #[test]
    fn only_plausible_error_codes_travel_on() {
        let longest = "x".repeat(64);
        for (code, kept) in [
            ("temporarily_unavailable", "temporarily_unavailable"),
            ("A-b.9_z", "A-b.9_z"),
            (longest.as_str(), longest.as_str()),
            (&*"x".repeat(65), "unrecognised"),
            ("", "unrecognised"),
            ("bad grant", "unrecognised"),
            ("bad,grant", "unrecognised"),
            ("caf\u{e9}", "unrecognised"),
            ("a\r\nb", "unrecognised"),
        ] {
            let body = serde_json::json!({ "error": code, "error_description": "sekrit" });
            match classify(&resp(400, &body.to_string())) {
                Outcome::Fail(SendError::TokenEndpoint(m)) => {
                    assert_eq!(m, format!("token endpoint answered 400 with error {kept}"));
                }
                _ => panic!("{code:?}"),
            }
        }
        // A non-string `error` is no OAuth error: the status decides.
        assert!(matches!(
            classify(&resp(200, r#"{"error":5,"access_token":"a"}"#)),
            Outcome::Tokens(_)
        ));
    }

    #[test]
    fn an_empty_scope_is_not_sent() {
        let mut s = settings(ClientAuth::ClientSecretPost);
        s.scope = Some(String::new());
        let body = String::from_utf8(refresh_request(&s, "rt").body).unwrap();
        assert!(!body.contains("scope"), "{body}");
        s.client_secret = None;
        s.client_auth = ClientAuth::ClientSecretBasic;
        let req = refresh_request(&s, "rt");
        let body = String::from_utf8(req.body).unwrap();
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=rt&format=json&client_id=app+id"
        );
        assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(
            (req.method.as_str(), req.url.as_str()),
            ("POST", "http://127.0.0.1:1/token")
        );
    }

    #[test]
    fn retry_after_is_bounded() {
        let mut r = resp(429, "");
        r.headers.push(("Retry-After".into(), "3600".into()));
        match classify(&r) {
            Outcome::Retry { retry_after, .. } => assert_eq!(retry_after, Some(MAX_RETRY_AFTER)),
            _ => panic!("429 must be retried"),
        }
    }
}
