//! Signed assertions (RFC 7523, contract 0.4.0): the component builds each
//! JWT and imports `signer.sign`; the host signs with the credential's
//! private key, which never enters the sandbox.
//!
//! A credential's [`Signing`] names the algorithm and where its key is: a
//! PEM file or an environment variable holding the PEM. The store keeps that
//! reference, never the key. The key is read only when the component asks
//! for a signature, after the host's check of what it is asked to sign
//! ([`check_assertion`]): a call whose stored token is still valid reads no
//! key. It is read at each signature (a rotated file or variable counts at
//! once); a missing, wrong or unreadable key is then `InvalidSettings`,
//! naming the file or variable and never the key, and the request the
//! assertion was for is not sent. Accepted: unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA
//! (`BEGIN RSA PRIVATE KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`); RS256
//! needs RSA of 2048 bits or more, ES256 a P-256 key.

use crate::bindings::rekey::oauth2::types::SigningAlgorithm as WitAlgorithm;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Far above any RSA or EC private key in PEM; a bigger file is something else.
const MAX_KEY_BYTES: u64 = 64 * 1024;

const EXPECTED: &str = "expected an unencrypted PEM private key: BEGIN PRIVATE KEY (PKCS#8), \
     BEGIN RSA PRIVATE KEY (PKCS#1) or BEGIN EC PRIVATE KEY (SEC1)";

/// The signature algorithm of a credential's JWTs (RFC 7518 §3.1). Stored
/// as `RS256`/`ES256`; read in any case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key of 2048 bits or more).
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256 (the signature is `r || s`, 64 bytes).
    #[serde(rename = "ES256")]
    Es256,
}

impl SigningAlgorithm {
    /// `RS256` or `ES256`.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Es256 => "ES256",
        }
    }

    /// `RS256`/`ES256` in any case.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_uppercase().as_str() {
            "RS256" => Ok(SigningAlgorithm::Rs256),
            "ES256" => Ok(SigningAlgorithm::Es256),
            _ => Err(format!(
                "unknown signing algorithm {value:?}: use RS256 or ES256"
            )),
        }
    }

    pub(crate) fn to_wit(self) -> WitAlgorithm {
        match self {
            SigningAlgorithm::Rs256 => WitAlgorithm::Rs256,
            SigningAlgorithm::Es256 => WitAlgorithm::Es256,
        }
    }

    pub(crate) fn of_wit(alg: WitAlgorithm) -> Self {
        match alg {
            WitAlgorithm::Rs256 => SigningAlgorithm::Rs256,
            WitAlgorithm::Es256 => SigningAlgorithm::Es256,
        }
    }
}

impl std::fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SigningAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        SigningAlgorithm::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// Where a credential's private key is: the store keeps this, never the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningKeySource {
    /// A PEM file, read at each signature (stored absolute as `key_file`).
    #[serde(rename = "key_file")]
    File(PathBuf),
    /// An environment variable holding the PEM, read at each signature
    /// (stored as `key_env`).
    #[serde(rename = "key_env")]
    Env(String),
}

impl SigningKeySource {
    /// "the signing key file /etc/rekey/k.pem": what errors say (no key material).
    pub fn describe(&self) -> String {
        self.describe_as("signing key")
    }

    /// [`SigningKeySource::describe`] for the key called `what` ("DPoP key").
    pub fn describe_as(&self, what: &str) -> String {
        match self {
            SigningKeySource::File(path) => format!("the {what} file {}", path.display()),
            SigningKeySource::Env(var) => {
                format!("the {what}'s environment variable {var}")
            }
        }
    }

    /// The key, loaded now; `algorithm` None: whatever the key is for.
    pub fn load(&self, algorithm: Option<SigningAlgorithm>) -> Result<SigningKey, String> {
        self.load_as(algorithm, "signing key")
    }

    /// [`SigningKeySource::load`] for the key called `what` in errors.
    pub fn load_as(
        &self,
        algorithm: Option<SigningAlgorithm>,
        what: &str,
    ) -> Result<SigningKey, String> {
        let where_ = self.describe_as(what);
        let pem = match self {
            SigningKeySource::File(path) => read_key_file(path, &where_)?,
            SigningKeySource::Env(var) => match std::env::var_os(var) {
                None => return Err(format!("{where_} is not set")),
                Some(v) if v.is_empty() => return Err(format!("{where_} is empty")),
                Some(v) => v.into_encoded_bytes(),
            },
        };
        let key = SigningKey::from_pem(&pem, &where_)?;
        if let Some(alg) = algorithm
            && alg != key.algorithm
        {
            return Err(format!("{where_} {}", mismatch(&key, alg)));
        }
        Ok(key)
    }
}

/// At most MAX_KEY_BYTES + 1 of a regular file (symlinks followed). Opened
/// non-blocking, so a FIFO in its place cannot stall the call.
fn read_key_file(path: &Path, where_: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{where_} cannot be read ({})", io_kind(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{where_} cannot be read ({})", io_kind(&e)))?;
    if !meta.is_file() {
        return Err(format!("{where_} is not a regular file; {EXPECTED}"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{where_} cannot be read ({})", io_kind(&e)))?;
    if bytes.len() as u64 > MAX_KEY_BYTES {
        return Err(format!(
            "{where_} is larger than {} KiB: not a private key; {EXPECTED}",
            MAX_KEY_BYTES / 1024
        ));
    }
    Ok(bytes)
}

/// The kind of an I/O error, without the OS's text (which is fine, but
/// kept to the same few words everywhere).
fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        kind => format!("{kind}"),
    }
}

/// How a credential's JWTs are signed: the algorithm, the header's `kid`,
/// the `aud` and where the key is. Holds no key material (see
/// [`SigningKey`] for the loaded key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signing {
    /// RS256 or ES256.
    pub algorithm: SigningAlgorithm,
    /// `kid` in the JWT header, when the server needs it to pick the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `aud`; none: the credential's issuer when it has one, else the token URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Where the private key is.
    #[serde(flatten)]
    pub key: SigningKeySource,
}

impl Signing {
    /// Signing with `algorithm` and the key in this PEM file (made absolute,
    /// so workers sharing the store need not share a working directory).
    pub fn key_file(algorithm: SigningAlgorithm, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Signing {
            algorithm,
            key_id: None,
            audience: None,
            key: SigningKeySource::File(path),
        }
    }

