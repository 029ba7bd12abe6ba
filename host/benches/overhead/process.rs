//! `rekey send` as a whole process against curl sending the same request:
//! the binary built with this bench (release), the CLI's SQLite store, its
//! compiled component cached, the same loopback API and token. Pairs in
//! alternating order; peak RSS of single runs under GNU time (a child of this
//! process would report this process's own peak: Linux carries it across
//! exec).

use crate::measure::{median_ms, rotation};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Pairs timed.
pub const PAIRS: usize = 30;
const RSS_RUNS: usize = 5;
const GNU_TIME: &str = "/usr/bin/time";

/// Median wall and median peak RSS of each side, or why it was not measured.
pub enum Process {
    Measured {
        /// `[rekey send, curl]`, milliseconds.
        wall_ms: [f64; 2],
        /// `[rekey send, curl]`, MiB; `None` without GNU time.
        rss_mib: Option<[f64; 2]>,
        curl: String,
    },
    Skipped(String),
}

/// What the processes need: where the API is and how rekey may reach it.
pub struct Target {
    pub base_url: String,
    pub api_url: String,
    pub token_url: String,
    pub client_id: String,
    /// A first token response; curl sends its access token.
    pub keys: serde_json::Value,
}

pub fn measure(t: &Target) -> Process {
    let Some(curl) = on_path("curl") else {
        return Process::Skipped("no curl on PATH (Debian: apt-get install curl)".into());
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let rekey = Path::new(env!("CARGO_BIN_EXE_rekey"));
    let store = dir.path().join("rekey.db");
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, t.keys.to_string()).expect("write keys");
    let cache = dir.path().join("cache");
    let command = |program: &Path| {
        let mut c = Command::new(program);
        c.env("XDG_CACHE_HOME", &cache).env("RUST_LOG", "off");
        c
    };
    let run = |cmd: &mut Command| -> Duration {
        let started = Instant::now();
        let out = cmd.output().expect("run");
        let took = started.elapsed();
        assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
        took
    };
    run(command(rekey)
        .arg("--store")
        .arg(&store)
        .args(["credential", "add", "bench", "--token-url", &t.token_url])
        .args(["--client-id", &t.client_id, "--api-origin", &t.base_url])
        .arg("--keys")
        .arg(&keys));
    let token = t.keys["access_token"].as_str().expect("access token");
    let sides: [Box<dyn Fn() -> Command>; 2] = [
        Box::new(|| {
            let mut c = command(rekey);
            c.arg("--store")
                .arg(&store)
                .args(["send", "bench", &t.api_url]);
            c
        }),
        Box::new(|| {
            let mut c = command(&curl);
            c.args(["-sS", "-f", "-o", "/dev/null", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(&t.api_url);
            c
        }),
    ];
    for side in &sides {
        for _ in 0..3 {
            run(&mut side()); // the component cache, the page cache
        }
    }
    let mut walls = [Vec::new(), Vec::new()];
    for round in 0..PAIRS {
        for s in rotation(2, round) {
            walls[s].push(run(&mut sides[s]()));
        }
    }
    let rss_mib = Path::new(GNU_TIME).exists().then(|| {
        [0, 1].map(|s| {
            let mut peaks: Vec<f64> = (0..RSS_RUNS).map(|_| peak_rss_mib(sides[s]())).collect();
            peaks.sort_by(f64::total_cmp);
            peaks[RSS_RUNS / 2]
        })
    });
    Process::Measured {
        wall_ms: [median_ms(&mut walls[0]), median_ms(&mut walls[1])],
        rss_mib,
        curl: version(&curl),
    }
}

/// Peak RSS of one run of `cmd` as GNU time reports it.
fn peak_rss_mib(cmd: Command) -> f64 {
    let mut timed = Command::new(GNU_TIME);
    timed
        .args(["-f", "rss_kib=%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let out = timed.output().expect("run under GNU time");
    assert!(out.status.success(), "{cmd:?} under time failed");
    let err = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = err
        .lines()
        .filter_map(|l| l.strip_prefix("rss_kib="))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .expect("GNU time's %M");
    kib / 1024.0
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn version(curl: &Path) -> String {
    Command::new(curl)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split(" (").next().unwrap_or(l).to_owned())
        })
        .unwrap_or_else(|| "curl".into())
}
