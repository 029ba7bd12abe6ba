"""The client-credentials grant (RFC 6749 §4.4) through the real path: the
testkit over loopback HTTP, the component, and each store kind (memory,
SQLite file, PostgreSQL). The credential is created with no keys at all."""

from __future__ import annotations

import json

import pytest

import rekey
from conftest import delta
from rekey import CredentialRecord, Grant, Request


def cc_settings(provider, **overrides) -> rekey.Settings:
    return provider.settings(grant="client-credentials", **overrides)


def stored(store, name="cc") -> rekey.StoredRecord:
    return store.read(name)


def test_no_keys_first_call_fetches_reuses_then_renews_on_401(client, provider_factory, make_store):
    # Tokens live 10 minutes: only the admin expiry makes the API refuse one.
    provider = provider_factory("--access-ttl-ms", "600000")
    store, _ = make_store()
    store.put("cc", cc_settings(provider))
    shown = store.show("cc")
    assert shown.settings["grant"] == "client-credentials" and not shown.has_keys

    before = provider.stats()
    resp = client.send(cc_settings(provider), Request.get(provider.api_url + "a"), store=store, credential="cc")
    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert (d["client_credentials_granted"], d["token_calls"], d["refreshes_granted"], d["api_calls"]) == (1, 1, 0, 1)
    form = dict(provider.admin("GET", "last-token-form"))
    assert form["grant_type"] == "client_credentials" and "refresh_token" not in form
    first = stored(store)
    keys = json.loads(first.data.keys_text())
    assert keys["access_token"].startswith("at_") and "refresh_token" not in keys
    assert isinstance(keys["expires_at"], int)
    assert first.data.refresh_mark is None and first.data.lease is None

    # Later calls, also from a second connection to the same store, reuse it.
    again, _ = make_store()
    before = provider.stats()
    for s in (store, again):
        assert client.send(cc_settings(provider), Request.get(provider.api_url + "b"), store=s, credential="cc").status == 200
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["api_calls"], d["api_unauthorized"]) == (0, 2, 0)
    assert stored(store).version == first.version

    # The provider forgets its tokens: the next call meets a 401, gets one new token and succeeds.
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()
    resp = client.send(cc_settings(provider), Request.get(provider.api_url + "c"), store=store, credential="cc")
    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert (d["api_unauthorized"], d["client_credentials_granted"], d["token_calls"], d["api_calls"]) == (1, 1, 1, 2)
    renewed = stored(again)
    new_keys = json.loads(renewed.data.keys_text())
    assert new_keys["access_token"] != keys["access_token"] and "refresh_token" not in new_keys
    assert renewed.data.refresh_mark is None and renewed.data.lease is None and renewed.data.dead_grant is None
    assert provider.api_status(new_keys["access_token"]) == 200


def test_wrong_client_secret_is_settings_rejected_stores_no_token_and_is_not_asked_again(client, provider, make_store):
    store, _ = make_store()
    wrong = cc_settings(provider, client_secret="not-the-secret")
    store.put("cc", wrong)
    version = stored(store).version
    before = provider.stats()

    with pytest.raises(rekey.SettingsRejected) as e:
        client.send(wrong, Request.get(provider.api_url + "a"), store=store, credential="cc")

    assert e.value.code == "invalid_client" and "not-the-secret" not in str(e.value)
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["client_credentials_granted"], d["api_calls"]) == (1, 0, 0)
    after = stored(store)
    # No token: only the component's memory of the refusal, naming no secret.
    kept = json.loads(after.data.keys_text())
    assert list(kept) == ["rekey_refused"] and kept["rekey_refused"]["code"] == "invalid_client", kept
    assert "not-the-secret" not in after.data.keys_text()
    assert after.data.refresh_mark is None and after.data.dead_grant is None
    # The lease it took to fetch is given back.
    assert after.data.lease is None and after.version > version

    # The same settings within the minute: refused without a request.
    with pytest.raises(rekey.SettingsRejected):
        client.send(wrong, Request.get(provider.api_url + "a"), store=store, credential="cc")
    assert delta(provider.stats(), before)["token_calls"] == 1
    # The right secret asks at once; its token set drops the memory.
    assert client.send(cc_settings(provider), Request.get(provider.api_url + "a"), store=store, credential="cc").status == 200
    assert "rekey_refused" not in json.loads(stored(store).data.keys_text())


def test_the_callback_path_needs_no_keys_either(client, provider_factory):
    provider = provider_factory("--access-ttl-ms", "600000")
    saved: list[str] = []
    before = provider.stats()
    for _ in range(2):
        resp = client.send(cc_settings(provider), Request.get(provider.api_url + "a"), credential="cc-callback",
                           on_update_keys=saved.append)
        assert resp.status == 200
    assert delta(provider.stats(), before)["client_credentials_granted"] == 1
    assert len(saved) == 1 and "refresh_token" not in json.loads(saved[0])


def test_a_client_secret_is_required(client, provider, tmp_path):
    no_secret = cc_settings(provider, client_secret=None)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    with pytest.raises(rekey.InvalidSettings, match="client secret"):
        store.put("cc", no_secret)
    assert store.names() == []
    # The component refuses it too, before any request.
    before = provider.stats()
    with pytest.raises(rekey.InvalidSettings):
        client.send(no_secret, Request.get(provider.api_url + "a"), on_update_keys=lambda k: None)
    assert delta(provider.stats(), before)["token_calls"] == 0


def test_grant_setting_values_and_store_column(provider, tmp_path):
    assert cc_settings(provider).grant is Grant.CLIENT_CREDENTIALS
    assert provider.settings().grant is Grant.REFRESH_TOKEN
    assert provider.settings(grant=Grant.CLIENT_CREDENTIALS).grant is Grant.CLIENT_CREDENTIALS
    with pytest.raises(rekey.InvalidSettings, match="unknown grant 'password'.*'refresh-token', 'client-credentials'"):
        provider.settings(grant="password")

    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("rt", provider.settings())
    store.put("cc", cc_settings(provider))
    # As the Rust and Node hosts write it: the default is left out, so the
    # column reads the same in 0.3 hosts that know no grant.
    assert "grant" not in json.loads(store._info("rt")[0])
    assert json.loads(store._info("cc")[0])["grant"] == "client-credentials"
    assert store.show("rt").settings["grant"] == "refresh-token"
    assert store.read("cc").data == CredentialRecord()


def test_a_client_credentials_credential_is_never_authorised(client, provider):
    with pytest.raises(rekey.InvalidSettings, match="never authorised"):
        client.authorize_code(cc_settings(provider), on_url=print, on_update_keys=lambda k: None)
    with pytest.raises(rekey.InvalidSettings, match="never authorised"):
        client.authorize_device(cc_settings(provider), on_user_code=print, on_update_keys=lambda k: None)
