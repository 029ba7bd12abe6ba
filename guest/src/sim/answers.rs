//! One worker against every sequence of token-endpoint answers, each with
//! what the contract says it means (ported from the pre-0.3 model-based
//! property test, `git show pre-0.3:guest/src/proptests.rs`): how many
//! attempts follow, the pauses between them, the call's result, and what the
//! record keeps (the refresh mark when the token may be spent, the dead grant
//! when the endpoint refused it unspent).

use crate::flow::{self, BACKOFF, TOKEN_ATTEMPTS};
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{Purpose, SendError, TransportError};
use crate::testing::{self, ok, script};
use crate::token::MAX_RETRY_AFTER;
use core::time::Duration;
use proptest::prelude::*;

/// One token-endpoint answer, by what it means.
#[derive(Clone, Debug)]
enum Answer {
    Tokens,
    /// No connection: nothing was sent.
    Connect,
    /// 429 / 503: received, not processed.
    Busy(u16, Option<u64>),
    /// Another 5xx: maybe processed.
    Failed(u16, Option<u64>),
    Timeout,
    Reset,
    TooLarge,
    InvalidRequest,
    /// The host refused to send it.
    Refused,
    Grant(u16),
    Settings(&'static str),
    /// A final answer that is neither tokens nor an OAuth error.
    Garbage(u16, &'static str),
}

/// What an answer means: a retry (maybe processed, Retry-After), or final.
enum Meaning {
    Tokens,
    Retry(bool, Option<u64>),
    Final(&'static str),
}

impl Answer {
    fn response(&self) -> Result<Response, TransportError> {
        let with_after = |status, after: &Option<u64>| {
            let mut r = ok(status, "<html>");
            if let Ok(r) = &mut r {
                r.headers
                    .extend(after.map(|s| ("Retry-After".to_string(), s.to_string())));
            }
            r
        };
        match self {
            Answer::Tokens => ok(200, r#"{"access_token":"a2","refresh_token":"r2"}"#),
            Answer::Connect => Err(TransportError::Connect("refused".into())),
            Answer::Busy(s, after) | Answer::Failed(s, after) => with_after(*s, after),
            Answer::Timeout => Err(TransportError::Timeout),
            Answer::Reset => Err(TransportError::Other("connection reset".into())),
            Answer::TooLarge => Err(TransportError::TooLarge(1 << 20)),
            Answer::InvalidRequest => Err(TransportError::InvalidRequest("bad header".into())),
            Answer::Refused => Err(TransportError::Refused("lease lost".into())),
            Answer::Grant(s) => ok(*s, r#"{"error":"invalid_grant","error_description":"x"}"#),
            Answer::Settings(code) => ok(400, &format!(r#"{{"error":"{code}"}}"#)),
            Answer::Garbage(s, body) => ok(*s, body),
        }
    }

    fn meaning(&self) -> Meaning {
        match self {
            Answer::Tokens => Meaning::Tokens,
            Answer::Connect => Meaning::Retry(false, None),
            Answer::Busy(_, after) => Meaning::Retry(false, *after),
            Answer::Failed(_, after) => Meaning::Retry(true, *after),
            Answer::Timeout | Answer::Reset => Meaning::Retry(true, None),
            Answer::Garbage(404, _) => Meaning::Final("invalid-settings"),
            Answer::TooLarge | Answer::Garbage(..) => Meaning::Final("token-endpoint"),
            Answer::InvalidRequest => Meaning::Final("invalid-settings"),
            Answer::Refused => Meaning::Final("lease-unavailable"),
            Answer::Grant(_) => Meaning::Final("reauthorization-required"),
            Answer::Settings(_) => Meaning::Final("settings-rejected"),
        }
    }

    /// Whether the refresh token may be spent after this answer: everything
    /// but no connection, a refusal to send, 429, 503 and other 4xx.
    fn may_have_spent(&self) -> bool {
        match self {
            Answer::Connect | Answer::Refused | Answer::InvalidRequest | Answer::Busy(..) => false,
            Answer::Grant(s) | Answer::Garbage(s, _) => !(400..500).contains(s),
            Answer::Settings(_) => false,
            _ => true,
        }
    }
}

fn answer() -> impl Strategy<Value = Answer> {
    let after = proptest::option::of(0u64..10);
    prop_oneof![
        3 => Just(Answer::Tokens),
        2 => Just(Answer::Connect),
        3 => (prop_oneof![Just(429u16), Just(503)], after.clone())
            .prop_map(|(s, a)| Answer::Busy(s, a)),
        3 => (prop_oneof![Just(500u16), Just(502), Just(504), Just(599)], after)
            .prop_map(|(s, a)| Answer::Failed(s, a)),
        2 => Just(Answer::Timeout),
        1 => Just(Answer::Reset),
        1 => Just(Answer::TooLarge),
        1 => Just(Answer::InvalidRequest),
        1 => Just(Answer::Refused),
        2 => prop_oneof![Just(400u16), Just(401), Just(200)].prop_map(Answer::Grant),
        1 => prop_oneof![Just("invalid_client"), Just("invalid_scope")].prop_map(Answer::Settings),
        1 => prop_oneof![
            Just((200u16, "<html>")),
            Just((200, r#"{"token_type":"bearer"}"#)),
            Just((200, r#"{"access_token":"a b"}"#)),
            Just((400, r#"{"error":"temporarily_unavailable"}"#)),
            Just((404, "not found")),
        ]
        .prop_map(|(s, b)| Answer::Garbage(s, b)),
    ]
}

/// What the contract expects of a call whose refresh meets these answers.
#[derive(Debug, PartialEq)]
struct Expected {
    result: &'static str,
    token_requests: usize,
    slept: Vec<Duration>,
    marked: bool,
    dead: bool,
}

fn expected(answers: &[Answer]) -> Expected {
    let (mut left, mut delay, mut in_doubt, mut spent) = (TOKEN_ATTEMPTS, BACKOFF, false, false);
    let mut slept = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            slept.push(delay);
            delay = (delay * 2).min(MAX_RETRY_AFTER);
        }
        left -= 1;
        spent |= a.may_have_spent();
        let end = |result: &'static str, slept: Vec<Duration>| {
            let dead = result == "reauthorization-required" && !spent;
            let marked = result != "ok" && spent && !dead;
            Expected {
                // A call that leaves the mark says so, whatever came last.
                result: if marked { "refresh-in-doubt" } else { result },
                token_requests: i + 1,
                slept,
                marked,
                dead,
            }
        };
        match a.meaning() {
            Meaning::Tokens => return end("ok", slept),
            Meaning::Final(kind) => {
                let doubt =
                    in_doubt && matches!(kind, "reauthorization-required" | "lease-unavailable");
                return end(if doubt { "refresh-in-doubt" } else { kind }, slept);
            }
            Meaning::Retry(_, _) if in_doubt => return end("refresh-in-doubt", slept),
            Meaning::Retry(processed, after) => {
                if processed {
                    // Exactly one prompt retry.
                    (in_doubt, left, delay) = (true, 1, BACKOFF);
                } else if let Some(s) = after {
                    delay = Duration::from_secs(s).min(MAX_RETRY_AFTER);
                }
                if left == 0 {
                    return end("token-endpoint", slept);
                }
            }
        }
    }
    unreachable!("{} answers end every exchange", TOKEN_ATTEMPTS + 1)
}

#[test]
fn each_token_endpoint_answer_means_what_the_contract_says() {
    let answers = proptest::collection::vec(answer(), (TOKEN_ATTEMPTS + 1) as usize);
    crate::proptests::check("token_endpoint_answers", 3_000, answers, |answers| {
        let want = expected(&answers);
        let mut script_answers = vec![ok(401, "")];
        script_answers.extend(answers[..want.token_requests].iter().map(Answer::response));
        script_answers.push(ok(200, "hi"));
        let mut fx = script(script_answers);
        fx.record.data.keys = Some(r#"{"access_token":"a1","refresh_token":"r1"}"#.into());
        let req = Request {
            method: "GET".into(),
            url: "http://127.0.0.1:9/api".into(),
            headers: vec![],
            body: vec![],
        };
        let result = flow::send(&mut fx, &testing::settings(), &req);
        let kind = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        let token_requests = fx
            .purposes
            .iter()
            .filter(|p| matches!(p, Purpose::TokenEndpoint))
            .count();
        let record = &fx.record.data;
        let got = Expected {
            result: kind,
            token_requests,
            slept: fx.slept.clone(),
            marked: record.refresh_mark.is_some(),
            dead: record.dead_grant.is_some(),
        };
        prop_assert_eq!(&got, &want, "{:?} -> {:?}", answers, result.err());
        prop_assert!(record.lease.is_none(), "the lease is ended");
        if matches!(
            result,
            Err(flow::Refusal::Error(SendError::RefreshInDoubt(_)))
        ) {
            prop_assert!(record.refresh_mark.is_some(), "in doubt, the mark stays");
        }
        Ok(())
    });
}
