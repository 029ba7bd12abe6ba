"""Opening a new SQLite store while another connection holds its write lock.

A new file's switch to WAL (``PRAGMA journal_mode=WAL``) reads the file and
then writes its header; SQLite calls no busy handler for that upgrade, so of
several processes creating one store at once one could fail at once with
"database is locked", whatever the busy timeout. The store retries the switch
itself until its busy timeout (the Rust host's f44833f).

Verdicts are success or failure, never a duration: the lock is released from a
timer thread, and a failure is only checked to come no sooner than the
timeout."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rekey
from rekey import Settings
from rekey.stores.sqlite import SqliteStore

SRC = Path(__file__).resolve().parents[1] / "src"
SETTINGS = Settings(token_url="https://login.example.com/token", client_id="app",
                    api_origins=["https://api.example.com"])


def new_file_locked(path: Path) -> sqlite3.Connection:
    """A new, empty store file and another connection holding its write lock
    (not yet WAL): what another process holds in the middle of its switch."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_new_store_opens_once_another_opener_releases_the_lock_of_its_switch_to_wal(tmp_path):
    path = tmp_path / "released.db"
    other = new_file_locked(path)
    release = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store = SqliteStore(path, busy_timeout=10.0)
    finally:
        release.cancel()
        release.join()
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
    try:
        store.put("c", SETTINGS)
        assert store.names() == ["c"]
        check = sqlite3.connect(path)
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        check.close()
    finally:
        store.close()


def test_a_new_store_whose_lock_is_held_past_the_busy_timeout_fails_not_before_it(tmp_path):
    path = tmp_path / "held.db"
    other = new_file_locked(path)
    busy = 0.3
    started = time.monotonic()
    try:
        with pytest.raises(rekey.StoreUnusable, match="database is locked"):
            SqliteStore(path, busy_timeout=busy).close()
        waited = time.monotonic() - started
    finally:
        other.execute("COMMIT")
        other.close()
    assert waited >= busy, f"failed after {waited:.3f} s, before the {busy} s timeout"


# Each child imports rekey, says READY, and on a line from stdin opens the
# store and creates its own credential: OK or FAILED <message>.
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import rekey
from rekey.stores.sqlite import SqliteStore
path, name = sys.argv[2:4]
settings = rekey.Settings(token_url="https://login.example.com/token", client_id="app",
                          api_origins=["https://api.example.com"])
print("READY", flush=True)
sys.stdin.readline()
try:
    store = SqliteStore(path)
    store.put(name, settings)
    store.close()
    print("OK", flush=True)
except rekey.StoreError as e:
    print(f"FAILED {e}", flush=True)
"""


def test_8_processes_creating_one_new_store_at_once_all_open_it(tmp_path):
    for round_ in range(5):
        path = tmp_path / f"fleet-{round_}.db"
        children = [subprocess.Popen([sys.executable, "-c", CHILD, str(SRC), str(path), f"c{i}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(8)]
        try:
            for c in children:
                assert c.stdout.readline().strip() == "READY"
            for c in children:  # all of them ready, then all at once
                c.stdin.write("go\n")
                c.stdin.flush()
            answers = [c.communicate(timeout=60)[0].strip() for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
        assert answers == ["OK"] * 8, f"round {round_}: {answers}"
        store = SqliteStore(path)
        try:
            assert sorted(store.names()) == [f"c{i}" for i in range(8)]
        finally:
            store.close()
