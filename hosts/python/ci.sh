#!/usr/bin/env bash
# CI for the Python host: a fresh venv with the pinned requirements, then the
# scenarios against the testkit provider. Needs:
#   REKEY_WASM         path to the rekey component (rekey_guest.wasm)
#   REKEY_WASM_SHA256  its expected SHA-256 (the tests assert the package loads exactly it)
#   REKEY_TESTKIT      path to the rekey-testkit binary
# Works on a brand-new Debian machine with python3 (>= 3.11); installs
# python3-venv with apt-get if the venv module is missing. The authorisation
# scenarios also need Node.js (>= 20) with npm, for the oidc-provider peer;
# the PostgreSQL store and fleet tests need Debian's postgresql binaries
# (/usr/lib/postgresql/*/bin: the tests start a throwaway server on loopback).
# Without a peer those tests skip loudly, or fail under REKEY_REQUIRE_PEERS=1.
set -euo pipefail
cd "$(dirname "$0")"

for var in REKEY_WASM REKEY_WASM_SHA256 REKEY_TESTKIT; do
    if [ -z "${!var:-}" ]; then echo "ci.sh: $var is not set" >&2; exit 2; fi
done
[ -f "$REKEY_WASM" ] || { echo "ci.sh: REKEY_WASM=$REKEY_WASM is not a file" >&2; exit 2; }
[ -x "$REKEY_TESTKIT" ] || { echo "ci.sh: REKEY_TESTKIT=$REKEY_TESTKIT is not executable" >&2; exit 2; }
actual=$(sha256sum "$REKEY_WASM" | cut -d' ' -f1)
if [ "$actual" != "$(echo "$REKEY_WASM_SHA256" | tr 'A-F' 'a-f')" ]; then
    echo "ci.sh: $REKEY_WASM has SHA-256 $actual, expected $REKEY_WASM_SHA256" >&2
    exit 1
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "ci.sh: Python >= 3.11 required" >&2; exit 2; }
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "== installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

# The oidc-provider peer of the authorisation scenarios (tests/test_authorize.py
# runs tests/oidc/server.mjs under Node.js), installed as hosts/node/ci.sh does;
# without node they skip loudly (fail under REKEY_REQUIRE_PEERS=1).
if command -v npm >/dev/null && [ -f ../../tests/oidc/package-lock.json ] \
    && [ ! -d ../../tests/oidc/node_modules/oidc-provider ]; then
    echo "== oidc-provider peer (npm ci in tests/oidc)"
    (cd ../../tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== venv (.venv) with pinned requirements"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
.venv/bin/python -m pip --disable-pip-version-check freeze | grep -E '^(wasmtime|cryptography|psycopg|psycopg-binary|pytest|httpx|requests)=='

echo "== pytest"
status=0
.venv/bin/python -m pytest -v -p no:cacheprovider tests || status=$?
# pytest exits 5 when it collected no tests: that is a failure here.
if [ "$status" -eq 5 ]; then echo "ci.sh: pytest ran no tests" >&2; exit 1; fi
exit "$status"
