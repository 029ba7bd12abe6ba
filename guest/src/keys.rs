//! The stored token set: a JSON object kept whole, as the provider sent it.

use alloc::format;
use alloc::string::{String, ToString};
use serde_json::{Map, Value};

/// When this token set was obtained (Unix seconds), written by the guest on
/// every merge: a rejection of a token minted moments ago is not expiry.
pub const REFRESHED_AT: &str = "rekey_refreshed_at";
/// When the API rejected this token set right after the refresh that obtained
/// it (that refresh's own retry was rejected): evidence that another refresh
/// cannot help, written by the guest, dropped by the next merge.
pub const REJECTED_AT: &str = "rekey_rejected_at";

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
    #[cfg(test)]
    pub fn refreshed_at(&self) -> Option<u64> {
        number(self.0.get(REFRESHED_AT)?)
    }

    /// When the API rejected this set right after it was obtained.
    pub fn rejected_at(&self) -> Option<u64> {
        number(self.0.get(REJECTED_AT)?)
    }

    /// This set, marked as rejected right after it was obtained, at `now`.
    pub fn with_rejection(&self, now: u64) -> Keys {
        let mut marked = self.0.clone();
        marked.insert(REJECTED_AT.into(), Value::from(now));
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
        merged.remove(REJECTED_AT);
        let expires_in = response.get("expires_in").and_then(number);
        for (k, v) in response {
            // A null or empty refresh_token is "none sent", not "forget it".
            let unsent_refresh = k == "refresh_token" && v.as_str().is_none_or(str::is_empty);
            if unsent_refresh || k == "expires_at" || k == REFRESHED_AT || k == REJECTED_AT {
                continue;
            }
            merged.insert(k, v);
        }
        if let Some(secs) = expires_in {
            merged.insert("expires_at".into(), Value::from(now.saturating_add(secs)));
        }
        merged.insert(REFRESHED_AT.into(), Value::from(now));
        Keys(merged)
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
