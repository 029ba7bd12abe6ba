//! Who may use the credential, and for what: the checks an incoming request
//! passes before the credential is touched or anything is sent. A caller
//! presents `Authorization: Bearer <secret>`; the configuration holds only
//! the secret's SHA-256, compared in constant time. The `Host` must be one
//! configured (a DNS-rebinding page sends its own), the method and the path
//! ones allowed, and the path may not climb (`..`, also percent-encoded) or
//! hide a separator (`%2f`, `%5c`, `\`): such paths are refused, not
//! rewritten, so what is checked is what the upstream sees.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use sha2::{Digest, Sha256};

/// A SHA-256 as configured: 64 hex digits.
pub type Hash = [u8; 32];

pub fn parse_hash(hex: &str) -> Option<Hash> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// SHA-256 of the empty string: never a usable secret (`bearer` refuses an
/// empty one), so configuring it is refused.
pub const EMPTY_SECRET: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The bearer secret of an `Authorization` value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let secret = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

/// Whether `secret` hashes to one of `allowed`. Every byte of every hash is
/// compared whatever matches, so the time says nothing about the secret.
pub fn secret_matches(secret: &str, allowed: &[Hash]) -> bool {
    let presented: Hash = Sha256::digest(secret.as_bytes()).into();
    let mut any = 0u8;
    for hash in allowed {
        let mut diff = 0u8;
        for (a, b) in presented.iter().zip(hash) {
            diff |= a ^ b;
        }
        any |= u8::from(core::hint::black_box(diff) == 0);
    }
    any == 1
}

/// `authority` is one of `allowed` (`host` admits any port; `host:port`
/// that port only). Case-insensitive.
pub fn host_allowed(authority: &str, allowed: &[String]) -> bool {
    let host = host_part(authority);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(authority) || a.eq_ignore_ascii_case(host))
}

/// `host` of `host[:port]` (an IPv6 literal keeps its brackets); the whole
/// authority when what follows the host is not `:digits` (so `[::1]x` is
/// not `[::1]`).
fn host_part(authority: &str) -> &str {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) if authority[i + 1..].strip_prefix(':').is_some_and(digits) => &authority[..=i],
            _ => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && digits(p) => h,
        _ => authority,
    }
}

/// Why a path is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadPath {
    /// Not a path, or it holds what parsers read differently.
    Malformed(&'static str),
    /// Not under an allowed prefix.
    NotAllowed,
}

/// Checks the request target (`/path?query`): an absolute path with no dot
/// segment as any common server may read one, no encoded `/` or `\`, no
/// backslash, NUL or control character, no broken percent-encoding, under
/// one of `prefixes` (at a segment boundary: `/v1` admits `/v1` and `/v1/x`,
/// not `/v1x`).
pub fn check_path(target: &str, prefixes: &[String]) -> Result<(), BadPath> {
    let path = target.split('?').next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(BadPath::Malformed("the request target must be a path"));
    }
    if path.contains(|c: char| c == '\\' || c.is_control() || c.is_whitespace()) {
        return Err(BadPath::Malformed(
            "the path holds a backslash or a control character",
        ));
    }
    for segment in path.split('/') {
        check_segment(segment)?;
    }
    let under = |prefix: &String| {
        let p = prefix.trim_end_matches('/');
        p.is_empty()
            || path == p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if prefixes.iter().any(under) {
        Ok(())
    } else {
        Err(BadPath::NotAllowed)
    }
}

/// Refuses a segment that some upstream reads as `.` or `..`, or as holding
/// a separator: the segment as the laxest common server sees it is decoded
/// until no escape is left (double encoding), must be UTF-8 (no overlong
/// dots), ends at `;` (path parameters: Tomcat's `..;`) or at a decoded `?`
/// or `#`, loses surrounding whitespace, and counts full-width and leader
/// dots as dots. A segment of dots alone is refused (Windows trims trailing
/// dots, so `...` too).
fn check_segment(segment: &str) -> Result<(), BadPath> {
    let raw = segment.as_bytes();
    // A `%` without two hex digits: servers disagree on what it means.
    if raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && !raw.get(i..i + 3).is_some_and(is_escape))
    {
        return Err(BadPath::Malformed(
            "the path holds a broken percent-encoding",
        ));
    }
    let mut bytes = percent_decode(raw);
    let mut rounds = 1;
    while bytes.windows(3).any(is_escape) {
        rounds += 1;
        if rounds > 4 {
            return Err(BadPath::Malformed("the path is encoded too many times"));
        }
        bytes = percent_decode(&bytes);
    }
    if bytes
        .iter()
        .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return Err(BadPath::Malformed(
            "the path holds an encoded separator, NUL or control character",
        ));
    }
    let text = core::str::from_utf8(&bytes)
        .map_err(|_| BadPath::Malformed("the path is not UTF-8 once decoded"))?;
    let read = text.split([';', '?', '#']).next().unwrap_or("").trim();
    let dot = |c: char| matches!(c, '.' | '\u{FF0E}' | '\u{2024}' | '\u{FE52}');
    if !read.is_empty() && read.chars().all(dot) {
        return Err(BadPath::Malformed("the path holds a dot segment"));
    }
    Ok(())
}

