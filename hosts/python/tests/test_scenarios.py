"""The §4 scenario list, one test per id, against the testkit provider over
real HTTP on loopback with the credential in a real SQLite file; the
component runs for real, nothing is mocked across the wasm boundary. Counts
come from the provider's own stats, as deltas."""

from __future__ import annotations

import base64
import json
import os
import random
import threading

import pytest

import rekey
from conftest import delta, stored_keys, tokens_in
from rekey import BeforeExpiry, ClientAuth, EveryRequest, Request, SqliteStore


def stored(store: SqliteStore) -> dict:
    return json.loads(stored_keys(store))


def new_store(tmp_path, provider, tokens: dict) -> SqliteStore:
    """Credential "c" in a new SQLite file, with the first token set."""
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(tokens))
    return store


def send(client, settings, request, store):
    return client.send(settings, request, store=store, credential="c")


def test_loads_the_expected_component(client):
    expected = os.environ.get("REKEY_WASM_SHA256")
    if not expected:
        pytest.skip("REKEY_WASM_SHA256 not set")
    assert client.component_sha256 == expected.lower()
    with pytest.raises(ValueError, match="SHA-256"):
        rekey.Rekey(os.environ["REKEY_WASM"], expected_sha256="0" * 64)


def test_on_401_refresh_and_retry(client, provider, tmp_path):
    # The one scenario here whose expiry is the token's own lifetime running
    # out (the default provider's 2 s), not the expire-access-tokens knob.
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)
    provider.wait_until_expired(tokens["access_token"])
    before = provider.stats()

    resp = send(client, provider.settings(), Request.get(provider.api_url + "orders"), store)

    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert (d["api_calls"], d["api_unauthorized"], d["token_calls"], d["refreshes_granted"]) == (2, 1, 1, 1)
    keys = stored(store)
    assert keys["access_token"] != tokens["access_token"]
    assert keys["refresh_token"] != tokens["refresh_token"]
    assert keys["id_token"] == tokens["id_token"]  # kept from the stored set
    assert isinstance(keys["expires_at"], int)
    assert provider.refresh_token_live(keys["refresh_token"])


def test_every_request(client, provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = new_store(tmp_path, provider, provider.authorize())
    settings = provider.settings(strategy=EveryRequest())
    before = provider.stats()
    refresh_tokens = []
    for _ in range(3):
        assert send(client, settings, Request.get(provider.api_url + "me"), store).status == 200
        refresh_tokens.append(stored(store)["refresh_token"])

    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["api_calls"], d["api_unauthorized"]) == (3, 3, 0)
    assert len(set(refresh_tokens)) == 3  # each rotation persisted
    assert d["reused_refresh_tokens"] == 0


def test_before_expiry(client, provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")  # expires_in 600
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)

    before = provider.stats()
    margin_beyond_lifetime = provider.settings(strategy=BeforeExpiry(3600))
    assert send(client, margin_beyond_lifetime, Request.get(provider.api_url + "me"), store).status == 200
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["api_calls"], d["api_unauthorized"]) == (1, 1, 0)
    assert stored(store)["access_token"] != tokens["access_token"]

    before = provider.stats()
    margin_within_lifetime = provider.settings(strategy=BeforeExpiry(60))
    assert send(client, margin_within_lifetime, Request.get(provider.api_url + "me"), store).status == 200
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["api_calls"]) == (0, 1)


def test_rotation_5_refreshes(client, provider_factory, tmp_path):
    # Each expiry is made with the knob; the tokens otherwise live 10 minutes,
    # so no natural expiry adds a refresh however slow the machine.
    provider = provider_factory("--access-ttl-ms", "600000")
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)
    before = provider.stats()
    seen = {tokens["refresh_token"]}
    for expiry in range(1, 6):
        provider.admin("POST", "expire-access-tokens")
        assert send(client, provider.settings(), Request.get(provider.api_url + "me"), store).status == 200
        assert delta(provider.stats(), before)["refreshes_granted"] == expiry  # one refresh per expiry
        seen.add(stored(store)["refresh_token"])

    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["token_calls"], d["api_unauthorized"]) == (5, 5, 5)
    assert (d["reused_refresh_tokens"], d["invalid_grant"]) == (0, 0)
    assert len(seen) == 6
    assert provider.refresh_token_live(stored(store)["refresh_token"])


def test_response_without_refresh_token_keeps_old(client, provider_factory, tmp_path):
    # A provider that does not rotate may leave refresh_token out of its answer.
    provider = provider_factory("--access-ttl-ms", "600000", "--no-rotate")
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)
    provider.admin("POST", "omit-refresh-token", True)

    resp = send(client, provider.settings(strategy=EveryRequest()), Request.get(provider.api_url + "me"), store)

    assert resp.status == 200
    keys = stored(store)
    assert keys["access_token"] != tokens["access_token"]
    assert keys["refresh_token"] == tokens["refresh_token"]
    assert provider.refresh_token_live(keys["refresh_token"])
    # ...and the kept one still works for the next refresh.
    before = provider.stats()
    assert send(client, provider.settings(strategy=EveryRequest()), Request.get(provider.api_url + "me"), store).status == 200
    assert delta(provider.stats(), before)["refreshes_granted"] == 1


