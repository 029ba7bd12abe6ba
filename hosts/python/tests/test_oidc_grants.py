"""Every grant and client-authentication method against oidc-provider (issue
#21's acceptance), end to end: the real component, real HTTP on loopback to
``tests/oidc/server.mjs`` (npm oidc-provider, 2-second access tokens, DPoP
nonces off: none of these clients uses DPoP; ``test_dpop.py`` covers that),
verdicts from the server's own counters (``GET /_stats``).

- client credentials without DPoP, the client authenticated by
  ``client_secret_basic`` and by ``client_secret_post``: /_api/whoami over
  two expiries, every call 200 as a Bearer token, one grant per expiry (the
  first because nothing was stored), every grant authenticated the
  configured way, no refresh token ever stored.
- ``private_key_jwt`` (RFC 7523 §2.2): a client registered with only the
  public JWK of a key made here (no secret at the server; the settings carry
  one that must never be sent), authorised through the code flow (PKCE;
  ``follow.mjs`` plays the browser), then /me over two expiries: every call
  200, every token request (the code exchange and each refresh)
  authenticated by a signed assertion, refresh tokens rotate, no error at
  the token endpoint (no invalid_grant, no reused jti), no grant revoked.
  ES256 with the default audience (the token URL) and RS256 with the issuer
  as the audience.
- the JWT bearer grant (RFC 7523 §2.1, server.mjs's registered grant): an
  assertion for a subject (ES256 from a public client, aud the token URL;
  RS256 from a private_key_jwt client, aud the issuer), /_api/whoami over
  two expiries, the subject seen by the server, no refresh token stored;
  an assertion signed with a key the server does not know is refused: a
  settings error, nothing stored.

Keys are generated per test (cryptography), written under tmp_path, never
committed; no key text may show in a log line or error. Waits between calls
pace the loop; a verdict never rests on timing. Without Node.js and
oidc-provider the scenarios skip loudly (fail under REKEY_REQUIRE_PEERS=1)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import subprocess
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import rekey
from conftest import stored_keys
from rekey import Request, Settings, Signing, SqliteStore

#: Access-token expiries each scenario lives through (brief: at least two).
EXPIRIES = 2
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _ta():
    import test_authorize as ta  # the oidc-provider helpers (node, follow.mjs, the start URL)

    return ta


# ---------------------------------------------------------------- keys


def new_key(alg: str):
    return ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048)


def write_key(tmp_path, name: str, key):
    path = tmp_path / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


def key_texts(key) -> list[str]:
    """Lines of the key's PEM (each format) and its private number: none may show."""
    texts = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
        texts += [line for line in pem.splitlines()[1:-1] if len(line) >= 16]
    numbers = key.private_numbers()
    secret = numbers.private_value if isinstance(key, ec.EllipticCurvePrivateKey) else numbers.d
    return texts + [str(secret), f"{secret:x}"]


