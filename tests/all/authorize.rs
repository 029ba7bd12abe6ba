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
use crate::support::{all_output, fetch, rekey_bin, rekey_cli};
use rekey::{KeyStore, SqliteStore};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
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
    let (status, _, body) = fetch(url);
    (status, body)
}

/// A running `rekey -vv authorize`, its stderr collected line by line.
struct Authorizing {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<String>>,
}

impl Authorizing {
    fn start(store: &Path, args: &[&str]) -> Authorizing {
        Authorizing::start_with(store, args, &[])
    }

    fn start_with(store: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Authorizing {
        let mut child = Command::new(rekey_bin())
            .arg("--store")
            .arg(store)
            .arg("-vv")
            .arg("authorize")
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
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

    /// The one-use start URL it printed.
    fn start_url(&self) -> String {
        let url = self.line(|l| l.starts_with("http://") || l.starts_with("https://"));
        assert!(
            url.starts_with("http://127.0.0.1:") && url.contains("/start/"),
            "{url}"
        );
        url
    }

    /// The authorization URL, as a browser finds it: the start URL's redirect.
    fn url(&self) -> String {
        let (status, location, _) = fetch(&self.start_url());
        assert_eq!(status, 302, "the start URL redirects");
        location.expect("the start URL's redirect has a location")
    }

    /// Ends a run this test has seen enough of.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    if !args.contains(&"--api-origin") {
        // What the token may be sent to is beside the point here.
        all.push("--any-api-origin");
    }
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
                args.extend(["--api-origin", issuer]);
                args.extend([
                    "--client-auth",
                    auth,
                    "--strategy",
                    strategy,
                    "--expiry-margin",
                    "1",
                ]);
                // Three ways to the endpoints: a preset with discovery,
                // discovery alone, and every URL given (with the issuer:
                // oidc-provider's redirects carry `iss`, which RFC 9207 says
                // to check, so rekey refuses one it cannot check).
                match i {
                    0 => args.extend(["--provider", "oidc", "--issuer", issuer]),
                    1 => args.extend([
                        "--issuer",
                        issuer,
                        "--auth-param",
                        "scope=openid offline_access",
                    ]),
                    _ => args.extend([
                        "--issuer",
                        issuer,
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
            "--api-origin",
            &peer.issuer(),
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

/// `value` with its first character changed: the same length, not the same.
fn same_length_other(value: &str) -> String {
    let first = if value.starts_with('A') { "B" } else { "A" };
    format!("{first}{}", &value[1..])
}

/// The login whose token `name` holds, asked of the provider's userinfo.
fn whose_token(peer: &Peer, store: &Path, name: &str) -> Value {
    let out = rekey_cli(store, &["send", name, &format!("{}/me", peer.issuer())]);
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["sub"].clone()
}

/// Issue #20: a forged `?error=access_denied&state=x` (and a redirect with a
/// wrong state of the right length) once ended `authorize`; now each is
/// answered 400 and the real redirect still succeeds.
#[test]
fn forged_redirects_are_refused_and_the_real_one_still_succeeds() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-forged", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-forged", "--no-browser", "--timeout", "60"]);
    let url = run.url();
    let redirect = query_param(&url, "redirect_uri");
    let state = query_param(&url, "state");
    let wrong = same_length_other(&state);
    assert_eq!(wrong.len(), state.len());
    for forged in [
        format!("{redirect}?error=access_denied&state=x"),
        format!("{redirect}?error=access_denied&state={wrong}"),
        format!("{redirect}?code=forged-code-value&state={wrong}"),
        format!("{redirect}?code=forged-code-value"),
    ] {
        let (status, body) = http_get(&forged);
        assert_eq!(status, 400, "{forged}");
        assert!(body.contains("state does not match"), "{body}");
    }
    let browser = peer.follow(&["--url", &url, "--login", "user-az-forged"]);
    let out = run.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(browser["status"], 200, "{browser}");
    let stats = &peer.stats()["clients"]["az-forged"];
    assert_eq!(stats["code_exchanges"], 1, "{stats}");
    assert_eq!(stats["grant_errors"], json!({}), "{stats}");
    assert_eq!(whose_token(&peer, &store, "az-forged"), "user-az-forged");
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!printed.contains(&state), "the state is never printed");
}

/// No redirect with this request's state: nothing is exchanged, and the
/// flow ends only at its timeout.
#[test]
fn a_redirect_with_a_wrong_state_is_refused_before_any_exchange() {
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-state", &[]);
    let store = dir.path().join("rekey.db");
    let run = Authorizing::start(&store, &["az-state", "--no-browser", "--timeout", "3"]);
    let url = run.url();
    let redirect = query_param(&url, "redirect_uri");
    // Another page (or process) hits the listener first with a code of its own.
    let (status, _) = http_get(&format!("{redirect}?code=forged-code-value&state=not-ours"));
    let out = run.finish();
    assert_eq!(status, 400);
    assert_authorize_failed(&out, "no redirect arrived within 3 s");
    assert!(stored_keys(&store, "az-state").is_none());
    assert!(
        peer.stats()["clients"]["az-state"].is_null(),
        "nothing reached the token endpoint"
    );
}

/// Every process's command line and environment this user can read.
fn every_cmdline_and_environ() -> Vec<(u32, String)> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(entry.path().join(file)) {
                seen.push((pid, String::from_utf8_lossy(&bytes).replace('\0', " ")));
            }
        }
    }
    seen
}