    /// Signing with `algorithm` and the PEM in this environment variable.
    pub fn key_env(algorithm: SigningAlgorithm, var: impl Into<String>) -> Self {
        Signing {
            algorithm,
            key_id: None,
            audience: None,
            key: SigningKeySource::Env(var.into()),
        }
    }

    /// The key, loaded and checked against the algorithm now.
    pub fn load(&self) -> Result<SigningKey, String> {
        self.key.load(Some(self.algorithm))
    }
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A loaded private key. Its `Debug` names the algorithm and where it came
/// from, never the key.
pub struct SigningKey {
    pair: Pair,
    algorithm: SigningAlgorithm,
    where_: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey({}, {}: [redacted])",
            self.algorithm, self.where_
        )
    }
}

impl SigningKey {
    /// A private key from PEM text (`where_` names it in errors; the text
    /// itself is never quoted).
    pub fn from_pem(pem: &[u8], where_: &str) -> Result<SigningKey, String> {
        let labels = pem_labels(pem);
        if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
            return Err(format!(
                "{where_} is encrypted; {EXPECTED} (protect the file instead)"
            ));
        }
        const KEYS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];
        let keys: Vec<&String> = labels
            .iter()
            .filter(|l| KEYS.contains(&l.as_str()))
            .collect();
        match keys.len() {
            0 if labels.is_empty() => return Err(format!("{where_} is not PEM; {EXPECTED}")),
            0 => {
                let held: Vec<String> = labels.iter().map(|l| format!("a {l}")).collect();
                return Err(format!(
                    "{where_} holds {}, no private key; {EXPECTED}",
                    held.join(", ")
                ));
            }
            1 => {}
            n => {
                return Err(format!(
                    "{where_} holds {n} private keys; {EXPECTED}, one of them"
                ));
            }
        }
        // The legacy OpenSSL encryption of PKCS#1 and SEC1 keys.
        if contains(pem, b"Proc-Type: 4,ENCRYPTED") || contains(pem, b"DEK-Info:") {
            return Err(format!(
                "{where_} is encrypted; {EXPECTED} (protect the file instead)"
            ));
        }
        let label = keys[0].as_str();
        // The decoder's own errors are not repeated: only what kind of
        // block failed.
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| format!("{where_} is not a readable {label} PEM block; {EXPECTED}"))?;
        let invalid = |kind: &str, why: ring::error::KeyRejected| {
            format!("{where_} is not a valid {kind} private key ({why}); {EXPECTED}")
        };
        let rng = SystemRandom::new();
        let (pair, algorithm) = match &der {
            PrivateKeyDer::Pkcs1(k) => (
                Pair::Rsa(
                    RsaKeyPair::from_der(k.secret_pkcs1_der())
                        .map_err(|e| invalid("PKCS#1 RSA", e))?,
                ),
                SigningAlgorithm::Rs256,
            ),
            PrivateKeyDer::Sec1(k) => (
                Pair::Ec(
                    EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        &sec1_to_pkcs8(k.secret_sec1_der()),
                        &rng,
                    )
                    .map_err(|e| {
                        format!(
                            "{where_} is not a valid SEC1 EC private key on P-256 ({e}); ES256 needs an EC key on P-256 (prime256v1)"
                        )
                    })?,
                ),
                SigningAlgorithm::Es256,
            ),
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
                    (Pair::Rsa(rsa), SigningAlgorithm::Rs256)
                } else {
                    match EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        der,
                        &rng,
                    ) {
                        Ok(ec) => (Pair::Ec(ec), SigningAlgorithm::Es256),
                        Err(e) => {
                            // Which of the two it was meant to be, for the message.
                            let rsa = RsaKeyPair::from_pkcs8(der).err();
                            if rsa.as_ref().is_some_and(|r| r.to_string() == "TooSmall") {
                                return Err(format!(
                                    "{where_} is an RSA key under 2048 bits; RS256 needs an RSA key of 2048 bits or more"
                                ));
                            }
                            let why = match rsa {
                                Some(r) if r.to_string() != "WrongAlgorithm" => r,
                                _ => e,
                            };
                            return Err(format!(
                                "{where_} is not a usable PKCS#8 private key ({why}): RS256 needs an RSA key of 2048 bits or more, ES256 an EC key on P-256 (prime256v1)"
                            ));
                        }
                    }
                }
            }
            _ => return Err(format!("{where_}: {EXPECTED}")),
        };
        let key = SigningKey {
            pair,
            algorithm,
            where_: where_.to_owned(),
            rng,
        };
        if let Pair::Rsa(rsa) = &key.pair
            && rsa.public().modulus_len() < 256
        {
            return Err(format!(
                "{where_} is a {}-bit RSA key; RS256 needs an RSA key of 2048 bits or more",
                rsa.public().modulus_len() * 8
            ));
        }
        Ok(key)
    }

    /// What the key signs: RS256 for RSA, ES256 for P-256.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The JWS signature of `input` with this key: RS256 as long as the
    /// modulus, ES256 the 64 bytes `r || s`. An error when `algorithm` is
    /// not this key's (naming the key's source, never the key).
    pub fn sign(&self, algorithm: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        if algorithm != self.algorithm {
            return Err(format!(
                "the credential's key ({}) is for {}, not {algorithm}",
                self.where_, self.algorithm
            ));
        }
        match &self.pair {
            Pair::Rsa(rsa) => {
                let mut sig = vec![0; rsa.public().modulus_len()];
                rsa.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input, &mut sig)
                    .map_err(|_| format!("signing with {} failed", self.where_))?;
                Ok(sig)
            }
            Pair::Ec(ec) => ec
                .sign(&self.rng, input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| format!("signing with {} failed", self.where_)),
        }
    }

    /// The public key as a JWK (RFC 7517, RFC 7518 §6) with only its
    /// public members, as a JSON object: EC `{"kty":"EC","crv":"P-256",
    /// "x","y"}` (32 bytes each), RSA `{"kty":"RSA","n","e"}` (big-endian,
    /// no leading zero); base64url without padding.
    pub fn public_jwk(&self) -> serde_json::Map<String, serde_json::Value> {
        let members: Vec<(&str, String)> = match &self.pair {
            Pair::Rsa(rsa) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
                vec![
                    ("kty", "RSA".into()),
                    ("n", base64url_encode(&c.n)),
                    ("e", base64url_encode(&c.e)),
                ]
            }
            Pair::Ec(ec) => {
                // The uncompressed point: 0x04 || x || y.
                let point = ec.public_key().as_ref();
                vec![
                    ("kty", "EC".into()),
                    ("crv", "P-256".into()),
                    ("x", base64url_encode(&point[1..33])),
                    ("y", base64url_encode(&point[33..65])),
                ]
            }
        };
        members
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
            .collect()
    }

    /// The public key: the SPKI DER's subjectPublicKey bytes (RSA: the
    /// PKCS#1 `RSAPublicKey`; EC: the uncompressed point). For tests.
    #[doc(hidden)]
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Rsa(rsa) => rsa.public_key().as_ref().to_vec(),
            Pair::Ec(ec) => ec.public_key().as_ref().to_vec(),
        }
    }
}

