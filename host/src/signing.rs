//! Signed assertions (RFC 7523, contract 0.4.0): the component builds each
//! JWT and imports `signer.sign`; the host signs with the credential's
//! private key, which never enters the sandbox.
//!
//! A credential's [`Signing`] names the algorithm and where its key is: a
//! PEM file or an environment variable holding the PEM. The store keeps that
//! reference, never the key. The key is loaded at each call (a rotated file
//! or variable counts at once), before anything is sent: a missing, wrong or
//! unreadable key is `InvalidSettings`, naming the file or variable and never
//! the key. Accepted: unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA
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

    fn of_wit(alg: WitAlgorithm) -> Self {
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
    /// A PEM file, read at each call (stored absolute as `key_file`).
    #[serde(rename = "key_file")]
    File(PathBuf),
    /// An environment variable holding the PEM, read at each call (stored
    /// as `key_env`).
    #[serde(rename = "key_env")]
    Env(String),
}

impl SigningKeySource {
    /// "the signing key file /etc/rekey/k.pem": what errors say (no key material).
    pub fn describe(&self) -> String {
        match self {
            SigningKeySource::File(path) => format!("the signing key file {}", path.display()),
            SigningKeySource::Env(var) => {
                format!("the signing key's environment variable {var}")
            }
        }
    }

    /// The key, loaded now; `algorithm` None: whatever the key is for.
    pub fn load(&self, algorithm: Option<SigningAlgorithm>) -> Result<SigningKey, String> {
        let where_ = self.describe();
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

    /// The public key: the SPKI DER's subjectPublicKey bytes (RSA: the
    /// PKCS#1 `RSAPublicKey`; EC: the uncompressed point). For tests.
    #[doc(hidden)]
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Rsa(rsa) => rsa.public_key().as_ref().to_vec(),
            Pair::Ec(ec) => ec.public_key().as_ref().to_vec(),
        }
    }

    /// The signature for the component's `signer.sign`.
    pub(crate) fn sign_wit(
        &self,
        algorithm: WitAlgorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.sign(SigningAlgorithm::of_wit(algorithm), input)
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
}
