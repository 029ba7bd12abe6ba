//! rekey against a real authorization server: npm `oidc-provider` (OpenID
//! Certified), run on loopback by `tests/oidc/server.mjs` under Node.js.
//!
//! Every credential starts from a real authorization-code flow
//! (`tests/oidc/authorize.mjs` drives the provider's login and consent pages)
//! and is imported with `rekey credential add`; then `rekey send` calls the
//! provider's userinfo endpoint across several access-token expiries, for each
//! strategy with both client authentication methods, all at once. The
//! provider's own counters (GET /_stats) say what it saw: every refresh
//! granted, none refused, each client authenticated as configured.
//!
//! A second scenario revokes a grant behind rekey's back (by reusing a rotated
//! refresh token, which oidc-provider treats as theft) and checks that rekey
//! reports "re-authorisation needed" (exit 3) and leaves the stored keys alone.
//!
//! A third scenario is machine to machine: client-credentials credentials
//! (RFC 6749 §4.4), added through the CLI with no keys, call the server's
//! protected API (`/_api/whoami`, which accepts only live client-credentials
//! tokens) across several expiries; the provider grants one token per expiry
//! and nothing else, and a client refused for its secret stores nothing.
//!
//! Then private_key_jwt client authentication (RFC 7523 §2.2) with the
//! client-credentials grant, and the JWT bearer grant (RFC 7523 §2.1, added
//! to oidc-provider by server.mjs): ES256 and RS256 assertions for a subject,
//! one grant per expiry, the subject seen by the server, no refresh token
//! stored, and a key the provider does not know refused (exit 9, no token).
//!
//! The peer is `support::peers::node()`: skipped, loudly, only when Node.js
//! (>= 20) is absent (a failure instead under REKEY_REQUIRE_PEERS, as in CI);
//! it runs `npm ci` in tests/oidc once when needed.

use crate::support::peers::{self, Node};
use crate::support::{all_output, rekey_cli, rekey_cli_env};
use rekey::{KeyStore, SqliteStore};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Access-token lifetime configured at the provider, in seconds.
const ACCESS_TOKEN_TTL: u64 = 2;
/// How many access-token expiries each matrix scenario lives through.
const EXPIRIES: u64 = 5;
/// A pause after which any access token issued before it has expired at the
/// provider (its `exp` is whole seconds, `clockTolerance` is 0).
const PAST_EXPIRY: Duration = Duration::from_millis(ACCESS_TOKEN_TTL * 1000 + 250);
const STRATEGIES: [&str; 3] = ["on-auth-failure", "every-request", "before-expiry"];
const AUTH_METHODS: [&str; 2] = ["basic", "post"];
const EXIT_REAUTHORIZE: i32 = 3;

/// One OAuth client registered at the provider, and how rekey uses it.
#[derive(Clone)]
struct Client {
    id: String,
    /// Reserved characters on purpose (any VSCHAR is allowed, RFC 6749
    /// Appendix A; oidc-provider refuses others): both client authentication
    /// methods must encode them as RFC 6749 §2.3.1 says.
    secret: String,
    /// `basic` or `post`, as `rekey credential add --client-auth` spells it.
    auth: &'static str,
    strategy: &'static str,
}

impl Client {
    fn new(id: &str, auth: &'static str, strategy: &'static str) -> Client {
        Client {
            id: id.into(),
            secret: format!("{id}:s3cr&t +%/?="),
            auth,
            strategy,
        }
    }

    fn registration(&self) -> Value {
        let method = if self.auth == "basic" {
            "client_secret_basic"
        } else {
            "client_secret_post"
        };
        json!({
            "client_id": self.id,
            "client_secret": self.secret,
            "token_endpoint_auth_method": method,
        })
    }
}

/// server.mjs, ended (by its pid) when dropped; it also exits by itself when
/// its stdin closes, so it cannot outlive the test process.
struct Peer {
    node: Node,
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn start(node: &Node, clients: &[&Client]) -> Peer {
        Peer::start_with(node, clients.iter().map(|c| c.registration()).collect())
    }

    /// server.mjs with these client registrations (its OIDC_CLIENTS).
    fn start_with(node: &Node, registrations: Vec<Value>) -> Peer {
        let mut child = node
            .script("server.mjs")
            .env("OIDC_PORT", "0")
            .env("OIDC_ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL.to_string())
            .env("OIDC_CLIENTS", Value::from(registrations).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node tests/oidc/server.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut peer = Peer {
            node: node.clone(),
            child,
            stdin,
            port: 0,
            stderr: stderr.clone(),
        };

        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
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
        peer.port = announced["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .unwrap_or_else(|| {
                panic!(
                    "server.mjs announced no port; its stderr:\n{}",
                    peer.stderr_text()
                )
            });
        peer
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) =
            http(self.port, "GET", path, &[], "").unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}");
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("GET {path} answered no JSON"))
    }

    /// A refresh at the token endpoint outside rekey (client_secret_post,
    /// which oidc-provider accepts from every client): status and the JSON.
    fn refresh(&self, client: &Client, refresh_token: &str) -> Result<(u16, Value), String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token)
            .append_pair("client_id", &client.id)
            .append_pair("client_secret", &client.secret)
            .finish();
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        let (status, body) = http(self.port, "POST", "/token", &headers, &body)?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 exchange with 127.0.0.1:`port`: status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let io = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(io)?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: truncated response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status line"))?;
    Ok((status, body.to_owned()))
}

