"""PostgreSQL through psycopg 3 (``pip install 'rekey[postgres]'``): table
``rekey_credentials``, schema version 3 in ``rekey_schema``, shared with the
Rust and Node hosts. The connection runs in autocommit mode: the
conditional write is one statement, committed (durable) when it returns;
creation and migration are one explicit transaction under
``pg_advisory_xact_lock(7301)``, so a fleet starting at once does not race.

Messages and ``repr`` never show the URL's password."""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any, Callable, Optional

from ..records import CredentialRecord, StoredRecord, StoreUnusable, UnknownCredential, WriteConflict, WriteFailed, WriteUnknown
from .base import OperatorFunctions, now
from .columns import MIGRATED_MARK_HOLDER, SCHEMA_VERSION, SELECT_RECORD, SET_RECORD, record_values, stored_record

try:
    import psycopg
except ImportError:  # the optional extra is not installed
    psycopg = None  # type: ignore[assignment]

ADVISORY_LOCK = 7301
CREATE = """
CREATE TABLE IF NOT EXISTS rekey_credentials (
    name            TEXT PRIMARY KEY,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   BIGINT,
    lease_holder    TEXT,
    lease_until_ms  BIGINT,
    mark_holder     TEXT,
    mark_at_ms      BIGINT
)
"""
#: A 0.2 store: the columns it may lack (the oldest lacked the dead-grant pair too).
ADD_COLUMNS = """
ALTER TABLE rekey_credentials
    ADD COLUMN IF NOT EXISTS dead_grant_code TEXT,
    ADD COLUMN IF NOT EXISTS dead_grant_at BIGINT,
    ADD COLUMN IF NOT EXISTS lease_holder TEXT,
    ADD COLUMN IF NOT EXISTS lease_until_ms BIGINT,
    ADD COLUMN IF NOT EXISTS mark_holder TEXT,
    ADD COLUMN IF NOT EXISTS mark_at_ms BIGINT
"""
UPDATE = f"UPDATE rekey_credentials SET {SET_RECORD.format(p='%s')} WHERE name = %s AND version = %s"
PUT_KEYS = f"UPDATE rekey_credentials SET {SET_RECORD.format(p='%s')} WHERE name = %s"


