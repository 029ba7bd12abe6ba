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
