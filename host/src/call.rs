//! The host side of the WIT for one call: its state and the `host`
//! interface's effects (HTTP, and the credential's record in the store).
//! Every decision — when to refresh, the lease, the refresh mark, dead
//! grants, whether a token was spent — is the component's; this file only
//! performs effects and repeats the checks on where a token may go.

use crate::bindings::rekey::oauth2::host::Host;
use crate::bindings::rekey::oauth2::signer;
use crate::bindings::rekey::oauth2::types::{
    self as wit, CredentialRecord, Purpose, RequestHead, Response, StoredRecord, TransportError,
    WriteError,
};
use crate::body::{self, Body};
use crate::error::{Error, describe_transport};
use crate::http::HttpClient;
use crate::observe::{Event, Exchange, Observer, loggable_url};
use crate::origins;
use crate::store::{self, Credential, KeyStore, Record, StoreError, call_store};
use crate::token_set::TokenSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::StoreLimits;
use wasmtime::component::Resource;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Time kept in hand after a token exchange, to persist its result.
const SPEND_MARGIN: Duration = Duration::from_secs(1);

/// Everything one call's imports need.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) credential: String,
    pub(crate) token_url: String,
    /// The device authorization URL of an `authorize` call; none in a `send`.
    pub(crate) device_url: Option<String>,
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) http: HttpClient,
    pub(crate) observer: Arc<dyn Observer>,
    /// The record the host loaded to start the call: the component's first
    /// `read-record` is answered from it, without a second store read.
    pub(crate) loaded: Option<StoredRecord>,
    /// The keys last read or written, to tell rotation in events.
    pub(crate) keys_seen: Option<TokenSet>,
    /// When the call began, for the lease event's wait.
    pub(crate) started: Instant,
    /// When the epoch deadline traps this call.
    pub(crate) deadline: Instant,
    pub(crate) http_total_timeout: Duration,
    /// Where this credential's token may go.
    pub(crate) destinations: Destinations,
    /// The credential's signer (its signing settings and what it may sign;
    /// the key is read when a signature is asked for); none when its
    /// settings sign nothing.
    pub(crate) signer: Option<crate::signing::Signer>,
    /// The credential's DPoP key (where it is and what proofs it may sign;
    /// the key is read when the component asks for it); none without DPoP.
    pub(crate) dpop: Option<crate::dpop::DpopSigner>,
    /// Set once the component writes the record (a refresh began): the call
    /// then finishes whatever its caller does.
    pub(crate) must_finish: crate::drive::MustFinish,
}

/// The API origins a credential's token may be sent to, parsed once per call.
#[derive(Default)]
pub(crate) struct Destinations(origins::Binding);

impl Destinations {
    /// From the credential's settings and its token set's `instance_url`
    /// (adopted only when it matches an instance pattern).
    pub(crate) fn of(c: &Credential) -> Result<Destinations, Error> {
        let instance = c.keys.as_ref().and_then(TokenSet::instance_url);
        origins::Binding::new(
            &c.settings.api_origins,
            &c.settings.instance_url_origins,
            instance.as_deref(),
        )
        .map(Destinations)
        .map_err(Error::InvalidSettings)
    }

    /// Whether the token may go to `url` (the check `http-send` makes).
    pub(crate) fn allows(&self, url: &url::Url) -> bool {
        self.0.allows(url)
    }

    /// Refuses a URL the token may not go to, naming what is allowed. The
    /// URL is the one parsed for sending (`http::parse_url`).
    pub(crate) fn check(&self, parsed: &url::Url, credential: &str) -> Result<(), Error> {
        if self.0.allows(parsed) {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "{} is not an API origin of credential {credential:?}, so its token is not sent there (see `rekey credential show`)",
            parsed.origin().ascii_serialization()
        )))
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for CallState {}

/// What `signer.sign` answers for a credential without a key.
pub(crate) const NO_SIGNING_KEY: &str = "no signing key is configured for this credential";

impl signer::Host for CallState {
    /// Signs with the key of the credential this call runs for (as
    /// `read-record` reads its record), once the host's check says `input`
    /// is the assertion its settings describe; the key is read only then.
    /// Errors name the member that failed or the key's file or variable,
    /// never the key or the input.
    async fn sign(
        &mut self,
        algorithm: wit::SigningAlgorithm,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match &self.signer {
            None => Err(NO_SIGNING_KEY.into()),
            Some(signer) => signer.sign(algorithm, &input),
        }
    }

