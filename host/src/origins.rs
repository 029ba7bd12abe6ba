//! Where a credential's bearer token may go: the API origins it is bound to.
//! The guest decides this for every request; the host, the sandbox's
//! boundary, checks every API request again before anything leaves, as the
//! URL parser that sends it reads the URL. Patterns are origins,
//! `https://api.example.com[:port]`, or one leading wildcard label,
//! `https://*.example.com`, which matches subdomains (not the bare domain);
//! the single entry `*` allows any origin, said explicitly. A token set's
//! `instance_url` adds exactly its own origin when it matches one of the
//! credential's instance patterns.

use url::Url;

/// The explicit "any origin" entry of `api_origins`.
pub const ANY: &str = "*";

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
    #[cfg(test)]
    fn parse(text: &str) -> Result<Pattern, String> {
        Pattern::parse_as(text, "API origin")
    }

    /// [`Pattern::parse`], its errors naming the pattern as `what`.
    fn parse_as(text: &str, what: &str) -> Result<Pattern, String> {
        let bad = |why: &str| Err(format!("{what} {text:?} {why}"));
        let (wildcard, candidate) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_owned()),
        };
        let Ok(url) = Url::parse(&candidate) else {
            return bad("is not an origin like https://api.example.com");
        };
        if !matches!(url.scheme(), "https" | "http") {
            return bad("must be https:// (or http:// on a loopback address)");
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
        if host.split('.').any(str::is_empty) {
            return bad("has an empty label");
        }
        if url.scheme() == "http" && (wildcard || !crate::http::is_loopback(&url)) {
            return bad("uses plain http:// off loopback: the token would travel in clear text");
        }
        if host.contains('*') {
            return bad("may only start with `*.` (a wildcard for subdomains)");
        }
        if wildcard
            && (host.split('.').count() < 2 || !matches!(url.host(), Some(url::Host::Domain(_))))
        {
            return bad(
                "has a wildcard over fewer than two labels (e.g. https://*.com): it would match unrelated sites",
            );
        }
        if wildcard && is_public_suffix(host) {
            return bad(
                "has a wildcard over a public suffix (e.g. https://*.co.uk, https://*.github.io): \
                 it would match sites of unrelated owners; name the registrable domain below it",
            );
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
                .and_then(|sub| sub.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty() && sub.split('.').all(|l| !l.is_empty()))
        } else {
            host == self.host
        };
        url.scheme() == self.scheme && port == self.port && host_ok
    }
}

/// Where one credential's token may go, parsed once per call.
#[derive(Clone, Debug, Default)]
pub(crate) struct Binding {
    /// `api_origins` was `*`.
    any: bool,
    patterns: Vec<Pattern>,
    /// The token set's `instance_url`, adopted (it matched an instance pattern).
    instance: Option<Url>,
}

impl Binding {
    /// From the settings' patterns and the stored token set's `instance_url`.
    pub(crate) fn new(
        api_origins: &[String],
        instance_patterns: &[String],
        instance_url: Option<&str>,
    ) -> Result<Binding, String> {
        let any = api_origins.len() == 1 && api_origins[0] == ANY;
        let patterns = if any {
            Vec::new()
        } else {
            parse_all(api_origins, "API origin")?
        };
        let instance_patterns = parse_all(instance_patterns, "instance URL origin")?;
        let instance = instance_url
            .and_then(|u| Url::parse(u).ok())
            .filter(|u| {
                (u.scheme() == "https" || (u.scheme() == "http" && is_literal_loopback(u)))
                    && u.username().is_empty()
                    && u.password().is_none()
            })
            .filter(|u| instance_patterns.iter().any(|p| p.matches(u)));
        Ok(Binding {
            any,
            patterns,
            instance,
        })
    }