def _b64(n: int, length: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def public_jwk(key, kid: str) -> dict:
    """The registration's JWK: public members only, computed here."""
    numbers = key.public_key().public_numbers()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x, 32), "y": _b64(numbers.y, 32), "alg": "ES256"}
    else:
        jwk = {"kty": "RSA", "n": _b64(numbers.n, (numbers.n.bit_length() + 7) // 8), "e": _b64(numbers.e, 3),
               "alg": "RS256"}
    return {**jwk, "kid": kid, "use": "sig"}


# ---------------------------------------------------------------- the peer


class Peer:
    """server.mjs with these client registrations (DPoP nonces off)."""

    def __init__(self, registrations: list[dict]):
        ta = _ta()
        self.ta = ta
        self.node = ta._node()
        env = dict(os.environ, OIDC_PORT="0", OIDC_ACCESS_TOKEN_TTL="2", OIDC_MAX_LIFETIME="300",
                   OIDC_DPOP_NONCE="0", OIDC_CLIENTS=json.dumps(registrations))
        self.proc = subprocess.Popen([self.node, str(ta.OIDC_DIR / "server.mjs")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server.mjs exited before announcing itself: {self.proc.wait()}")
        self.issuer = json.loads(line)["issuer"]
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.issuer))
        self.token_url = f"{self.issuer}/token"
        self.whoami = f"{self.issuer}/_api/whoami"

    def follow(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([self.node, str(self.ta.OIDC_DIR / "follow.mjs"), *args], stdout=subprocess.PIPE)

    def all_stats(self) -> dict:
        url = urllib.parse.urlsplit(self.issuer)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/_stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self, client_id: str) -> dict:
        return self.all_stats()["clients"].get(client_id) or {}

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def peer():
    started: list[Peer] = []

    def start(registrations: list[dict]) -> Peer:
        p = Peer(registrations)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def assert_nothing_shown(text: str, secrets) -> None:
    for s in secrets:
        if isinstance(s, str) and len(s) >= 8:
            assert s not in text, "a secret value shows"


def whoami_until(client, p: Peer, settings, store, cid: str, counter: str, grants: int,
                 sub: str | None = None) -> tuple[int, list[dict]]:
    """Calls /_api/whoami through rekey until the server counted ``grants``
    of ``counter`` for ``cid``; every call must answer 200 for ``cid`` as a
    Bearer token (for ``sub``, a jwt-bearer token's subject, when given).
    Returns the calls made and each distinct stored key set, in order."""
    calls = 0
    seen: list[dict] = []
    give_up = time.monotonic() + 60
    while True:
        resp = client.send(settings, Request.get(p.whoami), store=store, credential="c")
        calls += 1
        assert resp.status == 200, (resp, resp.headers)
        expected = {"client_id": cid, "scope": None, "token_type": "Bearer", **({"sub": sub} if sub else {})}
        assert resp.json() == expected
        keys = json.loads(stored_keys(store))
        if not seen or keys["access_token"] != seen[-1]["access_token"]:
            seen.append(keys)
        if p.stats(cid).get(counter, 0) >= grants:
            return calls, seen
        assert time.monotonic() < give_up, f"{cid}: fewer than {grants} {counter} grants"
        time.sleep(0.25)  # pacing, not a verdict


def assert_no_refresh_state(store) -> None:
    keys = json.loads(stored_keys(store))
    assert "refresh_token" not in keys, "the grant keeps no refresh token"
    data = store.read("c").data
    assert data.refresh_mark is None and data.lease is None and data.dead_grant is None


# ---------------------------------------------------------------- client credentials


@pytest.mark.parametrize("auth", ["basic", "post"])
def test_client_credentials_without_dpop_over_two_expiries(client, peer, tmp_path, caplog, auth):
    caplog.set_level(logging.DEBUG)
    cid, secret = f"cc-{auth}", f"cc-{auth}:s3cr&t +%/?="
    p = peer([{"client_id": cid, "client_secret": secret, "token_endpoint_auth_method": f"client_secret_{auth}",
               "grant_types": ["client_credentials"]}])
    settings = Settings(token_url=p.token_url, client_id=cid, client_secret=secret, client_auth=auth,
                        grant="client_credentials", api_origins=[p.origin])
    store = SqliteStore(tmp_path / "cc.db")
    store.put("c", settings, None)  # nothing stored: the first call fetches a token
    assert not store.show("c").has_keys

    grants = EXPIRIES + 1
    calls, sets = whoami_until(client, p, settings, store, cid, "client_credentials", grants)
    s = p.stats(cid)
    assert s["client_credentials"] == grants, s
    assert s["auth_seen"] == {"basic": 0, "post": 0, "private_key_jwt": 0, "none": 0, auth: grants}, s
    assert s["grant_errors"] == {} and s["grants_revoked"] == 0, s
    # One grant per expiry: each later grant followed exactly one 401 (OnAuthFailure), then 200.
    assert (s["api_ok"], s["api_rejected"]) == (calls, grants - 1), s
    assert (s["dpop_proofs"], s["dpop_tokens"], s["refreshes"], s["code_exchanges"]) == (0, 0, 0, 0), s
    assert len(sets) == grants, "each grant's token was stored, and only those"
    for keys in sets:
        assert "refresh_token" not in keys and keys["token_type"].lower() == "bearer", keys
    assert_no_refresh_state(store)
    all_stats = p.all_stats()
    assert all_stats["server_errors"] == 0 and all_stats["api_rejected_unknown"] == 0
    assert_nothing_shown(caplog.text, [secret, *(k["access_token"] for k in sets)])


# ---------------------------------------------------------------- private_key_jwt


@pytest.mark.parametrize("alg, audience", [("ES256", "token_url"), ("RS256", "issuer")])
def test_private_key_jwt_code_flow_then_refresh_rotation_over_two_expiries(client, peer, tmp_path, caplog, alg,
                                                                           audience):
    caplog.set_level(logging.DEBUG)
    key = new_key(alg)
    key_file = write_key(tmp_path, f"client-{alg}.pem", key)
    cid = f"pkjwt-{alg.lower()}"
    # The server knows only the public JWK: no client secret is registered.
    p = peer([{
        "client_id": cid, "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public_jwk(key, "k-1")]}, "application_type": "native",
        "redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code", "refresh_token"],
    }])
    ta = p.ta
    # A client secret in the settings too: the key proves the client, the secret is never sent
    # (oidc-provider refuses a request that carries a secret besides the assertion).
    secret = "never-sent-client-s3cret"
    signing = Signing(alg, key_id="k-1", key_file=key_file,
                      **({"audience": p.issuer} if audience == "issuer" else {}))
    settings = Settings(
        token_url=p.token_url, authorization_url=f"{p.issuer}/auth", issuer=p.issuer, issuer_sends_iss=True,
        client_id=cid, client_secret=secret, client_auth="private_key_jwt", signing=signing,
        auth_params=[("scope", "openid offline_access")], api_origins=[p.origin],
    )
    store = SqliteStore(tmp_path / "pkjwt.db")
    login = f"user-{cid}"
    seen: dict = {}

    def on_url(url: str) -> None:
        seen["browser"] = ta.Browser(lambda: ta.browse(p.follow("--url", ta.open_start(url), "--login", login)))

    keys = client.authorize_code(settings, on_url=on_url, store=store, credential="c", timeout=60)
    page = seen["browser"].join()
    assert page["status"] == 200, page["body"]
    first = json.loads(stored_keys(store))
    assert first == json.loads(keys.expose())
    assert first["refresh_token"] and first["token_type"].lower() == "bearer"
    s = p.stats(cid)
    assert s["code_exchanges"] == 1 and s["auth_seen"]["private_key_jwt"] == 1, s
    # The stored settings name the key's file and algorithm, never the key.
    column = store.show("c").settings
    assert column["client_auth"] == "private_key_jwt"
    assert column["signing"]["algorithm"] == alg and column["signing"]["key_file"] == str(key_file)

    # /me over EXPIRIES expiries: each refresh is authenticated by a fresh assertion
    # (oidc-provider refuses a jti it has seen), each rotates the refresh token.
    calls = 0
    refresh_tokens = [first["refresh_token"]]
    give_up = time.monotonic() + 90
    while p.stats(cid)["refreshes"] < EXPIRIES:
        resp = client.send(settings, Request.get(f"{p.issuer}/me"), store=store, credential="c")
        calls += 1
        assert resp.status == 200, (resp, resp.headers)
        assert resp.json()["sub"] == login
        current = json.loads(stored_keys(store))
        if current["refresh_token"] != refresh_tokens[-1]:
            refresh_tokens.append(current["refresh_token"])
        assert time.monotonic() < give_up, f"fewer than {EXPIRIES} refreshes"
        time.sleep(0.25)  # pacing, not a verdict

    s = p.stats(cid)
    grants = 1 + s["refreshes"]
    assert s["refreshes"] == EXPIRIES and s["code_exchanges"] == 1, s
    assert s["auth_seen"] == {"basic": 0, "post": 0, "private_key_jwt": grants, "none": 0}, \
        f"every token request authenticated by a signed assertion, no secret: {s}"
    assert s["grant_errors"] == {}, f"no invalid_grant, no refused assertion: {s}"
    assert s["grants_revoked"] == 0, s
    assert len(set(refresh_tokens)) == len(refresh_tokens) == grants, "every refresh rotated the refresh token"
    # OnAuthFailure: each refresh followed exactly one 401 at /me.
    assert (s["userinfo_ok"], s["userinfo_rejected"]) == (calls, s["refreshes"]), s
    all_stats = p.all_stats()
    assert all_stats["server_errors"] == 0 and all_stats["userinfo_rejected_unknown"] == 0
    last = json.loads(stored_keys(store))
    assert_nothing_shown(caplog.text + page["body"] + repr(keys) + repr(settings),
                         [secret, *key_texts(key), *refresh_tokens, first["access_token"], last["access_token"]])


