//! rekey's TLS: the HTTP client's configuration, and [`CertCheck`], the one
//! certificate verifier every TLS client of rekey is made of.
//!
//! The HTTP client trusts as the platform does (rustls-platform-verifier, as
//! reqwest would use), loaded on the first certificate to verify instead of
//! when the client is built. Loading the system's roots reads and parses
//! every CA certificate (/etc/ssl/certs: ~2.5 ms, a quarter of a `rekey send`
//! process). A call over plain-http loopback never needs them, and a
//! long-lived process pays once either way.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A client certificate chain and its private key, presented to servers
/// that ask for one (mutual TLS). `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl ClientIdentity {
    /// From PEM: the certificate chain (leaf first) and the private key
    /// (PKCS#8, PKCS#1 or SEC1). Errors never quote the key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "the client certificate is not PEM".to_owned())?;
        if chain.is_empty() {
            return Err("no certificate in the client certificate PEM".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| "no private key in the client key PEM".to_owned())?;
        // Refused now rather than at the first handshake.
        rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|_| "the client key is of a type TLS cannot sign with".to_owned())?;
        Ok(ClientIdentity {
            chain,
            key: Arc::new(key),
        })
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// HTTP/1.1 over rustls with ring, verifying as the platform does, with the
/// client certificate if one is configured.
pub(crate) fn client_config(identity: Option<&ClientIdentity>) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(lazy_platform(provider));
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    // reqwest is built for HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The platform's verifier, built when a server's certificate is first
/// verified (signatures need no roots and are checked without it).
fn lazy_platform(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    let platform = OnceLock::new();
    let for_roots = provider.clone();
    let check = move |presented: &Presented<'_>| {
        let verifier = platform
            .get_or_init(|| rustls_platform_verifier::Verifier::new(for_roots.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        presented.verify_with(verifier)
    };
    Arc::new(CertCheck::new("platform roots", provider, check))
}

type Cert<'a> = CertificateDer<'a>;
type Dss = DigitallySignedStruct;
/// What a check of the server's certificate answers.
pub(crate) type Verdict = Result<ServerCertVerified, Error>;
type SigVerdict = Result<HandshakeSignatureValid, Error>;

/// The server's certificate as the handshake presents it, with what a
/// verifier is given to judge it.
pub(crate) struct Presented<'a> {
    end_entity: &'a Cert<'a>,
    intermediates: &'a [Cert<'a>],
    server_name: &'a ServerName<'a>,
    ocsp_response: &'a [u8],
    now: UnixTime,
}

impl Presented<'_> {
    /// What `verifier` makes of it.
    pub(crate) fn verify_with(&self, verifier: &dyn ServerCertVerifier) -> Verdict {
        let Presented {
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        } = *self;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
}

/// A verifier made of `check`, what is trusted of the server's certificate
/// (the policy: platform roots, a CA file, anything), and the handshake's
/// signature checks, which are the crypto provider's whatever the policy.
pub(crate) struct CertCheck<F> {
    /// The policy in a few words, for Debug (nothing else is shown).
    policy: &'static str,
    provider: Arc<CryptoProvider>,
    check: F,
}

