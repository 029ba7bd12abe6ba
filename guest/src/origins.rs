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
#[derive(Clone, Debug, PartialEq, Eq)]
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
            // An IPv6 address, then nothing or `:port`: Python's urlsplit
            // reads `[::1]x:8080` as port 8080, where this read 80.
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                let ipv6 = host.contains(':')
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ipv6 || !(after.is_empty() || after.starts_with(':')) {
                    return None;
                }
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
        // An empty label (`a..example.com`, or the trailing dot of
        // `localhost.`) is a name resolvers and pattern matchers read
        // differently: refused.
        let host = host.to_ascii_lowercase();
        if host.is_empty() || (!host.contains(':') && host.split('.').any(str::is_empty)) {
            return None;
        }
        if !host.contains(':') && ends_in_a_number(&host) && !is_dotted_quad(&host) {
            return None;
        }
        Some(Origin { https, host, port })
    }

    /// Whether the host is a loopback address written as one (`127.x.y.z`
    /// in plain decimal, `::1`), or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.is_literal_loopback() || self.host == "localhost"
    }

    /// Whether the host is a loopback address written as one: `127.x.y.z` in
    /// plain decimal, or `::1`. A name (`localhost`) is not: what it
    /// resolves to is up to the machine's configuration.
    pub fn is_literal_loopback(&self) -> bool {
        let octets: Vec<&str> = self.host.split('.').collect();
        let ipv4 = octets.len() == 4
            && octets[0] == "127"
            && octets
                .iter()
                .all(|o| !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit()));
        ipv4 || self.host == "::1"
    }

    /// Whether the host is an IP address (IPv6, or four decimal labels).
    fn is_ip(&self) -> bool {
        self.host.contains(':')
            || (self.host.split('.').count() == 4
                && self.host.bytes().all(|b| b == b'.' || b.is_ascii_digit()))
    }
}

/// Whether WHATWG URL parsers read `host` as an IPv4 address: its last
/// label is decimal or `0x` hex (`127.1`, `2130706433`, `0x7f.1`, `a.1`),
/// which they parse in octal, hex or as one number, or refuse.
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .map(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex.unwrap_or_else(|| last.bytes().all(|b| b.is_ascii_digit()))
}

/// Four decimal octets, 0 to 255, none with a leading zero: the one IPv4
/// form every parser reads as the same address.
fn is_dotted_quad(host: &str) -> bool {
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.bytes().all(|b| b.is_ascii_digit())
                && !(o.len() > 1 && o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|n| n <= 255)
        })
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

/// Refuses a URL that would carry a secret in clear text, to someone named in
/// its user information, or that no parser reads the same way.
pub fn check_transport(url: &str, what: &str) -> Result<Origin, String> {
    let origin = Origin::of(url).ok_or_else(|| {
        format!(
            "{what} is not an absolute http(s) URL with a plain host (no %, \\, spaces or empty labels)"
        )
    })?;
    if authority(url).contains('@') {
        return Err(format!("{what} must not carry user information (user@)"));
    }
    if !origin.https && !origin.is_literal_loopback() {
        return Err(format!(
            "{what} must be https:// (http:// only on a loopback address such as 127.0.0.1 or [::1]): \
             the token would travel in clear text"
        ));
    }
    Ok(origin)
}

/// A caller's `Host` header must name the URL's own origin (any case, the
/// default port written or not): the bearer token is for that origin only.
pub fn check_host_header(url: &str, headers: &[(String, String)]) -> Result<(), String> {
    let Some(target) = Origin::of(url) else {
        return Ok(()); // refused by the URL check before this
    };
    let scheme = if target.https { "https://" } else { "http://" };
    for (_, value) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        let named = Origin::of(&format!("{scheme}{}/", value.trim()));
        if named.as_ref() != Some(&target) {
            return Err(
                "the request's Host header names another site than its URL: the token is sent only to the URL's origin"
                    .into(),
            );
        }
    }
    Ok(())
}

/// What follows the scheme, up to the path, query or fragment.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// The explicit "any origin" entry of `api-origins`.
pub const ANY: &str = "*";

/// One API origin pattern.
struct Pattern {
    origin: Origin,
    wildcard: bool,
}

/// `text` in double quotes, for settings named in errors: printable ASCII as
/// `{:?}` shows it, quotes and backslashes escaped, anything else (`\n`
/// too) as `\u{…}`, so no control or bidi character reaches a terminal.
/// `{:?}` itself would bring in the Unicode printable tables: about 4 KB.
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            // Controls, bidi overrides, look-alikes.
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.push('"');
    out
}

