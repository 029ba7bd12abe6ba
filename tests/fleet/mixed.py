#!/usr/bin/env python3
"""A mixed-language fleet on one credential: Rust, Node.js (22 and 24) and
Python worker processes share one credential in one SQLite file, then in one
PostgreSQL database, against the testkit provider with refresh-token rotation
and strict reuse detection (a reused refresh token revokes the grant).

Every round expires the access token at the provider (an admin knob, no
sleeping on token lifetimes) and has every worker call the API at once. In
three rounds, first one worker of each language takes the refresh lease and
is killed with SIGKILL while holding it; the others must wait its lease out
and refresh once. The verdict counts what the provider saw: 0 reused refresh
tokens, 0 invalid_grant, at most one refresh per expiry, every call answered
200, and the store ending on the live refresh token.

Tokens live 1999 ms (`expires_in` 1): the component does not refresh again a
token it obtained less than half its lifetime ago (its guard against an API
that always answers 401), so a knob expiry right after a refresh needs a
short lifetime to be one. Tokens may then also expire on their own inside a
long round (a kill round waits out a 3 s lease): a round may refresh once per
expiry, the knob's plus one per started token lifetime it lasted.

Standard library only. Needs (hosts/test.sh sets them): REKEY_TESTKIT,
REKEY_BIN (the rekey CLI), REKEY_FLEET_WORKER_RS (host/examples/fleet_worker),
REKEY_WASM, REKEY_NODE22, REKEY_NODE24, REKEY_PYTHON (the Python host's venv
interpreter). PostgreSQL binaries under /usr/lib/postgresql/*/bin; without
them the PostgreSQL half fails under REKEY_REQUIRE_PEERS=1, else is skipped
loudly.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6
LEASE_TTL_MS = 3000
ACCESS_TTL_MS = 1999
# round -> the language whose worker is killed holding the lease first
KILLS = {1: "rust", 3: "node", 5: "python"}
CREDENTIAL = "fleet"


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"mixed.py: {name} is not set")
    return value


class Testkit:
    def __init__(self) -> None:
        # stdin stays a pipe: the provider serves until it closes.
        self.proc = subprocess.Popen(
            [env("REKEY_TESTKIT"), "--access-ttl-ms", str(ACCESS_TTL_MS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())
        self.base = self.info["base_url"].rstrip("/")

    def admin(self, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}/_testkit/{path}", data=data,
            method="POST" if data is not None or path in ("expire-access-tokens", "authorize") else "GET",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Postgres:
    """A throwaway cluster on loopback, as tests/all/support/postgres.rs makes it."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        self.bin = Path(bins[-1])
        self.data = Path(tempfile.mkdtemp(prefix="rekey-mixed-pg"))
        self.as_postgres = os.getuid() == 0
        if self.as_postgres:
            shutil.chown(self.data, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        d = str(self.data)
        self.run("initdb", "-D", d, "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {d} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", d, "-o", options, "-l", f"{d}/server.log", "-w", "start")

    def run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def query(self, sql: str) -> str:
        return self.run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-At", "-c", sql).strip()

    def close(self) -> None:
        subprocess.run(
            (["runuser", "-u", "postgres", "--"] if self.as_postgres else [])
            + [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.data, ignore_errors=True)


def worker_command(language: str, variant: str) -> list[str]:
    if language == "rust":
        return [env("REKEY_FLEET_WORKER_RS")]
    if language == "node":
        node = env("REKEY_NODE22" if variant == "22" else "REKEY_NODE24")
        return [node, str(ROOT / "hosts/node/test/support/fleet-worker.mjs")]
    return [env("REKEY_PYTHON"), str(ROOT / "hosts/python/tests/fleet_worker.py")]


class Worker:
    def __init__(self, language: str, variant: str, store: str, api: str, kit: Testkit) -> None:
        self.language, self.variant = language, variant
        child_env = dict(
            os.environ,
            REKEY_FLEET_TOKEN_URL=kit.info["token_url"],
            REKEY_FLEET_CLIENT_ID=kit.info["client_id"],
            REKEY_FLEET_CLIENT_SECRET=kit.info["client_secret"],
            REKEY_FLEET_LEASE_TTL_MS=str(LEASE_TTL_MS),
        )
        self.proc = subprocess.Popen(
            worker_command(language, variant) + [store, CREDENTIAL, api],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=child_env, cwd=ROOT,
        )
        self.expect("READY")

    @property
    def name(self) -> str:
        return f"{self.language}{self.variant}[{self.proc.pid}]"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise RuntimeError(f"{self.name} ended without an answer: {err[-2000:]}")
        return line

    def expect(self, word: str) -> None:
        line = self.read()
        if line != word:
            raise RuntimeError(f"{self.name}: expected {word}, got {line!r}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


FLEET = [("rust", ""), ("rust", ""), ("node", "22"), ("node", "24"), ("python", ""), ("python", "")]


def run_fleet(label: str, store: str, stored_keys, kit: Testkit) -> dict:
    keys = kit.admin("authorize", {})
    add = subprocess.run(
        [env("REKEY_BIN"), "--store", store, "credential", "add", CREDENTIAL,
         "--token-url", kit.info["token_url"], "--client-id", kit.info["client_id"],
         "--client-secret-env", "REKEY_FLEET_CLIENT_SECRET", "--keys", "-",
         # Bound to the test kit's API, as every worker's own settings are.
         "--api-origin", "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(kit.info["api_url"]))],
        input=json.dumps(keys), capture_output=True, text=True,
    )
    if add.returncode != 0:
        raise RuntimeError(f"rekey credential add failed: {add.stderr}")
    api = kit.info["api_url"].rstrip("/") + "/fleet"
    workers = [Worker(lang, v, store, api, kit) for lang, v in FLEET]
    calls = ok = 0
    failures: dict[str, int] = {}
    over: list[str] = []
    try:
        for r in range(ROUNDS):
            refreshed_before = kit.admin("stats")["refreshes_granted"]
            started = time.monotonic()
            kit.admin("expire-access-tokens", {})
            victim_language = KILLS.get(r)
            if victim_language:
                i = next(i for i, w in enumerate(workers) if w.language == victim_language)
                victim = workers[i]
                victim.send("HOLD")
                victim.expect("HELD")
                victim.kill()
                workers[i] = Worker(victim.language, victim.variant, store, api, kit)
            for w in workers:
                w.send("CALL")
            answers = [w.read() for w in workers]
            for w, a in zip(workers, answers):
                calls += 1
                if a == "OK 200":
                    ok += 1
                else:
                    failures[f"{w.language}: {a}"] = failures.get(f"{w.language}: {a}", 0) + 1
            lasted_ms = (time.monotonic() - started) * 1000
            expiries = 1 + math.ceil(lasted_ms / ACCESS_TTL_MS)
            refreshed = kit.admin("stats")["refreshes_granted"] - refreshed_before
            if refreshed > expiries:
                over.append(f"round {r}: {refreshed} refreshes for {expiries} expiries in {lasted_ms:.0f} ms")
    finally:
        for w in workers:
            try:
                w.close()
            except Exception:  # noqa: BLE001 - best effort at teardown
                w.proc.kill()
    stats = kit.admin("stats")
    refresh_token = json.loads(stored_keys())["refresh_token"]
    live = kit.admin("refresh-token-live", {"refresh_token": refresh_token})["live"]
    return {
        "label": label, "calls": calls, "ok": ok, "failures": failures,
        "expiries": ROUNDS, "kills": len(KILLS),
        "refreshes": stats["refreshes_granted"],
        "over": over,
        "reused_refresh_tokens": stats["reused_refresh_tokens"],
        "invalid_grant": stats["invalid_grant"],
        "store_on_live_refresh_token": live,
    }


def verdict(figures: dict) -> list[str]:
    problems = []
    if figures["reused_refresh_tokens"] != 0:
        problems.append("a refresh token was reused")
    if figures["invalid_grant"] != 0:
        problems.append("invalid_grant at the provider")
    if figures["over"]:
        problems.append(f"more than one refresh per expiry: {figures['over']}")
    if figures["ok"] != figures["calls"]:
        problems.append("calls failed")
    if not figures["store_on_live_refresh_token"]:
        problems.append("the store does not hold the live refresh token")
    return problems


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="rekey-mixed") as tmp:
        os.chmod(tmp, 0o700)
        kit = Testkit()
        try:
            db = f"{tmp}/fleet.db"

            def sqlite_keys() -> str:
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT keys FROM credentials WHERE name = ?",
                                        (CREDENTIAL,)).fetchone()[0]

            results.append(run_fleet("SQLite", db, sqlite_keys, kit))
        finally:
            kit.close()
        if glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            kit, pg = Testkit(), Postgres()
            try:
                results.append(run_fleet(
                    "PostgreSQL", pg.url,
                    lambda: pg.query(f"SELECT keys FROM rekey_credentials WHERE name = '{CREDENTIAL}'"),
                    kit,
                ))
            finally:
                kit.close()
                pg.close()
        elif os.environ.get("REKEY_REQUIRE_PEERS"):
            print("mixed.py: PostgreSQL binaries are missing (REKEY_REQUIRE_PEERS is set)", file=sys.stderr)
            return 1
        else:
            print("==================== SKIPPED: mixed fleet on PostgreSQL (no server binaries) ====================",
                  file=sys.stderr)
    failed = False
    for f in results:
        problems = verdict(f)
        failed |= bool(problems)
        print(f"mixed fleet on {f['label']}: {len(FLEET)} workers (2 Rust, Node 22, Node 24, 2 Python), "
              f"{f['expiries']} expiries, {f['kills']} killed holding the lease: "
              f"{f['ok']}/{f['calls']} calls ok, {f['refreshes']} refreshes, "
              f"{f['reused_refresh_tokens']} reused refresh tokens, {f['invalid_grant']} invalid_grant, "
              f"store on the live refresh token: {f['store_on_live_refresh_token']}"
              + (f" -- FAILED: {'; '.join(problems)} {f['failures']}" if problems else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
