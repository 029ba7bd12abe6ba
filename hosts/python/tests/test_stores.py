"""The record-store conformance suite (docs/record-store.md), run against
every backend: memory, SQLite files, a real PostgreSQL server. Plus the
operator's functions, the settings column, and migration from 0.2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import rekey
from rekey import CredentialRecord, DeadGrant, Lease, RefreshMark, Settings
from rekey.stores.memory import CallbackRecord

HERE = Path(__file__).parent
SETTINGS = Settings(token_url="https://login.example.com/token", client_id="app", client_secret="s3cret-value",
                    api_origins=["https://api.example.com"], strategy=rekey.BeforeExpiry(90))
KEYS = '{"access_token":"at-1","refresh_token":"rt-1"}'
FULL = CredentialRecord('{"access_token":"at-2","refresh_token":"rt-2","n":[1,2]}', Lease("h-1", 2**62 + 5),
                        RefreshMark("h-1", 1_700_000_000_123), DeadGrant("invalid_grant", 1_700_000_000))


def created(make_store):
    store, url = make_store()
    store.put("c", SETTINGS, KEYS)
    return store, url


def test_missing_credential(make_store):
    store, _ = make_store()
    with pytest.raises(rekey.UnknownCredential):
        store.read("nobody")
    with pytest.raises(rekey.WriteFailed, match="no credential named"):
        store.write("nobody", 0, CredentialRecord(KEYS))
    with pytest.raises(rekey.UnknownCredential):
        store.put("nobody", keys=KEYS)  # keys alone create nothing: settings are needed
    assert store.names() == []


def test_conditional_write_and_conflict(make_store):
    store, _ = created(make_store)
    v = store.read("c").version
    assert store.write("c", v, FULL) == v + 1
    with pytest.raises(rekey.WriteConflict):
        store.write("c", v, CredentialRecord(KEYS))  # a stale version writes nothing
    with pytest.raises(rekey.WriteConflict):
        store.write("c", v + 2, CredentialRecord(KEYS))  # nor does a future one
    assert store.read("c") == rekey.StoredRecord(v + 1, FULL)


def test_version_grows_with_every_write(make_store):
    store, _ = created(make_store)
    start = store.read("c").version
    versions = [store.write("c", start + i, CredentialRecord(KEYS, Lease(f"h{i}", i))) for i in range(5)]
    assert versions == [start + 1, start + 2, start + 3, start + 4, start + 5]
    store.clear_refresh_mark("c")
    store.put("c", keys=KEYS)
    store.put("c", SETTINGS)  # settings alone leave the record (and its version) alone
    assert store.read("c").version == start + 7


@pytest.mark.parametrize("record", [
    FULL,
    CredentialRecord(),
    CredentialRecord(KEYS),
    CredentialRecord(None, Lease("only-lease", 7), None, None),
    CredentialRecord(KEYS, None, RefreshMark("only-mark", 0), None),
    CredentialRecord('{"access_token":"ünïcødé \\u2028"}', None, None, DeadGrant("x", 0)),
], ids=["all-set", "all-null", "keys-only", "lease-only", "mark-only", "dead-only"])
def test_every_field_round_trips(make_store, record):
    store, url = created(make_store)
    v = store.write("c", store.read("c").version, record)
    assert store.read("c") == rekey.StoredRecord(v, record)
    if url is not None:  # and a second connection reads the same
        again = rekey.open_store(url)
        assert again.read("c") == rekey.StoredRecord(v, record)
        again.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_write_is_seen_by_a_second_connection_once_it_returned(kind, tmp_path, request):
    url = str(tmp_path / "rekey.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    first, second = rekey.open_store(url), rekey.open_store(url)
    first.put("c", SETTINGS, KEYS)
    seen = second.read("c")
    v = first.write("c", seen.version, FULL)
    assert second.read("c") == rekey.StoredRecord(v, FULL)
    # ... and a second process
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import rekey; "
         "r = rekey.open_store(sys.argv[2]).read('c'); print(r.version, r.data.lease.holder)",
         str(HERE.parent / "src"), url], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(v), "h-1"]
    first.close()
    second.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_writers_in_several_processes_exactly_one_wins(kind, tmp_path, request):
    url = str(tmp_path / "rekey.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = rekey.open_store(url)
    store.put("c", SETTINGS, KEYS)
    expected = store.read("c").version
    for round_ in range(3):
        writers = [subprocess.Popen([sys.executable, str(HERE / "cas_writer.py"), url, "c", str(expected), f"w{i}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(6)]
        for w in writers:
            assert w.stdout.readline().strip() == "READY"
        for w in writers:  # all of them ready, then all at once
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [w.communicate(timeout=60)[0].strip() for w in writers]
        won = [i for i, r in enumerate(results) if r.startswith("won")]
        assert len(won) == 1 and results.count("conflict") == 5, results
        assert results[won[0]] == f"won {expected + 1}"
        now = store.read("c")
        assert (now.version, now.data.lease.holder) == (expected + 1, f"w{won[0]}")
        expected += 1
    store.close()


def test_operator_functions(make_store):
    store, url = created(make_store)
    column = json.loads(store._info("c")[0])
    # The Rust host's settings format, so its CLI can show and its workers use it.
    assert column["token_url"] == SETTINGS.token_url and column["client_id"] == "app"
    assert column["client_secret"] == {"literal": "s3cret-value"}
    assert (column["client_auth"], column["strategy"], column["expiry_margin_secs"]) == ("basic", "before-expiry", 90)
    assert (column["rejected_statuses"], column["api_origins"]) == ([401], ["https://api.example.com"])
    store.put("env", SETTINGS, KEYS, client_secret_env="CRM_SECRET")
    assert json.loads(store._info("env")[0])["client_secret"] == {"env": "CRM_SECRET"}

    v = store.write("c", store.read("c").version, FULL)
    shown = store.show("c")
    assert (shown.version, shown.has_keys, shown.lease, shown.refresh_mark, shown.dead_grant) == (
        v, True, FULL.lease, FULL.refresh_mark, FULL.dead_grant)
    assert "s3cret-value" not in repr(shown) and "at-2" not in repr(shown)
    store.forget_dead_grant("c")
    assert store.read("c").data == CredentialRecord(FULL.keys, FULL.lease, FULL.refresh_mark, None)
    store.clear_refresh_mark("c")
    assert store.read("c").data == CredentialRecord(FULL.keys)
    store.write("c", store.read("c").version, FULL)
    store.put("c", keys=KEYS)  # new keys start afresh
    assert store.read("c").data == CredentialRecord(KEYS)
    assert store.names() == ["c", "env"]
    for bad in ['{"access_token": "sekrit"', '["sekrit"]']:
        with pytest.raises(ValueError) as caught:
            store.put("c", keys=bad)
        assert "sekrit" not in str(caught.value)
    with pytest.raises(ValueError):
        store.put("../etc", SETTINGS)
    assert store.read("c").data == CredentialRecord(KEYS)  # bad input lost nothing


def test_callback_record_calls_back_inside_the_write():
    record = CallbackRecord()
    record.offer(KEYS)
    seen: list[str] = []
    v = record.read().version
    assert record.write(v, CredentialRecord(KEYS, Lease("h", 1)), seen.append) == v + 1
    assert seen == []  # the keys did not change: nothing to persist
    new = CredentialRecord('{"access_token":"new-access","refresh_token":"new-refresh"}')
    assert record.write(v + 1, new, seen.append) == v + 2 and seen == [new.keys_text()]

    def failing(keys: str) -> None:
        raise OSError(f"disk full writing {keys}")

    with pytest.raises(rekey.WriteFailed) as caught:
        record.write(v + 2, CredentialRecord('{"access_token":"third-access"}'), failing)
    assert "disk full" in str(caught.value) and "third-access" not in str(caught.value)
    assert record.read() == rekey.StoredRecord(v + 2, new)  # nothing changed
    record.offer(KEYS)  # an older set a caller still holds: ignored
    assert record.read().data == new
    record.offer('{"access_token":"fresh-authorisation"}')  # never seen: adopted
    assert record.read().data.keys_text() == '{"access_token":"fresh-authorisation"}'


def test_sqlite_migrates_a_0_2_store(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE credentials (name TEXT PRIMARY KEY NOT NULL, settings TEXT NOT NULL, keys TEXT,
                version INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL,
                refresh_in_doubt INTEGER NOT NULL DEFAULT 0, dead_grant_code TEXT, dead_grant_at INTEGER) STRICT;
            CREATE TABLE leases (name TEXT PRIMARY KEY NOT NULL, holder TEXT NOT NULL, expires_at_ms INTEGER NOT NULL) STRICT;
            INSERT INTO credentials VALUES ('doubt', '{}', '{"refresh_token":"r"}', 7, 1700000000, 1, NULL, NULL);
            INSERT INTO credentials VALUES ('dead', '{}', '{"refresh_token":"r"}', 3, 1700000001, 0, 'invalid_grant', 1700000001);
            INSERT INTO leases VALUES ('doubt', 'someone', 1);
        """)
    store = rekey.SqliteStore(path)
    doubt, dead = store.read("doubt"), store.read("dead")
    assert doubt == rekey.StoredRecord(7, CredentialRecord('{"refresh_token":"r"}', None, RefreshMark("migrated-0.2", 1_700_000_000_000)))
    assert dead == rekey.StoredRecord(3, CredentialRecord('{"refresh_token":"r"}', None, None, DeadGrant("invalid_grant", 1_700_000_001)))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert "refresh_in_doubt" not in {r[1] for r in db.execute("PRAGMA table_info(credentials)")}
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'leases'").fetchone()[0] == 0
        db.execute("PRAGMA user_version = 4")
    store.close()
    with pytest.raises(rekey.StoreUnusable, match="newer"):
        rekey.SqliteStore(path)


