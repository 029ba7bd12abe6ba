//! The simulated key: the world's `signer` (what a host does with the
//! credential's private key) and the provider's check of what it signed.
//!
//! A signature is a keyed hash of the signing input, as long as a real one
//! (ES256: 64 bytes, `r || s`; RS256: 256 bytes, a 2048-bit modulus), so the
//! provider verifies it by recomputing it, and anything else the guest might
//! send (another input, a stale signature, the wrong length) fails.

use crate::rekey::oauth2::types::SigningAlgorithm;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The registered key (the provider's copy of the public half, in effect).
pub const KEY: &str = "sim-signing-key-1";
/// The `kid` the settings name when they name one.
pub const KID: &str = "sim-kid-1";
/// How far ahead of the provider's clock an `iat` may be (the fleet's clocks
/// are within half a second of it).
const IAT_LEEWAY_MS: u64 = 5_000;
/// Longer-lived assertions are refused (RFC 7523 §3 item 4 lets a server
/// limit `exp`; the guest's live five minutes).
const MAX_LIFETIME_S: u64 = 3_600;

/// The signature of `input` with the key.
pub fn sign(alg: SigningAlgorithm, input: &[u8]) -> Vec<u8> {
    let len = match alg {
        SigningAlgorithm::Es256 => 64,
        SigningAlgorithm::Rs256 => 256,
    };
    let mut out = Vec::with_capacity(len);
    let mut block = 0u8;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(KEY.as_bytes());
        h.update([0, block, alg as u8]);
        h.update(input);
        out.extend_from_slice(&h.finalize());
        block += 1;
    }
    out.truncate(len);
    out
}

/// What an assertion must say to be accepted.
pub struct Expect<'a> {
    pub alg: SigningAlgorithm,
    pub kid: Option<&'a str>,
    pub iss: &'a str,
    pub sub: &'a str,
    /// Any of these (the issuer or the token URL, RFC 7523 §3 item 3).
    pub audiences: &'a [&'a str],
    /// The provider's clock (simulated ms).
    pub now_ms: u64,
}

/// The claims of a signed assertion.
pub fn claims(jwt: &str) -> Result<Map<String, Value>, String> {
    let part = jwt.split('.').nth(1).ok_or("not a JWS")?;
    object(part)
}

fn object(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("not base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("not a JSON object".into()),
    }
}

/// The `jti` of an assertion, if it parses.
pub fn jti(jwt: &str) -> Option<String> {
    claims(jwt).ok()?.get("jti")?.as_str().map(Into::into)
}

/// Verifies signature, header and claims; the claims, or why not.
pub fn verify(jwt: &str, e: &Expect) -> Result<Map<String, Value>, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, body, signature] = parts[..] else {
        return Err(format!("{} parts, not a JWS", parts.len()));
    };
    let header = object(header).map_err(|m| format!("header: {m}"))?;
    let alg = match e.alg {
        SigningAlgorithm::Es256 => "ES256",
        SigningAlgorithm::Rs256 => "RS256",
    };
    if header.get("alg").and_then(Value::as_str) != Some(alg) {
        return Err(format!(
            "header alg {:?}, registered {alg}",
            header.get("alg")
        ));
    }
    if header.get("kid").and_then(Value::as_str) != e.kid {
        return Err(format!(
            "header kid {:?}, expected {:?}",
            header.get("kid"),
            e.kid
        ));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|m| format!("signature: {m}"))?;
    let input = &jwt[..header_and_body_len(jwt)];
    if signature != sign(e.alg, input.as_bytes()) {
        return Err(format!(
            "the signature ({} bytes) does not verify",
            signature.len()
        ));
    }
    let claims = object(body).map_err(|m| format!("claims: {m}"))?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let number = |k: &str| claims.get(k).and_then(Value::as_u64);
    if text("iss") != Some(e.iss) {
        return Err(format!("iss {:?}, expected {:?}", text("iss"), e.iss));
    }
    if text("sub") != Some(e.sub) {
        return Err(format!("sub {:?}, expected {:?}", text("sub"), e.sub));
    }
    if !text("aud").is_some_and(|a| e.audiences.contains(&a)) {
        return Err(format!(
            "aud {:?}, expected one of {:?}",
            text("aud"),
            e.audiences
        ));
    }
    let (Some(iat), Some(exp)) = (number("iat"), number("exp")) else {
        return Err("no iat or exp".into());
    };
    if exp.saturating_mul(1000) <= e.now_ms {
        return Err(format!(
            "expired: exp {exp}, the provider's clock {} ms",
            e.now_ms
        ));
    }
    if iat.saturating_mul(1000) > e.now_ms + IAT_LEEWAY_MS {
        return Err(format!(
            "iat {iat} is ahead of the provider's clock ({} ms)",
            e.now_ms
        ));
    }
    if exp <= iat || exp - iat > MAX_LIFETIME_S {
        return Err(format!("lifetime iat {iat} .. exp {exp}"));
    }
    if claims.contains_key("nbf") && number("nbf").is_none_or(|n| n * 1000 > e.now_ms) {
        return Err("nbf in the future".into());
    }
    if text("jti").is_none_or(|j| j.len() < 16) {
        return Err(format!("jti {:?}: 16 characters at least", text("jti")));
    }
    Ok(claims)
}

/// `header.claims`: the signing input.
fn header_and_body_len(jwt: &str) -> usize {
    jwt.rfind('.').unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &str, claims: &str, alg: SigningAlgorithm) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = URL_SAFE_NO_PAD.encode(sign(alg, input.as_bytes()));
        format!("{input}.{sig}")
    }

    #[test]
    fn the_provider_accepts_what_the_key_signed_and_nothing_else() {
        let alg = SigningAlgorithm::Es256;
        let e = Expect {
            alg,
            kid: None,
            iss: "c",
            sub: "c",
            audiences: &["http://127.0.0.1:9/token"],
            now_ms: 1_000_000,
        };
        let header = r#"{"alg":"ES256","typ":"JWT"}"#;
        let good = r#"{"iss":"c","sub":"c","aud":"http://127.0.0.1:9/token","iat":1000,"exp":1300,"jti":"0123456789abcdef"}"#;
        assert!(verify(&jwt(header, good, alg), &e).is_ok());
        assert_eq!(sign(alg, b"x").len(), 64);
        assert_eq!(sign(SigningAlgorithm::Rs256, b"x").len(), 256);
        // Another claim set under the same signature.
        let a = jwt(header, good, alg);
        let forged = jwt(header, &good.replace("1300", "1301"), alg);
        let spliced = format!(
            "{}.{}",
            &forged[..forged.rfind('.').unwrap()],
            &a[a.rfind('.').unwrap() + 1..]
        );
        assert!(verify(&spliced, &e).unwrap_err().contains("signature"));
        for (bad, why) in [
            (good.replace("1300", "5000"), "lifetime"),
            (good.replace(r#""exp":1300"#, r#""exp":1000"#), "expired"),
            (good.replace(r#""iat":1000"#, r#""iat":1006"#), "ahead"),
            (good.replace(r#""sub":"c""#, r#""sub":"d""#), "sub"),
            (good.replace(r#""iss":"c""#, r#""iss":"d""#), "iss"),
            (good.replace("/token", "/other"), "aud"),
        ] {
            let err = verify(&jwt(header, &bad, alg), &e).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let rs = jwt(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            good,
            SigningAlgorithm::Rs256,
        );
        assert!(verify(&rs, &e).unwrap_err().contains("alg"));
    }
}
