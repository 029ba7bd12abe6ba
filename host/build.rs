//! Builds the guest component for wasm32-wasip2 with the `guest` profile, so
//! `cargo build`/`test`/`run` of the host need no manual step. The guest gets a
//! target dir of its own (as wasmtime's test-programs do) so this nested cargo
//! never waits on the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    // First, so that a missing target is the only thing cargo shows.
    require_target();
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace");
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    // A component built elsewhere (a reproducible build, a release pipeline)
    // instead of building the guest here.
    println!("cargo:rerun-if-env-changed=REKEY_PREBUILT_GUEST");
    if let Some(prebuilt) = std::env::var_os("REKEY_PREBUILT_GUEST") {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(&prebuilt).display()
        );
        let out = PathBuf::from(env("OUT_DIR")).join("rekey_guest.wasm");
        if let Err(e) = std::fs::copy(&prebuilt, &out) {
            fail(&format!("REKEY_PREBUILT_GUEST: {e}"));
        }
        return;
    }

    let cargo = env("CARGO");

    let target_dir = guest_target_dir(workspace);
    let status = Command::new(&cargo)
        .current_dir(workspace)
        .args([
            "rustc",
            "--quiet",
            "--package",
            "rekey-guest",
            "--lib",
            "--crate-type",
            "cdylib",
            "--profile",
            "guest",
        ])
        .args(["--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // The guest is no_std and needs no WASI adapter; the default one
        // would merge its own WASI version (0.2.x) over the 0.2.0 we import.
        .args(["--", "-C", "link-arg=--wasi-adapter=none"])
        // The outer build's flags and wrappers (clippy, coverage) are for the host.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("run cargo to build the guest");
    if !status.success() {
        fail("building the rekey guest component failed (see the errors above)");
    }
    let wasm = target_dir
        .join(TARGET)
        .join("guest")
        .join("rekey_guest.wasm");
    let out = PathBuf::from(env("OUT_DIR")).join("rekey_guest.wasm");
    std::fs::copy(&wasm, &out).expect("copy the guest component into OUT_DIR");
}

/// One line that says what to do, instead of a wall of linker errors.
fn require_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    let installed = sysroot
        .as_deref()
        .is_some_and(|root| root.join("lib/rustlib").join(TARGET).join("lib").is_dir());
    if !installed {
        fail("the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`");
    }
}

/// `<target dir>/rekey-guest`, shared by every host profile so the guest is
/// built once, not once per debug/release/bench.
fn guest_target_dir(workspace: &Path) -> PathBuf {
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    let target = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace.join("target"));
    target.join("rekey-guest")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} is not set")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
