//! Property-based tests across the guest's modules: the token-response
//! classification, the token set's parse and merge, and the whole
//! refresh-and-retry routine against randomly scripted effects, checked step
//! by step against a model of what `rekey.wit` promises.
//!
//! Each property prints the number of cases it ran (straight to stderr, past
//! the test harness's capture, so CI logs show it). `PROPTEST_CASES` overrides
//! the counts.

use crate::flow::{self, BACKOFF, Effects, FRESH_WINDOW, RENEWALS, TOKEN_ATTEMPTS};
use crate::keys::{Keys, REFRESHED_AT};
use crate::rekey::oauth2::types::{
    ClientAuth, Lease, OauthError, Request, Response, ScopeChallenge, SendError, Settings,
    Strategy as Refresh, TransportError,
};
use crate::token::{self, MAX_RETRY_AFTER, MAX_TOKEN_RESPONSE, Outcome};
use alloc::collections::VecDeque;
use core::time::Duration;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
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

/// `SendError` has no `PartialEq`; its `Debug` form is exact enough.
fn same<T: core::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn kind(e: &SendError) -> &'static str {
    match e {
        SendError::NotAuthenticated(_) => "NotAuthenticated",
        SendError::ReauthorizationRequired(_) => "ReauthorizationRequired",
        SendError::SettingsRejected(_) => "SettingsRejected",
        SendError::TokenEndpoint(_) => "TokenEndpoint",
        SendError::RefreshInDoubt(_) => "RefreshInDoubt",
        SendError::RejectedAfterRefresh(_) => "RejectedAfterRefresh",
        SendError::InsufficientScope(_) => "InsufficientScope",
        SendError::Transport(_) => "Transport",
        SendError::KeysNotPersisted(_) => "KeysNotPersisted",
        SendError::LeaseUnavailable(_) => "LeaseUnavailable",
        SendError::InvalidSettings(_) => "InvalidSettings",
        SendError::InvalidKeys(_) => "InvalidKeys",
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
                Outcome::Fail(e) => prop_assert!(matches!(
                    e,
                    SendError::TokenEndpoint(_)
                        | SendError::ReauthorizationRequired(_)
                        | SendError::SettingsRejected(_)
                )),
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
            for (k, v) in &out {
                prop_assert!(
                    stored.contains_key(k)
                        || sent.contains_key(k)
                        || k == "expires_at"
                        || k == REFRESHED_AT,
                    "{} came from nowhere",
                    k
                );
                let _ = v;
            }
            for (k, v) in &stored {
                if !sent.contains_key(k) && k != "expires_at" && k != REFRESHED_AT {
                    prop_assert_eq!(out.get(k), Some(v), "stored {} lost", k);
                }
            }
            for (k, v) in &sent {
                let unsent_refresh =
                    k == "refresh_token" && v.as_str().is_none_or(|s| s.is_empty());
                if k != "expires_at" && k != REFRESHED_AT && !unsent_refresh {
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
            // expires_at from expires_in and the clock only, saturating.
            let expected_at = sent
                .get("expires_in")
                .and_then(seconds)
                .map(|s| now.saturating_add(s));
            prop_assert_eq!(merged.expires_at(), expected_at);
            prop_assert_eq!(out.contains_key("expires_at"), expected_at.is_some());
            prop_assert_eq!(merged.refreshed_at(), Some(now));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// The routine against randomly scripted effects
// ---------------------------------------------------------------------------

const NOW: u64 = 1_000_000;
const TOKEN_URL: &str = "https://idp.example/token";
const API_URL: &str = "https://api.example/orders";
const SCOPE_CHALLENGE: &str = r#"Bearer realm="api", error="insufficient_scope", scope="s""#;

/// One answer of the API.
#[derive(Clone, Debug)]
enum ApiAns {
    Status { status: u16, scope: bool },
    Transport(TransportError),
}

impl ApiAns {
    fn answer(&self) -> Result<Response, TransportError> {
        match self {
            ApiAns::Status { status, scope } => {
                let challenge = if *scope {
                    SCOPE_CHALLENGE
                } else {
                    r#"Bearer error="invalid_token""#
                };
                let headers = vec![("WWW-Authenticate".into(), challenge.into())];
                Ok(response(*status, headers, format!("api {status}")))
            }
            ApiAns::Transport(e) => Err(e.clone()),
        }
    }
}

/// A refresh token field in a token response.
#[derive(Clone, Debug)]
enum Rt {
    Rotated(String),
    Absent,
    Null,
    Empty,
}

/// One answer of the token endpoint, by what it means.
#[derive(Clone, Debug)]
enum TokAns {
    Tokens {
        access: String,
        refresh: Rt,
        expires_in: Option<u64>,
    },
    Connect,
    Timeout,
    Reset,
    TooLarge,
    InvalidRequest,
    Refused,
    /// 429 or 503: not processed.
    Busy {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Another 5xx: maybe processed.
    Failed {
        status: u16,
        retry_after: Option<u64>,
    },
    Grant {
        status: u16,
    },
    Settings {
        code: &'static str,
        status: u16,
    },
    /// Anything else final: another error code, a non-2xx, an unusable body.
    Garbage {
        status: u16,
        body: Vec<u8>,
    },
}

/// What a token answer means, as `rekey.wit` describes it.
enum Class {
    Success(Map<String, Value>),
    Retry {
        maybe_processed: bool,
        retry_after: Option<u64>,
    },
    Final(Expected),
}

impl TokAns {
    fn answer(&self) -> Result<Response, TransportError> {
        let json = |status: u16, v: Value| Ok(response(status, vec![], v.to_string()));
        let retry_headers = |after: &Option<u64>| {
            after
                .map(|s| vec![("retry-after".to_string(), s.to_string())])
                .unwrap_or_default()
        };
        match self {
            TokAns::Tokens { .. } => json(200, Value::Object(self.tokens())),
            TokAns::Connect => Err(TransportError::Connect("refused".into())),
            TokAns::Timeout => Err(TransportError::Timeout),
            TokAns::Reset => Err(TransportError::Other("connection reset".into())),
            TokAns::TooLarge => Err(TransportError::TooLarge(1 << 20)),
            TokAns::InvalidRequest => Err(TransportError::InvalidRequest("bad header".into())),
            TokAns::Refused => Err(TransportError::Refused("lease lost".into())),
            TokAns::Busy {
                status,
                retry_after,
            }
            | TokAns::Failed {
                status,
                retry_after,
            } => Ok(response(*status, retry_headers(retry_after), "<html>")),
            TokAns::Grant { status } => json(
                *status,
                json!({"error": "invalid_grant", "error_description": "sekrit"}),
            ),
            TokAns::Settings { code, status } => json(*status, json!({ "error": code })),
            TokAns::Garbage { status, body } => Ok(response(*status, vec![], body.clone())),
        }
    }

    fn tokens(&self) -> Map<String, Value> {
        let TokAns::Tokens {
            access,
            refresh,
            expires_in,
        } = self
        else {
            unreachable!()
        };
        let mut m = Map::new();
        m.insert("access_token".into(), Value::from(access.as_str()));
        m.insert("token_type".into(), Value::from("Bearer"));
        match refresh {
            Rt::Rotated(r) => {
                m.insert("refresh_token".into(), Value::from(r.as_str()));
            }
            Rt::Null => {
                m.insert("refresh_token".into(), Value::Null);
            }
            Rt::Empty => {
                m.insert("refresh_token".into(), Value::from(""));
            }
            Rt::Absent => {}
        }
        if let Some(e) = expires_in {
            m.insert("expires_in".into(), Value::from(*e));
        }
        m
    }

    fn class(&self) -> Class {
        let retry = |maybe_processed, retry_after: &Option<u64>| Class::Retry {
            maybe_processed,
            retry_after: *retry_after,
        };
        match self {
            TokAns::Tokens { .. } => Class::Success(self.tokens()),
            TokAns::Connect => retry(false, &None),
            TokAns::Busy { retry_after, .. } => retry(false, retry_after),
            TokAns::Timeout | TokAns::Reset => retry(true, &None),
            TokAns::Failed { retry_after, .. } => retry(true, retry_after),
            TokAns::TooLarge | TokAns::Garbage { .. } => {
                Class::Final(Expected::Kind("TokenEndpoint"))
            }
            TokAns::InvalidRequest => Class::Final(Expected::Kind("InvalidSettings")),
            TokAns::Refused => Class::Final(Expected::Kind("LeaseUnavailable")),
            TokAns::Grant { status } => Class::Final(Expected::Exact(Err(
                SendError::ReauthorizationRequired(OauthError {
                    status: *status,
                    code: "invalid_grant".into(),
                }),
            ))),
            TokAns::Settings { code, status } => Class::Final(Expected::Exact(Err(
                SendError::SettingsRejected(OauthError {
                    status: *status,
                    code: (*code).into(),
                }),
            ))),
        }
    }
}

fn tok_ans() -> impl Strategy<Value = TokAns> {
    let rt = prop_oneof![
        "r[a-z0-9]{1,6}".prop_map(Rt::Rotated),
        Just(Rt::Absent),
        Just(Rt::Null),
        Just(Rt::Empty),
    ];
    let after = proptest::option::of(0u64..10);
    let garbage = prop_oneof![
        Just((200u16, b"<html>".to_vec())),
        Just((200, b"".to_vec())),
        Just((200, b"[]".to_vec())),
        Just((200, br#"{"token_type":"bearer"}"#.to_vec())),
        Just((200, br#"{"access_token":""}"#.to_vec())),
        Just((200, br#"{"access_token":"a b"}"#.to_vec())),
        Just((200, br#"{"access_token":7}"#.to_vec())),
        Just((200, br#"{"error":"bad grant\r\n"}"#.to_vec())),
        Just((400, br#"{"error":"temporarily_unavailable"}"#.to_vec())),
        Just((400, br#"{"error":5}"#.to_vec())),
        Just((302, br#"{"access_token":"a"}"#.to_vec())),
        Just((404, b"not found".to_vec())),
        Just((200, {
            let mut b = br#"{"access_token":"a"}"#.to_vec();
            b.resize(MAX_TOKEN_RESPONSE + 1, b' ');
            b
        })),
    ];
    prop_oneof![
        6 => (b64token(), rt, proptest::option::of(0u64..7200)).prop_map(
            |(access, refresh, expires_in)| TokAns::Tokens {
                access,
                refresh,
                expires_in
            }
        ),
        2 => Just(TokAns::Connect),
        2 => Just(TokAns::Timeout),
        1 => Just(TokAns::Reset),
        1 => Just(TokAns::TooLarge),
        1 => Just(TokAns::InvalidRequest),
        1 => Just(TokAns::Refused),
        3 => (prop_oneof![Just(429u16), Just(503u16)], after.clone())
            .prop_map(|(status, retry_after)| TokAns::Busy { status, retry_after }),
        2 => (prop_oneof![Just(500u16), Just(502u16), Just(504u16), 505u16..600], after)
            .prop_filter("not 503", |(s, _)| *s != 503)
            .prop_map(|(status, retry_after)| TokAns::Failed { status, retry_after }),
        2 => prop_oneof![Just(400u16), Just(401u16), Just(200u16)]
            .prop_map(|status| TokAns::Grant { status }),
        1 => (
            proptest::sample::select(SETTINGS_CODES.to_vec()),
            prop_oneof![Just(400u16), Just(401u16)]
        )
            .prop_map(|(code, status)| TokAns::Settings { code, status }),
        2 => garbage.prop_map(|(status, body)| TokAns::Garbage { status, body }),
    ]
}

fn api_ans() -> impl Strategy<Value = ApiAns> {
    prop_oneof![
        8 => (
            prop_oneof![Just(200u16), Just(204), Just(401), Just(401), Just(403), Just(500)],
            proptest::bool::weighted(0.15)
        )
            .prop_map(|(status, scope)| ApiAns::Status { status, scope }),
        1 => prop_oneof![
            Just(TransportError::Timeout),
            Just(TransportError::Connect("refused".into())),
            Just(TransportError::Other("reset".into())),
            Just(TransportError::TooLarge(1 << 24)),
            Just(TransportError::Refused("not allowed".into())),
        ]
        .prop_map(ApiAns::Transport),
    ]
}

/// What the host's lease shows.
#[derive(Clone, Debug)]
enum LeaseAns {
    /// The store as it is (nobody else refreshed).
    Store,
    /// The host keeps no store to re-read.
    NoStore,
    /// Another worker stored a newer set meanwhile.
    Newer { refresh: bool, fresh: bool },
    /// The store holds no refresh token.
    NoRefresh,
    /// The store holds something that is not a token set.
    Invalid,
    /// The lease cannot be taken.
    Fail,
}

fn lease_ans() -> impl Strategy<Value = (LeaseAns, bool)> {
    let ans = prop_oneof![
        8 => Just(LeaseAns::Store),
        2 => Just(LeaseAns::NoStore),
        3 => (any::<bool>(), any::<bool>())
            .prop_map(|(refresh, fresh)| LeaseAns::Newer { refresh, fresh }),
        1 => Just(LeaseAns::NoRefresh),
        1 => Just(LeaseAns::Invalid),
        1 => Just(LeaseAns::Fail),
    ];
    (ans, proptest::bool::weighted(0.15))
}

/// The stored token set a call starts with.
fn stored_keys() -> impl Strategy<Value = Option<String>> {
    let near = || proptest::option::of((NOW - 100)..(NOW + 100));
    let set = (
        prop_oneof![Just(None), Just(Some("")), Just(Some("a0"))],
        proptest::bool::weighted(0.85),
        near(),
        near(),
        proptest::option::of(0u64..100),
    )
        .prop_map(|(access, refresh, expires_at, refreshed_at, expires_in)| {
            let mut m = Map::new();
            if let Some(a) = access {
                m.insert("access_token".into(), Value::from(a));
            }
            if refresh {
                m.insert("refresh_token".into(), Value::from("r0"));
            }
            if let Some(v) = expires_at {
                m.insert("expires_at".into(), Value::from(v));
            }
            if let Some(v) = refreshed_at {
                m.insert(REFRESHED_AT.into(), Value::from(v));
            }
            if let Some(v) = expires_in {
                m.insert("expires_in".into(), Value::from(v));
            }
            m.insert("instance_url".into(), Value::from("https://x"));
            Some(Value::Object(m).to_string())
        });
    prop_oneof![
        20 => set,
        1 => Just(None),
        1 => Just(Some("{}".to_string())),
        1 => Just(Some("[1]".to_string())),
    ]
}

fn strategy() -> impl Strategy<Value = Refresh> {
    prop_oneof![
        Just(Refresh::OnAuthFailure),
        Just(Refresh::EveryRequest),
        (0u32..200).prop_map(Refresh::BeforeExpiry),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    strategy: Refresh,
    also_403: bool,
    stored: Option<String>,
    api: Vec<ApiAns>,
    token: Vec<TokAns>,
    leases: Vec<(LeaseAns, bool)>,
    emits: Vec<bool>,
    /// After its script, the API rejects every token (else it answers 200).
    api_rejects: bool,
    /// After their script, leases show a set another worker just stored.
    peers_refresh: bool,
}

prop_compose! {
    fn case()(
        strategy in strategy(),
        also_403 in any::<bool>(),
        stored in stored_keys(),
        api in proptest::collection::vec(api_ans(), 0..6),
        token in proptest::collection::vec(tok_ans(), 0..6),
        leases in proptest::collection::vec(lease_ans(), 0..5),
        emits in proptest::collection::vec(proptest::bool::weighted(0.9), 0..4),
        api_rejects in proptest::bool::weighted(0.3),
        peers_refresh in proptest::bool::weighted(0.3),
    ) -> Case {
        Case { strategy, also_403, stored, api, token, leases, emits, api_rejects, peers_refresh }
    }
}

impl Case {
    fn settings(&self) -> Settings {
        Settings {
            token_url: TOKEN_URL.into(),
            client_id: "id".into(),
            client_secret: Some("secret".into()),
            client_auth: ClientAuth::ClientSecretBasic,
            scope: None,
            extra_params: vec![],
            strategy: self.strategy,
            rejected_statuses: if self.also_403 {
                vec![401, 403]
            } else {
                vec![]
            },
        }
    }

    fn rejected(&self, status: u16) -> bool {
        status == 401 || (self.also_403 && status == 403)
    }
}

/// What the fake host saw, in order.
#[derive(Debug)]
enum Ev {
    Api {
        bearer: Option<String>,
        answer: Result<Response, TransportError>,
    },
    Acquire(Result<Lease, String>),
    Release,
    Token {
        refresh_token: Option<String>,
        lease_held: bool,
        ans: TokAns,
    },
    Emit {
        keys: String,
        ok: bool,
    },
    Sleep(Duration),
}

/// A host that answers from the case's scripts (then with defaults: the API
/// answers 200 or rejects everything, the token endpoint is unreachable, the
/// lease shows the store or a peer's newer set, emits succeed), keeps a store
/// and the lease, and records everything.
struct Fake {
    api: VecDeque<ApiAns>,
    token: VecDeque<TokAns>,
    leases: VecDeque<(LeaseAns, bool)>,
    emits: VecDeque<bool>,
    store: Option<String>,
    lease_held: bool,
    workers: u32,
    api_rejects: bool,
    peers_refresh: bool,
    events: Vec<Ev>,
}

impl Fake {
    fn new(case: &Case) -> Fake {
        Fake {
            api: case.api.iter().cloned().collect(),
            token: case.token.iter().cloned().collect(),
            leases: case.leases.iter().cloned().collect(),
            emits: case.emits.iter().cloned().collect(),
            store: case.stored.clone(),
            lease_held: false,
            workers: 0,
            api_rejects: case.api_rejects,
            peers_refresh: case.peers_refresh,
            events: vec![],
        }
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Vec<&'a str> {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Effects for Fake {
    fn http_send(&mut self, req: &Request) -> Result<Response, TransportError> {
        assert!(self.events.len() < 100, "the call loops");
        if req.url == TOKEN_URL {
            let refresh_token = form_urlencoded::parse(&req.body)
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.into_owned());
            let ans = self.token.pop_front().unwrap_or(TokAns::Connect);
            let answer = ans.answer();
            self.events.push(Ev::Token {
                refresh_token,
                lease_held: self.lease_held,
                ans,
            });
            answer
        } else {
            assert_eq!(req.url, API_URL);
            let auth = header(req, "authorization");
            assert!(auth.len() <= 1, "one authorization header at most");
            let answer = self
                .api
                .pop_front()
                .unwrap_or(ApiAns::Status {
                    status: if self.api_rejects { 401 } else { 200 },
                    scope: false,
                })
                .answer();
            self.events.push(Ev::Api {
                bearer: auth.first().map(|s| s.to_string()),
                answer: answer.clone(),
            });
            answer
        }
    }

    fn emit_update_keys(&mut self, keys: &str) -> Result<(), String> {
        let ok = self.emits.pop_front().unwrap_or(true);
        self.events.push(Ev::Emit {
            keys: keys.into(),
            ok,
        });
        if !ok {
            return Err("disk full".into());
        }
        self.store = Some(keys.into());
        self.lease_held = false;
        Ok(())
    }

    fn acquire_lease(&mut self) -> Result<Lease, String> {
        let peer = LeaseAns::Newer {
            refresh: true,
            fresh: true,
        };
        let (ans, in_doubt) = match self.leases.pop_front() {
            Some(scripted) => scripted,
            None if self.peers_refresh => (peer, false),
            None => (LeaseAns::Store, false),
        };
        let keys = match ans {
            LeaseAns::Fail => {
                self.events.push(Ev::Acquire(Err("lease busy".into())));
                return Err("lease busy".into());
            }
            LeaseAns::Store => self.store.clone(),
            LeaseAns::NoStore => None,
            LeaseAns::Newer { refresh, fresh } => {
                self.workers += 1;
                let mut m = Map::new();
                m.insert("access_token".into(), format!("w{}", self.workers).into());
                if refresh {
                    m.insert("refresh_token".into(), format!("rw{}", self.workers).into());
                }
                if fresh {
                    m.insert(REFRESHED_AT.into(), NOW.into());
                }
                self.store = Some(Value::Object(m).to_string());
                self.store.clone()
            }
            LeaseAns::NoRefresh => self.store.as_deref().map(|s| match Keys::parse(s) {
                Ok(_) => {
                    let mut v: Value = serde_json::from_str(s).unwrap();
                    v.as_object_mut().unwrap().remove("refresh_token");
                    v.to_string()
                }
                Err(_) => s.into(),
            }),
            LeaseAns::Invalid => Some(r#"{"access_token":"#.into()),
        };
        assert!(!self.lease_held, "lease taken twice");
        self.lease_held = true;
        let lease = Lease { keys, in_doubt };
        self.events.push(Ev::Acquire(Ok(lease.clone())));
        Ok(lease)
    }

    fn release_lease(&mut self) {
        self.lease_held = false;
        self.events.push(Ev::Release);
    }

    fn now_unix(&self) -> u64 {
        NOW
    }

    fn sleep(&mut self, d: Duration) {
        self.events.push(Ev::Sleep(d));
    }
}

/// How a call must end: exactly this, or an error of this kind.
#[derive(Debug)]
enum Expected {
    Exact(Result<Response, SendError>),
    Kind(&'static str),
}

enum Step {
    Done(Expected),
    Renewed(Origin),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Origin {
    Adopted,
    Exchanged,
}

type Events<'a> = core::slice::Iter<'a, Ev>;

fn fail<T>(msg: String) -> Result<T, TestCaseError> {
    Err(TestCaseError::fail(msg))
}

fn expect_release(ev: &mut Events) -> Result<(), TestCaseError> {
    match ev.next() {
        Some(Ev::Release) => Ok(()),
        other => fail(format!("expected the lease released, saw {other:?}")),
    }
}

/// Whether a rejection of `keys` cannot be expiry (the spec's 30 s, at most
/// half the lifetime).
fn model_fresh(keys: &Keys) -> bool {
    keys.refreshed_at().is_some_and(|at| {
        let window = keys
            .lifetime()
            .map_or(FRESH_WINDOW, |l| FRESH_WINDOW.min(l / 2));
        NOW < at.saturating_add(window)
    })
}

/// The model of one call: walks the recorded events, checking that each is
/// the one the spec calls for, and says how the call must end.
fn model(case: &Case, ev: &mut Events) -> Result<Expected, TestCaseError> {
    let Some(Ok(Value::Object(stored))) = case.stored.as_deref().map(serde_json::from_str) else {
        return Ok(Expected::Kind(match case.stored {
            None => "NotAuthenticated",
            Some(_) => "InvalidKeys",
        }));
    };
    if stored.is_empty() {
        return Ok(Expected::Kind("NotAuthenticated"));
    }
    let mut keys = Keys::parse(&Value::Object(stored).to_string()).unwrap();
    let refresh_first = keys.access_token().is_none()
        || match case.strategy {
            Refresh::OnAuthFailure => false,
            Refresh::EveryRequest => true,
            Refresh::BeforeExpiry(m) => {
                keys.expires_at().is_some_and(|at| at <= NOW + u64::from(m))
            }
        };
    let (mut origin, mut renewals) = (None, 0);
    if refresh_first {
        match model_refresh(case, ev, &mut keys)? {
            Step::Done(e) => return Ok(e),
            Step::Renewed(o) => (origin, renewals) = (Some(o), 1),
        }
    }
    loop {
        let access = keys.access_token().expect("a renewed set has a token");
        let (bearer, answer) = match ev.next() {
            Some(Ev::Api { bearer, answer }) => (bearer, answer),
            other => return fail(format!("expected the API request, saw {other:?}")),
        };
        prop_assert_eq!(bearer.as_deref(), Some(&*format!("Bearer {access}")));
        let resp = match answer {
            Err(e) => return Ok(Expected::Exact(Err(SendError::Transport(e.clone())))),
            Ok(r) => r.clone(),
        };
        if !case.rejected(resp.status) {
            return Ok(Expected::Exact(Ok(resp)));
        }
        if resp.headers[0].1 == SCOPE_CHALLENGE {
            return Ok(Expected::Exact(Err(SendError::InsufficientScope(
                ScopeChallenge {
                    scope: Some("s".into()),
                    response: resp,
                },
            ))));
        }
        let cannot_improve = origin == Some(Origin::Exchanged)
            || renewals == RENEWALS
            || (origin.is_none() && model_fresh(&keys));
        if cannot_improve {
            return Ok(Expected::Exact(Err(SendError::RejectedAfterRefresh(resp))));
        }
        match model_refresh(case, ev, &mut keys)? {
            Step::Done(e) => return Ok(e),
            Step::Renewed(o) => (origin, renewals) = (Some(o), renewals + 1),
        }
    }
}

/// One renewal under the lease: adopt, or exchange and emit.
fn model_refresh(case: &Case, ev: &mut Events, keys: &mut Keys) -> Result<Step, TestCaseError> {
    let lease = match ev.next() {
        Some(Ev::Acquire(Ok(lease))) => lease,
        Some(Ev::Acquire(Err(_))) => return Ok(Step::Done(Expected::Kind("LeaseUnavailable"))),
        other => return fail(format!("expected the lease taken, saw {other:?}")),
    };
    let done = |ev: &mut Events, e: Expected| expect_release(ev).map(|()| Step::Done(e));
    let base = match lease.keys.as_deref().map(Keys::parse) {
        None => keys.clone(),
        Some(Err(_)) => return done(ev, Expected::Kind("InvalidKeys")),
        Some(Ok(current)) => {
            if current.access_token().is_some() && current.access_token() != keys.access_token() {
                expect_release(ev)?;
                *keys = current;
                return Ok(Step::Renewed(Origin::Adopted));
            }
            current
        }
    };
    if lease.in_doubt {
        return done(ev, Expected::Kind("RefreshInDoubt"));
    }
    let Some(refresh_token) = base.refresh_token() else {
        return done(ev, Expected::Kind("NotAuthenticated"));
    };
    let tokens = match model_exchange(ev, refresh_token)? {
        Ok(tokens) => tokens,
        Err(e) => return done(ev, e),
    };
    let merged = base.clone().merged(tokens, NOW);
    match ev.next() {
        Some(Ev::Emit { keys: json, ok }) => {
            prop_assert!(
                Keys::parse(json).ok() == Some(merged.clone()),
                "emitted {}",
                json
            );
            if !ok {
                return done(ev, Expected::Kind("KeysNotPersisted"));
            }
        }
        other => return fail(format!("expected the new keys emitted, saw {other:?}")),
    }
    let _ = case;
    *keys = merged;
    Ok(Step::Renewed(Origin::Exchanged))
}

/// One exchange: attempts with backoff, one prompt retry after an attempt
/// that may have been processed, then in doubt.
fn model_exchange(
    ev: &mut Events,
    refresh_token: &str,
) -> Result<Result<Map<String, Value>, Expected>, TestCaseError> {
    let mut delay = BACKOFF;
    let mut in_doubt = false;
    let mut left = TOKEN_ATTEMPTS;
    for attempt in 1.. {
        if attempt > 1 {
            match ev.next() {
                Some(Ev::Sleep(d)) => {
                    prop_assert_eq!(*d, delay, "backoff before attempt {}", attempt)
                }
                other => return fail(format!("expected a backoff, saw {other:?}")),
            }
            delay = (delay * 2).min(MAX_RETRY_AFTER);
        }
        let ans = match ev.next() {
            Some(Ev::Token {
                refresh_token: sent,
                lease_held,
                ans,
            }) => {
                prop_assert!(*lease_held, "refresh token sent without the lease");
                prop_assert_eq!(sent.as_deref(), Some(refresh_token));
                ans
            }
            other => return fail(format!("expected token attempt {attempt}, saw {other:?}")),
        };
        left -= 1;
        match ans.class() {
            Class::Success(tokens) => return Ok(Ok(tokens)),
            Class::Final(e) => {
                let lost = matches!(
                    e,
                    Expected::Kind("LeaseUnavailable")
                        | Expected::Exact(Err(SendError::ReauthorizationRequired(_)))
                );
                return Ok(Err(if in_doubt && lost {
                    Expected::Kind("RefreshInDoubt")
                } else {
                    e
                }));
            }
            Class::Retry {
                maybe_processed,
                retry_after,
            } => {
                if in_doubt {
                    return Ok(Err(Expected::Kind("RefreshInDoubt")));
                }
                if maybe_processed {
                    (in_doubt, left, delay) = (true, 1, BACKOFF);
                } else if let Some(s) = retry_after {
                    delay = Duration::from_secs(s).min(MAX_RETRY_AFTER);
                }
                if left == 0 {
                    return Ok(Err(Expected::Kind("TokenEndpoint")));
                }
            }
        }
    }
    unreachable!()
}

/// The spec's invariants, stated directly on the recorded events (the model
/// implies them; these say them plainly and catch a wrong model).
fn invariants(case: &Case, events: &[Ev], fake: &Fake) -> Result<(), TestCaseError> {
    let api = events
        .iter()
        .filter(|e| matches!(e, Ev::Api { .. }))
        .count();
    let token = events
        .iter()
        .filter(|e| matches!(e, Ev::Token { .. }))
        .count();
    // Bounded: every renewal is followed by at most one resend, and one
    // exchange is at most TOKEN_ATTEMPTS attempts plus one prompt retry.
    prop_assert!(api <= 1 + RENEWALS as usize, "{} API requests", api);
    prop_assert!(
        token <= TOKEN_ATTEMPTS as usize + 1,
        "{} token requests",
        token
    );
    let leases = events
        .iter()
        .filter(|e| matches!(e, Ev::Acquire(_)))
        .count();
    prop_assert!(leases <= RENEWALS as usize);

    let initial = case
        .stored
        .as_deref()
        .and_then(|s| Keys::parse(s).ok())
        .and_then(|k| k.access_token().map(String::from));
    // Tokens the guest may put on a request: the stored one until renewed,
    // then only ones it emitted or a lease showed it.
    let mut usable: Vec<String> = initial.into_iter().collect();
    let mut must_use: Option<String> = None;
    let mut exchange_lease = None;
    let mut exchange_over = false;
    let mut lease_no = 0;
    for e in events {
        match e {
            Ev::Api { bearer, .. } => {
                let token = bearer
                    .as_deref()
                    .and_then(|b| b.strip_prefix("Bearer "))
                    .unwrap_or("");
                prop_assert!(usable.iter().any(|u| u == token), "unknown token {}", token);
                if let Some(t) = must_use.take() {
                    prop_assert_eq!(token, t, "resent without the emitted token");
                }
            }
            Ev::Acquire(Ok(lease)) => {
                lease_no += 1;
                if let Some(t) = lease
                    .keys
                    .as_deref()
                    .and_then(|k| Keys::parse(k).ok())
                    .and_then(|k| k.access_token().map(String::from))
                {
                    usable.push(t);
                }
            }
            Ev::Token {
                lease_held, ans, ..
            } => {
                prop_assert!(*lease_held, "refresh token sent without the lease");
                // One exchange: all its attempts under one lease, none after
                // it succeeded or its result was emitted.
                prop_assert!(!exchange_over, "a second token exchange");
                prop_assert!(*exchange_lease.get_or_insert(lease_no) == lease_no);
                if matches!(ans, TokAns::Tokens { .. }) {
                    exchange_over = true;
                }
            }
            Ev::Emit { keys, ok } => {
                exchange_over = true;
                if *ok {
                    let t = Keys::parse(keys)
                        .ok()
                        .and_then(|k| k.access_token().map(String::from))
                        .unwrap_or_default();
                    usable.push(t.clone());
                    must_use = Some(t);
                }
            }
            Ev::Sleep(d) => prop_assert!(*d <= MAX_RETRY_AFTER),
            Ev::Acquire(Err(_)) | Ev::Release => {}
        }
    }
    prop_assert!(!fake.lease_held, "the call returned holding the lease");
    Ok(())
}

#[test]
fn the_routine_keeps_its_promises_under_any_script() {
    // How the calls ended, so the log shows the scripts reach every end.
    let ends = std::sync::Mutex::new(std::collections::BTreeMap::<&str, u32>::new());
    check(
        "the_routine_keeps_its_promises_under_any_script",
        4_000,
        case(),
        |case| {
            let mut fake = Fake::new(&case);
            let req = Request {
                method: "GET".into(),
                url: API_URL.into(),
                headers: vec![("Authorization".into(), "Bearer caller".into())],
                body: vec![],
            };
            let result = flow::send(&mut fake, &case.settings(), case.stored.as_deref(), &req);
            let end = result.as_ref().map_or_else(kind, |_| "Ok");
            *ends.lock().unwrap().entry(end).or_default() += 1;
            let events = core::mem::take(&mut fake.events);
            invariants(&case, &events, &fake)?;
            let mut ev = events.iter();
            let expected = model(&case, &mut ev)?;
            let rest: Vec<_> = ev.collect();
            prop_assert!(
                rest.is_empty(),
                "unexpected effects after the end: {:?}",
                rest
            );
            match (&expected, &result) {
                (Expected::Exact(e), r) => {
                    prop_assert!(same(e, r), "expected {:?}, got {:?}", e, r)
                }
                (Expected::Kind(k), Err(e)) => prop_assert_eq!(*k, kind(e), "got {:?}", e),
                (Expected::Kind(k), Ok(r)) => prop_assert!(false, "expected {}, got {:?}", k, r),
            }
            Ok(())
        },
    );
    let _ = writeln!(
        std::io::stderr(),
        "  ends (incl. shrinking): {:?}",
        ends.lock().unwrap()
    );
}
