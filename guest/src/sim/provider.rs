//! The provider: a token endpoint that rotates refresh tokens and detects
//! reuse (a rotated token presented again revokes the whole grant, unless it
//! comes within the grace period and its successor is unused: then the same
//! answer is given again), and an API that answers 401 to expired, revoked or
//! unknown access tokens. Tokens are `rt<n>` / `at<n>`: generation `n` of the
//! one grant, so a generation orders token sets.
//!
//! The token endpoint checks every request like a real server: the client's
//! authentication as registered (the secret, Basic or in the form, or a
//! `private_key_jwt` assertion), the grant type, and the JWT bearer grant's
//! assertion: signature (`jwt`), `iss`, `sub`, `aud`, `exp` and `iat` against
//! its own clock, and a `jti` it has never seen (RFC 7523 §3 item 7: a
//! replay is `invalid_client`, or `invalid_grant` for the grant's assertion).
//! The client's own grants (client credentials, JWT bearer) get a new access
//! token per request, `at<n>`, and no refresh token (unless the provider is
//! one that sends one anyway).

use super::jwt::{self, Expect};
use crate::assertion::{CLIENT_ASSERTION_TYPE, JWT_BEARER_GRANT};
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{ClientAuth, Grant, Settings};
use base64::Engine as _;
use std::collections::{BTreeMap, BTreeSet};

pub const TOKEN_URL: &str = "http://127.0.0.1:9/token";
/// The issuer identifier, the other audience an assertion may name.
pub const ISSUER: &str = "http://127.0.0.1:9";
const AUDIENCES: [&str; 2] = [ISSUER, TOKEN_URL];

pub struct Provider {
    /// The one live refresh token's generation.
    pub head: u64,
    /// Why the grant was revoked, if it was.
    pub revoked: Option<String>,
    /// Generation -> when it was rotated.
    rotated: BTreeMap<u64, u64>,
    /// Access token generation -> expiry (simulated ms).
    access: BTreeMap<u64, u64>,
    grace_ms: u64,
    access_ttl_ms: u64,
    /// The registered client: what its token requests must prove.
    client: Settings,
    /// Every `jti` accepted so far.
    jtis: BTreeSet<String>,
    /// Sends a refresh token with the client's own grants too.
    stray_refresh: bool,
}

/// What a token request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Rotated: generation `n` issued.
    Issued(u64),
    /// Within the grace period: generation `n` answered again.
    Repeated(u64),
    /// The client's own grant: access token generation `n` issued.
    Fetched(u64),
    /// The grant is refused: revoked, or a rotated refresh token presented.
    Refused,
    /// The request is: the client's authentication, the grant type or the
    /// assertion (a replayed `jti`, a bad signature, a wrong claim).
    Invalid(String),
}

pub fn generation(token: &str, prefix: &str) -> Option<u64> {
    token.strip_prefix(prefix)?.parse().ok()
}

impl Provider {
    /// A provider with `client` registered (its settings say how it
    /// authenticates and which grant it uses).
    pub fn new(
        now: u64,
        first_access_valid_ms: u64,
        grace_ms: u64,
        access_ttl_ms: u64,
        client: Settings,
        stray_refresh: bool,
    ) -> Self {
        Provider {
            head: 0,
            revoked: None,
            rotated: BTreeMap::new(),
            access: BTreeMap::from([(0, now + first_access_valid_ms)]),
            grace_ms,
            access_ttl_ms,
            client,
            jtis: BTreeSet::new(),
            stray_refresh,
        }
    }

    pub fn revoke(&mut self, why: String) {
        self.revoked.get_or_insert(why);
    }

