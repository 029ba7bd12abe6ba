//! Where a token may go, decided in the component so every host enforces the
//! same rule (hosts repeat it at `http-send` as a second line):
//! - any URL the guest sends to is `https://`, or `http://` on a loopback
//!   address (RFC 6749 §3.2, RFC 6750 §5.3: tokens need TLS);
//! - an access token goes only to the credential's API origins, when it has
//!   any: `https://api.example.com[:port]`, or `https://*.example.com` for
//!   any subdomain (never the bare domain), plus the token set's
//!   `instance_url` when the settings allow it.
//!
//! The parser is deliberately stricter than a WHATWG one, never looser: an
//! authority with a backslash, a percent sign, whitespace or a control
//! character is refused rather than interpreted (differential tests hold it
//! to the `url` crate the Rust host sends with).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// A URL's scheme, host (lower case, IPv6 without brackets) and port.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of an absolute `http(s)://` URL; `None` when it is not
    /// one, or its authority holds anything parsers read differently.
    pub fn of(url: &str) -> Option<Origin> {
        let (https, rest) = if let Some(rest) = strip_prefix_ci(url, "https://") {
            (true, rest)
        } else {
            (false, strip_prefix_ci(url, "http://")?)
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority
            .bytes()
            .any(|b| b == b'\\' || b == b'%' || b <= b' ' || b == 0x7f || b >= 0x80)
        {
            return None;
        }
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':'))
            }
            None => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = match port {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
        };
        // A trailing dot is kept: `localhost.` is a DNS name, not loopback.
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Origin { https, host, port })
    }

    /// Whether the host is a loopback address written as one (`127.x.y.z`
    /// in plain decimal, `::1`), or `localhost`.
    pub fn is_loopback(&self) -> bool {
        let octets: Vec<&str> = self.host.split('.').collect();
        let ipv4 = octets.len() == 4
            && octets[0] == "127"
            && octets
                .iter()
                .all(|o| !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit()));
        ipv4 || self.host == "::1" || self.host == "localhost"
    }
}

/// Whether `rest` (a URL after `http://`) names a loopback host.
pub(crate) fn is_loopback_authority(rest: &str) -> bool {
    Origin::of(&format!("http://{rest}")).is_some_and(|o| o.is_loopback())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Refuses a URL that would carry a secret in clear text or that no parser
/// reads the same way.
pub fn check_transport(url: &str, what: &str) -> Result<Origin, String> {
    let origin = Origin::of(url).ok_or_else(|| {
        format!("{what} is not an absolute http(s) URL with a plain host (no %, \\ or spaces)")
    })?;
    if !origin.https && !origin.is_loopback() {
        return Err(format!(
            "{what} must be https:// (http:// only on loopback): the token would travel in clear text"
        ));
    }
    Ok(origin)
}

/// One API origin pattern.
struct Pattern {
    origin: Origin,
    wildcard: bool,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let (wildcard, candidate) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_string()),
        };
        let bad = |why: &str| format!("API origin {text:?} {why}");
        let after_scheme = candidate.split_once("://").map_or("", |(_, r)| r);
        let path = after_scheme
            .find(['/', '?', '#'])
            .map_or("", |i| &after_scheme[i..]);
        if !(path.is_empty() || path == "/") {
            return Err(bad("must be an origin, without path, query or fragment"));
        }
        if after_scheme.contains('@') {
            return Err(bad("must not carry user information"));
        }
        let origin = Origin::of(&candidate)
            .ok_or_else(|| bad("is not an origin like https://api.example.com"))?;
        if !origin.https && (wildcard || !origin.is_loopback()) {
            return Err(bad(
                "uses plain http:// off loopback: the token would travel in clear text",
            ));
        }
        if wildcard && !origin.host.contains('.') {
            return Err(bad("has a wildcard over a top-level domain"));
        }
        Ok(Pattern { origin, wildcard })
    }

    fn matches(&self, o: &Origin) -> bool {
        let host_ok = if self.wildcard {
            o.host
                .strip_suffix(self.origin.host.as_str())
                .and_then(|sub| sub.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty() && sub.split('.').all(|l| !l.is_empty()))
        } else {
            o.host == self.origin.host
        };
        o.https == self.origin.https && o.port == self.origin.port && host_ok
    }
}