/// `%XX` with two hex digits.
fn is_escape(w: &[u8]) -> bool {
    w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()
}

/// One round of percent-decoding; a `%` without two hex digits stays as it
/// is (a decoded one, such as `100%25`'s).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s.get(i..i + 3).is_some_and(is_escape) {
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(digit(s[i + 1]) * 16 + digit(s[i + 2]));
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// End-to-end request headers forwarded by default: content negotiation,
/// conditionals, ranges, tracing. Nothing that identifies the caller
/// (cookies, credentials, `Forwarded`, `X-Forwarded-*`).
pub const FORWARDED_BY_DEFAULT: [&str; 20] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-language",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "pragma",
    "prefer",
    "range",
    "user-agent",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "x-request-id",
];

/// Headers never forwarded, whatever is configured: credentials.
pub const NEVER_FORWARDED: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

/// The caller's headers that go upstream: those on the allow-list
/// (`extra` adds names), minus hop-by-hop ones and those named in
/// `connection`.
pub fn forwarded_headers(
    headers: Vec<(String, String)>,
    extra: &[String],
) -> Vec<(String, String)> {
    let named = rekey_edge_rt::body::connection_named(&headers);
    headers
        .into_iter()
        .filter(|(name, _)| {
            let allowed = FORWARDED_BY_DEFAULT
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
                || extra.iter().any(|n| n.eq_ignore_ascii_case(name));
            allowed
                && !NEVER_FORWARDED.iter().any(|n| n.eq_ignore_ascii_case(name))
                && !rekey_edge_rt::body::is_connection_header(name, &named)
        })
        .collect()
}

/// Methods allowed when none are configured.
pub const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Never forwarded, whatever is configured: a tunnel, or a request echoed
/// back with the credential in it.
pub fn never_allowed(method: &str) -> bool {
    method.eq_ignore_ascii_case("CONNECT") || method.eq_ignore_ascii_case("TRACE")
}

pub fn method_allowed(method: &str, allowed: &[String]) -> bool {
    !never_allowed(method) && allowed.iter().any(|m| m == method)
}

