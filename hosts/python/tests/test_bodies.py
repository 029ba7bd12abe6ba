"""Bodies cross the component boundary as host-held handles: a 1 MiB request
body reaches the API byte for byte (twice, when the first try is refused and
the call refreshes), and the API's 1 MiB answer comes back byte for byte,
also inside the errors that carry a response. Real HTTP on loopback: the
testkit provider's token endpoint, and an API here that echoes bodies."""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.parse

import pytest

import rekey
from conftest import delta
from rekey import Request, SqliteStore

MIB = 1024 * 1024


class EchoApi:
    """An API on loopback that answers every request with its own body:
    200, or 401 (with ``challenge`` as the WWW-Authenticate header) for a
    bearer token that ``refuses(token)``. Keeps what it received, in order."""

    def __init__(self, refuses, challenge='Bearer error="invalid_token"'):
        self.received: list[tuple[str, bytes]] = []  # (authorization, body)
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                auth = self.headers.get("authorization") or ""
                api.received.append((auth, body))
                refused = refuses(auth.removeprefix("Bearer "))
                self.send_response(401 if refused else 200)
                if refused:
                    self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/echo"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_api():
    started = []

    def start(*args, **kwargs) -> EchoApi:
        api = EchoApi(*args, **kwargs)
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


def origin_of(url: str) -> str:
    """The origin the token may go to: the echo API's own."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def stale_credential(provider, tmp_path) -> SqliteStore:
    """A credential whose stored access token the echo API refuses ("stale"),
    with a live refresh token."""
    keys = json.loads(rekey.keys_from_token_response(provider.authorize()))
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), json.dumps({**keys, "access_token": "stale"}))
    return store


def test_a_1_mib_body_goes_out_twice_through_a_refresh_and_the_1_mib_answer_comes_back(
    client, provider_factory, echo_api, tmp_path
):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = stale_credential(provider, tmp_path)
    api = echo_api(refuses=lambda token: token == "stale")
    payload = os.urandom(MIB)
    before = provider.stats()

    resp = client.send(provider.settings(api_origins=[origin_of(api.url)]), Request.post(api.url, payload), store=store, credential="c")

    assert resp.status == 200
    assert resp.body == payload
    # Refused with the stored token, then sent again with the refreshed one.
    assert [auth == "Bearer stale" for auth, _ in api.received] == [True, False]
    assert all(body == payload for _, body in api.received)
    assert delta(provider.stats(), before)["refreshes_granted"] == 1


@pytest.mark.parametrize(
    "challenge, error",
    [
        ('Bearer error="invalid_token"', rekey.RejectedAfterRefresh),
        ('Bearer error="insufficient_scope", scope="admin"', rekey.InsufficientScope),
    ],
)
def test_the_response_an_error_carries_has_its_1_mib_body(
    client, provider_factory, echo_api, tmp_path, challenge, error
):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = stale_credential(provider, tmp_path)
    api = echo_api(refuses=lambda token: True, challenge=challenge)
    payload = os.urandom(MIB)

    with pytest.raises(error) as caught:
        client.send(provider.settings(api_origins=[origin_of(api.url)]), Request.post(api.url, payload), store=store, credential="c")

    assert caught.value.response.status == 401
    assert caught.value.response.body == payload
    assert all(body == payload for _, body in api.received)
    # Rejected twice around one refresh; a scope challenge is not refreshed.
    assert len(api.received) == (2 if error is rekey.RejectedAfterRefresh else 1)
