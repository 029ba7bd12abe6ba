"""Keys accepted as a dict, JSON text or a Secret wherever the API takes
them (send's keys=, store.put, keys_from_token_response); anything else is
a TypeError that names the type and quotes no value."""

from __future__ import annotations

import json

import pytest

import rekey
from integration_support import long_lived


@pytest.mark.parametrize("form", ["dict", "text", "secret"])
def test_send_takes_keys_in_each_form(client, provider_factory, form):
    provider = long_lived(provider_factory)
    keys = json.loads(rekey.keys_from_token_response(provider.authorize()))
    given = {"dict": keys, "text": json.dumps(keys), "secret": rekey.Secret(json.dumps(keys))}[form]
    saved: list[str] = []
    provider.admin("POST", "expire-access-tokens")  # the first call must refresh, from the keys given
    resp = client.send(provider.settings(), rekey.Request.get(provider.api_url + "me"), keys=given,
                       on_update_keys=saved.append)
    assert resp.status == 200
    [new] = saved
    assert json.loads(new)["refresh_token"] != keys["refresh_token"]
    assert provider.stats()["reused_refresh_tokens"] == 0


@pytest.mark.parametrize("form", ["dict", "text", "secret"])
def test_store_put_takes_keys_in_each_form(client, provider, form):
    tokens = provider.authorize()
    given = {"dict": tokens, "text": json.dumps(tokens), "secret": rekey.Secret(json.dumps(tokens))}[form]
    store = rekey.MemoryStore()
    store.put("c", provider.settings(), given)
    assert json.loads(store.read("c").data.keys_text())["refresh_token"] == tokens["refresh_token"]
    assert client.send(provider.settings(), rekey.Request.get(provider.api_url + "me"), store=store,
                       credential="c").status == 200


def test_keys_from_token_response_forms():
    response = {"access_token": "at-123456", "refresh_token": "rt-123456", "expires_in": 60}
    made = [json.loads(rekey.keys_from_token_response(r, now=1000))
            for r in (response, json.dumps(response), rekey.Secret(json.dumps(response)))]
    assert made[0] == made[1] == made[2] == {**response, "expires_at": 1060}


SECRET_VALUE = "rt-must-not-appear"


@pytest.mark.parametrize("bad", [b'{"refresh_token": "rt-must-not-appear"}', ["rt-must-not-appear"], 42, None])
def test_other_types_are_a_type_error(client, provider, bad):
    calls = [
        lambda: client.send(provider.settings(), rekey.Request.get(provider.api_url + "me"), keys=bad,
                            on_update_keys=lambda k: None),
        lambda: rekey.MemoryStore().put("c", provider.settings(), bad),
        lambda: rekey.keys_from_token_response(bad),
    ]
    if bad is None:
        calls = calls[2:]  # None means "no keys" to send and put
    before = provider.stats()
    for call in calls:
        with pytest.raises(TypeError) as caught:
            call()
        message = str(caught.value)
        assert "dict, JSON text (str) or a Secret" in message and type(bad).__name__ in message
        assert SECRET_VALUE not in message
    assert provider.stats()["api_calls"] == before["api_calls"]  # nothing sent


def test_a_dict_with_values_json_cannot_hold(provider):
    with pytest.raises(TypeError, match="JSON values only") as caught:
        rekey.MemoryStore().put("c", provider.settings(), {"refresh_token": b"rt-must-not-appear"})
    assert SECRET_VALUE not in str(caught.value)
    with pytest.raises(TypeError, match="JSON values only"):
        rekey.keys_from_token_response({"access_token": "a", "expires_in": float("nan")})
