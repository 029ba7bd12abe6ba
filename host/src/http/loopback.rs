//! "Loopback" is an address, not a name: `localhost` is trusted only when
//! every address it resolves to, at connect time, is loopback.
//!
//! reqwest resolves names through [`Guard`] and connects only to the
//! addresses it returns (IP literals are never resolved), so the address a
//! request to `localhost` connects to is one this module checked. A name
//! that also maps elsewhere (an `/etc/hosts` line, a hostile resolver) fails
//! before any connection is made, whatever the scheme.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// How names become addresses: the system's resolver, or a test's answers.
pub(crate) type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver (`getaddrinfo` on a blocking thread, as reqwest's own).
pub(crate) fn system() -> Lookup {
    Arc::new(|name| {
        Box::pin(async move { Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.collect()) })
    })
}

/// Whether `host` (a URL's host name, not an address) names this machine by
/// convention: `localhost`, with or without the root's dot.
pub(crate) fn is_localhost(host: &str) -> bool {
    host.strip_suffix('.')
        .unwrap_or(host)
        .eq_ignore_ascii_case("localhost")
}

/// Whether an address is loopback: 127.0.0.0/8, ::1, or an IPv4-mapped
/// IPv6 form of 127.0.0.0/8.
pub(crate) fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// reqwest's resolver: every name as the system resolves it, but
/// `localhost` only when all its answers are loopback.
pub(crate) struct Guard(pub(crate) Lookup);

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.0.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup(name.clone()).await?;
            if is_localhost(&name) {
                if let Some(bad) = addrs.iter().find(|a| !is_loopback_ip(a.ip())) {
                    return Err(Box::new(NotLoopback(bad.ip())) as _);
                }
                if addrs.is_empty() {
                    return Err(
                        Box::new(io::Error::other("localhost resolved to no address")) as _,
                    );
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// `localhost` resolved to an address of another machine: the send is
/// refused (nothing was connected, nothing sent).
#[derive(Debug, thiserror::Error)]
#[error(
    "localhost resolves to {0}, which is not a loopback address: nothing is sent to \
     localhost unless every address it resolves to is loopback (127.0.0.0/8, ::1)"
)]
pub(crate) struct NotLoopback(IpAddr);

/// The refusal among an error's causes, if it is one.
pub(crate) fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotLoopback> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<NotLoopback>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_means_an_address() {
        for (ip, loopback) in [
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("10.9.9.9", false),
            ("0.0.0.0", false),
            ("::", false),
            ("::ffff:10.9.9.9", false),
            ("192.0.2.2", false),
        ] {
            assert_eq!(is_loopback_ip(ip.parse().unwrap()), loopback, "{ip}");
        }
        for (host, localhost) in [
            ("localhost", true),
            ("LocalHost", true),
            ("localhost.", true),
            ("localhost..", false),
            ("a.localhost", false),
            ("localhost.example", false),
        ] {
            assert_eq!(is_localhost(host), localhost, "{host}");
        }
    }

    fn answers(addrs: &'static [&'static str]) -> Guard {
        Guard(Arc::new(move |_| {
            Box::pin(async move { Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()) })
        }))
    }

    async fn resolve(guard: &Guard, name: &str) -> Result<Vec<SocketAddr>, String> {
        guard
            .resolve(name.parse().unwrap())
            .await
            .map(|a| a.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn localhost_must_resolve_to_loopback_only() {
        let mixed = answers(&["127.0.0.1:0", "10.9.9.9:0"]);
        let e = resolve(&mixed, "localhost").await.unwrap_err();
        assert!(e.contains("localhost resolves to 10.9.9.9"), "{e}");
        assert!(resolve(&mixed, "LOCALHOST.").await.is_err());
        // Other names are resolved as they are: https guards them.
        assert_eq!(resolve(&mixed, "example.com").await.unwrap().len(), 2);
        let loopback = answers(&["127.0.0.1:0", "[::1]:0"]);
        assert_eq!(resolve(&loopback, "localhost").await.unwrap().len(), 2);
        assert!(resolve(&answers(&[]), "localhost").await.is_err());
    }
}
