//! Signed JWT assertions as an authorization server checks them (RFC 7523
//! §3): the signature with the client's registered public key, `iss`,
//! `sub`, `aud`, `exp`, `iat` and a `jti` never seen before.

use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::Value;
use std::collections::HashSet;

/// The client's public key, from a PEM `PUBLIC KEY` (SPKI): RSA or P-256.
#[derive(Clone, Debug)]
pub enum PublicKey {
    Rs256(Vec<u8>),
    Es256(Vec<u8>),
}

const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

impl PublicKey {
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| "not a PEM PUBLIC KEY".to_string())?;
        let bad = || "not an RSA or P-256 SubjectPublicKeyInfo".to_string();
        let (spki, _) = der_item(&der, 0x30).ok_or_else(bad)?;
        let (algorithm, rest) = der_item(spki, 0x30).ok_or_else(bad)?;
        let (bits, _) = der_item(rest, 0x03).ok_or_else(bad)?;
        let key = bits.get(1..).ok_or_else(bad)?.to_vec();
        let (oid, params) = der_item(algorithm, 0x06).ok_or_else(bad)?;
        if oid == RSA_OID {
            Ok(PublicKey::Rs256(key))
        } else if oid == EC_OID && der_item(params, 0x06).map(|(c, _)| c) == Some(P256_OID) {
            Ok(PublicKey::Es256(key))
        } else {
            Err(bad())
        }
    }

    fn verify(&self, alg: &str, input: &[u8], signature: &[u8]) -> bool {
        match (self, alg) {
            (PublicKey::Rs256(k), "RS256") => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k)
                    .verify(input, signature)
                    .is_ok()
            }
            (PublicKey::Es256(k), "ES256") => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(input, signature)
                .is_ok(),
            _ => false,
        }
    }
}

/// One DER item of `tag` at the start of `der`: its content and what follows.
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *der.first()? != tag {
        return None;
    }
    let first = *der.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((der.get(start..end)?, der.get(end..)?))
}

/// What the assertion must say.
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// `None`: any non-empty subject (the JWT bearer grant's).
    pub subject: Option<&'a str>,
    /// Accepted audiences: the issuer identifier and the token endpoint.
    pub audiences: [&'a str; 2],
    pub now: u64,
}

/// Checks `jwt`; on success its `jti` is remembered (a replay is refused)
/// and the subject returned.
pub fn verify(
    jwt: &str,
    key: &PublicKey,
    expect: &Expect,
    seen: &mut HashSet<String>,
) -> Result<String, &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWS compact serialization");
    };
    let json =
        |part: &str| -> Option<Value> { serde_json::from_slice(&b64.decode(part).ok()?).ok() };
    let header = json(h).ok_or("header")?;
    let claims = json(c).ok_or("claims")?;
    let signature = b64.decode(s).map_err(|_| "signature encoding")?;
    let alg = header["alg"].as_str().ok_or("no alg")?;
    if !key.verify(alg, format!("{h}.{c}").as_bytes(), &signature) {
        return Err("bad signature");
    }
    let text = |k: &str| claims[k].as_str();
    if text("iss") != Some(expect.issuer) {
        return Err("iss");
    }
    let subject = text("sub").filter(|s| !s.is_empty()).ok_or("sub")?;
    if expect.subject.is_some_and(|want| want != subject) {
        return Err("sub");
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => expect.audiences.contains(&a.as_str()),
        Value::Array(list) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| expect.audiences.contains(&a))),
        _ => false,
    };
    if !aud_ok {
        return Err("aud");
    }
    let exp = claims["exp"].as_u64().ok_or("exp")?;
    if exp <= expect.now || exp > expect.now + 3600 {
        return Err("exp");
    }
    if claims["iat"]
        .as_u64()
        .is_none_or(|iat| iat > expect.now + 60)
    {
        return Err("iat");
    }
    let jti = text("jti").filter(|j| !j.is_empty()).ok_or("jti")?;
    if !seen.insert(jti.to_string()) {
        return Err("jti replayed");
    }
    Ok(subject.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A new P-256 key pair and its public key as a PEM SPKI.
    fn key() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        spki.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        (pair, pem)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn jwt(pair: &EcdsaKeyPair, claims: Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64.encode(sig.as_ref()))
    }

    #[test]
    fn an_assertion_is_accepted_once_and_every_wrong_claim_is_refused() {
        let (pair, pem) = key();
        let public = PublicKey::from_pem(&pem).unwrap();
        let expect = Expect {
            issuer: "client",
            subject: Some("client"),
            audiences: ["http://as", "http://as/token"],
            now: 1_000,
        };
        let good = serde_json::json!({"iss": "client", "sub": "client", "aud": "http://as",
            "iat": 1_000, "exp": 1_300, "jti": "j1"});
        let mut seen = HashSet::new();
        assert_eq!(
            verify(&jwt(&pair, good.clone()), &public, &expect, &mut seen),
            Ok("client".into())
        );
        assert_eq!(
            verify(&jwt(&pair, good.clone()), &public, &expect, &mut seen),
            Err("jti replayed")
        );
        for (field, value, why) in [
            ("iss", "other", "iss"),
            ("sub", "other", "sub"),
            ("aud", "http://elsewhere", "aud"),
        ] {
            let mut c = good.clone();
            c[field] = value.into();
            c["jti"] = format!("j-{field}").into();
            assert_eq!(
                verify(&jwt(&pair, c), &public, &expect, &mut seen),
                Err(why)
            );
        }
        let mut expired = good.clone();
        expired["exp"] = 1_000.into();
        expired["jti"] = "j-exp".into();
        assert_eq!(
            verify(&jwt(&pair, expired), &public, &expect, &mut seen),
            Err("exp")
        );
        // Another key's signature.
        let (other, _) = key();
        let mut c = good.clone();
        c["jti"] = "j-key".into();
        assert_eq!(
            verify(&jwt(&other, c), &public, &expect, &mut seen),
            Err("bad signature")
        );
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }
}
