//! Signed assertions (RFC 7523, contract 0.4.0) end to end: the component
//! builds each JWT, the host signs it with the credential's private key
//! (`signer.sign`), and the test kit's provider checks every assertion with
//! the registered public key (signature, `iss`, `sub`, `aud`, `exp`, a `jti`
//! never seen before). Keys are made by `openssl` in a temporary directory
//! for each test; none is committed.
//!
//! The JWT bearer grant (ES256 and RS256), `private_key_jwt` client
//! authentication with the refresh-token and client-credentials grants, a
//! wrong or missing key, and the CLI, whose output never shows the key.

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rekey::settings::Grant;
use rekey::{
    ClientAuth, Error, KeyStore, Settings, Signing, SigningAlgorithm, SqliteStore, Strategy,
};
use rekey_testkit::ProviderConfig;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SUBJECT: &str = "robot@service.example";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const EXIT_BAD_INPUT: i32 = 2;
const EXIT_SETTINGS: i32 = 9;

/// A private key made by openssl: its PEM file, its public key (PEM
/// `PUBLIC KEY`) and the base64 lines of the private PEM (what must never
/// be shown).
pub struct TestKey {
    pub path: PathBuf,
    pub public_pem: String,
    pub secret_lines: Vec<String>,
    pem_text: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (it is required for these tests)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl TestKey {
    /// `alg` ES256: a P-256 key (PKCS#8); RS256: RSA 2048 (PKCS#8).
    pub fn new(dir: &Path, name: &str, alg: SigningAlgorithm) -> TestKey {
        let path = dir.join(name);
        let p = path.to_str().unwrap();
        match alg {
            SigningAlgorithm::Es256 => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p,
            ]),
            SigningAlgorithm::Rs256 => openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                p,
            ]),
        };
        Self::of(path)
    }

    fn of(path: PathBuf) -> TestKey {
        let public_pem =
            String::from_utf8(openssl(&["pkey", "-pubout", "-in", path.to_str().unwrap()]))
                .unwrap();
        let pem_text = std::fs::read_to_string(&path).unwrap();
        let secret_lines = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(str::to_owned)
            .collect();
        TestKey {
            path,
            public_pem,
            secret_lines,
            pem_text,
        }
    }

    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }

    /// The private PEM as made (kept in memory, to put the file back).
    pub fn pem_text(&self) -> String {
        self.pem_text.clone()
    }

    /// The EC key's public JWK (RFC 7517), for a server's registration.
    pub fn ec_jwk(&self, kid: &str) -> Value {
        let key = rekey::SigningKeySource::File(self.path.clone())
            .load(Some(SigningAlgorithm::Es256))
            .unwrap();
        let point = key.public_key_bytes();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
        })
    }

    /// Fails when `text` shows any part of the private key.
    pub fn assert_not_in(&self, text: &str, what: &str) {
        for line in &self.secret_lines {
            assert!(
                !text.contains(line.as_str()) && !text.contains(&line[..16]),
                "{what} shows the private key"
            );
        }
    }
}

/// A JWT's header and claims (its signature is the provider's to check).
fn jwt_parts(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form");
    let json = |p: &str| {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON")
    };
    (json(parts[0]), json(parts[1]))
}

fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A provider that knows `key`'s public half, with 1-hour tokens (the tests
/// expire them when they choose).
fn provider_for(key: &TestKey) -> ProviderConfig {
    ProviderConfig {
        assertion_key: Some(key.public_pem.clone()),
        ..provider_with_ttl(Duration::from_secs(3600))
    }
}

/// The JWT bearer grant for SUBJECT, no client secret (`client_id` only),
/// signed with `signing`.
fn jwt_bearer(f: &Fixture, signing: Signing) -> Settings {
    let client = f.provider.client();
    let mut s = Settings::new(client.token_url, client.client_id);
    s.grant = Grant::JwtBearer {
        subject: SUBJECT.into(),
        claims: vec![("scope".into(), "api.read".into())],
    };
    s.signing = Some(signing);
    s.api_origins = vec![api_origin(&f.provider)];
    s
}

