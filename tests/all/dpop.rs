//! DPoP (RFC 9449, contract 0.5.0) end to end against oidc-provider
//! (tests/oidc/server.mjs, `features.dPoP` with server nonces required at
//! /token, /me and /_api/whoami). The component builds each proof; the host
//! holds the DPoP key, checks each proof it is asked to sign and signs it.
//!
//! - A public client (no secret: oidc-provider binds its refresh tokens to
//!   the DPoP key too) authorised through the code flow (`rekey authorize`,
//!   tests/oidc/follow.mjs as the browser), then `rekey send .../me` across
//!   several access-token expiries: every call 200, each refresh rotates the
//!   refresh token, no refresh token reused and no invalid_grant, the stored
//!   `token_type` is `DPoP`, and the provider's nonce challenges were
//!   answered (its stats count them). Then the credential is given another
//!   key: its refresh is refused (invalid_grant), which is the binding.
//! - Client credentials with DPoP (a confidential client registered with
//!   `dpop_bound_access_tokens`), through the library: the server's API
//!   answers for the DPoP-bound token across expiries.
//! - A DPoP-bound token set with settings lacking DPoP: invalid settings,
//!   nothing sent.
//!
//! The peer is `support::peers::node()`: skipped loudly without Node.js (a
//! failure under REKEY_REQUIRE_PEERS).

use crate::support::peers::{self, Node};
use crate::support::{all_output, fetch, rekey_bin, rekey_cli};
use rekey::{
    ClientAuth, Dpop, Grant, KeyStore, Rekey, Settings, SigningAlgorithm, SqliteStore, TokenSet,
};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const ACCESS_TOKEN_TTL: u64 = 2;
/// Past this pause any access token issued before it has expired at the
/// provider (whole-second `exp`, `clockTolerance` 0).
const PAST_EXPIRY: Duration = Duration::from_millis(ACCESS_TOKEN_TTL * 1000 + 250);
const EXPIRIES: u64 = 3;
const EXIT_REAUTHORIZE: i32 = 3;
const EXIT_SETTINGS: i32 = 9;