impl<F: Fn(&Presented<'_>) -> Verdict + Send + Sync + 'static> CertCheck<F> {
    /// A verifier trusting what `check` accepts, checking signatures with
    /// `provider`'s algorithms.
    pub(crate) fn new(policy: &'static str, provider: Arc<CryptoProvider>, check: F) -> Self {
        CertCheck {
            policy,
            provider,
            check,
        }
    }
}

impl<F> CertCheck<F> {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl<F> fmt::Debug for CertCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertCheck")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<F: Fn(&Presented<'_>) -> Verdict + Send + Sync> ServerCertVerifier for CertCheck<F> {
    fn verify_server_cert(
        &self,
        end_entity: &Cert<'_>,
        intermediates: &[Cert<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Verdict {
        (self.check)(&Presented {
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        })
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &Cert<'_>, dss: &Dss) -> SigVerdict {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &Cert<'_>, dss: &Dss) -> SigVerdict {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// A CA, a server certificate it signed for `db.example`, and an unrelated
/// CA (EC P-256, valid 2026-11-29 to 2126): verdicts to test, at [`AT`].
#[cfg(test)]
pub(crate) mod test_certs {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use std::time::Duration;

    /// A moment all three are valid at (2026-12-01).
    pub(crate) const AT: Duration = Duration::from_secs(1_796_083_200);

    pub(crate) const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCAT2gAwIBAgIUIlJgjBVSFSF1UacLM8dbYrspl5AwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNcmVrZXkgdGVzdCBDQTAgFw0yNjExMjkxNTI0NDFaGA8yMTI2
MTEwNTE1MjQ0MVowGDEWMBQGA1UEAwwNcmVrZXkgdGVzdCBDQTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABL0HT4GZ+1LDM2pqFpi0j2ayb4V3oe/+obLYgGU8xgv9
lQkPOeJTZK+yoHsZg3YGCHzd424QqENapjCbMv2H1U6jYzBhMB0GA1UdDgQWBBRH
jR3yzgprK6HOCp2DjnVpyJ7F3TAfBgNVHSMEGDAWgBRHjR3yzgprK6HOCp2DjnVp
yJ7F3TAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwICBDAKBggqhkjOPQQD
AgNHADBEAiBG/HMVee8Ww5aEeDYTQboLBToIDnic9EHDfb2BheeddgIgZC1xiloM
ClAEKSv9SNkOvM4cuUW7QO2NPC974GXNKuQ=
-----END CERTIFICATE-----";

    pub(crate) const DB_EXAMPLE: &str = "-----BEGIN CERTIFICATE-----
MIIBuDCCAV+gAwIBAgIUeeKIfZgoq8kpIiTJ0CQm0/rzDjMwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNcmVrZXkgdGVzdCBDQTAgFw0yNjExMjkxNTI0NDFaGA8yMTI2
MTEwNTE1MjQ0MVowFTETMBEGA1UEAwwKZGIuZXhhbXBsZTBZMBMGByqGSM49AgEG
CCqGSM49AwEHA0IABN/TWiYvj/17z7KluTsctcayV23tHu05tI+TehVFE79M8LNg
Rb/Px2HXlQBtMBQI08mMzHhgpvoZtd9mr+fDxtejgYcwgYQwFQYDVR0RBA4wDIIK
ZGIuZXhhbXBsZTAJBgNVHRMEAjAAMAsGA1UdDwQEAwIHgDATBgNVHSUEDDAKBggr
BgEFBQcDATAdBgNVHQ4EFgQUrVaeg3F9PVXZpgGuOrFobaalpfMwHwYDVR0jBBgw
FoAUR40d8s4Kayuhzgqdg451aciexd0wCgYIKoZIzj0EAwIDRwAwRAIgCA6sbNi8
Dgrdxht71PxrZl9M1eXO8YRM5mKWvBKQxQwCIBUPzkWQJvaY0Q2BzLOz61mzZj6i
POaq/WqDMU9MAA8U
-----END CERTIFICATE-----";

    pub(crate) const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATegAwIBAgIUNqeegfSKOSgfo1aIgcaOfq7apVkwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKYW5vdGhlciBDQTAgFw0yNjExMjkxNTI0NDFaGA8yMTI2MTEw
NTE1MjQ0MVowFTETMBEGA1UEAwwKYW5vdGhlciBDQTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABONFH8Xve7cZkjaQxhJ87udFvb9qE06If7RBJgM8pYFXVfHXPWKK
6WqSdRXKRwosK6+BpXLLiuuSfymQAbNtZIWjYzBhMB0GA1UdDgQWBBSxFsN+buoc
6tv0DssSe/K+GfTj/TAfBgNVHSMEGDAWgBSxFsN+buoc6tv0DssSe/K+GfTj/TAP
BgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwICBDAKBggqhkjOPQQDAgNJADBG
AiEA8JIpu6MTan3oDg1iQgS/lqQ7dA5sZMyVGjvKj2s1YHkCIQCE2u4ELLvubafh
eCj2PI4wkxfJy7lzrLfzDyOKZEQCsw==
-----END CERTIFICATE-----";

    pub(crate) fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    }

    pub(crate) fn at() -> UnixTime {
        UnixTime::since_unix_epoch(AT)
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::{CA, DB_EXAMPLE, OTHER_CA, at, der};
    use super::*;
    use rustls::CertificateError;
    use std::sync::Mutex;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn the_check_judges_the_certificate_and_the_provider_the_schemes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let verifier = CertCheck::new("refuses all", provider(), move |presented| {
            let name = presented.server_name.to_str().into_owned();
            log.lock()
                .unwrap()
                .push((name, presented.end_entity.to_vec()));
            Err(Error::General("refused".into()))
        });
        let (leaf, name) = (der(DB_EXAMPLE), ServerName::try_from("db.example").unwrap());
        let verdict = verifier.verify_server_cert(&leaf, &[], &name, &[], at());
        assert_eq!(verdict.unwrap_err(), Error::General("refused".into()));
        assert_eq!(
            *seen.lock().unwrap(),
            [("db.example".to_owned(), leaf.to_vec())]
        );
        assert_eq!(
            verifier.supported_verify_schemes(),
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        );
    }

    /// A chain verifier sees through [`Presented::verify_with`] what the
    /// handshake presented: the certificate, the name and the time.
    #[test]
    fn a_check_can_hand_the_certificate_to_a_verifier() {
        let chain_to = |ca: &str| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der(ca)).unwrap();
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            CertCheck::new("chain", provider(), move |presented| {
                presented.verify_with(chain.as_ref())
            })
        };
        let verdict = |ca: &str, name: &str, now: UnixTime| {
            let name = ServerName::try_from(name).unwrap().to_owned();
            chain_to(ca).verify_server_cert(&der(DB_EXAMPLE), &[], &name, &[], now)
        };
        assert!(verdict(CA, "db.example", at()).is_ok());
        let refused = |ca, name, now| match verdict(ca, name, now) {
            Err(Error::InvalidCertificate(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(OTHER_CA, "db.example", at()),
            CertificateError::UnknownIssuer
        );
        assert!(matches!(
            refused(CA, "other.example", at()),
            CertificateError::NotValidForNameContext { .. }
        ));
        let before = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000));
        assert!(matches!(
            refused(CA, "db.example", before),
            CertificateError::NotValidYetContext { .. }
        ));
    }

    #[test]
    fn debug_shows_the_policy_only() {
        let verifier = CertCheck::new("anything", provider(), |_| {
            Ok(ServerCertVerified::assertion())
        });
        assert_eq!(
            format!("{verifier:?}"),
            r#"CertCheck { policy: "anything", .. }"#
        );
    }

    #[test]
    fn the_platform_does_not_trust_a_private_ca() {
        let verifier = lazy_platform(provider());
        let name = ServerName::try_from("db.example").unwrap();
        let verdict = verifier.verify_server_cert(&der(DB_EXAMPLE), &[], &name, &[], at());
        assert!(verdict.is_err(), "{verdict:?}");
    }
}