impl Pattern {
    fn parse(text: &str, what: &str) -> Result<Pattern, String> {
        let (wildcard, candidate) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_string()),
        };
        let bad = |why: &str| format!("{what} {} {why}", quoted(text));
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
        let origin = Origin::of(&candidate).ok_or_else(|| {
            bad("is not an origin like https://api.example.com (no empty labels, %, \\ or spaces)")
        })?;
        if origin.host.contains('*') {
            return Err(bad("may only start with `*.` (a wildcard for subdomains)"));
        }
        if !origin.https && (wildcard || !origin.is_literal_loopback()) {
            return Err(bad(
                "uses plain http:// off a loopback address: the token would travel in clear text",
            ));
        }
        // `*.com` would match every site under a top-level domain; public
        // suffixes such as `co.uk` need a list the guest cannot carry (hosts
        // with one refuse them at add/set).
        if wildcard && (origin.host.split('.').count() < 2 || origin.is_ip()) {
            return Err(bad(
                "has a wildcard over fewer than two labels (e.g. https://*.com): it would match unrelated sites",
            ));
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

/// Where a credential's access token may go.
pub struct Binding<'a> {
    /// `api-origins`: patterns, or the single entry [`ANY`].
    pub api: &'a [String],
    /// `instance-url-origins`: what the token set's `instance_url` must match.
    pub instance: &'a [String],
}

impl Binding<'_> {
    /// Checks every pattern, and that the credential is bound (or says `*`),
    /// so a typo or an unbound credential fails every call the same way.
    pub fn check(&self) -> Result<(), String> {
        if self.api.iter().any(|p| p == ANY) {
            if self.api.len() > 1 {
                return Err(format!(
                    "API origin \"{ANY}\" (any origin) must be the only one, not one of several"
                ));
            }
        } else {
            self.api
                .iter()
                .try_for_each(|p| Pattern::parse(p, "API origin").map(drop))?;
        }
        self.instance
            .iter()
            .try_for_each(|p| Pattern::parse(p, "instance URL origin").map(drop))?;
        Ok(())
    }

    /// Refuses an unbound credential: a token is bound before it is used.
    pub fn require_bound(&self) -> Result<(), String> {
        if self.api.is_empty() && self.instance.is_empty() {
            return Err(UNBOUND.into());
        }
        Ok(())
    }

    /// The origin of `instance_url` when it may be used: a safe transport
    /// matching one of the instance patterns. Otherwise none: an
    /// `instance_url` never unbinds or widens anything.
    pub fn instance_origin(&self, instance_url: Option<&str>) -> Option<Origin> {
        let origin = check_transport(instance_url?, "instance_url").ok()?;
        self.instance
            .iter()
            .filter_map(|p| Pattern::parse(p, "").ok())
            .any(|p| p.matches(&origin))
            .then_some(origin)
    }

    /// Whether the access token may go to `url`: a safe transport, and one of
    /// the API patterns (any, for `*`), or the adopted `instance_url` origin.
    pub fn check_api_url(&self, url: &str, instance_url: Option<&str>) -> Result<(), String> {
        let target = check_transport(url, "the request URL")?;
        if self.api.len() == 1 && self.api[0] == ANY {
            return Ok(());
        }
        let allowed = self
            .api
            .iter()
            .filter_map(|p| Pattern::parse(p, "").ok())
            .any(|p| p.matches(&target))
            || self.instance_origin(instance_url).as_ref() == Some(&target);
        if allowed {
            return Ok(());
        }
        Err(format!(
            "{}://{}:{} is not one of the credential's API origins, so its token is not sent there{}",
            if target.https { "https" } else { "http" },
            target.host,
            target.port,
            self.instance_note(instance_url)
        ))
    }

    /// Why the token set's `instance_url` added no origin, where the settings
    /// would use one: the refusal is where a user meets an ignored
    /// `instance_url`, so it says so. The URL itself is not repeated (it is
    /// the token endpoint's text).
    fn instance_note(&self, instance_url: Option<&str>) -> &'static str {
        if self.instance.is_empty() {
            ""
        } else if instance_url.is_none() {
            "; the token set has no instance_url"
        } else if self.instance_origin(instance_url).is_none() {
            "; the token set's instance_url was ignored: it is not https (or http on a literal \
             loopback address) or matches none of the credential's instance URL origins"
        } else {
            ""
        }
    }
}

