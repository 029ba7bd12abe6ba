"""DPoP (RFC 9449, contract 0.5.0): the host's side and the whole flow.

The host's side (no peer needed):
- ``Dpop`` settings: the key's algorithm and source (file, variable, key
  object), as ``Signing``; persisted as ``{"algorithm", "key_file" |
  "key_env"}``, never the key; repr redacts; the WIT settings get the
  algorithm as their last field.
- ``signer.dpop-public-key``: the public JWK from the key's public numbers
  (base64url without padding, only public members); an error, never key
  text, without a key or with a key of another type.
- ``signer.dpop-sign``'s check (the same rule in every host): a wrong typ,
  alg or header member, a foreign jwk or one with a private member, an htu
  outside the credential's origins (or with a query), a stale iat, a short
  jti, a bad ath, an extra claim... each refused naming the member, nothing
  signed, and the key not read for what can be checked without it. A good
  proof is signed: ES256 as the 64-byte r || s, RS256 PKCS#1 v1.5.

End to end against oidc-provider (``tests/oidc/server.mjs`` with DPoP and
server nonces required at /token, /me and /_api/whoami), the real component:
- a public client authorised through the code flow with a DPoP key, then
  /me over three access-token expiries: every call 200, refresh tokens
  rotate, no invalid_grant, no revoked grant, every token request carried a
  proof, every access token is DPoP-bound, the stored token_type is DPoP,
  and nonce challenges were answered; the same set without dpop settings is
  InvalidSettings with nothing sent; with another DPoP key its refresh is
  refused (the refresh token is bound to the key).
- client credentials (a confidential client, RS256 DPoP key) calling
  /_api/whoami, which accepts the token only as DPoP with a proof of its key.

oidc-provider runs under Node.js from ``tests/oidc``; without it the
end-to-end scenarios skip loudly (fail under ``REKEY_REQUIRE_PEERS=1``)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import pickle
import secrets
import subprocess
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import rekey
from conftest import stored_keys
from rekey import Dpop, HttpConfig, MemoryStore, Request, Settings, SqliteStore
from rekey import signing as rekey_signing
from rekey import wit as rekey_wit
from rekey.authorize import AuthorizeImports
from rekey.client import CallState
from rekey.model import settings_json

TOKEN_URL = "https://login.example.com/oauth2/token"
API = "https://api.example.com"


# ---------------------------------------------------------------- helpers


def b64(value) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def key_texts(key) -> list[str]:
    """Lines of the key's PEM: none may appear in a message."""
    return [line for line in pem(key).decode().splitlines()[1:-1] if len(line) >= 16]


def jwk_of(key) -> dict:
    """The public JWK, computed here independently of the host's code."""
    numbers = key.public_key().public_numbers()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"kty": "EC", "crv": "P-256", "x": b64(numbers.x.to_bytes(32, "big")).decode(),
                "y": b64(numbers.y.to_bytes(32, "big")).decode()}
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "n": b64(n).decode(), "e": b64(numbers.e.to_bytes(3, "big")).decode()}


def proof_input(key, alg="ES256", header=None, claims=None, drop=()) -> bytes:
    """``header.claims`` of a DPoP proof as the component builds it, with overrides."""
    h = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk_of(key)}
    c = {"jti": secrets.token_hex(16), "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())}
    h.update(header or {})
    c.update(claims or {})
    for name in drop:
        h.pop(name, None)
        c.pop(name, None)
    return b64(h) + b"." + b64(c)


def dpop_settings(dpop, **extra) -> Settings:
    fields = dict(token_url=TOKEN_URL, client_id="dpop-client", client_secret=None, api_origins=[API], dpop=dpop)
    fields.update(extra)
    return Settings(**fields)


def api_refusal(url: str):
    """The API check a send makes, for unit tests without a component: only API's origin."""
    u = urllib.parse.urlsplit(url)
    return None if f"{u.scheme}://{u.netloc}" == API else "not an allowed origin"


@pytest.fixture
def counted(monkeypatch):
    """Counts key reads (``_read_source``) and signatures (``sign_with``)."""
    counts = {"reads": 0, "signatures": 0}
    read, sign = rekey_signing._read_source, rekey_signing.sign_with

    def counting_read(*args):
        counts["reads"] += 1
        return read(*args)

    def counting_sign(*args):
        counts["signatures"] += 1
        return sign(*args)

    monkeypatch.setattr(rekey_signing, "_read_source", counting_read)
    monkeypatch.setattr(rekey_signing, "sign_with", counting_sign)
    return counts


@pytest.fixture
def es_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "dpop-es.pem"
    path.write_bytes(pem(key))
    return key, path


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def verify(key, alg: str, data: bytes, signature: bytes) -> None:
    if alg == "ES256":
        assert len(signature) == 64, "ES256 is r || s, 64 bytes (not DER)"
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))
    else:
        assert len(signature) == key.key_size // 8
        key.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


