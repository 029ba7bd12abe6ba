//! DPoP (RFC 9449, contract 0.5.0): sender-constrained tokens. The component
//! builds each proof JWT; the host holds the credential's DPoP key, gives the
//! component its public JWK (`signer.dpop-public-key`) and signs the proofs
//! (`signer.dpop-sign`), so the private key never enters the sandbox.
//!
//! A credential's [`Dpop`] names the algorithm and where the key is (a PEM
//! file or an environment variable, as for [`crate::Signing`]; it may be the
//! same key or another). The store keeps that reference, never the key.
//!
//! Before signing, the host checks that the input is a DPoP proof for this
//! credential ([`check_proof`], the same rule in every host): a component
//! that is compromised or swapped cannot get anything else signed with the
//! key, nor a proof for a URL outside the token endpoint and the
//! credential's API origins. Everything that can be checked without the key
//! is checked before it is read; then the header's `jwk` must be the key's
//! own public JWK.

use crate::bindings::rekey::oauth2::types::SigningAlgorithm as WitAlgorithm;
use crate::signing::{
    Member, REFUSED, SigningAlgorithm, SigningKey, SigningKeySource, get, is_base64url,
    json_object_with, member,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How far a proof's `iat` may be from this host's clock.
pub const MAX_PROOF_SKEW_SECS: f64 = 60.0;
/// A proof's `jti` is at least this long (the component's: 32 hex digits).
pub const MIN_PROOF_JTI_CHARS: usize = 16;
/// `ath`: base64url of a SHA-256 digest, 43 characters.
pub const ATH_CHARS: usize = 43;
const HEADER_MEMBERS: [&str; 3] = ["typ", "alg", "jwk"];
const CLAIMS: [&str; 6] = ["jti", "htm", "htu", "iat", "nonce", "ath"];

/// What `signer.dpop-*` answers for a credential without a DPoP key.
pub(crate) const NO_DPOP_KEY: &str = "no DPoP key is configured for this credential";

/// A credential's DPoP key (RFC 9449): its algorithm and where it is. Holds
/// no key material; stored as `{"algorithm": "ES256", "key_file": "/abs.pem"}`
/// or `{"algorithm": "RS256", "key_env": "VAR"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dpop {
    /// ES256 or RS256: the proofs' `alg`, and the key's type.
    pub algorithm: SigningAlgorithm,
    /// Where the private key is.
    #[serde(flatten)]
    pub key: SigningKeySource,
}

impl Dpop {
    /// DPoP with `algorithm` and the key in this PEM file (made absolute, so
    /// workers sharing the store need not share a working directory).
    pub fn key_file(algorithm: SigningAlgorithm, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Dpop {
            algorithm,
            key: SigningKeySource::File(path),
        }
    }

    /// DPoP with `algorithm` and the PEM in this environment variable.
    pub fn key_env(algorithm: SigningAlgorithm, var: impl Into<String>) -> Self {
        Dpop {
            algorithm,
            key: SigningKeySource::Env(var.into()),
        }
    }

    /// "the DPoP key file /etc/rekey/dpop.pem": what errors say.
    pub fn describe(&self) -> String {
        self.key.describe_as("DPoP key")
    }

    /// The key, loaded and checked against the algorithm now.
    pub fn load(&self) -> Result<SigningKey, String> {
        self.key.load_as(Some(self.algorithm), "DPoP key")
    }
}

/// What the host's check of a DPoP proof expects of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofRules {
    /// The credential's DPoP algorithm.
    pub algorithm: SigningAlgorithm,
    /// The credential's token endpoint (an `htu` always allowed).
    pub token_url: String,
}