    /// The public JWK of the DPoP key of the credential this call runs for
    /// (the key is read now, at each ask).
    async fn dpop_public_key(
        &mut self,
        algorithm: wit::SigningAlgorithm,
    ) -> Result<String, String> {
        match &self.dpop {
            None => Err(crate::dpop::NO_DPOP_KEY.into()),
            Some(dpop) => dpop.public_key(algorithm),
        }
    }

    /// Signs a DPoP proof with the credential's DPoP key, once the host's
    /// check says `input` is a proof for this credential: its token URL or a
    /// URL within its API origins (the check `http-send` makes), this key's
    /// JWK, a fresh `iat`. Errors name the member that failed or the key's
    /// file or variable, never the key or the input.
    async fn dpop_sign(
        &mut self,
        algorithm: wit::SigningAlgorithm,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match &self.dpop {
            None => Err(crate::dpop::NO_DPOP_KEY.into()),
            Some(dpop) => dpop.sign(algorithm, &input, &|url| self.destinations.allows(url)),
        }
    }
}

/// The component's view of a stored credential.
pub(crate) fn to_wit(c: &Credential) -> StoredRecord {
    StoredRecord {
        version: c.version,
        data: CredentialRecord {
            keys: c.keys.as_ref().map(|k| k.expose().to_owned()),
            lease: c.lease.as_ref().map(|l| wit::Lease {
                holder: l.holder.clone(),
                until_ms: l.until_ms,
            }),
            refresh_mark: c.refresh_mark.as_ref().map(|m| wit::RefreshMark {
                holder: m.holder.clone(),
                at_ms: m.at_ms,
            }),
            dead_grant: c.needs_authorization.as_ref().map(|d| wit::DeadGrant {
                code: d.code.clone(),
                at: d.at.max(0) as u64,
            }),
        },
    }
}

/// The store's view of what the component writes.
fn from_wit(data: CredentialRecord) -> Record {
    Record {
        keys: data.keys.map(TokenSet::stored),
        lease: data.lease.map(|l| store::Lease {
            holder: l.holder,
            until_ms: l.until_ms,
        }),
        refresh_mark: data.refresh_mark.map(|m| store::RefreshMark {
            holder: m.holder,
            at_ms: m.at_ms,
        }),
        dead_grant: data.dead_grant.map(|d| store::DeadGrant {
            code: d.code,
            at: i64::try_from(d.at).unwrap_or(i64::MAX),
        }),
    }
}

impl CallState {
    /// The host's own checks before a request leaves, whatever the component
    /// decided: a token request goes only to the credential's token endpoint
    /// and only while the call can still persist its result; an API request
    /// only to the credential's origins. (Plain http off loopback is refused
    /// for every request by the HTTP client.)
    fn admit(&mut self, purpose: Purpose, req: &RequestHead, url: &url::Url) -> Result<(), String> {
        match purpose {
            Purpose::TokenEndpoint => {
                if req.url != self.token_url {
                    return Err(
                        "a token request goes only to the credential's token endpoint".into(),
                    );
                }
                if Instant::now() + self.http_total_timeout + SPEND_MARGIN > self.deadline {
                    return Err(
                        "too little of the call's time is left to exchange and persist a refresh token"
                            .into(),
                    );
                }
                Ok(())
            }
            Purpose::Api => self
                .destinations
                .check(url, &self.credential)
                .map_err(|e| e.to_string()),
            // Its body carries the client's credentials: only to the device
            // authorization URL of an `authorize` call (a `send` has none).
            Purpose::DeviceEndpoint => match &self.device_url {
                Some(device) if *device == req.url => Ok(()),
                Some(_) => Err(
                    "a device request goes only to the credential's device authorization URL"
                        .into(),
                ),
                None => Err("this call makes no device authorization request".into()),
            },
        }
    }

    fn keys_event(&mut self, keys: &Option<TokenSet>, version: u64) {
        if keys == &self.keys_seen {
            return;
        }
        let rotated = keys
            .as_ref()
            .and_then(TokenSet::refresh_token)
            .is_some_and(|new| {
                self.keys_seen
                    .as_ref()
                    .and_then(TokenSet::refresh_token)
                    .is_none_or(|old| old.expose() != new.expose())
            });
        self.observer.event(&Event::KeysPersisted {
            credential: &self.credential,
            version,
            refresh_token_rotated: rotated,
        });
        self.keys_seen = keys.clone();
    }
}