/// Why `key` cannot sign `alg` ("is an EC P-256 key; RS256 needs ...").
fn mismatch(key: &SigningKey, alg: SigningAlgorithm) -> String {
    let kind = match &key.pair {
        Pair::Rsa(rsa) => format!("a {}-bit RSA key", rsa.public().modulus_len() * 8),
        Pair::Ec(_) => "an EC P-256 key".into(),
    };
    match alg {
        SigningAlgorithm::Rs256 => {
            format!("is {kind}; RS256 needs an RSA key of 2048 bits or more")
        }
        SigningAlgorithm::Es256 => {
            format!("is {kind}; ES256 needs an EC key on P-256 (prime256v1)")
        }
    }
}

/// The labels of the `-----BEGIN X-----` lines.
fn pem_labels(pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pem);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .map(str::to_owned)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A SEC1 `ECPrivateKey` wrapped as PKCS#8 (RFC 5915 §3 in RFC 5958's
/// `PrivateKeyInfo`, algorithm id-ecPublicKey on prime256v1), which is what
/// ring reads. A key on another curve is refused by ring (its parameters
/// name the curve).
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALG_ID: [u8; 21] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(&ALG_ID);
    body.push(0x04); // OCTET STRING
    push_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

// The host's second-line check of what it signs (every host applies the same
// rule). The component builds each assertion; a compromised or swapped one
// could ask for any bytes (an `exp` far off, another `aud`), so the host, the
// sandbox's boundary, signs only `header.claims` as the credential's settings
// describe it. A refusal names the member that failed, never the input or
// the key; the component reports it as invalid settings and sends nothing.

/// An assertion's lifetime at most (the component makes it 300 s).
pub const MAX_ASSERTION_LIFETIME_SECS: i128 = 300;
/// How far `iat` may be from this host's clock.
pub const MAX_ASSERTION_SKEW_SECS: f64 = 60.0;
/// A `jti` is at least this long (the component's: 32 hex digits).
pub const MIN_JTI_CHARS: usize = 16;
const HEADER_MEMBERS: [&str; 3] = ["alg", "typ", "kid"];
const COMPONENT_CLAIMS: [&str; 6] = ["iss", "sub", "aud", "iat", "exp", "jti"];
/// Member names a refusal may quote: the registered JOSE header parameters
/// and JWT claims. Any other name is the component's text and is not repeated.
const NAMEABLE: [&str; 41] = [
    "alg",
    "typ",
    "kid",
    "cty",
    "jku",
    "jwk",
    "x5u",
    "x5c",
    "x5t",
    "x5t#S256",
    "crit",
    "b64",
    "zip",
    "enc",
    "epk",
    "apu",
    "apv",
    "iv",
    "tag",
    "p2s",
    "p2c",
    "url",
    "nonce",
    "ppt",
    "svt",
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "client_id",
    "azp",
    "cnf",
    "act",
    "may_act",
    "htm",
    "htu",
    "ath",
];
pub(crate) const REFUSED: &str = "refused by the host's check of what it signs: ";

/// What the host's check of an assertion ([`check_assertion`]) expects,
/// from the settings the component was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionRules {
    /// The settings' signing algorithm.
    pub algorithm: SigningAlgorithm,
    /// The header's `kid` (absent when none).
    pub key_id: Option<String>,
    /// `iss`, and `sub` of a client assertion.
    pub client_id: String,
    /// `aud`: the audience the WIT settings carry, else the token URL.
    pub audience: String,
    /// The jwt-bearer grant's `sub` (none for other grants).
    pub subject: Option<String>,
    /// The jwt-bearer grant's further claims (the last of a name counts,
    /// as the component builds them).
    pub claims: Vec<(String, String)>,
}

impl AssertionRules {
    /// The rules of the WIT settings a call gives the component (none when
    /// they sign nothing): the audience as the component chooses it.
    pub(crate) fn of_wit(
        settings: &crate::bindings::rekey::oauth2::types::Settings,
    ) -> Option<AssertionRules> {
        use crate::bindings::rekey::oauth2::types::Grant;
        let signing = settings.signing.as_ref()?;
        let (subject, claims) = match &settings.grant {
            Grant::JwtBearer(b) => (Some(b.subject.clone()), b.claims.clone()),
            _ => (None, Vec::new()),
        };
        Some(AssertionRules {
            algorithm: SigningAlgorithm::of_wit(signing.algorithm),
            key_id: signing.key_id.clone(),
            client_id: settings.client_id.clone(),
            audience: signing
                .audience
                .clone()
                .unwrap_or_else(|| settings.token_url.clone()),
            subject,
            claims,
        })
    }

    fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A JSON member's value as the check reads it.
#[derive(Debug, PartialEq)]
pub(crate) enum Member {
    String(String),
    /// A number written without fraction or exponent.
    Integer(i128),
    /// Another number, `true`, `false` or `null`; or an object that is not
    /// flat (a member an object or an array, or a member twice).
    Other,
    /// A flat object of a member allowed to be one (a DPoP header's `jwk`).
    Object(Vec<(String, Member)>),
}

/// Why `input` must not be signed for `algorithm` under `rules`, or `Ok`
/// when it is the assertion they describe: ASCII `header.claims`, each part
/// base64url (unpadded) of a flat JSON object with no member twice; the
/// header exactly `alg` (the algorithm asked and configured), `typ` "JWT"
/// and `kid` (the configured key id, absent when none); the claims `iss` the
/// client id, `sub` the client id or the jwt-bearer subject, `aud` the
/// expected audience, integer `iat` and `exp` with 0 < exp - iat <= 300 and
/// `iat` within 60 s of `now` (this host's clock, seconds since the epoch),
/// a `jti` of 16 characters or more, and no other claim but the configured
/// ones, with their values. The error names the member that failed and
/// never quotes the input.
pub fn check_assertion(
    input: &[u8],
    algorithm: SigningAlgorithm,
    rules: &AssertionRules,
    now: f64,
) -> Result<(), String> {
    check(input, algorithm, rules, now).map_err(|why| format!("{REFUSED}{why}"))
}

fn check(
    input: &[u8],
    asked: SigningAlgorithm,
    rules: &AssertionRules,
    now: f64,
) -> Result<(), String> {
    if !input.iter().all(|b| *b == b'.' || is_base64url(*b)) {
        return Err("the input is not a JWT's header.claims (ASCII base64url, one '.')".into());
    }
    let parts: Vec<&[u8]> = input.split(|b| *b == b'.').collect();
    let [header, claims] = parts[..] else {
        return Err("the input is not a JWT's header.claims: it needs exactly one '.'".into());
    };
    let header = json_object(header, "header")?;
    let claims = json_object(claims, "claims")?;
    let is =
        |m: Option<&Member>, expected: &str| matches!(m, Some(Member::String(s)) if s == expected);

    // The header.
    for (name, _) in &header {
        if !HEADER_MEMBERS.contains(&name.as_str()) {
            return Err(format!(
                "{} is not allowed (only alg, typ and kid)",
                member(name, "header member")
            ));
        }
    }
    let configured = rules.algorithm.name();
    if asked != rules.algorithm {
        return Err(format!(
            "alg: the component asked for {asked}, the credential signs with {configured}"
        ));
    }
    if !is(get(&header, "alg"), configured) {
        return Err(format!("the header's alg is not {configured}"));
    }
    if !is(get(&header, "typ"), "JWT") {
        return Err("the header's typ is not \"JWT\"".into());
    }
    match &rules.key_id {
        None if get(&header, "kid").is_some() => {
            return Err(
                "the header has a kid, and no key id (signing key_id) is configured".into(),
            );
        }
        Some(kid) if !is(get(&header, "kid"), kid) => {
            return Err("the header's kid is not the configured key id (signing key_id)".into());
        }
        _ => {}
    }

    // The claims.
    if !is(get(&claims, "iss"), &rules.client_id) {
        return Err("the claim iss is not the client id".into());
    }
    let sub = get(&claims, "sub");
    if !is(sub, &rules.client_id) && !rules.subject.as_deref().is_some_and(|s| is(sub, s)) {
        return Err(match rules.subject {
            None => "the claim sub is not the client id".into(),
            Some(_) => "the claim sub is neither the client id nor the configured subject".into(),
        });
    }
    if !is(get(&claims, "aud"), &rules.audience) {
        return Err("the claim aud is not the expected audience (signing audience, else the issuer, else the token URL)".into());
    }
    let integer = |name: &str| match get(&claims, name) {
        Some(Member::Integer(n)) => Ok(*n),
        _ => Err(format!("the claim {name} is not a whole number of seconds")),
    };
    let iat = integer("iat")?;
    let exp = integer("exp")?;
    if !(exp - iat > 0 && exp - iat <= MAX_ASSERTION_LIFETIME_SECS) {
        return Err(format!(
            "the claim exp is not within {MAX_ASSERTION_LIFETIME_SECS} s after iat"
        ));
    }
    if !(now.is_finite() && (iat as f64 - now).abs() <= MAX_ASSERTION_SKEW_SECS) {
        return Err(format!(
            "the claim iat is more than {MAX_ASSERTION_SKEW_SECS} s from this host's clock"
        ));
    }
    if !matches!(get(&claims, "jti"), Some(Member::String(j)) if j.chars().count() >= MIN_JTI_CHARS)
    {
        return Err(format!(
            "the claim jti is not a string of {MIN_JTI_CHARS} characters or more"
        ));
    }
    for (name, value) in &claims {
        if COMPONENT_CLAIMS.contains(&name.as_str()) {
            continue;
        }
        let Some(expected) = rules.claim(name) else {
            return Err(format!(
                "{} is not configured (only the jwt-bearer claims are added)",
                member(name, "claim")
            ));
        };
        if !is(Some(value), expected) {
            // A configured name: the settings' text, not the input's.
            return Err(format!("the claim {name} is not its configured value"));
        }
    }
    Ok(())
}

/// The member `name` of a part.
pub(crate) fn get<'a>(members: &'a [(String, Member)], name: &str) -> Option<&'a Member> {
    members.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// base64url's alphabet (RFC 4648 §5).
