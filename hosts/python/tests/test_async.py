"""AsyncRekey and httpx.AsyncClient through rekey, against the testkit
provider: rotation across expiries, forwarding, the origin binding, and
cancellation, which stops the waiting but never a refresh in flight. The
refresh is held at a token endpoint in front of the testkit's until the
test releases it (events, no timing)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import rekey
from conftest import delta
from integration_support import Answer, HeldTokenEndpoint, RecordingApi, long_lived, record_is_settled, stored_tokens
from rekey.httpx_transport import AsyncRekeyTransport


@pytest.fixture
def held(provider_factory):
    provider = long_lived(provider_factory)
    endpoint = HeldTokenEndpoint(provider.token_url)
    yield provider, endpoint
    endpoint.close()


def test_async_send_across_expiries(client, provider_factory, tmp_path):
    provider = long_lived(provider_factory)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), provider.authorize())

    async def main():
        async with rekey.AsyncRekey(client) as arekey:
            statuses = []
            for call in range(3):
                if call:
                    provider.admin("POST", "expire-access-tokens")
                resp = await arekey.send(provider.settings(), rekey.Request.get(provider.api_url + f"a{call}"),
                                         store=store, credential="c")
                statuses.append((resp.status, resp.json()["path"]))
            return statuses

    before = provider.stats()
    assert asyncio.run(main()) == [(200, "a0"), (200, "a1"), (200, "a2")]
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (2, 0, 0), d
    assert provider.refresh_token_live(stored_tokens(store, "c")["refresh_token"])
    # AsyncRekey(client) shares the Rekey: aclose left it usable.
    assert client.send(provider.settings(), rekey.Request.get(provider.api_url + "after"), store=store,
                       credential="c").status == 200


def test_async_client_across_expiries_and_concurrent_calls(client, provider_factory, tmp_path):
    provider = long_lived(provider_factory)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), provider.authorize())

    async def main():
        transport = AsyncRekeyTransport(client, provider.settings(), store=store, credential="c")
        async with httpx.AsyncClient(transport=transport) as c:
            first = await c.get(provider.api_url + "one")
            provider.admin("POST", "expire-access-tokens")
            # Four requests at one expiry: one refresh between them (the component's lease).
            many = await asyncio.gather(*(c.get(provider.api_url + f"many{i}") for i in range(4)))
            provider.admin("POST", "expire-access-tokens")
            last = await c.post(provider.api_url + "echo", content=b"async body")
            return first, many, last

    before = provider.stats()
    first, many, last = asyncio.run(main())
    assert first.status_code == 200 and [r.status_code for r in many] == [200] * 4
    assert (last.status_code, last.content) == (200, b"async body")
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (2, 0, 0), d
    assert record_is_settled(store, "c")


def test_async_client_forwards_and_refuses_other_origins(client, provider):
    api = RecordingApi()
    try:
        settings = provider.settings(api_origins=[api.origin])
        store = rekey.MemoryStore()
        store.put("c", settings, provider.authorize())
        api.answer = Answer(202, [("X-Multi", "a"), ("X-Multi", "b")], b"\x00\xffdone")

        async def main():
            transport = AsyncRekeyTransport(rekey.AsyncRekey(client), settings, store=store, credential="c")
            async with httpx.AsyncClient(transport=transport) as c:
                resp = await c.put(api.origin + "/v1/x", params={"k": "v"}, headers={"X-Trace": "t"}, content=b"put")
                with pytest.raises(rekey.InvalidSettings):
                    await c.get(provider.api_url + "me")  # the testkit's API is not this credential's
                return resp

        resp = asyncio.run(main())
        assert (resp.status_code, resp.headers.get_list("x-multi"), resp.content) == (202, ["a", "b"], b"\x00\xffdone")
        [seen] = api.seen
        assert (seen.method, seen.target, seen.body) == ("PUT", "/v1/x?k=v", b"put")
        headers = {k.lower(): v for k, v in seen.headers}
        assert headers["x-trace"] == "t"
        assert headers["authorization"] == f"Bearer {stored_tokens(store, 'c')['access_token']}"
    finally:
        api.close()


def test_cancelled_during_a_refresh_the_refresh_completes(client, held, tmp_path):
    provider, endpoint = held
    settings = provider.settings(token_url=endpoint.url)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, provider.authorize())
    spent = stored_tokens(store, "c")["refresh_token"]
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()

    async def main():
        arekey = rekey.AsyncRekey(client)
        task = asyncio.create_task(arekey.send(settings, rekey.Request.get(provider.api_url + "cancelled"),
                                               store=store, credential="c"))
        # Wait (off the loop) until the refresh request is at the token endpoint.
        assert await asyncio.to_thread(endpoint.arrived.wait, 60), "no refresh started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The call is still in its thread, held mid-refresh: nothing persisted yet.
        assert stored_tokens(store, "c")["refresh_token"] == spent
        drained = asyncio.create_task(arekey.drain())
        for _ in range(3):
            await asyncio.sleep(0)  # drain runs its steps; it cannot end while the refresh is held
        assert not drained.done()
        endpoint.release.set()
        await drained  # returns only once that call has ended: its refresh is stored now
        assert stored_tokens(store, "c")["refresh_token"] != spent
        await arekey.aclose()

    asyncio.run(main())
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (1, 0, 0), d
    rotated = stored_tokens(store, "c")["refresh_token"]
    assert rotated != spent and provider.refresh_token_live(rotated) and not provider.refresh_token_live(spent)
    assert record_is_settled(store, "c")
    # The call went on to the API with the new token, though nobody awaited it.
    assert [e["path"] for e in provider.api_log() if e["authorized"]] == ["cancelled"]
    # And the next call uses the stored set without another refresh.
    resp = client.send(settings, rekey.Request.get(provider.api_url + "next"), store=store, credential="c")
    assert resp.status == 200 and delta(provider.stats(), before)["refreshes_granted"] == 1


def test_cancelled_async_client_request_mid_refresh(client, held, tmp_path):
    provider, endpoint = held
    settings = provider.settings(token_url=endpoint.url)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, provider.authorize())
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()

    async def main():
        transport = AsyncRekeyTransport(client, settings, store=store, credential="c")
        c = httpx.AsyncClient(transport=transport)
        task = asyncio.create_task(c.get(provider.api_url + "cancelled"))
        assert await asyncio.to_thread(endpoint.arrived.wait, 60), "no refresh started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        endpoint.release.set()
        await c.aclose()  # the transport's own AsyncRekey: waits for the call in flight

    asyncio.run(main())
    d = delta(provider.stats(), before)
    assert (d["refreshes_granted"], d["reused_refresh_tokens"], d["invalid_grant"]) == (1, 0, 0), d
    assert provider.refresh_token_live(stored_tokens(store, "c")["refresh_token"])
    assert record_is_settled(store, "c")


def test_a_call_cancelled_before_it_starts_is_never_sent(client, held, tmp_path):
    provider, endpoint = held
    settings = provider.settings(token_url=endpoint.url)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, provider.authorize())
    provider.admin("POST", "expire-access-tokens")

    async def main():
        arekey = rekey.AsyncRekey(client, max_workers=1)  # the second call waits for the first's thread
        first = asyncio.create_task(arekey.send(settings, rekey.Request.get(provider.api_url + "first"),
                                                store=store, credential="c"))
        assert await asyncio.to_thread(endpoint.arrived.wait, 60), "no refresh started"
        second = asyncio.create_task(arekey.send(settings, rekey.Request.get(provider.api_url + "second"),
                                                 store=store, credential="c"))
        await asyncio.sleep(0)  # let `second` run to its await: its call is submitted, queued behind `first`
        assert len(arekey._in_flight) == 2
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        endpoint.release.set()
        resp = await first
        await arekey.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await arekey.send(settings, rekey.Request.get(provider.api_url + "late"), store=store, credential="c")
        return resp

    assert asyncio.run(main()).status == 200
    assert "second" not in [e["path"] for e in provider.api_log()]
    assert endpoint.requests == 1


def test_async_rekey_arguments(client):
    with pytest.raises(TypeError, match="not both"):
        rekey.AsyncRekey(client, wasm="x.wasm")
    with pytest.raises(TypeError, match="must be a Rekey"):
        rekey.AsyncRekey("x.wasm")
