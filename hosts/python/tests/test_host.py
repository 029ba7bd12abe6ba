"""The host's own effects: HTTP failures mapped to the WIT transport-error
cases, no redirects, the SQLite store file's mode."""

from __future__ import annotations

import http.server
import os
import stat
import threading

import pytest

import rekey
from rekey import HttpConfig, Request, SqliteStore
from rekey import http as rekey_http


@pytest.fixture
def long_lived(provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    return provider, store


def test_transport_connect_refused(client, long_lived):
    provider, store = long_lived
    with pytest.raises(rekey.TransportError) as caught:
        client.send(provider.settings(api_origins=["http://127.0.0.1:9"]), Request.get("http://127.0.0.1:9/nothing-listens"), store=store, credential="c")
    assert caught.value.kind == "connect"
    assert caught.value.category is rekey.Category.TRANSPORT


def test_transport_too_large_and_timeout(long_lived):
    provider, store = long_lived
    small = rekey.Rekey(os.environ["REKEY_WASM"], http_config=HttpConfig(max_response_bytes=16))
    with pytest.raises(rekey.TransportError) as caught:
        small.send(provider.settings(), Request.get(provider.api_url + "me"), store=store, credential="c")
    assert (caught.value.kind, caught.value.detail) == ("too-large", 16)

    hasty = rekey.Rekey(os.environ["REKEY_WASM"], http_config=HttpConfig(total_timeout=0.3))
    with pytest.raises(rekey.TransportError) as caught:
        hasty.send(provider.settings(), Request.get(provider.api_url + "slow"), store=store, credential="c")  # answers after 2 s
    assert caught.value.kind == "timeout"


def test_transport_invalid_request(client, long_lived):
    provider, store = long_lived
    for bad in [Request("GE T", provider.api_url + "me"),
                Request("GET", provider.api_url + "me", [("X-Bad", "a\r\nInjected: yes")])]:
        with pytest.raises(rekey.TransportError) as caught:
            client.send(provider.settings(), bad, store=store, credential="c")
        assert caught.value.kind == "invalid-request"
        assert caught.value.category is rekey.Category.BAD_INPUT
        assert "Injected" not in str(caught.value)
    # A URL that is not http(s) never gets as far: the component refuses it.
    with pytest.raises(rekey.InvalidSettings):
        client.send(provider.settings(), Request("GET", "ftp://example.com/"), store=store, credential="c")


def test_redirects_are_returned_not_followed():
    hits = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        resp = rekey_http.send(Request.get(f"http://127.0.0.1:{server.server_port}/start"), HttpConfig())
    finally:
        server.shutdown()
    assert (resp.status, resp.header("location"), hits) == (302, "/elsewhere", ["/start"])


def test_a_new_sqlite_store_is_private(tmp_path):
    path = tmp_path / "rekey.db"
    SqliteStore(path).put("c", rekey.Settings(token_url="https://x.example/t", client_id="x"), '{"refresh_token":"r"}')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for side in ("-wal", "-shm"):  # SQLite gives them the database's mode
        if os.path.exists(f"{path}{side}"):
            assert stat.S_IMODE(os.stat(f"{path}{side}").st_mode) == 0o600


def test_a_store_that_cannot_be_read_is_store_unavailable_and_nothing_is_sent(client, provider_factory):
    provider = provider_factory("--access-ttl-ms", "600000")

    class Down:
        def read(self, name):
            raise rekey.StoreUnusable("the database is down")

        def write(self, name, expected_version, data):
            raise AssertionError("nothing may be written")

    before = provider.stats()
    with pytest.raises(rekey.StoreUnavailable) as caught:
        client.send(provider.settings(), Request.get(provider.api_url + "me"), store=Down(), credential="c")
    assert "the database is down" in str(caught.value)
    assert (caught.value.case, caught.value.category, caught.value.retryable) == (
        "store-unavailable", rekey.Category.STORE, True)
    assert provider.stats() == before


def test_the_library_logs_nothing_unless_the_application_configures_logging():
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    quiet = f"import sys; sys.path.insert(0, {src!r}); import logging, rekey; logging.getLogger('rekey').warning('x')"
    configured = quiet.replace("import logging, rekey;", "import logging, rekey; logging.basicConfig();")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            for code in (quiet, configured)]
    assert [(r.returncode, r.stderr) for r in runs] == [(0, ""), (0, "WARNING:rekey:x\n")]
