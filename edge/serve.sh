#!/usr/bin/env bash
# Starts a runtime on rekey-proxy.wasm after checking the keys directory, the
# one thing the component cannot check: wasi:filesystem 0.2 has no file
# modes, so a file the proxy creates gets `0666 & ~umask` of the runtime's
# process, and the component can neither see nor set it.
#
#   edge/serve.sh KEYS_DIR RUNTIME [ARGS...]
#   edge/serve.sh /var/lib/rekey/keys wasmtime serve -S cli -S config \
#       --dir /var/lib/rekey/keys::/keys ... target/edge/rekey-proxy.wasm
#
# Refuses a KEYS_DIR that is not a directory owned by this user, or that is
# group- or world-writable (anyone who can write there can plant a record),
# and a record in it that others can read; then runs RUNTIME under umask 077,
# so every record and lock the proxy writes is 0600.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: edge/serve.sh KEYS_DIR RUNTIME [ARGS...]" >&2
    exit 2
fi
keys="$1"
shift
refuse() {
    echo "edge/serve.sh: $keys: $1" >&2
    exit 1
}
[ -d "$keys" ] && [ ! -L "$keys" ] || refuse "not a directory (symlinks are refused)"
[ "$(stat -c %u "$keys")" = "$(id -u)" ] || refuse "not owned by $(id -un)"
mode="$(stat -c %a "$keys")"
(( (8#$mode & 8#022) == 0 )) || refuse "mode $mode is group- or world-writable: chmod 700 it"
for f in "$keys"/*.json; do
    [ -f "$f" ] || continue
    fmode="$(stat -c %a "$f")"
    (( (8#$fmode & 8#077) == 0 )) || refuse "$(basename "$f") has mode $fmode: chmod 600 it"
done
umask 077
exec "$@"