    /// Whether `url` may receive the credential's token.
    pub(crate) fn allows(&self, url: &Url) -> bool {
        if self.any {
            return true;
        }
        let same_origin = |o: &Url| {
            o.scheme() == url.scheme()
                && o.host_str() == url.host_str()
                && o.port_or_known_default() == url.port_or_known_default()
        };
        self.patterns.iter().any(|p| p.matches(url))
            || self.instance.as_ref().is_some_and(same_origin)
    }
}

fn parse_all(patterns: &[String], what: &str) -> Result<Vec<Pattern>, String> {
    patterns
        .iter()
        .map(|p| Pattern::parse_as(p, what))
        .collect()
}

/// Whether `host` is itself a public suffix (ICANN or private section of the
/// list: `co.uk`, `github.io`), so anything below it has unrelated owners.
fn is_public_suffix(host: &str) -> bool {
    let is = |name: &str| {
        psl::suffix(name.as_bytes())
            .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
    };
    // Under a wildcard rule (`*.kobe.jp`) every name below `host` is a
    // suffix of its own, as the list's linter and Node's and Python's lists
    // read it: `*.kobe.jp` would match unrelated owners too.
    is(host) || is(&format!("rekey-probe.{host}"))
}

/// A loopback address written as one (a name such as `localhost` is not).
pub(crate) fn is_literal_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn allowed(patterns: &[&str], url: &str) -> bool {
        Binding::new(&strings(patterns), &[], None)
            .unwrap()
            .allows(&Url::parse(url).unwrap())
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
            // Structural: fewer than two labels under the wildcard, empty labels.
            "https://*.com",
            "https://*..example.com",
            "https://a..b",
            "https://*",
            "https://*.127.0.0.1",
            // Public suffixes (ICANN and private sections of the list).
            "https://*.co.uk",
            "https://*.github.io",
            "https://*.googleapis.com",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert!(Pattern::parse("https://*.example.co.uk").is_ok());
        // The parent of a wildcard rule (`*.kobe.jp`), not its exception.
        assert!(Pattern::parse("https://*.kobe.jp").is_err());
        assert!(Pattern::parse("https://*.city.kobe.jp").is_ok());
        // Each list's errors name the list.
        let e = Binding::new(&[], &["https://*.com".into()], None).unwrap_err();
        assert!(
            e.starts_with("instance URL origin \"https://*.com\""),
            "{e}"
        );
        let e = Binding::new(&["https://*.com".into()], &[], None).unwrap_err();
        assert!(e.starts_with("API origin"), "{e}");
        assert!(Pattern::parse("https://*.my.salesforce.com").is_ok());
        assert!(Pattern::parse("https://co.uk").is_ok(), "not a wildcard");
        assert!(!allowed(
            &["https://*.example.com"],
            "https://a..example.com/"
        ));
        assert!(Pattern::parse("http://127.0.0.1:8080").is_ok());
        assert!(Pattern::parse("https://api.example.com/").is_ok());
    }

    #[test]
    fn an_instance_url_adds_its_origin_when_it_matches_an_instance_pattern() {
        let api = strings(&["https://login.salesforce.com"]);
        let sf = strings(&["https://*.my.salesforce.com"]);
        let to = |url: &str| Url::parse(url).unwrap();
        let b = Binding::new(&api, &sf, Some("https://eu42.my.salesforce.com")).unwrap();
        assert!(b.allows(&to("https://eu42.my.salesforce.com/services/data")));
        assert!(!b.allows(&to("https://eu43.my.salesforce.com/")));
        // Not matching, or not https: ignored, never widens.
        for instance in [
            "https://evil.example",
            "http://eu42.my.salesforce.com",
            "not a URL",
        ] {
            let b = Binding::new(&api, &sf, Some(instance)).unwrap();
            if let Ok(url) = Url::parse(instance) {
                assert!(!b.allows(&url), "{instance}");
            }
            assert!(b.allows(&to("https://login.salesforce.com/x")));
        }
        let any = Binding::new(&strings(&["*"]), &[], None).unwrap();
        assert!(any.allows(&to("https://anywhere.example/")));
    }
}
