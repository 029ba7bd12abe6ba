//! The stored token set: a JSON object kept whole, as the provider sent it.

use crate::rekey::oauth2::types::OauthError;
use alloc::format;
use alloc::string::{String, ToString};
use serde_json::{Map, Value};

/// When this token set was obtained (Unix seconds), written by the guest on
/// every merge: a rejection of a token minted moments ago is not expiry.
pub const REFRESHED_AT: &str = "rekey_refreshed_at";
/// The evidence that the API rejects even a freshly obtained token, per
/// request: `{request key (see [`request_key`]): Unix seconds}`, written when
/// a refresh's own resend is rejected. It belongs to the token set it was
/// found with (the next merge drops it) and is carried over only by a renewal
/// whose own resend is rejected too, so every request that always answers
/// 401 costs one refresh, whatever the others do.
pub const REJECTED: &str = "rekey_rejected";
/// How long (seconds) an entry of [`REJECTED`] stops refreshes for its
/// request, unless the token expires sooner: an API that always answers 401
/// costs one refresh per request this long.
pub const REJECTION_MEMORY: u64 = 300;
/// Requests remembered: past this many the oldest entry is forgotten
/// (costing one more refresh).
const MAX_REJECTED: usize = 16;
/// The access tokens' lifetime (seconds) the provider last stated, for
/// responses that omit `expires_in`.
pub const LIFETIME: &str = "rekey_lifetime";
/// When the refresh token dies (Unix seconds), where the provider says.
pub const REFRESH_EXPIRES_AT: &str = "refresh_expires_at";
/// The fields in which providers state the refresh token's lifetime
/// (Keycloak, Microsoft / Xero / Zoho style, Intuit).
const REFRESH_LIFETIME_FIELDS: [&str; 3] = [
    "refresh_expires_in",
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
];
/// The token endpoint's refusal of the client's settings (`settings-rejected`:
/// a wrong secret, an unknown client, a revoked client-credentials grant):
/// `{"status", "code", "at": Unix seconds, "settings": a fingerprint}`. For
/// [`REFUSAL_MEMORY`] seconds, workers with the same settings fail at once
/// instead of asking again, so a fleet with a wrong secret costs the token
/// endpoint one request a minute, not one per call; other settings (a fixed
/// secret) ask at once. A token set obtained later drops it.
pub const REFUSED: &str = "rekey_refused";
/// How long a refusal of the settings answers for the token endpoint.
pub const REFUSAL_MEMORY: u64 = 60;
/// The fields the guest derives and keeps itself: a token response's own
/// are ignored.
pub const DERIVED: [&str; 6] = [
    "expires_at",
    REFRESHED_AT,
    REJECTED,
    LIFETIME,
    REFRESH_EXPIRES_AT,
    REFUSED,
];
/// A JWT access token's `exp` is believed only this far ahead.
const MAX_INFERRED_LIFETIME: u64 = 366 * 24 * 3600;

