"""httpx and requests sending through rekey (rekey.httpx_transport,
rekey.requests_adapter), against the testkit provider and a recording API
on loopback: rotation across expiries, what is forwarded both ways, and
the origin binding."""

from __future__ import annotations

import json

import httpx
import pytest
import requests

import rekey
from conftest import delta
from integration_support import Answer, RecordingApi, long_lived, record_is_settled, stored_tokens
from rekey.httpx_transport import RekeyTransport
from rekey.requests_adapter import RekeyAdapter


@pytest.fixture
def api():
    server = RecordingApi()
    yield server
    server.close()


def httpx_client(client, settings, store):
    return httpx.Client(transport=RekeyTransport(client, settings, store=store, credential="c"))


def requests_session(client, settings, store, prefix):
    session = requests.Session()
    session.mount(prefix, RekeyAdapter(client, settings, store=store, credential="c"))
    return session


def _get(kind, client, provider, store):
    """One GET function per library, each sending through rekey."""
    if kind == "httpx":
        c = httpx_client(client, provider.settings(), store)
        return c, lambda url: c.get(url)
    s = requests_session(client, provider.settings(), store, provider.base_url + "/")
    return s, lambda url: s.get(url)


@pytest.mark.parametrize("kind", ["httpx", "requests"])
def test_rotation_across_expiries(client, provider_factory, tmp_path, kind):
    provider = long_lived(provider_factory)
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), provider.authorize())  # keys as a dict
    session, get = _get(kind, client, provider, store)
    before = provider.stats()
    refresh_tokens = [stored_tokens(store, "c")["refresh_token"]]
    with session:
        for call in range(3):
            if call:
                provider.admin("POST", "expire-access-tokens")
            resp = get(provider.api_url + f"call{call}")
            status = resp.status_code
            assert status == 200, f"call {call}: HTTP {status}"
            assert resp.json()["path"] == f"call{call}"
            refresh_tokens.append(stored_tokens(store, "c")["refresh_token"])
    d = delta(provider.stats(), before)
    assert d["refreshes_granted"] == 2, d
    assert d["reused_refresh_tokens"] == 0 and d["invalid_grant"] == 0, d
    assert refresh_tokens[0] == refresh_tokens[1] != refresh_tokens[2] != refresh_tokens[3]
    assert [provider.refresh_token_live(t) for t in dict.fromkeys(refresh_tokens)] == [False, False, True]
    assert record_is_settled(store, "c")


def _bound_to(provider, api):
    settings = provider.settings(api_origins=[api.origin])
    store = rekey.MemoryStore()
    store.put("c", settings, provider.authorize())
    return settings, store


BINARY = bytes(range(256)) * 3


def _check_forwarded(seen, store, method):
    assert seen.method == method
    assert seen.target == "/v1/things?q=a+b&x=1&x=2"
    headers = [(k.lower(), v) for k, v in seen.headers]
    assert ("x-trace", "t1") in headers
    assert [v for k, v in headers if k == "x-dup"] == ["1", "2"]
    # rekey's own token, never the caller's Authorization.
    assert [v for k, v in headers if k == "authorization"] == [f"Bearer {stored_tokens(store, 'c')['access_token']}"]
    assert seen.body == BINARY
    assert dict(headers)["content-length"] == str(len(BINARY))


def test_httpx_forwards_request_and_response(client, provider, api):
    settings, store = _bound_to(provider, api)
    api.answer = Answer(201, [("X-Multi", "a"), ("X-Multi", "b"), ("Content-Type", "application/octet-stream")],
                        BINARY, gzip=True)
    with httpx_client(client, settings, store) as c:
        resp = c.request("PATCH", api.origin + "/v1/things", params=[("q", "a b"), ("x", "1"), ("x", "2")],
                         headers=[("X-Trace", "t1"), ("X-Dup", "1"), ("X-Dup", "2"), ("Authorization", "Bearer caller")],
                         content=BINARY)
    [seen] = api.seen
    _check_forwarded(seen, store, "PATCH")
    assert resp.status_code == 201 and resp.reason_phrase == "Created"
    assert resp.headers.get_list("x-multi") == ["a", "b"]
    assert resp.headers["content-encoding"] == "gzip"  # httpx decoded it, as with its own transport
    assert resp.content == BINARY
    assert resp.http_version == "HTTP/1.1"
    assert str(resp.request.url) == api.origin + "/v1/things?q=a+b&x=1&x=2"