def test_rejected_after_fresh_token(client, provider, tmp_path):
    store = new_store(tmp_path, provider, provider.authorize())
    before = provider.stats()

    with pytest.raises(rekey.RejectedAfterRefresh) as caught:
        send(client, provider.settings(), Request.get(provider.api_url + "reject"), store)

    assert caught.value.response.status == 401
    assert caught.value.response.header("www-authenticate") is not None
    assert caught.value.category is rekey.Category.REJECTED_BY_API
    d = delta(provider.stats(), before)
    assert (d["api_calls"], d["token_calls"], d["refreshes_granted"]) == (2, 1, 1)


def test_no_expires_in_refresh_on_401(client, provider_factory, tmp_path):
    """A provider that never says how long a token lives (Salesforce, GitHub,
    Slack) and ends sessions at its own time: every call succeeds across three
    session ends, one refresh each; a URL that always answers 401 costs one
    refresh, and its evidence never blocks the next session end's refresh."""
    provider = provider_factory("--no-expires-in")
    store = new_store(tmp_path, provider, provider.authorize())
    before = provider.stats()

    def get(path: str):
        return send(client, provider.settings(), Request.get(provider.api_url + path), store)

    ok = 0
    for call in range(10):
        if call % 3 == 1:
            provider.admin("POST", "expire-access-tokens")  # the session ends
        ok += get("me").status == 200
    assert ok == 10, "10 of 10 calls across 3 session ends"
    assert delta(provider.stats(), before)["token_calls"] == 3

    for _ in range(3):
        with pytest.raises(rekey.RejectedAfterRefresh):
            get("reject")
    assert delta(provider.stats(), before)["token_calls"] == 4, "one refresh for the bad URL"
    provider.admin("POST", "expire-access-tokens")
    assert get("me").status == 200
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["invalid_grant"]) == (5, 0)
    assert "expires_at" not in stored(store), "no lifetime was invented"


def test_invalid_grant(client, provider, tmp_path):
    store = new_store(tmp_path, provider, provider.authorize())
    provider.admin("POST", "revoke-all")
    keys_before = stored_keys(store)
    before = provider.stats()

    with pytest.raises(rekey.ReauthorizationRequired) as caught:
        send(client, provider.settings(), Request.get(provider.api_url + "me"), store)

    assert caught.value.code == "invalid_grant"
    assert caught.value.needs_authorization
    assert stored_keys(store) == keys_before  # the keys are left alone
    record = store.read("c").data
    assert (record.dead_grant.code, record.lease, record.refresh_mark) == ("invalid_grant", None, None)
    assert delta(provider.stats(), before)["invalid_grant"] == 1


def test_dead_grant_fails_fast_without_a_token_request(client, provider, tmp_path):
    """After invalid_grant the grant is remembered as dead: the next call
    (another process's as well: the record says so) sends nothing at all."""
    store = new_store(tmp_path, provider, provider.authorize())
    provider.admin("POST", "revoke-all")
    with pytest.raises(rekey.ReauthorizationRequired):
        send(client, provider.settings(), Request.get(provider.api_url + "me"), store)
    before = provider.stats()

    with pytest.raises(rekey.ReauthorizationRequired) as caught:
        send(client, provider.settings(strategy=EveryRequest()), Request.get(provider.api_url + "me"),
             SqliteStore(store.path))

    assert caught.value.code == "invalid_grant"
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["api_calls"]) == (0, 0)
    # New keys (a person authorised again) bring it back to life.
    store.put("c", keys=rekey.keys_from_token_response(provider.authorize()))
    assert send(client, provider.settings(strategy=EveryRequest()), Request.get(provider.api_url + "me"), store).status == 200


def test_503_then_200(client, provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")
    store = new_store(tmp_path, provider, provider.authorize())
    provider.admin("POST", "force-token-responses", [[503, '{"error":"temporarily_unavailable"}']])
    before = provider.stats()

    resp = send(client, provider.settings(strategy=EveryRequest()), Request.get(provider.api_url + "me"), store)

    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["refreshes_granted"], d["invalid_grant"]) == (2, 1, 0)