# ---------------------------------------------------------------- settings


def test_dpop_settings_sources_dict_repr_and_persisted_json(es_key, rsa_key, tmp_path, monkeypatch):
    key, path = es_key
    by_file = Dpop("es256", key_file=path)
    assert by_file.algorithm is rekey.SigningAlgorithm.ES256
    assert Settings(token_url=TOKEN_URL, client_id="c", dpop={"algorithm": "ES256", "key_file": str(path)}).dpop == by_file
    by_env = Dpop("RS256", key_env="DPOP_KEY_PEM")
    in_memory = Dpop("RS256", key=rsa_key)

    # repr names the source, never a key.
    for d in (by_file, by_env, in_memory):
        shown = repr(d) + str(d) + repr(dpop_settings(d))
        for line in key_texts(key) + key_texts(rsa_key):
            assert line not in shown
    assert "key=[redacted]" in repr(in_memory)
    assert repr(by_env) == "Dpop(algorithm='RS256', key_env='DPOP_KEY_PEM')"

    # Persisted: the algorithm and the key's file (absolute) or variable, never the key.
    monkeypatch.chdir(tmp_path)
    relative = Dpop("ES256", key_file="dpop-es.pem")
    column = json.loads(settings_json(dpop_settings(relative)))
    assert column["dpop"] == {"algorithm": "ES256", "key_file": str(path)}
    assert json.loads(settings_json(dpop_settings(by_env)))["dpop"] == {"algorithm": "RS256", "key_env": "DPOP_KEY_PEM"}
    assert "dpop" not in json.loads(settings_json(dpop_settings(None)))
    with pytest.raises(rekey.InvalidSettings, match="DPoP key with key_file= or key_env="):
        settings_json(dpop_settings(in_memory))
    with pytest.raises(TypeError, match="in-memory key cannot be pickled"):
        pickle.dumps(in_memory)
    assert pickle.loads(pickle.dumps(by_file)) == by_file

    # A stored credential's settings go through a store as this JSON.
    store = SqliteStore(tmp_path / "s.db")
    store.put("c", dpop_settings(by_file), None)
    with pytest.raises(rekey.InvalidSettings):
        store.put("d", dpop_settings(in_memory), None)


@pytest.mark.parametrize("bad, match", [
    (dict(), "exactly one key source.*got none"),
    (dict(key_file="/k.pem", key_env="K"), "exactly one key source.*got key_file, key_env"),
    (dict(key_env=""), "dpop key_env is empty"),
    (dict(key="PEM TEXT"), "dpop key= must be a cryptography"),
])
def test_dpop_settings_refuse_bad_key_sources(bad, match):
    with pytest.raises(rekey.InvalidSettings, match=match):
        Dpop("ES256", **bad)