/// Checks the settings' API origins (so a typo fails every call the same way).
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    patterns
        .iter()
        .try_for_each(|p| Pattern::parse(p).map(drop))
}

/// Whether the access token may go to `url`: a safe transport, and one of the
/// patterns or the instance origin when there are any.
pub fn check_api_url(
    url: &str,
    patterns: &[String],
    instance_url: Option<&str>,
) -> Result<(), String> {
    let target = check_transport(url, "the request URL")?;
    let instance = instance_url.and_then(Origin::of).filter(|o| o.https);
    if patterns.is_empty() && instance.is_none() {
        return Ok(());
    }
    let allowed = patterns
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .any(|p| p.matches(&target))
        || instance.is_some_and(|i| i == target);
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{}://{}:{} is not one of the credential's API origins, so its token is not sent there",
            if target.https { "https" } else { "http" },
            target.host,
            target.port
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn allowed(patterns: &[&str], url: &str) -> bool {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        check_api_url(url, &p, None).is_ok()
    }

    #[test]
    fn exact_origins_and_subdomain_wildcards() {
        let p = ["https://api.example.com", "https://*.crm.example"];
        assert!(allowed(&p, "https://api.example.com/v1/me?x=1"));
        assert!(allowed(&p, "https://API.example.com:443/"));
        assert!(allowed(&p, "https://eu1.crm.example/data"));
        assert!(allowed(&p, "https://a.b.crm.example/"));
        for url in [
            "https://crm.example/",
            "https://evilcrm.example/",
            "https://api.example.com.evil/",
            "https://api.example.com:8443/",
            "http://api.example.com/",
            "https://evil.example/?https://api.example.com",
            "https://api.example.com@evil.example/",
            "https://a..crm.example/",
            "https://api.example.com\\@evil.example/",
            "https://%61pi.example.com/",
        ] {
            assert!(!allowed(&p, url), "{url}");
        }
    }

    #[test]
    fn unbound_still_needs_a_safe_transport() {
        assert!(allowed(&[], "https://anywhere.example/"));
        assert!(allowed(&[], "http://127.0.0.1:8080/x"));
        assert!(allowed(&[], "http://[::1]:8080/x"));
        for url in [
            "http://api.example.com/",
            "http://127.0.0.1.evil.example/",
            "ftp://127.0.0.1/",
            "http://x\\@127.0.0.1/",
            "https:///nohost",
        ] {
            assert!(!allowed(&[], url), "{url}");
        }
    }

    #[test]
    fn patterns_that_cannot_be_meant_are_refused() {
        for bad in [
            "api.example.com",
            "https://api.example.com/v1",
            "https://user@api.example.com",
            "http://api.example.com",
            "http://*.example.com",
            "https://*.com",
            "ftp://api.example.com",
        ] {
            assert!(check_patterns(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(check_patterns(&["http://127.0.0.1:8080".into()]).is_ok());
        assert!(check_patterns(&["https://api.example.com/".into()]).is_ok());
    }

    #[test]
    fn an_instance_url_adds_its_https_origin_only() {
        let p = vec!["https://login.salesforce.com".to_string()];
        let i = Some("https://eu42.my.salesforce.com");
        assert!(check_api_url("https://eu42.my.salesforce.com/services/data", &p, i).is_ok());
        assert!(check_api_url("https://eu43.my.salesforce.com/", &p, i).is_err());
        assert!(check_api_url("http://127.0.0.2/steal", &p, Some("http://127.0.0.2")).is_err());
    }

    /// The guest may refuse more than the Rust host's parser, never accept a
    /// URL that parser sends to another origin.
    #[test]
    fn never_looser_than_the_url_crate() {
        for url in [
            "https://api.example.com\\@evil.example/",
            "https://api.example.com:443@evil.example/",
            "https://evil.example#@api.example.com/",
            "https://evil.example?@api.example.com/",
            "https://API.EXAMPLE.COM./x",
            "https://[::1]:443/",
            "HTTPS://api.example.com/",
        ] {
            let ours = Origin::of(url);
            let theirs = url::Url::parse(url).ok();
            if let (Some(o), Some(u)) = (ours, theirs) {
                let host = u.host_str().unwrap_or("").trim_matches(['[', ']']);
                assert_eq!(o.host, host.to_ascii_lowercase(), "{url}");
                assert_eq!(Some(o.port), u.port_or_known_default(), "{url}");
            }
        }
    }
}
