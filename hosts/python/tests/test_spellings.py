"""One spelling for settings' enum values across hosts: client auth as
``basic``/``post``, ``client-secret-basic``/``-post`` (the WIT's) or the RFC's
``client_secret_*``, and strategies by name, reach the token endpoint as the
same thing; an unknown one is InvalidSettings before anything is sent."""

from __future__ import annotations

import pytest

import rekey
from conftest import delta
from rekey import Request


@pytest.mark.parametrize("spelling", ["post", "client-secret-post", "client_secret_post"])
def test_every_spelling_of_post_authenticates_in_the_form(provider_factory, tmp_path, client, spelling):
    provider = provider_factory("--client-auth", "post", "--access-ttl-ms", "600000")
    settings = provider.settings(client_auth=spelling, strategy="every-request")
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, rekey.keys_from_token_response(provider.authorize()))
    before = provider.stats()
    for _ in range(2):
        assert client.send(settings, Request.get(provider.api_url + "me"), store=store, credential="c").status == 200
    d = delta(provider.stats(), before)
    # every-request: a refresh before each call, each with the secret in the form.
    assert (d["refreshes_granted"], d["post_auth_calls"], d["basic_auth_calls"], d["invalid_grant"]) == (2, 2, 0, 0)


def test_an_unknown_spelling_is_invalid_settings_and_nothing_is_sent(provider):
    before = provider.stats()
    for bad in [dict(client_auth="client-secret-jwt"), dict(grant="password"), dict(strategy="sometimes")]:
        with pytest.raises(rekey.InvalidSettings):
            provider.settings(**bad)
    assert delta(provider.stats(), before)["token_calls"] == 0