/// Issue #20: the authorization URL went to `xdg-open` on its command
/// line, where every local user can read `state` and the PKCE challenge.
/// Now the opener (a script here, first on PATH) gets the one-use start URL.
#[cfg(target_os = "linux")]
#[test]
fn the_browser_opener_sees_no_state_or_challenge() {
    use std::os::unix::fs::PermissionsExt;
    let Some(node) = peers::node() else { return };
    let (peer, dir) = one_client_peer(&node, "az-opener", &[]);
    let store = dir.path().join("rekey.db");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let hold = dir.path().join("hold");
    assert!(
        Command::new("mkfifo")
            .arg(&hold)
            .status()
            .unwrap()
            .success(),
        "mkfifo"
    );
    let argv = dir.path().join("argv");
    // Records its argv, then stays alive (until the test writes to `hold`,
    // or 60 s) so its command line is there to read.
    let opener = bin.join("xdg-open");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {argv}.tmp && mv {argv}.tmp {argv}\ntimeout 60 cat {hold} > /dev/null\n",
            argv = argv.display(),
            hold = hold.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let run = Authorizing::start_with(
        &store,
        &["az-opener", "--timeout", "60"],
        &[("PATH", path.as_os_str())],
    );
    run.line(|l| l.contains("a browser was asked to open"));
    let until = Instant::now() + Duration::from_secs(30);
    while !argv.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let args = std::fs::read_to_string(&argv).expect("the opener ran");
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 1, "{args:?}");
    let start = args[0];
    assert!(
        start.starts_with("http://127.0.0.1:") && start.contains("/start/"),
        "{start}"
    );
    // The browser's view: the start URL redirects to the authorization URL.
    let (status, location, _) = fetch(start);
    assert_eq!(status, 302);
    let url = location.unwrap();
    let secrets = [
        query_param(&url, "state"),
        query_param(&url, "code_challenge"),
        url.clone(),
    ];
    // What another process finds while the opener is still running.
    let seen = every_cmdline_and_environ();
    assert!(
        seen.iter().any(|(_, text)| text.contains(start)),
        "the scan saw the opener's command line"
    );
    for (pid, text) in &seen {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "pid {pid} shows {secret}");
        }
    }
    // Nor in any file of the flow (the store, the opener's record).
    for file in [&store, &argv] {
        let bytes = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        assert!(!bytes.contains(&secrets[0]), "{}", file.display());
    }
    std::fs::OpenOptions::new().write(true).open(&hold).unwrap();
    let browser = peer.follow(&["--url", &url, "--login", "user-az-opener"]);
    let out = run.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(browser["status"], 200, "{browser}");
    let printed = String::from_utf8_lossy(&out.stderr);
    for secret in &secrets {
        assert!(
            !printed.contains(secret.as_str()),
            "printed without --print-url"
        );
    }
    assert_eq!(whose_token(&peer, &store, "az-opener"), "user-az-opener");
}

/// The start URL answers once; a wrong start token is a 404 that ends
/// nothing, a second use of the right one ends the flow (someone else had
/// it), and `--print-url` shows the authorization URL on the terminal.
#[test]
fn the_start_url_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "s",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--authorization-url",
            "http://127.0.0.1:9/auth",
            "--client-id",
            "s",
            "--public-client",
        ],
    );
    let run = Authorizing::start(&store, &["s", "--no-browser", "--print-url"]);
    let start = run.start_url();
    let printed = run.line(|l| l.starts_with("http://127.0.0.1:9/auth?"));
    let (token_at, token) = start.rsplit_once('/').unwrap();
    let origin = token_at.trim_end_matches("/start");
    assert!(token.len() >= 32, "at least 128 bits: {token}");
    for wrong in [
        format!("{token_at}/{}", same_length_other(token)),
        format!("{token_at}/"),
        format!("{token_at}/{token}x"),
        format!("{origin}/{token}"),
    ] {
        assert_eq!(fetch(&wrong).0, 404, "{wrong}");
    }
    let (status, location, _) = fetch(&start);
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some(printed.as_str()));
    assert_eq!(fetch(&start).0, 404, "one use");
    let out = run.finish();
    assert_authorize_failed(&out, "opened more than once");
    assert!(stored_keys(&store, "s").is_none());
}

