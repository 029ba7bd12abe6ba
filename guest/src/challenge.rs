//! Reading a Bearer challenge (RFC 6750 §3): does the API say the token lacks
//! scope (no refresh can help) rather than that it is invalid or expired?

use crate::rekey::oauth2::types::Response;
use alloc::string::String;
use alloc::vec::Vec;

/// `Some(scope)` when a `WWW-Authenticate: Bearer` challenge says
/// `error="insufficient_scope"`; the inner option is the `scope` it names.
pub fn insufficient_scope(resp: &Response) -> Option<Option<String>> {
    resp.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .find_map(|(_, v)| {
            let params = bearer_params(v)?;
            let error = params.iter().find(|(k, _)| k == "error")?;
            (error.1 == "insufficient_scope").then(|| {
                params
                    .into_iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v)
            })
        })
}

/// The auth-params of the `Bearer` challenge in one header value (RFC 9110
/// §11.6.1: `scheme [token68 / #auth-param]`, challenges separated by commas).
/// Names are lower-cased; quoted values are unescaped.
fn bearer_params(value: &str) -> Option<Vec<(String, String)>> {
    let mut tokens = Tokens {
        rest: value.as_bytes(),
    };
    let mut in_bearer = false;
    let mut params = Vec::new();
    while let Some(word) = tokens.word() {
        if tokens.eat(b'=') {
            let val = tokens.value()?;
            if in_bearer {
                params.push((word.to_ascii_lowercase(), val));
            }
        } else {
            // A bare word starts a new challenge (the scheme).
            if in_bearer {
                break;
            }
            in_bearer = word.eq_ignore_ascii_case("bearer");
        }
        tokens.eat(b',');
    }
    in_bearer.then_some(params)
}

struct Tokens<'a> {
    rest: &'a [u8],
}

impl Tokens<'_> {
    fn skip_space(&mut self) {
        while let [b' ' | b'\t' | b',', tail @ ..] = self.rest {
            self.rest = tail;
        }
    }

    /// A token (RFC 9110 tchar), after skipping spaces and empty list items.
    fn word(&mut self) -> Option<String> {
        self.skip_space();
        let n = self.rest.iter().take_while(|b| is_tchar(**b)).count();
        if n == 0 {
            return None;
        }
        let (word, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(String::from_utf8_lossy(word).into_owned())
    }

    fn eat(&mut self, b: u8) -> bool {
        while let [b' ' | b'\t', tail @ ..] = self.rest {
            self.rest = tail;
        }
        match self.rest {
            [first, tail @ ..] if *first == b => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    /// A token or a quoted-string.
    fn value(&mut self) -> Option<String> {
        while let [b' ' | b'\t', tail @ ..] = self.rest {
            self.rest = tail;
        }
        let [b'"', tail @ ..] = self.rest else {
            return self.word();
        };
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match tail.get(i)? {
                b'"' => break,
                b'\\' => {
                    out.push(*tail.get(i + 1)?);
                    i += 2;
                }
                b => {
                    out.push(*b);
                    i += 1;
                }
            }
        }
        self.rest = &tail[i + 1..];
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(challenge: &str) -> Response {
        Response {
            status: 403,
            headers: vec![("WWW-Authenticate".into(), challenge.into())],
            body: vec![],
        }
    }

    #[test]
    fn insufficient_scope_names_the_scope() {
        let r = resp(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#);
        assert_eq!(insufficient_scope(&r), Some(Some("orders:write".into())));
        let r = resp(r#"bearer error=insufficient_scope"#);
        assert_eq!(insufficient_scope(&r), Some(None));
    }

    #[test]
    fn invalid_token_or_no_error_means_refresh() {
        for c in [
            r#"Bearer error="invalid_token", error_description="expired""#,
            r#"Bearer realm="api""#,
            "Bearer",
            r#"Basic realm="insufficient_scope""#,
            // The error belongs to another scheme's challenge.
            r#"Bearer realm="a", Other error="insufficient_scope""#,
            r#"Bearer error="insufficient_scope"#, // unterminated quote
        ] {
            assert_eq!(insufficient_scope(&resp(c)), None, "{c}");
        }
    }

    #[test]
    fn finds_the_bearer_challenge_among_others() {
        let r = resp(r#"Basic realm="x", Bearer error="insufficient_scope", scope="a b""#);
        assert_eq!(insufficient_scope(&r), Some(Some("a b".into())));
        let r = resp(r#"Bearer error="insuff\"icient""#);
        assert_eq!(insufficient_scope(&r), None);
    }
}
