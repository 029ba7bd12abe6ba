"""One SQLite file (the standard library's ``sqlite3``): table ``credentials``,
schema version 3 in ``PRAGMA user_version``, shared with the Rust and Node
hosts. WAL, ``synchronous=FULL`` (a write that returned is on disk), a busy
timeout, every write in a ``BEGIN IMMEDIATE`` transaction.

The connection is opened with ``isolation_level=None``: the module then
starts no transaction of its own, and every transaction here is explicit."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Optional

from ..records import CredentialRecord, StoredRecord, StoreUnusable, UnknownCredential, WriteConflict, WriteFailed, WriteUnknown
from .base import OperatorFunctions, now
from .columns import MIGRATED_MARK_HOLDER, SCHEMA_VERSION, SELECT_RECORD, SET_RECORD, record_values, stored_record

CREATE = """
CREATE TABLE IF NOT EXISTS credentials (
    name            TEXT PRIMARY KEY NOT NULL,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   INTEGER,
    lease_holder    TEXT,
    lease_until_ms  INTEGER,
    mark_holder     TEXT,
    mark_at_ms      INTEGER
) STRICT
"""
#: Columns a 0.2 store may lack (the oldest lacked the dead-grant pair too).
ADDED = (
    ("dead_grant_code", "TEXT"), ("dead_grant_at", "INTEGER"), ("lease_holder", "TEXT"),
    ("lease_until_ms", "INTEGER"), ("mark_holder", "TEXT"), ("mark_at_ms", "INTEGER"),
)
UPDATE = f"UPDATE credentials SET {SET_RECORD.format(p='?')} WHERE name = ? AND version = ?"
#: An operator's new keys: the same write, whatever the version.
PUT_KEYS = f"UPDATE credentials SET {SET_RECORD.format(p='?')} WHERE name = ?"


class SqliteStore(OperatorFunctions):
    """Credentials in the SQLite file ``path`` (created 0600 when missing).
    Threads share one connection, one statement at a time; processes share
    the file."""

    def __init__(self, path: "str | os.PathLike", *, busy_timeout: float = 5.0):
        self.path = os.fspath(path)
        _create_private(self.path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            mode = _switch_to_wal(self._conn, busy_timeout)
            if mode.lower() != "wal":
                raise StoreUnusable(f"the store {self.path} cannot use WAL (journal mode {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreUnusable(f"the store {self.path} cannot be used: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def read(self, name: str) -> StoredRecord:
        with self._lock:
            try:
                row = self._conn.execute(f"{SELECT_RECORD} FROM credentials WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error as e:
                raise StoreUnusable(f"cannot read the store {self.path}: {e}") from None
        if row is None:
            raise UnknownCredential(name)
        return stored_record(name, row)

    def write(self, name: str, expected_version: int, data: CredentialRecord) -> int:
        values = (*record_values(data), now(), name, expected_version)
        with self._lock, self._immediate(WriteFailed) as conn:
            try:
                changed = conn.execute(UPDATE, values).rowcount
                exists = changed == 1 or conn.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone()
            except (sqlite3.Error, OverflowError) as e:
                raise WriteFailed(f"store write failed: {e}") from None
            if changed != 1:
                raise WriteConflict(name) if exists else WriteFailed(f"no credential named {name!r}")
        return expected_version + 1

    def _put(self, name: str, settings: Optional[str], keys: Optional[str], at: int) -> None:
        with self._lock, self._immediate(WriteFailed) as conn:
            try:
                if settings is not None:
                    conn.execute(
                        "INSERT INTO credentials (name, settings, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                        (name, settings, at),
                    )
                elif conn.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone() is None:
                    raise UnknownCredential(name)
                if keys is not None:
                    conn.execute(PUT_KEYS, (*record_values(CredentialRecord(keys)), at, name))
            except sqlite3.Error as e:
                raise WriteFailed(f"store write failed: {e}") from None

    def _names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM credentials")]

    def _info(self, name: str) -> tuple[str, int]:
        with self._lock:
            row = self._conn.execute("SELECT settings, updated_at FROM credentials WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownCredential(name)
        return row[0], int(row[1])

    @contextmanager
    def _immediate(self, failure):
        """A ``BEGIN IMMEDIATE`` transaction, committed if the block returns;
        a failed COMMIT is ``WriteUnknown`` (SQLite rolls back, but a host
        that cannot see why must not claim so)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise failure(f"store write failed: {e}") from None
        try:
            yield conn
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            raise WriteUnknown(f"store commit failed: {e}") from None

    def _migrate(self) -> None:
        """Creates the table, or brings a 0.2 store to schema 3, once."""
        if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the common case takes no write lock
        with self._immediate(StoreUnusable) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnusable(
                    f"the store {self.path} has schema version {version}, newer than this rekey knows "
                    f"({SCHEMA_VERSION}): upgrade rekey"
                )
            if version == SCHEMA_VERSION:
                return
            columns = {r[1] for r in conn.execute("PRAGMA table_info(credentials)")}
            if not columns:
                conn.execute(CREATE)
            else:  # a 0.2 store
                for column, declaration in ADDED:
                    if column not in columns:
                        conn.execute(f"ALTER TABLE credentials ADD COLUMN {column} {declaration}")
                if "refresh_in_doubt" in columns:
                    # A 0.2 refresh in doubt stays in doubt.
                    conn.execute(
                        "UPDATE credentials SET mark_holder = ?, mark_at_ms = updated_at * 1000 "
                        "WHERE refresh_in_doubt != 0",
                        (MIGRATED_MARK_HOLDER,),
                    )
                    conn.execute("ALTER TABLE credentials DROP COLUMN refresh_in_doubt")
            # A 0.2 lease is at most a TTL old: nothing is lost.
            conn.execute("DROP TABLE IF EXISTS leases")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """``PRAGMA journal_mode=WAL`` (the mode it answers), waiting up to
    ``busy_timeout`` seconds for another connection's lock as every other
    statement does.

    A new store (or one in rollback mode) is switched by a transaction that
    reads the file (a SHARED lock) and then writes its header (RESERVED, then
    EXCLUSIVE). SQLite calls no busy handler for that upgrade from a read, so
    of several processes opening a new store at once (a fleet's first start)
    the one that found another's lock got SQLITE_BUSY at once, "database is
    locked", whatever the busy timeout. Its statement ends and its SHARED lock
    goes, so the other switches; a retry then finds WAL set (no write, no
    upgrade). Retried with a short backoff (1 ms doubling to 50 ms, jittered
    by pid), the last try at the deadline. The other statements at open wait
    by themselves: ``synchronous`` and ``busy_timeout`` touch no file, the
    ``user_version`` read takes its lock through the busy handler, and the
    migration is ``BEGIN IMMEDIATE``."""
    deadline = time.monotonic() + max(0.0, busy_timeout)
    delay = 0.001
    # Processes started together should not retry in step.
    jitter = (os.getpid() % 997) / 1_000_000
    while True:
        try:
            return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            left = deadline - time.monotonic()
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) != sqlite3.SQLITE_BUSY or left <= 0:
                raise
            time.sleep(min(delay + jitter, left))
            delay = min(delay * 2, 0.05)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back


def _create_private(path: str) -> None:
    """A new store file is made 0600 (it holds tokens), never through a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreUnusable(f"the store {path} cannot be created: {e.strerror}") from None
    os.close(fd)

