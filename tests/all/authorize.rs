//! `rekey authorize`: the first token set, end to end against oidc-provider
//! (tests/oidc/server.mjs). The authorization code grant with PKCE: rekey
//! prints the authorization URL (`--no-browser`), `tests/oidc/follow.mjs`
//! plays the browser (the provider's login and consent pages, then the
//! redirect to rekey's loopback listener), rekey exchanges the code and
//! stores the token response; `rekey send` then refreshes it across several
//! expiries with every strategy. The device grant likewise, with follow.mjs
//! entering the user code. The failures: consent denied, a forged redirect
//! (wrong `state`), no redirect in time, a device code that expires, a
//! device grant denied, and `slow_down` (which oidc-provider never sends: a
//! scripted device endpoint here does). Nothing secret in any output at -vv.

use crate::support::peers::{self, Node};
use crate::support::{all_output, rekey_bin, rekey_cli};
use rekey::{KeyStore, SqliteStore};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const ACCESS_TOKEN_TTL: u64 = 2;
const PAST_EXPIRY: Duration = Duration::from_millis(ACCESS_TOKEN_TTL * 1000 + 250);
const EXPIRIES: usize = 3;
const EXIT_AUTHORIZE: i32 = 3;
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// server.mjs with these clients (native: a loopback redirect on any port).
struct Peer {
    node: Node,
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Peer {
    fn start(node: &Node, clients: &[(&str, &str)], env: &[(&str, &str)]) -> Peer {
        let registrations: Vec<Value> = clients
            .iter()
            .map(|(id, auth)| {
                json!({
                    "client_id": id,
                    "client_secret": secret(id),
                    "token_endpoint_auth_method": format!("client_secret_{auth}"),
                    "application_type": "native",
                    "redirect_uris": ["http://127.0.0.1/callback"],
                    "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
                })
            })
            .collect();
        let mut cmd = node.script("server.mjs");
        cmd.env("OIDC_PORT", "0")
            .env("OIDC_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL.to_string())
            .env("OIDC_CLIENTS", Value::from(registrations).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node tests/oidc/server.mjs");
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

    fn stats(&self) -> Value {
        let (_, body) = http_get(&format!("{}/_stats", self.issuer()));
        serde_json::from_str(&body).expect("stats are JSON")
    }

    /// follow.mjs: the browser.
    fn follow(&self, args: &[&str]) -> Value {
        let out = self
            .node
            .script("follow.mjs")
            .args(args)
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

/// Reserved characters on purpose, as in oidc_provider.rs.
fn secret(id: &str) -> String {
    format!("{id}:s3cr&t +%/?=")
}

/// A plain GET over HTTP/1.0: status and body.
fn http_get(url: &str) -> (u16, String) {
    let u = url::Url::parse(url).expect("URL");
    let mut stream =
        TcpStream::connect((u.host_str().unwrap(), u.port().unwrap())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nhost: {}\r\n\r\n",
        u.authority()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// A running `rekey -vv authorize`, its stderr collected line by line.
struct Authorizing {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<String>>,
}

impl Authorizing {
    fn start(store: &Path, args: &[&str]) -> Authorizing {
        let mut child = Command::new(rekey_bin())
            .arg("--store")
            .arg(store)
            .arg("-vv")
            .arg("authorize")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rekey authorize");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(String::new()));
        let all = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Authorizing { child, lines, seen }
    }

    /// The first stderr line (trimmed) that satisfies `want`.
    fn line(&self, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(60);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if want(l.trim()) => return l.trim().to_owned(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!(
            "rekey authorize printed no such line:\n{}",
            self.seen.lock().unwrap()
        );
    }

    /// The authorization URL it printed.
    fn url(&self) -> String {
        self.line(|l| l.starts_with("http://") || l.starts_with("https://"))
    }

    fn finish(mut self) -> Output {
        let mut stdout = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        // The reader thread ends with the pipe.
        let until = Instant::now() + Duration::from_secs(5);
        while self.lines.recv_timeout(Duration::from_millis(50)).is_ok() && Instant::now() < until {
        }
        Output {
            status,
            stdout,
            stderr: self.seen.lock().unwrap().clone().into_bytes(),
        }
    }
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

fn stored_keys(store: &Path, name: &str) -> Option<Value> {
    let c = SqliteStore::open(store).unwrap().load(name).unwrap();
    c.keys.map(|k| serde_json::from_str(k.expose()).unwrap())
}

fn check_no_leak(out: &Output, secrets: &[String]) {
    let printed = all_output(out);
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !printed.contains(s.as_str()),
            "rekey printed a token, code or secret"
        );
    }
}

fn remember(secrets: &mut Vec<String>, keys: &Value) {
    for f in ["access_token", "refresh_token", "id_token"] {
        if let Some(t) = keys[f].as_str() {
            secrets.push(t.to_owned());
        }
    }
}

fn add(store: &Path, args: &[&str]) {
    let mut all = vec!["credential", "add"];
    all.extend_from_slice(args);
    let out = rekey_cli(store, &all);
    assert!(
        out.status.success(),
        "credential add {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rekey send NAME <issuer>/me` across EXPIRIES expiries: each prints the
/// login's userinfo; nothing secret is printed.
fn refresh_across_expiries(
    peer: &Peer,
    store: &Path,
    name: &str,
    login: &str,
    secrets: &mut Vec<String>,
) {
    for _ in 0..EXPIRIES {
        std::thread::sleep(PAST_EXPIRY);
        let out = rekey_cli(
            store,
            &["-vv", "send", name, &format!("{}/me", peer.issuer())],
        );
        check_no_leak(&out, secrets);
        assert!(
            out.status.success(),
            "{name}: send: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        let userinfo: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(userinfo["sub"], login, "{name}");
        remember(secrets, &stored_keys(store, name).unwrap());
    }
}

/// The code grant for `name`; returns the code the provider issued.
fn authorize_code(
    peer: &Peer,
    store: &Path,
    name: &str,
    login: &str,
    secrets: &[String],
) -> String {
    let run = Authorizing::start(store, &[name, "--no-browser", "--timeout", "60"]);
    let url = run.url();
    assert_eq!(query_param(&url, "code_challenge_method"), "S256");
    assert!(query_param(&url, "redirect_uri").starts_with("http://127.0.0.1:"));
    let browser = peer.follow(&["--url", &url, "--login", login]);
    let out = run.finish();
    let code = browser["code"].as_str().unwrap_or_default().to_owned();
    let mut secrets = secrets.to_vec();
    secrets.push(code.clone());
    check_no_leak(&out, &secrets);
    assert!(
        out.status.success(),
        "{name}: rekey authorize: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    assert_eq!(
        browser["status"], 200,
        "{name}: the listener's answer: {browser}"
    );
    assert!(out.stdout.is_empty());
    code
}

#[test]
fn the_code_grant_stores_keys_that_refresh_with_every_strategy() {
    let Some(node) = peers::node() else { return };
    let clients = [
        ("az-on-auth-failure", "basic"),
        ("az-every-request", "post"),
        ("az-before-expiry", "basic"),
    ];
    let peer = Peer::start(&node, &clients, &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    let issuer = peer.issuer();
    let token_url = format!("{issuer}/token");
    let auth_url = format!("{issuer}/auth");
    std::thread::scope(|s| {
        for (i, (id, auth)) in clients.iter().enumerate() {
            let (peer, store, issuer) = (&peer, store.as_path(), issuer.as_str());
            let (token_url, auth_url) = (token_url.as_str(), auth_url.as_str());
            s.spawn(move || {
                let strategy = id.trim_start_matches("az-");
                let sec = secret(id);
                let mut args = vec![*id, "--client-id", id, "--client-secret", &sec];
                args.extend([
                    "--client-auth",
                    auth,
                    "--strategy",
                    strategy,
                    "--expiry-margin",
                    "1",
                ]);
                // Three ways to the endpoints: a preset with discovery,
                // discovery alone, and every URL given.
                match i {
                    0 => args.extend(["--provider", "oidc", "--issuer", issuer]),
                    1 => args.extend([
                        "--issuer",
                        issuer,
                        "--auth-param",
                        "scope=openid offline_access",
                    ]),
                    _ => args.extend([
                        "--token-url",
                        token_url,
                        "--authorization-url",
                        auth_url,
                        "--auth-param",
                        "scope=openid offline_access",
                    ]),
                }
                add(store, &args);
                let login = format!("user-{id}");
                let mut secrets = vec![sec.clone()];
                authorize_code(peer, store, id, &login, &secrets);
                let keys = stored_keys(store, id).expect("keys stored");
                for f in ["access_token", "refresh_token", "id_token", "expires_at"] {
                    assert!(!keys[f].is_null(), "{id}: the stored set has no {f}");
                }
                remember(&mut secrets, &keys);
                refresh_across_expiries(peer, store, id, &login, &mut secrets);
            });
        }
    });
    let stats = peer.stats();
    for (id, auth) in clients {
        let s = &stats["clients"][id];
        assert_eq!(s["code_exchanges"], 1, "{id}: {s}");
        assert_eq!(s["refreshes"], EXPIRIES, "{id}: {s}");
        assert_eq!(s["grant_errors"], json!({}), "{id}: {s}");
        assert_eq!(s["auth_seen"][auth], EXPIRIES + 1, "{id}: {s}");
    }
}

fn one_client_peer(node: &Node, id: &str, env: &[(&str, &str)]) -> (Peer, tempfile::TempDir) {
    let peer = Peer::start(node, &[(id, "basic")], env);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    let sec = secret(id);
    add(
        &store,
        &[
            id,
            "--issuer",
            &peer.issuer(),
            "--client-id",
            id,
            "--client-secret",
            &sec,
            "--auth-param",
            "scope=openid offline_access",
        ],
    );
    (peer, dir)
}

fn assert_authorize_failed(out: &Output, wanted: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_AUTHORIZE), "{stderr}");
    assert!(stderr.contains(wanted), "wanted {wanted:?} in:\n{stderr}");
}

#[test]
fn denied_consent_is_access_denied_and_stores_nothing() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-denied", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-denied", "--no-browser"]);
    let url = run.url();
    let browser = peer.follow(&["--url", &url, "--deny"]);
    let out = run.finish();
    assert_authorize_failed(&out, "access_denied");
    assert_eq!(browser["status"], 400, "the browser is told: {browser}");
    assert!(stored_keys(&store, "az-denied").is_none());
    assert_eq!(
        peer.stats()["clients"]["az-denied"]["code_exchanges"],
        Value::Null
    );
}

#[test]
fn a_redirect_with_a_wrong_state_is_refused_before_any_exchange() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-state", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-state", "--no-browser"]);
    let url = run.url();
    let redirect = query_param(&url, "redirect_uri");
    // Another page (or process) hits the listener first with a code of its own.
    let (status, _) = http_get(&format!("{redirect}?code=forged-code-value&state=not-ours"));
    let out = run.finish();
    assert_authorize_failed(&out, "state does not match");
    assert_eq!(status, 400);
    assert!(stored_keys(&store, "az-state").is_none());
    assert!(
        peer.stats()["clients"]["az-state"].is_null(),
        "nothing reached the token endpoint"
    );
}

#[test]
fn no_redirect_in_time_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "t",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--authorization-url",
            "http://127.0.0.1:9/auth",
            "--client-id",
            "t",
            "--public-client",
        ],
    );
    let started = Instant::now();
    let run = Authorizing::start(&store, &["t", "--no-browser", "--timeout", "1"]);
    let out = run.finish();
    assert_authorize_failed(&out, "no redirect arrived within 1 s");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Neither grant is possible without its endpoint.
    let out = rekey_cli(
        &store,
        &[
            "credential",
            "set",
            "t",
            "--authorization-url",
            "http://example.com/auth",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "plain http off loopback is refused"
    );
}

/// The device grant: returns the user code rekey printed.
fn read_device_prompt(run: &Authorizing) -> (String, String) {
    let uri = run.line(|l| l.starts_with("rekey: on any device, open "));
    let uri = uri
        .trim_start_matches("rekey: on any device, open ")
        .to_owned();
    run.line(|l| l.contains("enter the code"));
    let code = run.line(|l| !l.is_empty());
    (uri, code)
}

#[test]
fn the_device_grant_stores_keys_that_refresh() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-device", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-device", "--device"]);
    let (uri, code) = read_device_prompt(&run);
    assert!(uri.starts_with(&peer.issuer()), "{uri}");
    let page = peer.follow(&[
        "--url",
        &uri,
        "--user-code",
        &code,
        "--login",
        "user-az-device",
    ]);
    assert!(page["page"].is_string(), "{page}");
    let out = run.finish();
    let mut secrets = vec![secret("az-device")];
    check_no_leak(&out, &secrets);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = stored_keys(&store, "az-device").expect("keys stored");
    remember(&mut secrets, &keys);
    refresh_across_expiries(&peer, &store, "az-device", "user-az-device", &mut secrets);
}

