#!/usr/bin/env bash
# The crates part of the packages: `cargo package` of `rekey` and of the
# testkit its demo runs; the packaged `rekey` built in a brand-new cargo
# project outside the checkout (library only, default features off: no wasm
# target, the component is inside the crate) and run against the testkit
# provider (packages/rust/main.rs); `cargo install` of the CLI from the
# packaged crate, which then prints the component's SHA-256.
#
#   REKEY_TESTKIT=…/rekey-testkit REKEY_WASM_SHA256=<hex> packages/crates.sh
#
# Builds share the workspace's target directory (debug profile, the
# workspace's Cargo.lock), so only the two packaged crates compile anew.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REKEY_TESTKIT:?set REKEY_TESTKIT to the rekey-testkit binary}"
: "${REKEY_WASM_SHA256:?set REKEY_WASM_SHA256 to the SHA-256 of the component}"
root=$PWD
export CARGO_TARGET_DIR="$root/target"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --allow-dirty: a developer's uncommitted work is packaged as it stands (CI's clone is clean).
cargo package --quiet --allow-dirty --no-verify -p rekey-testkit -p rekey
for crate in rekey-testkit rekey; do
    tar -xzf "target/package/$crate-0.1.0.crate" -C "$scratch"
done
echo "   packaged: $(cd target/package && ls -l rekey-0.1.0.crate rekey-testkit-0.1.0.crate | awk '{printf "%s %s B; ", $9, $5}')"

# The README's Rust quick start is what the smoke program runs: each of its
# lines, in order, in packages/rust/main.rs (whitespace aside).
python3 - README.md packages/rust/main.rs <<'PY'
import sys
readme, program = (open(p).read() for p in sys.argv[1:])
block = readme.split("<!-- rust quick start:", 1)[1].split("```rust\n", 1)[1].split("```", 1)[0]
import re
squash = lambda text: re.sub(r"\s+", "", text)  # rustfmt may wrap a line: compare without whitespace
lines = [l for l in block.splitlines() if l.strip() and not l.startswith("use ")]
code, at = squash(program), 0
for line in lines:
    found = code.find(squash(line), at)
    if found < 0:
        sys.exit(f"crates.sh: the README's Rust quick start line is not in packages/rust/main.rs (in order): {line}")
    at = found + len(squash(line))
PY

# A new project that depends on the packaged crate as an application would.
app="$scratch/app"
mkdir -p "$app/src" "$scratch/data"
cat > "$app/Cargo.toml" <<TOML
[package]
name = "rekey-smoke"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
rekey = { path = "$scratch/rekey-0.1.0", default-features = false }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
serde_json = "1"

[workspace]
TOML
cp packages/rust/main.rs "$app/src/main.rs"
cp Cargo.lock "$app/Cargo.lock"  # the workspace's versions: its compiled dependencies are reused
forbidden=$(cd "$app" && cargo tree --quiet -e normal --prefix none | awk '{print $1}' \
    | grep -xE 'clap|tracing-subscriber|axum|tempfile|postgres|rekey-testkit' | sort -u || true)
if [ -n "$forbidden" ]; then
    echo "crates.sh: the library without default features pulls in: $forbidden" >&2
    exit 1
fi
(cd "$app" && cargo build --quiet)
status=0
printed=$(SMOKE_DIR="$scratch/data" "$CARGO_TARGET_DIR/debug/rekey-smoke" 2>&1) || status=$?
echo "$printed" | sed 's/^/   /'
[ "$status" -eq 0 ] || { echo "crates.sh: the smoke program exited $status" >&2; exit 1; }
out=$(echo "$printed" | tail -1)
case "$out" in
    "rust: statuses [200, 200, 200, 200], "*"reused 0, invalid_grant 0, no keys: not-authenticated, component $REKEY_WASM_SHA256") ;;
    *) echo "crates.sh: the packaged library's smoke run failed" >&2; exit 1 ;;
esac

# The CLI, installed from the packaged crate (its testkit dependency, not on
# crates.io, from the packaged testkit).
cargo install --quiet --debug --locked --root "$scratch/install" --path "$scratch/rekey-0.1.0" \
    --config "patch.crates-io.rekey-testkit.path='$scratch/rekey-testkit-0.1.0'"
installed=$("$scratch/install/bin/rekey" component --sha256)
echo "   cargo install: rekey component --sha256 = $installed"
[ "$installed" = "$REKEY_WASM_SHA256" ] || { echo "crates.sh: the installed CLI embeds another component" >&2; exit 1; }
echo "crates: packaged, built without the wasm target, run against the testkit, installed"
