//! Reading a Bearer challenge (RFC 6750 §3): does the API say the token lacks
//! scope (no refresh can help) rather than that it is invalid or expired?

use crate::http::Response;
use alloc::string::String;
use alloc::vec::Vec;

/// `Some(scope)` when a `WWW-Authenticate: Bearer` challenge says
/// `error="insufficient_scope"`; the inner option is the `scope` it names.
pub fn insufficient_scope<B>(resp: &Response<B>) -> Option<Option<String>> {
    resp.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .find_map(|(_, v)| {
            let params = scheme_params(v, "bearer").or_else(|| scheme_params(v, "dpop"))?;
            let error = params.iter().find(|(k, _)| k == "error")?;
            (error.1 == "insufficient_scope").then(|| {
                params
                    .into_iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v)
            })
        })
}

/// Whether a `WWW-Authenticate: DPoP` challenge says `error="use_dpop_nonce"`
/// (RFC 9449 §9): the resource server wants a proof with its nonce.
pub fn dpop_nonce_wanted<B>(resp: &Response<B>) -> bool {
    resp.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .filter_map(|(_, v)| scheme_params(v, "dpop"))
        .any(|params| {
            params
                .iter()
                .any(|(k, v)| k == "error" && v == "use_dpop_nonce")
        })
}