/// Why unbound settings are refused, and how to bind them.
pub const UNBOUND: &str = "the credential is not bound to API origins, so its token could go anywhere: \
     bind it (rekey: `rekey credential set NAME --api-origin https://api.example.com`; Node: \
     `apiOrigins`; Python: `api_origins`), or allow any https origin explicitly with `*` \
     (rekey: `--any-api-origin`)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_is_what_debug_shows_for_printable_ascii_and_escapes_the_rest() {
        for text in ["https://a.example", "*", "say \"hi\" \\ there", ""] {
            assert_eq!(quoted(text), std::format!("{text:?}"), "{text:?}");
        }
        assert_eq!(
            quoted("\t\n\0\u{7f}é\u{85}\u{202e}x"),
            r#""\u{9}\u{a}\u{0}\u{7f}\u{e9}\u{85}\u{202e}x""#
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn allowed(patterns: &[&str], url: &str) -> bool {
        let api = strings(patterns);
        Binding {
            api: &api,
            instance: &[],
        }
        .check_api_url(url, None)
        .is_ok()
    }

    fn check_patterns(patterns: &[String]) -> Result<(), String> {
        Binding {
            api: patterns,
            instance: &[],
        }
        .check()
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
    fn unbound_is_refused_and_star_is_any_over_a_safe_transport() {
        let none = Binding {
            api: &[],
            instance: &[],
        };
        assert!(none.check().is_ok());
        let why = none.require_bound().unwrap_err();
        assert!(why.contains("--api-origin") && why.contains("`*`"), "{why}");
        assert!(allowed(&["*"], "https://anywhere.example/"));
        assert!(allowed(&["*"], "http://127.0.0.1:8080/x"));
        assert!(allowed(&["*"], "http://[::1]:8080/x"));
        for url in [
            "http://api.example.com/",
            "http://localhost:8080/x",
            "http://LOCALHOST:8080/x",
            "http://127.0.0.1.evil.example/",
            "ftp://127.0.0.1/",
            "http://x\\@127.0.0.1/",
            "http://x%5C@127.0.0.1/",
            "https://user@anywhere.example/",
            "https://anywhere.example\t/",
            "https://a..example.com/",
            "https:///nohost",
        ] {
            assert!(!allowed(&["*"], url), "{url}");
        }
        // `*` is the whole list or nothing; never an instance pattern.
        assert!(check_patterns(&strings(&["*", "https://api.example.com"])).is_err());
        let star = strings(&["*"]);
        let b = Binding {
            api: &[],
            instance: &star,
        };
        assert!(b.check().is_err());
    }

    #[test]
    fn wildcards_need_two_labels_and_no_label_is_empty() {
        for bad in [
            "https://*.com",
            "https://*..example.com",
            "https://a..b",
            "https://*.example..com",
            "https://api.example.com.",
            "https://*.127.0.0.1",
            "https://*.[::1]",
            "https://*",
            "https://*.",
        ] {
            assert!(check_patterns(&strings(&[bad])).is_err(), "{bad}");
        }
        assert!(check_patterns(&strings(&["https://*.example.com"])).is_ok());
        // Public suffixes pass here (the guest carries no list; hosts that
        // have one refuse them at add/set): two labels are the structural rule.
        assert!(check_patterns(&strings(&["https://*.co.uk"])).is_ok());
        assert!(!allowed(
            &["https://*.example.com"],
            "https://a..example.com/"
        ));
        assert!(!allowed(
            &["https://*.example.com"],
            "https://.example.com/"
        ));
        assert!(!allowed(
            &["https://*.example.com"],
            "https://a.example.com./"
        ));
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
    fn a_bracketed_host_is_an_ipv6_address_and_nothing_else() {
        let host = |url: &str| Origin::of(url).map(|o| (o.host, o.port));
        // Dotted IPv4 inside IPv6 is an address; hex digits, colons and dots
        // are all a bracket may hold, and a colon must be among them.
        assert_eq!(
            host("http://[::ffff:127.0.0.1]:8080/"),
            Some(("::ffff:127.0.0.1".into(), 8080))
        );
        for not_ipv6 in [
            "http://[abc]/",
            "http://[127.0.0.1]/",
            "http://[::g]/",
            "http://[::1]x/",
        ] {
            assert_eq!(host(not_ipv6), None, "{not_ipv6}");
        }
    }

    #[test]
    fn a_refusal_says_when_the_instance_url_was_ignored() {
        let api = strings(&["https://login.salesforce.com"]);
        let sf = strings(&["https://*.my.salesforce.com"]);
        let b = Binding {
            api: &api,
            instance: &sf,
        };
        let refusal = |i| b.check_api_url("https://other.example/", i).unwrap_err();
        for ignored in [
            "https://evil.example",
            "http://eu42.my.salesforce.com",
            "%zz",
        ] {
            let e = refusal(Some(ignored));
            assert!(e.contains("instance_url was ignored"), "{e}");
            assert!(
                !e.contains(ignored),
                "the token endpoint's text is not repeated: {e}"
            );
        }
        assert!(refusal(None).contains("has no instance_url"));
        // Adopted: the refusal of another URL says nothing of it.
        let adopted = refusal(Some("https://eu42.my.salesforce.com"));
        assert!(!adopted.contains("instance_url"), "{adopted}");
        // No instance patterns: instance_url plays no part, and is not named.
        let plain = Binding {
            api: &api,
            instance: &[],
        };
        let e = plain
            .check_api_url("https://evil.example/", Some("https://evil.example"))
            .unwrap_err();
        assert!(!e.contains("instance_url"), "{e}");
    }

    #[test]
    fn an_instance_url_adds_its_own_origin_only_when_it_matches() {
        let api = strings(&["https://login.salesforce.com"]);
        let sf = strings(&["https://*.my.salesforce.com"]);
        let b = Binding {
            api: &api,
            instance: &sf,
        };
        let i = Some("https://eu42.my.salesforce.com");
        assert!(
            b.check_api_url("https://eu42.my.salesforce.com/services/data", i)
                .is_ok()
        );
        assert!(
            b.check_api_url("https://eu43.my.salesforce.com/", i)
                .is_err()
        );
        assert!(
            b.check_api_url("https://eu42.my.salesforce.com:8443/", i)
                .is_err()
        );
        // Ignored, never widening: plain http off loopback, another site, not
        // a URL, user information, missing.
        for instance in [
            Some("http://eu42.my.salesforce.com"),
            Some("http://127.0.0.2"),
            Some("https://evil.example"),
            Some("https://my.salesforce.com"),
            Some("not a URL"),
            Some("https://x@eu42.my.salesforce.com"),
            None,
        ] {
            for url in [
                "http://eu42.my.salesforce.com/",
                "http://127.0.0.2/steal",
                "https://evil.example/",
                "https://my.salesforce.com/",
            ] {
                assert!(
                    b.check_api_url(url, instance).is_err(),
                    "{instance:?} {url}"
                );
            }
            let home = b.check_api_url("https://login.salesforce.com/x", instance);
            assert!(home.is_ok());
        }
        // Instance patterns alone bind the credential: nothing is allowed
        // until a matching instance_url is stored; never "any".
        let b = Binding {
            api: &[],
            instance: &sf,
        };
        assert!(b.require_bound().is_ok());
        assert!(b.check_api_url("https://evil.example/", None).is_err());
        let evil = Some("https://evil.example");
        assert!(b.check_api_url("https://evil.example/", evil).is_err());
        assert!(
            b.check_api_url("https://eu42.my.salesforce.com/", i)
                .is_ok()
        );
        // On loopback, plain http may be adopted (for tests).
        let lo = strings(&["http://127.0.0.1:9"]);
        let b = Binding {
            api: &api,
            instance: &lo,
        };
        let local = Some("http://127.0.0.1:9");
        assert!(b.check_api_url("http://127.0.0.1:9/x", local).is_ok());
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
            // What follows `]` is a port or nothing; a bracket holds IPv6.
            "http://[::1]evil.example:8080/",
            "http://[::1]]:8080/",
            "http://[::1].evil/",
            "https://[api.example.com]/",
            "https://[v1.x]/",
            // A host ending in a number is an IPv4 address to WHATWG parsers
            // (octal, hex, one number) or refused by them.
            "http://127.0.0.999/",
            "http://127.0.0.010/",
            "http://127.000.000.001/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "https://api.1/",
            "https://api.0x10/",
            "https://4294967296/",
            "https://1.2.3.4.5/",
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "https://10.0.0.255/",
        ] {
            let ours = Origin::of(url);
            let theirs = url::Url::parse(url).ok();
            // What the guest reads, the url crate reads the same way.
            if let Some(o) = ours {
                let u = theirs
                    .unwrap_or_else(|| panic!("{url}: the guest reads {o:?}, url refuses it"));
                let host = u.host_str().unwrap_or("").trim_matches(['[', ']']);
                assert_eq!(o.host, host.to_ascii_lowercase(), "{url}");
                assert_eq!(Some(o.port), u.port_or_known_default(), "{url}");
            }
        }
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "https://10.0.0.255/",
        ] {
            assert!(Origin::of(url).is_some(), "{url}");
        }
    }
}
