//! DPoP (RFC 9449): sender-constrained tokens. The component builds each
//! proof; the host signs it with the credential's DPoP key (`signer`), so the
//! key never enters the sandbox.
//!
//! Every token-endpoint request carries a proof, so the server binds what it
//! issues (the access token; for public clients the refresh token too) to
//! the key. An API request with a DPoP-bound token carries a proof naming
//! that token (`ath`). A server that wants a nonce says so once per request
//! (`use_dpop_nonce`, §8 and §9); the request is sent again with it. At the
//! token endpoint that answer is a 400 before the grant is looked at, so the
//! refresh token was not presented to the grant and the resend spends it once.

use crate::assertion;
use crate::basic_auth::base64url;
use crate::effects::Signing;
use crate::http::{self, Http, Response};
use crate::rekey::oauth2::types::{Purpose, Settings, SigningAlgorithm, TransportError};
use crate::token::Form;
use alloc::format;
use alloc::string::{String, ToString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What one proof is for.
pub struct Target<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The server's latest nonce, if it asked for one.
    pub nonce: Option<&'a str>,
    /// The access token the request presents (API requests only).
    pub access_token: Option<&'a str>,
    /// Unix seconds now: the proof's `iat`.
    pub now: u64,
}

#[inline(never)]
/// The signed proof `header.claims.signature` for `target` (RFC 9449 §4.2).
pub fn proof(
    fx: &mut impl Signing,
    alg: SigningAlgorithm,
    target: &Target,
) -> Result<String, String> {
    let jwk = fx
        .dpop_public_key(alg)
        .map_err(|m| format!("the host has no usable DPoP key: {m}"))?;
    // `Value`, as everywhere in the component: another target type would
    // add a second copy of the parser (8 KB).
    let jwk = match serde_json::from_slice::<Value>(jwk.as_bytes()) {
        Ok(Value::Object(m)) if public_jwk(&m) => m,
        _ => return Err("the host's DPoP public key is not a public JWK object".into()),
    };
    let mut header = Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert("alg".into(), assertion::alg_name(alg).into());
    header.insert("jwk".into(), Value::Object(jwk));
    let mut claims = Map::new();
    let jti = assertion::jti(fx);
    claims.insert("jti".into(), jti.into());
    claims.insert("htm".into(), target.method.into());
    claims.insert("htu".into(), htu(target.url).into());
    claims.insert("iat".into(), target.now.into());
    if let Some(nonce) = target.nonce {
        claims.insert("nonce".into(), nonce.into());
    }
    if let Some(token) = target.access_token {
        claims.insert(
            "ath".into(),
            base64url(&Sha256::digest(token.as_bytes())).into(),
        );
    }
    assertion::sign_jwt(fx, alg, header, claims, assertion::Key::Dpop)
}

/// A JWK object naming its key type and carrying no private member (RFC
/// 9449 §4.2: the header's `jwk` MUST NOT contain a private key).
fn public_jwk(m: &Map<String, Value>) -> bool {
    // `d` is every asymmetric key's private member; `k` a symmetric key.
    m.get("kty").is_some_and(Value::is_string) && !m.contains_key("d") && !m.contains_key("k")
}

/// The `htu` claim: the request URL without query and fragment (§4.2).
pub fn htu(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// The server's nonce from a `DPoP-Nonce` header, when it is one (§8.1:
/// `1*NQCHAR`, printable ASCII without `"` and `\`).
pub fn nonce_of<B>(resp: &Response<B>) -> Option<&str> {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("dpop-nonce"))
        .map(|(_, v)| v.as_str())
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        })
}

/// Whether a token-endpoint answer asks for a nonce (§8: 400 with the
/// OAuth error `use_dpop_nonce`). The body is not parsed for it: with the
/// `DPoP-Nonce` header also required, a mention elsewhere costs at most the
/// one resend.
fn token_endpoint_wants_nonce(resp: &Response) -> bool {
    resp.status == 400 && resp.body.windows(16).any(|w| w == b"\"use_dpop_nonce\"")
}

/// Sends a token-endpoint request built by `build` (fresh for each sending:
/// its assertions and proof are single use), with a DPoP proof when the
/// settings have a DPoP key, and once more with the server's nonce when it
/// asks for one. An error only when something cannot be signed (nothing was
/// sent then).
///
/// `now` dates the first request; the resend is dated by `clock` (a slow
/// first answer must not leave its proof stale).
#[inline(never)]
pub fn token_exchange<F: Http + Signing>(
    fx: &mut F,
    settings: &Settings,
    purpose: Purpose,
    mut now: u64,
    form: &Form,
    clock: fn(&F) -> u64,
) -> Result<Result<Response, TransportError>, String> {
    let mut nonce: Option<String> = None;
    loop {
        let mut req = form.request(fx, settings, now)?;
        if let Some(alg) = settings.dpop {
            let target = Target {
                method: &req.method,
                url: &req.url,
                nonce: nonce.as_deref(),
                access_token: None,
                now,
            };
            let proof = proof(fx, alg, &target)?;
            req.headers.push(("dpop".into(), proof));
        }
        let answer = http::exchange(fx, purpose, &req);
        if let Ok(resp) = &answer
            && settings.dpop.is_some()
            && nonce.is_none()
            && token_endpoint_wants_nonce(resp)
            && let Some(n) = nonce_of(resp)
        {
            nonce = Some(n.to_string());
            now = clock(fx);
            continue;
        }
        return Ok(answer);
    }
}