/// A token set. Deliberately no `Debug` that shows values: it holds secrets.
#[derive(Clone, PartialEq)]
pub struct Keys(Map<String, Value>);

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Keys {
    /// Parses a stored set. Errors name the problem, never the content
    /// (serde_json's syntax errors carry only a position).
    pub fn parse(json: &str) -> Result<Keys, String> {
        // from_slice, like the token parser: one parser instantiation, not two.
        match serde_json::from_slice::<Value>(json.as_bytes()) {
            Ok(Value::Object(map)) => Ok(Keys(map)),
            Ok(_) => Err("stored keys are not a JSON object".into()),
            // Position only: it is all a person needs, and it keeps serde_json's
            // table of messages out of the component.
            Err(e) => Err(format!(
                "stored keys are not valid JSON (line {} column {})",
                e.line(),
                e.column()
            )),
        }
    }

    /// No token set yet (a client-credentials credential before its first call).
    pub fn none() -> Keys {
        Keys(Map::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn access_token(&self) -> Option<&str> {
        self.str_field("access_token")
    }

    pub fn refresh_token(&self) -> Option<&str> {
        self.str_field("refresh_token")
    }

    /// Unix seconds at which the access token expires, when known.
    pub fn expires_at(&self) -> Option<u64> {
        number(self.0.get("expires_at")?)
    }

    /// When this set was obtained by a refresh, when the guest knows.
    pub fn refreshed_at(&self) -> Option<u64> {
        number(self.0.get(REFRESHED_AT)?)
    }

    /// When the refresh token dies, where the provider said.
    pub fn refresh_expires_at(&self) -> Option<u64> {
        number(self.0.get(REFRESH_EXPIRES_AT)?)
    }

    /// When the API last rejected `request` (a [`request_key`]) right after
    /// a refresh, as stored.
    pub fn rejected_at(&self, request: &str) -> Option<u64> {
        number(self.0.get(REJECTED)?.as_object()?.get(request)?)
    }

    /// These keys, with `request` rejected at `now`, and the evidence of
    /// `replaced` (the set these replaced) that is still within its memory.
    pub fn with_rejection(&self, now: u64, request: &str, replaced: Option<&Keys>) -> Keys {
        let mut marked = self.0.clone();
        let mut seen = match marked.remove(REJECTED) {
            Some(Value::Object(seen)) => seen,
            _ => Map::new(),
        };
        if let Some(Value::Object(old)) = replaced.and_then(|r| r.0.get(REJECTED)) {
            for (k, at) in old {
                let live = number(at)
                    .is_some_and(|t| t <= now && now < t.saturating_add(REJECTION_MEMORY));
                if live && !seen.contains_key(k) {
                    seen.insert(k.clone(), at.clone());
                }
            }
        }
        seen.remove(request);
        if seen.len() > 4 * MAX_REJECTED {
            // Not what this guest writes (a damaged record): start afresh.
            seen.clear();
        }
        // The oldest others go (never the entry being added).
        while seen.len() >= MAX_REJECTED {
            let oldest = seen
                .iter()
                .min_by_key(|(_, at)| number(at).unwrap_or(0))
                .map(|(k, _)| k.clone());
            oldest.map(|k| seen.remove(&k));
        }
        seen.insert(request.into(), Value::from(now));
        marked.insert(REJECTED.into(), Value::Object(seen));
        Keys(marked)
    }

    /// True when the access token expires within `margin` seconds of `now`.
    /// Unknown expiry counts as not expiring: the API's rejection will tell.
    pub fn expires_within(&self, now: u64, margin: u64) -> bool {
        self.expires_at()
            .is_some_and(|at| at <= now.saturating_add(margin))
    }

    /// The token response laid over the stored set: every field the provider
    /// sent wins, everything else (the old refresh token when none came back,
    /// instance_url, id_token, ...) is kept. `expires_at` is recomputed from
    /// `expires_in` and the clock only (a provider-sent `expires_at` could
    /// force a refresh on every call), or dropped when the response does not
    /// say; `rekey_refreshed_at` is set to `now`.
    pub fn merged(self, response: Map<String, Value>, now: u64) -> Keys {
        let mut merged = self.0;
        merged.remove("expires_at");
        // The evidence was about the set it was found with; a renewal whose
        // own resend is rejected carries it over (`with_rejection`).
        merged.remove(REJECTED);
        // The endpoint just accepted the settings.
        merged.remove(REFUSED);
        // The type is the new access token's (`DPoP` or `Bearer`): a response
        // that names none says nothing about the old one's.
        merged.remove("token_type");
        // A stated zero means what it says (a repeated answer for a token
        // about to expire), but is no lifetime to remember.
        let expires_in = response.get("expires_in").and_then(number);
        // Zero means "no fixed lifetime" at some providers (Keycloak's
        // offline tokens): unknown, not "dead now".
        let refresh_lifetime = REFRESH_LIFETIME_FIELDS
            .iter()
            .find_map(|f| response.get(*f).and_then(number))
            .filter(|secs| *secs > 0);
        let new_refresh_token = response
            .get("refresh_token")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        for (k, v) in response {
            // A null or empty refresh_token is "none sent", not "forget it".
            let unsent_refresh = k == "refresh_token" && v.as_str().is_none_or(str::is_empty);
            if unsent_refresh || DERIVED.contains(&k.as_str()) {
                continue;
            }
            merged.insert(k, v);
        }
        // Where the provider is silent: the access token's own `exp` (a
        // JWT), else the lifetime it stated last time.
        let lifetime = expires_in
            .or_else(|| {
                let token = merged.get("access_token")?.as_str()?;
                jwt_exp(token)
                    .filter(|exp| *exp > now && exp - now <= MAX_INFERRED_LIFETIME)
                    .map(|exp| exp - now)
            })
            .or_else(|| merged.get(LIFETIME).and_then(number).filter(|s| *s > 0));
        if let Some(secs) = expires_in.filter(|secs| *secs > 0) {
            merged.insert(LIFETIME.into(), Value::from(secs));
        }
        if let Some(secs) = lifetime {
            merged.insert("expires_at".into(), Value::from(now.saturating_add(secs)));
        }
        match refresh_lifetime {
            Some(secs) => {
                let at = Value::from(now.saturating_add(secs));
                merged.insert(REFRESH_EXPIRES_AT.into(), at);
            }
            // A new refresh token of unknown lifetime: the old one's is not its.
            None if new_refresh_token => {
                merged.remove(REFRESH_EXPIRES_AT);
            }
            None => {}
        }
        merged.insert(REFRESHED_AT.into(), Value::from(now));
        Keys(merged)
    }

    /// These keys, remembering that the token endpoint refused settings
    /// with this fingerprint at `now`.
    pub fn with_refusal(&self, refusal: &OauthError, now: u64, settings: &str) -> Keys {
        let mut marked = self.0.clone();
        let mut memory = Map::new();
        memory.insert("status".into(), Value::from(refusal.status));
        memory.insert("code".into(), Value::from(refusal.code.as_str()));
        memory.insert("at".into(), Value::from(now));
        memory.insert("settings".into(), Value::from(settings));
        marked.insert(REFUSED.into(), Value::Object(memory));
        Keys(marked)
    }

    /// The token endpoint's refusal of settings with this fingerprint, if
    /// it is recent (and not dated ahead of this clock beyond a fleet's skew).
    pub fn refusal(&self, now: u64, settings: &str) -> Option<OauthError> {
        let memory = self.0.get(REFUSED)?.as_object()?;
        let at = number(memory.get("at")?)?;
        let recent = at <= now.saturating_add(crate::flow::EVIDENCE_SKEW)
            && now < at.saturating_add(REFUSAL_MEMORY);
        if !recent || memory.get("settings")?.as_str()? != settings {
            return None;
        }
        Some(OauthError {
            status: u16::try_from(number(memory.get("status")?)?).ok()?,
            code: memory.get("code")?.as_str()?.into(),
        })
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    pub(crate) fn str_field(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A short, stable name of a request for the rejection evidence: FNV-1a
/// (64 bits, hex) of its method and URL without query or fragment, so that
/// paging through one resource is one request, and no URL is stored.
pub fn request_key(method: &str, url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in method.bytes().chain([b' ']).chain(url[..end].bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The `exp` claim of a JWT (RFC 7519 §4.1.4), read without verifying it:
/// only to schedule a refresh, never to trust the token.
fn jwt_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    if parts.next().is_none() || payload.len() > 8 * 1024 {
        return None;
    }
    let claims = serde_json::from_slice::<Value>(&base64url(payload)?).ok()?;
    number(claims.get("exp")?)
}

/// Unpadded base64url (RFC 4648 §5), as JWTs carry it.
fn base64url(text: &str) -> Option<alloc::vec::Vec<u8>> {
    let mut out = alloc::vec::Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Seconds as providers send them: a whole number, or a numeric string (some
/// do). Fractions are not seconds anyone sends; they count as unknown.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn merge_keeps_old_refresh_token_and_provider_fields() {
        let stored = Keys::parse(
            r#"{"access_token":"a1","refresh_token":"r1","instance_url":"https://x","expires_at":5}"#,
        )
        .unwrap();
        let merged = stored.merged(
            obj(json!({"access_token":"a2","expires_in":"60","id_token":"i"})),
            100,
        );
        assert_eq!(merged.access_token(), Some("a2"));
        assert_eq!(merged.refresh_token(), Some("r1"));
        assert_eq!(merged.expires_at(), Some(160));
        assert_eq!(merged.0["instance_url"], "https://x");
        assert_eq!(merged.0["id_token"], "i");
    }

    #[test]
    fn merge_ignores_a_provider_expires_at_and_stamps_the_refresh() {
        let stored = Keys::parse(r#"{"access_token":"a1","refresh_token":"r1"}"#).unwrap();
        let merged = stored.merged(
            obj(json!({"access_token":"a2","expires_at":0,"rekey_refreshed_at":1})),
            100,
        );
        assert_eq!(merged.expires_at(), None);
        assert_eq!(merged.refreshed_at(), Some(100));
        let timed = Keys::parse("{}").unwrap().merged(
            obj(json!({"access_token":"a","expires_in":10,"expires_at":0})),
            100,
        );
        assert_eq!(timed.expires_at(), Some(110));
    }

    #[test]
    fn merge_takes_rotated_refresh_token_and_drops_unknown_expiry() {
        let stored =
            Keys::parse(r#"{"access_token":"a1","refresh_token":"r1","expires_at":5}"#).unwrap();
        let merged = stored.merged(obj(json!({"access_token":"a2","refresh_token":"r2"})), 100);
        assert_eq!(merged.refresh_token(), Some("r2"));
        assert_eq!(merged.expires_at(), None);
        let kept = Keys::parse(r#"{"access_token":"a1","refresh_token":"r1"}"#)
            .unwrap()
            .merged(obj(json!({"access_token":"a2","refresh_token":null})), 100);
        assert_eq!(kept.refresh_token(), Some("r1"));
    }

    fn jwt(claims: Value) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"RS256"}"#),
            b64.encode(claims.to_string())
        )
    }

    #[test]
    fn a_silent_provider_s_lifetime_is_inferred() {
        let stored = Keys::parse(r#"{"access_token":"a1","refresh_token":"r1"}"#).unwrap();
        // A JWT access token: its `exp`.
        let token = jwt(json!({"sub": "x", "exp": 1_000 + 3_599}));
        let merged = stored
            .clone()
            .merged(obj(json!({ "access_token": token })), 1_000);
        assert_eq!(merged.expires_at(), Some(4_599));
        // An `exp` in the past or absurdly far ahead is not believed.
        for exp in [999, 1_000 + MAX_INFERRED_LIFETIME + 1] {
            let token = jwt(json!({ "exp": exp }));
            let merged = stored
                .clone()
                .merged(obj(json!({ "access_token": token })), 1_000);
            assert_eq!(merged.expires_at(), None, "exp {exp}");
        }
        // An opaque token: the lifetime the provider stated last time.
        let first = stored.merged(obj(json!({"access_token":"a2","expires_in":7200})), 1_000);
        let second = first.merged(obj(json!({"access_token":"a3"})), 5_000);
        assert_eq!(second.expires_at(), Some(12_200));
        // A stated lifetime wins over the token's own `exp`.
        let token = jwt(json!({ "exp": 90_000 }));
        let third = second.merged(obj(json!({"access_token": token, "expires_in": 60})), 6_000);
        assert_eq!(third.expires_at(), Some(6_060));
    }

    #[test]
    fn the_refresh_token_s_stated_lifetime_is_kept_with_it() {
        let stored = Keys::parse(r#"{"access_token":"a1","refresh_token":"r1"}"#).unwrap();
        for field in REFRESH_LIFETIME_FIELDS {
            let merged = stored.clone().merged(
                obj(json!({"access_token":"a2","refresh_token":"r2", field: 86_400})),
                100,
            );
            assert_eq!(merged.0[REFRESH_EXPIRES_AT], 86_500, "{field}");
        }
        let dated = stored.merged(
            obj(json!({"access_token":"a2","refresh_token_expires_in":"600"})),
            100,
        );
        // Kept while the same refresh token is; dropped with a new one of
        // unknown lifetime.
        let same = dated.clone().merged(obj(json!({"access_token":"a3"})), 200);
        assert_eq!(same.0[REFRESH_EXPIRES_AT], 700);
        let rotated = dated.merged(obj(json!({"access_token":"a3","refresh_token":"r3"})), 200);
        assert!(!rotated.0.contains_key(REFRESH_EXPIRES_AT));
    }

    #[test]
    fn parse_errors_never_echo_content() {
        let err = Keys::parse(r#"{"access_token": "sekrit-value"#).unwrap_err();
        assert!(!err.contains("sekrit"), "{err}");
        assert!(
            Keys::parse(r#"["sekrit"]"#)
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn debug_shows_field_names_only() {
        let keys = Keys::parse(r#"{"access_token":"sekrit"}"#).unwrap();
        assert_eq!(format!("{keys:?}"), r#"{"access_token"}"#);
    }

    #[test]
    fn expiry_margin() {
        let keys = Keys::parse(r#"{"expires_at":100}"#).unwrap();
        assert!(!keys.expires_within(80, 10));
        assert!(keys.expires_within(90, 10));
        assert!(!Keys::parse("{}").unwrap().expires_within(u64::MAX, 0));
    }
}