def test_dpop_settings_refuse_unknown_fields_a_signing_and_wrong_key_types(rsa_key):
    with pytest.raises(rekey.InvalidSettings, match="unknown dpop field.*'key_id'"):
        dpop_settings({"algorithm": "ES256", "key_env": "K", "key_id": "x"})
    with pytest.raises(rekey.InvalidSettings, match="dpop needs an algorithm"):
        dpop_settings({"key_env": "K"})
    with pytest.raises(rekey.InvalidSettings, match="not a rekey.Signing"):
        dpop_settings(rekey.Signing("ES256", key_env="K"))
    with pytest.raises(rekey.InvalidSettings, match="unknown signing algorithm"):
        Dpop("HS256", key_env="K")
    with pytest.raises(rekey.InvalidSettings, match="in-memory DPoP key is an RSA 2048-bit key; ES256 needs an EC key"):
        Dpop("ES256", key=rsa_key)


def test_wit_settings_carry_the_dpop_algorithm_last(es_key):
    _, path = es_key
    record = rekey_wit.settings(dpop_settings(Dpop("ES256", key_file=path)))
    assert record.dpop == "es256"
    assert list(vars(record))[-1] == "dpop", "dpop is the settings record's last field"
    assert rekey_wit.settings(dpop_settings(None)).dpop is None
    assert rekey_wit.settings(dpop_settings(Dpop("RS256", key_env="K"))).dpop == "rs256"


# ---------------------------------------------------------------- dpop-public-key


def test_dpop_public_key_is_the_public_jwk_from_the_key(es_key, rsa_key, monkeypatch):
    key, path = es_key
    got = rekey_wit.dpop_public_key(dpop_settings(Dpop("ES256", key_file=path)), "es256")
    assert got.tag == "ok"
    jwk = json.loads(got.payload)
    assert jwk == jwk_of(key)
    assert list(jwk) == ["kty", "crv", "x", "y"]
    assert len(jwk["x"]) == len(jwk["y"]) == 43 and "=" not in got.payload
    numbers = key.public_key().public_numbers()
    assert int.from_bytes(unb64(jwk["x"]), "big") == numbers.x and int.from_bytes(unb64(jwk["y"]), "big") == numbers.y

    monkeypatch.setenv("DPOP_RSA_PEM", pem(rsa_key).decode())
    got = rekey_wit.dpop_public_key(dpop_settings(Dpop("RS256", key_env="DPOP_RSA_PEM")), "rs256")
    assert got.tag == "ok"
    jwk = json.loads(got.payload)
    assert set(jwk) == {"kty", "n", "e"} and jwk["kty"] == "RSA" and jwk["e"] == "AQAB"
    n = unb64(jwk["n"])
    assert len(n) == 256 and n[0] != 0, "the modulus without a leading zero byte"
    assert int.from_bytes(n, "big") == rsa_key.public_key().public_numbers().n
    for private in ("d", "p", "q", "dp", "dq", "qi"):
        assert private not in jwk

    # The in-memory key gives the same.
    assert json.loads(rekey_wit.dpop_public_key(dpop_settings(Dpop("RS256", key=rsa_key)), "rs256").payload) == jwk


def test_dpop_public_key_errors_name_the_source_never_the_key(es_key, rsa_key, tmp_path):
    key, path = es_key
    cases = [
        (dpop_settings(None), "es256", "no DPoP key is configured"),
        (dpop_settings(Dpop("ES256", key_file=path)), "rs256", "asked for an RS256 DPoP key"),
        (dpop_settings(Dpop("RS256", key_file=path)), "rs256", f"the DPoP key file {path} is an EC secp256r1 key"),
        (dpop_settings(Dpop("ES256", key_file=tmp_path / "absent.pem")), "es256", "cannot be read"),
        (dpop_settings(Dpop("ES256", key_env="REKEY_TEST_UNSET_DPOP")), "es256", "REKEY_TEST_UNSET_DPOP is not set"),
    ]
    for settings, alg, expected in cases:
        got = rekey_wit.dpop_public_key(settings, alg)
        assert got.tag == "err", expected
        assert expected in got.payload
        for line in key_texts(key):
            assert line not in got.payload


# ---------------------------------------------------------------- dpop-sign: the host's check