def test_requests_forwards_request_and_response(client, provider, api):
    settings, store = _bound_to(provider, api)
    api.answer = Answer(201, [("X-Multi", "a"), ("X-Multi", "b"), ("Set-Cookie", "s=1; Path=/"),
                              ("Set-Cookie", "t=2; Path=/")], BINARY, gzip=True)
    with requests_session(client, settings, store, api.origin + "/") as s:
        resp = s.request("PATCH", api.origin + "/v1/things", params=[("q", "a b"), ("x", "1"), ("x", "2")],
                         headers={"X-Trace": "t1", "Authorization": "Bearer caller"}, data=BINARY)
        assert resp.status_code == 201 and resp.reason == "Created"
        assert resp.headers["x-multi"] == "a, b"  # joined, as requests' own adapter does
        assert resp.content == BINARY  # decoded from gzip by urllib3, as usual
        assert s.cookies.get_dict() == {"s": "1", "t": "2"}  # both Set-Cookie headers reached the jar
        s.get(api.origin + "/again")
    first, again = api.seen
    assert (first.method, first.target, first.body) == ("PATCH", "/v1/things?q=a+b&x=1&x=2", BINARY)
    headers = [(k.lower(), v) for k, v in first.headers]
    assert ("x-trace", "t1") in headers
    assert [v for k, v in headers if k == "authorization"] == [f"Bearer {stored_tokens(store, 'c')['access_token']}"]
    cookie = dict((k.lower(), v) for k, v in again.headers)["cookie"]
    assert sorted(cookie.split("; ")) == ["s=1", "t=2"]


def test_httpx_streamed_request_body_is_sent_whole(client, provider, api):
    settings, store = _bound_to(provider, api)
    with httpx_client(client, settings, store) as c:
        resp = c.post(api.origin + "/upload", content=iter([b"ab", b"", b"cd"]))  # chunked in httpx's terms
    assert resp.status_code == 200
    [seen] = api.seen
    assert seen.body == b"abcd"
    headers = {k.lower(): v for k, v in seen.headers}
    assert headers["content-length"] == "4" and "transfer-encoding" not in headers


def test_requests_redirect_is_followed_through_rekey(client, provider_factory):
    provider = long_lived(provider_factory)
    store = rekey.MemoryStore()
    store.put("c", provider.settings(), provider.authorize())
    before = provider.stats()
    with requests_session(client, provider.settings(), store, provider.base_url + "/") as s:
        resp = s.get(provider.api_url + "redirect")  # 302 to /api/me, same origin
    assert resp.status_code == 200 and resp.json()["path"] == "me"
    assert [r.status_code for r in resp.history] == [302]
    assert delta(provider.stats(), before)["api_unauthorized"] == 0  # both hops carried the token


@pytest.mark.parametrize("kind", ["httpx", "requests"])
def test_refused_origin_raises_and_sends_nothing(client, provider, api, kind):
    store = rekey.MemoryStore()
    store.put("c", provider.settings(), provider.authorize())  # bound to the testkit's API, not `api`
    before = provider.stats()
    if kind == "httpx":
        with httpx_client(client, provider.settings(), store) as c, pytest.raises(rekey.InvalidSettings) as caught:
            c.get(api.origin + "/steal")
    else:
        with requests_session(client, provider.settings(), store, "http://") as s, \
                pytest.raises(rekey.InvalidSettings) as caught:
            s.get(api.origin + "/steal")
    assert "not one of the credential's API origins" in str(caught.value)
    assert api.seen == []  # nothing reached the other origin
    d = delta(provider.stats(), before)
    assert d["api_calls"] == 0 and d["token_calls"] == 0, d


def test_httpx_mounted_on_the_api_origin_leaves_other_sites_alone(client, provider, api):
    store = rekey.MemoryStore()
    store.put("c", provider.settings(), provider.authorize())
    transport = RekeyTransport(client, provider.settings(), store=store, credential="c")
    with httpx.Client(mounts={provider.base_url: transport}) as c:
        assert c.get(provider.api_url + "me").status_code == 200  # through rekey: the token goes
        assert c.get(api.origin + "/public").status_code == 200  # httpx's own transport: no token
    [seen] = api.seen
    assert "authorization" not in {k.lower() for k, _ in seen.headers}


def test_requests_refuses_a_client_certificate(client, provider, api):
    settings, store = _bound_to(provider, api)
    with requests_session(client, settings, store, api.origin + "/") as s, pytest.raises(ValueError, match="client certificate"):
        s.get(api.origin + "/x", cert="/nonexistent/cert.pem")
    assert api.seen == []


def test_bindings_are_checked_when_made(client, provider):
    for make in (RekeyTransport, RekeyAdapter):
        with pytest.raises(TypeError, match="credential="):
            make(client, provider.settings(), store=rekey.MemoryStore())
        with pytest.raises(TypeError, match="pass store= and credential="):
            make(client, provider.settings())
        with pytest.raises(TypeError, match="keys must be a dict"):
            make(client, provider.settings(), keys=b"{}", on_update_keys=lambda k: None)
        with pytest.raises(TypeError, match="rekey.Rekey"):
            make("not a rekey", provider.settings(), store=rekey.MemoryStore(), credential="c")


def test_httpx_callback_style_with_keys_as_dict(client, provider_factory):
    provider = long_lived(provider_factory)
    saved: list[str] = []
    transport = RekeyTransport(client, provider.settings(), credential="cb-httpx", keys=provider.authorize(),
                               on_update_keys=saved.append)
    with httpx.Client(transport=transport) as c:
        assert c.get(provider.api_url + "one").status_code == 200
        provider.admin("POST", "expire-access-tokens")
        assert c.get(provider.api_url + "two").status_code == 200
    assert len(saved) == 1  # the one refresh's keys, persisted before the retry
    assert provider.refresh_token_live(json.loads(saved[0])["refresh_token"])
