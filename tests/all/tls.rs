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
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
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
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn start_server(dir: &Path) -> TlsServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
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

#[test]
fn https_is_verified_against_the_platform_roots() {
    if Command::new("openssl").arg("version").output().is_err() {
        return missing_peer("the openssl command line tool");
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_ca(dir.path(), "other");
    make_server_cert(dir.path());
    let server = start_server(dir.path());
    let origin = format!("https://127.0.0.1:{}", server.port);

    let store = dir.path().join("rekey.db");
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"access_token":"tls-test-token","token_type":"Bearer"}"#,
    )
    .unwrap();
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
            &origin,
            "--keys",
            keys.to_str().unwrap(),
        ],
    );
    assert!(added.status.success(), "{}", all_output(&added));
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
