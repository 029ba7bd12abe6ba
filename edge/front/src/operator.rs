//! The operator's path, `/_rekey/…`, never forwarded: `GET /_rekey/record`
//! shows the record's fleet state (never its keys); `POST
//! /_rekey/clear-refresh-mark?at_ms=N` clears the refresh mark set at N,
//! after the operator has asked the provider whether the stored refresh
//! token is still live (if it is not, the credential needs a new
//! authorisation instead); `POST /_rekey/keepalive?older_than_secs=N`
//! exercises a refresh token that would die from disuse (rekey's
//! `keepalive`: one refresh however many instances are asked at once). A
//! separate secret from the callers'.

use crate::answer::{Answer, Json, state_json};
use crate::forward::Incoming;
use crate::gate;
use crate::rekey::edge::operator::{self, ClearError};
use crate::rekey::oauth2::client::{self, KeepaliveOutcome};
use crate::rekey::oauth2::types::Settings as RekeySettings;
use crate::settings::Access;
use alloc::format;

pub const PREFIX: &str = "/_rekey";

pub fn is_operator_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    path == PREFIX || path.starts_with("/_rekey/")
}

pub fn handle(seen: &Incoming, access: &Access, settings: &RekeySettings) -> Answer {
    if access.operators.is_empty() {
        return Answer::operator(404, "operator_disabled", "no operator secret is configured");
    }
    if !seen
        .bearer()
        .is_some_and(|s| gate::secret_matches(s, &access.operators))
    {
        return Answer::unauthenticated("rekey-proxy operator");
    }
    let (path, query) = seen.target.split_once('?').unwrap_or((&seen.target, ""));
    match (seen.method.as_str(), path) {
        ("GET", "/_rekey/record") => match operator::read_state() {
            Ok(s) => Answer::json(200, state_json(&s)),
            Err(e) => Answer::operator(503, "store_unavailable", &e),
        },
        ("POST", "/_rekey/clear-refresh-mark") => {
            let at_ms = query
                .split('&')
                .find_map(|p| p.strip_prefix("at_ms="))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(at_ms) = at_ms else {
                return Answer::operator(
                    400,
                    "bad_request",
                    "name the mark to clear: ?at_ms=<record.refresh_mark.at_ms>",
                );
            };
            match operator::clear_refresh_mark(at_ms) {
                Ok(version) => {
                    let mut json = Json::new();
                    json.bool("cleared", true).num("version", version);
                    Answer::json(200, json)
                }
                Err(ClearError::NoMark) => {
                    Answer::operator(409, "no_refresh_mark", "the record holds no refresh mark")
                }
                Err(ClearError::OtherMark(m)) => Answer::operator(
                    409,
                    "other_refresh_mark",
                    &format!("the record's mark was set at {}: look again", m.at_ms),
                ),
                Err(ClearError::LeaseHeld(until)) => Answer::operator(
                    409,
                    "lease_held",
                    &format!("a refresh may be under way (lease until {until}): try after it"),
                ),
                Err(ClearError::MayBeLive(until)) => Answer::operator(
                    409,
                    "refresh_may_be_live",
                    &format!(
                        "a token request begun at the mark may still be running (its timeouts end at {until}): try after it"
                    ),
                ),
                Err(ClearError::Failed(m)) => Answer::operator(503, "store_unavailable", &m),
            }
        }
        ("POST", "/_rekey/keepalive") => {
            let older_than = query
                .split('&')
                .find_map(|p| p.strip_prefix("older_than_secs="))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(older_than) = older_than else {
                return Answer::operator(
                    400,
                    "bad_request",
                    "say how old a token set may be: ?older_than_secs=<seconds>",
                );
            };
            match client::keepalive(settings, older_than) {
                Ok(kept) => {
                    let mut json = Json::new();
                    json.str(
                        "outcome",
                        match kept {
                            KeepaliveOutcome::Fresh => "fresh",
                            KeepaliveOutcome::Refreshed => "refreshed",
                            KeepaliveOutcome::NothingToKeep => "nothing_to_keep",
                        },
                    );
                    Answer::json(200, json)
                }
                Err(e) => Answer::from_send_error(e),
            }
        }
        _ => Answer::operator(
            404,
            "no_such_operation",
            "GET /_rekey/record, POST /_rekey/clear-refresh-mark?at_ms=N or POST /_rekey/keepalive?older_than_secs=N",
        ),
    }
}