/// server.mjs with these registrations; ended (by its pid) when dropped, and
/// it exits by itself when its stdin closes.
struct Peer {
    node: Node,
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Peer {
    fn start(node: &Node, registrations: Value) -> Peer {
        let mut child = node
            .script("server.mjs")
            .env("OIDC_PORT", "0")
            .env("OIDC_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL.to_string())
            .env("OIDC_CLIENTS", registrations.to_string())
            .env("OIDC_DPOP_NONCE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/oidc/server.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let announced: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let port = announced["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("server.mjs announced its port");
        Peer {
            node: node.clone(),
            child,
            stdin,
            port,
        }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider's counters for `client`.
    fn stats(&self, client: &str) -> Value {
        let (_, _, body) = fetch(&format!("{}/_stats", self.issuer()));
        let all: Value = serde_json::from_str(&body).expect("stats are JSON");
        assert_eq!(all["server_errors"], 0, "{all}");
        all["clients"][client].clone()
    }

    /// follow.mjs: the browser.
    fn follow(&self, url: &str) -> Value {
        let out = self
            .node
            .script("follow.mjs")
            .args(["--url", url])
            .output()
            .expect("run follow.mjs");
        assert!(
            out.status.success(),
            "follow.mjs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("follow.mjs prints JSON")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private key made by openssl: `ec` (P-256) or `rsa` (2048 bits).
fn key(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let opt = if kind == "ec" {
        ["EC", "ec_paramgen_curve:P-256"]
    } else {
        ["RSA", "rsa_keygen_bits:2048"]
    };
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", opt[0], "-pkeyopt", opt[1], "-out"])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl genpkey {kind}");
    path
}

fn stored_keys(store: &Path, name: &str) -> Value {
    let c = SqliteStore::open(store).unwrap().load(name).unwrap();
    serde_json::from_str(c.keys.expect("keys stored").expose()).unwrap()
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nothing secret printed: no token, no code, no key.
fn check_no_leak(out: &Output, secrets: &[String]) {
    let printed = all_output(out);
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!printed.contains(s.as_str()), "rekey printed a secret");
    }
    assert!(!printed.contains("PRIVATE KEY"), "rekey printed a key");
}

/// `rekey -vv authorize NAME --no-browser`, with follow.mjs as the browser.
fn authorize(peer: &Peer, store: &Path, name: &str) -> Output {
    let mut child = Command::new(rekey_bin())
        .arg("--store")
        .arg(store)
        .args(["-vv", "authorize", name, "--no-browser", "--timeout", "60"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rekey authorize");
    let stderr = child.stderr.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    let all = seen.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let start = loop {
        let left = until
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        match lines.recv_timeout(left) {
            Ok(l) if l.trim().starts_with("http://127.0.0.1:") && l.contains("/start/") => {
                break l.trim().to_owned();
            }
            Ok(_) => {}
            Err(_) => panic!(
                "rekey authorize printed no start URL:\n{}",
                seen.lock().unwrap()
            ),
        }
    };
    let (status, location, _) = fetch(&start);
    assert_eq!(status, 302, "the start URL redirects");
    let browser = peer.follow(&location.expect("a location"));
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(browser["status"], 200, "the listener's answer: {browser}");
    Output {
        status,
        stdout,
        stderr: seen.lock().unwrap().clone().into_bytes(),
    }
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Public clients, one per DPoP algorithm, authorised through the code flow
/// with DPoP and nonces, then calling /me across expiries.
#[test]
fn a_public_client_keeps_dpop_bound_tokens_alive_through_nonce_challenges() {
    let Some(node) = peers::node() else { return };
    let clients = [
        ("dpop-es256", "ec", "ES256"),
        ("dpop-rs256", "rsa", "RS256"),
    ];
    let registrations: Vec<Value> = clients
        .iter()
        .map(|(id, _, _)| {
            json!({
                "client_id": id,
                "token_endpoint_auth_method": "none",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
            })
        })
        .collect();
    let peer = Peer::start(&node, Value::from(registrations));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    let issuer = peer.issuer();
    std::thread::scope(|s| {
        for (id, kind, alg) in clients {
            let (peer, store, issuer, dir) = (&peer, store.as_path(), issuer.as_str(), dir.path());
            s.spawn(move || one_public_client(peer, store, issuer, dir, id, kind, alg));
        }
    });
}

fn one_public_client(
    peer: &Peer,
    store: &Path,
    issuer: &str,
    dir: &Path,
    id: &str,
    kind: &str,
    alg: &str,
) {
    let key_path = key(dir, &format!("{id}.pem"), kind);
    let key_arg = key_path.to_str().unwrap();
    let mut args = vec![
        "credential",
        "add",
        id,
        "--issuer",
        issuer,
        "--auth-param",
        "scope=openid offline_access",
        "--client-id",
        id,
        "--public-client",
        "--api-origin",
        issuer,
        "--dpop-key-file",
        key_arg,
    ];
    // ES256 from the key itself; RS256 said explicitly.
    if alg == "RS256" {
        args.extend(["--dpop-alg", "rs256"]);
    }
    succeeded(&rekey_cli(store, &args), "credential add");
    let shown = rekey_cli(store, &["credential", "show", id]);
    succeeded(&shown, "credential show");
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["settings"]["dpop"],
        json!({"algorithm": alg, "key_file": key_arg}),
        "{id}"
    );

    let out = authorize(peer, store, id);
    succeeded(&out, "rekey authorize");
    let first = stored_keys(store, id);
    assert!(
        first["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop")),
        "{id}: the first set is DPoP-bound: {:?}",
        first["token_type"]
    );
    let mut secrets: Vec<String> = Vec::new();
    let mut refresh_tokens = vec![first["refresh_token"].as_str().unwrap().to_owned()];
    secrets.push(first["access_token"].as_str().unwrap().to_owned());
    secrets.extend(refresh_tokens.iter().cloned());
    check_no_leak(&out, &secrets);
    let after_authorize = peer.stats(id);
    assert_eq!(after_authorize["code_exchanges"], 1, "{after_authorize}");
    // The code exchange: first without a nonce, answered use_dpop_nonce,
    // then with it.
    assert_eq!(after_authorize["dpop_proofs"], 2, "{after_authorize}");
    assert_eq!(
        after_authorize["dpop_nonce_challenges"], 1,
        "{after_authorize}"
    );

    for round in 0..EXPIRIES {
        std::thread::sleep(PAST_EXPIRY);
        let out = rekey_cli(store, &["-vv", "send", id, &format!("{issuer}/me")]);
        check_no_leak(&out, &secrets);
        succeeded(&out, &format!("{id}: send after expiry {round}"));
        let me: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(me["sub"], "rekey-user", "{id}");
        let keys = stored_keys(store, id);
        assert!(
            keys["token_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("dpop")),
            "{id}: {:?}",
            keys["token_type"]
        );
        let rt = keys["refresh_token"].as_str().unwrap().to_owned();
        assert!(
            !refresh_tokens.contains(&rt),
            "{id}: the refresh token rotated"
        );
        refresh_tokens.push(rt.clone());
        secrets.push(rt);
        secrets.push(keys["access_token"].as_str().unwrap().to_owned());
    }
    let stats = peer.stats(id);
    assert_eq!(stats["refreshes"], EXPIRIES, "{id}: {stats}");
    assert_eq!(stats["grants_revoked"], 0, "{id}: no refresh token reused");
    assert_eq!(
        stats["grant_errors"].get("invalid_grant"),
        None,
        "{id}: {stats}"
    );
    assert_eq!(stats["userinfo_ok"], EXPIRIES, "{id}: {stats}");
    // Each call first met its expired token (401), once per expiry.
    assert_eq!(stats["userinfo_rejected"], EXPIRIES, "{id}: {stats}");
    assert_eq!(stats["auth_seen"]["none"], 1 + EXPIRIES, "{id}: {stats}");
    // Every access token issued is bound: the code exchange's and each refresh's.
    assert_eq!(stats["dpop_tokens"], 1 + EXPIRIES, "{id}: {stats}");
    // Each token request of a new process first meets a nonce challenge.
    assert_eq!(stats["dpop_proofs"], 2 * (1 + EXPIRIES), "{id}: {stats}");
    assert_eq!(
        stats["grant_errors"]["use_dpop_nonce"],
        1 + EXPIRIES,
        "{id}: {stats}"
    );
    // And /me's (oidc-provider checks the proof there itself): at least
    // one per call, each answered (every call ended 200).
    let at_me = count(&stats["dpop_nonce_challenges"]) - (1 + EXPIRIES);
    assert!(at_me >= EXPIRIES, "{id}: {stats}");

    // The binding: with another key, the bound refresh token is refused.
    let other = key(dir, &format!("{id}-other.pem"), kind);
    succeeded(
        &rekey_cli(
            store,
            &[
                "credential",
                "set",
                id,
                "--dpop-key-file",
                other.to_str().unwrap(),
            ],
        ),
        "credential set --dpop-key-file",
    );
    std::thread::sleep(PAST_EXPIRY);
    let out = rekey_cli(store, &["send", id, &format!("{issuer}/me")]);
    check_no_leak(&out, &secrets);
    assert_eq!(
        out.status.code(),
        Some(EXIT_REAUTHORIZE),
        "{id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = peer.stats(id);
    assert_eq!(stats["refreshes"], EXPIRIES, "{id}: {stats}");
    assert_eq!(stats["grant_errors"]["invalid_grant"], 1, "{id}: {stats}");
}

/// Client credentials with DPoP through the library: a confidential client
/// whose tokens must be DPoP-bound (`dpop_bound_access_tokens`) calls the
/// server's API (which checks the proof, its `ath` and key, and its nonce)
/// across expiries. The same client without DPoP gets no token.
#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_with_dpop_reach_the_api_with_a_bound_token() {
    let Some(node) = peers::node() else { return };
    let secret = "dpop-m2m:s3cr&t +%/?=";
    let peer = Peer::start(
        &node,
        json!([{
            "client_id": "dpop-m2m",
            "client_secret": secret,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "dpop_bound_access_tokens": true,
        }]),
    );
    let dir = tempfile::tempdir().unwrap();
    let key_path = key(dir.path(), "m2m.pem", "rsa");
    let store: Arc<dyn KeyStore> =
        Arc::new(SqliteStore::open(dir.path().join("rekey.db")).unwrap());
    let issuer = peer.issuer();
    let mut settings = Settings::new(format!("{issuer}/token"), "dpop-m2m")
        .with_secret(secret)
        .with_auth(ClientAuth::Basic);
    settings.grant = Grant::ClientCredentials;
    settings.api_origins = vec![issuer.clone()];
    let settings = settings.with_dpop(Dpop::key_file(SigningAlgorithm::Rs256, &key_path));
    let rekey = Rekey::new(rekey::Config::default()).unwrap();
    rekey.check_settings(&settings).await.unwrap();
    store.put("m2m", &settings, None).unwrap();
    let api = format!("{issuer}/_api/whoami");
    for round in 0..=EXPIRIES {
        if round > 0 {
            tokio::time::sleep(PAST_EXPIRY).await;
        }
        let resp = rekey
            .send(store.clone(), "m2m", rekey::Request::get(&api))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(resp.status, 200, "round {round}");
        let body: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(
            body,
            json!({"client_id": "dpop-m2m", "scope": null, "token_type": "DPoP"})
        );
        let keys: Value =
            serde_json::from_str(store.load("m2m").unwrap().keys.unwrap().expose()).unwrap();
        assert_eq!(keys["token_type"], "DPoP");
        assert!(keys.get("refresh_token").is_none());
    }
    let stats = peer.stats("dpop-m2m");
    assert_eq!(stats["client_credentials"], 1 + EXPIRIES, "{stats}");
    assert_eq!(stats["dpop_tokens"], 1 + EXPIRIES, "{stats}");
    assert_eq!(stats["api_ok"], 1 + EXPIRIES, "{stats}");
    // Each expired token met once: the rejection that fetched the next.
    assert_eq!(stats["api_rejected"], EXPIRIES, "{stats}");
    // The token endpoint's nonce challenges (one per token request of a
    // new instance) and the API's, all answered.
    let at_token = count(&stats["grant_errors"]["use_dpop_nonce"]);
    assert!(at_token >= 1, "{stats}");
    assert!(
        count(&stats["dpop_nonce_challenges"]) > at_token,
        "the API asked for a nonce too: {stats}"
    );
    assert_eq!(stats["grant_errors"].get("invalid_grant"), None, "{stats}");

    // Without DPoP the provider issues this client nothing.
    let mut plain = settings.clone();
    plain.dpop = None;
    store.put("m2m-plain", &plain, None).unwrap();
    let err = rekey
        .send(store.clone(), "m2m-plain", rekey::Request::get(&api))
        .await
        .unwrap_err();
    assert!(
        !matches!(err, rekey::Error::InvalidSettings(_)),
        "the provider refused it, not rekey: {err}"
    );
    let stats = peer.stats("dpop-m2m");
    assert_eq!(stats["client_credentials"], 1 + EXPIRIES, "{stats}");
    assert_eq!(stats["api_ok"], 1 + EXPIRIES, "{stats}");
}

/// A DPoP-bound token set (`token_type` DPoP) with settings that have no
/// DPoP key is invalid settings, and nothing is sent: neither the API
/// request (a bearer presentation would leak a token meant for proofs)
/// nor a refresh. The CLI exits 9 likewise; the keys stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_dpop_bound_set_without_dpop_settings_is_refused_unsent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = conn.read(&mut [0; 4096]);
            let _ = conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.db");
    let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let mut settings = Settings::new(format!("{origin}/token"), "app");
    settings.api_origins = vec![origin.clone()];
    let set = r#"{"access_token":"bound-access-token-0123","token_type":"DPoP","refresh_token":"bound-refresh-token-0123","expires_in":3600}"#;
    let keys = TokenSet::import(set).unwrap();
    store.put("bound", &settings, Some(&keys)).unwrap();
    let before = store.load("bound").unwrap();
    let rekey = Rekey::new(rekey::Config::default()).unwrap();
    let err = rekey
        .send(
            store.clone(),
            "bound",
            rekey::Request::get(&format!("{origin}/api")),
        )
        .await
        .unwrap_err();
    let rekey::Error::InvalidSettings(why) = &err else {
        panic!("{err:?}")
    };
    assert!(why.contains("DPoP"), "{why}");
    assert!(!why.contains("bound-"), "{why}");
    let out = rekey_cli(&path, &["send", "bound", &format!("{origin}/api")]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_SETTINGS),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_no_leak(
        &out,
        &[
            "bound-access-token-0123".into(),
            "bound-refresh-token-0123".into(),
        ],
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing was sent");
    let after = store.load("bound").unwrap();
    assert_eq!(after.keys, before.keys);
    assert_eq!(after.version, before.version);
}

/// The CLI's DPoP options: the algorithm read from the key, or checked
/// against it; an unset variable only warns (the algorithm must then be
/// given); `--no-dpop` drops it; errors name the file or variable, never
/// the key; the store holds the reference, never the key.
#[test]
fn the_cli_stores_the_dpop_key_reference_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    let ec = key(dir.path(), "ec.pem", "ec");
    let rsa = key(dir.path(), "rsa.pem", "rsa");
    let pem = std::fs::read_to_string(&ec).unwrap();
    let base = [
        "--token-url",
        "https://idp.example/token",
        "--client-id",
        "app",
        "--public-client",
        "--api-origin",
        "https://api.example",
    ];
    let add = |name: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["credential", "add", name];
        args.extend_from_slice(&base);
        args.extend_from_slice(extra);
        crate::support::rekey_cli_env(&store, &args, env)
    };
    let show = |name: &str| -> Value {
        let out = rekey_cli(&store, &["credential", "show", name]);
        succeeded(&out, "credential show");
        assert!(!all_output(&out).contains("PRIVATE KEY"));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["settings"]["dpop"].clone()
    };

    succeeded(
        &add("ec", &["--dpop-key-file", ec.to_str().unwrap()], &[]),
        "add ec",
    );
    assert_eq!(
        show("ec"),
        json!({"algorithm": "ES256", "key_file": ec.to_str().unwrap()})
    );
    // A key of another type than the algorithm: refused, naming the file.
    let out = add(
        "wrong",
        &[
            "--dpop-alg",
            "ES256",
            "--dpop-key-file",
            rsa.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the DPoP key file")
            && said.contains("rsa.pem")
            && said.contains("ES256 needs"),
        "{said}"
    );
    // An algorithm without a key.
    let out = add("nokey", &["--dpop-alg", "RS256"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dpop-key-file PATH or --dpop-key-env VAR")
    );
    // A key in a variable: read from it now, only its name stored.
    let out = add(
        "env",
        &["--dpop-key-env", "REKEY_TEST_DPOP_PEM"],
        &[("REKEY_TEST_DPOP_PEM", &pem)],
    );
    succeeded(&out, "add env");
    assert!(!all_output(&out).contains("PRIVATE KEY"));
    assert_eq!(
        show("env"),
        json!({"algorithm": "ES256", "key_env": "REKEY_TEST_DPOP_PEM"})
    );
    // Not set now: the algorithm must be given, then only a warning.
    let out = add("unset", &["--dpop-key-env", "REKEY_TEST_DPOP_UNSET"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --dpop-alg"));
    let out = add(
        "unset",
        &[
            "--dpop-alg",
            "rs256",
            "--dpop-key-env",
            "REKEY_TEST_DPOP_UNSET",
        ],
        &[],
    );
    succeeded(&out, "add unset with alg");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert_eq!(
        show("unset"),
        json!({"algorithm": "RS256", "key_env": "REKEY_TEST_DPOP_UNSET"})
    );
    // Not a key at all: named, not quoted.
    std::fs::write(dir.path().join("junk.pem"), "secret-junk-text").unwrap();
    let out = add(
        "junk",
        &[
            "--dpop-key-file",
            dir.path().join("junk.pem").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!all_output(&out).contains("secret-junk-text"));
    // --no-dpop drops it; the stored settings never held the key.
    succeeded(
        &rekey_cli(&store, &["credential", "set", "ec", "--no-dpop"]),
        "set --no-dpop",
    );
    assert_eq!(show("ec"), Value::Null);
    let pem_body: String = pem.lines().nth(1).unwrap().to_owned();
    for file in ["rekey.db", "rekey.db-wal"] {
        let raw = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&raw).contains(&pem_body),
            "the key is not in {file}"
        );
    }
}
