//! `/_testkit/…`: the provider's knobs and counters over HTTP, so that tests
//! in any language (the Node and Python hosts, the edge proxy) drive the same
//! provider the Rust scenarios use in-process.

use crate::provider::{ApiRequest, LostAnswer, Provider, Refusal, Stats};
use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<Provider>>;

pub fn routes() -> axum::Router<Arc<Provider>> {
    axum::Router::new()
        .route("/authorize", post(authorize))
        .route("/stats", get(stats))
        .route("/api-log", get(api_log))
        .route("/last-token-form", get(last_token_form))
        .route("/force-token-responses", post(force_token_responses))
        .route("/lose-answers", post(lose_answers))
        .route("/omit-refresh-token", post(omit_refresh_token))
        .route("/revoke-all", post(revoke_all))
        .route("/expire-access-tokens", post(expire_access_tokens))
        .route("/refresh-token-live", post(refresh_token_live))
}

/// A new grant's token response, as an authorization-code exchange returns it.
async fn authorize(State(p): Shared) -> Json<Value> {
    Json(p.authorize())
}

async fn stats(State(p): Shared) -> Json<Value> {
    Json(stats_json(&p.stats()))
}

pub fn stats_json(s: &Stats) -> Value {
    json!({
        "token_calls": s.token_calls,
        "refreshes_granted": s.refreshes_granted,
        "invalid_grant": s.invalid_grant,
        "reused_refresh_tokens": s.reused_refresh_tokens,
        "basic_auth_calls": s.basic_auth_calls,
        "post_auth_calls": s.post_auth_calls,
        "api_calls": s.api_calls,
        "api_unauthorized": s.api_unauthorized,
        "api_refused_expired": s.api_refused_expired,
        "api_refused_unknown_or_revoked": s.api_refused_unknown_or_revoked,
        "client_credentials_granted": s.client_credentials_granted,
        "client_assertions_ok": s.client_assertions_ok,
        "assertions_refused": s.assertions_refused,
        "multiple_client_auth": s.multiple_client_auth,
        "jwt_bearer_granted": s.jwt_bearer_granted,
        "last_assertion_subject": s.last_assertion_subject,
    })
}

/// The API requests as received; bodies in standard base64.
async fn api_log(State(p): Shared) -> Json<Value> {
    Json(p.api_log().iter().map(api_request_json).collect())
}

fn api_request_json(r: &ApiRequest) -> Value {
    json!({
        "method": r.method,
        "path": r.path,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "authorized": r.authorized,
        "refused": r.refused.map(|c| match c {
            Refusal::Missing => "missing",
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::AlwaysRejects => "always-rejects",
        }),
    })
}

async fn last_token_form(State(p): Shared) -> Json<Value> {
    Json(json!(p.last_token_form()))
}

/// Body: `[[status, "body"], …]`, answered by the next token calls in order.
async fn force_token_responses(State(p): Shared, Json(list): Json<Vec<(u16, String)>>) {
    p.force_token_responses(list);
}

/// Body: a list of `{"status": 502}`, `{"reset": true}` or `{"hang_ms": 3000}`:
/// the next granted refreshes lose their answers that way.
async fn lose_answers(
    State(p): Shared,
    Json(list): Json<Vec<Value>>,
) -> Result<(), (axum::http::StatusCode, String)> {
    let faults = list
        .iter()
        .map(|v| {
            if let Some(status) = v.get("status").and_then(Value::as_u64) {
                Ok(LostAnswer::Status(status as u16))
            } else if v.get("reset").is_some() {
                Ok(LostAnswer::Reset)
            } else if let Some(ms) = v.get("hang_ms").and_then(Value::as_u64) {
                Ok(LostAnswer::Hang(Duration::from_millis(ms)))
            } else {
                Err((
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("unknown fault {v}"),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    p.lose_answers(faults);
    Ok(())
}

/// Body: `true` or `false`.
async fn omit_refresh_token(State(p): Shared, Json(omit): Json<bool>) {
    p.omit_refresh_token(omit);
}

async fn expire_access_tokens(State(p): Shared) {
    p.expire_access_tokens();
}

async fn revoke_all(State(p): Shared) {
    p.revoke_all();
}

/// Body: `{"refresh_token": "…"}`; answers `{"live": bool}`.
async fn refresh_token_live(State(p): Shared, Json(body): Json<Value>) -> Json<Value> {
    let token = body["refresh_token"].as_str().unwrap_or("");
    Json(json!({ "live": p.refresh_token_is_live(token) }))
}
