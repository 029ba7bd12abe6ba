#!/usr/bin/env bash
# The rekey wheel and sdist as a user gets them: built with the pins of
# requirements-build.txt in a throwaway venv, the wheel built again from the
# sdist alone, installed in a brand-new venv outside the checkout, and run
# against the testkit provider (smoke.py: the README's quick start, rotation,
# a typed error, the packaged component's hash). Needs:
#   REKEY_TESTKIT      path to the rekey-testkit binary
#   REKEY_WASM_SHA256  the SHA-256 of host/component/rekey_guest.wasm
# Everything goes to a temporary directory, removed at exit; the build must
# leave `git status --porcelain --ignored hosts/python` as it was.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")            # hosts/python
repo=$(cd "$project/../.." && pwd)

for var in REKEY_TESTKIT REKEY_WASM_SHA256; do
    if [ -z "${!var:-}" ]; then echo "package_test: $var is not set" >&2; exit 2; fi
done
[ -x "$REKEY_TESTKIT" ] || { echo "package_test: REKEY_TESTKIT=$REKEY_TESTKIT is not executable" >&2; exit 2; }
expected=$(echo "$REKEY_WASM_SHA256" | tr 'A-F' 'a-f')
committed=$(sha256sum "$repo/host/component/rekey_guest.wasm" | cut -d' ' -f1)
if [ "$committed" != "$expected" ]; then
    echo "package_test: host/component/rekey_guest.wasm has SHA-256 $committed, expected $expected" >&2
    exit 1
fi
python=${PYTHON:-python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/rekey-package-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip_quiet=(--quiet --disable-pip-version-check --no-input)

echo "== build venv (requirements-build.txt)"
"$python" -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install "${pip_quiet[@]}" -r "$project/requirements-build.txt"

echo "== sdist and wheel from the checkout"
status_before=$(git -C "$repo" status --porcelain --ignored -- hosts/python)
# Python would cache hatch_build.py's bytecode next to it: not in the checkout.
PYTHONDONTWRITEBYTECODE=1 "$work/build-venv/bin/python" -m build --no-isolation --sdist --wheel \
    --outdir "$work/dist" "$project" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
status_after=$(git -C "$repo" status --porcelain --ignored -- hosts/python)
if [ "$status_before" != "$status_after" ]; then
    echo "package_test: the build changed the checkout:" >&2
    diff <(echo "$status_before") <(echo "$status_after") >&2 || true
    exit 1
fi
sdist=("$work"/dist/rekey-*.tar.gz)
wheel=("$work"/dist/rekey-*-py3-none-any.whl)

echo "== wheel from the sdist alone"
mkdir "$work/unpacked"
tar -xzf "${sdist[0]}" -C "$work/unpacked"
"$work/build-venv/bin/python" -m build --no-isolation --wheel --outdir "$work/from-sdist" \
    "$work"/unpacked/rekey-* >"$work/build-sdist.log" 2>&1 || { cat "$work/build-sdist.log" >&2; exit 1; }
from_sdist=("$work"/from-sdist/rekey-*-py3-none-any.whl)
# Both wheels: the same files with the same bytes, the component among them.
"$work/build-venv/bin/python" - "${wheel[0]}" "${from_sdist[0]}" "$expected" <<'EOF'
import hashlib, sys, zipfile
def files(path):
    # RECORD's lines come in the order each build added the files: compared sorted.
    with zipfile.ZipFile(path) as z:
        return {n: sorted(z.read(n).splitlines()) if n.endswith(".dist-info/RECORD")
                else hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}
direct, rebuilt, expected = files(sys.argv[1]), files(sys.argv[2]), sys.argv[3]
assert direct == rebuilt, f"the wheels differ: {sorted(n for n in direct.keys() | rebuilt.keys() if direct.get(n) != rebuilt.get(n))}"
assert direct.get("rekey/_component/rekey_guest.wasm") == expected, "the wheel's component is not the committed one"
assert "rekey/py.typed" in direct, "no py.typed in the wheel"
EOF
echo "sdist $(stat -c %s "${sdist[0]}") bytes, wheel $(stat -c %s "${from_sdist[0]}") bytes (the same files built from either)"

echo "== a new venv with the wheel"
"$python" -m venv "$work/venv"
# The wheel asks for wasmtime~=50.0.1; requirements.txt pins the version CI uses.
PIP_CONSTRAINT="$project/requirements.txt" "$work/venv/bin/pip" install "${pip_quiet[@]}" "${from_sdist[0]}"

echo "== smoke.py against the testkit provider"
mkdir "$work/run"
# -I: neither the script's folder nor PYTHONPATH on sys.path; cwd a scratch folder.
(cd "$work/run" && env -u REKEY_WASM -u PYTHONPATH REKEY_README="$project/README.md" \
    "$work/venv/bin/python" -I "$here/smoke.py")
