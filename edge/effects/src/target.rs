//! Where a request goes, parsed once by the same code that hands the parts to
//! wasi:http (scheme, authority, path-with-query), so the parts checked are the
//! parts sent. Userinfo, backslashes, percent signs and whitespace in the
//! authority are refused rather than interpreted.

use alloc::string::{String, ToString};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Lower-cased `host[:port]`.
    pub authority: String,
    /// Lower-cased host (IPv6 with its brackets).
    pub host: String,
    /// Starts with `/`; the fragment is dropped.
    pub path_with_query: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, &'static str> {
        let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err("not an http(s) URL"),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = rest[..end].to_ascii_lowercase();
        let bad =
            |c: char| c == '@' || c == '\\' || c == '%' || c.is_whitespace() || c.is_control();
        if authority.is_empty() || authority.contains(bad) {
            return Err("the URL's authority is not a plain host[:port]");
        }
        let host = host_of(&authority)?;
        let mut path_with_query = rest[end..].split('#').next().unwrap_or("").to_string();
        if path_with_query.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err("the URL's path holds whitespace");
        }
        if !path_with_query.starts_with('/') {
            path_with_query.insert(0, '/');
        }
        Ok(Target {
            https,
            authority,
            host,
            path_with_query,
        })
    }

    /// A literal loopback address, 127.0.0.0/8 or ::1: the only places plain
    /// http may carry a token or a client secret. Not `localhost`: the
    /// runtime resolves names, and this code cannot see the address it
    /// connects to.
    pub fn is_loopback(&self) -> bool {
        if self.host == "[::1]" {
            return true;
        }
        let octets: alloc::vec::Vec<&str> = self.host.split('.').collect();
        octets.len() == 4
            && octets[0] == "127"
            && octets.iter().all(|o| {
                !o.is_empty()
                    && o.len() <= 3
                    && o.bytes().all(|b| b.is_ascii_digit())
                    && o.parse::<u16>().is_ok_and(|n| n <= 255)
            })
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.path_with_query.split('?').next().unwrap_or("/")
    }

    pub fn same_origin(&self, other: &Target) -> bool {
        self.https == other.https && self.authority == other.authority
    }

    /// The same URL: origin, path and query (the guest sends the token URL
    /// exactly as configured).
    pub fn same_url(&self, other: &Target) -> bool {
        self.same_origin(other) && self.path_with_query == other.path_with_query
    }

    /// Same origin, and under `base`'s path (`/v1` admits `/v1` and `/v1/…`).
    pub fn is_under(&self, base: &Target) -> bool {
        let prefix = base.path().trim_end_matches('/');
        let path = self.path();
        self.same_origin(base)
            && (prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with('/')))
    }
}

fn host_of(authority: &str) -> Result<String, &'static str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("unclosed IPv6 bracket")?;
        (alloc::format!("[{inside}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("the URL has no host");
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the URL's port is not a number");
    }
    Ok(host)
}