impl Host for CallState {
    async fn http_send(
        &mut self,
        purpose: Purpose,
        req: RequestHead,
        body: Resource<Body>,
    ) -> Result<Response, TransportError> {
        let url = crate::http::parse_url(&req.url)?;
        self.admit(purpose, &req, &url)
            .map_err(TransportError::Refused)?;
        // A handle the component lent is valid by construction (the
        // runtime checks it); a host bug here is a transport failure, never
        // a request sent without its body.
        let bytes = body::get(self, &body)
            .map_err(|e| TransportError::InvalidRequest(format!("request body: {e}")))?;
        let target = loggable_url(&url);
        let started = Instant::now();
        let result = self.http.send_to(url, &req, bytes).await;
        let failure = result.as_ref().err().map(describe_transport);
        self.observer.event(&Event::Http {
            credential: &self.credential,
            exchange: match purpose {
                Purpose::Api => Exchange::Api,
                Purpose::TokenEndpoint | Purpose::DeviceEndpoint => Exchange::TokenEndpoint,
            },
            method: &req.method,
            target: &target,
            outcome: result
                .as_ref()
                .map(|r| r.status)
                .map_err(|_| failure.as_deref().unwrap_or("")),
            elapsed: started.elapsed(),
        });
        let resp = result?;
        let body = body::put(self, resp.body.into())
            .map_err(|e| TransportError::Other(format!("response body: {e}")))?;
        Ok(Response {
            status: resp.status,
            headers: resp.headers,
            body,
        })
    }

    async fn read_record(&mut self) -> Result<StoredRecord, String> {
        if let Some(loaded) = self.loaded.take() {
            return Ok(loaded);
        }
        let name = self.credential.clone();
        let c = call_store(&self.store, move |s| s.load(&name))
            .await
            .map_err(|e| e.to_string())?;
        self.keys_seen = c.keys.clone();
        Ok(to_wit(&c))
    }