/// The jwt-bearer grant with ES256 and RS256: the first send fetches a token
/// with a signed assertion for the subject, each of 3 expiries one more, and
/// no refresh token is ever stored; every assertion is fresh (its own `jti`)
/// and accepted.
#[tokio::test(flavor = "multi_thread")]
async fn the_jwt_bearer_grant_fetches_a_token_per_expiry_with_es256_and_rs256() {
    for alg in [SigningAlgorithm::Es256, SigningAlgorithm::Rs256] {
        let keys = tempfile::tempdir().unwrap();
        let key = TestKey::new(keys.path(), "client.pem", alg);
        let f = Fixture::new(provider_for(&key)).await;
        let mut signing = Signing::key_file(alg, &key.path);
        signing.key_id = Some("key-1".into());
        f.store.put("svc", &jwt_bearer(&f, signing), None).unwrap();

        let mut jtis = HashSet::new();
        let mut tokens = HashSet::new();
        for round in 0..=3u32 {
            if round > 0 {
                f.provider.expire_access_tokens();
            }
            let resp = f.get("svc", "me").await.unwrap();
            assert_eq!(resp.status, 200, "{alg} round {round}");
            let stats = f.provider.stats();
            assert_eq!(stats.jwt_bearer_granted, round + 1, "{alg} round {round}");
            assert_eq!(stats.last_assertion_subject.as_deref(), Some(SUBJECT));
            let form = f.provider.last_token_form();
            assert_eq!(form_value(&form, "grant_type"), Some(JWT_BEARER_GRANT));
            assert_eq!(
                form_value(&form, "client_id"),
                Some(f.provider.config().client_id.as_str())
            );
            assert_eq!(form_value(&form, "client_secret"), None);
            let (header, claims) = jwt_parts(form_value(&form, "assertion").unwrap());
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], "key-1");
            assert_eq!(claims["sub"], SUBJECT);
            assert_eq!(claims["iss"], f.provider.config().client_id);
            assert_eq!(claims["aud"], f.provider.token_url());
            assert_eq!(claims["scope"], "api.read");
            assert_eq!(
                claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
                300
            );
            assert!(jtis.insert(claims["jti"].as_str().unwrap().to_owned()));
            let stored = f.stored_keys("svc");
            assert!(stored.get("refresh_token").is_none(), "{alg}: {stored}");
            tokens.insert(str_field(&stored, "access_token").to_owned());
        }
        let stats = f.provider.stats();
        assert_eq!(
            (
                stats.assertions_refused,
                stats.multiple_client_auth,
                stats.refreshes_granted,
                stats.client_credentials_granted,
                stats.api_refused_unknown_or_revoked
            ),
            (0, 0, 0, 0, 0),
            "{alg}"
        );
        assert_eq!(tokens.len(), 4, "{alg}: one token per grant");
        let c = f.store.load("svc").unwrap();
        assert!(c.refresh_mark.is_none() && c.lease.is_none() && c.needs_authorization.is_none());
    }
}

/// `private_key_jwt` with the refresh-token grant: the refresh token rotates
/// across 3 expiries, each refresh authenticated by a fresh signed assertion
/// (the provider counts them and refuses a replayed `jti`), never by the
/// client secret the credential still holds.
#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_authenticates_every_refresh_and_the_secret_is_never_sent() {
    let keys = tempfile::tempdir().unwrap();
    let key = TestKey::new(keys.path(), "client.pem", SigningAlgorithm::Es256);
    let f = Fixture::new(provider_for(&key)).await;
    let mut s = f.settings(Strategy::OnAuthFailure, ClientAuth::PrivateKeyJwt);
    s.signing = Some(Signing::key_file(SigningAlgorithm::Es256, &key.path));
    let secret = f.provider.config().client_secret.clone();
    let first = f.add_credential("app", &s);
    let mut refresh_tokens = HashSet::from([first["refresh_token"].as_str().unwrap().to_owned()]);
    let mut jtis = HashSet::new();
    for round in 1..=3u32 {
        f.provider.expire_access_tokens();
        assert_eq!(f.get("app", "me").await.unwrap().status, 200);
        let stats = f.provider.stats();
        assert_eq!(
            (stats.refreshes_granted, stats.client_assertions_ok),
            (round, round)
        );
        let form = f.provider.last_token_form();
        assert_eq!(form_value(&form, "grant_type"), Some("refresh_token"));
        assert_eq!(
            form_value(&form, "client_assertion_type"),
            Some(CLIENT_ASSERTION_TYPE)
        );
        assert!(
            form.iter()
                .all(|(k, v)| k != "client_secret" && !v.contains(&secret)),
            "the client secret was sent: {form:?}"
        );
        let (_, claims) = jwt_parts(form_value(&form, "client_assertion").unwrap());
        assert_eq!(claims["sub"], f.provider.config().client_id);
        assert!(jtis.insert(claims["jti"].as_str().unwrap().to_owned()));
        let stored = f.stored_keys("app");
        assert!(
            refresh_tokens.insert(str_field(&stored, "refresh_token").to_owned()),
            "round {round}: the refresh token did not rotate"
        );
    }
    let stats = f.provider.stats();
    assert_eq!(
        (
            stats.invalid_grant,
            stats.reused_refresh_tokens,
            stats.assertions_refused,
            stats.multiple_client_auth,
            stats.basic_auth_calls,
            stats.post_auth_calls
        ),
        (0, 0, 0, 0, 0, 0),
        "Basic or a posted secret would be counted"
    );
}

