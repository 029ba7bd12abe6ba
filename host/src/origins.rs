//! Where a credential's bearer token may go: the API origins it is bound to.
//! The host checks every API request against them before anything leaves (the
//! guest decides *when* to send; the host, the sandbox's boundary, decides
//! *where*). Patterns are origins, `https://api.example.com[:port]`, or one
//! leading wildcard label, `https://*.example.com`, which matches subdomains
//! (not the bare domain).

use url::Url;

/// A parsed origin pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    scheme: String,
    /// The host, or the domain below `*.`.
    host: String,
    wildcard: bool,
    port: u16,
}

impl Pattern {
    /// Parses `scheme://host[:port]` (a trailing `/` allowed, nothing else).
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| Err(format!("API origin {text:?} {why}"));
        let (wildcard, candidate) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_owned()),
        };
        let Ok(url) = Url::parse(&candidate) else {
            return bad("is not an origin like https://api.example.com");
        };
        if !matches!(url.scheme(), "https" | "http") {
            return bad("must be https:// (or http:// on loopback)");
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return bad("must be an origin, without path, query or fragment");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return bad("must not carry user information");
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return bad("has no host");
        };
        if url.scheme() == "http" && (wildcard || !crate::http::is_loopback(&url)) {
            return bad("uses plain http:// off loopback: the token would travel in clear text");
        }
        Ok(Pattern {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            wildcard,
            port,
        })
    }

    fn matches(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host_ok = if self.wildcard {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        };
        url.scheme() == self.scheme && port == self.port && host_ok
    }
}

/// Whether `url` may receive the credential's token: it matches one of the
/// patterns, or the extra origin (a token set's `instance_url`). No patterns
/// and no extra origin: not bound, anything goes (the http rules still hold).
pub(crate) fn allows(patterns: &[Pattern], extra: Option<&Url>, url: &Url) -> bool {
    if patterns.is_empty() && extra.is_none() {
        return true;
    }
    let same_origin = |o: &Url| {
        o.scheme() == url.scheme()
            && o.host_str() == url.host_str()
            && o.port_or_known_default() == url.port_or_known_default()
    };
    patterns.iter().any(|p| p.matches(url)) || extra.is_some_and(same_origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], url: &str) -> bool {
        let patterns: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        allows(&patterns, None, &Url::parse(url).unwrap())
    }

    #[test]
    fn exact_origins_and_subdomain_wildcards() {
        let p = ["https://api.example.com", "https://*.crm.example"];
        assert!(allowed(&p, "https://api.example.com/v1/me?x=1"));
        assert!(allowed(&p, "https://API.example.com:443/"));
        assert!(allowed(&p, "https://eu1.crm.example/data"));
        assert!(allowed(&p, "https://a.b.crm.example/"));
        for url in [
            "https://crm.example/",          // the wildcard wants a subdomain
            "https://evilcrm.example/",      // not a label boundary
            "https://api.example.com.evil/", // suffix tricks
            "https://api.example.com:8443/", // another port
            "http://api.example.com/",       // another scheme
            "https://evil.example/?https://api.example.com",
            "https://api.example.com@evil.example/",
        ] {
            assert!(!allowed(&p, url), "{url}");
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
            "ftp://api.example.com",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert!(Pattern::parse("http://127.0.0.1:8080").is_ok());
        assert!(Pattern::parse("https://api.example.com/").is_ok());
    }

    #[test]
    fn an_instance_url_adds_its_origin() {
        let instance = Url::parse("https://eu42.my.salesforce.com/").unwrap();
        let p = vec![Pattern::parse("https://login.salesforce.com").unwrap()];
        assert!(allows(
            &p,
            Some(&instance),
            &Url::parse("https://eu42.my.salesforce.com/services/data").unwrap()
        ));
        assert!(!allows(
            &p,
            Some(&instance),
            &Url::parse("https://eu43.my.salesforce.com/").unwrap()
        ));
        assert!(allows(
            &[],
            None,
            &Url::parse("https://anywhere.example/").unwrap()
        ));
    }
}