def test_dpop_sign_signs_a_good_proof_es256_and_rs256(es_key, rsa_key, counted):
    key, path = es_key
    settings = dpop_settings(Dpop("ES256", key_file=path))
    data = proof_input(key, claims={"nonce": "n-1"})
    signature = rekey_wit.dpop_sign(settings, "es256", data, api_refusal)
    assert isinstance(signature, bytes), signature
    verify(key, "ES256", data, signature)
    assert counted == {"reads": 1, "signatures": 1}

    # An API proof: htm GET, htu an allowed origin's URL, ath of the token.
    ath = b64(hashlib.sha256(b"access-token").digest()).decode()
    api_proof = proof_input(key, claims={"htm": "GET", "htu": f"{API}/v1/me", "ath": ath})
    verify(key, "ES256", api_proof, rekey_wit.dpop_sign(settings, "es256", api_proof, api_refusal))

    rs = dpop_settings(Dpop("RS256", key=rsa_key))
    data = proof_input(rsa_key, "RS256")
    verify(rsa_key, "RS256", data, rekey_wit.dpop_sign(rs, "rs256", data, api_refusal))
    # The token URL without its query is the token URL too (the component drops it from htu).
    with_query = dpop_settings(Dpop("RS256", key=rsa_key), token_url=TOKEN_URL + "?tenant=7")
    assert isinstance(rekey_wit.dpop_sign(with_query, "rs256", data, None), bytes)


def _refusals(key, other):
    """(what, header overrides, claim overrides, drop, the member the refusal must name)."""
    now = int(time.time())
    return [
        ("wrong typ", {"typ": "JWT"}, {}, (), "typ"),
        ("no typ", {}, {}, ("typ",), "typ"),
        ("alg other than configured", {"alg": "RS256"}, {}, (), "alg"),
        ("alg none", {"alg": "none"}, {}, (), "alg"),
        ("a kid", {"kid": "k-1"}, {}, (), "kid"),
        ("a jku", {"jku": "https://evil.example/jwks"}, {}, (), "jku"),
        ("an x5c", {"x5c": "MIIB"}, {}, (), "x5c"),
        ("a crit", {"crit": "exp"}, {}, (), "crit"),
        ("an unnamed header member", {"zz-evil": "x"}, {}, (), "named otherwise"),
        ("no jwk", {}, {}, ("jwk",), "jwk"),
        ("jwk not an object", {"jwk": "abc"}, {}, (), "jwk"),
        ("foreign jwk", {"jwk": jwk_of(other)}, {}, (), "jwk"),
        ("jwk with d", {"jwk": {**jwk_of(key), "d": "AAAA"}}, {}, (), "jwk has the private member d"),
        ("jwk missing y", {"jwk": {k: v for k, v in jwk_of(key).items() if k != "y"}}, {}, (), "jwk"),
        ("htu outside the origins", {}, {"htu": "https://evil.example/token"}, (), "htu"),
        ("htu the API with a query", {}, {"htu": f"{API}/v1/me?x=1"}, (), "htu"),
        # WHATWG reads host api.example.com here; urllib (this host) evil.example.
        ("htu a backslash before @", {}, {"htu": "https://api.example.com\\@evil.example/v1/me"}, (), "parsers read differently"),
        ("htu user information", {}, {"htu": "https://evil.example@api.example.com/v1/me"}, (), "parsers read differently"),
        ("htu a percent in the host", {}, {"htu": "https://api.%65xample.com/v1/me"}, (), "parsers read differently"),
        ("htu the API with a fragment", {}, {"htu": f"{API}/v1/me#f"}, (), "htu"),
        ("htu not http", {}, {"htu": "ftp://api.example.com/x"}, (), "htu"),
        ("htu API over http", {}, {"htu": "http://api.example.com/v1"}, (), "htu"),
        ("htu not a string", {}, {"htu": 7}, (), "htu"),
        ("no htu", {}, {}, ("htu",), "htu"),
        ("htm lower case", {}, {"htm": "post"}, (), "htm"),
        ("htm empty", {}, {"htm": ""}, (), "htm"),
        ("htm with a space", {}, {"htm": "GET X"}, (), "htm"),
        ("no htm", {}, {}, ("htm",), "htm"),
        ("stale iat", {}, {"iat": now - 120}, (), "iat"),
        ("future iat", {}, {"iat": now + 120}, (), "iat"),
        ("iat a float", {}, {"iat": now + 0.5}, (), "iat"),
        ("iat a string", {}, {"iat": str(now)}, (), "iat"),
        ("no iat", {}, {}, ("iat",), "iat"),
        ("short jti", {}, {"jti": "abc"}, (), "jti"),
        ("jti a number", {}, {"jti": 12345678901234567890}, (), "jti"),
        ("no jti", {}, {}, ("jti",), "jti"),
        ("nonce a number", {}, {"nonce": 5}, (), "nonce"),
        ("ath too short", {}, {"ath": "abc"}, (), "ath"),
        ("ath padded", {}, {"ath": "A" * 42 + "="}, (), "ath"),
        ("extra claim exp", {}, {"exp": now + 60}, (), "exp"),
        ("extra claim aud", {}, {"aud": TOKEN_URL}, (), "aud"),
        ("extra claim unnamed", {}, {"evil_claim": "x"}, (), "named otherwise"),
        ("claim an object", {}, {"htu": {"a": 1}}, (), "htu"),
    ]


