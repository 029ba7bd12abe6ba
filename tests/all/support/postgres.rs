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
