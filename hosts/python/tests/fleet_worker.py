#!/usr/bin/env python3
"""A Python fleet worker driven over stdin/stdout, for fleet tests in any
language (this host's tests/test_fleet.py, a mixed Rust/Node/Python fleet).

    fleet_worker.py STORE CREDENTIAL API_URL

STORE is a SQLite path (or ``sqlite:PATH``) or a ``postgres://`` URL; the
credential's row already exists with keys. Environment: ``REKEY_WASM`` (the
component; ``REKEY_WASM_SHA256`` checks it when set),
``REKEY_FLEET_TOKEN_URL``, ``REKEY_FLEET_CLIENT_ID``,
``REKEY_FLEET_CLIENT_SECRET`` (empty or unset: a public client),
``REKEY_FLEET_LEASE_TTL_MS`` (0 or unset: the default).

Prints ``READY`` once loaded. Then, per stdin line:
- ``CALL``: one GET API_URL through rekey; prints ``OK <status>`` or
  ``ERR <kind>``, kind being the WIT send-error case (``refresh-in-doubt``),
  or ``component`` for a trap.
- ``HOLD``: takes the credential's lease directly through the store (a
  conditional write on the version read: lease ``hold-<pid>`` until now +
  the lease TTL, no refresh mark), prints ``HELD`` and waits to be killed.
EOF on stdin: exit 0. Every line is flushed. Diagnostics go to stderr."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's rekey

import rekey  # noqa: E402
from rekey import CredentialRecord, Lease, Request, Settings  # noqa: E402

DEFAULT_LEASE_TTL_MS = 40_000


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def hold(store, credential: str, ttl_ms: int) -> None:
    """Takes the lease as a worker that then vanishes would leave it."""
    while True:
        stored = store.read(credential)
        lease = Lease(f"hold-{os.getpid()}", int(time.time() * 1000) + ttl_ms)
        try:
            store.write(credential, stored.version, CredentialRecord(stored.data.keys, lease, None, stored.data.dead_grant))
            return
        except rekey.WriteConflict:
            continue  # someone wrote meanwhile: take it on the new version


def main(argv: list[str]) -> int:
    faulthandler.enable()  # a crash prints every thread's stack to stderr
    if len(argv) != 3:
        print("usage: fleet_worker.py STORE CREDENTIAL API_URL", file=sys.stderr)
        return 2
    store_url, credential, api_url = argv
    env = os.environ
    ttl_ms = int(env.get("REKEY_FLEET_LEASE_TTL_MS") or 0)
    settings = Settings(
        token_url=env["REKEY_FLEET_TOKEN_URL"],
        client_id=env["REKEY_FLEET_CLIENT_ID"],
        client_secret=env.get("REKEY_FLEET_CLIENT_SECRET") or None,
        lease_ttl_ms=ttl_ms,
        api_origins=["{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(api_url))],
    )
    store = rekey.open_store(store_url)
    client = rekey.Rekey(env["REKEY_WASM"], expected_sha256=env.get("REKEY_WASM_SHA256") or None)
    say("READY")
    for line in sys.stdin:
        command = line.strip()
        if command == "CALL":
            try:
                say(f"OK {client.send(settings, Request.get(api_url), store=store, credential=credential).status}")
            except rekey.RekeyError as e:
                print(f"fleet_worker {os.getpid()}: {e}", file=sys.stderr)
                say(f"ERR {e.case or 'component'}")
        elif command == "HOLD":
            hold(store, credential, ttl_ms or DEFAULT_LEASE_TTL_MS)
            say("HELD")
            threading.Event().wait()  # until killed
        elif command:
            print(f"fleet_worker: unknown command {command!r}", file=sys.stderr)
            say("ERR unknown-command")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
