"""Callback records: a bound transport/adapter without a
credential name keeps following its own newest keys; older keys offered in
another spelling (a dict, re-spaced JSON) never replace newer ones; settings
fields assigned after construction are read in any accepted spelling."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import requests

import rekey
from conftest import delta
from integration_support import long_lived
from rekey import Request
from rekey.httpx_transport import AsyncRekeyTransport, RekeyTransport
from rekey.requests_adapter import RekeyAdapter


def _sync_getter(kind, client, provider, saved):
    keys = rekey.keys_from_token_response(provider.authorize())
    settings = provider.settings()
    if kind == "httpx":
        c = httpx.Client(transport=RekeyTransport(client, settings, keys=keys, on_update_keys=saved.append))
    else:
        c = requests.Session()
        c.mount("http://", RekeyAdapter(client, settings, keys=keys, on_update_keys=saved.append))
    return c, lambda: c.get(provider.api_url + "me").status_code


@pytest.mark.parametrize("kind", ["httpx", "requests"])
def test_a_binding_without_a_name_continues_from_its_newest_keys(client, provider_factory, kind):
    provider = long_lived(provider_factory)
    saved: list[str] = []
    c, get = _sync_getter(kind, client, provider, saved)
    with c:
        before = provider.stats()
        statuses = []
        for _ in range(3):
            provider.admin("POST", "expire-access-tokens")
            statuses.append(get())
        d = delta(provider.stats(), before)
    assert statuses == [200, 200, 200]
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (3, 0, 0)
    assert len(saved) == 3
    assert provider.refresh_token_live(json.loads(saved[-1])["refresh_token"])


def test_two_unnamed_bindings_do_not_share_a_record(client, provider_factory):
    provider = long_lived(provider_factory)
    saved_a: list[str] = []
    saved_b: list[str] = []
    a, get_a = _sync_getter("httpx", client, provider, saved_a)
    b, get_b = _sync_getter("requests", client, provider, saved_b)
    with a, b:
        before = provider.stats()
        for _ in range(2):
            provider.admin("POST", "expire-access-tokens")
            assert (get_a(), get_b()) == (200, 200)
        d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (4, 0, 0)
    assert (len(saved_a), len(saved_b)) == (2, 2)


def test_an_async_binding_without_a_name_continues_from_its_newest_keys(client, provider_factory):
    provider = long_lived(provider_factory)
    saved: list[str] = []
    keys = rekey.keys_from_token_response(provider.authorize())
    transport = AsyncRekeyTransport(client, provider.settings(), keys=keys, on_update_keys=saved.append)

    async def run() -> list[int]:
        statuses = []
        async with httpx.AsyncClient(transport=transport) as c:
            for _ in range(2):
                provider.admin("POST", "expire-access-tokens")
                statuses.append((await c.get(provider.api_url + "me")).status_code)
        return statuses

    before = provider.stats()
    assert asyncio.run(run()) == [200, 200]
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (2, 0, 0)


@pytest.mark.parametrize("form", ["dict", "re-spaced text"])
def test_older_keys_in_another_spelling_never_replace_newer_ones(client, provider_factory, form):
    provider = long_lived(provider_factory)
    settings = provider.settings()
    saved: list[str] = []
    if form == "dict":
        spell = json.loads
    else:
        def spell(text):
            return json.dumps(json.loads(text), indent=2)

    def send(keys) -> int:
        return client.send(settings, Request.get(provider.api_url + "me"), keys=keys,
                           on_update_keys=saved.append, credential=f"spelled-{form}").status

    k0 = rekey.keys_from_token_response(provider.authorize())
    assert send(spell(k0)) == 200
    provider.admin("POST", "expire-access-tokens")
    assert send(spell(k0)) == 200  # refreshes: k1
    provider.admin("POST", "expire-access-tokens")
    assert send(spell(k0)) == 200  # k0 was seen: ignored; refreshes from k1: k2
    k1 = saved[0]
    provider.admin("POST", "expire-access-tokens")
    assert send(spell(k1)) == 200  # k1 was written here: older than k2, ignored
    st = provider.stats()
    assert (st["refreshes_granted"], st["reused_refresh_tokens"], st["invalid_grant"]) == (3, 0, 0)


@pytest.mark.parametrize(
    "field, value",
    [("client_auth", "post"), ("client_auth", "client_secret_post"), ("strategy", "every-request"),
     ("strategy", "before_expiry")],
)
def test_fields_assigned_after_construction_are_read_in_any_spelling(client, provider, field, value):
    settings = provider.settings()
    setattr(settings, field, value)
    client.check_settings(settings)  # no AttributeError, no InvalidSettings


def test_fields_assigned_after_construction_are_used(client, provider_factory):
    provider = provider_factory("--client-auth", "post", "--access-ttl-ms", "600000")
    settings = provider.settings()
    settings.client_auth = "post"
    settings.strategy = "every-request"
    saved: list[str] = []
    keys = rekey.keys_from_token_response(provider.authorize())
    before = provider.stats()
    for _ in range(2):
        response = client.send(settings, Request.get(provider.api_url + "me"), keys=keys,
                               on_update_keys=saved.append, credential="assigned")
        assert response.status == 200
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["post_auth_calls"], d["basic_auth_calls"], d["invalid_grant"]) == (2, 2, 0, 0)


@pytest.mark.parametrize("field, value", [("client_auth", "bogus"), ("strategy", "sometimes")])
def test_an_unknown_value_assigned_later_is_invalid_settings(client, provider, field, value):
    settings = provider.settings()
    setattr(settings, field, value)
    with pytest.raises(rekey.InvalidSettings, match="unknown"):
        client.check_settings(settings)