/// A scripted issuer: discovery (advertising RFC 9207's `iss` when asked)
/// and a token endpoint that counts its requests.
fn scripted_issuer(sends_iss: bool) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let tokens: Arc<Mutex<usize>> = Arc::default();
    let (issuer, count) = (base.clone(), tokens.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (status, body) = if req.starts_with("GET /.well-known/openid-configuration") {
                let meta = json!({
                    "issuer": issuer,
                    "token_endpoint": format!("{issuer}/token"),
                    "authorization_endpoint": format!("{issuer}/auth"),
                    "authorization_response_iss_parameter_supported": sends_iss,
                });
                ("200 OK", meta.to_string())
            } else if req.starts_with("POST /token") {
                *count.lock().unwrap() += 1;
                let t = json!({"access_token": "scripted-access-token", "refresh_token": "scripted-refresh-token", "expires_in": 60});
                ("200 OK", t.to_string())
            } else {
                ("404 Not Found", "{}".to_owned())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, tokens)
}

/// Runs `authorize NAME` and delivers one redirect with this request's
/// state and `extra`: the listener's status and the finished run.
fn redirect_with(store: &Path, name: &str, extra: &str) -> (u16, Output) {
    let run = Authorizing::start(store, &[name, "--no-browser", "--timeout", "60"]);
    let url = run.url();
    let target = format!(
        "{}?code=scripted-code&state={}{extra}",
        query_param(&url, "redirect_uri"),
        query_param(&url, "state")
    );
    let (status, _) = http_get(&target);
    (status, run.finish())
}

/// A GET from a program running as `nobody`: its status, or None when that
/// cannot be arranged (not root, no python3).
#[cfg(target_os = "linux")]
fn status_as_another_user(url: &str) -> Option<u16> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let script = "import sys, urllib.request, urllib.error\n\
class N(urllib.request.HTTPRedirectHandler):\n    def redirect_request(self, *a): return None\n\
try:\n    print(urllib.request.build_opener(N).open(sys.argv[1]).status)\n\
except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let out = Command::new("python3")
        .args(["-c", script, url])
        .uid(65534)
        .gid(65534)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Issue #20's attacker is another local user: whatever they read, the
/// listener serves neither the start URL nor a redirect to their programs.
#[cfg(target_os = "linux")]
#[test]
fn another_users_programs_get_nothing_from_the_listener() {
    let (issuer, tokens) = scripted_issuer(false);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "u",
            "--issuer",
            &issuer,
            "--client-id",
            "u",
            "--public-client",
        ],
    );
    let run = Authorizing::start(&store, &["u", "--no-browser", "--timeout", "60"]);
    let start = run.start_url();
    let Some(status) = status_as_another_user(&start) else {
        eprintln!("SKIPPED: needs root and python3 to act as another user");
        return;
    };
    assert_eq!(status, 403, "the start URL is not served to another user");
    let (status, location, _) = fetch(&start);
    assert_eq!(status, 302, "and is still there for ours");
    let url = location.unwrap();
    let redirect = format!(
        "{}?code=scripted-code&state={}",
        query_param(&url, "redirect_uri"),
        query_param(&url, "state")
    );
    assert_eq!(status_as_another_user(&redirect), Some(403));
    assert_eq!(*tokens.lock().unwrap(), 0, "nothing exchanged for them");
    assert_eq!(http_get(&redirect).0, 200);
    let out = run.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(*tokens.lock().unwrap(), 1);
}