def test_dpop_sign_check_refuses_each_bad_member_names_it_and_signs_nothing(es_key, counted, caplog):
    caplog.set_level(logging.DEBUG)
    key, path = es_key
    other = ec.generate_private_key(ec.SECP256R1())
    settings = dpop_settings(Dpop("ES256", key_file=path))
    for what, header, claims, drop, named in _refusals(key, other):
        data = proof_input(key, header=header, claims=claims, drop=drop)
        before = dict(counted)
        refusal = rekey_wit.dpop_sign(settings, "es256", data, api_refusal)
        assert isinstance(refusal, str), f"{what}: signed"
        assert refusal.startswith("refused by the host's check of what it signs (DPoP proof): "), (what, refusal)
        assert named in refusal, (what, refusal)
        assert data.decode() not in refusal and data.split(b".")[1].decode() not in refusal
        for part in ("evil.example", "zz-evil", "evil_claim", "k-1"):
            assert part not in refusal, (what, refusal)
        assert counted["signatures"] == before["signatures"], f"{what}: signed"
        if named not in ("jwk", "jwk has the private member d") or what in ("no jwk", "jwk not an object"):
            # What can be checked without the key is: the key is not even read.
            assert counted["reads"] == before["reads"], f"{what}: the key was read"
    for line in key_texts(key):
        assert line not in caplog.text


def test_dpop_sign_check_refuses_bad_shapes_and_algorithms(es_key, counted):
    key, path = es_key
    settings = dpop_settings(Dpop("ES256", key_file=path))
    good = proof_input(key)
    h, c = good.split(b".")
    cases = [
        (good + b".sig", "exactly one '.'"),
        (h + b"=." + c, "ASCII base64url"),
        (h + b"." + b64("[1, 2]"), "claims is not a JSON object"),
        (b64('{"typ":"dpop+jwt","typ":"dpop+jwt","alg":"ES256"}') + b"." + c, "typ appears twice"),
        ("é.x".encode(), "ASCII base64url"),
    ]
    for data, expected in cases:
        refusal = rekey_wit.dpop_sign(settings, "es256", data, api_refusal)
        assert isinstance(refusal, str) and expected in refusal, (data, refusal)
    # The algorithm the component asks must be the configured one.
    refusal = rekey_wit.dpop_sign(settings, "rs256", good, api_refusal)
    assert "alg: the component asked for RS256, the DPoP key is for ES256" in refusal
    # No DPoP key configured: nothing to sign with.
    assert "no DPoP key is configured" in rekey_wit.dpop_sign(dpop_settings(None), "es256", good, api_refusal)
    assert counted == {"reads": 0, "signatures": 0}


