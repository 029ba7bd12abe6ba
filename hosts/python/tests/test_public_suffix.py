"""Wildcards over a public suffix (issue 20). The component has no public
suffix list, so this host refuses them itself, as the Rust host does
(``host/src/origins.rs``): when a credential is created (``store.put``), in
every call's settings check (``check_settings``, ``send``), and again at
``http-send``."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse

import pytest

import rekey
from conftest import delta
from rekey import MemoryStore, Request, SqliteStore, wit
from rekey import http as rhttp
from rekey.client import CallState
from rekey.origins import check_api_url, is_public_suffix

# ICANN section (co.uk, 公司.cn as punycode), private section (github.io,
# googleapis.com). kobe.jp has only the rule ``*.kobe.jp``: every name below
# it is a public suffix, so it counts as one (as the list's linter and issue
# 1989 of the list read it; the Rust host's psl crate does not yet), while
# city.kobe.jp, the rule's exception, is a registrable domain.
REFUSED = ["https://*.co.uk", "https://*.github.io", "https://*.googleapis.com", "https://*.CO.UK:8443",
           "https://*.xn--55qx5d.cn", "https://*.kobe.jp"]
ACCEPTED = ["https://*.example.com", "https://*.my.salesforce.com", "https://*.example.co.uk",
            "https://*.example.github.io", "https://co.uk", "https://*.city.kobe.jp"]
FIELDS = ["api_origins", "instance_url_origins"]


def with_pattern(field: str, pattern: str) -> rekey.Settings:
    origins = {"api_origins": ["https://api.example.com"], field: [pattern]}
    return rekey.Settings(token_url="https://idp.example/token", client_id="c", **origins)


def named(field: str, pattern: str) -> str:
    return f"{field}: {json.dumps(pattern)} is a wildcard over a public suffix"


@pytest.mark.parametrize("field", FIELDS)
def test_check_settings_refuses_a_wildcard_over_a_public_suffix_naming_it(client, field):
    for pattern in REFUSED:
        with pytest.raises(rekey.InvalidSettings) as caught:
            client.check_settings(with_pattern(field, pattern))
        assert named(field, pattern) in str(caught.value), str(caught.value)
        assert "matches other people's sites" in str(caught.value)
    for pattern in ACCEPTED:
        client.check_settings(with_pattern(field, pattern))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_put_refuses_it_and_writes_nothing(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "rekey.db")
    keys = {"access_token": "a"}
    for field in FIELDS:
        for pattern in REFUSED:
            with pytest.raises(rekey.InvalidSettings, match=r"wildcard over a public suffix"):
                store.put("c", with_pattern(field, pattern), keys)
    assert store.names() == [], "no credential was created"
    # Nor is a good credential's settings column replaced by such settings.
    store.put("c", with_pattern("api_origins", "https://*.example.co.uk"), keys)
    with pytest.raises(rekey.InvalidSettings):
        store.put("c", with_pattern("api_origins", "https://*.co.uk"))
    assert store.show("c").settings["api_origins"] == ["https://*.example.co.uk"]
    for i, (field, pattern) in enumerate((f, p) for f in FIELDS for p in ACCEPTED):
        store.put(f"ok{i}", with_pattern(field, pattern), keys)
    assert len(store.names()) == 1 + len(FIELDS) * len(ACCEPTED)


def test_send_refuses_before_any_request_and_the_registrable_domain_below_works(client, provider):
    store = MemoryStore()
    store.put("crm", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    api = urllib.parse.urlsplit(provider.api_url)
    origin = f"{api.scheme}://{api.netloc}"
    before = provider.stats()

    def send(**overrides):
        return client.send(provider.settings(**overrides), Request.get(provider.api_url + "me"), store=store,
                           credential="crm")

    with pytest.raises(rekey.InvalidSettings, match=r"api_origins: \"https://\*\.co\.uk\" is a wildcard"):
        send(api_origins=[origin, "https://*.co.uk"])
    with pytest.raises(rekey.InvalidSettings, match=r"instance_url_origins: \"https://\*\.github\.io\" is a wildcard"):
        send(api_origins=["*"], instance_url_origins=["https://*.github.io"])
    moved = delta(provider.stats(), before)
    assert moved["api_calls"] + moved["token_calls"] == 0, "nothing was sent"
    ok = send(api_origins=[origin, "https://*.example.co.uk"], instance_url_origins=["https://*.example.github.io"])
    assert ok.status == 200


class Listener:
    """Counts connections on 127.0.0.1, closing each at once."""

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


def test_http_send_the_second_line_refuses_api_requests_unsent(client, monkeypatch):
    listener = Listener()
    # Every name resolves to the listener: "refused" means no connection was made.
    monkeypatch.setattr(
        rhttp, "_resolve", lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    )
    url = f"https://api.example.co.uk:{listener.port}/v1"

    def host_send(**origins):
        # Settings as a component that let them through would hand them over.
        settings = rekey.Settings(token_url="https://idp.example/token", client_id="c", **origins)
        call = CallState(client, MemoryStore(), "c", settings)
        with client._runtime.lock:  # held, as during a call: http-send releases it to wait
            head = wit._record(method="GET", url=url, headers=[])
            return call.http_send("api", head, b"")

    try:
        allowed = host_send(api_origins=[f"https://*.example.co.uk:{listener.port}"])
        assert allowed.tag != "refused", "the registrable domain is allowed: it connected"
        assert listener.connections == 1
        for origins in (
            {"api_origins": [f"https://*.co.uk:{listener.port}"]},
            {"api_origins": [f"https://*.example.co.uk:{listener.port}", f"https://*.co.uk:{listener.port}"]},
            {"api_origins": ["*"], "instance_url_origins": ["https://*.github.io"]},
        ):
            refused = host_send(**origins)
            assert refused.tag == "refused", origins
            assert "is a wildcard over a public suffix" in refused.payload, refused.payload
        assert listener.connections == 1, "nothing more reached the listener"
    finally:
        listener.sock.close()


def test_the_rule_on_its_own():
    url = "https://api.example.co.uk/"
    for pattern in ("https://*.co.uk", "https://*.github.io", "https://*.googleapis.com"):
        with pytest.raises(ValueError, match="public suffix"):
            check_api_url(url, [pattern])
    check_api_url(url, ["https://*.example.co.uk"])
    check_api_url("https://eu42.my.salesforce.com/x", ["https://*.my.salesforce.com"])
    check_api_url("https://a.example.com/x", ["https://*.example.com"])
    # The list's implicit rule for unknown top-level domains does not count.
    assert not is_public_suffix("crm.example") and is_public_suffix("co.uk") and not is_public_suffix("example.co.uk")
