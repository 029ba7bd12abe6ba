//! Signed JWT assertions (RFC 7523): the client's authentication
//! (`private_key_jwt`, §2.2 and OIDC Core §9) and the JWT bearer grant
//! (§2.1). The component builds header and claims; the host's `signer`
//! signs them, so the private key never enters the sandbox.
//!
//! Each assertion carries a fresh `jti` (128 random bits) and lives five
//! minutes: servers refuse a `jti` they have seen (RFC 7523 §3 item 7), so
//! every attempt and every poll gets its own assertion.

use crate::basic_auth::base64url;
use crate::effects::Signing;
use crate::rekey::oauth2::types::{Settings, SigningAlgorithm};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// `client_assertion_type` for `private_key_jwt` (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// An assertion's lifetime (seconds): long enough for a slow clock at the
/// server, short enough that a captured one is soon useless.
pub const LIFETIME: u64 = 300;
/// The claims the component sets itself; configured claims cannot replace them.
pub const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// Who the assertion is for: the client itself (`private_key_jwt`) or the
/// JWT bearer grant's subject, with its further claims.
pub struct Claims<'a> {
    pub subject: &'a str,
    pub extra: &'a [(String, String)],
}

/// The signed assertion `header.claims.signature`, for the credential's
/// `settings.signing`. An error (no secret in it) when the settings have no
/// signing or the host cannot sign.
pub fn build(
    fx: &mut impl Signing,
    settings: &Settings,
    now: u64,
    claims: &Claims,
) -> Result<String, String> {
    let signing = settings
        .signing
        .as_ref()
        .ok_or("a signed assertion needs the credential's signing settings")?;
    let alg = alg_name(signing.algorithm);
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = &signing.key_id {
        header.insert("kid".into(), kid.as_str().into());
    }
    let audience = signing.audience.as_deref().unwrap_or(&settings.token_url);
    let jti = jti(fx);
    let mut body = Map::new();
    for (k, v) in claims.extra {
        if !REGISTERED.contains(&k.as_str()) {
            body.insert(k.clone(), v.as_str().into());
        }
    }
    body.insert("iss".into(), settings.client_id.as_str().into());
    body.insert("sub".into(), claims.subject.into());
    body.insert("aud".into(), audience.into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), now.saturating_add(LIFETIME).into());
    body.insert("jti".into(), jti.into());
    sign_jwt(fx, signing.algorithm, header, body, Key::Client)
}

/// A fresh `jti`: 128 random bits in hex.
#[inline(never)]
pub(crate) fn jti(fx: &mut impl Signing) -> String {
    format!("{:016x}{:016x}", fx.random_u64(), fx.random_u64())
}

/// Which of the credential's keys the host signs with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// The client's (`signer.sign`): assertions.
    Client,
    /// The DPoP key (`signer.dpop-sign`): proofs.
    Dpop,
}

/// The compact JWS `header.claims.signature` (RFC 7515 §7.1), signed by the
/// host with `key`.
#[inline(never)]
pub(crate) fn sign_jwt(
    fx: &mut impl Signing,
    alg: SigningAlgorithm,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    key: Key,
) -> Result<String, String> {
    let input = format!(
        "{}.{}",
        base64url(Value::Object(header).to_string().as_bytes()),
        base64url(Value::Object(claims).to_string().as_bytes())
    );
    let (signed, what) = match key {
        Key::Client => (fx.sign(alg, input.as_bytes()), "assertion"),
        Key::Dpop => (fx.dpop_sign(alg, input.as_bytes()), "DPoP proof"),
    };
    let signature = signed.map_err(|m| format!("the host could not sign the {what}: {m}"))?;
    check_length(alg, &signature)?;
    Ok(format!("{input}.{}", base64url(&signature)))
}

/// The JWS `alg` (RFC 7518 §3.1).
pub(crate) fn alg_name(alg: SigningAlgorithm) -> &'static str {
    match alg {
        SigningAlgorithm::Rs256 => "RS256",
        SigningAlgorithm::Es256 => "ES256",
    }
}

/// A signature of the wrong shape would only be refused by the server as
/// `invalid_client`; say here what is wrong. ES256 is exactly `r || s`
/// (RFC 7518 §3.4), not DER; RS256 is as long as the modulus (2048 bits at
/// least, RFC 7518 §3.3).
pub(crate) fn check_length(alg: SigningAlgorithm, signature: &[u8]) -> Result<(), String> {
    let fits = match alg {
        SigningAlgorithm::Es256 => signature.len() == 64,
        SigningAlgorithm::Rs256 => signature.len() >= 256,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "the host's signature is {} bytes, not a {alg:?} signature (ES256: 64 bytes r || s; RS256: a 2048-bit key or longer)",
            signature.len()
        ))
    }
}

