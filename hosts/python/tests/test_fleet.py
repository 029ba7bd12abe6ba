"""Many worker processes, one credential: Python workers
(``fleet_worker.py``, the line-protocol worker a mixed-language fleet test
drives) share a credential through a real SQLite file or a real PostgreSQL
database, against the testkit provider with refresh-token rotation and
reuse detection (a reused refresh token revokes the grant). Expiries come
from the provider's expire-access-tokens knob, not from waiting.

The provider's tokens live 10 minutes, so every expiry is one the test made
(no natural expiry can fall inside a round however slow the machine) and
each must cost exactly one refresh. The next expiry is made as soon as a
round has ended: the component refreshes on a 401 unless the API already
rejected that token set right after it was obtained, and every call here is
answered 200, so there is no such evidence."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rekey
from conftest import delta, stored_keys

HERE = Path(__file__).parent
WORKERS = 4
EXPIRIES = 6
TOKEN_TTL_MS = 600_000
ANSWER_WITHIN = 120  # seconds: a bound on a hung worker, never a verdict


class Worker:
    """One ``fleet_worker.py`` process; its lines arrive through a queue so a
    hung worker fails the test instead of hanging it."""

    def __init__(self, store_url: str, provider, *, lease_ttl_ms: int = 0):
        env = dict(os.environ,
                   REKEY_FLEET_TOKEN_URL=provider.token_url,
                   REKEY_FLEET_CLIENT_ID=provider.client_id,
                   REKEY_FLEET_CLIENT_SECRET=provider.client_secret,
                   REKEY_FLEET_LEASE_TTL_MS=str(lease_ttl_ms))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fleet_worker.py"), store_url, "fleet",
                                      provider.api_url + "me"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # EOF

    def tell(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def line(self) -> str:
        try:
            return self.lines.get(timeout=ANSWER_WITHIN)
        except queue.Empty:
            raise AssertionError(f"worker {self.proc.pid} said nothing for {ANSWER_WITHIN} s") from None

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=ANSWER_WITHIN)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()


def fleet_store(kind: str, tmp_path, request, provider) -> str:
    url = str(tmp_path / "fleet.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = rekey.open_store(url)
    store.put("fleet", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    store.close()
    return url


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_four_worker_processes_share_one_credential(kind, provider_factory, tmp_path, request, workers, capsys):
    provider = provider_factory("--access-ttl-ms", str(TOKEN_TTL_MS))
    url = fleet_store(kind, tmp_path, request, provider)
    workers += [Worker(url, provider) for _ in range(WORKERS)]
    for w in workers:
        assert w.line() == "READY"
    before = provider.stats()
    rounds = []
    for _ in range(EXPIRIES):
        provider.admin("POST", "expire-access-tokens")
        at_start, started = provider.stats(), time.monotonic()
        for w in workers:  # all of them, at once
            w.tell("CALL")
        answers = [w.line() for w in workers]
        took = time.monotonic() - started
        refreshes = delta(provider.stats(), at_start)["refreshes_granted"]
        rounds.append((refreshes, took))
        assert answers == ["OK 200"] * WORKERS, answers
        assert refreshes == 1, rounds  # one refresh per expiry, however many workers saw it

    d = delta(provider.stats(), before)
    keys = rekey.open_store(url).read("fleet").data
    live = provider.refresh_token_live(json.loads(keys.keys_text())["refresh_token"])
    with capsys.disabled():  # the figures go to the terminal, not into the capture
        print(f"\nfleet on {kind}: {WORKERS} processes, {EXPIRIES} expiries, {WORKERS * EXPIRIES} calls: "
              f"refreshes {d['refreshes_granted']} (per expiry {[r for r, _ in rounds]}), token calls "
              f"{d['token_calls']}, reused refresh tokens {d['reused_refresh_tokens']}, invalid_grant "
              f"{d['invalid_grant']}, API calls {d['api_calls']} ({d['api_unauthorized']} rejected), "
              f"slowest round {max(t for _, t in rounds) * 1000:.0f} ms, "
              f"stored refresh token live: {live}")
    assert (d["reused_refresh_tokens"], d["invalid_grant"]) == (0, 0)
    assert d["token_calls"] == d["refreshes_granted"] == EXPIRIES
    assert live, "the store must end on the live refresh token"
    assert (keys.lease, keys.refresh_mark, keys.dead_grant) == (None, None, None)
    for w in workers:
        assert w.finish() == 0


def test_a_lease_left_by_a_killed_holder_runs_out_and_the_fleet_goes_on(provider_factory, tmp_path, request, workers):
    """HOLD takes the lease as a worker that dies mid-refresh (before its
    token request) leaves it; once it runs out, another worker refreshes.
    Then a revoked grant: ERR reauthorization-required, and the next call
    sends nothing."""
    provider = provider_factory("--access-ttl-ms", str(TOKEN_TTL_MS))
    url = fleet_store("sqlite", tmp_path, request, provider)
    holder, caller = Worker(url, provider, lease_ttl_ms=1500), Worker(url, provider, lease_ttl_ms=1500)
    workers += [holder, caller]
    assert (holder.line(), caller.line()) == ("READY", "READY")
    holder.tell("HOLD")
    assert holder.line() == "HELD"
    held = rekey.open_store(url).read("fleet").data
    assert (held.lease.holder, held.refresh_mark) == (f"hold-{holder.proc.pid}", None)
    holder.kill()
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()

    caller.tell("CALL")
    assert caller.line() == "OK 200"

    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["invalid_grant"]) == (1, 0)
    after = rekey.open_store(url).read("fleet").data
    assert (after.lease, after.refresh_mark) == (None, None)
    assert provider.refresh_token_live(json.loads(stored_keys(rekey.open_store(url), "fleet"))["refresh_token"])

    provider.admin("POST", "revoke-all")
    provider.admin("POST", "expire-access-tokens")
    caller.tell("CALL")
    assert caller.line() == "ERR reauthorization-required"
    before = provider.stats()
    caller.tell("CALL")
    assert caller.line() == "ERR reauthorization-required"
    assert delta(provider.stats(), before)["token_calls"] == 0
    assert caller.finish() == 0