def test_dpop_sign_in_a_send_and_in_an_authorisation(client, es_key, counted):
    """The imports as the component calls them: a send's htu may be the
    token URL or a URL its access token may go to (http-send's own check,
    instance_url included); an authorisation's only the token URL."""
    key, path = es_key
    settings = dpop_settings(Dpop("ES256", key_file=path), instance_url_origins=["https://*.my.example.net"])
    state = CallState(client, None, "c", settings)

    def send_sign(data):
        with client._runtime.lock:
            return state.dpop_sign("es256", data)

    authorize = AuthorizeImports(contextlib.nullcontext, HttpConfig(), settings)
    token = proof_input(key)
    api = proof_input(key, claims={"htm": "GET", "htu": f"{API}/v1/me"})
    api_port = proof_input(key, claims={"htm": "GET", "htu": f"{API}:8443/v1/me"})
    instance = proof_input(key, claims={"htm": "GET", "htu": "https://acme.my.example.net/v1/me"})

    verify(key, "ES256", token, send_sign(token))
    verify(key, "ES256", api, send_sign(api))
    assert "htu" in send_sign(api_port)
    assert "htu" in send_sign(instance), "no instance_url seen yet"
    state._saw(json.dumps({"access_token": "a", "instance_url": "https://acme.my.example.net"}))
    verify(key, "ES256", instance, send_sign(instance))

    verify(key, "ES256", token, authorize.dpop_sign("es256", token))
    refusal = authorize.dpop_sign("es256", api)
    assert isinstance(refusal, str) and "htu is not the token URL" in refusal

    with client._runtime.lock:
        got = state.dpop_public_key("es256")
    assert got.tag == "ok" and json.loads(got.payload) == jwk_of(key)
    assert json.loads(authorize.dpop_public_key("es256").payload) == jwk_of(key)


def test_check_settings_loads_the_dpop_key(client, tmp_path):
    missing = dpop_settings(Dpop("ES256", key_file=tmp_path / "absent.pem"))
    with pytest.raises(rekey.InvalidSettings, match="the DPoP key file .*absent.pem cannot be read"):
        client.check_settings(missing)


# ---------------------------------------------------------------- end to end: oidc-provider


def _oidc_helpers():
    import test_authorize as ta  # the oidc-provider helpers (node, follow.mjs, the start URL)

    return ta


class DpopOidc:
    """server.mjs (DPoP with nonces required, 2-second access tokens) with these registrations."""

    def __init__(self, registrations: list[dict]):
        ta = _oidc_helpers()
        self.node = ta._node()
        self.ta = ta
        env = dict(os.environ, OIDC_PORT="0", OIDC_ACCESS_TOKEN_TTL="2", OIDC_MAX_LIFETIME="300",
                   OIDC_DPOP_NONCE="1", OIDC_CLIENTS=json.dumps(registrations))
        self.proc = subprocess.Popen([self.node, str(ta.OIDC_DIR / "server.mjs")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server.mjs exited before announcing itself: {self.proc.wait()}")
        self.issuer = json.loads(line)["issuer"]
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.issuer))

    def follow(self, *args: str) -> subprocess.Popen:
        """follow.mjs, the browser, started (``browse`` waits for its answer)."""
        return subprocess.Popen([self.node, str(self.ta.OIDC_DIR / "follow.mjs"), *args], stdout=subprocess.PIPE)

    def all_stats(self) -> dict:
        import http.client

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
def dpop_oidc():
    started: list[DpopOidc] = []

    def start(registrations):
        o = DpopOidc(registrations)
        started.append(o)
        return o

    yield start
    for o in started:
        o.close()


def assert_every_token_request_had_a_proof(stats: dict, granted: int) -> None:
    nonce_400 = stats["grant_errors"].get("use_dpop_nonce", 0)
    assert stats["dpop_proofs"] == granted + nonce_400, stats
    assert stats["dpop_tokens"] == granted, f"every access token is DPoP-bound: {stats}"
    assert set(stats["grant_errors"]) <= {"use_dpop_nonce"}, f"no other token endpoint error: {stats}"
    assert stats["grants_revoked"] == 0, stats


