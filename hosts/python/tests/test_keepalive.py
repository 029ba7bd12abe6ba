"""keepalive: exercising a refresh token that would die from disuse, through
the real component (its ``keepalive`` export), real HTTP on loopback and the
testkit provider (strict rotation: a reused refresh token revokes the
grant), on each store kind. Counts are the provider's own stats. The fleet
runs ``keepalive_worker.py`` processes at once, as cron would on many
machines, on one SQLite file and on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

import rekey
from conftest import delta
from rekey import KeepaliveOutcome
from test_fleet import HERE, Worker, workers  # noqa: F401 (workers: the fixture that kills them)

DAY = 24 * 3600
WEEK = datetime.timedelta(days=7)


def now() -> int:
    return int(time.time())


def dated(tokens: dict, **fields) -> dict:
    """A stored token set from a token response, as an app imports it, plus ``fields``."""
    return {**json.loads(rekey.keys_from_token_response(tokens)), **fields}


def keys_of(store, name: str) -> dict:
    return json.loads(store.read(name).data.keys_text())


def test_a_set_obtained_long_ago_is_refreshed_then_fresh(client, provider, make_store):
    """(1) one token request, no API request, the rotated refresh token
    stored and live; (2) right after, an hour's window: fresh, nothing sent."""
    store, _ = make_store()
    first = provider.authorize()
    store.put("crm", provider.settings(), dated(first, rekey_refreshed_at=now() - 30 * DAY))

    before = provider.stats()
    outcome = client.keepalive(provider.settings(), store=store, credential="crm", older_than=WEEK)
    assert outcome is KeepaliveOutcome.REFRESHED
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["refreshes_granted"], d["api_calls"]) == (1, 1, 0)
    assert (d["reused_refresh_tokens"], d["invalid_grant"]) == (0, 0)
    keys = keys_of(store, "crm")
    assert keys["refresh_token"] != first["refresh_token"], "the provider rotated it"
    assert provider.refresh_token_live(keys["refresh_token"]), "the stored refresh token is the provider's live one"
    assert not provider.refresh_token_live(first["refresh_token"]), "the old one is spent"
    assert abs(keys["rekey_refreshed_at"] - now()) <= 5, "stamped now"
    record = store.read("crm")
    assert (record.data.lease, record.data.refresh_mark, record.data.dead_grant) == (None, None, None)

    before, version = provider.stats(), record.version
    assert client.keepalive(provider.settings(), store=store, credential="crm", older_than=3600) is KeepaliveOutcome.FRESH
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["api_calls"]) == (0, 0), "nothing sent"
    assert store.read("crm").version == version, "nothing written"


def test_an_undated_set_or_a_refresh_token_expiring_within_the_window_is_refreshed(client, provider, tmp_path):
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    # Imported (no rekey_refreshed_at): refreshed whatever the window.
    store.put("imported", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    assert "rekey_refreshed_at" not in keys_of(store, "imported")
    ten_years = datetime.timedelta(days=3650)
    assert client.keepalive(provider.settings(), store=store, credential="imported", older_than=ten_years) \
        is KeepaliveOutcome.REFRESHED
    # Just refreshed, its refresh token stated to live 3 days: within a week's
    # window, but a machine whose cron comes after another's leaves it alone
    # until half that life is gone.
    store.put("young", provider.settings(),
              dated(provider.authorize(), rekey_refreshed_at=now(), refresh_expires_at=now() + 3 * DAY))
    # Refreshed 4 days ago, its refresh token ends in 3: half its life gone.
    store.put("dying", provider.settings(),
              dated(provider.authorize(), rekey_refreshed_at=now() - 4 * DAY, refresh_expires_at=now() + 3 * DAY))
    before = provider.stats()
    for window in (DAY, WEEK):
        assert client.keepalive(provider.settings(), store=store, credential="young", older_than=window) \
            is KeepaliveOutcome.FRESH
    assert delta(provider.stats(), before)["token_calls"] == 0
    assert client.keepalive(provider.settings(), store=store, credential="dying", older_than=WEEK) \
        is KeepaliveOutcome.REFRESHED
    # A fraction of a second counts as whole seconds: 0.9 is 0, "always".
    assert client.keepalive(provider.settings(), store=store, credential="dying", older_than=0.9) \
        is KeepaliveOutcome.REFRESHED
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["api_calls"], d["reused_refresh_tokens"]) == (2, 0, 0)
    assert provider.refresh_token_live(keys_of(store, "dying")["refresh_token"])


