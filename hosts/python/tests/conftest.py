"""The testkit provider (a loopback OAuth2 provider + protected API, the
binary in $REKEY_TESTKIT) and the component ($REKEY_WASM)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.parse

import pytest

import rekey


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set (see hosts/python/ci.sh)", returncode=2)
    return value


class Provider:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [_required_env("REKEY_TESTKIT"), *args],
            stdin=subprocess.PIPE,  # the testkit exits when this closes
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the testkit exited before announcing itself: {self.proc.wait()}")
        info = json.loads(line)
        self.base_url = info["base_url"]
        self.token_url = info["token_url"]
        self.api_url = info["api_url"]
        self.client_id = info["client_id"]
        self.client_secret = info["client_secret"]
        self.issued: set[str] = set()  # every token seen, for the secrecy checks

    def settings(self, **overrides) -> rekey.Settings:
        api = urllib.parse.urlsplit(self.api_url)
        # Bound to the provider's API, as every credential must be.
        fields = dict(token_url=self.token_url, client_id=self.client_id, client_secret=self.client_secret,
                      api_origins=[f"{api.scheme}://{api.netloc}"])
        fields.update(overrides)
        return rekey.Settings(**fields)

    def admin(self, method: str, path: str, body=None):
        url = urllib.parse.urlsplit(self.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, f"/_testkit/{path}", body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, f"testkit {path}: HTTP {resp.status}"
            return json.loads(data) if data else None
        finally:
            conn.close()

    def authorize(self) -> dict:
        """A new grant's first token response."""
        tokens = self.admin("POST", "authorize")
        self.issued.update(v for k, v in tokens.items() if k.endswith("_token"))
        return tokens

    def stats(self) -> dict:
        return self.admin("GET", "stats")

    def api_log(self) -> list:
        return self.admin("GET", "api-log")

    def refresh_token_live(self, token: str) -> bool:
        return self.admin("POST", "refresh-token-live", {"refresh_token": token})["live"]

    def api_status(self, access_token: str) -> int:
        """One direct API call with this token (counts in the stats)."""
        url = urllib.parse.urlsplit(self.api_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", url.path + "probe", headers={"Authorization": f"Bearer {access_token}"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def wait_until_expired(self, access_token: str, limit: float = 60.0) -> None:
        """Polls the API until it rejects the token: no assumption about how
        fast this machine is."""
        give_up = time.monotonic() + limit
        while self.api_status(access_token) != 401:
            assert time.monotonic() < give_up, "the access token never expired"
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def delta(after: dict, before: dict) -> dict:
    """The counters' growth (the stats' other fields, such as
    ``last_assertion_subject``, are read from the stats themselves)."""
    return {k: v - (before.get(k) or 0) for k, v in after.items() if isinstance(v, int)}


@pytest.fixture
def provider_factory():
    started: list[Provider] = []

    def start(*args: str) -> Provider:
        p = Provider(*args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture
def provider(provider_factory) -> Provider:
    """Default provider: 2 s tokens, strict rotation, reuse detection."""
    return provider_factory()


@pytest.fixture(scope="session")
def client() -> rekey.Rekey:
    return rekey.Rekey(_required_env("REKEY_WASM"), expected_sha256=os.environ.get("REKEY_WASM_SHA256"))


def tokens_in(keys_json: str) -> set[str]:
    keys = json.loads(keys_json)
    return {v for k, v in keys.items() if k.endswith("_token") and isinstance(v, str)}


def stored_keys(store, name: str = "c"):
    """The keys stored for ``name`` (JSON text), or None (no such credential, or no keys)."""
    try:
        return store.read(name).data.keys_text()
    except rekey.UnknownCredential:
        return None


def require_peer(why: str) -> None:
    """A missing peer: a loud skip, or a failure under REKEY_REQUIRE_PEERS=1."""
    message = f"SKIPPED: {why}"
    if os.environ.get("REKEY_REQUIRE_PEERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL server for the session (each test takes a fresh database)."""
    import pg_cluster as pg

    bin_dir = pg.binaries()
    if bin_dir is None:
        require_peer("no PostgreSQL under /usr/lib/postgresql/*/bin, so the PostgreSQL store tests did NOT run")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require_peer("psycopg is not installed (pip install -r requirements.txt), so the PostgreSQL tests did NOT run")
    cluster = pg.Cluster(bin_dir)
    yield cluster
    cluster.stop()


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh, empty database's URL."""
    return pg_cluster.database(f"t{next(_databases)}")


STORE_KINDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def make_store(store_kind, tmp_path, request):
    """Opens a new (or the same, called again) store of ``store_kind``:
    ``make_store()`` → (store, url); url None for memory."""
    opened = []
    url = None
    if store_kind == "sqlite":
        url = str(tmp_path / "rekey.db")
    elif store_kind == "postgres":
        url = request.getfixturevalue("pg_url")
    shared = rekey.MemoryStore()

    def make():
        store = shared if url is None else rekey.open_store(url)
        opened.append(store)
        return store, url

    yield make
    for s in opened:
        if hasattr(s, "close"):
            s.close()