def test_dpop_code_flow_public_client_then_me_over_three_expiries(client, dpop_oidc, es_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    key, path = es_key
    cid = "dpop-public"
    peer = dpop_oidc([{
        "client_id": cid, "token_endpoint_auth_method": "none", "application_type": "native",
        "redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code", "refresh_token"],
    }])
    ta = peer.ta
    settings = Settings(
        token_url=f"{peer.issuer}/token", authorization_url=f"{peer.issuer}/auth", issuer=peer.issuer,
        issuer_sends_iss=True, client_id=cid, client_secret=None, auth_params=[("scope", "openid offline_access")],
        api_origins=[peer.origin], dpop=Dpop("ES256", key_file=path),
    )
    store = SqliteStore(tmp_path / "dpop.db")
    login = "dpop-user"
    seen: dict = {}

    def on_url(url: str) -> None:
        def play():
            return ta.browse(peer.follow("--url", ta.open_start(url), "--login", login))

        seen["browser"] = ta.Browser(play)

    keys = client.authorize_code(settings, on_url=on_url, store=store, credential="c", timeout=60)
    page = seen["browser"].join()
    assert page["status"] == 200, page["body"]
    first = json.loads(stored_keys(store))
    assert first == json.loads(keys.expose())
    assert first["token_type"].lower() == "dpop", "the code exchange carried a proof: a DPoP-bound set"
    stats = peer.stats(cid)
    assert stats["code_exchanges"] == 1 and stats["auth_seen"]["none"] == 1, stats
    assert stats["grant_errors"].get("use_dpop_nonce", 0) >= 1, "the exchange answered the server's nonce challenge"
    assert_every_token_request_had_a_proof(stats, 1)

    # /me over three expiries: oidc-provider checks the proof, ath, the key binding and the nonce.
    calls = 0
    refresh_tokens = [first["refresh_token"]]
    give_up = time.monotonic() + 90
    while peer.stats(cid)["refreshes"] < 3:
        resp = client.send(settings, Request.get(f"{peer.issuer}/me"), store=store, credential="c")
        calls += 1
        assert resp.status == 200, (resp, resp.headers)
        assert resp.json()["sub"] == login
        current = json.loads(stored_keys(store))
        if current["refresh_token"] != refresh_tokens[-1]:
            refresh_tokens.append(current["refresh_token"])
        assert time.monotonic() < give_up, "fewer than 3 refreshes"
        time.sleep(0.25)  # pacing, not a verdict

    stats = peer.stats(cid)
    last = json.loads(stored_keys(store))
    assert last["token_type"].lower() == "dpop", last.get("token_type")
    assert len(set(refresh_tokens)) == len(refresh_tokens) >= 4, "every refresh rotated the refresh token"
    assert stats["userinfo_ok"] == calls, stats
    assert stats["code_exchanges"] == 1, stats
    assert_every_token_request_had_a_proof(stats, 1 + stats["refreshes"])
    assert stats["dpop_nonce_challenges"] >= 1, stats
    # Nonce challenges at /me are answered, not refreshed for: each other 401 was an expiry, and refreshed.
    assert stats["userinfo_rejected"] == stats["refreshes"], stats
    assert peer.all_stats()["server_errors"] == 0

    # The same DPoP-bound set with settings lacking dpop: invalid-settings, nothing sent.
    before = peer.all_stats()
    plain = Settings(**{**vars(settings), "dpop": None})
    with pytest.raises(rekey.InvalidSettings):
        client.send(plain, Request.get(f"{peer.issuer}/me"), store=store, credential="c")
    assert peer.all_stats() == before, "nothing was sent"
    assert json.loads(stored_keys(store)) == last, "nothing was changed"

    # The refresh token is bound to the key: a copy of the set with another DPoP key cannot refresh it.
    other_path = tmp_path / "other-dpop.pem"
    other_path.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    forced = Settings(**{**vars(settings), "dpop": Dpop("ES256", key_file=other_path),
                         "strategy": rekey.EveryRequest()})
    copy = MemoryStore()
    copy.put("c", forced, json.dumps(last))
    with pytest.raises(rekey.ReauthorizationRequired):
        client.send(forced, Request.get(f"{peer.issuer}/me"), store=copy, credential="c")
    after = peer.stats(cid)
    assert after["grant_errors"].get("invalid_grant") == 1, after
    assert after["refreshes"] == stats["refreshes"] and after["grants_revoked"] == 0, after
    # ...while the key's own holder still can.
    resp = client.send(settings, Request.get(f"{peer.issuer}/me"), store=store, credential="c")
    assert resp.status == 200

    secrets_seen = [first["access_token"], first["refresh_token"], *refresh_tokens, last["access_token"]]
    for s in secrets_seen:
        assert s not in caplog.text
    for line in key_texts(key):
        assert line not in caplog.text