def test_postgres_migrates_a_0_2_store(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("""
            CREATE TABLE rekey_credentials (name TEXT PRIMARY KEY, settings TEXT NOT NULL, keys TEXT,
                version BIGINT NOT NULL DEFAULT 0, updated_at BIGINT NOT NULL,
                refresh_in_doubt BOOLEAN NOT NULL DEFAULT FALSE, dead_grant_code TEXT, dead_grant_at BIGINT)""")
        db.execute("CREATE TABLE rekey_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)")
        db.execute("""INSERT INTO rekey_credentials VALUES
            ('doubt', '{}', '{"refresh_token":"r"}', 7, 1700000000, TRUE, NULL, NULL),
            ('fine', '{}', '{"refresh_token":"r"}', 2, 1700000002, FALSE, NULL, NULL)""")
    # Several workers starting at once migrate once.
    stores = [rekey.PostgresStore(pg_url) for _ in range(3)]
    assert stores[1].read("doubt") == rekey.StoredRecord(
        7, CredentialRecord('{"refresh_token":"r"}', None, RefreshMark("migrated-0.2", 1_700_000_000_000)))
    assert stores[2].read("fine") == rekey.StoredRecord(2, CredentialRecord('{"refresh_token":"r"}'))
    with psycopg.connect(pg_url, autocommit=True) as db:
        assert db.execute("SELECT version FROM rekey_schema").fetchall() == [(3,)]
        assert db.execute("SELECT to_regclass('rekey_leases')").fetchone() == (None,)
        assert db.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'refresh_in_doubt'"
                          ).fetchone() == (0,)
        db.execute("UPDATE rekey_schema SET version = 4")
    for s in stores:
        s.close()
    with pytest.raises(rekey.StoreUnusable, match="newer"):
        rekey.PostgresStore(pg_url)


def test_postgres_messages_hide_the_password(pg_cluster):
    url = f"postgres://postgres:hunter2-secret@127.0.0.1:{pg_cluster.port}/no_such_database"
    with pytest.raises(rekey.StoreUnusable) as caught:
        rekey.PostgresStore(url)
    assert "hunter2-secret" not in str(caught.value) and "***" in str(caught.value)


def test_postgres_reconnects_after_the_server_ended_its_connection(pg_url):
    import psycopg

    store = rekey.PostgresStore(pg_url)
    store.put("c", SETTINGS, KEYS)
    v = store.read("c").version

    def kill_its_connection():
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert ended == 1

    kill_its_connection()
    assert store.read("c").version == v  # a read is retried once on a new connection
    kill_its_connection()
    # A write on a broken connection cannot know whether it landed: never a false conflict.
    with pytest.raises((rekey.WriteUnknown, rekey.WriteFailed)) as caught:
        store.write("c", v, FULL)
    assert not isinstance(caught.value, rekey.WriteConflict)
    now = store.read("c")  # the component reads back to find out; here: it did not land
    assert now.version == v
    assert store.write("c", v, FULL) == v + 1
    store.close()
