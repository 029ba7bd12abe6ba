//! A credential's token set: the whole token response as the provider sent it
//! (access and refresh token, `expires_in`, `scope`, `id_token`,
//! `instance_url`, …) plus `expires_at`, kept as JSON text. The guest owns
//! the merge after a refresh; this type owns what the host does with a set:
//! import a first one, check what a store is given, show it redacted.

use crate::secret::Secret;
use serde_json::{Map, Value};

/// A token set. `Debug` shows field names only; the JSON is reachable through
/// [`TokenSet::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet(Secret);

/// Why a token set was refused. Never quotes any of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenSetError(String);

/// Fields of a token set that are safe to show; every other value is redacted
/// (tokens, and provider fields we cannot vouch for).
const SHOWABLE: [&str; 14] = [
    "token_type",
    "expires_in",
    "expires_at",
    // The refresh token's stated lifetime, and when the guest counts it to
    // end (`credential show` tells when it dies from disuse).
    "refresh_expires_in",
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
    "refresh_expires_at",
    "rekey_lifetime",
    "rekey_rejected",
    "scope",
    "instance_url",
    "issued_at",
    "ext_expires_in",
    "rekey_refreshed_at",
];

impl TokenSet {
    /// A first token set, as an authorization-code exchange (or any token
    /// request) returned it. It must be a JSON object holding an access or a
    /// refresh token; an access token must be an RFC 6750 `b64token` (a
    /// token with spaces or CR/LF would break every request it is sent
    /// with). `expires_at` is computed from `expires_in` and the clock only:
    /// a sender's own `expires_at` is dropped. (No `rekey_refreshed_at`: a
    /// first set was not obtained by a refresh, and its rejection deserves
    /// one.)
    pub fn import(json: &str) -> Result<TokenSet, TokenSetError> {
        let mut map = parse_object(json)?;
        let access = non_empty_str(&map, "access_token");
        if access.is_none() && non_empty_str(&map, "refresh_token").is_none() {
            return Err(TokenSetError(
                "it holds neither access_token nor refresh_token".into(),
            ));
        }
        if access.is_some_and(|t| !is_b64token(t)) {
            return Err(TokenSetError(
                "access_token has characters a bearer token cannot carry (RFC 6750 b64token)"
                    .into(),
            ));
        }
        // What the component derives and keeps itself is never taken from a
        // sender (guest/src/keys.rs `DERIVED`).
        for derived in [
            "expires_at",
            "rekey_refreshed_at",
            "rekey_rejected",
            "rekey_lifetime",
            "refresh_expires_at",
            "rekey_refused",
        ] {
            map.remove(derived);
        }
        if let Some(secs) = map.get("expires_in").and_then(seconds) {
            map.insert("expires_at".into(), now_unix().saturating_add(secs).into());
        }
        Ok(TokenSet(Secret::new(Value::Object(map).to_string())))
    }

    /// A set as a store holds it: taken as it is (the guest reports a
    /// damaged one as `invalid-keys`, without echoing it).
    pub fn stored(json: impl Into<String>) -> TokenSet {
        TokenSet(Secret::new(json))
    }

    /// What a store accepts: a JSON object.
    pub fn check(&self) -> Result<(), TokenSetError> {
        parse_object(self.0.expose()).map(|_| ())
    }

    /// The JSON text.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The refresh token, if the set has one.
    pub fn refresh_token(&self) -> Option<Secret> {
        let map = parse_object(self.0.expose()).ok()?;
        non_empty_str(&map, "refresh_token").map(Secret::new)
    }

    /// The `instance_url` the provider sent (Salesforce: the org's API host).
    pub fn instance_url(&self) -> Option<String> {
        let map = parse_object(self.0.expose()).ok()?;
        non_empty_str(&map, "instance_url").map(str::to_owned)
    }

