//! What the caller gets back: the upstream's response as it came, or for a
//! rekey error a status saying who must act and a small JSON body. Details
//! go to the server's log; neither carries a token, secret or token response.

use crate::rekey::edge::operator::{self, FleetState as State};
use crate::rekey::edge::relay;
use crate::rekey::oauth2::types::{Body, Response, SendError, TransportError};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use rekey_edge_rt::body;
use rekey_edge_rt::wasi::http::types::{Fields, OutgoingResponse, ResponseOutparam};

pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Content,
}

enum Content {
    /// The proxy's own answer.
    Own(Vec<u8>),
    /// The upstream's body, held by the effects adapter: it writes it out.
    Held(Body),
}

impl Answer {
    pub fn upstream(r: Response) -> Answer {
        Answer {
            status: r.status,
            headers: r.headers,
            body: Content::Held(r.body),
        }
    }

    fn error(
        status: u16,
        code: &str,
        message: &str,
        oauth_error: Option<&str>,
        detail: &str,
    ) -> Answer {
        let mut json = Json::new();
        if let Some(oauth) = oauth_error {
            json.str("oauth_error", oauth);
        }
        Self::json_error(status, code, message, json, detail)
    }

    /// An error with more fields (`extra`, already JSON members).
    fn json_error(status: u16, code: &str, message: &str, extra: Json, detail: &str) -> Answer {
        rekey_edge_rt::log::line(&format!("rekey-edge front: {status} {code}: {detail}"));
        let mut json = Json::new();
        json.str("error", code).str("message", message);
        json.0.push_str(&extra.0);
        Self::json(status, json)
    }

    /// A JSON object answer.
    pub fn json(status: u16, json: Json) -> Answer {
        Answer {
            status,
            headers: alloc::vec![("content-type".into(), "application/json".into())],
            body: Content::Own(json.finish().into_bytes()),
        }
    }

    fn with_header(mut self, name: &str, value: String) -> Answer {
        self.headers.push((name.into(), value));
        self
    }

    /// No caller secret, or not one configured. Nothing was touched.
    pub fn unauthenticated(realm: &str) -> Answer {
        Self::error(
            401,
            "caller_unauthenticated",
            "present the proxy's caller secret as Authorization: Bearer",
            None,
            "a request without a valid caller secret",
        )
        .with_header("www-authenticate", format!("Bearer realm=\"{realm}\""))
    }

    pub fn host_not_allowed() -> Answer {
        Self::error(
            421,
            "host_not_allowed",
            "this proxy does not serve that Host",
            None,
            "a request for a Host not in REKEY_ALLOWED_HOSTS",
        )
    }

    pub fn method_not_allowed(allowed: &[String]) -> Answer {
        Self::error(
            405,
            "method_not_allowed",
            "the proxy does not forward this method",
            None,
            "a method not allowed",
        )
        .with_header("allow", allowed.join(", "))
    }

    pub fn bad_path(why: &str) -> Answer {
        Self::error(400, "bad_path", why, None, why)
    }

    pub fn path_not_allowed() -> Answer {
        Self::error(
            403,
            "path_not_allowed",
            "the proxy does not forward this path",
            None,
            "a path outside REKEY_ALLOWED_PATHS",
        )
    }

    /// `refresh-in-doubt`, with the evidence the record holds: the mark (when
    /// it was set, by which holder), the lease, and what this call saw.
    pub fn in_doubt(detail: &str, state: Option<&State>) -> Answer {
        let mut json = Json::new();
        json.str("detail", detail);
        if let Some(s) = state {
            json.raw("record", &state_json(s).finish());
        }
        json.str(
            "recovery",
            "ask the provider whether the stored refresh token is still live: if it is, \
             POST /_rekey/clear-refresh-mark?at_ms=<record.refresh_mark.at_ms> with the operator \
             secret; if not, authorise the credential again",
        );
        Self::json_error(
            502,
            "refresh_in_doubt",
            "a refresh may have been spent without its answer arriving",
            json,
            detail,
        )
    }

    pub fn operator(status: u16, code: &str, message: &str) -> Answer {
        Self::error(status, code, message, None, message)
    }

    pub fn misconfigured(detail: &str) -> Answer {
        Self::error(
            500,
            "proxy_misconfigured",
            "the proxy's configuration is incomplete",
            None,
            detail,
        )
    }

    pub fn bad_request(detail: &str) -> Answer {
        Self::error(400, "bad_request", detail, None, detail)
    }

    pub fn too_large() -> Answer {
        Self::error(
            413,
            "request_too_large",
            "the request body exceeds the proxy's limit",
            None,
            "request body over the limit",
        )
    }