/// Why a DPoP-bound token set cannot be used without the credential's key.
pub const NEEDS_KEY: &str = "the stored token set is DPoP-bound (token_type DPoP): the credential \
     needs its DPoP key (dpop settings)";

/// Whether the stored token set is DPoP-bound (`token_type` `DPoP`, §5).
pub fn is_bound(token_type: Option<&str>) -> bool {
    token_type.is_some_and(|t| t.eq_ignore_ascii_case("dpop"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FAKE_SIGNATURE_PREFIX, script};
    use base64::Engine as _;
    use serde_json::json;

    #[test]
    fn a_proof_names_method_url_without_query_time_nonce_and_token_hash() {
        let mut fx = script(vec![]);
        fx.dpop_key = Some(r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"BBBB"}"#.into());
        let target = Target {
            method: "GET",
            url: "https://api.example/v1/me?x=1#frag",
            nonce: Some("n-1"),
            access_token: Some("tok"),
            now: 1_000,
        };
        let p = proof(&mut fx, SigningAlgorithm::Es256, &target).unwrap();
        let parts: alloc::vec::Vec<&str> = p.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            crate::testing::jwt_part(parts[0]),
            json!({"typ": "dpop+jwt", "alg": "ES256",
                   "jwk": {"kty":"EC","crv":"P-256","x":"AAAA","y":"BBBB"}})
        );
        let claims = crate::testing::jwt_part(parts[1]);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/v1/me");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["iat"], 1_000);
        // RFC 9449 §4.2: ath = base64url(SHA-256("tok")).
        assert_eq!(claims["ath"], base64url(&Sha256::digest(b"tok")));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        assert!(sig.starts_with(FAKE_SIGNATURE_PREFIX));
        let (_, input) = fx.dpop_signed.last().unwrap();
        assert_eq!(input, format!("{}.{}", parts[0], parts[1]).as_bytes());
        // A second proof has its own jti.
        let q = proof(&mut fx, SigningAlgorithm::Es256, &target).unwrap();
        let q_claims = crate::testing::jwt_part(q.split('.').nth(1).unwrap());
        assert_ne!(q_claims["jti"], claims["jti"]);
    }

    #[test]
    fn no_key_a_private_jwk_or_a_misshapen_signature_is_an_error() {
        let target = Target {
            method: "POST",
            url: "https://as.example/token",
            nonce: None,
            access_token: None,
            now: 1_000,
        };
        let mut fx = script(vec![]);
        let e = proof(&mut fx, SigningAlgorithm::Es256, &target).unwrap_err();
        assert!(e.contains("no usable DPoP key"), "{e}");
        for bad in [
            r#"{"kty":"EC","crv":"P-256","x":"A","y":"B","d":"secret"}"#,
            r#"{"crv":"P-256"}"#,
            r#""EC""#,
            "not json",
        ] {
            fx.dpop_key = Some(bad.into());
            let e = proof(&mut fx, SigningAlgorithm::Es256, &target).unwrap_err();
            assert!(e.contains("not a public JWK"), "{bad}: {e}");
            assert!(!e.contains("secret"));
        }
        fx.dpop_key = Some(r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#.into());
        // The fake signature is 64 bytes: not an RS256 signature.
        let e = proof(&mut fx, SigningAlgorithm::Rs256, &target).unwrap_err();
        assert!(e.contains("64 bytes"), "{e}");
    }

    #[test]
    fn nonces_are_printable_ascii_without_quote_or_backslash() {
        let r = |v: &str| Response {
            status: 400,
            headers: alloc::vec![("DPoP-Nonce".into(), v.into())],
            body: alloc::vec::Vec::<u8>::new(),
        };
        assert_eq!(nonce_of(&r("eyJ7S_zG.eyJH0-Z")), Some("eyJ7S_zG.eyJH0-Z"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert_eq!(nonce_of(&r(bad)), None, "{bad:?}");
        }
        assert!(is_bound(Some("DPoP")) && is_bound(Some("dpop")));
        assert!(!is_bound(Some("Bearer")) && !is_bound(None));
        assert_eq!(htu("https://a.example/p"), "https://a.example/p");
        assert_eq!(htu("https://a.example/p#x?y"), "https://a.example/p");
    }
}