    async fn emit_update_keys(
        &mut self,
        expected_version: u64,
        data: CredentialRecord,
    ) -> Result<u64, WriteError> {
        // The component writes only to refresh: from here the call must
        // finish (persist what it obtains) whatever its caller does.
        self.must_finish.set();
        self.loaded = None;
        let record = from_wit(data);
        let takes_lease = record.lease.is_some() && record.refresh_mark.is_none();
        let (name, r) = (self.credential.clone(), record.clone());
        let written = call_store(&self.store, move |s| {
            s.write_record(&name, expected_version, &r)
        })
        .await;
        match written {
            Ok(version) => {
                if takes_lease {
                    self.observer.event(&Event::LeaseAcquired {
                        credential: &self.credential,
                        waited: self.started.elapsed(),
                    });
                }
                self.keys_event(&record.keys, version);
                Ok(version)
            }
            Err(StoreError::Conflict(_)) => Err(WriteError::Conflict),
            Err(e) => {
                let reason = e.to_string();
                if record.keys != self.keys_seen {
                    self.observer.event(&Event::KeysNotPersisted {
                        credential: &self.credential,
                        reason: &reason,
                    });
                }
                Err(match e {
                    StoreError::Unknown(_) => WriteError::Unknown(reason),
                    _ => WriteError::Failed(reason),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `signer.sign` signs with the key of the call's credential; a call
    /// whose credential has none answers the contract's error.
    /// A fresh P-256 private key in PEM at `path` (made by openssl).
    fn p256_key(path: &std::path::Path) {
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success());
    }

    #[tokio::test]
    async fn the_signer_answers_for_the_calls_credential_only() {
        use signer::Host as _;
        let rekey = crate::Rekey::new(crate::Config::default()).unwrap();
        let mut state = rekey.new_state("c", "https://idp/t", Arc::new(crate::MemoryStore::new()));
        let refused = state
            .sign(wit::SigningAlgorithm::Es256, b"h.c".to_vec())
            .await;
        assert_eq!(refused, Err(NO_SIGNING_KEY.to_owned()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        p256_key(&path);
        let mut settings = crate::Settings::new("https://idp/t", "app");
        settings.signing = Some(crate::Signing::key_file(
            crate::SigningAlgorithm::Es256,
            &path,
        ));
        let wit = settings.to_wit().unwrap();
        state.signer = crate::signing::Signer::new(settings.signing.as_ref(), &wit);
        let input = assertion("ES256", "https://idp/t", 300);
        let sig = state
            .sign(wit::SigningAlgorithm::Es256, input.clone())
            .await
            .unwrap();
        assert_eq!(sig.len(), 64);
        let wrong = state
            .sign(wit::SigningAlgorithm::Rs256, input)
            .await
            .unwrap_err();
        assert!(
            wrong.contains("alg: the component asked for RS256, the credential signs with ES256"),
            "{wrong}"
        );
    }

    /// The DPoP imports answer with the DPoP key of the call's credential
    /// (none: the contract's error); a proof's `htu` is the token URL or a
    /// URL the call's own API-origin check admits (with the instance URL a
    /// token set adds), and the `jwk` is the key's: nothing else is signed.
    #[tokio::test]
    async fn the_dpop_imports_sign_proofs_for_the_calls_token_url_and_origins_only() {
        use signer::Host as _;
        let rekey = crate::Rekey::new(crate::Config::default()).unwrap();
        let mut state = rekey.new_state("c", "https://idp/t", Arc::new(crate::MemoryStore::new()));
        let none = state
            .dpop_public_key(wit::SigningAlgorithm::Es256)
            .await
            .unwrap_err();
        assert_eq!(none, crate::dpop::NO_DPOP_KEY);
        let none = state
            .dpop_sign(wit::SigningAlgorithm::Es256, b"h.c".to_vec())
            .await
            .unwrap_err();
        assert_eq!(none, crate::dpop::NO_DPOP_KEY);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.pem");
        p256_key(&path);
        let mut settings = crate::Settings::new("https://idp/t", "app");
        settings.api_origins = vec!["https://api.example".into()];
        settings.instance_url_origins = vec!["https://*.my.example.com".into()];
        settings.dpop = Some(crate::Dpop::key_file(crate::SigningAlgorithm::Es256, &path));
        assert!(
            settings.signing.is_none(),
            "DPoP needs no assertion signing key"
        );
        let keys = TokenSet::import(
            r#"{"access_token":"at","token_type":"DPoP","instance_url":"https://eu1.my.example.com"}"#,
        )
        .unwrap();
        let credential = crate::Credential {
            name: "c".into(),
            settings: settings.clone(),
            keys: Some(keys),
            version: 1,
            updated_at: 0,
            needs_authorization: None,
            lease: None,
            refresh_mark: None,
        };
        state.destinations = Destinations::of(&credential).unwrap();
        state.dpop = crate::dpop::DpopSigner::new(settings.dpop.as_ref(), "https://idp/t");
        assert!(state.signer.is_none());
        let jwk: serde_json::Value = serde_json::from_str(
            &state
                .dpop_public_key(wit::SigningAlgorithm::Es256)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(jwk["kty"], "EC");
        let proof = |htm: &str, htu: &str| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let b64 =
                |v: serde_json::Value| crate::signing::base64url_encode(v.to_string().as_bytes());
            let header = b64(serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}));
            let claims = b64(serde_json::json!({
                "jti": "00112233445566778899aabbccddeeff", "htm": htm, "htu": htu, "iat": now,
            }));
            format!("{header}.{claims}").into_bytes()
        };
        for (htm, htu) in [
            ("POST", "https://idp/t"),
            ("GET", "https://api.example/v1/me"),
            ("PUT", "https://eu1.my.example.com/services/data"),
        ] {
            let sig = state
                .dpop_sign(wit::SigningAlgorithm::Es256, proof(htm, htu))
                .await
                .unwrap_or_else(|e| panic!("{htu}: {e}"));
            assert_eq!(sig.len(), 64);
        }
        for htu in [
            "https://idp/other",
            "https://eu2.my.example.com/services/data",
            "https://evil.example/v1/me",
        ] {
            let err = state
                .dpop_sign(wit::SigningAlgorithm::Es256, proof("GET", htu))
                .await
                .unwrap_err();
            assert!(
                err.contains("the claim htu is neither the token URL nor a URL within the credential's API origins"),
                "{err}"
            );
            assert!(!err.contains("evil") && !err.contains("eu2"), "{err}");
        }
        // The assertion signer is another key: a proof is not an assertion.
        let err = state
            .sign(wit::SigningAlgorithm::Es256, proof("POST", "https://idp/t"))
            .await
            .unwrap_err();
        assert_eq!(err, NO_SIGNING_KEY);
    }

    /// `header.claims` as the component builds it for client "app", now.
    fn assertion(alg: &str, aud: &str, lifetime: u64) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let b64 = |v: serde_json::Value| crate::signing::base64url_encode(v.to_string().as_bytes());
        let header = b64(serde_json::json!({"alg": alg, "typ": "JWT"}));
        let claims = b64(serde_json::json!({
            "iss": "app", "sub": "app", "aud": aud, "iat": now, "exp": now + lifetime,
            "jti": "00112233445566778899aabbccddeeff",
        }));
        format!("{header}.{claims}").into_bytes()
    }

    /// The signer import checks what it is asked to sign before it reads
    /// the key: what these settings do not describe (another audience, a
    /// far expiry, anything but header.claims) is refused and nothing is
    /// signed, whatever the key; only the assertion they describe reaches
    /// the key (here a file that is not there, so the refusal says which
    /// came first).
    #[tokio::test]
    async fn the_signer_import_checks_what_it_signs_before_reading_the_key() {
        use signer::Host as _;
        let rekey = crate::Rekey::new(crate::Config::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there.pem");
        let mut settings = crate::Settings::new("https://idp/t", "app");
        settings.signing = Some(crate::Signing::key_file(
            crate::SigningAlgorithm::Es256,
            &missing,
        ));
        let wit = settings.to_wit().unwrap();
        let mut state = rekey.new_state("c", "https://idp/t", Arc::new(crate::MemoryStore::new()));
        state.signer = crate::signing::Signer::new(settings.signing.as_ref(), &wit);
        for (input, says) in [
            (
                assertion("ES256", "https://evil.example/t", 300),
                "the claim aud is not the expected audience",
            ),
            (
                assertion("ES256", "https://idp/t", 86_400),
                "the claim exp is not within 300 s after iat",
            ),
            (b"h.c".to_vec(), "the header is not a JSON object"),
            (b"anything at all".to_vec(), "(ASCII base64url, one '.')"),
        ] {
            let err = state
                .sign(wit::SigningAlgorithm::Es256, input)
                .await
                .unwrap_err();
            assert!(
                err.starts_with("refused by the host's check of what it signs: ")
                    && err.contains(says),
                "{err}"
            );
            assert!(!err.contains("evil") && !err.contains("not-there"), "{err}");
        }
        let err = state
            .sign(
                wit::SigningAlgorithm::Es256,
                assertion("ES256", "https://idp/t", 300),
            )
            .await
            .unwrap_err();
        assert!(
            err.contains("not-there.pem cannot be read (no such file)"),
            "{err}"
        );
        // The issuer, when the credential has one, is the audience.
        settings.issuer = Some("https://idp".into());
        let wit = settings.to_wit().unwrap();
        state.signer = crate::signing::Signer::new(settings.signing.as_ref(), &wit);
        let err = state
            .sign(
                wit::SigningAlgorithm::Es256,
                assertion("ES256", "https://idp/t", 300),
            )
            .await
            .unwrap_err();
        assert!(
            err.contains("the claim aud is not the expected audience"),
            "{err}"
        );
        let err = state
            .sign(
                wit::SigningAlgorithm::Es256,
                assertion("ES256", "https://idp", 300),
            )
            .await
            .unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
    }

    /// The second line for the device endpoint: a `send` makes no device
    /// request (its body carries the client's credentials), and `authorize`
    /// sends one only to the device authorization URL it was given.
    #[tokio::test]
    async fn device_requests_go_only_to_the_device_url_of_an_authorize_call() {
        let rekey = crate::Rekey::new(crate::Config::default()).unwrap();
        let token_url = "https://idp.example/token";
        let mut state = rekey.new_state("c", token_url, Arc::new(crate::MemoryStore::new()));
        let admit = |state: &mut CallState, url: &str| {
            let head = RequestHead {
                method: "POST".into(),
                url: url.into(),
                headers: vec![],
            };
            state.admit(
                Purpose::DeviceEndpoint,
                &head,
                &url::Url::parse(url).unwrap(),
            )
        };
        let device = "https://idp.example/device";
        for url in ["https://evil.example/steal", token_url, device] {
            assert!(admit(&mut state, url).is_err(), "{url}: admitted in a send");
        }
        state.device_url = Some(device.into());
        assert_eq!(admit(&mut state, device), Ok(()));
        for url in [
            "https://evil.example/steal",
            token_url,
            "https://idp.example/device?x",
        ] {
            assert!(admit(&mut state, url).is_err(), "{url}");
        }
    }
}