class PostgresStore(OperatorFunctions):
    """Credentials in the PostgreSQL database at ``url``
    (``postgres://user[:password]@host[:port]/db[?sslmode=verify-full&…]``).
    Threads share one connection, one statement at a time; it is made anew
    after it broke."""

    def __init__(self, url: str, *, connect_timeout: int = 10):
        if psycopg is None:
            raise StoreUnusable("PostgreSQL support needs psycopg: pip install 'rekey[postgres]'")
        self._url = url
        self._password = urllib.parse.urlsplit(url).password or ""
        #: Where, for messages: the URL without its password.
        self.shown = _without_password(url)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Optional[Any] = None
        with self._lock:
            self._run(StoreUnusable, "cannot set up the store", self._migrate, retry=True)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def read(self, name: str) -> StoredRecord:
        def select(conn):
            return conn.execute(f"{SELECT_RECORD} FROM rekey_credentials WHERE name = %s", (name,)).fetchone()

        with self._lock:
            row = self._run(StoreUnusable, "cannot read the store", select, retry=True)
        if row is None:
            raise UnknownCredential(name)
        return stored_record(name, row)

    def write(self, name: str, expected_version: int, data: CredentialRecord) -> int:
        values = (*record_values(data), now(), name, expected_version)

        def update(conn):
            if conn.execute(UPDATE, values).rowcount == 1:
                return "written"
            found = conn.execute("SELECT 1 FROM rekey_credentials WHERE name = %s", (name,)).fetchone()
            return "conflict" if found else "missing"

        with self._lock:
            outcome = self._run(WriteFailed, "store write failed", update, unknown_if_broken=True)
        if outcome == "conflict":
            raise WriteConflict(name)
        if outcome == "missing":
            raise WriteFailed(f"no credential named {name!r}")
        return expected_version + 1

    def _put(self, name: str, settings: Optional[str], keys: Optional[str], at: int) -> None:
        def put(conn):
            with conn.transaction():
                if settings is not None:
                    conn.execute(
                        "INSERT INTO rekey_credentials (name, settings, updated_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET settings = EXCLUDED.settings",
                        (name, settings, at),
                    )
                elif conn.execute("SELECT 1 FROM rekey_credentials WHERE name = %s", (name,)).fetchone() is None:
                    return False
                if keys is not None:
                    conn.execute(PUT_KEYS, (*record_values(CredentialRecord(keys)), at, name))
            return True

        with self._lock:
            if not self._run(WriteFailed, "store write failed", put, unknown_if_broken=True):
                raise UnknownCredential(name)

    def _names(self) -> list[str]:
        with self._lock:
            rows = self._run(StoreUnusable, "cannot read the store",
                             lambda c: c.execute("SELECT name FROM rekey_credentials").fetchall(), retry=True)
        return [r[0] for r in rows]

    def _info(self, name: str) -> tuple[str, int]:
        def select(conn):
            return conn.execute("SELECT settings, updated_at FROM rekey_credentials WHERE name = %s", (name,)).fetchone()

        with self._lock:
            row = self._run(StoreUnusable, "cannot read the store", select, retry=True)
        if row is None:
            raise UnknownCredential(name)
        return row[0], int(row[1])

    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout)
        return self._conn

    def _run(self, failure: type, what: str, op: Callable[[Any], Any], *, retry: bool = False,
             unknown_if_broken: bool = False):
        """Runs ``op`` on the connection (made if needed). ``retry``: once
        more on a fresh connection if this one broke (reads only). A write
        whose connection broke after it was sent is ``WriteUnknown``."""
        for attempt in (1, 2):
            try:
                conn = self._connection()
            except psycopg.Error as e:
                raise failure(f"{what}: cannot connect to {self.shown}: {self._scrub(e)}") from None
            try:
                return op(conn)
            except psycopg.Error as e:
                broke = conn.closed or conn.broken
                if broke:
                    self._conn = None
                if broke and retry and attempt == 1:
                    continue
                if broke and unknown_if_broken:
                    raise WriteUnknown(f"{what}: the connection to {self.shown} broke: {self._scrub(e)}") from None
                raise failure(f"{what}: {self._scrub(e)}") from None

    def _scrub(self, e: BaseException) -> str:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return text.replace(self._password, "***") if self._password else text

    def _migrate(self, conn) -> None:
        """Creates the tables, or brings a 0.2 store to schema 3, once."""
        try:
            with conn.transaction():
                found = conn.execute("SELECT max(version) FROM rekey_schema").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            found = None
        if found == SCHEMA_VERSION:
            return  # the common case takes no lock
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS rekey_schema (version INTEGER NOT NULL)")
            found = conn.execute("SELECT max(version) FROM rekey_schema").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise StoreUnusable(
                    f"the store {self.shown} has schema version {found}, newer than this rekey knows "
                    f"({SCHEMA_VERSION}): upgrade rekey"
                )
            if found == SCHEMA_VERSION:
                return
            old = conn.execute("SELECT to_regclass('rekey_credentials')").fetchone()[0] is not None
            conn.execute(CREATE)
            if old:
                conn.execute(ADD_COLUMNS)
                in_doubt = conn.execute(
                    "SELECT 1 FROM information_schema.columns "
                    "WHERE table_name = 'rekey_credentials' AND column_name = 'refresh_in_doubt' "
                    "AND table_schema = current_schema()"
                ).fetchone()
                if in_doubt:
                    # A 0.2 refresh in doubt stays in doubt.
                    conn.execute(
                        "UPDATE rekey_credentials SET mark_holder = %s, mark_at_ms = updated_at * 1000 "
                        "WHERE refresh_in_doubt",
                        (MIGRATED_MARK_HOLDER,),
                    )
                    conn.execute("ALTER TABLE rekey_credentials DROP COLUMN refresh_in_doubt")
            # A 0.2 lease is at most a TTL old: nothing is lost.
            conn.execute("DROP TABLE IF EXISTS rekey_leases")
            conn.execute("DELETE FROM rekey_schema")
            conn.execute("INSERT INTO rekey_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    def __repr__(self) -> str:
        return f"PostgresStore({self.shown!r})"


def _without_password(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "(a PostgreSQL URL, not shown)"