/// A raw GET from a program running as `nobody` that hides its socket from
/// `/proc/net/tcp`'s ESTABLISHED rows: `half-close` shuts its writing side
/// after the request (its socket is then FIN_WAIT2, and it still reads the
/// answer: printed as the status line's code), `reset` aborts with RST right
/// after sending (its socket is gone; prints `sent`), `late` connects and
/// sends only after the listener has had time to answer (as a program
/// descheduled on a loaded machine does), then half-closes and reads. None
/// when that cannot be arranged (not root, no python3), or when the program
/// failed (its connection was reset under it).
#[cfg(target_os = "linux")]
fn hidden_get_as_another_user(url: &str, mode: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let u = url::Url::parse(url).unwrap();
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    let script = "import socket, struct, sys, time\n\
host, port, target, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]\n\
s = socket.create_connection((host, port))\n\
if mode == 'late':\n    time.sleep(0.5)\n\
s.sendall(('GET %s HTTP/1.0\\r\\nhost: %s:%d\\r\\n\\r\\n' % (target, host, port)).encode())\n\
if mode == 'reset':\n    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n    s.close()\n    print('sent')\n    sys.exit(0)\n\
s.shutdown(socket.SHUT_WR)\n\
data = b''\n\
while True:\n    try:\n        chunk = s.recv(4096)\n    except OSError:\n        break\n    if not chunk:\n        break\n    data += chunk\n\
head = data.split(b'\\r\\n', 1)[0].split()\n\
print(head[1].decode() if len(head) > 1 else 'none')\n";
    let out = Command::new("python3")
        .args(["-c", script, u.host_str().unwrap()])
        .arg(u.port().unwrap().to_string())
        .args([&target, mode])
        .uid(65534)
        .gid(65534)
        .output()
        .ok()?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!printed.is_empty()).then_some(printed)
}

/// The uid check cannot be dodged by a socket that is not ESTABLISHED when
/// it looks: another user who half-closes after the request still reads
/// the answer, and one who resets right after sending has no socket left to
/// find; neither gets the start URL's redirect or a say in the redirect.
#[cfg(target_os = "linux")]
#[test]
fn another_user_cannot_hide_its_socket_from_the_uid_check() {
    let (issuer, tokens) = scripted_issuer(false);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "h",
            "--issuer",
            &issuer,
            "--client-id",
            "h",
            "--public-client",
        ],
    );
    let run = Authorizing::start(&store, &["h", "--no-browser", "--timeout", "60"]);
    let start = run.start_url();
    let Some(status) = hidden_get_as_another_user(&start, "half-close") else {
        eprintln!("SKIPPED: needs root and python3 to act as another user");
        return;
    };
    assert_eq!(
        status, "403",
        "a half-closed socket is still another user's"
    );
    let refused = |l: &str| l.contains("another user's program reached the listener");
    run.line(refused);
    let (status, location, _) = fetch(&start);
    assert_eq!(status, 302, "and the start URL is still there for ours");
    let url = location.unwrap();
    let redirect = format!(
        "{}?code=scripted-code&state={}",
        query_param(&url, "redirect_uri"),
        query_param(&url, "state")
    );
    // `late`: the 403 went out before the request came; the listener reads
    // what comes after (closing on unread bytes would reset the connection
    // and the program would never see its answer: a verdict that once
    // depended on the machine's load).
    for mode in ["reset", "half-close", "late"] {
        let answer = hidden_get_as_another_user(&redirect, mode);
        let wanted = if mode == "reset" { "sent" } else { "403" };
        assert_eq!(answer.as_deref(), Some(wanted), "{mode}");
        // Counted, not timed: the listener says when it refused one.
        let line =
            run.line(|l| refused(l) || (l.starts_with("rekey:") && !l.contains("waiting up to")));
        assert!(refused(&line), "{mode}: {line}");
        assert_eq!(
            *tokens.lock().unwrap(),
            0,
            "{mode}: nothing exchanged for them"
        );
    }
    assert_eq!(http_get(&redirect).0, 200);
    let out = run.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(*tokens.lock().unwrap(), 1);
}

/// Another user's idle connections cannot hold the listener: 400 that
/// never send a byte (queued connections are read in turn, each for up to
/// 10 s) once kept the browser's start URL waiting for minutes.
#[cfg(target_os = "linux")]
#[test]
fn another_users_idle_connections_do_not_hold_the_listener() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("SKIPPED: needs root to act as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "w",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--authorization-url",
            "http://127.0.0.1:9/auth",
            "--client-id",
            "w",
            "--public-client",
        ],
    );
    let run = Authorizing::start(&store, &["w", "--no-browser", "--timeout", "120"]);
    let start = run.start_url();
    let port = url::Url::parse(&start).unwrap().port().unwrap();
    let script = "import socket, sys\n\
held = [socket.create_connection(('127.0.0.1', int(sys.argv[1]))) for _ in range(400)]\n\
print('ready', flush=True)\n\
sys.stdin.read()\n";
    let Ok(mut idle) = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    let mut ready = String::new();
    BufReader::new(idle.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let (status, _, _) = fetch(&start);
    drop(idle.stdin.take());
    let _ = idle.wait();
    assert_eq!(
        status, 302,
        "the start URL answered behind 400 idle connections"
    );
    run.stop();
}

