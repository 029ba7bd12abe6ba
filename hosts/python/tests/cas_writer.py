#!/usr/bin/env python3
"""One conditional write from a process of its own, for the store
conformance suite: ``cas_writer.py STORE NAME EXPECTED HOLDER`` opens the
store, prints READY, waits for a line on stdin, then writes a record whose
lease holder is HOLDER on version EXPECTED; prints ``won <version>``,
``conflict``, or ``error <message>``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import rekey  # noqa: E402
from rekey import CredentialRecord, Lease  # noqa: E402

url, name, expected, holder = sys.argv[1:5]
store = rekey.open_store(url)
print("READY", flush=True)
sys.stdin.readline()
try:
    version = store.write(name, int(expected), CredentialRecord('{"access_token":"a"}', Lease(holder, 1)))
    print(f"won {version}", flush=True)
except rekey.WriteConflict:
    print("conflict", flush=True)
except rekey.StoreError as e:
    print(f"error {e}", flush=True)
