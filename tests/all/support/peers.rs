//! The outside programs scenarios run as peers, all declared here: how each
//! is found, and what to install where it is missing (the list `.ci/run`
//! follows).
//!
//! | peer | used by | install (Debian) |
//! |---|---|---|
//! | [`node`]: Node.js ≥ 20, npm, and tests/oidc's packages (oidc-provider, pinned by its package-lock.json) | `oidc_provider` | `nodejs npm`; the npm packages install themselves, once (`npm ci`) |
//! | [`postgres`]: PostgreSQL's server binaries (`initdb`, `pg_ctl`) | `fleet` | `postgresql` |
//!
//! A missing peer is skipped loudly, or fails under `REKEY_REQUIRE_PEERS`
//! ([`missing_peer`]). A peer that is there but cannot be prepared (npm ci
//! failing) is a failure either way.

use super::missing_peer;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The oldest Node.js the oidc-provider scenarios support.
const NODE_MAJOR: u32 = 20;

/// The workspace's top directory (this test binary belongs to host/).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf()
}

/// Node.js, with tests/oidc's npm packages installed.
#[derive(Clone, Debug)]
pub struct Node {
    dir: PathBuf,
}

impl Node {
    /// `node SCRIPT`, run in tests/oidc.
    pub fn script(&self, script: &str) -> Command {
        let mut cmd = Command::new("node");
        cmd.arg(script).current_dir(&self.dir);
        cmd
    }
}

/// Why a peer cannot be used.
#[derive(Debug)]
enum Unavailable {
    /// Not installed: skip (or fail under `REKEY_REQUIRE_PEERS`).
    Missing(String),
    /// Installed but broken: fail.
    Broken(String),
}

/// Node.js ≥ 20 with tests/oidc's packages installed, or `None` (after
/// [`missing_peer`]). The first call runs `npm ci` in tests/oidc when its
/// node_modules is not what package-lock.json pins; later calls, in this
/// process or any other, find it done.
pub fn node() -> Option<Node> {
    static NODE: OnceLock<Result<Node, Unavailable>> = OnceLock::new();
    match NODE.get_or_init(find_node) {
        Ok(node) => Some(node.clone()),
        Err(Unavailable::Missing(what)) => {
            missing_peer(what);
            None
        }
        Err(Unavailable::Broken(why)) => panic!("{why}"),
    }
}

fn find_node() -> Result<Node, Unavailable> {
    let version = match Command::new("node").arg("--version").output() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Unavailable::Missing(format!(
                "node not found on PATH, so the oidc-provider scenarios did NOT run: \
                 install Node.js (>= {NODE_MAJOR}) and npm"
            )));
        }
        Err(e) => {
            return Err(Unavailable::Broken(format!(
                "cannot run node --version: {e}"
            )));
        }
        Ok(out) if !out.status.success() => {
            return Err(Unavailable::Broken("node --version failed".into()));
        }
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    };
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < NODE_MAJOR) {
        return Err(Unavailable::Missing(format!(
            "node {version} is older than {NODE_MAJOR}, so the oidc-provider scenarios did NOT run: \
             install Node.js (>= {NODE_MAJOR})"
        )));
    }
    let dir = workspace().join("tests").join("oidc");
    npm_ci_once(&dir)?;
    Ok(Node { dir })
}

/// `npm ci` in `dir` unless its node_modules already holds what
/// package-lock.json pins. Once per process (the caller's `OnceLock`) and
/// once across processes (cargo nextest runs each test in its own): npm ci
/// empties node_modules before it fills it, so two at once corrupt it. The
/// check is repeated under an exclusive lock on `dir/.npm-ci.lock`, and
/// "installed" is a marker written only after npm ci succeeded: a copy of
/// package-lock.json, so a changed lock file installs again.
fn npm_ci_once(dir: &Path) -> Result<(), Unavailable> {
    let broken = |what: &str, e: std::io::Error| Unavailable::Broken(format!("{what}: {e}"));
    let pinned = std::fs::read(dir.join("package-lock.json"))
        .map_err(|e| broken("read tests/oidc/package-lock.json", e))?;
    let marker = dir.join("node_modules").join(".rekey-npm-ci");
    let installed = || std::fs::read(&marker).is_ok_and(|m| m == pinned);
    if installed() {
        return Ok(());
    }

    let lock: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".npm-ci.lock"))
        .map_err(|e| broken("open tests/oidc/.npm-ci.lock", e))?;
    // Waits while another process installs; released when `lock` drops.
    lock.lock()
        .map_err(|e| broken("lock tests/oidc/.npm-ci.lock", e))?;
    if installed() {
        return Ok(());
    }

    eprintln!(
        "preparing the oidc-provider peer: npm ci in {}",
        dir.display()
    );
    let out = match Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
    {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Unavailable::Missing(
                "npm not found on PATH (node is there), so the oidc-provider scenarios did NOT run: \
                 install npm"
                    .into(),
            ));
        }
        Err(e) => return Err(broken("run npm ci in tests/oidc", e)),
        Ok(out) => out,
    };
    if !out.status.success() {
        return Err(Unavailable::Broken(format!(
            "npm ci in tests/oidc failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(&marker, &pinned).map_err(|e| broken("write the npm ci marker", e))?;
    drop(lock);
    Ok(())
}

/// The directory of PostgreSQL's server binaries, or `None` (after
/// [`missing_peer`]): the newest of Debian's /usr/lib/postgresql/*/bin, else
/// wherever `initdb` is on PATH.
pub fn postgres() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(find_postgres).clone();
    if bin.is_none() {
        missing_peer(
            "PostgreSQL (initdb) not found: install Debian's `postgresql` (as .ci/run does)",
        );
    }
    bin
}

fn find_postgres() -> Option<PathBuf> {
    // (Without /usr/lib/postgresql, PATH is still searched.)
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .or_else(|| which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.exists())
}