def test_the_callback_style(client, provider):
    first = provider.authorize()
    saved: list[str] = []
    outcome = client.keepalive(provider.settings(), keys=dated(first, rekey_refreshed_at=now() - 30 * DAY),
                               on_update_keys=saved.append, older_than=WEEK)
    assert outcome is KeepaliveOutcome.REFRESHED
    assert len(saved) == 1
    keys = json.loads(saved[0])
    assert keys["refresh_token"] != first["refresh_token"]
    assert provider.refresh_token_live(keys["refresh_token"])


def test_client_credentials_and_a_set_without_a_refresh_token_have_nothing_to_keep(client, provider, make_store):
    """(4) nothing sent, nothing written."""
    store, _ = make_store()
    machine = provider.settings(grant="client-credentials")
    store.put("m2m", machine)
    before, version = provider.stats(), store.read("m2m").version
    assert client.keepalive(machine, store=store, credential="m2m", older_than=0) is KeepaliveOutcome.NOTHING_TO_KEEP
    assert store.read("m2m").version == version, "nothing written"

    tokens = provider.authorize()
    del tokens["refresh_token"]
    store.put("access-only", provider.settings(), rekey.keys_from_token_response(tokens))
    assert client.keepalive(provider.settings(), store=store, credential="access-only", older_than=0) \
        is KeepaliveOutcome.NOTHING_TO_KEEP
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["client_credentials_granted"], d["api_calls"]) == (0, 0, 0), "nothing sent"


def test_a_revoked_grant_needs_reauthorization_and_the_next_keepalive_sends_nothing(client, provider, make_store):
    """(5) invalid_grant once; the dead grant is remembered as send remembers it."""
    store, _ = make_store()
    first = provider.authorize()
    store.put("gone", provider.settings(), dated(first, rekey_refreshed_at=now() - 30 * DAY))
    provider.admin("POST", "revoke-all")
    before = provider.stats()

    with pytest.raises(rekey.ReauthorizationRequired) as caught:
        client.keepalive(provider.settings(), store=store, credential="gone", older_than=WEEK)
    e = caught.value
    assert (e.case, e.code, e.category) == ("reauthorization-required", "invalid_grant", rekey.Category.NEEDS_AUTHORIZATION)
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["invalid_grant"], d["api_calls"]) == (1, 1, 0)
    record = store.read("gone").data
    assert record.dead_grant is not None and record.dead_grant.code == "invalid_grant"
    assert json.loads(record.keys_text())["refresh_token"] == first["refresh_token"], "the stored keys were left alone"

    with pytest.raises(rekey.ReauthorizationRequired):
        client.keepalive(provider.settings(), store=store, credential="gone", older_than=WEEK)
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["invalid_grant"], d["api_calls"]) == (1, 1, 0), "the second sent nothing"


def test_errors_are_sends_and_bad_arguments_are_refused_before_anything_runs(client, provider):
    store = rekey.MemoryStore()
    store.put("empty", provider.settings())
    before = provider.stats()
    with pytest.raises(rekey.NotAuthenticated) as caught:
        client.keepalive(provider.settings(), store=store, credential="empty", older_than=60)
    assert caught.value.case == "not-authenticated"

    store.put("x", provider.settings(), dated(provider.authorize(), rekey_refreshed_at=now() - 30 * DAY))
    # A token URL in the clear off loopback: the component's invalid-settings, nothing sent.
    bad = provider.settings(token_url="http://login.example.com/token")
    with pytest.raises(rekey.InvalidSettings) as caught:
        client.keepalive(bad, store=store, credential="x", older_than=WEEK)
    assert (caught.value.case, caught.value.category) == ("invalid-settings", rekey.Category.SETTINGS_WRONG)

    for wrong, error in [(-1, ValueError), (float("nan"), ValueError), (2**64, ValueError),
                         (datetime.timedelta(seconds=-1), ValueError), ("60", TypeError), (True, TypeError),
                         (None, TypeError)]:
        with pytest.raises(error, match="older_than"):
            client.keepalive(provider.settings(), store=store, credential="x", older_than=wrong)
    with pytest.raises(TypeError):
        client.keepalive(provider.settings(), store=store, older_than=60)  # a store needs a name
    with pytest.raises(TypeError):
        client.keepalive(provider.settings(), credential="x", older_than=60)  # nowhere to keep the keys
    assert delta(provider.stats(), before)["token_calls"] == 0


