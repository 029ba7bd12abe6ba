//! Property-based tests across the guest's modules: the token-response
//! classification and the token set's parse and merge. (The routine and the
//! fleet protocol are checked by the simulator.)
//!
//! Each property prints the number of cases it ran (straight to stderr, past
//! the test harness's capture, so CI logs show it). `PROPTEST_CASES` overrides
//! the counts.

use crate::http::Response;
use crate::keys::{DERIVED, Keys, LIFETIME, REFRESH_EXPIRES_AT, REFRESHED_AT, REJECTED};
use crate::rekey::oauth2::types::SendError;
use crate::token::{self, MAX_RETRY_AFTER, Outcome};
use core::time::Duration;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};
use std::io::Write as _;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

/// Runs `test` on `cases` values of `strategy` (or `PROPTEST_CASES`), prints
/// the count, and panics with the minimal failing input on failure.
pub(crate) fn check<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: core::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, test);
    // Not eprintln!: the harness captures that for passing tests.
    let _ = writeln!(std::io::stderr(), "proptest {name}: {cases} cases");
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn response(status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers,
        body: body.into(),
    }
}

// ---------------------------------------------------------------------------
// Token-response classification
// ---------------------------------------------------------------------------

const SETTINGS_CODES: [&str; 5] = [
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// RFC 6750 §2.1 b64token, as a generator.
fn b64token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{1,16}={0,2}"
}

/// A status the token endpoint is not asked again for: anything but 429 and 5xx.
fn final_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        200u16..300,
        Just(400u16),
        Just(401u16),
        any::<u16>().prop_filter("not retried", |s| *s != 429 && !(500..600).contains(s)),
    ]
}

/// What the guest keeps of an `error` value: plausible codes only.
fn sanitised(code: &str) -> String {
    let plausible = (1..=64).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plausible {
        code.into()
    } else {
        "unrecognised".into()
    }
}

fn error_code() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("invalid_grant".to_string()),
        proptest::sample::select(SETTINGS_CODES.to_vec()).prop_map(String::from),
        "[A-Za-z0-9_.-]{0,70}",
        "[ -~]{0,10}",
        any::<String>(),
    ]
}