@pytest.mark.parametrize(
    "method", [ClientAuth.BASIC, ClientAuth.POST], ids=["client-auth-basic", "client-auth-post"]
)
def test_client_auth(client, provider_factory, tmp_path, method):
    required = "basic" if method is ClientAuth.BASIC else "post"
    provider = provider_factory("--access-ttl-ms", "600000", "--client-auth", required)
    store = new_store(tmp_path, provider, provider.authorize())
    before = provider.stats()

    resp = send(client, provider.settings(client_auth=method, strategy=EveryRequest()), Request.get(provider.api_url + "me"), store)

    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert d["refreshes_granted"] == 1
    assert (d["basic_auth_calls"], d["post_auth_calls"]) == ((1, 0) if required == "basic" else (0, 1))
    other = ClientAuth.POST if method is ClientAuth.BASIC else ClientAuth.BASIC
    with pytest.raises(rekey.SettingsRejected) as caught:
        send(client, provider.settings(client_auth=other, strategy=EveryRequest()), Request.get(provider.api_url + "me"), store)
    assert caught.value.code == "invalid_client"


def test_post_body_identical_on_retry(client, provider_factory, tmp_path):
    provider = provider_factory("--access-ttl-ms", "600000")
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)
    body = bytes(range(256)) + random.Random(9).randbytes(64 * 1024)
    provider.admin("POST", "expire-access-tokens")
    logged = len(provider.api_log())

    req = Request.post(provider.api_url + "upload", body, [("Content-Type", "application/octet-stream")])
    assert send(client, provider.settings(), req, store).status == 200

    first, retry = provider.api_log()[logged:]
    assert (first["method"], first["authorized"], retry["method"], retry["authorized"]) == ("POST", False, "POST", True)
    assert base64.b64decode(first["body_base64"]) == body
    assert base64.b64decode(retry["body_base64"]) == body


def test_keys_callback_failure_stops_before_retry(client, provider_factory):
    provider = provider_factory("--access-ttl-ms", "600000")
    tokens = provider.authorize()
    keys = rekey.keys_from_token_response(tokens)
    provider.admin("POST", "expire-access-tokens")
    offered = []

    def on_update_keys(new_keys: str) -> None:
        offered.append(new_keys)
        raise OSError(f"disk full while writing {new_keys}")

    before = provider.stats()
    with pytest.raises(rekey.KeysNotPersisted) as caught:
        # The component retries a failed keys write until its pauses (100 ms, doubling) add up to one
        # lease TTL: 300 ms, three attempts.
        client.send(
            provider.settings(lease_ttl_ms=300),
            Request.get(provider.api_url + "me"),
            keys=keys,
            on_update_keys=on_update_keys,
        )

    d = delta(provider.stats(), before)
    assert (d["api_calls"], d["token_calls"], d["refreshes_granted"]) == (1, 1, 1)  # the request was not resent
    # The component retries a keys write that failed outright (the rotated
    # refresh token exists nowhere else), always with the same set.
    assert len(offered) >= 1 and len(set(offered)) == 1
    assert caught.value.category is rekey.Category.STORE
    # A retry would spend the refresh token the provider may have rotated.
    assert caught.value.retryable is False
    assert "disk full" in str(caught.value)
    for token in tokens_in(offered[0]):  # the callback's message quoted them
        assert token not in str(caught.value)


def test_16_concurrent_one_refresh(client, provider_factory, tmp_path):
    # The refreshed token lives 10 minutes: no second expiry can fall inside
    # the run however loaded the machine; the first one is made at once.
    provider = provider_factory("--access-ttl-ms", "600000")
    tokens = provider.authorize()
    store = new_store(tmp_path, provider, tokens)
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()
    start = threading.Barrier(16)
    results: list = []

    def one() -> None:
        start.wait()
        try:
            # A connection of its own per thread, as separate workers would have.
            results.append(send(client, provider.settings(), Request.get(provider.api_url + "me"), SqliteStore(store.path)).status)
        except Exception as e:  # collected, asserted below
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [200] * 16
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["token_calls"], d["invalid_grant"], d["reused_refresh_tokens"]) == (1, 1, 0, 0)
    assert provider.refresh_token_live(stored(store)["refresh_token"])


def test_16_concurrent_one_refresh_with_callbacks(client, provider_factory):
    """The same, with keys and on_update_keys instead of a store: calls naming
    one credential share its record in this process and adopt what the first
    one persisted."""
    provider = provider_factory("--access-ttl-ms", "600000")
    tokens = provider.authorize()
    keys = rekey.keys_from_token_response(tokens)
    provider.admin("POST", "expire-access-tokens")
    persisted: list[str] = []
    before = provider.stats()
    start = threading.Barrier(16)
    results: list = []

    def one() -> None:
        start.wait()
        try:
            resp = client.send(provider.settings(), Request.get(provider.api_url + "me"), keys=keys,
                               on_update_keys=persisted.append, credential="crm")
            results.append(resp.status)
        except Exception as e:
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [200] * 16
    assert len(persisted) == 1
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["invalid_grant"], d["reused_refresh_tokens"]) == (1, 0, 0)