/// `private_key_jwt` with the client-credentials grant and no client secret
/// at all: a token per expiry, each request signed.
#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_serves_the_client_credentials_grant_without_a_secret() {
    let keys = tempfile::tempdir().unwrap();
    let key = TestKey::new(keys.path(), "client.pem", SigningAlgorithm::Rs256);
    let f = Fixture::new(provider_for(&key)).await;
    let client = f.provider.client();
    let mut s =
        Settings::new(client.token_url, client.client_id).with_auth(ClientAuth::PrivateKeyJwt);
    s.grant = Grant::ClientCredentials;
    s.signing = Some(Signing::key_file(SigningAlgorithm::Rs256, &key.path));
    s.api_origins = vec![api_origin(&f.provider)];
    f.store.put("m2m", &s, None).unwrap();
    for round in 1..=3u32 {
        if round > 1 {
            f.provider.expire_access_tokens();
        }
        assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
        let stats = f.provider.stats();
        assert_eq!(
            (stats.client_credentials_granted, stats.client_assertions_ok),
            (round, round)
        );
    }
    assert!(f.stored_keys("m2m").get("refresh_token").is_none());
    assert_eq!(f.provider.stats().assertions_refused, 0);
}

/// Another key than the one the provider knows: the provider refuses each
/// assertion (the jwt-bearer grant's as `invalid_grant`, a client
/// assertion as `invalid_client`), rekey says the settings are wrong, and
/// no token is stored (only the component's memory of the refusal, so the
/// same settings are not asked again within the minute); the CLI exits with
/// the settings code (9).
#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_provider_does_not_know_is_a_settings_problem_and_stores_no_token() {
    let keys = tempfile::tempdir().unwrap();
    let registered = TestKey::new(keys.path(), "registered.pem", SigningAlgorithm::Es256);
    let other = TestKey::new(keys.path(), "other.pem", SigningAlgorithm::Es256);
    let f = Fixture::new(provider_for(&registered)).await;
    let signing = Signing::key_file(SigningAlgorithm::Es256, &other.path);
    f.store
        .put("svc", &jwt_bearer(&f, signing.clone()), None)
        .unwrap();
    let client = f.provider.client();
    let mut m2m =
        Settings::new(client.token_url, client.client_id).with_auth(ClientAuth::PrivateKeyJwt);
    m2m.grant = Grant::ClientCredentials;
    m2m.signing = Some(signing);
    m2m.api_origins = vec![api_origin(&f.provider)];
    f.store.put("m2m", &m2m, None).unwrap();

    for (name, code) in [("svc", "invalid_grant"), ("m2m", "invalid_client")] {
        let err = f.get(name, "me").await.unwrap_err();
        assert!(
            matches!(&err, Error::SettingsRejected { code: c, .. } if c == code),
            "{name}: {err}"
        );
        other.assert_not_in(&err.to_string(), "the error");
        let c = f.store.load(name).unwrap();
        assert!(c.needs_authorization.is_none() && c.refresh_mark.is_none() && c.lease.is_none());
        // No token: only the component's memory of the refusal.
        let kept = f.stored_keys(name);
        assert_eq!(
            kept.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["rekey_refused"],
            "{name}: {kept}"
        );
        assert_eq!(kept["rekey_refused"]["code"], code);
    }
    let stats = f.provider.stats();
    assert_eq!(stats.assertions_refused, 2);
    assert_eq!(
        (
            stats.jwt_bearer_granted,
            stats.client_credentials_granted,
            stats.api_calls
        ),
        (0, 0, 0)
    );
    let out = rekey_cli(&f.store_path(), &["send", "svc", &f.provider.api_url("me")]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_SETTINGS),
        "{}",
        all_output(&out)
    );
    other.assert_not_in(&all_output(&out), "rekey send");
    // Within the minute the same settings are refused without a request.
    assert_eq!(f.provider.stats().assertions_refused, 2);
    let kept = f.stored_keys("svc");
    assert!(kept.get("access_token").is_none(), "{kept}");
}