    /// The set with every value but the harmless ones replaced by `[redacted]`.
    pub fn redacted(&self) -> Value {
        let Ok(map) = parse_object(self.0.expose()) else {
            return Value::String("[unreadable]".into());
        };
        map.into_iter()
            .map(|(k, v)| {
                let v = if SHOWABLE.contains(&k.as_str()) {
                    v
                } else {
                    "[redacted]".into()
                };
                (k, v)
            })
            .collect::<Map<_, _>>()
            .into()
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match parse_object(self.0.expose()) {
            Ok(map) => f.debug_set().entries(map.keys()).finish(),
            Err(_) => f.write_str("[unreadable token set]"),
        }
    }
}

fn parse_object(json: &str) -> Result<Map<String, Value>, TokenSetError> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenSetError("not a JSON object".into())),
        Err(e) => Err(TokenSetError(json_position(&e))),
    }
}

/// A serde_json error as a position only: typed errors can quote values.
pub(crate) fn json_position(e: &serde_json::Error) -> String {
    format!("invalid JSON at line {} column {}", e.line(), e.column())
}

fn non_empty_str<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Seconds as providers send them: a whole number or a numeric string.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
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

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(set: &TokenSet, k: &str) -> Value {
        serde_json::from_str::<Value>(set.expose()).unwrap()[k].clone()
    }

    #[test]
    fn import_computes_expiry_from_expires_in_only() {
        let set = TokenSet::import(r#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        assert!(field(&set, "expires_at").as_u64().unwrap() >= now_unix() + 59);
        // A sender's expires_at: 0 would force a refresh on every call.
        let set = TokenSet::import(r#"{"access_token":"a","expires_at":0}"#).unwrap();
        assert_eq!(field(&set, "expires_at"), Value::Null);
        // Nor anything else the component keeps for itself.
        let set = TokenSet::import(
            r#"{"access_token":"a","rekey_rejected":{"x":1},"rekey_lifetime":0,"refresh_expires_at":0,"rekey_refused":{"code":"invalid_client","at":4102444800}}"#,
        )
        .unwrap();
        for derived in [
            "rekey_rejected",
            "rekey_lifetime",
            "refresh_expires_at",
            "rekey_refused",
        ] {
            assert_eq!(field(&set, derived), Value::Null, "{derived}");
        }
        // A huge expires_in saturates instead of overflowing.
        let set =
            TokenSet::import(r#"{"access_token":"a","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(field(&set, "expires_at").as_u64(), Some(u64::MAX));
    }

    #[test]
    fn import_refuses_unusable_sets_without_quoting_them() {
        for bad in [
            r#"{"token_type":"bearer"}"#,
            r#"{"access_token":"sekrit with space"}"#,
            "{\"access_token\":\"sekrit\\r\\nX-Injected: 1\"}",
            r#"["sekrit"]"#,
            "{\"access_token\": \"sekrit",
        ] {
            let err = TokenSet::import(bad).unwrap_err().to_string();
            assert!(!err.contains("sekrit"), "{err}");
        }
        assert!(TokenSet::import(r#"{"access_token":"a.b-c_d~e+f/g=="}"#).is_ok());
        assert!(TokenSet::import(r#"{"refresh_token":"r"}"#).is_ok());
    }

    #[test]
    fn redaction_keeps_only_harmless_fields() {
        let shown = TokenSet::stored(
            r#"{"access_token":"a","refresh_token":"r","scope":"api","custom":"x"}"#,
        )
        .redacted();
        assert_eq!(
            shown,
            serde_json::json!({"access_token":"[redacted]","refresh_token":"[redacted]","scope":"api","custom":"[redacted]"})
        );
    }

    #[test]
    fn debug_shows_field_names_only() {
        let set = TokenSet::stored(r#"{"access_token":"sekrit"}"#);
        assert_eq!(format!("{set:?}"), r#"{"access_token"}"#);
        assert!(!format!("{:?}", TokenSet::stored("sekrit")).contains("sekrit"));
    }
}