def test_dpop_client_credentials_rs256_calls_the_api_as_dpop(client, dpop_oidc, rsa_key, tmp_path, monkeypatch):
    cid = "dpop-m2m"
    peer = dpop_oidc([{
        "client_id": cid, "client_secret": "m2m-s3cret-value", "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"],
    }])
    monkeypatch.setenv("REKEY_TEST_DPOP_RSA", pem(rsa_key).decode())
    settings = Settings(
        token_url=f"{peer.issuer}/token", client_id=cid, client_secret="m2m-s3cret-value",
        grant="client_credentials", api_origins=[peer.origin], dpop=Dpop("RS256", key_env="REKEY_TEST_DPOP_RSA"),
    )
    store = MemoryStore()
    store.put("m2m", settings, None)  # nothing stored first: send fetches the token
    # show() (what an operator sees) names the DPoP algorithm and the key's variable, never the key.
    assert store.show("m2m").settings["dpop"] == {"algorithm": "RS256", "key_env": "REKEY_TEST_DPOP_RSA"}
    calls = 0
    give_up = time.monotonic() + 60
    while peer.stats(cid).get("client_credentials", 0) < 3:
        resp = client.send(settings, Request.get(f"{peer.issuer}/_api/whoami"), store=store, credential="m2m")
        calls += 1
        assert resp.status == 200, (resp, resp.headers)
        assert resp.json() == {"client_id": cid, "scope": None, "token_type": "DPoP"}
        assert time.monotonic() < give_up, "fewer than 3 client-credentials grants"
        time.sleep(0.25)  # pacing, not a verdict
    stats = peer.stats(cid)
    assert json.loads(stored_keys(store, "m2m"))["token_type"].lower() == "dpop"
    assert stats["api_ok"] == calls, stats
    # The first token was fetched because none was stored; each later one after an expiry's 401.
    assert stats["api_rejected"] == stats["client_credentials"] - 1, stats
    assert stats["auth_seen"]["basic"] == stats["client_credentials"], stats
    assert_every_token_request_had_a_proof(stats, stats["client_credentials"])
    assert stats["dpop_nonce_challenges"] >= 1, stats
    assert peer.all_stats()["server_errors"] == 0

    # Without dpop settings the stored DPoP token is not sent.
    before = peer.all_stats()
    with pytest.raises(rekey.InvalidSettings):
        client.send(Settings(**{**vars(settings), "dpop": None}), Request.get(f"{peer.issuer}/_api/whoami"),
                    store=store, credential="m2m")
    assert peer.all_stats() == before, "nothing was sent"
    # A DPoP key that cannot be read: the component gets no public key, nothing is sent.
    missing = Settings(**{**vars(settings), "dpop": Dpop("RS256", key_file=tmp_path / "absent.pem")})
    with pytest.raises(rekey.InvalidSettings, match="absent.pem") as caught:
        fresh = MemoryStore()
        fresh.put("m2m", missing)
        client.send(missing, Request.get(f"{peer.issuer}/_api/whoami"), store=fresh, credential="m2m")
    assert "BEGIN" not in str(caught.value)
    assert peer.all_stats() == before, "nothing was sent"
