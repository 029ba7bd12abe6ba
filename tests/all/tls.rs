//! HTTPS as `rekey send` sends it: the certificate is verified against the
//! platform's roots (loaded on the first handshake, not at start), which
//! `SSL_CERT_FILE` replaces, as for every program using the system's store.
//! The server is `openssl s_server` with a CA and certificate made here.

use crate::support::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `openssl s_server -www` on loopback, killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        all_output(&out)
    );
}

/// A CA named `name` (`name.pem`, `name.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=rekey test {name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// `server.pem`/`server.key` for 127.0.0.1, signed by the CA `ca`.
fn make_server_cert(dir: &Path) {
    make_cert(
        dir,
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
}

/// `NAME.pem`/`NAME.key` with the extensions `ext`, signed by the CA `ca`.
fn make_cert(dir: &Path, name: &str, ext: &str) {
    let (key, csr, pem, cnf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    std::fs::write(dir.join(&cnf), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &cnf,
        ],
    );
}

fn start_server(dir: &Path, extra: &[&str]) -> TlsServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let server = TlsServer { child, port };
    // Waits for the listener; the verdicts below never depend on timing.
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Credential `t` for `origin` in `dir/rekey.db`, holding an access token
/// only (these servers are APIs; nothing is refreshed): the store's path.
fn add_credential(dir: &Path, origin: &str, access_token: &str) -> std::path::PathBuf {
    let store = dir.join("rekey.db");
    let keys = dir.join("keys.json");
    let set = serde_json::json!({ "access_token": access_token, "token_type": "Bearer" });
    std::fs::write(&keys, set.to_string()).unwrap();
    let added = rekey_cli(
        &store,
        &[
            "credential",
            "add",
            "t",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--client-id",
            "x",
            "--api-origin",
            origin,
            "--keys",
            keys.to_str().unwrap(),
        ],
    );
    assert!(added.status.success(), "{}", all_output(&added));
    store
}

#[test]
fn https_is_verified_against_the_platform_roots() {
    if Command::new("openssl").arg("version").output().is_err() {
        return missing_peer("the openssl command line tool");
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_ca(dir.path(), "other");
    make_server_cert(dir.path());
    let server = start_server(dir.path(), &[]);
    let origin = format!("https://127.0.0.1:{}", server.port);

    let store = add_credential(dir.path(), &origin, "tls-test-token");
    let url = format!("{origin}/");
    let send_trusting = |ca: &str| {
        let ca = dir.path().join(ca);
        rekey_cli_env(
            &store,
            &["send", "t", &url],
            &[
                ("SSL_CERT_FILE", ca.to_str().unwrap()),
                ("SSL_CERT_DIR", "/nonexistent"),
            ],
        )
    };

    // Trusted through the CA that signed it: the page s_server serves.
    let ok = send_trusting("ca.pem");
    assert!(ok.status.success(), "{}", all_output(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("s_server"),
        "{}",
        all_output(&ok)
    );

    // Another CA: the handshake fails on the certificate, and says so.
    let refused = send_trusting("other.pem");
    assert!(!refused.status.success(), "{}", all_output(&refused));
    let said = all_output(&refused);
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains("tls-test-token"), "{said}");
}

/// Mutual TLS: a server that requires a client certificate gets the one
/// `--client-cert`/`--client-key` name (a file each; the key never on the
/// command line), and refuses the handshake without it.
#[test]
fn a_client_certificate_is_presented_when_configured() {
    if Command::new("openssl").arg("version").output().is_err() {
        return missing_peer("the openssl command line tool");
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_server_cert(dir.path());
    make_cert(dir.path(), "client", "extendedKeyUsage=clientAuth\n");
    // -Verify 1: a client certificate signed by ca.pem is required.
    let server = start_server(dir.path(), &["-Verify", "1", "-CAfile", "ca.pem"]);
    let origin = format!("https://127.0.0.1:{}", server.port);
    let store = add_credential(dir.path(), &origin, "mtls-test-token");
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let url = format!("{origin}/");
    let send = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["send", "t", &url]);
        rekey_cli_env(
            &store,
            &args,
            &[
                ("SSL_CERT_FILE", &path("ca.pem")),
                ("SSL_CERT_DIR", "/nonexistent"),
            ],
        )
    };

    let presented = send(&[
        "--client-cert",
        &path("client.pem"),
        "--client-key",
        &path("client.key"),
    ]);
    assert!(presented.status.success(), "{}", all_output(&presented));
    assert!(
        String::from_utf8_lossy(&presented.stdout).contains("s_server"),
        "{}",
        all_output(&presented)
    );

    let without = send(&[]);
    assert_eq!(
        without.status.code(),
        Some(6),
        "a transport failure: {}",
        all_output(&without)
    );

    // The key file given as the certificate (and the other way round): a
    // clear bad-input error that never prints the key.
    let swapped = send(&[
        "--client-cert",
        &path("client.key"),
        "--client-key",
        &path("client.pem"),
    ]);
    assert_eq!(swapped.status.code(), Some(2), "{}", all_output(&swapped));
    let key_text = std::fs::read_to_string(path("client.key")).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(
        !all_output(&swapped).contains(key_body),
        "{}",
        all_output(&swapped)
    );
    assert!(
        all_output(&without).contains("CertificateRequired"),
        "the server's alert is named: {}",
        all_output(&without)
    );
    assert!(!all_output(&without).contains("mtls-test-token"));
}

/// A CONNECT proxy on loopback that records each tunnel's request line and
/// every byte the client sent through it.
struct ConnectProxy {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<(Vec<String>, Vec<u8>)>>,
}

fn start_connect_proxy() -> ConnectProxy {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                record.lock().unwrap().0.push(first.trim().to_owned());
                let target = first.split_whitespace().nth(1).unwrap_or("").to_owned();
                let Ok(upstream) = TcpStream::connect(&target) else {
                    return;
                };
                let mut client = client;
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_write, mut up_read) = (upstream.try_clone().unwrap(), upstream);
                let mut down = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_read, &mut down);
                });
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    record.lock().unwrap().1.extend_from_slice(&buf[..n]);
                    if up_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    ConnectProxy { port, seen }
}