/// A key that cannot be loaded (no such file, an unset variable, a key of
/// the other algorithm) is invalid settings before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_key_is_invalid_settings_and_nothing_is_sent() {
    let keys = tempfile::tempdir().unwrap();
    let key = TestKey::new(keys.path(), "client.pem", SigningAlgorithm::Es256);
    let f = Fixture::new(provider_for(&key)).await;
    let missing = keys.path().join("gone.pem");
    let cases = [
        (
            Signing::key_file(SigningAlgorithm::Es256, &missing),
            missing.display().to_string(),
        ),
        (
            Signing::key_env(SigningAlgorithm::Es256, "REKEY_TEST_SIGNING_KEY_NEVER_SET"),
            "REKEY_TEST_SIGNING_KEY_NEVER_SET is not set".into(),
        ),
        (
            Signing::key_file(SigningAlgorithm::Rs256, &key.path),
            "RS256 needs an RSA key".into(),
        ),
    ];
    for (i, (signing, says)) in cases.into_iter().enumerate() {
        let name = format!("svc{i}");
        f.store.put(&name, &jwt_bearer(&f, signing), None).unwrap();
        let err = f.get(&name, "me").await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSettings(m) if m.contains(&says)),
            "{name}: {err}"
        );
        key.assert_not_in(&err.to_string(), "the error");
        assert!(f.store.load(&name).unwrap().keys.is_none());
    }
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.api_calls),
        (0, 0),
        "nothing was sent"
    );
}

/// The key is read only when an assertion is signed: with the key file
/// gone, a call whose stored token is still valid goes through (library and
/// CLI), and only the next refresh, which needs an assertion, is invalid
/// settings, with nothing sent to the token endpoint and the record as it
/// was (the refresh token unspent, no mark, no lease). The same for the
/// jwt-bearer grant's next token.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_is_read_only_when_an_assertion_is_signed() {
    let keys = tempfile::tempdir().unwrap();
    let key = TestKey::new(keys.path(), "client.pem", SigningAlgorithm::Es256);
    let f = Fixture::new(provider_for(&key)).await;
    let mut s = f.settings(Strategy::OnAuthFailure, ClientAuth::PrivateKeyJwt);
    s.signing = Some(Signing::key_file(SigningAlgorithm::Es256, &key.path));
    f.add_credential("app", &s);
    // A first refresh, signed with the key.
    f.provider.expire_access_tokens();
    assert_eq!(f.get("app", "me").await.unwrap().status, 200);
    let signing = Signing::key_file(SigningAlgorithm::Es256, &key.path);
    f.store.put("svc", &jwt_bearer(&f, signing), None).unwrap();
    assert_eq!(f.get("svc", "me").await.unwrap().status, 200);
    let stats = f.provider.stats();
    assert_eq!(
        (stats.client_assertions_ok, stats.jwt_bearer_granted),
        (1, 1)
    );

    std::fs::remove_file(&key.path).unwrap();
    let token_calls = stats.token_calls;
    for name in ["app", "svc"] {
        assert_eq!(f.get(name, "me").await.unwrap().status, 200, "{name}");
        let out = rekey_cli(&f.store_path(), &["send", name, &f.provider.api_url("me")]);
        assert!(out.status.success(), "{name}: {}", all_output(&out));
    }
    assert_eq!(
        f.provider.stats().token_calls,
        token_calls,
        "no token request"
    );

    f.provider.expire_access_tokens();
    for name in ["app", "svc"] {
        let before = f.store.load(name).unwrap();
        let err = f.get(name, "me").await.unwrap_err();
        let file = format!("{} cannot be read (no such file)", key.path.display());
        assert!(
            matches!(&err, Error::InvalidSettings(m) if m.contains(&file)),
            "{name}: {err}"
        );
        let after = f.store.load(name).unwrap();
        assert_eq!(
            after.keys.as_ref().map(|k| k.expose().to_owned()),
            before.keys.as_ref().map(|k| k.expose().to_owned()),
            "{name}: the keys as they were"
        );
        assert!(
            after.refresh_mark.is_none()
                && after.lease.is_none()
                && after.needs_authorization.is_none(),
            "{name}"
        );
    }
    let stats = f.provider.stats();
    assert_eq!(
        stats.token_calls, token_calls,
        "nothing sent to the token endpoint"
    );
    assert_eq!(
        (
            stats.invalid_grant,
            stats.reused_refresh_tokens,
            stats.assertions_refused
        ),
        (0, 0, 0)
    );
    // The stored refresh token is still live: the key back, the refresh works.
    std::fs::write(&key.path, key.pem_text()).unwrap();
    assert_eq!(f.get("app", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().client_assertions_ok, 2);
}