/// The auth-params of the `scheme` challenge (lower case) in one header value
/// (RFC 9110 §11.6.1: `scheme [token68 / #auth-param]`, challenges separated
/// by commas). Names are lower-cased; quoted values are unescaped.
fn scheme_params(value: &str, scheme: &str) -> Option<Vec<(String, String)>> {
    let mut tokens = Tokens {
        rest: value.as_bytes(),
    };
    let mut in_scheme = false;
    let mut params = Vec::new();
    while let Some(word) = tokens.word() {
        if tokens.eat(b'=') {
            let val = tokens.value()?;
            if in_scheme {
                params.push((word.to_ascii_lowercase(), val));
            }
        } else {
            // A bare word starts a new challenge (the scheme).
            if in_scheme {
                break;
            }
            in_scheme = word.eq_ignore_ascii_case(scheme);
        }
        tokens.eat(b',');
    }
    in_scheme.then_some(params)
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
    fn quoted_values_are_unescaped_and_names_and_schemes_case_folded() {
        for (c, expected) in [
            (r#"Bearer error="insufficient\_scope""#, Some(None)),
            (r#"Bearer error="\insufficient_scope""#, Some(None)),
            (
                r#"BEARER ERROR = "insufficient_scope" , Scope = "\"q\" \\ r""#,
                Some(Some(r#""q" \ r"#)),
            ),
            (
                "Bearer\terror=insufficient_scope,\tscope=a/b",
                Some(Some("a/b")),
            ),
            (
                "Bearer ,, error=insufficient_scope,,scope=x",
                Some(Some("x")),
            ),
            (
                r#"Bearer scope="", error="insufficient_scope""#,
                Some(Some("")),
            ),
            // A value that is not a token or a quoted string voids the header.
            (r#"Bearer error=insufficient_scope, scope=(x)"#, None),
            (r#"Bearer scope=(x), error=insufficient_scope"#, None),
            (r#"Bearer error="#, None),
            (r#"Bearer error="insufficient_scope\"#, None),
            // The scheme is a whole word, and parameters belong to their scheme.
            (r#"Bearerx error="insufficient_scope""#, None),
            (
                r#"Basic error="insufficient_scope", Bearer realm="r""#,
                None,
            ),
            (
                r#"Basic realm="x", Bearer error="insufficient_scope""#,
                Some(None),
            ),
            // "error" and "scope" exactly.
            (r#"Bearer errors="insufficient_scope""#, None),
            (r#"Bearer error="insufficient_scopes""#, None),
            (
                r#"Bearer error="insufficient_scope", scopes="x""#,
                Some(None),
            ),
        ] {
            assert_eq!(
                insufficient_scope(&resp(c)),
                expected.map(|s| s.map(String::from)),
                "{c}"
            );
        }
        // Only WWW-Authenticate carries challenges, and any one of several may.
        let mut r = resp(r#"Bearer error="invalid_token""#);
        r.headers[0].0 = "Proxy-Authenticate".into();
        r.headers.push((
            "x-www-authenticate".into(),
            r#"Bearer error="insufficient_scope""#.into(),
        ));
        assert_eq!(insufficient_scope(&r), None);
        r.headers.push((
            "www-authenticate".into(),
            r#"Bearer error="insufficient_scope", scope="s""#.into(),
        ));
        assert_eq!(insufficient_scope(&r), Some(Some("s".into())));
    }

    /// An auth-param to render: name, value (and which characters to escape
    /// needlessly), and whether to write a token value bare.
    type Param = (String, (String, Vec<bool>), bool);

    /// A quoted-string holding `v`, with `"` and `\` escaped, and the
    /// characters `also` says escaped too (a quoted-pair may escape any).
    fn quoted(v: &str, also: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in v.chars().enumerate() {
            if c == '"' || c == '\\' || (c.is_ascii() && also.get(i).copied().unwrap_or(false)) {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    #[test]
    fn any_well_formed_challenge_list_is_read_as_written() {
        use proptest::prelude::*;
        let value = (
            "[ -~\t\u{e9}]{0,12}",
            proptest::collection::vec(any::<bool>(), 12),
        );
        let token = "[A-Za-z0-9!#$%&'*+.^_`|~/-]{1,8}";
        let param = (
            prop_oneof![
                Just("realm".to_string()),
                Just("error_description".into()),
                token
            ],
            value.clone(),
            any::<bool>(),
        );
        let params = proptest::collection::vec(param, 0..3);
        let other = (
            prop_oneof![Just("Basic"), Just("Newauth"), Just("DPoP")],
            params.clone(),
        );
        let error = prop_oneof![
            Just("insufficient_scope".to_string()),
            Just("invalid_token".to_string()),
            Just("Insufficient_Scope".to_string()),
        ];
        let sep = prop_oneof![Just(","), Just(", "), Just(" ,\t"), Just(",,")];
        let case = (
            proptest::option::of(other.clone()),
            (
                proptest::option::of(error),
                proptest::option::of(value),
                params,
            ),
            proptest::option::of(other),
            (sep, any::<bool>(), any::<bool>()),
        );
        crate::proptests::check(
            "any_well_formed_challenge_list_is_read_as_written",
            2_000,
            case,
            |(before, (error, scope, mut extra), after, (sep, upper, token68))| {
                let render = |(name, (v, also), as_token): &Param| {
                    let is_token = !v.is_empty() && v.bytes().all(is_tchar);
                    let v = if *as_token && is_token {
                        v.clone()
                    } else {
                        quoted(v, also)
                    };
                    format!("{name} = {v}")
                };
                let challenge = |scheme: &str, params: &[Param]| {
                    let params: Vec<String> = params.iter().map(render).collect();
                    format!("{scheme} {}", params.join(sep))
                };
                // Extra parameters named like the ones that matter are not extra.
                extra.retain(|(n, _, _)| {
                    !n.eq_ignore_ascii_case("error") && !n.eq_ignore_ascii_case("scope")
                });
                let mut bearer = extra.clone();
                if let Some(e) = &error {
                    bearer.push((
                        if upper {
                            "ERROR".into()
                        } else {
                            "error".into()
                        },
                        (e.clone(), vec![]),
                        true,
                    ));
                }
                if let Some((v, also)) = &scope {
                    bearer.insert(0, ("Scope".into(), (v.clone(), also.clone()), false));
                }
                let mut list = Vec::new();
                if let Some((s, p)) = &before {
                    list.push(challenge(s, p));
                }
                if token68 {
                    // A token68 challenge first: its scheme is all it shows.
                    list.push("Negotiate abc".into());
                }
                list.push(challenge(if upper { "BEARER" } else { "Bearer" }, &bearer));
                if let Some((s, p)) = &after {
                    list.push(challenge(s, p));
                }
                let header = list.join(sep);
                let expected = (error.as_deref() == Some("insufficient_scope"))
                    .then(|| scope.as_ref().map(|(v, _)| v.clone()));
                let got = insufficient_scope(&resp(&header));
                proptest::prop_assert_eq!(got, expected, "{}", header);
                Ok(())
            },
        );
    }

    #[test]
    fn finds_the_bearer_challenge_among_others() {
        let r = resp(r#"Basic realm="x", Bearer error="insufficient_scope", scope="a b""#);
        assert_eq!(insufficient_scope(&r), Some(Some("a b".into())));
        let r = resp(r#"Bearer error="insuff\"icient""#);
        assert_eq!(insufficient_scope(&r), None);
    }
}
