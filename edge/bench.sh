#!/usr/bin/env bash
# Builds the proxy and the passthrough, then prints bench.py's latency table
# (EDGE_README=1: also into edge/README.md).
set -euo pipefail
edge="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$edge")"
EDGE_BUILD_ONLY=1 "$edge/test.sh" >/dev/null
if [ -z "${REKEY_TESTKIT:-}" ]; then
    (cd "$root" && cargo build --quiet -p rekey-testkit)
    REKEY_TESTKIT="$root/target/debug/rekey-testkit"
fi
venv="$root/target/edge/venv"
WASMTIME="$("$venv/bin/python" -c 'import wasmtime_cli, pathlib; print(pathlib.Path(wasmtime_cli.__file__).parent / "wasmtime")')" \
    OUT="$root/target/edge" REKEY_TESTKIT="$REKEY_TESTKIT" "$venv/bin/python" "$edge/bench.py" \
    | tee "$root/target/edge/latency.md"
# EDGE_README=1: the README's latency table is this run's.
if [ -n "${EDGE_README:-}" ]; then
    "$venv/bin/python" "$edge/tests/readme.py" latency <"$root/target/edge/latency.md"
fi