    /// Processes a token request.
    pub fn token(&mut self, req: &Request, now: u64) -> (Exchange, Response) {
        let form = Form::of(req);
        if let Err(why) = self.authenticate(req, &form, now) {
            return (Exchange::Invalid(why), error(401, "invalid_client"));
        }
        let grant_type = match &self.client.grant {
            Grant::RefreshToken => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
            Grant::JwtBearer(_) => JWT_BEARER_GRANT,
        };
        if form.get("grant_type") != Some(grant_type) {
            let why = format!(
                "grant_type {:?}, registered {grant_type}",
                form.get("grant_type")
            );
            return (Exchange::Invalid(why), error(400, "unsupported_grant_type"));
        }
        match &self.client.grant {
            Grant::RefreshToken => self.refresh(form.get("refresh_token"), now),
            // The client's registration is revoked.
            Grant::ClientCredentials if self.revoked.is_some() => {
                (Exchange::Refused, error(401, "invalid_client"))
            }
            Grant::ClientCredentials => self.fetch(now),
            Grant::JwtBearer(bearer) => {
                let checked = match form.get("assertion") {
                    None => Err("no assertion".into()),
                    Some(a) => {
                        let bearer = bearer.clone();
                        self.assertion(a, &bearer.subject, now).and_then(|claims| {
                            bearer.claims.iter().try_for_each(|(k, v)| {
                                match claims.get(k).and_then(|c| c.as_str()) {
                                    Some(c) if c == v => Ok(()),
                                    c => Err(format!("claim {k} is {c:?}, configured {v:?}")),
                                }
                            })
                        })
                    }
                };
                match checked {
                    Err(why) => (
                        Exchange::Invalid(format!("the grant's assertion: {why}")),
                        error(400, "invalid_grant"),
                    ),
                    // The subject's consent is withdrawn.
                    Ok(()) if self.revoked.is_some() => {
                        (Exchange::Refused, error(400, "invalid_grant"))
                    }
                    Ok(()) => self.fetch(now),
                }
            }
        }
    }