# ---------------------------------------------------------------- jwt-bearer


def jwt_bearer_client(cid: str, jwks: list[dict], auth: str = "none") -> dict:
    """A client allowed only the JWT bearer grant; ``none``: a public client
    (the assertion is what proves it), the component sends just client_id."""
    return {"client_id": cid, "token_endpoint_auth_method": auth, "jwks": {"keys": jwks},
            "grant_types": [JWT_BEARER]}


@pytest.mark.parametrize("alg, auth, audience", [("ES256", "none", "token_endpoint"),
                                                 ("RS256", "private_key_jwt", "issuer")])
def test_jwt_bearer_over_two_expiries_subject_seen_nothing_refreshable(client, peer, tmp_path, caplog, alg, auth,
                                                                       audience):
    """ES256 from a public client, the assertion's aud the token URL (the
    default); RS256 from a private_key_jwt client (the same key signs the
    grant's assertion and the client's), aud the issuer."""
    caplog.set_level(logging.DEBUG)
    key = new_key(alg)
    key_file = write_key(tmp_path, "bearer.pem", key)
    cid, subject = f"jwt-bearer-{alg.lower()}", "svc-7@example.test"
    p = peer([jwt_bearer_client(cid, [public_jwk(key, "bearer-1")], auth)])
    settings = Settings(token_url=p.token_url, client_id=cid, grant="jwt_bearer", subject=subject,
                        client_auth="private_key_jwt" if auth == "private_key_jwt" else "basic",
                        signing=Signing(alg, key_id="bearer-1", key_file=key_file,
                                        **({"audience": p.issuer} if audience == "issuer" else {})),
                        api_origins=[p.origin])
    store = SqliteStore(tmp_path / "bearer.db")
    store.put("c", settings, None)  # nothing stored: the first call fetches a token
    column = store.show("c").settings
    assert (column["grant"], column["subject"]) == ("jwt-bearer", subject), column
    assert column["signing"] == {"algorithm": alg, "key_id": "bearer-1", "key_file": str(key_file),
                                 **({"audience": p.issuer} if audience == "issuer" else {})}, column

    grants = EXPIRIES + 1
    calls, sets = whoami_until(client, p, settings, store, cid, "jwt_bearer", grants, sub=subject)
    s = p.stats(cid)
    assert s["jwt_bearer"] == grants, s
    assert s["last_jwt_bearer_subject"] == subject, s
    assert s["jwt_bearer_refused"] == 0 and s["jwt_bearer_refused_reasons"] == {}, \
        f"no assertion refused (a fresh jti each time): {s}"
    assert s["grant_errors"] == {}, s
    assert s["auth_seen"] == {"basic": 0, "post": 0, "private_key_jwt": 0, "none": 0, auth: grants}, \
        f"authenticated as registered, no secret: {s}"
    assert s["jwt_bearer_aud"] == {"issuer": 0, "token_endpoint": 0, audience: grants}, s
    assert (s["client_credentials"], s["refreshes"], s["code_exchanges"]) == (0, 0, 0), s
    # One grant per expiry: each later grant followed exactly one 401, then 200.
    assert (s["api_ok"], s["api_rejected"]) == (calls, grants - 1), s
    assert len(sets) == grants, "each grant's token was stored, and only those"
    for keys in sets:
        assert "refresh_token" not in keys and keys["token_type"].lower() == "bearer", keys
    assert_no_refresh_state(store)
    all_stats = p.all_stats()
    assert all_stats["server_errors"] == 0 and all_stats["api_rejected_unknown"] == 0
    assert_nothing_shown(caplog.text + repr(settings), [*key_texts(key), *(k["access_token"] for k in sets)])