/// Issue #21: RFC 9207 in the authorize suite.
#[test]
fn rfc9207_iss_is_required_when_advertised_and_checked_against_the_issuer() {
    let iss = |issuer: &str| {
        format!(
            "&iss={}",
            url::form_urlencoded::byte_serialize(issuer.as_bytes()).collect::<String>()
        )
    };

    // Discovery advertises `iss`: a redirect without it is refused, nothing exchanged.
    let (issuer, tokens) = scripted_issuer(true);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db");
    add(
        &store,
        &[
            "d",
            "--issuer",
            &issuer,
            "--client-id",
            "d",
            "--public-client",
        ],
    );
    let (status, out) = redirect_with(&store, "d", "");
    assert_eq!(status, 400);
    assert_authorize_failed(&out, "RFC 9207");
    assert_eq!(*tokens.lock().unwrap(), 0);
    assert!(stored_keys(&store, "d").is_none());
    // Another issuer's `iss`: refused too.
    let (status, out) = redirect_with(&store, "d", &iss("https://evil.example"));
    assert_eq!(status, 400);
    assert_authorize_failed(&out, "RFC 9207");
    assert_eq!(*tokens.lock().unwrap(), 0);
    // Its own: accepted, the code exchanged once, the keys stored.
    let (status, out) = redirect_with(&store, "d", &iss(&issuer));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status, 200);
    assert_eq!(*tokens.lock().unwrap(), 1);
    assert_eq!(
        stored_keys(&store, "d").unwrap()["refresh_token"],
        "scripted-refresh-token"
    );

    // No issuer known: an `iss` cannot be checked, and the person is told
    // to configure it (exit 9, invalid settings).
    add(
        &store,
        &[
            "n",
            "--token-url",
            &format!("{issuer}/token"),
            "--authorization-url",
            &format!("{issuer}/auth"),
            "--client-id",
            "n",
            "--public-client",
        ],
    );
    let (status, out) = redirect_with(&store, "n", &iss("https://evil.example"));
    assert_eq!(status, 400);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("--issuer"), "{stderr}");
    assert_eq!(*tokens.lock().unwrap(), 1);
    assert!(stored_keys(&store, "n").is_none());
    // ... and none sent: fine.
    let (status, out) = redirect_with(&store, "n", "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status, 200);

    // An issuer that does not advertise `iss`: a redirect without it is fine.
    let (quiet, tokens) = scripted_issuer(false);
    add(
        &store,
        &[
            "q",
            "--issuer",
            &quiet,
            "--client-id",
            "q",
            "--public-client",
        ],
    );
    let (status, out) = redirect_with(&store, "q", "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((status, *tokens.lock().unwrap()), (200, 1));
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

/// A timeout too long to add to the clock is bad input, not a panic.
#[test]
fn a_timeout_beyond_the_clock_is_refused() {
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
    for timeout in ["18446744073709551615", "0"] {
        let out = rekey_cli(
            &store,
            &["authorize", "t", "--no-browser", "--timeout", timeout],
        );
        let printed = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{timeout}: {printed}");
        assert!(printed.contains("--timeout"), "{timeout}: {printed}");
        assert!(!printed.contains("panicked"), "{printed}");
    }
}

/// The library refuses the same before it listens or shows anything.
#[tokio::test(flavor = "multi_thread")]
async fn the_library_refuses_a_timeout_beyond_a_day() {
    let rekey = rekey::Rekey::new(rekey::Config::default()).unwrap();
    let mut settings = rekey::Settings::new("http://127.0.0.1:9/token", "t");
    settings.authorization_url = Some("http://127.0.0.1:9/auth".into());
    let options = rekey::authorize::CodeOptions {
        timeout: Duration::MAX,
        ..Default::default()
    };
    let mut shown = false;
    let result = rekey
        .authorize_code("t", &settings, &options, |_| shown = true)
        .await;
    let Err(e) = result else {
        panic!("a timeout of Duration::MAX was accepted")
    };
    assert!(e.to_string().contains("timeout"), "{e}");
    assert!(!shown, "refused before anything was shown");
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
    // The -vv log names the credential, not "authorize".
    let log = String::from_utf8_lossy(&out.stderr);
    let exchanges: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("http exchange"))
        .collect();
    assert!(exchanges.len() >= 2, "{log}");
    for line in exchanges {
        assert!(line.contains("credential=\"az-device\""), "{line}");
    }
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
