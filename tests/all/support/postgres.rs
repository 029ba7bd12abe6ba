//! A throwaway PostgreSQL server on loopback, from the machine's own
//! binaries (found by `super::peers::postgres`).

use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    pub url: String,
    /// Where it listens, on 127.0.0.1; the same after a restart.
    pub port: u16,
    bin: PathBuf,
    data: tempfile::TempDir,
    as_postgres: bool,
}

/// Starts a server, or says loudly why not (and fails under `REKEY_REQUIRE_PEERS`).
pub fn start() -> Option<Postgres> {
    let bin = super::peers::postgres()?;
    // initdb refuses to run as root: use the package's `postgres` account.
    let as_postgres = running_as_root();
    let data = tempfile::Builder::new()
        .prefix("rekey-pg")
        .tempdir()
        .expect("temp dir");
    if as_postgres {
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(data.path()));
    }
    let port = free_port();
    let pg = Postgres {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        port,
        bin,
        data,
        as_postgres,
    };
    let dir = pg.data.path().display().to_string();
    run(&mut pg.cmd(
        "initdb",
        &["-D", &dir, "-A", "trust", "-U", "postgres", "--no-sync"],
    ));
    pg.start_again();
    Some(pg)
}

impl Postgres {
    /// Stops the server as an operator's restart would (`-m fast`: open
    /// connections are terminated), waiting until it is down.
    pub fn stop(&self) {
        let dir = self.data.path().display().to_string();
        run(&mut self.cmd("pg_ctl", &["-D", &dir, "-m", "fast", "-w", "stop"]));
    }

    /// Starts the (stopped) server again, same port and data; returns once
    /// it accepts connections.
    pub fn start_again(&self) {
        let dir = self.data.path().display().to_string();
        let options = format!("-p {} -k {dir} -c listen_addresses=127.0.0.1", self.port);
        let log = format!("{dir}/server.log");
        run(&mut self.cmd(
            "pg_ctl",
            &["-D", &dir, "-o", &options, "-l", &log, "-w", "start"],
        ));
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe).args(args);
            c
        } else {
            let mut c = Command::new(exe);
            c.args(args);
            c
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let dir = self.data.path().display().to_string();
        let _ = self
            .cmd("pg_ctl", &["-D", &dir, "-m", "immediate", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Stops the server as a crash would (`-m immediate`: every process
    /// quits at once, no shutdown checkpoint), waiting until it is down;
    /// [`Postgres::start_again`] then runs crash recovery.
    pub fn stop_immediately(&self) {
        let dir = self.data.path().display().to_string();
        run(&mut self.cmd("pg_ctl", &["-D", &dir, "-m", "immediate", "-w", "stop"]));
    }
}

/// A TLS server's certificates: a throwaway CA that signed the server's
/// (for `db.rekey.test` and 127.0.0.1), and another CA that signed nothing.
pub struct TlsFiles {
    /// The CA of the server's certificate (PEM), for `sslrootcert`.
    pub ca: PathBuf,
    /// A CA the server's certificate does not chain to (PEM).
    pub other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// The name in the server certificate of [`start_with_tls`] (with IP 127.0.0.1).
pub const TLS_HOST: &str = "db.rekey.test";

/// Starts a server as [`start`] does, then restarts it with `ssl = on` and a
/// certificate made by the `openssl` CLI (which Debian's PostgreSQL packages
/// depend on). Plain connections are still accepted.
pub fn start_with_tls() -> Option<(Postgres, TlsFiles)> {
    if !Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        super::missing_peer(
            "the openssl CLI is not installed: the PostgreSQL TLS scenarios did NOT run",
        );
        return None;
    }
    let pg = start()?;
    let dir = tempfile::Builder::new()
        .prefix("rekey-pg-tls")
        .tempdir()
        .expect("temp dir");
    let file = |name: &str| dir.path().join(name);
    let ca_config = "[req]\ndistinguished_name = dn\nx509_extensions = ca\nprompt = no\n\
                     [dn]\nCN = rekey test CA\n\
                     [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
                     subjectKeyIdentifier = hash\n";
    std::fs::write(file("ca.cnf"), ca_config).unwrap();
    std::fs::write(
        file("server.ext"),
        format!(
            "subjectAltName = DNS:{TLS_HOST},IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n"
        ),
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.current_dir(dir.path()).args(args);
        run(&mut c);
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (ca, name) in [
        ("ca", "/CN=rekey test CA"),
        ("other-ca", "/CN=rekey other CA"),
    ] {
        let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
        let rest = [
            "-keyout", &key, "-out", &pem, "-days", "2", "-config", "ca.cnf", "-subj", name,
        ];
        openssl(&[&["req", "-x509", "-new"][..], &ec, &rest].concat());
    }
    let subject = format!("/CN={TLS_HOST}");
    let rest = [
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject,
    ];
    openssl(&[&["req", "-new"][..], &ec, &rest].concat());
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ]);

    pg.stop();
    let data = pg.data.path();
    for name in ["server.crt", "server.key"] {
        std::fs::copy(file(name), data.join(name)).unwrap();
        std::fs::set_permissions(
            data.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        if pg.as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join(name)));
        }
    }
    // Read at start: the server's own defaults name these two files.
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
    pg.start_again();
    let files = TlsFiles {
        ca: file("ca.pem"),
        other_ca: file("other-ca.pem"),
        _dir: dir,
    };
    Some((pg, files))
}
