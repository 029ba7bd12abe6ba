//! What a call did, as events a host can log or show. Events carry no secrets:
//! URLs are cut to scheme, host and path; keys are described, never shown.

use std::time::Duration;

/// Which kind of endpoint an exchange went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// The protected API (the caller's request or its retry).
    Api,
    /// The credential's token endpoint (a refresh).
    TokenEndpoint,
}

/// Something a call did. Every field is safe to log.
#[derive(Debug)]
pub enum Event<'a> {
    /// One `http-send` finished: a status, or why there was none.
    Http {
        /// The credential's name.
        credential: &'a str,
        /// API or token endpoint.
        exchange: Exchange,
        /// The HTTP method.
        method: &'a str,
        /// `scheme://host[:port]/path`, no query or userinfo.
        target: &'a str,
        /// The status, or why there was none.
        outcome: Result<u16, &'a str>,
        /// How long the exchange took.
        elapsed: Duration,
    },
    /// `emit-update-keys` made a new token set durable.
    KeysPersisted {
        /// The credential's name.
        credential: &'a str,
        /// The credential's version after the write.
        version: u64,
        /// The provider sent a new refresh token (rotation) and it was stored.
        refresh_token_rotated: bool,
    },
    /// `emit-update-keys` failed: the call stops before its retry.
    KeysNotPersisted {
        /// The credential's name.
        credential: &'a str,
        /// The store's error, secret-free.
        reason: &'a str,
    },
    /// The guest took the refresh lease (after waiting this long for it).
    LeaseAcquired {
        /// The credential's name.
        credential: &'a str,
        /// How long the call waited for it.
        waited: Duration,
    },
}

/// Receives every [`Event`] of every call, synchronously: keep it cheap.
pub trait Observer: Send + Sync + 'static {
    /// One event.
    fn event(&self, event: &Event<'_>);
}

/// Logs every event at `debug` through `tracing` (the CLI's `-v`).
pub struct TracingObserver;

impl Observer for TracingObserver {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Http {
                credential,
                exchange,
                method,
                target,
                outcome,
                elapsed,
            } => match outcome {
                Ok(status) => tracing::debug!(
                    credential,
                    ?exchange,
                    method,
                    target,
                    status,
                    ?elapsed,
                    "http exchange"
                ),
                Err(error) => tracing::debug!(
                    credential,
                    ?exchange,
                    method,
                    target,
                    error,
                    ?elapsed,
                    "http exchange failed"
                ),
            },
            Event::KeysPersisted {
                credential,
                version,
                refresh_token_rotated,
            } => {
                tracing::debug!(credential, version, refresh_token_rotated, "keys persisted")
            }
            Event::KeysNotPersisted { credential, reason } => {
                tracing::warn!(credential, reason, "keys not persisted")
            }
            Event::LeaseAcquired { credential, waited } => {
                tracing::debug!(credential, ?waited, "refresh lease acquired")
            }
        }
    }
}

/// `scheme://host[:port]/path`: the query and userinfo may hold secrets.
pub fn loggable_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => loggable_url(&u),
        Err(_) => "(invalid URL)".into(),
    }
}

/// [`loggable_target`] of a parsed URL.
pub(crate) fn loggable_url(u: &reqwest::Url) -> String {
    use std::fmt::Write;
    let (host, path) = (u.host_str().unwrap_or(""), u.path());
    let mut s = String::with_capacity(u.scheme().len() + 3 + host.len() + 6 + path.len());
    s.push_str(u.scheme());
    s.push_str("://");
    s.push_str(host);
    if let Some(port) = u.port() {
        let _ = write!(s, ":{port}");
    }
    s.push_str(path);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_lose_query_and_userinfo() {
        assert_eq!(
            super::loggable_target("https://u:pw@api.example:8443/v1/me?access_token=abc"),
            "https://api.example:8443/v1/me"
        );
    }
}
