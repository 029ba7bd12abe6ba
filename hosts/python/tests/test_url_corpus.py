"""One URL policy (issue 20): every URL of tests/url-corpus.txt, as a token
URL, gets one answer from the component's ``check_settings`` (what creating a
credential runs), from the component at ``send``, and from this host's own
check at ``http-send``: refused by the component, nothing reaches the
provider; accepted, the host's second line accepts it too."""

from __future__ import annotations

from pathlib import Path

import pytest

import rekey
from rekey import MemoryStore, Request, origins

CORPUS = Path(__file__).resolve().parents[3] / "tests" / "url-corpus.txt"


def corpus() -> list[str]:
    lines = CORPUS.read_text().split("\n")
    return [line.replace("\\t", "\t") for line in lines if line and not line.startswith("#")]


def test_check_settings_send_and_http_send_agree_on_every_token_url(client, provider):
    keys = rekey.keys_from_token_response(provider.authorize())
    accepted = refused = 0
    for url in corpus():
        settings = provider.settings(token_url=url, api_origins=["*"])
        try:
            client.check_settings(settings)
            checked = None
        except rekey.InvalidSettings as e:
            checked = e
        store = MemoryStore()
        store.put("c", settings, keys)
        before = provider.stats()
        try:
            sent = client.send(settings, Request.get(provider.api_url + "me"), store=store, credential="c")
        except rekey.RekeyError as e:
            sent = e
        after = provider.stats()
        reached = after["api_calls"] + after["token_calls"] - before["api_calls"] - before["token_calls"]
        if checked is None:
            accepted += 1
            assert getattr(sent, "status", None) == 200, f"{url!r}: accepted by check_settings, at send: {sent!r}"
            origins.check_transport(url, "the token URL")  # the host's second line sends it
        else:
            refused += 1
            assert isinstance(sent, rekey.InvalidSettings), f"{url!r}: refused by check_settings, at send: {sent!r}"
            assert str(sent) == str(checked), url
            assert reached == 0, f"{url!r}: refused, yet the provider saw a request"
    assert accepted >= 5 and refused >= 20, (accepted, refused)


def test_unbound_settings_are_refused_early_naming_the_fix(client):
    unbound = rekey.Settings(token_url="https://idp.example/token", client_id="c")
    with pytest.raises(rekey.InvalidSettings, match="api_origins"):
        client.check_settings(unbound)
    for bad in (["https://*.com"], ["https://*..example.com"], ["*", "https://api.example.com"]):
        with pytest.raises(rekey.InvalidSettings):
            client.check_settings(rekey.Settings(token_url="https://idp.example/token", client_id="c", api_origins=bad))
    client.check_settings(rekey.Settings(token_url="https://idp.example/token", client_id="c", api_origins=["*"]))
    client.check_settings(rekey.Settings(token_url="https://idp.example/token", client_id="c",
                                         instance_url_origins=["https://*.my.salesforce.com"]))


def test_the_second_line_reads_each_url_as_the_sender_does():
    """What ``origins`` accepts, ``http.send`` (urlsplit, http.client)
    connects to: the same host and port. Python's urlsplit reads
    ``[::1]x:8080`` as port 8080; a check that read port 80 there would let a
    token bound to ``http://[::1]`` reach another local listener."""
    import urllib.parse

    checked = 0
    for url in corpus():
        origin = origins.Origin.of(url)
        if origin is None:
            continue
        checked += 1
        sent = urllib.parse.urlsplit(url)
        assert (sent.hostname, sent.port or (443 if origin.https else 80)) == (origin.host, origin.port), url
    assert checked >= 10, checked