#[test]
fn a_denied_or_expired_device_code_ends_cleanly() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-device-denied", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-device-denied", "--device"]);
    let (uri, code) = read_device_prompt(&run);
    peer.follow(&["--url", &uri, "--user-code", &code, "--deny"]);
    assert_authorize_failed(&run.finish(), "access_denied");
    assert!(stored_keys(&store, "az-device-denied").is_none());

    // Codes that live 6 s: one poll (pending) at 5 s, then they are gone.
    let (_peer, dir) = one_client_peer(&node, "az-expired", &[("OIDC_DEVICE_CODE_TTL", "6")]);
    let store = dir.path().join("rekey.db");
    let started = Instant::now();
    let out = Authorizing::start(&store, &["az-expired", "--device"]).finish();
    assert_authorize_failed(&out, "device code expired");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stored_keys(&store, "az-expired").is_none());
}

/// oidc-provider never answers `slow_down`: this device endpoint does, once.
#[test]
fn slow_down_makes_the_polls_five_seconds_further_apart() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let polls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = polls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if req.starts_with("POST /device") {
                json!({"device_code": "scripted-device-code", "user_code": "ABCD-EFGH", "verification_uri": format!("http://127.0.0.1:{port}/activate"), "expires_in": 60, "interval": 1}).to_string()
            } else {
                let mut p = seen.lock().unwrap();
                p.push(Instant::now());
                match p.len() {
                    1 => json!({"error": "slow_down"}).to_string(),
                    2 => json!({"error": "authorization_pending"}).to_string(),
                    _ => json!({"access_token": "scripted-access-token", "refresh_token": "scripted-refresh-token", "expires_in": 60}).to_string(),
                }
            };
            let status = if body.contains("error") {
                "400 Bad Request"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    let base = format!("http://127.0.0.1:{port}");
    add(
        &store,
        &[
            "s",
            "--token-url",
            &format!("{base}/token"),
            "--device-url",
            &format!("{base}/device"),
            "--client-id",
            "s",
            "--public-client",
        ],
    );
    let out = Authorizing::start(&store, &["s", "--device"]).finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_no_leak(
        &out,
        &[
            "scripted-access-token".into(),
            "scripted-refresh-token".into(),
            "scripted-device-code".into(),
        ],
    );
    let p = polls.lock().unwrap();
    assert_eq!(p.len(), 3);
    // Interval 1 s; after slow_down 6 s, and it stays 6 s.
    for gap in [p[1] - p[0], p[2] - p[1]] {
        assert!(gap >= Duration::from_millis(5800), "polled after {gap:?}");
    }
    assert_eq!(
        stored_keys(&store, "s").unwrap()["refresh_token"],
        "scripted-refresh-token"
    );
}