pub(crate) fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Unpadded base64url (every byte already in the alphabet); none for a
/// length no encoding has.
fn base64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            _ => 63,
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (value(*c) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// A member as a refusal says it: by a registered name; another name is
/// the component's text, not repeated.
pub(crate) fn member(name: &str, what: &str) -> String {
    if NAMEABLE.contains(&name) {
        format!("the {what} {name}")
    } else {
        format!("a {what} named otherwise (the name is not repeated)")
    }
}

/// Unpadded base64url (RFC 4648 §5).
pub(crate) fn base64url_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWT part's members in order: unpadded base64url of UTF-8 JSON, one
/// flat object (no member an object or array: none of an assertion is), no
/// member twice (a server's parser may take another of two `aud`s than this
/// check).
fn json_object(part: &[u8], what: &str) -> Result<Vec<(String, Member)>, String> {
    json_object_with(part, what, &[])
}

/// [`json_object`], where the members named in `objects` may be flat
/// objects themselves ([`Member::Object`]; one that is not flat, or has a
/// member twice, reads as [`Member::Other`]).
pub(crate) fn json_object_with(
    part: &[u8],
    what: &str,
    objects: &[&str],
) -> Result<Vec<(String, Member)>, String> {
    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    let not_object = || format!("the {what} is not a JSON object in base64url without padding");
    let kind = if what == "header" {
        "header member"
    } else {
        "claim"
    };
    if part.is_empty() {
        return Err(not_object());
    }
    let json = base64url_decode(part).ok_or_else(not_object)?;

    /// A member's value; `None` for an array, or an object where none is
    /// allowed (consumed). `Value(true)`: an object is read as one.
    struct Value(bool);
    impl<'de> DeserializeSeed<'de> for Value {
        type Value = Option<Member>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Value {
        type Value = Option<Member>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Member::String(v.to_owned())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Member::Integer(v.into())))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Member::Integer(v.into())))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Some(Member::Other))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Some(Member::Other))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(Member::Other))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            if !self.0 {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            let mut members: Vec<(String, Member)> = Vec::new();
            let mut flat = true;
            while let Some(name) = map.next_key::<String>()? {
                match map.next_value_seed(Value(false))? {
                    Some(v) if flat && !members.iter().any(|(k, _)| *k == name) => {
                        members.push((name, v));
                    }
                    _ => flat = false,
                }
            }
            Ok(Some(if flat {
                Member::Object(members)
            } else {
                Member::Other
            }))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    /// The object: its members, or the first refusal (the rest consumed,
    /// so the parser still checks the text is JSON).
    struct Object<'a>(&'a str, &'a [&'a str]);
    impl<'de> Visitor<'de> for Object<'_> {
        type Value = Result<Vec<(String, Member)>, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members: Vec<(String, Member)> = Vec::new();
            let mut refusal = None;
            while let Some(name) = map.next_key::<String>()? {
                let value = map.next_value_seed(Value(self.1.contains(&name.as_str())))?;
                if refusal.is_some() {
                    continue;
                }
                match value {
                    None => {
                        refusal = Some(format!(
                            "{} is not a string or a number",
                            member(&name, self.0)
                        ));
                    }
                    Some(_) if members.iter().any(|(k, _)| *k == name) => {
                        refusal = Some(format!("{} appears twice", member(&name, self.0)));
                    }
                    Some(v) => members.push((name, v)),
                }
            }
            Ok(refusal.map_or(Ok(members), Err))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(&json);
    let parsed = de.deserialize_map(Object(kind, objects)).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    match parsed {
        Ok(members) => members,
        Err(_) => Err(not_object()),
    }
}

/// The `signer` of one call: the credential's signing settings and what
/// the component may ask it to sign. The key is read only when a signature
/// is asked for, after the check (a call that signs nothing reads no key),
/// and at each signature, so a rotated file or variable counts at once.
#[derive(Clone, Debug)]
pub(crate) struct Signer {
    signing: Signing,
    rules: AssertionRules,
}

impl Signer {
    /// For a call whose WIT settings are `wit`; none when nothing is signed.
    pub(crate) fn new(
        signing: Option<&Signing>,
        wit: &crate::bindings::rekey::oauth2::types::Settings,
    ) -> Option<Signer> {
        Some(Signer {
            signing: signing?.clone(),
            rules: AssertionRules::of_wit(wit)?,
        })
    }