/// An explicit https proxy ($REKEY_HTTPS_PROXY) carries the request as a
/// CONNECT tunnel: it learns the host and port, never the token. The usual
/// HTTPS_PROXY is never read, and a malformed proxy URL is bad input that
/// does not repeat it.
#[test]
fn an_explicit_https_proxy_tunnels_and_never_sees_the_token() {
    if Command::new("openssl").arg("version").output().is_err() {
        return missing_peer("the openssl command line tool");
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_server_cert(dir.path());
    let server = start_server(dir.path(), &[]);
    let origin = format!("https://127.0.0.1:{}", server.port);
    let store = add_credential(dir.path(), &origin, "proxied-test-token");
    let proxy = start_connect_proxy();
    let ca = dir.path().join("ca.pem");
    let url = format!("{origin}/");
    let send = |env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.extend([
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ]);
        rekey_cli_env(&store, &["send", "t", &url], &env)
    };
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);

    let ignored = send(&[("HTTPS_PROXY", &proxy_url), ("https_proxy", &proxy_url)]);
    assert!(ignored.status.success(), "{}", all_output(&ignored));
    assert!(
        proxy.seen.lock().unwrap().0.is_empty(),
        "HTTPS_PROXY is never read"
    );

    let tunnelled = send(&[("REKEY_HTTPS_PROXY", &proxy_url)]);
    assert!(tunnelled.status.success(), "{}", all_output(&tunnelled));
    assert!(String::from_utf8_lossy(&tunnelled.stdout).contains("s_server"));
    let (lines, bytes) = proxy.seen.lock().unwrap().clone();
    assert_eq!(
        lines,
        [format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port)]
    );
    assert!(!bytes.is_empty(), "the request went through the tunnel");
    let token = b"proxied-test-token";
    assert!(
        !bytes.windows(token.len()).any(|w| w == token),
        "the proxy saw the token"
    );

    let bad = send(&[("REKEY_HTTPS_PROXY", "ftp://user:hunter2@proxy.example/x")]);
    assert_eq!(bad.status.code(), Some(2), "{}", all_output(&bad));
    assert!(
        !all_output(&bad).contains("hunter2"),
        "{}",
        all_output(&bad)
    );
}