/// Why `input` must not be signed as a DPoP proof for `asked` under `rules`,
/// as far as it can be told without the key: ASCII `header.claims`, each
/// part base64url (unpadded) of a JSON object with no member twice; the
/// header exactly `typ` "dpop+jwt", `alg` (the algorithm asked and
/// configured) and `jwk` (a flat object: compared with the key by
/// [`check_jwk`]); the claims `htm` (ASCII uppercase letters), `htu` (the
/// token URL, or an http(s) URL without query or fragment that
/// `api_allows`), `iat` an integer within 60 s of `now`, `jti` a string of
/// 16 characters or more, optionally `nonce` (a string) and `ath` (43
/// base64url characters), nothing else. Ok: the header's `jwk` members.
pub(crate) fn check_proof(
    input: &[u8],
    asked: SigningAlgorithm,
    rules: &ProofRules,
    now: f64,
    api_allows: &dyn Fn(&url::Url) -> bool,
) -> Result<Vec<(String, Member)>, String> {
    check(input, asked, rules, now, api_allows).map_err(|why| format!("{REFUSED}{why}"))
}

fn check(
    input: &[u8],
    asked: SigningAlgorithm,
    rules: &ProofRules,
    now: f64,
    api_allows: &dyn Fn(&url::Url) -> bool,
) -> Result<Vec<(String, Member)>, String> {
    if !input.iter().all(|b| *b == b'.' || is_base64url(*b)) {
        return Err(
            "the input is not a DPoP proof's header.claims (ASCII base64url, one '.')".into(),
        );
    }
    let parts: Vec<&[u8]> = input.split(|b| *b == b'.').collect();
    let [header, claims] = parts[..] else {
        return Err(
            "the input is not a DPoP proof's header.claims: it needs exactly one '.'".into(),
        );
    };
    let header = json_object_with(header, "header", &["jwk"])?;
    let claims = json_object_with(claims, "claims", &[])?;
    let is =
        |m: Option<&Member>, expected: &str| matches!(m, Some(Member::String(s)) if s == expected);

    // The header.
    for (name, _) in &header {
        if !HEADER_MEMBERS.contains(&name.as_str()) {
            return Err(format!(
                "{} is not allowed in a DPoP proof (only typ, alg and jwk)",
                member(name, "header member")
            ));
        }
    }
    if !is(get(&header, "typ"), "dpop+jwt") {
        return Err("the header's typ is not \"dpop+jwt\"".into());
    }
    let configured = rules.algorithm.name();
    if asked != rules.algorithm {
        return Err(format!(
            "alg: the component asked for {asked}, the credential's DPoP key is for {configured}"
        ));
    }
    if !is(get(&header, "alg"), configured) {
        return Err(format!("the header's alg is not {configured}"));
    }
    let jwk = match header.into_iter().find(|(k, _)| k == "jwk") {
        Some((_, Member::Object(members))) => members,
        _ => return Err("the header's jwk is not this credential's DPoP public key".into()),
    };

    // The claims.
    for (name, _) in &claims {
        if !CLAIMS.contains(&name.as_str()) {
            return Err(format!(
                "{} is not allowed in a DPoP proof (only jti, htm, htu, iat, nonce and ath)",
                member(name, "claim")
            ));
        }
    }
    if !matches!(get(&claims, "htm"), Some(Member::String(m)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err("the claim htm is not an HTTP method (ASCII uppercase letters)".into());
    }
    let Some(Member::String(htu)) = get(&claims, "htu") else {
        return Err("the claim htu is not a string".into());
    };
    check_htu(htu, &rules.token_url, api_allows)?;
    let Some(Member::Integer(iat)) = get(&claims, "iat") else {
        return Err("the claim iat is not a whole number of seconds".into());
    };
    if !(now.is_finite() && (*iat as f64 - now).abs() <= MAX_PROOF_SKEW_SECS) {
        return Err(format!(
            "the claim iat is more than {MAX_PROOF_SKEW_SECS} s from this host's clock"
        ));
    }
    if !matches!(get(&claims, "jti"), Some(Member::String(j)) if j.chars().count() >= MIN_PROOF_JTI_CHARS)
    {
        return Err(format!(
            "the claim jti is not a string of {MIN_PROOF_JTI_CHARS} characters or more"
        ));
    }
    if !matches!(get(&claims, "nonce"), None | Some(Member::String(_))) {
        return Err("the claim nonce is not a string".into());
    }
    match get(&claims, "ath") {
        None => {}
        Some(Member::String(a)) if a.len() == ATH_CHARS && a.bytes().all(is_base64url) => {}
        Some(_) => {
            return Err(format!(
                "the claim ath is not a SHA-256 digest in base64url ({ATH_CHARS} characters)"
            ));
        }
    }
    Ok(jwk)
}

/// `htu` (RFC 9449 §4.2): the token endpoint (with or without its query),
/// or an API URL without query or fragment that the host's own check at
/// `http-send` would let the token go to.
/// Whether the authority (between `://` and the next `/`, `?` or `#`)
/// holds anything URL parsers disagree on: WHATWG (and the `url` crate)
/// read `https://a.example\\@b.example/` as host `a.example`, Python's
/// urllib as `b.example`. The same rule in every host.
fn ambiguous_authority(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .chars()
        .any(|c| matches!(c, '@' | '\\' | '%') || !c.is_ascii_graphic())
}

fn check_htu(
    htu: &str,
    token_url: &str,
    api_allows: &dyn Fn(&url::Url) -> bool,
) -> Result<(), String> {
    let token_htu = &token_url[..token_url.find(['?', '#']).unwrap_or(token_url.len())];
    if htu == token_url || htu == token_htu {
        return Ok(());
    }
    let outside =
        "the claim htu is neither the token URL nor a URL within the credential's API origins";
    if htu.contains(['?', '#']) {
        return Err("the claim htu has a query or a fragment".into());
    }
    if ambiguous_authority(htu) {
        return Err(
            "the claim htu has an authority parsers read differently (user information, \
             '\\', '%', spaces or control characters)"
                .into(),
        );
    }
    let Ok(url) = crate::http::parse_url(htu) else {
        return Err(outside.into());
    };
    let clear_ok = url.scheme() == "https" || crate::http::is_loopback(&url);
    if !clear_ok || !url.username().is_empty() || url.password().is_some() || !api_allows(&url) {
        return Err(outside.into());
    }
    Ok(())
}

/// Whether the header's `jwk` is exactly `key`'s public JWK: the same
/// members with the same string values (so no private member such as `d`,
/// no `kid`, `alg` or `use` the key does not have).
pub(crate) fn check_jwk(jwk: &[(String, Member)], key: &SigningKey) -> Result<(), String> {
    let public = key.public_jwk();
    let same = jwk.len() == public.len()
        && jwk.iter().all(|(k, v)| {
            matches!((v, public.get(k)), (Member::String(s), Some(serde_json::Value::String(p))) if s == p)
        });
    if same {
        Ok(())
    } else {
        Err(format!(
            "{REFUSED}the header's jwk is not this credential's DPoP public key"
        ))
    }
}

/// The DPoP side of one call's `signer`: the credential's [`Dpop`] and its
/// token URL. The key is read when the component asks for the public key
/// or a proof signature (after the check of what it is asked to sign), at
/// each ask, so a rotated file or variable counts at once.
#[derive(Clone, Debug)]
pub(crate) struct DpopSigner {
    dpop: Dpop,
    rules: ProofRules,
}

impl DpopSigner {
    /// For a call of a credential with these DPoP settings and token URL;
    /// none without DPoP.
    pub(crate) fn new(dpop: Option<&Dpop>, token_url: &str) -> Option<DpopSigner> {
        let dpop = dpop?.clone();
        Some(DpopSigner {
            rules: ProofRules {
                algorithm: dpop.algorithm,
                token_url: token_url.to_owned(),
            },
            dpop,
        })
    }

    fn asked(&self, algorithm: WitAlgorithm) -> Result<SigningAlgorithm, String> {
        let asked = SigningAlgorithm::of_wit(algorithm);
        if asked != self.dpop.algorithm {
            return Err(format!(
                "the component asked for {asked}, the credential's DPoP key is for {}",
                self.dpop.algorithm
            ));
        }
        Ok(asked)
    }

    /// The WIT `signer.dpop-public-key`: the key's public JWK as JSON.
    pub(crate) fn public_key(&self, algorithm: WitAlgorithm) -> Result<String, String> {
        self.asked(algorithm)?;
        let key = self.dpop.load()?;
        Ok(serde_json::Value::Object(key.public_jwk()).to_string())
    }

    /// The WIT `signer.dpop-sign`: the check of `input` first (all but the
    /// `jwk` without the key), then the key is loaded, its public JWK
    /// compared with the header's, and it signs. `api_allows` is the host's
    /// own API-origin check of this call. Errors name the member that failed
    /// or the key's file or variable, never the key or the input.
    pub(crate) fn sign(
        &self,
        algorithm: WitAlgorithm,
        input: &[u8],
        api_allows: &dyn Fn(&url::Url) -> bool,
    ) -> Result<Vec<u8>, String> {
        let asked = SigningAlgorithm::of_wit(algorithm);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(f64::NAN, |d| d.as_secs_f64());
        let refused = |refusal: String| {
            tracing::warn!("DPoP proof not signed: {refusal}");
            refusal
        };
        let jwk = check_proof(input, asked, &self.rules, now, api_allows).map_err(refused)?;
        let key = self.dpop.load()?;
        check_jwk(&jwk, &key).map_err(refused)?;
        key.sign(asked, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::base64url_encode as b64;
    use serde_json::json;
    use std::path::PathBuf;

    const NOW: f64 = 1_800_000_000.0;
    const TOKEN_URL: &str = "https://idp.example/token";
    const JTI: &str = "0123456789abcdef0123456789abcdef";
    const ATH: &str = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";

    fn input(header: &serde_json::Value, claims: &serde_json::Value) -> Vec<u8> {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
        .into_bytes()
    }

    fn raw(header: &str, claims: &str) -> Vec<u8> {
        format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes())).into_bytes()
    }

    fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let ok = std::process::Command::new("openssl")
            .args(args)
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl {args:?}");
        path
    }

    fn ec_key(dir: &Path, name: &str) -> PathBuf {
        openssl_key(
            dir,
            name,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        )
    }

    fn rsa_key(dir: &Path, name: &str) -> PathBuf {
        openssl_key(
            dir,
            name,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        )
    }

    fn api_allows(url: &url::Url) -> bool {
        url.origin().ascii_serialization() == "https://api.example"
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({"jti": JTI, "htm": "POST", "htu": TOKEN_URL, "iat": now})
    }

    /// The JWK openssl derives from the key (`openssl pkey -text`): the
    /// host's `public_jwk` is what any JOSE library reads from the PEM.
    #[test]
    fn the_public_jwk_is_the_keys_own_public_half_only() {
        let dir = tempfile::tempdir().unwrap();
        let ec = Dpop::key_file(SigningAlgorithm::Es256, ec_key(dir.path(), "ec.pem"));
        let jwk = ec.load().unwrap().public_jwk();
        let keys: Vec<&String> = jwk.keys().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        for c in ["x", "y"] {
            let v = jwk[c].as_str().unwrap();
            assert_eq!(v.len(), 43, "32 bytes in base64url without padding");
            assert!(v.bytes().all(is_base64url));
        }
        // openssl's view of the same point: 04 || x || y.
        let text = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(dir.path().join("ec.pem"))
            .output()
            .unwrap()
            .stdout;
        let point = &text[text.len() - 65..];
        assert_eq!(point[0], 4);
        assert_eq!(jwk["x"], b64(&point[1..33]));
        assert_eq!(jwk["y"], b64(&point[33..]));

        let rsa = Dpop::key_file(SigningAlgorithm::Rs256, rsa_key(dir.path(), "rsa.pem"));
        let jwk = rsa.load().unwrap().public_jwk();
        assert_eq!(jwk.len(), 3, "{jwk:?}");
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB", "65537");
        let n = jwk["n"].as_str().unwrap();
        // 2048 bits = 256 bytes, no leading zero: 342 characters.
        assert_eq!(n.len(), 342, "{n}");
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(dir.path().join("rsa.pem"))
            .output()
            .unwrap()
            .stdout;
        let hex = String::from_utf8(modulus).unwrap();
        let hex = hex.trim().strip_prefix("Modulus=").unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(n, b64(&bytes));
    }

    #[test]
    fn a_proof_as_the_component_builds_it_passes() {
        let now = NOW as i64;
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB"}});
        let rules = ProofRules {
            algorithm: SigningAlgorithm::Es256,
            token_url: TOKEN_URL.into(),
        };
        let jwk = check_proof(
            &input(&header, &claims(now)),
            SigningAlgorithm::Es256,
            &rules,
            NOW,
            &api_allows,
        )
        .unwrap();
        assert_eq!(jwk.len(), 4);
        for (htm, htu, extra) in [
            ("GET", "https://api.example/v1/me", json!({"ath": ATH})),
            (
                "DELETE",
                "https://api.example:443/x",
                json!({"ath": ATH, "nonce": "n-1"}),
            ),
            ("POST", TOKEN_URL, json!({"nonce": "eyJ7S_zG.9qx"})),
        ] {
            let mut c = claims(now);
            c["htm"] = htm.into();
            c["htu"] = htu.into();
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            check_proof(
                &input(&header, &c),
                SigningAlgorithm::Es256,
                &rules,
                NOW + 59.0,
                &api_allows,
            )
            .unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        // A token URL with a query: its htu is the URL with or without it.
        let with_query = ProofRules {
            token_url: format!("{TOKEN_URL}?tenant=a"),
            ..rules.clone()
        };
        for htu in [TOKEN_URL.to_owned(), format!("{TOKEN_URL}?tenant=a")] {
            let mut c = claims(now);
            c["htu"] = htu.clone().into();
            check_proof(
                &input(&header, &c),
                SigningAlgorithm::Es256,
                &with_query,
                NOW,
                &api_allows,
            )
            .unwrap_or_else(|e| panic!("{htu}: {e}"));
        }
    }

    /// What a compromised component might ask the host to sign with the
    /// DPoP key: each refused, naming the member, never quoting the input.
    #[test]
    fn hostile_proofs_are_refused_naming_the_member_never_the_input() {
        let now = NOW as i64;
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB"});
        let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let rules = ProofRules {
            algorithm: SigningAlgorithm::Es256,
            token_url: TOKEN_URL.into(),
        };
        let with = |base: &serde_json::Value, k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            b
        };
        let c = claims(now);
        let cases: Vec<(serde_json::Value, serde_json::Value, &str)> = vec![
            (
                with(&h, "typ", "JWT".into()),
                c.clone(),
                "the header's typ is not \"dpop+jwt\"",
            ),
            (
                with(&h, "typ", serde_json::Value::Null),
                c.clone(),
                "the header's typ",
            ),
            (
                with(&h, "alg", "RS256".into()),
                c.clone(),
                "the header's alg is not ES256",
            ),
            (
                with(&h, "alg", "none".into()),
                c.clone(),
                "the header's alg is not ES256",
            ),
            (
                with(&h, "jwk", "attacker".into()),
                c.clone(),
                "the header's jwk is not this credential's DPoP public key",
            ),
            (
                with(&h, "jwk", json!({"kty": "EC", "x": {"attacker": 1}})),
                c.clone(),
                "the header's jwk is not",
            ),
            (
                with(&h, "jwk", serde_json::Value::Null),
                c.clone(),
                "the header's jwk is not",
            ),
            (
                with(&h, "kid", "attacker".into()),
                c.clone(),
                "the header member kid is not allowed",
            ),
            (
                with(&h, "jku", "https://evil.example/jwks".into()),
                c.clone(),
                "the header member jku is not allowed",
            ),
            (
                with(&h, "x5u", "https://evil.example/c".into()),
                c.clone(),
                "the header member x5u is not allowed",
            ),
            (
                with(&h, "x5c", json!(["attacker"])),
                c.clone(),
                "the header member x5c is not a string or a number",
            ),
            (
                with(&h, "crit", json!(["attacker"])),
                c.clone(),
                "the header member crit is not a string or a number",
            ),
            (
                with(&h, "attacker", "x".into()),
                c.clone(),
                "a header member named otherwise",
            ),
            // The claims.
            (
                h.clone(),
                with(&c, "htu", "https://evil.example/token".into()),
                "the claim htu is neither the token URL nor a URL within the credential's API origins",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://api.example.evil.example/x".into()),
                "the claim htu is neither",
            ),
            (
                h.clone(),
                with(&c, "htu", "http://api.example/x".into()),
                "the claim htu is neither",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://attacker@api.example/x".into()),
                "the claim htu has an authority parsers read differently",
            ),
            // WHATWG and the `url` crate read host api.example; Python's
            // urllib (and a resource server built on it) evil.example.
            (
                h.clone(),
                with(&c, "htu", "https://api.example\\@evil.example/x".into()),
                "the claim htu has an authority parsers read differently",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://api.%65xample/x".into()),
                "the claim htu has an authority parsers read differently",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://api.example /x".into()),
                "the claim htu has an authority parsers read differently",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://api.example/x?attacker=1".into()),
                "the claim htu has a query or a fragment",
            ),
            (
                h.clone(),
                with(&c, "htu", "https://api.example/x#attacker".into()),
                "the claim htu has a query or a fragment",
            ),
            (
                h.clone(),
                with(&c, "htu", format!("{TOKEN_URL}?attacker=1").into()),
                "the claim htu has a query",
            ),
            (
                h.clone(),
                with(&c, "htu", "attacker".into()),
                "the claim htu is neither",
            ),
            (
                h.clone(),
                with(&c, "htu", json!(7)),
                "the claim htu is not a string",
            ),
            (
                h.clone(),
                with(&c, "htu", serde_json::Value::Null),
                "the claim htu is not a string",
            ),
            (
                h.clone(),
                with(&c, "htm", "post".into()),
                "the claim htm is not an HTTP method",
            ),
            (
                h.clone(),
                with(&c, "htm", "".into()),
                "the claim htm is not an HTTP method",
            ),
            (
                h.clone(),
                with(&c, "htm", "GET /attacker".into()),
                "the claim htm is not an HTTP method",
            ),
            (
                h.clone(),
                with(&c, "iat", json!(now - 61)),
                "the claim iat is more than 60 s from this host's clock",
            ),
            (
                h.clone(),
                with(&c, "iat", json!(now + 3600)),
                "the claim iat is more than 60 s",
            ),
            (
                h.clone(),
                with(&c, "iat", json!(NOW + 0.5)),
                "the claim iat is not a whole number",
            ),
            (
                h.clone(),
                with(&c, "iat", json!(now.to_string())),
                "the claim iat is not a whole number",
            ),
            (
                h.clone(),
                with(&c, "iat", serde_json::Value::Null),
                "the claim iat is not a whole number",
            ),
            (
                h.clone(),
                with(&c, "jti", "attacker".into()),
                "the claim jti is not a string of 16 characters or more",
            ),
            (
                h.clone(),
                with(&c, "jti", serde_json::Value::Null),
                "the claim jti",
            ),
            (
                h.clone(),
                with(&c, "nonce", json!(12345)),
                "the claim nonce is not a string",
            ),
            (
                h.clone(),
                with(&c, "ath", "attacker".into()),
                "the claim ath is not a SHA-256 digest",
            ),
            (
                h.clone(),
                with(&c, "ath", format!("{}=", &ATH[..42]).into()),
                "the claim ath is not",
            ),
            (
                h.clone(),
                with(&c, "exp", json!(4102444800_i64)),
                "the claim exp is not allowed in a DPoP proof",
            ),
            (
                h.clone(),
                with(&c, "aud", "https://evil.example".into()),
                "the claim aud is not allowed",
            ),
            (
                h.clone(),
                with(&c, "attacker_claim", "x".into()),
                "a claim named otherwise (the name is not repeated) is not allowed",
            ),
            (
                h.clone(),
                with(&c, "cnf", json!({"jkt": "attacker"})),
                "the claim cnf is not a string or a number",
            ),
        ];
        for (header, claims, says) in &cases {
            let got = check_proof(
                &input(header, claims),
                SigningAlgorithm::Es256,
                &rules,
                NOW,
                &api_allows,
            )
            .expect_err(says);
            assert!(got.starts_with(REFUSED), "{got}");
            assert!(got.contains(says), "{header} {claims}: {got}");
            for quoted in ["attacker", "evil", "4102444800", "AAAA"] {
                assert!(!got.contains(quoted), "{got}");
            }
        }
        // A member twice: a server's parser may read the other one.
        let twice = [
            (
                r#"{"typ":"dpop+jwt","alg":"ES256","alg":"none","jwk":{"kty":"EC"}}"#.to_owned(),
                c.to_string(),
                "the header member alg appears twice",
            ),
            (
                h.to_string(),
                format!(
                    r#"{{"jti":"{JTI}","htm":"POST","htu":"{TOKEN_URL}","htu":"https://evil.example/","iat":{now}}}"#
                ),
                "the claim htu appears twice",
            ),
            (
                r#"{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","x":"a","x":"b"}}"#.to_owned(),
                c.to_string(),
                "the header's jwk is not",
            ),
        ];
        for (header, claims, says) in twice {
            let got = check_proof(
                &raw(&header, &claims),
                SigningAlgorithm::Es256,
                &rules,
                NOW,
                &api_allows,
            )
            .unwrap_err();
            assert!(got.contains(says), "{got}");
            assert!(!got.contains("evil"), "{got}");
        }
        // The algorithm asked is the credential's.
        let got = check_proof(
            &input(&h, &c),
            SigningAlgorithm::Rs256,
            &rules,
            NOW,
            &api_allows,
        )
        .unwrap_err();
        assert!(
            got.contains(
                "alg: the component asked for RS256, the credential's DPoP key is for ES256"
            ),
            "{got}"
        );
        // Not header.claims.
        let good = input(&h, &c);
        let signed = [good.clone(), b".c2ln".to_vec()].concat();
        for bytes in [&signed[..], b"e30", "é.é".as_bytes(), b"=.="] {
            let got =
                check_proof(bytes, SigningAlgorithm::Es256, &rules, NOW, &api_allows).unwrap_err();
            assert!(
                got.contains("the input is not a DPoP proof's header.claims"),
                "{got}"
            );
        }
        // A clock that cannot be read admits nothing.
        let got = check_proof(
            &good,
            SigningAlgorithm::Es256,
            &rules,
            f64::NAN,
            &api_allows,
        )
        .unwrap_err();
        assert!(got.contains("from this host's clock"), "{got}");
    }

    /// The signer: the key's own JWK in the header signs, with a signature
    /// openssl verifies; another key's JWK, a JWK with a private member, a
    /// refused proof or a key of another type signs nothing; and a refused
    /// proof never reads the key (a missing key file is not mentioned).
    #[test]
    fn the_signer_signs_proofs_with_its_own_jwk_only() {
        let dir = tempfile::tempdir().unwrap();
        let ec_path = ec_key(dir.path(), "dpop.pem");
        let other = Dpop::key_file(SigningAlgorithm::Es256, ec_key(dir.path(), "other.pem"));
        let dpop = Dpop::key_file(SigningAlgorithm::Es256, &ec_path);
        let signer = DpopSigner::new(Some(&dpop), TOKEN_URL).unwrap();
        let jwk: serde_json::Value =
            serde_json::from_str(&signer.public_key(WitAlgorithm::Es256).unwrap()).unwrap();
        assert_eq!(
            jwk,
            serde_json::Value::Object(dpop.load().unwrap().public_jwk())
        );
        assert!(jwk.get("d").is_none());
        let err = signer.public_key(WitAlgorithm::Rs256).unwrap_err();
        assert!(err.contains("asked for RS256"), "{err}");

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let good = input(&header, &claims(now));
        let sig = signer
            .sign(WitAlgorithm::Es256, &good, &api_allows)
            .unwrap();
        assert_eq!(sig.len(), 64, "r || s");
        assert!(openssl_verifies_es256(dir.path(), &ec_path, &good, &sig));

        let foreign = json!({"typ": "dpop+jwt", "alg": "ES256",
            "jwk": serde_json::Value::Object(other.load().unwrap().public_jwk())});
        let mut private = jwk.clone();
        private["d"] = "AAAA".into();
        let mut with_kid = jwk.clone();
        with_kid["kid"] = "k1".into();
        let mut fewer = jwk.clone();
        fewer.as_object_mut().unwrap().remove("y");
        for (h, says) in [
            (
                foreign,
                "the header's jwk is not this credential's DPoP public key",
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
                "the header's jwk is not",
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": with_kid}),
                "the header's jwk is not",
            ),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": fewer}),
                "the header's jwk is not",
            ),
        ] {
            let got = signer
                .sign(WitAlgorithm::Es256, &input(&h, &claims(now)), &api_allows)
                .unwrap_err();
            assert!(got.starts_with(REFUSED) && got.contains(says), "{got}");
        }
        // Refused before the key is read: with the key gone, the refusal is
        // the check's, not the missing file.
        std::fs::rename(&ec_path, dir.path().join("moved.pem")).unwrap();
        let stale = input(&header, &claims(now - 3600));
        let got = signer
            .sign(WitAlgorithm::Es256, &stale, &api_allows)
            .unwrap_err();
        assert!(got.contains("the claim iat"), "{got}");
        let got = signer
            .sign(WitAlgorithm::Es256, &good, &api_allows)
            .unwrap_err();
        assert!(
            got.contains("the DPoP key file") && got.contains("dpop.pem"),
            "{got}"
        );
        assert!(!got.contains("BEGIN"), "{got}");

        // An RSA key: RS256 proofs with n and e.
        let rsa_path = rsa_key(dir.path(), "rsa.pem");
        let rsa = DpopSigner::new(
            Some(&Dpop::key_file(SigningAlgorithm::Rs256, &rsa_path)),
            TOKEN_URL,
        )
        .unwrap();
        let jwk: serde_json::Value =
            serde_json::from_str(&rsa.public_key(WitAlgorithm::Rs256).unwrap()).unwrap();
        let good = input(
            &json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}),
            &claims(now),
        );
        assert_eq!(
            rsa.sign(WitAlgorithm::Rs256, &good, &api_allows)
                .unwrap()
                .len(),
            256
        );
        // A DPoP setting whose algorithm is not its key's type.
        let mismatched = DpopSigner::new(
            Some(&Dpop::key_file(SigningAlgorithm::Es256, &rsa_path)),
            TOKEN_URL,
        )
        .unwrap();
        let err = mismatched.public_key(WitAlgorithm::Es256).unwrap_err();
        assert!(
            err.contains("the DPoP key file") && err.contains("ES256 needs"),
            "{err}"
        );
    }

    fn openssl_verifies_es256(dir: &Path, key: &Path, input: &[u8], sig: &[u8]) -> bool {
        // r || s as DER.
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let mut v = if b.first().is_some_and(|x| x & 0x80 != 0) {
                vec![0]
            } else {
                vec![]
            };
            v.extend(b);
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let body = [int(&sig[..32]), int(&sig[32..])].concat();
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        let (data, sigf, public) = (dir.join("in"), dir.join("sig"), dir.join("pub.pem"));
        std::fs::write(&data, input).unwrap();
        std::fs::write(&sigf, der).unwrap();
        assert!(
            std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(key)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success()
        );
        std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sigf)
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn stored_as_every_host_writes_it() {
        let d: Dpop =
            serde_json::from_value(json!({"algorithm": "es256", "key_file": "/k.pem"})).unwrap();
        assert_eq!(d, Dpop::key_file(SigningAlgorithm::Es256, "/k.pem"));
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"algorithm": "ES256", "key_file": "/k.pem"})
        );
        let d: Dpop =
            serde_json::from_value(json!({"algorithm": "RS256", "key_env": "DPOP_KEY"})).unwrap();
        assert_eq!(d.key, SigningKeySource::Env("DPOP_KEY".into()));
        assert_eq!(d.describe(), "the DPoP key's environment variable DPOP_KEY");
        let err = d.load().unwrap_err();
        assert!(err.contains("DPOP_KEY is not set"), "{err}");
        assert!(
            serde_json::from_value::<Dpop>(json!({"algorithm": "HS256", "key_env": "K"})).is_err()
        );
        assert!(serde_json::from_value::<Dpop>(json!({"algorithm": "ES256"})).is_err());
    }
}