/// The configured names, lower case, checked: no credential, no hop-by-hop.
pub fn forward_list(names: Vec<String>) -> Result<Vec<String>, String> {
    names
        .into_iter()
        .map(|n| {
            let n = n.to_ascii_lowercase();
            if NEVER_FORWARDED.contains(&n.as_str()) {
                Err(alloc::format!(
                    "REKEY_FORWARD_HEADERS may not name the credential header {n}"
                ))
            } else if rekey_edge_rt::body::is_hop_by_hop(&n) {
                Err(alloc::format!(
                    "REKEY_FORWARD_HEADERS may not name the hop-by-hop header {n}"
                ))
            } else {
                Ok(n.to_string())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn all() -> Vec<String> {
        vec!["/".into()]
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_refused() {
        for bad in [
            "/../x",
            "/a/../b",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2e/b",
            "/a/./b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a/%2e",
            "/a%00",
            "x",
            "",
            "/a/..;/b",
            "/a/.;x",
            "/a/%2e%2e;x/b",
            "/a/%252e%252e/b",
            "/a/%25252e%25252e/b",
            "/a%252fb",
            "/a/..%3f/b",
            "/a/..%23",
            "/a/..%20/b",
            "/a/%20..",
            "/a/%c0%ae%c0%ae/b",
            "/a/%ef%bc%8e%ef%bc%8e/b",
            "/a/%u002e%u002e/b",
            "/a/x%zz",
            "/a/x%",
            "/a/x%2",
            "/a/...",
            "/a/%0d%0ax",
            "/a/%2525252525",
        ] {
            assert!(
                matches!(check_path(bad, &all()), Err(BadPath::Malformed(_))),
                "{bad}"
            );
        }
        for good in [
            "/",
            "/a/b",
            "/a/.b",
            "/a/b.",
            "/a?x=/../y",
            "/%41",
            "/a;b",
            "/a/.well-known",
            "/a/100%25",
            "/a/caf%C3%A9",
            "/a/a..b",
            "/a/..b;c",
            "/a/%2e%2e.x",
        ] {
            assert_eq!(check_path(good, &all()), Ok(()), "{good}");
        }
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let p = vec!["/v1".to_string(), "/status/".to_string()];
        assert_eq!(check_path("/v1", &p), Ok(()));
        assert_eq!(check_path("/v1/me?x=1", &p), Ok(()));
        assert_eq!(check_path("/status/x", &p), Ok(()));
        assert_eq!(check_path("/v1x", &p), Err(BadPath::NotAllowed));
        assert_eq!(check_path("/v2/me", &p), Err(BadPath::NotAllowed));
    }

    #[test]
    fn secrets_compare_by_hash() {
        let h: Hash = Sha256::digest(b"s3cret").into();
        assert!(secret_matches("s3cret", &[h]));
        assert!(!secret_matches("s3cret!", &[h]));
        assert!(!secret_matches("s3cret", &[]));
        let hex: String = h.iter().map(|b| alloc::format!("{b:02x}")).collect();
        assert_eq!(parse_hash(&hex), Some(h));
        assert_eq!(parse_hash(&hex.to_uppercase()), Some(h));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(EMPTY_SECRET, <Hash>::from(Sha256::digest(b"")));
        assert_eq!(bearer("Bearer  x "), Some("x"));
        assert_eq!(bearer("bearer x"), Some("x"));
        assert_eq!(bearer("Basic x"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn hosts_with_and_without_ports() {
        let allowed = vec![
            "127.0.0.1".to_string(),
            "api.local:8443".to_string(),
            "[::1]".to_string(),
        ];
        assert!(host_allowed("127.0.0.1:5000", &allowed));
        assert!(host_allowed("127.0.0.1", &allowed));
        assert!(host_allowed("API.local:8443", &allowed));
        assert!(!host_allowed("api.local:8444", &allowed));
        assert!(!host_allowed("api.local", &allowed));
        assert!(host_allowed("[::1]:80", &allowed));
        assert!(host_allowed("[::1]", &allowed));
        assert!(!host_allowed("[::1]evil.example", &allowed));
        assert!(!host_allowed("[::1]:x", &allowed));
        assert!(!host_allowed("[::1]]", &allowed));
        assert!(!host_allowed("evil.example", &allowed));
        assert!(!host_allowed("127.0.0.1.evil.example", &allowed));
    }

    #[test]
    fn only_allowed_headers_travel() {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        let sent = forwarded_headers(
            vec![
                h("accept", "a"),
                h("cookie", "c"),
                h("x-api-key", "k"),
                h("forwarded", "f"),
                h("x-forwarded-for", "1.2.3.4"),
                h("connection", "x-hop, accept-language"),
                h("x-hop", "1"),
                h("accept-language", "en"),
                h("keep-alive", "5"),
                h("x-custom", "kept"),
                h("authorization", "Bearer caller"),
            ],
            &["x-custom".to_string(), "x-hop".to_string()],
        );
        assert_eq!(sent, vec![h("accept", "a"), h("x-custom", "kept")]);
        assert!(forward_list(vec!["Cookie".into()]).is_err());
        assert!(forward_list(vec!["connection".into()]).is_err());
        assert_eq!(
            forward_list(vec!["X-Forwarded-For".into()]).unwrap(),
            vec!["x-forwarded-for"]
        );
    }

    #[test]
    fn connect_and_trace_are_never_allowed() {
        let m = vec![
            "GET".to_string(),
            "CONNECT".to_string(),
            "TRACE".to_string(),
        ];
        assert!(method_allowed("GET", &m));
        assert!(!method_allowed("CONNECT", &m));
        assert!(!method_allowed("TRACE", &m));
        assert!(!method_allowed("get", &m));
    }
}