    pub fn from_send_error(e: SendError) -> Answer {
        use SendError as E;
        match e {
            E::NotAuthenticated(d) => Self::error(
                401,
                "not_authenticated",
                "no usable keys are stored: authorise the credential",
                None,
                &d,
            ),
            E::ReauthorizationRequired(o) => Self::error(
                401,
                "reauthorization_required",
                "the grant was refused: authorise the credential again",
                Some(&o.code),
                "the token endpoint refused the grant",
            ),
            E::SettingsRejected(o) => Self::error(
                500,
                "settings_rejected",
                "the token endpoint refused the proxy's client settings",
                Some(&o.code),
                "the token endpoint refused the client or request",
            ),
            E::InvalidSettings(d) => Self::error(
                500,
                "invalid_settings",
                "the proxy's settings cannot work",
                None,
                &d,
            ),
            E::InvalidKeys(d) => Self::error(
                500,
                "invalid_keys",
                "the stored keys are unusable",
                None,
                &d,
            ),
            E::TokenEndpoint(d) => Self::error(
                502,
                "token_endpoint",
                "the token endpoint failed; try again later",
                None,
                &d,
            ),
            E::RefreshInDoubt(d) => Self::in_doubt(&d, operator::read_state().ok().as_ref()),
            E::Transport(t) => Self::error(
                502,
                "upstream_unreachable",
                "the upstream request failed",
                None,
                &transport(&t),
            ),
            E::LeaseUnavailable(d) => Self::error(
                503,
                "lease_unavailable",
                "another request is refreshing; try again",
                None,
                &d,
            ),
            E::KeysNotPersisted(d) => Self::error(
                503,
                "keys_not_persisted",
                "refreshed keys could not be stored; nothing was sent with them",
                None,
                &d,
            ),
            E::StoreUnavailable(d) => Self::error(
                503,
                "store_unavailable",
                "the credential's record cannot be read or written; nothing was spent",
                None,
                &d,
            ),
            E::RejectedAfterRefresh(r) => Self::upstream(r),
            E::InsufficientScope(c) => Self::upstream(c.response),
        }
    }

    pub fn send(self, out: ResponseOutparam) {
        let headers = Fields::new();
        let named = body::connection_named(&self.headers);
        for (name, value) in &self.headers {
            if !body::is_connection_header(name, &named) {
                let _ = headers.append(name, value.as_bytes());
            }
        }
        let size = match &self.body {
            Content::Own(bytes) => bytes.len() as u64,
            Content::Held(held) => relay::size(held),
        };
        let _ = headers.set("content-length", &[size.to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(self.status);
        let Ok(outgoing) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        let written = match self.body {
            Content::Own(bytes) => body::write_all(outgoing, &bytes),
            Content::Held(held) => relay::deliver(held, outgoing),
        };
        if let Err(e) = written {
            rekey_edge_rt::log::line(&format!(
                "rekey-edge front: writing the response failed: {e:?}"
            ));
        }
    }
}

fn transport(t: &TransportError) -> String {
    match t {
        TransportError::Timeout => "timeout".into(),
        TransportError::Connect(m) => format!("connect: {m}"),
        TransportError::TooLarge(n) => format!("response over {n} bytes"),
        TransportError::InvalidRequest(m) => format!("invalid request: {m}"),
        TransportError::Refused(m) => format!("refused: {m}"),
        TransportError::Other(m) => format!("other: {m}"),
    }
}

/// A JSON object, built member by member.
pub struct Json(String);

impl Json {
    pub fn new() -> Json {
        Json(String::new())
    }

    fn key(&mut self, name: &str) {
        self.0.push(',');
        self.0.push_str(&quote(name));
        self.0.push(':');
    }

    pub fn str(&mut self, name: &str, value: &str) -> &mut Json {
        self.key(name);
        self.0.push_str(&quote(value));
        self
    }

    pub fn num(&mut self, name: &str, value: u64) -> &mut Json {
        self.key(name);
        self.0.push_str(&value.to_string());
        self
    }

    pub fn bool(&mut self, name: &str, value: bool) -> &mut Json {
        self.key(name);
        self.0.push_str(if value { "true" } else { "false" });
        self
    }

    /// `value` is JSON already.
    pub fn raw(&mut self, name: &str, value: &str) -> &mut Json {
        self.key(name);
        self.0.push_str(value);
        self
    }

    pub fn finish(self) -> String {
        format!("{{{}}}", self.0.strip_prefix(',').unwrap_or(""))
    }
}

/// The record's fleet state as JSON (never its keys).
pub fn state_json(s: &State) -> Json {
    let mut json = Json::new();
    json.num("version", s.version).bool("has_keys", s.has_keys);
    match &s.refresh_mark {
        Some(m) => {
            let mut mark = Json::new();
            mark.str("holder", &m.holder).num("at_ms", m.at_ms);
            json.raw("refresh_mark", &mark.finish())
        }
        None => json.raw("refresh_mark", "null"),
    };
    match &s.lease {
        Some(l) => {
            let mut lease = Json::new();
            lease.str("holder", &l.holder).num("until_ms", l.until_ms);
            json.raw("lease", &lease.finish())
        }
        None => json.raw("lease", "null"),
    };
    match &s.dead_grant {
        Some(d) => {
            let mut dead = Json::new();
            dead.str("code", &d.code).num("at", d.at);
            json.raw("dead_grant", &dead.finish())
        }
        None => json.raw("dead_grant", "null"),
    };
    // The record keeps no trace of a token answer that never arrived: an
    // answer that arrived was stored, and clearing the mark is the result.
    json
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
