#!/usr/bin/env bash
# The three packages, each built from the one committed component
# (host/component/rekey_guest.wasm), installed in a brand-new folder with
# nothing from the checkout on its path, and run against the testkit
# provider (a refresh with rotation, a typed error):
#   crates  packages/crates.sh                  (cargo package; a new project; cargo install)
#   npm     hosts/node/package-test/run.sh      (npm pack; a new npm project; Node 22 and 24)
#   PyPI    hosts/python/package_test/run.sh    (sdist and wheel; a new venv)
# Each checks that the component it carries has the committed component's
# SHA-256 (and prints it through the package's own command), so the three
# carry the same bytes. Called by the README's test command after hosts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p rekey-testkit
export REKEY_TESTKIT="$PWD/target/debug/rekey-testkit"
REKEY_WASM_SHA256=$(sha256sum host/component/rekey_guest.wasm | cut -d' ' -f1)
export REKEY_WASM_SHA256

missing() {
    if [ -n "${REKEY_REQUIRE_PEERS:-}" ]; then
        echo "packages/test.sh: $1 is missing (REKEY_REQUIRE_PEERS is set, so this fails)" >&2
        exit 1
    fi
    echo "==================== SKIPPED: $1 is missing ====================" >&2
}

failed=0
echo "== crates"
packages/crates.sh || failed=1
if command -v npm >/dev/null; then
    echo "== npm"
    hosts/node/package-test/run.sh || failed=1
else
    missing "npm (the npm package)"
fi
if command -v python3 >/dev/null; then
    echo "== PyPI"
    hosts/python/package_test/run.sh || failed=1
else
    missing "Python 3 (the PyPI package)"
fi
if [ "$failed" -ne 0 ]; then
    echo "packages/test.sh: a package failed (see above)" >&2
    exit 1
fi
echo "packages: all three built, installed and run; component $REKEY_WASM_SHA256"
