//! rekey's settings and the upstream, from the runtime's configuration. The
//! client secret comes only from there (`--env REKEY_CLIENT_SECRET` passes the
//! server's own variable through without putting it on a command line). The
//! access token may go only to the upstream's origin.

use crate::gate;
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
    pub access: Access,
}

/// Who may use the proxy and for what (`gate.rs` applies it).
pub struct Access {
    /// SHA-256 of each accepted caller secret (several: rotation).
    pub callers: Vec<gate::Hash>,
    /// SHA-256 of each operator secret; empty: no operator path.
    pub operators: Vec<gate::Hash>,
    /// `Host` values served (`host` any port, `host:port` that one).
    pub hosts: Vec<String>,
    pub methods: Vec<String>,
    /// Path prefixes under the upstream's base path.
    pub paths: Vec<String>,
    /// Request headers forwarded besides the default allow-list.
    pub forward_headers: Vec<String>,
}

impl Access {
    fn load(src: &dyn Source) -> Result<Access, String> {
        let hashes = |name: &str| -> Result<Vec<gate::Hash>, String> {
            config::list(src, name)
                .unwrap_or_default()
                .iter()
                .map(|h| match gate::parse_hash(h) {
                    None => Err(format!(
                        "{name} must be SHA-256s in hex, separated by commas"
                    )),
                    // What `printf %s "$UNSET" | sha256sum` gives: no caller
                    // can present an empty secret, so it is a mistake.
                    Some(hash) if hash == gate::EMPTY_SECRET => {
                        Err(format!("{name} holds the SHA-256 of an empty secret"))
                    }
                    Some(hash) => Ok(hash),
                })
                .collect()
        };
        let callers = hashes("REKEY_CALLER_SECRET_SHA256")?;
        if callers.is_empty() {
            return Err("REKEY_CALLER_SECRET_SHA256 is not configured: the proxy serves only callers with a secret".into());
        }
        let hosts: Vec<String> = config::list(src, "REKEY_ALLOWED_HOSTS").unwrap_or_default();
        if hosts.is_empty() {
            return Err("REKEY_ALLOWED_HOSTS is not configured: the proxy answers only the Host values listed".into());
        }
        let methods = config::list(src, "REKEY_ALLOWED_METHODS").unwrap_or_else(|| {
            gate::DEFAULT_METHODS
                .iter()
                .map(|m| m.to_string())
                .collect()
        });
        if let Some(m) = methods.iter().find(|m| gate::never_allowed(m)) {
            return Err(format!("REKEY_ALLOWED_METHODS may not list {m}"));
        }
        let paths =
            config::list(src, "REKEY_ALLOWED_PATHS").unwrap_or_else(|| alloc::vec!["/".into()]);
        for p in &paths {
            if !matches!(gate::check_path(p, &[String::from("/")]), Ok(())) {
                return Err(
                    "REKEY_ALLOWED_PATHS must be absolute paths without dot segments".into(),
                );
            }
        }
        // A caller who held the operator's secret could clear refresh marks.
        let operators = hashes("REKEY_OPERATOR_SECRET_SHA256")?;
        if operators.iter().any(|o| callers.contains(o)) {
            return Err(
                "REKEY_OPERATOR_SECRET_SHA256 names a caller's secret: the operator needs its own"
                    .into(),
            );
        }
        Ok(Access {
            callers,
            operators,
            hosts,
            methods,
            paths,
            forward_headers: gate::forward_list(
                config::list(src, "REKEY_FORWARD_HEADERS").unwrap_or_default(),
            )?,
        })
    }
}

impl Settings {
    pub fn load() -> Result<Settings, String> {
        let src = config::source()?;
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
        let token_url = required("REKEY_TOKEN_URL")?;
        for (name, url) in [
            ("REKEY_UPSTREAM", &upstream),
            ("REKEY_TOKEN_URL", &token_url),
        ] {
            plain_http_on_loopback_only(name, url)?;
        }
        let millis = |name: &str| -> Result<u32, String> {
            u32::try_from(config::number(&src, name, 0)?)
                .map_err(|_| format!("{name} is too large"))
        };
        Ok(Settings {
            rekey: RekeySettings {
                grant,
                token_url,
                client_id: required("REKEY_CLIENT_ID")?,
                client_secret: src.get("REKEY_CLIENT_SECRET"),
                client_auth,
                scope: src.get("REKEY_SCOPE"),
                extra_params,
                strategy,
                rejected_statuses,
                api_origins: alloc::vec![origin(&upstream)?],
                instance_url_origins: Vec::new(),
                // Zero: the component's defaults.
                fleet: FleetTiming {
                    lease_ttl_ms: millis("REKEY_LEASE_TTL_MS")?,
                    lease_wait_ms: millis("REKEY_LEASE_WAIT_MS")?,
                },
                signing: None,
                dpop: None,
            },
            upstream,
            max_request_bytes: config::number(&src, "REKEY_MAX_REQUEST_BYTES", 16 << 20)?,
            access: Access::load(&src)?,
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

/// `http://` only to a literal loopback address (127.0.0.0/8, `[::1]`): the
/// runtime resolves a name such as `localhost`, and the proxy cannot see the
/// address it connects to.
fn plain_http_on_loopback_only(name: &str, url: &str) -> Result<(), String> {
    let Some(rest) = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
    else {
        return Ok(());
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    let v4_loopback = {
        let octets: Vec<&str> = host.split('.').collect();
        octets.len() == 4
            && octets[0] == "127"
            && octets
                .iter()
                .all(|o| !o.is_empty() && o.len() <= 3 && o.parse::<u8>().is_ok())
    };
    if v4_loopback || host == "::1" {
        Ok(())
    } else {
        Err(format!(
            "{name}: plain http only to a literal loopback address (127.0.0.1, [::1])"
        ))
    }
}
