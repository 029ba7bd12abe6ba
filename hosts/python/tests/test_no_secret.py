"""no-secret-in-output: every way rekey can talk (logs at DEBUG, stdout and
stderr, exception messages and reprs, the reprs of its values) across
success, refresh, and each failure kind, with no token or client secret."""

from __future__ import annotations

import logging

import pytest

import rekey
from conftest import stored_keys, tokens_in
from rekey import EveryRequest, Request, SqliteStore


def test_no_secret_in_output(client, provider_factory, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    provider = provider_factory("--access-ttl-ms", "600000")  # expiries come from the knob
    secrets = {provider.client_secret}
    said: list[str] = []  # every exception message and repr, every value's repr
    kinds: set[str] = set()

    def attempt(**kwargs) -> None:
        try:
            resp = client.send(**kwargs)
            said.append(repr(resp))
        except rekey.RekeyError as e:
            kinds.add(type(e).__name__)
            said.extend([str(e), repr(e), repr(getattr(e, "response", None))])

    tokens = provider.authorize()
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(tokens))
    settings = provider.settings()
    said += [repr(settings), repr(store), repr(rekey.Secret(tokens["access_token"]))]

    # a refresh on 401, then an API that always rejects
    provider.admin("POST", "expire-access-tokens")
    attempt(settings=settings, request=Request.get(provider.api_url + "me"), store=store, credential="c")
    attempt(settings=settings, request=Request.get(provider.api_url + "reject"), store=store, credential="c")
    secrets |= tokens_in(stored_keys(store))
    # a callback that fails quoting what it was given
    offered: list[str] = []

    def failing(keys: str) -> None:
        offered.append(keys)
        raise OSError(f"cannot write {keys}")

    # The component retries a failed keys write until its pauses (100 ms, doubling) add up to one lease
    # TTL (40 s by default): 300 ms, three attempts.
    attempt(settings=provider.settings(strategy=EveryRequest(), lease_ttl_ms=300),
            request=Request.get(provider.api_url + "me"), keys=stored_keys(store), on_update_keys=failing)
    for keys in offered:
        secrets |= tokens_in(keys)
    # the token endpoint's answers lost after it rotated the token (in doubt), on a grant of its own
    store.put("other", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    provider.admin("POST", "lose-answers", [{"reset": True}, {"reset": True}])
    attempt(settings=provider.settings(strategy=EveryRequest()), request=Request.get(provider.api_url + "me"), store=store,
            credential="other")
    secrets |= tokens_in(stored_keys(store, "other"))
    # a request with its own credentials in a header and the query
    attempt(settings=provider.settings(api_origins=["http://127.0.0.1:9"]),
            request=Request.get("http://127.0.0.1:9/x?key=" + tokens["refresh_token"],
            [("X-Api-Key", tokens["access_token"])]), store=store, credential="c")
    # the wrong client secret, then a revoked grant
    attempt(settings=provider.settings(client_secret="wrong-" + provider.client_secret, strategy=EveryRequest()),
            request=Request.get(provider.api_url + "me"), store=store, credential="c")
    provider.admin("POST", "revoke-all")
    attempt(settings=provider.settings(strategy=EveryRequest()), request=Request.get(provider.api_url + "me"), store=store,
            credential="c")
    said.append(repr(Request.get(provider.api_url + "?key=" + tokens["refresh_token"], [("X-Api-Key", tokens["access_token"])])))

    secrets |= provider.issued | tokens_in(stored_keys(store))
    out, err = capsys.readouterr()
    logged = [r.getMessage() for r in caplog.records]
    everything = "\n".join(said + logged + [out, err])
    assert len(logged) >= 5 and len(said) >= 15  # the checks saw real output
    assert len(secrets) >= 6
    assert kinds == {"RejectedAfterRefresh", "KeysNotPersisted", "RefreshInDoubt", "SettingsRejected",
                     "ReauthorizationRequired", "TransportError"}
    leaked = sorted(s for s in secrets if s in everything)
    assert leaked == [], "secrets appeared in rekey's output"
