#!/usr/bin/env python3
"""One Python process of a fleet running keepalive on one shared credential,
as cron would start it on many machines at once (tests/test_keepalive.py).

    keepalive_worker.py STORE CREDENTIAL API_URL

STORE is a SQLite path or a ``postgres://`` URL; the credential's row already
exists with keys; API_URL's origin is the one the credential is bound to.
Environment as for ``fleet_worker.py``: ``REKEY_WASM`` (``REKEY_WASM_SHA256``
checks it when set), ``REKEY_FLEET_TOKEN_URL``, ``REKEY_FLEET_CLIENT_ID``,
``REKEY_FLEET_CLIENT_SECRET``, ``REKEY_FLEET_LEASE_TTL_MS`` (0 or unset: the
default).

Prints ``READY`` once loaded. Per stdin line ``KEEPALIVE <seconds>``: one
keepalive with that ``older_than``, answered ``OK <outcome>`` (refreshed,
fresh, nothing-to-keep) or ``ERR <kind>`` (the WIT send-error case, or
``component``). EOF on stdin: exit 0. Diagnostics go to stderr."""

from __future__ import annotations

import faulthandler
import os
import sys
import urllib.parse

from fleet_worker import say  # this checkout's rekey on sys.path, and the line protocol's output

import rekey  # noqa: E402
from rekey import Settings  # noqa: E402


def main(argv: list[str]) -> int:
    faulthandler.enable()
    if len(argv) != 3:
        print("usage: keepalive_worker.py STORE CREDENTIAL API_URL", file=sys.stderr)
        return 2
    store_url, credential, api_url = argv
    env = os.environ
    settings = Settings(
        token_url=env["REKEY_FLEET_TOKEN_URL"],
        client_id=env["REKEY_FLEET_CLIENT_ID"],
        client_secret=env.get("REKEY_FLEET_CLIENT_SECRET") or None,
        lease_ttl_ms=int(env.get("REKEY_FLEET_LEASE_TTL_MS") or 0),
        api_origins=["{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(api_url))],
    )
    store = rekey.open_store(store_url)
    client = rekey.Rekey(env["REKEY_WASM"], expected_sha256=env.get("REKEY_WASM_SHA256") or None)
    say("READY")
    for line in sys.stdin:
        command, _, seconds = line.strip().partition(" ")
        if command == "KEEPALIVE" and seconds.isdigit():
            try:
                outcome = client.keepalive(settings, store=store, credential=credential, older_than=int(seconds))
                say(f"OK {outcome.value}")
            except rekey.RekeyError as e:
                print(f"keepalive_worker {os.getpid()}: {e}", file=sys.stderr)
                say(f"ERR {getattr(e, 'case', None) or 'component'}")
        elif command:
            print(f"keepalive_worker: unknown command {line.strip()!r}", file=sys.stderr)
            say("ERR unknown-command")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