    /// The WIT `signer.sign`: the host's check of `input` first, then the
    /// key, loaded now, signs it. Errors name the member that failed or the
    /// key's file or variable, never the key or the input.
    pub(crate) fn sign(&self, algorithm: WitAlgorithm, input: &[u8]) -> Result<Vec<u8>, String> {
        let algorithm = SigningAlgorithm::of_wit(algorithm);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(f64::NAN, |d| d.as_secs_f64());
        if let Err(refusal) = check_assertion(input, algorithm, &self.rules, now) {
            tracing::warn!("assertion not signed: {refusal}");
            return Err(refusal);
        }
        self.signing.load()?.sign(algorithm, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A key made by openssl in `dir`: (path, PEM text).
    fn openssl(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, String) {
        let path = dir.join(name);
        let status = Command::new("openssl")
            .args(args)
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    fn ec_pkcs8(dir: &Path) -> (PathBuf, String) {
        openssl(
            dir,
            "ec.pem",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        )
    }

    /// A signature that openssl verifies with the public key of `key_pem`:
    /// the signature is what any JOSE verifier reads.
    fn openssl_verifies(dir: &Path, key: &Path, input: &[u8], der_sig: &[u8]) -> bool {
        let (data, sig, public) = (dir.join("in"), dir.join("sig"), dir.join("pub.pem"));
        std::fs::write(&data, input).unwrap();
        std::fs::write(&sig, der_sig).unwrap();
        let ok = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sig)
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// `r || s` (32 bytes each) as the DER `ECDSA-Sig-Value` openssl reads.
    fn jose_to_der(sig: &[u8]) -> Vec<u8> {
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
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn es256_from_pkcs8_and_sec1_signs_r_s_that_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, _) = ec_pkcs8(dir.path());
        let (sec1, text) = openssl(
            dir.path(),
            "sec1.pem",
            &["ec", "-in", pkcs8.to_str().unwrap()],
        );
        assert!(text.contains("BEGIN EC PRIVATE KEY"), "{text}");
        for path in [&pkcs8, &sec1] {
            let source = SigningKeySource::File(path.clone());
            let key = source.load(None).unwrap();
            assert_eq!(key.algorithm(), SigningAlgorithm::Es256);
            let input = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
            let sig = key.sign(SigningAlgorithm::Es256, input).unwrap();
            assert_eq!(sig.len(), 64, "r || s, not DER");
            assert!(openssl_verifies(
                dir.path(),
                path,
                input,
                &jose_to_der(&sig)
            ));
            assert!(!openssl_verifies(
                dir.path(),
                path,
                b"other",
                &jose_to_der(&sig)
            ));
            // The SEC1 key is the PKCS#8 key: same public point.
            assert_eq!(
                key.public_key_bytes(),
                SigningKeySource::File(pkcs8.clone())
                    .load(None)
                    .unwrap()
                    .public_key_bytes()
            );
            let wrong = key.sign(SigningAlgorithm::Rs256, input).unwrap_err();
            assert!(wrong.contains("is for ES256, not RS256"), "{wrong}");
        }
    }

    #[test]
    fn rs256_from_pkcs8_and_pkcs1_signs_what_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, _) = openssl(
            dir.path(),
            "rsa.pem",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let (pkcs1, text) = openssl(
            dir.path(),
            "rsa1.pem",
            &["rsa", "-traditional", "-in", pkcs8.to_str().unwrap()],
        );
        assert!(text.contains("BEGIN RSA PRIVATE KEY"), "{text}");
        for path in [&pkcs8, &pkcs1] {
            let key = Signing::key_file(SigningAlgorithm::Rs256, path)
                .load()
                .unwrap();
            let input = b"header.claims";
            let sig = key.sign(SigningAlgorithm::Rs256, input).unwrap();
            assert_eq!(sig.len(), 256);
            assert!(openssl_verifies(dir.path(), path, input, &sig));
            // ES256 settings with an RSA key: refused at load, naming the file.
            let err = Signing::key_file(SigningAlgorithm::Es256, path)
                .load()
                .unwrap_err();
            assert!(err.contains("2048-bit RSA key; ES256 needs"), "{err}");
            assert!(err.contains(path.to_str().unwrap()), "{err}");
        }
    }

    #[test]
    fn refusals_name_the_source_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ec, ec_text) = ec_pkcs8(dir.path());
        let body: String = ec_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let (small, small_text) = openssl(
            dir.path(),
            "small.pem",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
            ],
        );
        let (encrypted, enc_text) = openssl(
            dir.path(),
            "enc.pem",
            &[
                "pkcs8",
                "-topk8",
                "-in",
                ec.to_str().unwrap(),
                "-passout",
                "pass:pw",
            ],
        );
        assert!(enc_text.contains("ENCRYPTED PRIVATE KEY"));
        let (legacy, legacy_text) = openssl(
            dir.path(),
            "legacy.pem",
            &[
                "ec",
                "-in",
                ec.to_str().unwrap(),
                "-aes128",
                "-passout",
                "pass:pw",
            ],
        );
        assert!(legacy_text.contains("Proc-Type"), "{legacy_text}");
        let (p384, p384_text) = openssl(
            dir.path(),
            "p384.pem",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
        );
        let public = dir.path().join("public.pem");
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&ec)
            .output()
            .unwrap();
        std::fs::write(&public, &out.stdout).unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}AAAA\n-----END PRIVATE KEY-----\n",
                &body[..40]
            ),
        )
        .unwrap();
        let cases: [(&Path, &str); 7] = [
            (
                &small,
                "is an RSA key under 2048 bits; RS256 needs an RSA key of 2048 bits",
            ),
            (&encrypted, "is encrypted"),
            (&legacy, "is encrypted"),
            (&p384, "ES256 an EC key on P-256"),
            (&public, "holds a PUBLIC KEY, no private key"),
            (&garbage, "PKCS#8"),
            (
                &dir.path().join("missing.pem"),
                "cannot be read (no such file)",
            ),
        ];
        for (path, expected) in cases {
            let err = SigningKeySource::File(path.to_owned())
                .load(Some(SigningAlgorithm::Rs256))
                .unwrap_err();
            assert!(err.contains(expected), "{}: {err}", path.display());
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            for secret in [&body[..40], &small_text[40..80], &p384_text[40..80]] {
                assert!(!err.contains(secret), "{err}");
            }
        }
        // A FIFO, a directory or a device in the key's place is refused at once.
        let fifo = dir.path().join("fifo.pem");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for path in [fifo.as_path(), dir.path(), Path::new("/dev/zero")] {
            let err = SigningKeySource::File(path.to_owned())
                .load(None)
                .unwrap_err();
            assert!(err.contains("is not a regular file"), "{err}");
        }
        let err = SigningKeySource::Env("REKEY_TEST_NO_SUCH_KEY_VAR".into())
            .load(None)
            .unwrap_err();
        assert_eq!(
            err,
            "the signing key's environment variable REKEY_TEST_NO_SUCH_KEY_VAR is not set"
        );
        let key = SigningKeySource::File(ec.clone()).load(None).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("[redacted]") && !shown.contains(&body[..20]),
            "{shown}"
        );
    }

    #[test]
    fn stored_as_the_other_hosts_write_it() {
        let mut s = Signing::key_file(SigningAlgorithm::Es256, "/etc/rekey/k.pem");
        s.key_id = Some("k1".into());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"algorithm": "ES256", "key_id": "k1", "key_file": "/etc/rekey/k.pem"})
        );
        let read: Signing = serde_json::from_value(
            serde_json::json!({"algorithm": "rs256", "audience": "https://idp", "key_env": "K"}),
        )
        .unwrap();
        assert_eq!(read.algorithm, SigningAlgorithm::Rs256);
        assert_eq!(read.key, SigningKeySource::Env("K".into()));
        assert_eq!(read.audience.as_deref(), Some("https://idp"));
        assert!(
            serde_json::from_value::<Signing>(
                serde_json::json!({"algorithm": "HS256", "key_env": "K"})
            )
            .is_err()
        );
    }

    #[test]
    fn sec1_wrapping_encodes_long_lengths() {
        let mut v = Vec::new();
        push_len(&mut v, 0x7f);
        push_len(&mut v, 0x80);
        push_len(&mut v, 0x1234);
        assert_eq!(v, [0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    const NOW: f64 = 1_800_000_000.0;
    const TOKEN_URL: &str = "https://idp.example/token";
    const JTI: &str = "0123456789abcdef0123456789abcdef";

    /// `header.claims` from the JSON texts as given (a member may be there twice).
    fn input(header: &str, claims: &str) -> Vec<u8> {
        format!(
            "{}.{}",
            super::base64url_encode(header.as_bytes()),
            super::base64url_encode(claims.as_bytes())
        )
        .into_bytes()
    }

    fn client_rules(key_id: Option<&str>) -> AssertionRules {
        AssertionRules {
            algorithm: SigningAlgorithm::Es256,
            key_id: key_id.map(str::to_owned),
            client_id: "app".into(),
            audience: TOKEN_URL.into(),
            subject: None,
            claims: vec![],
        }
    }

    fn bearer_rules() -> AssertionRules {
        AssertionRules {
            subject: Some("robot@svc".into()),
            claims: vec![("scope".into(), "api.read".into())],
            ..client_rules(Some("k1"))
        }
    }

    fn claims(iss: &str, sub: &str, aud: &str, iat: i64, exp: i64, extra: &str) -> String {
        format!(
            r#"{{"iss":"{iss}","sub":"{sub}","aud":"{aud}","iat":{iat},"exp":{exp},"jti":"{JTI}"{extra}}}"#
        )
    }

    /// The assertions the component builds pass: a client assertion (with
    /// and without a kid) and a jwt-bearer one with its subject and claims.
    #[test]
    fn the_components_assertions_pass_the_check() {
        let now = NOW as i64;
        let ok = claims("app", "app", TOKEN_URL, now, now + 300, "");
        let es = SigningAlgorithm::Es256;
        check_assertion(
            &input(r#"{"alg":"ES256","typ":"JWT"}"#, &ok),
            es,
            &client_rules(None),
            NOW,
        )
        .unwrap();
        check_assertion(
            &input(r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#, &ok),
            es,
            &client_rules(Some("k1")),
            NOW + 59.0,
        )
        .unwrap();
        let bearer = claims(
            "app",
            "robot@svc",
            TOKEN_URL,
            now,
            now + 300,
            r#","scope":"api.read""#,
        );
        let header = r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#;
        check_assertion(&input(header, &bearer), es, &bearer_rules(), NOW - 30.0).unwrap();
        // Whitespace is JSON's business; the component writes none.
        let spaced = format!(" {} ", ok.replace(',', " ,\n"));
        check_assertion(
            &input(r#"{ "alg" : "ES256", "typ":"JWT" }"#, &spaced),
            es,
            &client_rules(None),
            NOW,
        )
        .unwrap();
    }

    /// What a compromised component might ask the host to sign: each is
    /// refused by the check, naming the member that failed and never
    /// repeating what it was given.
    #[test]
    fn hostile_assertions_are_refused_naming_the_member_never_the_input() {
        let now = NOW as i64;
        let evil = "https://evil.example";
        let es = r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#;
        let ok = claims("app", "app", TOKEN_URL, now, now + 300, "");
        let rules = client_rules(Some("k1"));
        let cases: Vec<(String, String, &str)> = vec![
            // The claims.
            (
                es.into(),
                claims("app", "app", evil, now, now + 300, ""),
                "the claim aud is not the expected audience",
            ),
            (
                es.into(),
                ok.replace(
                    &format!(r#""aud":"{TOKEN_URL}""#),
                    &format!(r#""aud":["{TOKEN_URL}"]"#),
                ),
                "the claim aud is not a string or a number",
            ),
            (
                es.into(),
                ok.replace(&format!(r#""aud":"{TOKEN_URL}""#), r#""aud":null"#),
                "the claim aud is not the expected audience",
            ),
            (
                es.into(),
                ok.replace(&format!(r#""aud":"{TOKEN_URL}","#), ""),
                "the claim aud is not the expected audience",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now, now + 86_400 * 365, ""),
                "the claim exp is not within 300 s after iat",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now, now + 301, ""),
                "the claim exp is not within 300 s after iat",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now, now, ""),
                "the claim exp is not within 300 s after iat",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now, now - 1, ""),
                "the claim exp is not within 300 s after iat",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now + 3600, now + 3900, ""),
                "the claim iat is more than 60 s from this host's clock",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now - 61, now + 200, ""),
                "the claim iat is more than 60 s from this host's clock",
            ),
            (
                es.into(),
                ok.replace(&format!(r#""iat":{now}"#), &format!(r#""iat":{now}.5"#)),
                "the claim iat is not a whole number of seconds",
            ),
            (
                es.into(),
                ok.replace(&format!(r#""exp":{}"#, now + 300), r#""exp":1e10"#),
                "the claim exp is not a whole number of seconds",
            ),
            (
                es.into(),
                ok.replace(
                    &format!(r#""exp":{}"#, now + 300),
                    &format!(r#""exp":"{}""#, now + 300),
                ),
                "the claim exp is not a whole number of seconds",
            ),
            (
                es.into(),
                ok.replace(
                    &format!(r#""exp":{}"#, now + 300),
                    r#""exp":99999999999999999999999"#,
                ),
                "the claim exp is not a whole number of seconds",
            ),
            (
                es.into(),
                claims("attacker", "app", TOKEN_URL, now, now + 300, ""),
                "the claim iss is not the client id",
            ),
            (
                es.into(),
                claims("app", "attacker", TOKEN_URL, now, now + 300, ""),
                "the claim sub is not the client id",
            ),
            (
                es.into(),
                ok.replace(JTI, "attacker"),
                "the claim jti is not a string of 16 characters or more",
            ),
            (
                es.into(),
                ok.replace(
                    &format!(r#""jti":"{JTI}""#),
                    r#""jti":12345678901234567890"#,
                ),
                "the claim jti is not a string of 16 characters or more",
            ),
            (
                es.into(),
                claims("app", "app", TOKEN_URL, now, now + 300, r#","nbf":0"#),
                "the claim nbf is not configured",
            ),
            (
                es.into(),
                claims(
                    "app",
                    "app",
                    TOKEN_URL,
                    now,
                    now + 300,
                    r#","attacker_claim":"x""#,
                ),
                "a claim named otherwise (the name is not repeated) is not configured",
            ),
            (
                es.into(),
                claims(
                    "app",
                    "app",
                    TOKEN_URL,
                    now,
                    now + 300,
                    r#","cnf":{"jwk":{}}"#,
                ),
                "the claim cnf is not a string or a number",
            ),
            // A member twice: a server may read the other one.
            (
                es.into(),
                claims(
                    "app",
                    "app",
                    TOKEN_URL,
                    now,
                    now + 300,
                    &format!(r#","aud":"{evil}""#),
                ),
                "the claim aud appears twice",
            ),
            (
                es.into(),
                claims(
                    "app",
                    "app",
                    TOKEN_URL,
                    now,
                    now + 300,
                    r#","exp":4102444800"#,
                ),
                "the claim exp appears twice",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"k1","kid":"attacker"}"#.into(),
                ok.clone(),
                "the header member kid appears twice",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"k1","alg":"none"}"#.into(),
                ok.clone(),
                "the header member alg appears twice",
            ),
            (
                es.into(),
                claims(
                    "app",
                    "app",
                    TOKEN_URL,
                    now,
                    now + 300,
                    r#","attacker_claim":"x","attacker_claim":"y""#,
                ),
                "a claim named otherwise (the name is not repeated) appears twice",
            ),
            // The header.
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"attacker"}"#.into(),
                ok.clone(),
                "the header's kid is not the configured key id",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT"}"#.into(),
                ok.clone(),
                "the header's kid is not the configured key id",
            ),
            (
                r#"{"alg":"none","typ":"JWT","kid":"k1"}"#.into(),
                ok.clone(),
                "the header's alg is not ES256",
            ),
            (
                r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#.into(),
                ok.clone(),
                "the header's alg is not ES256",
            ),
            (
                r#"{"typ":"JWT","kid":"k1"}"#.into(),
                ok.clone(),
                "the header's alg is not ES256",
            ),
            (
                r#"{"alg":"ES256","kid":"k1"}"#.into(),
                ok.clone(),
                "the header's typ is not \"JWT\"",
            ),
            (
                format!(r#"{{"alg":"ES256","typ":"JWT","kid":"k1","jku":"{evil}/jwks"}}"#),
                ok.clone(),
                "the header member jku is not allowed (only alg, typ and kid)",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"k1","jwk":{"kty":"EC"}}"#.into(),
                ok.clone(),
                "the header member jwk is not a string or a number",
            ),
            (
                format!(r#"{{"alg":"ES256","typ":"JWT","kid":"k1","x5u":"{evil}"}}"#),
                ok.clone(),
                "the header member x5u is not allowed",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"k1","crit":["exp"]}"#.into(),
                ok.clone(),
                "the header member crit is not a string or a number",
            ),
            (
                r#"{"alg":"ES256","typ":"JWT","kid":"k1","attacker":"x"}"#.into(),
                ok.clone(),
                "a header member named otherwise (the name is not repeated) is not allowed",
            ),
            // Not two JSON objects.
            (
                r#"["alg","ES256"]"#.into(),
                ok.clone(),
                "the header is not a JSON object in base64url without padding",
            ),
            (
                es.into(),
                format!("{ok}attacker"),
                "the claims is not a JSON object in base64url without padding",
            ),
            (
                es.into(),
                format!("{ok}{ok}"),
                "the claims is not a JSON object in base64url without padding",
            ),
            (
                es.into(),
                "\"attacker\"".into(),
                "the claims is not a JSON object in base64url without padding",
            ),
            (
                es.into(),
                "{\"aud\":NaN}".into(),
                "the claims is not a JSON object in base64url without padding",
            ),
        ];
        for (header, claims, says) in &cases {
            let got = check_assertion(&input(header, claims), SigningAlgorithm::Es256, &rules, NOW)
                .expect_err(says);
            assert!(got.starts_with(REFUSED), "{got}");
            assert!(got.contains(says), "{header} {claims}: {got}");
            for quoted in ["attacker", "evil", "4102444800", "99999", "jwks"] {
                assert!(!got.contains(quoted), "{got}");
            }
        }
        // Not header.claims at all.
        let good = input(es, &ok);
        let dot = good.iter().position(|b| *b == b'.').unwrap();
        let signed = [good.clone(), b".c2ln".to_vec()].concat();
        let padded = [&good[..dot], b"=.", &good[dot + 1..]].concat();
        let spaced = [&good[..dot], b". ", &good[dot + 1..]].concat();
        let empty = [b".".as_slice(), &good[dot + 1..]].concat();
        let odd = [&good[..dot], b"A.", &good[dot + 1..]].concat();
        let shapes: [(&[u8], &str); 7] = [
            (&signed, "it needs exactly one '.'"),
            (&good[..dot], "it needs exactly one '.'"),
            (&padded, "(ASCII base64url, one '.')"),
            (&spaced, "(ASCII base64url, one '.')"),
            ("é.é".as_bytes(), "(ASCII base64url, one '.')"),
            (&empty, "the header is not a JSON object"),
            (&odd, "the header is not a JSON object"),
        ];
        for (bytes, says) in shapes {
            let got = check_assertion(bytes, SigningAlgorithm::Es256, &rules, NOW).unwrap_err();
            assert!(got.starts_with(REFUSED) && got.contains(says), "{got}");
        }
        // Not UTF-8 inside.
        let latin1 = format!(
            "{}.{}",
            super::base64url_encode(es.as_bytes()),
            super::base64url_encode(b"{\"iss\":\"\xff\"}")
        );
        let got =
            check_assertion(latin1.as_bytes(), SigningAlgorithm::Es256, &rules, NOW).unwrap_err();
        assert!(got.contains("the claims is not a JSON object"), "{got}");
        // The algorithm asked is the credential's, and so is the header's.
        let got = check_assertion(&good, SigningAlgorithm::Rs256, &rules, NOW).unwrap_err();
        assert!(
            got.contains("alg: the component asked for RS256, the credential signs with ES256"),
            "{got}"
        );
        let rs = AssertionRules {
            algorithm: SigningAlgorithm::Rs256,
            ..rules.clone()
        };
        let got = check_assertion(&good, SigningAlgorithm::Rs256, &rs, NOW).unwrap_err();
        assert!(got.contains("the header's alg is not RS256"), "{got}");
        // No key id configured: a kid is refused.
        let got =
            check_assertion(&good, SigningAlgorithm::Es256, &client_rules(None), NOW).unwrap_err();
        assert!(
            got.contains("the header has a kid, and no key id (signing key_id) is configured"),
            "{got}"
        );
        // A clock that cannot be read admits nothing.
        let got = check_assertion(&good, SigningAlgorithm::Es256, &rules, f64::NAN).unwrap_err();
        assert!(got.contains("from this host's clock"), "{got}");
    }

    /// The jwt-bearer grant: `sub` is the client id or the configured
    /// subject, and further claims are the configured ones with their values.
    #[test]
    fn a_jwt_bearer_assertion_carries_its_subject_and_configured_claims_only() {
        let now = NOW as i64;
        let header = r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#;
        let rules = bearer_rules();
        let check = |sub: &str, extra: &str| {
            check_assertion(
                &input(
                    header,
                    &claims("app", sub, TOKEN_URL, now, now + 300, extra),
                ),
                SigningAlgorithm::Es256,
                &rules,
                NOW,
            )
        };
        check("robot@svc", r#","scope":"api.read""#).unwrap();
        check("app", "").unwrap();
        for (sub, extra, says) in [
            (
                "root@svc",
                "",
                "the claim sub is neither the client id nor the configured subject",
            ),
            (
                "robot@svc",
                r#","scope":"admin""#,
                "the claim scope is not its configured value",
            ),
            (
                "robot@svc",
                r#","scope":7"#,
                "the claim scope is not its configured value",
            ),
            (
                "robot@svc",
                r#","scope":"api.read","scope":"admin""#,
                "the claim scope appears twice",
            ),
            (
                "robot@svc",
                r#","azp":"x""#,
                "the claim azp is not configured",
            ),
        ] {
            let got = check(sub, extra).unwrap_err();
            assert!(got.contains(says), "{sub} {extra}: {got}");
            assert!(!got.contains("admin") && !got.contains("root"), "{got}");
        }
    }
}
