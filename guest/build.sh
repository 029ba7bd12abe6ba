#!/usr/bin/env bash
# Builds the rekey component from guest/ and writes the committed copy every
# host embeds or loads: host/component/rekey_guest.wasm. Run it after any
# change under guest/ or wit/; `--check` builds afresh and fails when the
# committed bytes differ (CI runs it, as wasmtime checks its WASI adapter).
#
#   guest/build.sh            rebuild and write host/component/rekey_guest.wasm
#   guest/build.sh --check    rebuild and compare; writes nothing
#
# Steps: cargo builds the component (size profile, no WASI adapter), then
# binaryen's size optimiser (wasm-opt -Oz, pinned in guest/component) shrinks
# its core module: ~13% smaller, same imports and exports. The build is
# reproducible: another directory or target dir gives the same bytes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
committed="$root/host/component/rekey_guest.wasm"
raw="$root/target/rekey-guest/wasm32-wasip2/guest/rekey_guest.wasm"
fresh="$root/target/rekey-guest/rekey_guest.wasm"

mode="${1:-write}"
case "$mode" in write | --check) ;; *)
    echo "usage: guest/build.sh [--check]" >&2
    exit 2
    ;;
esac

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "guest/build.sh: the wasm32-wasip2 target is missing: run \`rustup target add wasm32-wasip2\`" >&2
    exit 1
fi
# The outer environment's flags and wrappers (coverage, clippy) are not the guest's.
(cd "$root" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
    -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
    cargo rustc --quiet --locked --package rekey-guest --lib --crate-type cdylib --profile guest \
    --target wasm32-wasip2 --target-dir "$root/target/rekey-guest" -- -C link-arg=--wasi-adapter=none)

tools="$root/guest/component"
# binaryen, exactly as locked (installed again whenever the lock changes).
stamp="$tools/node_modules/.rekey-installed-lock"
if ! cmp -s "$tools/package-lock.json" "$stamp" 2>/dev/null; then
    npm ci --prefix "$tools" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
    cp "$tools/package-lock.json" "$stamp"
fi
node "$tools/optimize.mjs" "$raw" "$fresh" >/dev/null

if [ "$mode" = --check ]; then
    if ! cmp -s "$fresh" "$committed"; then
        echo "guest/build.sh --check: host/component/rekey_guest.wasm is not the component guest/ builds" >&2
        echo "  committed: $(sha256sum <"$committed" | cut -d' ' -f1) ($(stat -c %s "$committed") bytes)" >&2
        echo "  built:     $(sha256sum <"$fresh" | cut -d' ' -f1) ($(stat -c %s "$fresh") bytes)" >&2
        echo "  run guest/build.sh and commit host/component/rekey_guest.wasm" >&2
        exit 1
    fi
    echo "guest/build.sh: the committed component is the one guest/ builds ($(stat -c %s "$committed") bytes)"
else
    mkdir -p "$(dirname "$committed")"
    cp "$fresh" "$committed"
    echo "guest/build.sh: wrote host/component/rekey_guest.wasm ($(stat -c %s "$committed") bytes, sha256 $(sha256sum <"$committed" | cut -d' ' -f1))"
fi
