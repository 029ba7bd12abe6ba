//! The provider: a token endpoint that rotates refresh tokens and detects
//! reuse (a rotated token presented again revokes the whole grant, unless it
//! comes within the grace period and its successor is unused: then the same
//! answer is given again), and an API that answers 401 to expired, revoked or
//! unknown access tokens. Tokens are `rt<n>` / `at<n>`: generation `n` of the
//! one grant, so a generation orders token sets.

use crate::http::Response;
use std::collections::BTreeMap;

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
}

/// What a token request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Rotated: generation `n` issued.
    Issued(u64),
    /// Within the grace period: generation `n` answered again.
    Repeated(u64),
    Refused,
}

pub fn generation(token: &str, prefix: &str) -> Option<u64> {
    token.strip_prefix(prefix)?.parse().ok()
}

impl Provider {
    pub fn new(now: u64, first_access_valid_ms: u64, grace_ms: u64, access_ttl_ms: u64) -> Self {
        Provider {
            head: 0,
            revoked: None,
            rotated: BTreeMap::new(),
            access: BTreeMap::from([(0, now + first_access_valid_ms)]),
            grace_ms,
            access_ttl_ms,
        }
    }

    pub fn revoke(&mut self, why: String) {
        self.revoked.get_or_insert(why);
    }

    /// Processes a refresh request presenting `refresh` (the form's field).
    pub fn token(&mut self, refresh: Option<&str>, now: u64) -> (Exchange, Response) {
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
            Exchange::Refused => json(400, r#"{"error":"invalid_grant"}"#.into()),
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