/// The authorization-code flow for `client`: the first token response (JSON).
fn authorize(peer: &Peer, client: &Client, login: &str) -> Result<String, String> {
    let out = peer
        .node
        .script("authorize.mjs")
        .args([
            "--issuer",
            &peer.issuer(),
            "--client-id",
            &client.id,
            "--auth",
            client.auth,
            "--login",
            login,
        ])
        .env("OIDC_CLIENT_SECRET", &client.secret)
        .output()
        .map_err(|e| format!("cannot run authorize.mjs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}: authorize.mjs failed: {}",
            client.id,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `rekey credential add` for `client`, starting from the token response in `keys`.
fn add_credential(store: &Path, peer: &Peer, client: &Client, keys: &Path) -> Result<(), String> {
    let token_url = peer.url("/token");
    let keys = keys.to_string_lossy();
    let out = rekey_cli(
        store,
        &[
            "credential",
            "add",
            &client.id,
            "--token-url",
            &token_url,
            "--client-id",
            &client.id,
            "--client-secret",
            &client.secret,
            "--client-auth",
            client.auth,
            "--strategy",
            client.strategy,
            "--expiry-margin",
            "1",
            "--api-origin",
            &peer.issuer(),
            "--keys",
            &keys,
        ],
    );
    if !out.status.success() {
        return Err(format!(
            "{}: credential add exited {}: {}",
            client.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The stored keys (exact JSON text) and version of credential `name`.
fn stored(store: &Path, name: &str) -> Result<(String, u64), String> {
    let credential = SqliteStore::open(store)
        .and_then(|s| s.load(name))
        .map_err(|e| format!("{name}: cannot load the credential: {e}"))?;
    let keys = credential
        .keys
        .ok_or_else(|| format!("{name}: no keys stored"))?;
    Ok((keys.expose().to_owned(), credential.version))
}

fn parse_keys(name: &str, json: &str) -> Result<Value, String> {
    serde_json::from_str::<Value>(json)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| format!("{name}: keys are not a JSON object"))
}

fn str_field<'a>(keys: &'a Value, field: &str) -> Option<&'a str> {
    keys.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The token set holds what a relying party needs to keep (named, never shown).
fn check_token_set(name: &str, what: &str, keys: &Value) -> Result<(), String> {
    for field in [
        "access_token",
        "refresh_token",
        "id_token",
        "scope",
        "token_type",
    ] {
        if str_field(keys, field).is_none() {
            return Err(format!("{name}: {what} has no {field}"));
        }
    }
    if str_field(keys, "id_token").is_some_and(|t| t.split('.').count() != 3) {
        return Err(format!("{name}: {what} has an id_token that is not a JWT"));
    }
    let scope = str_field(keys, "scope").unwrap_or_default();
    for wanted in ["openid", "offline_access"] {
        if !scope.split(' ').any(|s| s == wanted) {
            return Err(format!(
                "{name}: {what} has scope {scope:?}, without {wanted}"
            ));
        }
    }
    Ok(())
}

/// Fails when any of `secrets` appears in what a rekey process printed.
fn check_no_leak(name: &str, out: &Output, secrets: &[String]) -> Result<(), String> {
    let printed = all_output(out);
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        if printed.contains(secret.as_str()) {
            return Err(format!(
                "{name}: rekey printed a token or the client secret"
            ));
        }
    }
    Ok(())
}

/// Remembers the tokens and secret of a credential, for leak checks.
fn remember_tokens(secrets: &mut Vec<String>, keys: &Value) {
    for field in ["access_token", "refresh_token", "id_token"] {
        if let Some(t) = str_field(keys, field).filter(|t| !secrets.iter().any(|s| s == t)) {
            secrets.push(t.to_owned());
        }
    }
}

/// Authorises `client`, imports its first token set; returns the token set.
fn enrol(
    peer: &Peer,
    store: &Path,
    dir: &Path,
    client: &Client,
    login: &str,
) -> Result<Value, String> {
    let first_json = authorize(peer, client, login)?;
    let first = parse_keys(&client.id, &first_json)?;
    check_token_set(&client.id, "the code exchange's token response", &first)?;
    if first["expires_in"].as_u64() != Some(ACCESS_TOKEN_TTL) {
        return Err(format!(
            "{}: expires_in is not the configured {ACCESS_TOKEN_TTL} s",
            client.id
        ));
    }
    let keys_file = dir.join(format!("{}.keys.json", client.id));
    std::fs::write(&keys_file, &first_json)
        .map_err(|e| format!("write {}: {e}", keys_file.display()))?;
    add_credential(store, peer, client, &keys_file)?;
    std::fs::remove_file(&keys_file).map_err(|e| format!("remove {}: {e}", keys_file.display()))?;
    Ok(first)
}

/// `rekey send NAME <peer>/me`: must exit 0 and print `login`'s userinfo.
fn send_userinfo(
    peer: &Peer,
    store: &Path,
    client: &Client,
    login: &str,
    secrets: &[String],
) -> Result<(), String> {
    let name = &client.id;
    let out = rekey_cli(store, &["send", name, &peer.url("/me")]);
    check_no_leak(name, &out, secrets)?;
    if !out.status.success() {
        return Err(format!(
            "{name}: rekey send exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let userinfo: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    if userinfo["sub"].as_str() != Some(login) {
        let shown: String = stdout.chars().take(200).collect();
        return Err(format!(
            "{name}: rekey send printed no userinfo with sub {login:?}: {shown:?}"
        ));
    }
    Ok(())
}

/// What a matrix scenario leaves for the provider-side checks.
struct Report {
    client: Client,
    sends: u64,
    version: u64,
    refresh_token: String,
}

/// One strategy with one client authentication method, across EXPIRIES
/// access-token expiries.
fn refresh_scenario(
    peer: &Peer,
    store: &Path,
    dir: &Path,
    client: &Client,
) -> Result<Report, String> {
    let name = &client.id;
    let login = format!("user-{name}");
    let first = enrol(peer, store, dir, client, &login)?;
    let mut secrets = vec![client.secret.clone()];
    remember_tokens(&mut secrets, &first);

    let mut sends = 0;
    // Each send comes after the access token it would use has expired.
    for _ in 0..EXPIRIES {
        std::thread::sleep(PAST_EXPIRY);
        send_userinfo(peer, store, client, &login, &secrets)?;
        sends += 1;
        let (keys, _) = stored(store, name)?;
        remember_tokens(&mut secrets, &parse_keys(name, &keys)?);
    }

    let (keys, version) = stored(store, name)?;
    let keys = parse_keys(name, &keys)?;
    check_token_set(name, "the stored token set", &keys)?;
    if keys["expires_at"].as_u64().is_none() {
        return Err(format!("{name}: the stored token set has no expires_at"));
    }
    let refresh_token = str_field(&keys, "refresh_token")
        .unwrap_or_default()
        .to_owned();
    if Some(refresh_token.as_str()) == str_field(&first, "refresh_token") {
        return Err(format!(
            "{name}: the stored refresh token is still the first one: no rotation was kept"
        ));
    }
    Ok(Report {
        client: client.clone(),
        sends,
        version,
        refresh_token,
    })
}

/// The grant dies behind rekey's back: rekey must say a person has to
/// re-authorise, exit 3, and leave the stored keys as they were.
fn revoked_grant_scenario(
    peer: &Peer,
    store: &Path,
    dir: &Path,
    client: &Client,
) -> Result<(), String> {
    let name = &client.id;
    let login = format!("user-{name}");
    let first = enrol(peer, store, dir, client, &login)?;
    let first_refresh_token = str_field(&first, "refresh_token")
        .unwrap_or_default()
        .to_owned();
    let mut secrets = vec![client.secret.clone()];
    remember_tokens(&mut secrets, &first);

    // The first access token expires; rekey refreshes (and the provider rotates).
    std::thread::sleep(PAST_EXPIRY);
    send_userinfo(peer, store, client, &login, &secrets)?;
    let (keys, _) = stored(store, name)?;
    let keys = parse_keys(name, &keys)?;
    remember_tokens(&mut secrets, &keys);
    if str_field(&keys, "refresh_token") == Some(first_refresh_token.as_str()) {
        return Err(format!(
            "{name}: rekey did not store a rotated refresh token"
        ));
    }

    // Reusing the rotated-out refresh token revokes the whole grant.
    let (status, answer) = peer.refresh(client, &first_refresh_token)?;
    if status != 400 || answer["error"] != "invalid_grant" {
        return Err(format!(
            "{name}: reusing a rotated refresh token answered {status} {}, not 400 invalid_grant",
            answer["error"]
        ));
    }

    let (before, version_before) = stored(store, name)?;
    std::thread::sleep(PAST_EXPIRY);
    let out = rekey_cli(store, &["send", name, &peer.url("/me")]);
    check_no_leak(name, &out, &secrets)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(EXIT_REAUTHORIZE) {
        return Err(format!(
            "{name}: rekey send after the grant was revoked exited {}, not {EXIT_REAUTHORIZE}: {}",
            out.status,
            stderr.trim()
        ));
    }
    for wanted in ["re-authorisation needed", "invalid_grant"] {
        if !stderr.contains(wanted) {
            return Err(format!(
                "{name}: stderr lacks {wanted:?}: {}",
                stderr.trim()
            ));
        }
    }
    if !out.stdout.is_empty() {
        return Err(format!("{name}: a failed send printed something on stdout"));
    }
    let (after, version_after) = stored(store, name)?;
    // The record moved by the protocol's writes alone (lease, refresh mark,
    // dead grant); the keys did not.
    let protocol_writes = crate::support::WRITES_PER_REFRESH;
    if after != before || version_after != version_before + protocol_writes {
        return Err(format!(
            "{name}: the refused refresh changed the stored keys (v{version_before} -> v{version_after})"
        ));
    }
    Ok(())
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The provider's view of one matrix scenario.
fn check_provider_saw(report: &Report, stats: &Value) -> Result<String, String> {
    let c = &report.client;
    let name = &c.id;
    let s = &stats["clients"][name];
    if !s.is_object() {
        return Err(format!("{name}: the provider has no record of this client"));
    }
    let errors = s["grant_errors"].as_object().cloned().unwrap_or_default();
    if !errors.is_empty() {
        return Err(format!(
            "{name}: the token endpoint reported errors: {}",
            Value::from(errors)
        ));
    }
    let refreshes = count(&s["refreshes"]);
    let rejected = count(&s["userinfo_rejected"]);
    let (used, other) = if c.auth == "basic" {
        ("basic", "post")
    } else {
        ("post", "basic")
    };
    let expect = |ok: bool, what: String| {
        if ok {
            Ok(())
        } else {
            Err(format!("{name}: {what}"))
        }
    };
    expect(
        count(&s["code_exchanges"]) == 1,
        format!("{} code exchanges, not 1", s["code_exchanges"]),
    )?;
    expect(
        count(&s["auth_seen"][used]) == refreshes + 1
            && count(&s["auth_seen"][other]) == 0
            && count(&s["auth_seen"]["none"]) == 0,
        format!(
            "client authentication at the token endpoint was {}, not all {used}",
            s["auth_seen"]
        ),
    )?;
    expect(
        refreshes * crate::support::WRITES_PER_REFRESH == report.version,
        format!(
            "the provider granted {refreshes} refreshes but the store is at v{}",
            report.version
        ),
    )?;
    expect(
        count(&s["userinfo_ok"]) == report.sends,
        format!(
            "the userinfo endpoint answered 200 {} times for {} sends",
            s["userinfo_ok"], report.sends
        ),
    )?;
    // Every send found its access token expired (the pause outlasts the TTL,
    // and expires_at is reckoned no earlier than the provider's exp), so each
    // strategy refreshed exactly once per send: on-auth-failure after the API
    // said 401, the others before the API ever saw the token.
    expect(
        report.sends == EXPIRIES && refreshes == report.sends,
        format!(
            "{refreshes} refreshes for {} sends across {EXPIRIES} expiries",
            report.sends
        ),
    )?;
    let expected_rejections = if c.strategy == "on-auth-failure" {
        report.sends
    } else {
        0
    };
    expect(
        rejected == expected_rejections,
        format!(
            "{}: the API rejected {rejected} expired tokens, expected {expected_rejections}",
            c.strategy
        ),
    )?;
    Ok(format!(
        "{:<16} {:<5}  {} sends, {refreshes} refreshes ({rejected} after a 401), store at v{}",
        c.strategy, c.auth, report.sends, report.version
    ))
}

/// A scenario thread's result; a panic in it counts as a failure.
fn joined<T>(r: std::thread::Result<Result<T, String>>) -> Result<T, String> {
    r.unwrap_or_else(|_| Err("a scenario thread panicked".to_owned()))
}

#[test]
fn rekey_against_oidc_provider() {
    let Some(node) = peers::node() else { return };

    let matrix: Vec<Client> = STRATEGIES
        .iter()
        .flat_map(|&strategy| {
            AUTH_METHODS
                .iter()
                .map(move |&auth| Client::new(&format!("rekey-{strategy}-{auth}"), auth, strategy))
        })
        .collect();
    let revoked = Client::new("rekey-revoked-grant", "basic", "on-auth-failure");
    let peer = Peer::start(&node, &matrix.iter().chain([&revoked]).collect::<Vec<_>>());

    let discovery = peer.get_json("/.well-known/openid-configuration");
    assert_eq!(discovery["issuer"], peer.issuer());
    assert_eq!(discovery["token_endpoint"], peer.url("/token"));
    assert_eq!(discovery["userinfo_endpoint"], peer.url("/me"));

    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("rekey.db");
    let started = Instant::now();
    let (reports, revoked_result) = std::thread::scope(|s| {
        let (peer, store, dir) = (&peer, store.as_path(), dir.path());
        let handles: Vec<_> = matrix
            .iter()
            .map(|c| s.spawn(move || refresh_scenario(peer, store, dir, c)))
            .collect();
        let negative = s.spawn(|| revoked_grant_scenario(peer, store, dir, &revoked));
        let reports: Vec<Result<Report, String>> =
            handles.into_iter().map(|h| joined(h.join())).collect();
        (reports, joined(negative.join()))
    });
    let elapsed = started.elapsed();

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let stats = peer.get_json("/_stats");
    let reports: Vec<Report> = reports
        .into_iter()
        .filter_map(|r| r.map_err(|e| failures.push(e)).ok())
        .collect();
    for report in &reports {
        match check_provider_saw(report, &stats) {
            Ok(line) => summary.push(line),
            Err(e) => failures.push(e),
        }
    }
    match revoked_result {
        Ok(()) => {
            let s = &stats["clients"][&revoked.id];
            if s["grant_errors"] != json!({"invalid_grant": 2}) || count(&s["grants_revoked"]) == 0
            {
                failures.push(format!(
                    "{}: expected the grant revoked and exactly 2 invalid_grant (the reuse, then rekey's refresh); the provider saw errors {} and {} revocations",
                    revoked.id, s["grant_errors"], s["grants_revoked"]
                ));
            }
            summary.push(format!(
                "{:<22}  revoked grant -> exit 3, keys untouched",
                revoked.id
            ));
        }
        Err(e) => failures.push(e),
    }
    let known: Vec<&str> = matrix
        .iter()
        .chain([&revoked])
        .map(|c| c.id.as_str())
        .collect();
    for id in stats["clients"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !known.contains(&id.as_str()) {
            failures.push(format!("the provider saw token endpoint traffic from {id}"));
        }
    }
    if count(&stats["server_errors"]) != 0 {
        failures.push(format!(
            "the provider had {} server errors",
            stats["server_errors"]
        ));
    }

    // The store ends with the newest refresh token: the provider still honours
    // it (a stale, rotated-out one would be invalid_grant).
    for report in &reports {
        match peer.refresh(&report.client, &report.refresh_token) {
            Ok((200, answer)) if str_field(&answer, "access_token").is_some() => {}
            Ok((status, answer)) => failures.push(format!(
                "{}: the stored refresh token was refused: {status} {}",
                report.client.id, answer["error"]
            )),
            Err(e) => failures.push(e),
        }
    }

    eprintln!("oidc-provider scenarios ({:.1} s):", elapsed.as_secs_f64());
    for line in &summary {
        eprintln!("  {line}");
    }
    let server_stderr = peer.stderr_text();
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}\nserver.mjs stderr:\n{server_stderr}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Several `rekey send` processes refreshing one credential at once: without
/// the cross-process lease they all spent the same refresh token, and
/// oidc-provider, taking the second use for a stolen token, revoked the grant
/// (every later send exited 3). With it, one refreshes and the others adopt.
#[test]
fn concurrent_processes_share_one_refresh() {
    let Some(node) = peers::node() else { return };
    let client = Client::new("rekey-concurrent", "basic", "every-request");
    let peer = Peer::start(&node, &[&client]);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("rekey.db");
    let login = format!("user-{}", client.id);
    enrol(&peer, &store, dir.path(), &client, &login).unwrap_or_else(|e| panic!("{e}"));

    // every-request: each process refreshes first, all at the same moment.
    let url = peer.url("/me");
    let codes: Vec<Option<i32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| rekey_cli(&store, &["send", &client.id, &url])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().and_then(|out| out.status.code()))
            .collect()
    });
    let stats = peer.get_json("/_stats");
    let errors = &stats["clients"][&client.id]["grant_errors"];
    assert!(
        codes.iter().all(|&c| c == Some(0)) && errors.as_object().is_some_and(|m| m.is_empty()),
        "concurrent sends exited {codes:?}; the token endpoint reported {errors}"
    );
}

/// How many expiries the client-credentials scenario lives through.
const CC_EXPIRIES: u64 = 3;
const EXIT_SETTINGS: i32 = 9;

/// A client_credentials-only registration for `client`.
fn m2m_registration(client: &Client) -> Value {
    let mut registration = client.registration();
    registration["grant_types"] = json!(["client_credentials"]);
    registration
}

/// The environment variable the CLI reads `client`'s secret from at each call.
fn secret_var(client: &Client) -> String {
    format!(
        "REKEY_OIDC_SECRET_{}",
        client.id.to_uppercase().replace('-', "_")
    )
}

/// `rekey credential add NAME --grant client-credentials`: no keys, the
/// secret read from `secret_var` (set to `secret` for this run), bound to the
/// peer's origin.
fn add_m2m(store: &Path, peer: &Peer, client: &Client, secret: &str) -> Result<Output, String> {
    let (token_url, var) = (peer.url("/token"), secret_var(client));
    let out = rekey_cli_env(
        store,
        &[
            "credential",
            "add",
            &client.id,
            "--grant",
            "client-credentials",
            "--token-url",
            &token_url,
            "--client-id",
            &client.id,
            "--client-secret-env",
            &var,
            "--client-auth",
            client.auth,
            "--strategy",
            client.strategy,
            "--expiry-margin",
            "1",
            "--api-origin",
            &peer.issuer(),
        ],
        &[(var.as_str(), secret)],
    );
    if !out.status.success() {
        return Err(format!(
            "{}: credential add --grant client-credentials exited {}: {}",
            client.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// `rekey send NAME <peer>/_api/whoami` with `client`'s secret in its variable.
fn send_whoami(store: &Path, peer: &Peer, client: &Client, secret: &str) -> Output {
    let var = secret_var(client);
    rekey_cli_env(
        store,
        &["send", &client.id, &peer.url("/_api/whoami")],
        &[(var.as_str(), secret)],
    )
}

/// What a client-credentials run leaves for the provider-side checks.
struct M2mReport {
    client: Client,
    sends: u64,
    /// Distinct access tokens the store held after the sends.
    tokens: usize,
}

/// One client-credentials credential across CC_EXPIRIES expiries: the first
/// send fetches a token (nothing is stored before it), each later one comes
/// after that token expired and renews it.
fn m2m_scenario(peer: &Peer, store: &Path, client: &Client) -> Result<M2mReport, String> {
    let name = &client.id;
    let mut outputs = vec![add_m2m(store, peer, client, &client.secret)?];
    if SqliteStore::open(store)
        .and_then(|s| s.load(name))
        .map_err(|e| format!("{name}: cannot load the credential: {e}"))?
        .keys
        .is_some()
    {
        return Err(format!("{name}: credential add stored keys"));
    }
    let mut secrets = vec![client.secret.clone()];
    let mut sends = 0;
    for round in 0..=CC_EXPIRIES {
        if round > 0 {
            std::thread::sleep(PAST_EXPIRY);
        }
        let out = send_whoami(store, peer, client, &client.secret);
        sends += 1;
        if !out.status.success() {
            return Err(format!(
                "{name}: rekey send (round {round}) exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let answer: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_default();
        if answer["client_id"].as_str() != Some(name.as_str()) {
            return Err(format!(
                "{name}: round {round}: the API did not answer for this client: {}",
                answer["client_id"]
            ));
        }
        outputs.push(out);
        let (keys, _) = stored(store, name)?;
        let keys = parse_keys(name, &keys)?;
        if str_field(&keys, "access_token").is_none() || keys.get("refresh_token").is_some() {
            return Err(format!(
                "{name}: round {round}: the stored token set is not one access token without a refresh token"
            ));
        }
        remember_tokens(&mut secrets, &keys);
    }
    // Checked at the end, against every token stored, including the ones
    // fetched by the very send whose output is checked.
    for out in &outputs {
        check_no_leak(name, out, &secrets)?;
    }
    let credential = SqliteStore::open(store)
        .and_then(|s| s.load(name))
        .map_err(|e| format!("{name}: cannot load the credential: {e}"))?;
    if credential.refresh_mark.is_some()
        || credential.needs_authorization.is_some()
        || credential.lease.is_some()
    {
        return Err(format!(
            "{name}: a client-credentials credential ended with a refresh mark, a dead grant or a lease"
        ));
    }
    Ok(M2mReport {
        client: client.clone(),
        sends,
        tokens: secrets.len() - 1,
    })
}

/// A wrong client secret: the token endpoint refuses the client, rekey says
/// the settings are wrong (exit 9), prints no secret, and stores no token:
/// only the component's memory of the refusal.
fn refused_m2m_scenario(peer: &Peer, store: &Path, client: &Client) -> Result<(), String> {
    let name = &client.id;
    let wrong = format!("{}-but-wrong", client.secret);
    let added = add_m2m(store, peer, client, &wrong)?;
    let out = send_whoami(store, peer, client, &wrong);
    let secrets = [client.secret.clone(), wrong];
    check_no_leak(name, &added, &secrets)?;
    check_no_leak(name, &out, &secrets)?;
    if out.status.code() != Some(EXIT_SETTINGS) {
        return Err(format!(
            "{name}: rekey send with a wrong client secret exited {}, not {EXIT_SETTINGS}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !out.stdout.is_empty() {
        return Err(format!("{name}: a failed send printed something on stdout"));
    }
    let c = SqliteStore::open(store)
        .and_then(|s| s.load(name))
        .map_err(|e| format!("{name}: cannot load the credential: {e}"))?;
    if c.needs_authorization.is_some() || c.refresh_mark.is_some() || c.lease.is_some() {
        return Err(format!(
            "{name}: the refused client left a dead grant, a refresh mark or a lease"
        ));
    }
    // No token: only the component's memory of the refusal (no secret in it).
    let kept = c.keys.as_ref().map(|k| k.expose().to_owned());
    let memory: Option<serde_json::Value> =
        kept.as_deref().and_then(|k| serde_json::from_str(k).ok());
    let only_refusal = memory
        .as_ref()
        .and_then(|m| m.as_object())
        .is_some_and(|m| {
            m.len() == 1
                && m.get("rekey_refused")
                    .is_some_and(|r| r["code"] == "invalid_client")
        });
    if !only_refusal
        || secrets
            .iter()
            .any(|s| kept.as_deref().unwrap_or("").contains(s.as_str()))
    {
        return Err(format!(
            "{name}: the refused client's keys are not just the refusal's memory"
        ));
    }
    Ok(())
}

/// The provider's view of one client-credentials run.
fn check_provider_saw_m2m(report: &M2mReport, stats: &Value) -> Result<String, String> {
    let c = &report.client;
    let name = &c.id;
    let s = &stats["clients"][name];
    let grants = count(&s["client_credentials"]);
    let (api_ok, api_rejected) = (count(&s["api_ok"]), count(&s["api_rejected"]));
    let expected_rejections = if c.strategy == "on-auth-failure" {
        CC_EXPIRIES
    } else {
        0
    };
    let checks = [
        (
            s["grant_errors"] == json!({}),
            format!("the token endpoint reported errors: {}", s["grant_errors"]),
        ),
        (
            grants == CC_EXPIRIES + 1 && report.sends == CC_EXPIRIES + 1,
            format!(
                "{grants} client_credentials grants for {} sends across {CC_EXPIRIES} expiries, not one per expiry plus the first",
                report.sends
            ),
        ),
        (
            report.tokens as u64 == grants,
            format!(
                "the store held {} distinct access tokens for {grants} grants",
                report.tokens
            ),
        ),
        (
            count(&s["refreshes"]) == 0 && count(&s["code_exchanges"]) == 0,
            format!(
                "{} refreshes and {} code exchanges for a client-credentials client",
                s["refreshes"], s["code_exchanges"]
            ),
        ),
        (
            count(&s["auth_seen"]["basic"]) == grants
                && count(&s["auth_seen"]["post"]) + count(&s["auth_seen"]["none"]) == 0,
            format!(
                "client authentication was {}, not all basic",
                s["auth_seen"]
            ),
        ),
        (
            api_ok == report.sends && api_rejected == expected_rejections,
            format!(
                "{}: the API answered 200 {api_ok} times and 401 {api_rejected} times for {} sends (expected {expected_rejections} 401s)",
                c.strategy, report.sends
            ),
        ),
    ];
    if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(format!("{name}: {why}"));
    }
    Ok(format!(
        "{:<16} {} sends, {grants} client_credentials grants ({api_rejected} after a 401), 0 refreshes",
        c.strategy, report.sends
    ))
}

/// Machine to machine against the real provider: client-credentials
/// credentials added through the CLI with no keys, one per strategy, call a
/// protected API across CC_EXPIRIES expiries, all at once; a wrong secret is
/// a settings failure that stores nothing.
#[test]
fn client_credentials_against_oidc_provider() {
    let Some(node) = peers::node() else { return };
    let matrix: Vec<Client> = STRATEGIES
        .iter()
        .map(|&strategy| Client::new(&format!("rekey-m2m-{strategy}"), "basic", strategy))
        .collect();
    let refused = Client::new("rekey-m2m-refused", "basic", "on-auth-failure");
    let peer = Peer::start_with(
        &node,
        matrix
            .iter()
            .chain([&refused])
            .map(m2m_registration)
            .collect(),
    );
    let discovery = peer.get_json("/.well-known/openid-configuration");
    let supported = discovery["grant_types_supported"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        supported.contains(&json!("client_credentials")),
        "the provider does not advertise client_credentials: {supported:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("rekey.db");
    let started = Instant::now();
    let (reports, refused_result) = std::thread::scope(|s| {
        let (peer, store) = (&peer, store.as_path());
        let handles: Vec<_> = matrix
            .iter()
            .map(|c| s.spawn(move || m2m_scenario(peer, store, c)))
            .collect();
        let negative = s.spawn(|| refused_m2m_scenario(peer, store, &refused));
        let reports: Vec<Result<M2mReport, String>> =
            handles.into_iter().map(|h| joined(h.join())).collect();
        (reports, joined(negative.join()))
    });
    let elapsed = started.elapsed();

    let stats = peer.get_json("/_stats");
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for report in reports {
        match report.and_then(|r| check_provider_saw_m2m(&r, &stats)) {
            Ok(line) => summary.push(line),
            Err(e) => failures.push(e),
        }
    }
    match refused_result {
        Ok(()) => {
            let s = &stats["clients"][&refused.id];
            if s["grant_errors"] != json!({"invalid_client": 1})
                || count(&s["client_credentials"]) != 0
                || count(&s["api_ok"]) + count(&s["api_rejected"]) != 0
            {
                failures.push(format!(
                    "{}: expected exactly one invalid_client and no token; the provider saw errors {}, {} grants, API {}/{}",
                    refused.id, s["grant_errors"], s["client_credentials"], s["api_ok"], s["api_rejected"]
                ));
            }
            summary.push(format!(
                "{:<16} wrong secret -> exit 9, no token stored",
                refused.id
            ));
        }
        Err(e) => failures.push(e),
    }
    let known: Vec<&str> = matrix
        .iter()
        .chain([&refused])
        .map(|c| c.id.as_str())
        .collect();
    if let Some(clients) = stats["clients"].as_object() {
        for id in clients.keys().filter(|id| !known.contains(&id.as_str())) {
            failures.push(format!("the provider saw traffic from {id}"));
        }
    }
    for counter in ["server_errors", "api_rejected_unknown"] {
        if count(&stats[counter]) != 0 {
            failures.push(format!("the provider counted {} {counter}", stats[counter]));
        }
    }

    eprintln!(
        "oidc-provider client-credentials scenarios ({:.1} s):",
        elapsed.as_secs_f64()
    );
    for line in &summary {
        eprintln!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}\nserver.mjs stderr:\n{}",
        failures.len(),
        failures.join("\n  "),
        peer.stderr_text()
    );
}

/// How many expiries the private_key_jwt scenario lives through.
const PKJWT_EXPIRIES: u64 = 2;

/// private_key_jwt against the real provider: client-credentials clients
/// registered with only the public JWK of an ES256 key made for this test
/// (no client secret at all), added through the CLI with the private key's
/// file; one signs its assertions for the token endpoint URL (the default
/// `aud`), one for the issuer (`--assertion-audience`). oidc-provider checks
/// each assertion itself (signature, `iss` = `sub` = client id, `aud`,
/// `exp`, and refuses a `jti` it has seen). Across PKJWT_EXPIRIES expiries:
/// one token per expiry plus the first, every one authenticated by
/// private_key_jwt, no error, and the key never in rekey's output.
#[test]
fn private_key_jwt_against_oidc_provider() {
    use crate::signed_assertions::TestKey;
    let Some(node) = peers::node() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let key = TestKey::new(dir.path(), "client.pem", rekey::SigningAlgorithm::Es256);
    let clients = ["rekey-pkjwt-token-url", "rekey-pkjwt-issuer"];
    let peer = Peer::start_with(
        &node,
        clients
            .iter()
            .map(|id| {
                json!({
                    "client_id": id,
                    "token_endpoint_auth_method": "private_key_jwt",
                    "grant_types": ["client_credentials"],
                    "jwks": {"keys": [key.ec_jwk("rekey-test-key")]},
                })
            })
            .collect(),
    );
    let store = dir.path().join("rekey.db");
    let (token_url, issuer) = (peer.url("/token"), peer.issuer());
    let key_file = key.path.to_str().unwrap();
    for id in clients {
        let mut args = vec![
            "credential",
            "add",
            id,
            "--grant",
            "client-credentials",
            "--client-auth",
            "private-key-jwt",
            "--signing-key-file",
            key_file,
            "--signing-key-id",
            "rekey-test-key",
            "--token-url",
            &token_url,
            "--client-id",
            id,
            "--api-origin",
            &issuer,
        ];
        if id.ends_with("issuer") {
            args.extend(["--assertion-audience", &issuer]);
        }
        let out = rekey_cli(&store, &args);
        assert!(out.status.success(), "{id}: {}", all_output(&out));
        key.assert_not_in(&all_output(&out), "credential add");
    }
    for round in 0..=PKJWT_EXPIRIES {
        if round > 0 {
            std::thread::sleep(PAST_EXPIRY);
        }
        for id in clients {
            let out = rekey_cli(&store, &["-v", "send", id, &peer.url("/_api/whoami")]);
            let text = all_output(&out);
            assert!(
                out.status.success(),
                "{id}: round {round}: {text}\nserver.mjs stderr:\n{}",
                peer.stderr_text()
            );
            key.assert_not_in(&text, "rekey send");
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(answer["client_id"], id, "round {round}");
            let (keys, _) = stored(&store, id).unwrap();
            assert!(
                parse_keys(id, &keys)
                    .unwrap()
                    .get("refresh_token")
                    .is_none()
            );
        }
    }
    let stats = peer.get_json("/_stats");
    for id in clients {
        let s = &stats["clients"][id];
        let grants = PKJWT_EXPIRIES + 1;
        assert_eq!(s["grant_errors"], json!({}), "{id}: {s}");
        assert_eq!(count(&s["client_credentials"]), grants, "{id}: {s}");
        assert_eq!(
            s["auth_seen"],
            json!({"basic": 0, "post": 0, "private_key_jwt": grants, "none": 0}),
            "{id}"
        );
        assert_eq!(
            (count(&s["api_ok"]), count(&s["api_rejected"])),
            (grants, PKJWT_EXPIRIES),
            "{id}: one 401 per expiry (on-auth-failure), then 200"
        );
    }
    assert_eq!(count(&stats["server_errors"]), 0);
    eprintln!(
        "oidc-provider private_key_jwt: {} clients x {} tokens, aud = token URL and issuer, 0 errors",
        clients.len(),
        PKJWT_EXPIRIES + 1
    );
}

/// How many access-token expiries the jwt-bearer scenario lives through.
const JB_EXPIRIES: u64 = 2;
/// RFC 7523 §2.1's grant type, which server.mjs adds to oidc-provider.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// One jwt-bearer credential in the scenario and what the provider should see.
struct JwtBearerCase {
    id: &'static str,
    subject: &'static str,
    /// The private key rekey signs with (`--signing-key-file`).
    key: crate::signed_assertions::TestKey,
    /// The public key registered for the client (its `jwks`).
    registered_jwk: Value,
    /// Extra `credential add` options.
    options: Vec<String>,
    /// `none` (just the client id at /token) or `private_key_jwt`.
    auth: &'static str,
    /// The `aud` its assertions name: `token_endpoint` (the default) or `issuer`.
    aud: &'static str,
    /// 401s the API gives before each renewal (on-auth-failure), or none
    /// (before-expiry renews first).
    rejections: u64,
}

/// The public JWK of `key`'s private key, with a key id, for a `jwks`.
fn public_jwk(key: &crate::signed_assertions::TestKey, alg: rekey::SigningAlgorithm) -> Value {
    let loaded = rekey::SigningKeySource::File(key.path.clone())
        .load(Some(alg))
        .expect("the test key loads");
    let mut jwk = loaded.public_jwk();
    let name = match alg {
        rekey::SigningAlgorithm::Es256 => "ES256",
        rekey::SigningAlgorithm::Rs256 => "RS256",
    };
    jwk.insert("alg".into(), name.into());
    jwk.insert("use".into(), "sig".into());
    jwk.insert(
        "kid".into(),
        format!("rekey-{}", name.to_lowercase()).into(),
    );
    Value::Object(jwk)
}

impl JwtBearerCase {
    fn registration(&self) -> Value {
        json!({
            "client_id": self.id,
            "token_endpoint_auth_method": self.auth,
            "grant_types": [JWT_BEARER_GRANT],
            "jwks": {"keys": [self.registered_jwk]},
        })
    }

    /// `rekey credential add ID --grant jwt-bearer ...` (no client secret).
    fn add(&self, peer: &Peer, store: &Path) -> Output {
        let (token_url, issuer) = (peer.url("/token"), peer.issuer());
        let mut args = vec![
            "credential",
            "add",
            self.id,
            "--grant",
            "jwt-bearer",
            "--assertion-subject",
            self.subject,
            "--signing-key-file",
            self.key.path.to_str().unwrap(),
            "--token-url",
            &token_url,
            "--client-id",
            self.id,
            "--api-origin",
            &issuer,
        ];
        args.extend(self.options.iter().map(String::as_str));
        rekey_cli(store, &args)
    }

    /// The stored credential holds no token yet, or one access token and
    /// never a refresh token; no refresh mark, dead grant or lease.
    fn check_stored(&self, store: &Path, round: u64) -> Result<Option<String>, String> {
        let id = self.id;
        let c = SqliteStore::open(store)
            .and_then(|s| s.load(id))
            .map_err(|e| format!("{id}: cannot load the credential: {e}"))?;
        if c.refresh_mark.is_some() || c.needs_authorization.is_some() || c.lease.is_some() {
            return Err(format!(
                "{id}: round {round}: a refresh mark, a dead grant or a lease was left"
            ));
        }
        let Some(keys) = c.keys.as_ref() else {
            return Ok(None);
        };
        let keys = parse_keys(id, keys.expose())?;
        if keys.get("refresh_token").is_some() {
            return Err(format!("{id}: round {round}: a refresh token was stored"));
        }
        Ok(str_field(&keys, "access_token").map(str::to_owned))
    }
}

/// The JWT bearer grant (RFC 7523 §2.1) against the real provider, which
/// server.mjs extends with it: clients registered with only a public JWK
/// (no secret) and added through the CLI with `--grant jwt-bearer
/// --assertion-subject ... --signing-key-file ...`; ES256 with the token
/// URL as `aud` (the default, client authentication `none`), RS256 with
/// the issuer as `aud` (renewing before expiry), and ES256 whose client
/// also authenticates with private_key_jwt. Across JB_EXPIRIES expiries
/// every `rekey send .../_api/whoami` is answered 200 for the configured
/// subject, the provider grants one token per expiry plus the first
/// (verifying each assertion itself: signature with the registered key,
/// `iss`, `sub`, `aud`, `exp`, `iat`, a fresh `jti`), and no refresh token
/// is ever stored. A credential signing with a key the provider does not
/// know is refused: exit 9, no token stored, the key never printed.
#[test]
fn jwt_bearer_against_oidc_provider() {
    use crate::signed_assertions::TestKey;
    use rekey::SigningAlgorithm::{Es256, Rs256};
    let Some(node) = peers::node() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let es = TestKey::new(dir.path(), "es256.pem", Es256);
    let rs = TestKey::new(dir.path(), "rs256.pem", Rs256);
    let es_pkjwt = TestKey::new(dir.path(), "es256-pkjwt.pem", Es256);
    let unknown = TestKey::new(dir.path(), "unknown.pem", Es256);
    let (es_jwk, rs_jwk, pkjwt_jwk) = (
        public_jwk(&es, Es256),
        public_jwk(&rs, Rs256),
        public_jwk(&es_pkjwt, Es256),
    );
    // The RS256 case's --assertion-audience is added once the issuer is known.
    let mut cases = [
        JwtBearerCase {
            id: "rekey-jb-es256",
            subject: "robot-es256@service.example",
            aud: "token_endpoint",
            key: es,
            registered_jwk: es_jwk.clone(),
            options: vec![],
            auth: "none",
            rejections: JB_EXPIRIES,
        },
        JwtBearerCase {
            id: "rekey-jb-rs256",
            subject: "robot-rs256@service.example",
            aud: "issuer",
            key: rs,
            registered_jwk: rs_jwk,
            options: vec![
                "--signing-alg".into(),
                "RS256".into(),
                "--signing-key-id".into(),
                "rekey-rs256".into(),
                "--strategy".into(),
                "before-expiry".into(),
                "--expiry-margin".into(),
                "1".into(),
            ],
            auth: "none",
            rejections: 0,
        },
        JwtBearerCase {
            id: "rekey-jb-pkjwt",
            subject: "robot-pkjwt@service.example",
            aud: "token_endpoint",
            key: es_pkjwt,
            registered_jwk: pkjwt_jwk,
            options: vec!["--client-auth".into(), "private-key-jwt".into()],
            auth: "private_key_jwt",
            rejections: JB_EXPIRIES,
        },
    ];
    // The provider knows the ES256 client's key; this credential signs with another.
    let refused = JwtBearerCase {
        id: "rekey-jb-unknown-key",
        subject: "robot-unknown@service.example",
        aud: "token_endpoint",
        key: unknown,
        registered_jwk: es_jwk,
        options: vec![],
        auth: "none",
        rejections: 0,
    };
    let peer = Peer::start_with(
        &node,
        cases
            .iter()
            .chain([&refused])
            .map(JwtBearerCase::registration)
            .collect(),
    );
    cases[1]
        .options
        .extend(["--assertion-audience".into(), peer.issuer()]);
    let discovery = peer.get_json("/.well-known/openid-configuration");
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.contains(&json!(JWT_BEARER_GRANT))),
        "the provider does not advertise the jwt-bearer grant: {}",
        discovery["grant_types_supported"]
    );

    let store = dir.path().join("rekey.db");
    let whoami = peer.url("/_api/whoami");
    for case in cases.iter().chain([&refused]) {
        let out = case.add(&peer, &store);
        let text = all_output(&out);
        assert!(out.status.success(), "{}: credential add: {text}", case.id);
        case.key.assert_not_in(&text, "credential add");
        assert_eq!(
            case.check_stored(&store, 0).unwrap(),
            None,
            "{}: credential add stored a token",
            case.id
        );
    }

    let mut tokens: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    let started = Instant::now();
    for round in 0..=JB_EXPIRIES {
        if round > 0 {
            std::thread::sleep(PAST_EXPIRY);
        }
        for (case, seen) in cases.iter().zip(&mut tokens) {
            let id = case.id;
            let out = rekey_cli(&store, &["send", id, &whoami]);
            let text = all_output(&out);
            assert!(
                out.status.success(),
                "{id}: round {round}: rekey send: {text}\nserver.mjs stderr:\n{}",
                peer.stderr_text()
            );
            case.key.assert_not_in(&text, "rekey send");
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(
                (answer["client_id"].as_str(), answer["sub"].as_str()),
                (Some(id), Some(case.subject)),
                "{id}: round {round}: the API answered {answer}"
            );
            let token = case.check_stored(&store, round).unwrap();
            let token = token.unwrap_or_else(|| panic!("{id}: round {round}: no token stored"));
            assert!(
                !text.contains(&token),
                "{id}: rekey printed the access token"
            );
            if seen.last() != Some(&token) {
                seen.push(token);
            }
        }
    }
    let elapsed = started.elapsed();

    // The unknown key: refused by the provider, a settings problem.
    let out = rekey_cli(&store, &["send", refused.id, &whoami]);
    let text = all_output(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_SETTINGS),
        "{}: a key the provider does not know: {text}",
        refused.id
    );
    assert!(out.stdout.is_empty(), "{}: printed {text}", refused.id);
    refused.key.assert_not_in(&text, "rekey send");
    let c = SqliteStore::open(&store).unwrap().load(refused.id).unwrap();
    assert!(
        c.refresh_mark.is_none() && c.needs_authorization.is_none() && c.lease.is_none(),
        "{}: a refresh mark, a dead grant or a lease was left",
        refused.id
    );
    // No token: at most the component's memory of the refusal.
    if let Some(keys) = c.keys.as_ref() {
        let kept = parse_keys(refused.id, keys.expose()).unwrap();
        assert!(
            kept.as_object().is_some_and(|m| m.len() == 1)
                && kept["rekey_refused"]["code"] == "invalid_grant",
            "{}: stored more than the refusal's memory: {:?}",
            refused.id,
            kept.as_object().map(|m| m.keys().collect::<Vec<_>>())
        );
    }

    let stats = peer.get_json("/_stats");
    let grants = JB_EXPIRIES + 1;
    let mut summary = Vec::new();
    for (case, seen) in cases.iter().zip(&tokens) {
        let (id, s) = (case.id, &stats["clients"][case.id]);
        assert_eq!(s["grant_errors"], json!({}), "{id}: {s}");
        assert_eq!(
            (count(&s["jwt_bearer"]), count(&s["jwt_bearer_refused"])),
            (grants, 0),
            "{id}: one jwt-bearer grant per expiry plus the first, none refused: {s}"
        );
        assert_eq!(
            seen.len() as u64,
            grants,
            "{id}: distinct access tokens stored"
        );
        assert_eq!(
            s["last_jwt_bearer_subject"], case.subject,
            "{id}: the subject the provider saw"
        );
        assert_eq!(
            (
                count(&s["client_credentials"]),
                count(&s["refreshes"]),
                count(&s["code_exchanges"])
            ),
            (0, 0, 0),
            "{id}: other grants: {s}"
        );
        let mut aud_seen = json!({"issuer": 0, "token_endpoint": 0});
        aud_seen[case.aud] = json!(grants);
        assert_eq!(s["jwt_bearer_aud"], aud_seen, "{id}: the assertions' aud");
        let method = case.auth;
        let mut auth_seen = json!({"basic": 0, "post": 0, "private_key_jwt": 0, "none": 0});
        auth_seen[method] = json!(grants);
        assert_eq!(s["auth_seen"], auth_seen, "{id}: client authentication");
        assert_eq!(
            (count(&s["api_ok"]), count(&s["api_rejected"])),
            (grants, case.rejections),
            "{id}: API answers (200, 401)"
        );
        summary.push(format!(
            "{id:<22} {grants} jwt_bearer grants, sub {}, aud {}, auth {method}, {} 401s",
            case.subject, case.aud, case.rejections
        ));
    }
    let s = &stats["clients"][refused.id];
    assert_eq!(
        (
            count(&s["jwt_bearer"]),
            count(&s["jwt_bearer_refused"]),
            &s["jwt_bearer_refused_reasons"],
            &s["grant_errors"],
            count(&s["api_ok"]) + count(&s["api_rejected"]),
        ),
        (
            0,
            1,
            &json!({"signature": 1}),
            &json!({"invalid_grant": 1}),
            0
        ),
        "{}: one assertion refused for its signature, no token, no API call: {s}",
        refused.id
    );
    let known: Vec<&str> = cases.iter().chain([&refused]).map(|c| c.id).collect();
    let strangers: Vec<&String> = stats["clients"]
        .as_object()
        .map(|m| m.keys().filter(|k| !known.contains(&k.as_str())).collect())
        .unwrap_or_default();
    assert!(strangers.is_empty(), "traffic from {strangers:?}");
    for counter in ["server_errors", "api_rejected_unknown"] {
        assert_eq!(count(&stats[counter]), 0, "{counter}");
    }
    eprintln!(
        "oidc-provider jwt-bearer ({:.1} s, {JB_EXPIRIES} expiries):",
        elapsed.as_secs_f64()
    );
    for line in &summary {
        eprintln!("  {line}");
    }
    eprintln!(
        "  {:<22} key unknown to the provider -> exit 9, invalid_grant (signature), no token",
        refused.id
    );
}