def test_async_keepalive(client, provider, tmp_path):
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), dated(provider.authorize(), rekey_refreshed_at=now() - 30 * DAY))

    async def main():
        async with rekey.AsyncRekey(client) as arekey:
            return [await arekey.keepalive(provider.settings(), store=store, credential="c", older_than=w)
                    for w in (WEEK, WEEK)]

    assert asyncio.run(main()) == [KeepaliveOutcome.REFRESHED, KeepaliveOutcome.FRESH]
    assert delta(provider.stats(), {})["token_calls"] == 1


# (3) The fleet: processes run keepalive at once on one credential.

PROCESSES = 4


class KeepaliveWorker(Worker):
    """A ``keepalive_worker.py`` process, spoken to as test_fleet's workers are."""

    # Not super().__init__: that starts a fleet_worker.py.
    def __init__(self, store_url: str, provider):
        env = dict(os.environ,
                   REKEY_FLEET_TOKEN_URL=provider.token_url,
                   REKEY_FLEET_CLIENT_ID=provider.client_id,
                   REKEY_FLEET_CLIENT_SECRET=provider.client_secret)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "keepalive_worker.py"), store_url, "shared",
                                      provider.api_url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_processes_running_keepalive_at_once_refresh_once(kind, provider_factory, tmp_path, request, workers, capsys):  # noqa: F811
    # Each granted refresh is answered after 300 ms: the others arrive while
    # the lease is held, wait, and adopt the set it stores.
    provider = provider_factory("--token-delay-ms", "300")
    url = str(tmp_path / "keepalive.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = rekey.open_store(url)
    first = provider.authorize()
    store.put("shared", provider.settings(), dated(first, rekey_refreshed_at=now() - 30 * DAY))
    workers += [KeepaliveWorker(url, provider) for _ in range(PROCESSES)]
    assert [w.line() for w in workers] == ["READY"] * PROCESSES

    def run(seconds: int) -> list[str]:
        for w in workers:  # all of them, at once
            w.tell(f"KEEPALIVE {seconds}")
        return [w.line() for w in workers]

    before = provider.stats()
    due = run(7 * DAY)
    after_due = delta(provider.stats(), before)
    again = run(3600)
    d = delta(provider.stats(), before)
    record = store.read("shared").data
    keys = json.loads(record.keys_text())
    live = provider.refresh_token_live(keys["refresh_token"])
    with capsys.disabled():
        print(f"\nkeepalive fleet on {kind}: {PROCESSES} processes: {due}, then {again}; refreshes "
              f"{d['refreshes_granted']}, token calls {d['token_calls']}, reused refresh tokens "
              f"{d['reused_refresh_tokens']}, invalid_grant {d['invalid_grant']}, API calls {d['api_calls']}, "
              f"stored refresh token live: {live}")
    assert set(due) <= {"OK refreshed", "OK fresh"}, f"every process answers refreshed or fresh: {due}"
    assert due.count("OK refreshed") == 1, f"one process refreshed, the others adopted its set: {due}"
    assert (after_due["refreshes_granted"], after_due["token_calls"]) == (1, 1), "exactly one refresh"
    assert again == ["OK fresh"] * PROCESSES, "then nothing is due"
    assert (d["refreshes_granted"], d["token_calls"]) == (1, 1), "and nothing more was sent"
    assert (d["reused_refresh_tokens"], d["invalid_grant"], d["api_calls"]) == (0, 0, 0)
    assert keys["refresh_token"] != first["refresh_token"]
    assert live, "the store holds the provider's live refresh token"
    assert (record.lease, record.refresh_mark, record.dead_grant) == (None, None, None)
    for w in workers:
        assert w.finish() == 0
    store.close()
