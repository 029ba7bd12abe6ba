//! rekey's settings and the upstream, from the runtime's configuration. The
//! client secret comes only from there (`--env REKEY_CLIENT_SECRET` passes the
//! server's own variable through without putting it on a command line). The
//! access token may go only to the upstream's origin.

use crate::rekey::oauth2::types::{
    ClientAuth, FleetTiming, Grant, Settings as RekeySettings, Strategy,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use rekey_edge_rt::config::{self, Source};

pub struct Settings {
    pub rekey: RekeySettings,
    /// Origin (and optional base path) the incoming path is appended to.
    pub upstream: String,
    pub max_request_bytes: u64,
}

impl Settings {
    pub fn load() -> Result<Settings, String> {
        let src = config::source();
        let required = |name: &str| {
            src.get(name)
                .ok_or_else(|| format!("{name} is not configured"))
        };
        let grant = match src.get("REKEY_GRANT").as_deref() {
            None | Some("refresh-token") => Grant::RefreshToken,
            Some("client-credentials") => Grant::ClientCredentials,
            Some(_) => return Err("REKEY_GRANT must be refresh-token or client-credentials".into()),
        };
        let client_auth = match src.get("REKEY_CLIENT_AUTH").as_deref() {
            None | Some("basic") | Some("client-secret-basic") => ClientAuth::ClientSecretBasic,
            Some("post") | Some("client-secret-post") => ClientAuth::ClientSecretPost,
            Some(_) => return Err("REKEY_CLIENT_AUTH must be basic or post".into()),
        };
        let strategy = match src.get("REKEY_STRATEGY").as_deref() {
            None | Some("on-auth-failure") => Strategy::OnAuthFailure,
            Some("every-request") => Strategy::EveryRequest,
            Some("before-expiry") => {
                let margin = config::number(&src, "REKEY_EXPIRY_MARGIN_SECS", 60)?;
                Strategy::BeforeExpiry(
                    u32::try_from(margin).map_err(|_| "REKEY_EXPIRY_MARGIN_SECS is too large")?,
                )
            }
            Some(_) => {
                return Err(
                    "REKEY_STRATEGY must be on-auth-failure, every-request or before-expiry".into(),
                );
            }
        };
        let extra_params = src
            .get("REKEY_EXTRA_PARAMS")
            .map(|s| pairs(&s))
            .transpose()?
            .unwrap_or_default();
        let rejected_statuses = match src.get("REKEY_REJECTED_STATUSES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    s.trim().parse::<u16>().map_err(|_| {
                        "REKEY_REJECTED_STATUSES must be statuses separated by commas".to_string()
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let upstream = required("REKEY_UPSTREAM")?
            .trim_end_matches('/')
            .to_string();
        let millis = |name: &str| -> Result<u32, String> {
            u32::try_from(config::number(&src, name, 0)?)
                .map_err(|_| format!("{name} is too large"))
        };
        Ok(Settings {
            rekey: RekeySettings {
                grant,
                token_url: required("REKEY_TOKEN_URL")?,
                client_id: required("REKEY_CLIENT_ID")?,
                client_secret: src.get("REKEY_CLIENT_SECRET"),
                client_auth,
                scope: src.get("REKEY_SCOPE"),
                extra_params,
                strategy,
                rejected_statuses,
                api_origins: alloc::vec![origin(&upstream)?],
                allow_instance_url: false,
                // Zero: the component's defaults.
                fleet: FleetTiming {
                    lease_ttl_ms: millis("REKEY_LEASE_TTL_MS")?,
                    lease_wait_ms: millis("REKEY_LEASE_WAIT_MS")?,
                },
            },
            upstream,
            max_request_bytes: config::number(&src, "REKEY_MAX_REQUEST_BYTES", 16 << 20)?,
        })
    }
}

/// `a=1&b=2` → [("a","1"), ("b","2")] (no percent-decoding: rekey encodes them).
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    "REKEY_EXTRA_PARAMS must be name=value pairs joined by &".to_string()
                })
        })
        .collect()
}

/// `scheme://authority` of an absolute URL: the one API origin the token may
/// go to (the component checks it and refuses plain http off loopback).
fn origin(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("REKEY_UPSTREAM is not an absolute URL")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() {
        return Err("REKEY_UPSTREAM has no host".into());
    }
    Ok(format!("{scheme}://{authority}"))
}