/// The CLI end to end: `credential add` checks the key once (exit 2 for a
/// key it cannot use, nothing stored), stores where the key is as the other
/// hosts do, `send -vv` works and never shows the key or the assertion,
/// `credential show` names the key's file and algorithm only.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_adds_signed_credentials_and_never_shows_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let key = TestKey::new(keys.path(), "client.pem", SigningAlgorithm::Es256);
    let f = Fixture::new(provider_for(&key)).await;
    let store = f.store_path();
    let (url, id) = (
        f.provider.token_url(),
        f.provider.config().client_id.clone(),
    );
    let origin = api_origin(&f.provider);
    let key_path = key.path.to_str().unwrap();
    let add = |name: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "credential",
            "add",
            name,
            "--token-url",
            &url,
            "--client-id",
            &id,
            "--api-origin",
            &origin,
        ];
        args.extend_from_slice(extra);
        rekey_cli_env(&store, &args, env)
    };
    let jwt_args = [
        "--grant",
        "jwt-bearer",
        "--assertion-subject",
        SUBJECT,
        "--assertion-claim",
        "scope=api.read",
        "--signing-key-id",
        "kid-7",
    ];

    // Refused at add, exit 2, nothing stored, the key never quoted.
    let encrypted = keys.path().join("encrypted.pem");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        key_path,
        "-passout",
        "pass:pw",
        "-out",
        encrypted.to_str().unwrap(),
    ]);
    let public = keys.path().join("public.pem");
    std::fs::write(&public, &key.public_pem).unwrap();
    let refusals: [(Vec<&str>, &str); 6] = [
        (
            vec!["--signing-key-file", encrypted.to_str().unwrap()],
            "is encrypted",
        ),
        (
            vec!["--signing-key-file", public.to_str().unwrap()],
            "holds a PUBLIC KEY, no private key",
        ),
        (
            vec!["--signing-key-file", key_path, "--signing-alg", "RS256"],
            "RS256 needs an RSA key",
        ),
        (
            vec!["--signing-key-file", "/nonexistent/key.pem"],
            "cannot be read",
        ),
        (
            vec![],
            "need the signing key: --signing-key-file PATH or --signing-key-env VAR",
        ),
        (
            vec!["--signing-key-file", key_path, "--assertion-claim", "aud=x"],
            "aud",
        ),
    ];
    for (extra, says) in refusals {
        let mut args = jwt_args.to_vec();
        args.extend(extra);
        let out = add("refused", &args, &[]);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
        key.assert_not_in(&text, "credential add");
        assert!(matches!(
            SqliteStore::open(&store).unwrap().load("refused"),
            Err(rekey::StoreError::UnknownCredential(_))
        ));
    }
    let out = add(
        "refused",
        &["--assertion-subject", SUBJECT, "--client-secret", "s"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_BAD_INPUT),
        "{}",
        all_output(&out)
    );

    // A file: the algorithm comes from the key; the settings column holds
    // what the Node and Python hosts write.
    let mut args = jwt_args.to_vec();
    args.extend(["--signing-key-file", key_path]);
    let out = add("svc", &args, &[]);
    assert!(out.status.success(), "{}", all_output(&out));
    let column: String = rusqlite::Connection::open(&store)
        .unwrap()
        .query_row(
            "SELECT settings FROM credentials WHERE name = 'svc'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    key.assert_not_in(&column, "the settings column");
    let column: Value = serde_json::from_str(&column).unwrap();
    assert_eq!(column["grant"], "jwt-bearer");
    assert_eq!(column["subject"], SUBJECT);
    assert_eq!(column["claims"], serde_json::json!({"scope": "api.read"}));
    assert_eq!(
        column["signing"],
        serde_json::json!({"algorithm": "ES256", "key_id": "kid-7", "key_file": key_path})
    );
    let out = rekey_cli(&store, &["credential", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("the first send fetches one"));
    let out = rekey_cli(&store, &["-vv", "send", "svc", &f.provider.api_url("me")]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(f.provider.stats().jwt_bearer_granted, 1);
    key.assert_not_in(&text, "send -vv");
    let form = f.provider.last_token_form();
    let assertion = form_value(&form, "assertion").unwrap();
    assert!(!text.contains(assertion.split('.').nth(2).unwrap()));
    let stored = SqliteStore::open(&store).unwrap().load("svc").unwrap();
    let access: Value = serde_json::from_str(stored.keys.unwrap().expose()).unwrap();
    assert!(!text.contains(access["access_token"].as_str().unwrap()));
    let out = rekey_cli(&store, &["credential", "show", "svc"]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    key.assert_not_in(&text, "credential show");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["settings"]["grant"], "jwt-bearer");
    assert_eq!(shown["settings"]["subject"], SUBJECT);
    assert_eq!(shown["settings"]["signing"]["key_file"], key_path);
    assert_eq!(shown["settings"]["signing"]["algorithm"], "ES256");
    // Nobody authorises it.
    let out = rekey_cli(&store, &["authorize", "svc"]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    assert!(all_output(&out).contains("jwt-bearer"));

    // The key in a variable, with private_key_jwt client credentials.
    let pem = key.pem();
    let env = [("REKEY_TEST_SIGNING_PEM", pem.as_str())];
    let out = add(
        "m2m",
        &[
            "--grant",
            "client-credentials",
            "--client-auth",
            "private_key_jwt",
            "--signing-key-env",
            "REKEY_TEST_SIGNING_PEM",
            "--signing-alg",
            "es256",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let out = rekey_cli_env(
        &store,
        &["-vv", "send", "m2m", &f.provider.api_url("me")],
        &env,
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    key.assert_not_in(&text, "send -vv with the key in a variable");
    assert_eq!(f.provider.stats().client_assertions_ok, 1);
    let shown = all_output(&rekey_cli(&store, &["credential", "show", "m2m"]));
    assert!(
        shown.contains("\"key_env\": \"REKEY_TEST_SIGNING_PEM\""),
        "{shown}"
    );
    key.assert_not_in(&shown, "credential show");
    // Without the variable: invalid settings (exit 9) naming it, nothing sent.
    let calls = f.provider.stats().token_calls;
    f.provider.expire_access_tokens();
    let out = rekey_cli(&store, &["send", "m2m", &f.provider.api_url("me")]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_SETTINGS),
        "{}",
        all_output(&out)
    );
    assert!(all_output(&out).contains("REKEY_TEST_SIGNING_PEM is not set"));
    assert_eq!(f.provider.stats().token_calls, calls);

    // An RSA key in PKCS#1: the algorithm from the key is RS256.
    let rsa = TestKey::new(keys.path(), "rsa.pem", SigningAlgorithm::Rs256);
    let pkcs1 = keys.path().join("rsa1.pem");
    openssl(&[
        "rsa",
        "-traditional",
        "-in",
        rsa.path.to_str().unwrap(),
        "-out",
        pkcs1.to_str().unwrap(),
    ]);
    let mut args = jwt_args.to_vec();
    args.extend(["--signing-key-file", pkcs1.to_str().unwrap()]);
    let out = add("rsa", &args, &[]);
    assert!(out.status.success(), "{}", all_output(&out));
    let shown: Value =
        serde_json::from_slice(&rekey_cli(&store, &["credential", "show", "rsa"]).stdout).unwrap();
    assert_eq!(shown["settings"]["signing"]["algorithm"], "RS256");
}