/// The form fields of `private_key_jwt` client authentication.
pub fn client_fields(assertion: String) -> Vec<(&'static str, String)> {
    alloc::vec![
        ("client_assertion_type", CLIENT_ASSERTION_TYPE.into()),
        ("client_assertion", assertion),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rekey::oauth2::types::Signing as SigningSettings;
    use crate::testing::{FAKE_SIGNATURE_PREFIX, script};
    use base64::Engine as _;
    use serde_json::json;

    fn settings(audience: Option<&str>, alg: SigningAlgorithm) -> Settings {
        let mut s = crate::testing::settings();
        s.client_id = "svc@example".into();
        s.signing = Some(SigningSettings {
            algorithm: alg,
            key_id: Some("k1".into()),
            audience: audience.map(Into::into),
        });
        s
    }

    #[test]
    fn the_assertion_names_client_audience_times_and_a_fresh_jti() {
        let mut fx = script(vec![]);
        let s = settings(Some("https://issuer.example"), SigningAlgorithm::Es256);
        let extra = [
            ("scope".into(), "read".into()),
            ("iss".into(), "forged".into()),
            ("exp".into(), "9999999999".into()),
        ];
        let claims = Claims {
            subject: "user-7",
            extra: &extra,
        };
        let a = build(&mut fx, &s, 1_000, &claims).unwrap();
        let b = build(&mut fx, &s, 1_000, &claims).unwrap();
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            crate::testing::jwt_part(parts[0]),
            json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})
        );
        let body = crate::testing::jwt_part(parts[1]);
        assert_eq!(body["iss"], "svc@example");
        assert_eq!(body["sub"], "user-7");
        assert_eq!(body["aud"], "https://issuer.example");
        assert_eq!(body["iat"], 1_000);
        assert_eq!(body["exp"], 1_300);
        assert_eq!(body["scope"], "read");
        assert_eq!(body["jti"].as_str().map(str::len), Some(32));
        // What the fake signer signed is exactly `header.claims`.
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        assert_eq!(
            sig,
            crate::testing::fake_signature(&format!("{}.{}", parts[0], parts[1]))
        );
        assert!(sig.starts_with(FAKE_SIGNATURE_PREFIX));
        let jti_b = crate::testing::jwt_part(b.split('.').nth(1).unwrap())["jti"].clone();
        assert_ne!(body["jti"], jti_b, "every assertion has its own jti");
    }

    #[test]
    fn without_an_audience_the_token_url_is_the_audience_and_no_kid_is_sent() {
        let mut fx = script(vec![]);
        let mut s = settings(None, SigningAlgorithm::Es256);
        if let Some(signing) = s.signing.as_mut() {
            signing.key_id = None;
        }
        let a = build(
            &mut fx,
            &s,
            5,
            &Claims {
                subject: "c",
                extra: &[],
            },
        )
        .unwrap();
        let mut parts = a.split('.');
        assert_eq!(
            crate::testing::jwt_part(parts.next().unwrap()),
            json!({"alg": "ES256", "typ": "JWT"})
        );
        assert_eq!(
            crate::testing::jwt_part(parts.next().unwrap())["aud"],
            s.token_url.as_str()
        );
    }

    #[test]
    fn no_signing_settings_or_a_failing_or_misshapen_signer_is_an_error() {
        let mut fx = script(vec![]);
        let mut s = settings(None, SigningAlgorithm::Es256);
        s.signing = None;
        let claims = Claims {
            subject: "c",
            extra: &[],
        };
        assert!(
            build(&mut fx, &s, 5, &claims)
                .unwrap_err()
                .contains("signing settings")
        );
        // The fake signer's signature is 64 bytes: an RS256 key must give more.
        let s = settings(None, SigningAlgorithm::Rs256);
        let e = build(&mut fx, &s, 5, &claims).unwrap_err();
        assert!(e.contains("64 bytes") && e.contains("Rs256"), "{e}");
        fx.sign_error = Some("no key is configured".into());
        let s = settings(None, SigningAlgorithm::Es256);
        let e = build(&mut fx, &s, 5, &claims).unwrap_err();
        assert!(e.contains("no key is configured"), "{e}");
    }
}