def test_jwt_bearer_with_a_key_the_server_does_not_know_is_a_settings_error_nothing_stored(client, peer, tmp_path,
                                                                                           caplog):
    caplog.set_level(logging.DEBUG)
    registered, unknown = new_key("ES256"), new_key("ES256")
    cid = "jwt-bearer-unknown-key"
    p = peer([jwt_bearer_client(cid, [public_jwk(registered, "bearer-1")])])
    # The right kind of key, the registered kid even, but not the registered key.
    settings = Settings(token_url=p.token_url, client_id=cid, grant="jwt_bearer", subject="svc-8@example.test",
                        signing=Signing("ES256", key_id="bearer-1", key_file=write_key(tmp_path, "x.pem", unknown)),
                        api_origins=[p.origin])
    store = SqliteStore(tmp_path / "unknown.db")
    store.put("c", settings, None)

    with pytest.raises(rekey.SettingsRejected) as caught:
        client.send(settings, Request.get(p.whoami), store=store, credential="c")
    assert caught.value.category is rekey.Category.SETTINGS_WRONG
    assert caught.value.code == "invalid_grant", caught.value.code
    s = p.stats(cid)
    assert s.get("jwt_bearer", 0) == 0 and s["grant_errors"] == {"invalid_grant": 1}, s
    assert (s["jwt_bearer_refused"], s["jwt_bearer_refused_reasons"]) == (1, {"signature": 1}), s
    assert s["last_jwt_bearer_subject"] is None, s
    assert (s["api_ok"], s["api_rejected"]) == (0, 0), "the API was never called"
    # No token stored: only the component's memory of the refusal, if anything.
    kept = json.loads(stored_keys(store) or "{}")
    assert set(kept) <= {"rekey_refused"}, kept
    data = store.read("c").data
    assert data.refresh_mark is None and data.lease is None and data.dead_grant is None

    # The same settings again within the minute: refused without a request.
    with pytest.raises(rekey.SettingsRejected):
        client.send(settings, Request.get(p.whoami), store=store, credential="c")
    assert p.stats(cid) == s, "nothing sent"
    assert_nothing_shown(caplog.text + str(caught.value) + repr(caught.value), key_texts(unknown))