    /// The client's authentication, as registered.
    fn authenticate(&mut self, req: &Request, form: &Form, now: u64) -> Result<(), String> {
        let basic = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str());
        let id = self.client.client_id.clone();
        let secret = self.client.client_secret.clone();
        let client_id = form.get("client_id");
        match (self.client.client_auth, secret) {
            (ClientAuth::PrivateKeyJwt, _) => {
                if basic.is_some() || form.get("client_secret").is_some() {
                    return Err("a client secret beside the client assertion".into());
                }
                if form.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
                    return Err(format!(
                        "client_assertion_type {:?}",
                        form.get("client_assertion_type")
                    ));
                }
                if client_id.is_some_and(|c| c != id) {
                    return Err(format!("client_id {client_id:?} is not the assertion's"));
                }
                let jwt = form.get("client_assertion").ok_or("no client_assertion")?;
                self.assertion(jwt, &id, now)
                    .map(|_| ())
                    .map_err(|why| format!("the client assertion: {why}"))
            }
            (_, None) if basic.is_none() && form.get("client_secret").is_none() => {
                match client_id {
                    Some(c) if c == id => Ok(()),
                    c => Err(format!("public client_id {c:?}")),
                }
            }
            (ClientAuth::ClientSecretBasic, Some(secret))
                if form.get("client_secret").is_none() =>
            {
                match basic.and_then(decode_basic) {
                    Some((i, s)) if i == id && s == secret => Ok(()),
                    _ => Err(format!("Basic authentication {basic:?}")),
                }
            }
            (ClientAuth::ClientSecretPost, Some(secret)) if basic.is_none() => {
                if client_id == Some(id.as_str()) && form.get("client_secret") == Some(&secret) {
                    Ok(())
                } else {
                    Err(format!(
                        "client_id {client_id:?} and its secret in the form"
                    ))
                }
            }
            (auth, _) => Err(format!("authenticated otherwise than by {auth:?}")),
        }
    }

    /// Verifies an assertion whose subject is `sub` and takes its `jti`.
    fn assertion(
        &mut self,
        jwt: &str,
        sub: &str,
        now: u64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let signing = self.client.signing.as_ref().ok_or("no key is registered")?;
        let claims = jwt::verify(
            jwt,
            &Expect {
                alg: signing.algorithm,
                kid: signing.key_id.as_deref(),
                iss: &self.client.client_id,
                sub,
                audiences: &AUDIENCES,
                now_ms: now,
            },
        )?;
        let jti = claims["jti"].as_str().unwrap_or_default().to_string();
        if !self.jtis.insert(jti.clone()) {
            return Err(format!("jti {jti} was seen before (a replay)"));
        }
        Ok(claims)
    }

    /// The client's own grant: a new access token.
    fn fetch(&mut self, now: u64) -> (Exchange, Response) {
        self.head += 1;
        let n = self.head;
        self.access.insert(n, now + self.access_ttl_ms);
        let stray = if self.stray_refresh {
            format!(r#","refresh_token":"rt{n}""#)
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"access_token":"at{n}"{stray},"token_type":"Bearer","expires_in":{}}}"#,
            self.access_ttl_ms / 1000
        );
        (Exchange::Fetched(n), json(200, body))
    }

    /// The refresh-token grant, presenting `refresh` (the form's field).
    fn refresh(&mut self, refresh: Option<&str>, now: u64) -> (Exchange, Response) {
        let exchange = match refresh.and_then(|t| generation(t, "rt")) {
            _ if self.revoked.is_some() => Exchange::Refused,
            Some(g) if g == self.head => {
                self.rotated.insert(g, now);
                self.head = g + 1;
                self.access.insert(self.head, now + self.access_ttl_ms);
                Exchange::Issued(self.head)
            }
            Some(g)
                if g + 1 == self.head
                    && self.grace_ms > 0
                    && now <= self.rotated[&g] + self.grace_ms =>
            {
                Exchange::Repeated(self.head)
            }
            Some(g) if g < self.head => {
                self.revoke(format!("rt{g} was presented again after its rotation"));
                Exchange::Refused
            }
            _ => Exchange::Refused,
        };
        let resp = match exchange {
            // A repeated answer carries the same access token, so its
            // remaining lifetime (whole seconds, rounded down).
            Exchange::Issued(n) | Exchange::Repeated(n) => json(
                200,
                format!(
                    r#"{{"access_token":"at{n}","refresh_token":"rt{n}","token_type":"Bearer","expires_in":{}}}"#,
                    self.access[&n].saturating_sub(now) / 1000
                ),
            ),
            Exchange::Refused | Exchange::Fetched(_) | Exchange::Invalid(_) => {
                error(400, "invalid_grant")
            }
        };
        (exchange, resp)
    }

    /// The protected API: 200 for a live access token, else 401.
    pub fn api(&self, authorization: Option<&str>, now: u64) -> Response {
        let live = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| generation(t, "at"))
            .and_then(|g| self.access.get(&g))
            .is_some_and(|&until| now < until && self.revoked.is_none());
        if live {
            json(200, "{}".into())
        } else {
            Response {
                status: 401,
                headers: vec![(
                    "www-authenticate".into(),
                    r#"Bearer error="invalid_token""#.into(),
                )],
                body: vec![],
            }
        }
    }
}

fn json(status: u16, body: String) -> Response {
    Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    }
}

fn error(status: u16, code: &str) -> Response {
    json(status, format!(r#"{{"error":"{code}"}}"#))
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn decode_basic(value: &str) -> Option<(String, String)> {
    let b64 = value.strip_prefix("Basic ")?;
    let pair = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let pair = String::from_utf8(pair).ok()?;
    let (id, secret) = pair.split_once(':')?;
    let decode = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// A token request's form fields.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn of(req: &Request) -> Form {
        Form(form_urlencoded::parse(&req.body).into_owned().collect())
    }

    /// The field's value (the first, if repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn fields(&self) -> &[(String, String)] {
        &self.0
    }
}