/// A JSON value of any shape, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Floats that survive serde_json's (not exactly round-tripping) parser.
        (-4_000i32..4_000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
        ".{0,8}".prop_map(Value::from),
        b64token().prop_map(Value::from),
        (0u64..100_000).prop_map(|n| Value::from(n.to_string())),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Token-response-shaped objects: the fields that matter, any values.
fn token_object() -> impl Strategy<Value = Map<String, Value>> {
    let field = prop_oneof![
        Just("access_token"),
        Just("refresh_token"),
        Just("expires_in"),
        Just("expires_at"),
        Just(REFRESHED_AT),
        Just(REJECTED),
        Just(LIFETIME),
        Just(REFRESH_EXPIRES_AT),
        Just("refresh_token_expires_in"),
        Just("token_type"),
        Just("id_token"),
        Just("scope"),
        Just("instance_url"),
    ];
    proptest::collection::vec((field, json_value()), 0..6)
        .prop_map(|fields| fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[test]
fn classification_never_panics_on_any_answer() {
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        token_object().prop_map(|m| Value::Object(m).to_string().into_bytes()),
    ];
    let headers = proptest::collection::vec(("[A-Za-z-]{1,12}", ".{0,12}"), 0..3);
    check(
        "classification_never_panics_on_any_answer",
        3_000,
        (any::<u16>(), headers, body),
        |(status, headers, body)| {
            let resp = response(status, headers, body);
            match token::classify(&resp) {
                Outcome::Tokens(map) => {
                    prop_assert!((200..300).contains(&status));
                    let t = map.get("access_token").and_then(Value::as_str);
                    prop_assert!(t.is_some_and(|t| !t.is_empty()));
                }
                Outcome::Retry { .. } => {
                    prop_assert!(status == 429 || (500..600).contains(&status));
                }
                Outcome::Fail(e) => prop_assert!(
                    matches!(
                        e,
                        SendError::TokenEndpoint(_)
                            | SendError::ReauthorizationRequired(_)
                            | SendError::SettingsRejected(_)
                    ) || matches!(
                        (e, status),
                        (SendError::InvalidSettings(_), 401 | 404 | 405 | 410)
                    )
                ),
            }
            Ok(())
        },
    );
}

#[test]
fn classification_retries_429_and_5xx_whatever_the_body() {
    let status = prop_oneof![Just(429u16), Just(503u16), 500u16..600];
    let body = prop_oneof![
        Just(br#"{"error":"invalid_grant"}"#.to_vec()),
        Just(br#"{"access_token":"a"}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..32),
    ];
    let retry_after = proptest::option::of(0u64..20);
    check(
        "classification_retries_429_and_5xx_whatever_the_body",
        1_000,
        (status, body, retry_after),
        |(status, body, after)| {
            let headers = after
                .map(|s| vec![("Retry-After".to_string(), format!(" {s} "))])
                .unwrap_or_default();
            match token::classify(&response(status, headers, body)) {
                Outcome::Retry {
                    maybe_processed,
                    retry_after,
                    reason,
                } => {
                    // 429 and 503 say "not processed"; any other 5xx may have been.
                    prop_assert_eq!(maybe_processed, !matches!(status, 429 | 503));
                    prop_assert_eq!(
                        retry_after,
                        after.map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
                    );
                    prop_assert!(reason.contains(&status.to_string()));
                }
                _ => prop_assert!(false, "{} must be retried", status),
            }
            Ok(())
        },
    );
}

#[test]
fn classification_maps_oauth_error_codes_whatever_the_status() {
    check(
        "classification_maps_oauth_error_codes_whatever_the_status",
        2_000,
        (final_status(), error_code(), token_object()),
        |(status, code, mut extra)| {
            // Whatever else the object holds (even a usable access_token),
            // an `error` makes it an error response.
            extra.insert("error".into(), Value::from(code.clone()));
            let body = Value::Object(extra).to_string();
            let kept = sanitised(&code);
            match token::classify(&response(status, vec![], body)) {
                Outcome::Fail(SendError::ReauthorizationRequired(e)) => {
                    prop_assert_eq!(code.as_str(), "invalid_grant");
                    prop_assert_eq!((e.status, e.code.as_str()), (status, "invalid_grant"));
                }
                Outcome::Fail(SendError::SettingsRejected(e)) => {
                    prop_assert!(SETTINGS_CODES.contains(&code.as_str()));
                    prop_assert_eq!((e.status, e.code), (status, code));
                }
                Outcome::Fail(SendError::TokenEndpoint(m)) => {
                    prop_assert!(code != "invalid_grant" && !SETTINGS_CODES.contains(&&*code));
                    // Only a plausible code travels on, never provider text.
                    let expected = format!("token endpoint answered {status} with error {kept}");
                    prop_assert_eq!(m, expected);
                }
                _ => prop_assert!(false, "an error response must fail"),
            }
            Ok(())
        },
    );
}

#[test]
fn classification_accepts_exactly_the_usable_token_responses() {
    let access = prop_oneof![
        b64token().prop_map(Value::from),
        json_value(),
        "[a-z]{0,3}[ ,;\"\r\n\u{e9}=\\\\][a-z=]{0,3}".prop_map(Value::from),
    ];
    check(
        "classification_accepts_exactly_the_usable_token_responses",
        1_500,
        (final_status(), access, token_object()),
        |(status, access, mut object)| {
            object.remove("error");
            object.insert("access_token".into(), access.clone());
            let body = Value::Object(object.clone()).to_string();
            let usable = access.as_str().is_some_and(|t| {
                let body = t.trim_end_matches('=');
                !body.is_empty()
                    && body
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c))
            });
            match token::classify(&response(status, vec![], body)) {
                Outcome::Tokens(map) => {
                    prop_assert!((200..300).contains(&status) && usable);
                    prop_assert_eq!(map, object);
                }
                Outcome::Fail(SendError::TokenEndpoint(_)) => {
                    prop_assert!(!(200..300).contains(&status) || !usable);
                }
                Outcome::Fail(SendError::InvalidSettings(_)) => {
                    prop_assert!(matches!(status, 401 | 404 | 405 | 410));
                }
                _ => prop_assert!(false, "neither tokens nor a token-endpoint error"),
            }
            Ok(())
        },
    );
}

#[test]
fn classification_caps_the_response_size() {
    // Valid JSON padded with whitespace to any size around the cap.
    let over = -2i64..=2;
    check(
        "classification_caps_the_response_size",
        40,
        (over, prop_oneof![Just(200u16), Just(400u16)]),
        |(over, status)| {
            let core = if status == 200 {
                r#"{"access_token":"a"}"#
            } else {
                r#"{"error":"invalid_grant"}"#
            };
            // The spec's 64 KiB, written out: a changed constant must fail here.
            let len = (65_536 + over) as usize;
            let mut body = core.as_bytes().to_vec();
            body.resize(len, b' ');
            let outcome = token::classify(&response(status, vec![], body));
            let refused = matches!(&outcome, Outcome::Fail(SendError::TokenEndpoint(m)) if m.contains("exceeds"));
            prop_assert_eq!(refused, over > 0);
            if over <= 0 {
                let parsed = match outcome {
                    Outcome::Tokens(_) => status == 200,
                    Outcome::Fail(SendError::ReauthorizationRequired(_)) => status == 400,
                    _ => false,
                };
                prop_assert!(parsed, "a body of exactly the cap or less is read");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Keys: parse and merge
// ---------------------------------------------------------------------------

#[test]
fn keys_parse_any_text_without_echoing_it() {
    let text = prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        token_object().prop_map(|m| Value::Object(m).to_string()),
    ];
    check(
        "keys_parse_any_text_without_echoing_it",
        2_000,
        text,
        |text| {
            let parsed = serde_json::from_str::<Value>(&text).ok();
            match Keys::parse(&text) {
                Ok(keys) => {
                    let Some(Value::Object(map)) = parsed else {
                        return Err(TestCaseError::fail("accepted a non-object"));
                    };
                    prop_assert_eq!(keys.is_empty(), map.is_empty());
                    // The stored form reads back as the same set.
                    prop_assert!(Keys::parse(&keys.to_json()).ok() == Some(keys.clone()));
                }
                Err(e) => {
                    prop_assert!(!matches!(parsed, Some(Value::Object(_))));
                    prop_assert!(e.starts_with("stored keys are not"), "{}", e);
                    prop_assert!(e.is_ascii());
                }
            }
            Ok(())
        },
    );
}

/// Seconds as the guest reads them: a u64, or a string holding one.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[test]
fn merge_keeps_what_the_response_lacks_and_takes_what_it_sends() {
    let now = prop_oneof![
        0u64..2_000_000_000,
        (u64::MAX - 100_000)..=u64::MAX,
        Just(u64::MAX),
    ];
    check(
        "merge_keeps_what_the_response_lacks_and_takes_what_it_sends",
        1_500,
        (token_object(), token_object(), now),
        |(stored, sent, now)| {
            let keys = Keys::parse(&Value::Object(stored.clone()).to_string()).unwrap();
            let merged = keys.merged(sent.clone(), now);
            let Ok(Value::Object(out)) = serde_json::from_str::<Value>(&merged.to_json()) else {
                return Err(TestCaseError::fail("merged set is not an object"));
            };
            let derived = |k: &str| DERIVED.contains(&k);
            for k in out.keys() {
                prop_assert!(
                    stored.contains_key(k) || sent.contains_key(k) || derived(k),
                    "{} came from nowhere",
                    k
                );
            }
            for (k, v) in &stored {
                // The token type is the new access token's, sent or not.
                if k == "token_type" && !sent.contains_key(k) {
                    prop_assert!(out.get(k).is_none(), "an old token_type kept");
                } else if !sent.contains_key(k) && !derived(k) {
                    prop_assert_eq!(out.get(k), Some(v), "stored {} lost", k);
                }
            }
            for (k, v) in &sent {
                let unsent_refresh =
                    k == "refresh_token" && v.as_str().is_none_or(|s| s.is_empty());
                if !derived(k) && !unsent_refresh {
                    prop_assert_eq!(out.get(k), Some(v), "sent {} not taken", k);
                }
            }
            // A refresh token survives a response that sends none.
            let sent_rt = sent
                .get("refresh_token")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let expected_rt = match sent_rt {
                Some(rt) => Some(&Value::from(rt)).cloned(),
                None => stored.get("refresh_token").cloned(),
            };
            prop_assert_eq!(out.get("refresh_token").cloned(), expected_rt);
            // expires_at from expires_in and the clock, else from the
            // lifetime stated last (no JWT access tokens here), saturating.
            let expected_at = sent
                .get("expires_in")
                .and_then(seconds)
                .or_else(|| stored.get(LIFETIME).and_then(seconds).filter(|s| *s > 0))
                .map(|s| now.saturating_add(s));
            prop_assert_eq!(merged.expires_at(), expected_at);
            prop_assert_eq!(out.contains_key("expires_at"), expected_at.is_some());
            prop_assert_eq!(merged.refreshed_at(), Some(now));
            Ok(())
        },
    );
}
