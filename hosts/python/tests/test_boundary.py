"""Where a token may go. The component refuses first (guest/src/origins.rs);
the host refuses again at http-send (the sandbox's boundary), so each rule
is tested both ways: through the real component, and at the host's
http-send directly (a component that let something through). "Refused"
means nothing left: a listener counts connections."""

from __future__ import annotations

import socket
import threading
import urllib.parse

import pytest

import rekey
from conftest import delta
from rekey import Request, SqliteStore, wit
from rekey.client import CallState
from rekey.origins import Origin, check_api_url


class Listener:
    """Counts connections on 127.0.0.1 (answers none)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def credential(provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    return provider, store


def host_send(client, store, settings, purpose: str, url: str):
    """The host's http-send as the component would call it."""
    call = CallState(client, store, "c", settings)
    with client._runtime.lock:  # held, as during a call: http-send releases it to wait
        req = Request.get(url)
        head = wit._record(method=req.method, url=req.url, headers=req.headers)
        return call.http_send(purpose, head, req.body)


def test_a_plain_http_token_url_off_loopback_is_refused_before_any_byte_leaves(client, credential, listener):
    provider, store = credential
    # 127.1 reaches 127.0.0.1 through the resolver, but is not a loopback
    # address written as one (nor a host every parser reads alike): refused.
    token_url = f"http://127.1:{listener.port}/token"
    settings = provider.settings(token_url=token_url, strategy=rekey.EveryRequest())
    before = provider.stats()

    with pytest.raises(rekey.InvalidSettings, match="token URL"):
        client.send(settings, Request.get(provider.api_url + "me"), store=store, credential="c")
    refused = host_send(client, store, settings, "token-endpoint", token_url)

    assert (refused.tag, listener.connections) == ("refused", 0)
    assert "clear text" in refused.payload or "plain host" in refused.payload, refused.payload
    assert delta(provider.stats(), before)["api_calls"] == 0


def test_a_token_endpoint_request_goes_only_to_the_token_url(client, credential, listener):
    provider, store = credential
    elsewhere = f"http://127.0.0.1:{listener.port}/token"
    refused = host_send(client, store, provider.settings(), "token-endpoint", elsewhere)
    assert (refused.tag, listener.connections) == ("refused", 0)
    # A send never asks for the device endpoint either.
    refused = host_send(client, store, provider.settings(device_url=elsewhere), "device-endpoint", elsewhere)
    assert (refused.tag, listener.connections) == ("refused", 0)


def test_an_api_url_outside_the_origins_is_refused(client, credential, listener):
    provider, store = credential
    settings = provider.settings(api_origins=["https://api.example.com"])
    before = provider.stats()

    with pytest.raises(rekey.InvalidSettings, match="API origins"):
        client.send(settings, Request.get(provider.api_url + "me"), store=store, credential="c")
    outside = host_send(client, store, settings, "api", f"http://127.0.0.1:{listener.port}/me")

    assert (outside.tag, listener.connections) == ("refused", 0)
    assert "not one of the credential's API origins" in outside.payload
    assert delta(provider.stats(), before)["api_calls"] == 0
    # The same origin, listed, goes through (the check refuses no more than it should).
    api = urllib.parse.urlsplit(provider.api_url)
    listed = provider.settings(api_origins=[f"{api.scheme}://{api.netloc}"])
    assert client.send(listed, Request.get(provider.api_url + "me"), store=store, credential="c").status == 200
    # Plain http off loopback is refused even with no origins given.
    refused = host_send(client, store, provider.settings(), "api", f"http://127.1:{listener.port}/me")
    assert (refused.tag, listener.connections) == ("refused", 0)


def test_an_instance_url_is_allowed_only_when_it_matches_an_instance_pattern(client, tmp_path):
    store = SqliteStore(tmp_path / "rekey.db")
    keys = '{"access_token":"a","instance_url":"https://eu42.my.example.com"}'
    for patterns, allow in (([], False), (["https://*.other.example.com"], False), (["https://*.my.example.com"], True)):
        settings = rekey.Settings(token_url="https://login.example.com/token", client_id="x",
                                  api_origins=["https://login.example.com"], instance_url_origins=patterns)
        store.put("c", settings, keys)
        call = CallState(client, store, "c", settings)
        with client._runtime.lock:
            call.read_record()  # the host learns the instance URL from the record it served
        refusal = call._refusal("api", "https://eu42.my.example.com/services/data")
        assert (refusal is None) is allow, refusal
        assert call._refusal("api", "https://eu43.my.example.com/") is not None


@pytest.mark.parametrize("url, allowed", [
    ("https://api.example.com/v1/me?x=1", True),
    ("https://API.example.com:443/", True),
    ("https://eu1.crm.example/data", True),
    ("https://a.b.crm.example/", True),
    ("https://crm.example/", False),
    ("https://evilcrm.example/", False),
    ("https://api.example.com.evil/", False),
    ("https://api.example.com:8443/", False),
    ("http://api.example.com/", False),
    ("https://evil.example/?https://api.example.com", False),
    ("https://api.example.com@evil.example/", False),
    ("https://a..crm.example/", False),
    ("https://api.example.com\\@evil.example/", False),
    ("https://%61pi.example.com/", False),
])
def test_origin_patterns_as_the_guest_reads_them(url, allowed):
    try:
        check_api_url(url, ["https://api.example.com", "https://*.crm.example"])
        ok = True
    except ValueError:
        ok = False
    assert ok is allowed


def test_loopback_is_a_loopback_address_written_as_one():
    for url in ["http://127.0.0.1:8080/x", "http://[::1]:8080/x", "http://localhost/x", "http://127.9.8.7/"]:
        assert Origin.of(url).is_loopback(), url
    for url in ["http://127.1/", "http://0x7f.0.0.1/", "http://localhost./", "http://127.0.0.1.evil.example/",
                "http://2130706433/"]:
        origin = Origin.of(url)  # None: refused outright (an empty label)
        assert origin is None or not origin.is_loopback(), url
