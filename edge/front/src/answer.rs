//! What the caller gets back: the upstream's response as it came, or for a
//! rekey error a status saying who must act and a small JSON body. Details
//! go to the server's log; neither carries a token, secret or token response.

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
        rekey_edge_rt::log::line(&format!("rekey-edge front: {status} {code}: {detail}"));
        let mut json = format!("{{\"error\":{},\"message\":{}", quote(code), quote(message));
        if let Some(oauth) = oauth_error {
            json.push_str(&format!(",\"oauth_error\":{}", quote(oauth)));
        }
        json.push('}');
        Answer {
            status,
            headers: alloc::vec![("content-type".into(), "application/json".into())],
            body: Content::Own(json.into_bytes()),
        }
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
            E::RefreshInDoubt(d) => Self::error(
                502,
                "refresh_in_doubt",
                "a refresh may have been spent without its answer arriving",
                None,
                &d,
            ),
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
        for (name, value) in &self.headers {
            if !body::is_hop_by_hop(name) {
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
