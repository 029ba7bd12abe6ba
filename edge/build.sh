#!/usr/bin/env bash
# Builds target/edge/rekey-proxy.wasm: the adapter components (effects,
# front), the unchanged rekey component (the bytes the Rust host embeds, or
# $REKEY_WASM), composed with wac-graph by
# edge/compose. Also builds the benchmark's passthrough.wasm. Edge crates have
# their own workspace, lock file and target dir (target/edge-build).
set -euo pipefail
edge="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$edge")"
out="$root/target/edge"
export CARGO_TARGET_DIR="$root/target/edge-build"
mkdir -p "$out"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "edge/build.sh: the wasm32-wasip2 target is missing: run \`rustup target add wasm32-wasip2\`" >&2
    exit 1
fi

# The adapters: no_std, WASI 0.2.0 only, no WASI adapter (as the rekey guest).
for crate in effects front noconfig passthrough; do
    (cd "$edge" && cargo rustc --quiet --locked -p "rekey-edge-$crate" --lib --crate-type cdylib \
        --target wasm32-wasip2 --profile wasm -- -C link-arg=--wasi-adapter=none)
    cp "$CARGO_TARGET_DIR/wasm32-wasip2/wasm/rekey_edge_$crate.wasm" "$out/$crate.wasm"
done

# The rekey component, unchanged: $REKEY_WASM, or the committed bytes the
# Rust host embeds (host/component/rekey_guest.wasm, built by guest/build.sh).
cp "${REKEY_WASM:-$root/host/component/rekey_guest.wasm}" "$out/rekey.wasm"

(cd "$edge" && cargo build --quiet --locked -p rekey-edge-compose)
compose="$CARGO_TARGET_DIR/debug/rekey-edge-compose"
"$compose" proxy --effects "$out/effects.wasm" --rekey "$out/rekey.wasm" \
    --front "$out/front.wasm" --out "$out/rekey-proxy.wasm"
# The same, configured by the environment alone, for runtimes without wasi:config.
"$compose" proxy --effects "$out/effects.wasm" --rekey "$out/rekey.wasm" \
    --front "$out/front.wasm" --noconfig "$out/noconfig.wasm" --out "$out/rekey-proxy-env.wasm"

# The README's sizes table, from these very files (EDGE_README=1 writes it
# there; EDGE_SIZES_CHECK=1, set by test.sh, fails when it is not this build's).
{
    echo "| component | bytes |"
    echo "|---|---|"
    for row in "rekey (unchanged):rekey" "effects:effects" "front:front" \
        "**rekey-proxy.wasm** (composed; wasi:config):rekey-proxy" \
        "noconfig (an empty wasi:config/store):noconfig" \
        "**rekey-proxy-env.wasm** (composed with noconfig):rekey-proxy-env" \
        "passthrough (bench baseline):passthrough"; do
        echo "| ${row%:*} | $(stat -c %s "$out/${row##*:}.wasm") |"
    done
} >"$out/sizes.md"
if [ -n "${EDGE_README:-}" ]; then
    python3 "$edge/tests/readme.py" sizes <"$out/sizes.md"
elif [ -n "${EDGE_SIZES_CHECK:-}" ]; then
    python3 "$edge/tests/readme.py" sizes --check <"$out/sizes.md"
fi
