"""Signed assertions (RFC 7523, issue #21): the JWT bearer grant and
``private_key_jwt`` client authentication, the component building each JWT
and this host signing it. End to end: the testkit provider verifies every
assertion with the registered public key (signature, iss, sub, aud, exp,
iat, a jti never seen) over loopback HTTP, the real component in between.
The keys are made here, in memory and in tmp_path; none is committed."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import rekey
from conftest import delta, stored_keys
from rekey import Request, Signing, SqliteStore
from rekey import wit as rekey_wit

PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC
NO_PASSWORD = serialization.NoEncryption()


def pem(key, fmt=PKCS8, encryption=NO_PASSWORD) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def secrets_of(key) -> list[str]:
    """Every text of ``key`` that must never show: its PEM body lines (each
    format), and its private number in decimal and hex."""
    texts = []
    for fmt in (PKCS8, TRADITIONAL):
        body = pem(key, fmt).decode().splitlines()[1:-1]
        texts += [line for line in body if len(line) >= 16]
    numbers = key.private_numbers()
    secret = numbers.private_value if isinstance(key, ec.EllipticCurvePrivateKey) else numbers.d
    return texts + [str(secret), f"{secret:x}"]


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_jwt(jwt: str) -> tuple[dict, dict, bytes, bytes]:
    header, claims, signature = jwt.split(".")
    return (json.loads(b64url_decode(header)), json.loads(b64url_decode(claims)),
            f"{header}.{claims}".encode(), b64url_decode(signature))


def verify(public_key, alg: str, signed: bytes, signature: bytes) -> None:
    """Raises unless ``signature`` is a valid JWS ``alg`` signature (ES256: r || s)."""
    if alg == "ES256":
        assert len(signature) == 64
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    else:
        assert len(signature) == 256
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())


def new_key(alg: str):
    return ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048)


@pytest.fixture
def keyed_provider(provider_factory, tmp_path):
    """``start(alg)`` → (provider, private key, its PKCS#8 file): a testkit
    whose tokens live 10 minutes (they expire when the test says) and that
    knows the key's public half."""

    def start(alg: str, fmt=PKCS8):
        key = new_key(alg)
        public = tmp_path / f"{alg}-public.pem"
        public.write_bytes(public_pem(key))
        private = tmp_path / f"{alg}-private.pem"
        private.write_bytes(pem(key, fmt))
        os.chmod(private, 0o600)
        provider = provider_factory("--access-ttl-ms", "600000", "--assertion-key-file", str(public))
        return provider, key, private

    return start


def bearer_settings(provider, signing: Signing, **overrides) -> rekey.Settings:
    fields = dict(grant="jwt_bearer", client_secret=None, subject="svc-7@example",
                  claims={"scope": "api.read", "tenant": "t1"}, signing=signing)
    fields.update(overrides)
    return provider.settings(**fields)


# End to end: the JWT bearer grant.


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_jwt_bearer_fetches_then_renews_at_each_of_3_expiries(client, keyed_provider, tmp_path, alg):
    provider, key, key_file = keyed_provider(alg)
    signing = Signing(alg, key_id="k-1", audience=provider.base_url, key_file=key_file)
    settings = bearer_settings(provider, signing)
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings)  # the key's file is stored, the credential has no keys yet
    assert store.read("c").data.keys is None

    before = provider.stats()
    assert client.send(settings, Request.get(provider.api_url + "a"), store=store, credential="c").status == 200
    d = delta(provider.stats(), before)
    assert (d["jwt_bearer_granted"], d["token_calls"], d["api_calls"], d["assertions_refused"]) == (1, 1, 1, 0)
    assert provider.stats()["last_assertion_subject"] == "svc-7@example"

    jtis = set()
    form = dict(provider.admin("GET", "last-token-form"))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert form["client_id"] == provider.client_id and "client_secret" not in form
    header, claims, signed, signature = decode_jwt(form["assertion"])
    assert header == {"alg": alg, "typ": "JWT", "kid": "k-1"}
    assert (claims["iss"], claims["sub"], claims["aud"]) == (provider.client_id, "svc-7@example", provider.base_url)
    assert (claims["scope"], claims["tenant"], claims["exp"] - claims["iat"]) == ("api.read", "t1", 300)
    verify(key.public_key(), alg, signed, signature)  # this host's signature, checked here too
    jtis.add(claims["jti"])

    access_tokens = {json.loads(stored_keys(store))["access_token"]}
    for expiry in range(3):
        provider.admin("POST", "expire-access-tokens")
        before = provider.stats()
        resp = client.send(settings, Request.get(provider.api_url + f"e{expiry}"), store=store, credential="c")
        assert resp.status == 200
        d = delta(provider.stats(), before)
        assert (d["api_unauthorized"], d["jwt_bearer_granted"], d["token_calls"], d["api_calls"]) == (1, 1, 1, 2)
        assert d["assertions_refused"] == 0 and d["refreshes_granted"] == 0
        keys = json.loads(stored_keys(store))
        assert "refresh_token" not in keys and keys["access_token"] not in access_tokens
        access_tokens.add(keys["access_token"])
        jtis.add(decode_jwt(dict(provider.admin("GET", "last-token-form"))["assertion"])[1]["jti"])
        record = store.read("c").data
        assert record.refresh_mark is None and record.lease is None and record.dead_grant is None
    assert len(jtis) == 4  # a fresh jti per assertion


def test_jwt_bearer_audience_defaults_to_the_token_url_and_key_from_env(client, keyed_provider, monkeypatch):
    provider, key, _ = keyed_provider("ES256")
    monkeypatch.setenv("REKEY_TEST_SIGNING_KEY", pem(key, TRADITIONAL).decode())  # SEC1 this time
    settings = bearer_settings(provider, Signing("es256", key_env="REKEY_TEST_SIGNING_KEY"), claims={})
    saved: list[str] = []
    before = provider.stats()
    assert client.send(settings, Request.get(provider.api_url + "a"), credential="env", on_update_keys=saved.append).status == 200
    assert delta(provider.stats(), before)["jwt_bearer_granted"] == 1
    header, claims, _, _ = decode_jwt(dict(provider.admin("GET", "last-token-form"))["assertion"])
    assert "kid" not in header and claims["aud"] == provider.token_url
    assert len(saved) == 1 and "refresh_token" not in json.loads(saved[0])


def test_an_in_memory_key_object_signs_per_call(client, keyed_provider):
    provider, key, _ = keyed_provider("RS256")
    settings = bearer_settings(provider, Signing("RS256", key=key))
    before = provider.stats()
    assert client.send(settings, Request.get(provider.api_url + "a"), credential="mem", on_update_keys=lambda k: None).status == 200
    assert delta(provider.stats(), before)["jwt_bearer_granted"] == 1


# End to end: private_key_jwt client authentication.


def test_private_key_jwt_with_the_refresh_grant_rotates_across_3_expiries(client, keyed_provider, tmp_path):
    provider, key, key_file = keyed_provider("ES256")
    # A client secret configured too: the key proves the client, the secret is never sent.
    settings = provider.settings(client_auth="private_key_jwt",
                                 signing=Signing("ES256", audience=provider.base_url, key_file=key_file))
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, rekey.keys_from_token_response(provider.authorize()))
    column = json.loads(store._info("c")[0])
    assert column["client_auth"] == "private_key_jwt"
    assert column["signing"] == {"algorithm": "ES256", "audience": provider.base_url, "key_file": str(key_file)}

    refresh_tokens = [json.loads(stored_keys(store))["refresh_token"]]
    for expiry in range(3):
        provider.admin("POST", "expire-access-tokens")
        before = provider.stats()
        resp = client.send(settings, Request.get(provider.api_url + f"e{expiry}"), store=store, credential="c")
        assert resp.status == 200
        d = delta(provider.stats(), before)
        assert (d["refreshes_granted"], d["client_assertions_ok"], d["token_calls"]) == (1, 1, 1)
        assert (d["assertions_refused"], d["invalid_grant"], d["reused_refresh_tokens"]) == (0, 0, 0)
        assert (d["basic_auth_calls"], d["post_auth_calls"]) == (0, 0)  # no secret, either way
        form = dict(provider.admin("GET", "last-token-form"))
        assert form["grant_type"] == "refresh_token" and "client_secret" not in form
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        _, claims, signed, signature = decode_jwt(form["client_assertion"])
        assert claims["iss"] == claims["sub"] == provider.client_id
        verify(key.public_key(), "ES256", signed, signature)
        refresh_tokens.append(json.loads(stored_keys(store))["refresh_token"])
    assert len(set(refresh_tokens)) == 4 and provider.refresh_token_live(refresh_tokens[-1])
    stats = provider.stats()
    assert (stats["client_assertions_ok"], stats["assertions_refused"], stats["invalid_grant"]) == (3, 0, 0)


def test_private_key_jwt_with_the_client_credentials_grant_needs_no_secret(client, keyed_provider):
    provider, key, _ = keyed_provider("RS256")
    settings = provider.settings(grant="client-credentials", client_secret=None, client_auth="PRIVATE-KEY-JWT",
                                 signing=Signing("RS256", key=key))
    before = provider.stats()
    assert client.send(settings, Request.get(provider.api_url + "a"), credential="cc", on_update_keys=lambda k: None).status == 200
    d = delta(provider.stats(), before)
    assert (d["client_credentials_granted"], d["client_assertions_ok"], d["assertions_refused"]) == (1, 1, 0)


# Refusals: a wrong key is the settings' fault; no key means nothing is sent.


@pytest.mark.parametrize("grant", ["jwt_bearer", "refresh_token"])
def test_a_wrong_key_is_settings_rejected_and_nothing_is_stored(client, keyed_provider, tmp_path, grant):
    provider, _, _ = keyed_provider("ES256")
    other = ec.generate_private_key(ec.SECP256R1())  # the right kind, not the registered key
    store = SqliteStore(tmp_path / "rekey.db")
    if grant == "jwt_bearer":
        settings = bearer_settings(provider, Signing("ES256", key=other))
        first = None
    else:
        settings = provider.settings(client_auth="private_key_jwt", signing=Signing("ES256", key=other))
        first = rekey.keys_from_token_response(provider.authorize())
    store.put("c", provider.settings(), first)  # the column's key is not the point here
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()

    with pytest.raises(rekey.SettingsRejected) as e:
        client.send(settings, Request.get(provider.api_url + "a"), store=store, credential="c")

    assert e.value.category is rekey.Category.SETTINGS_WRONG
    assert e.value.code == ("invalid_grant" if grant == "jwt_bearer" else "invalid_client")
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["assertions_refused"], d["jwt_bearer_granted"], d["refreshes_granted"]) == (1, 1, 0, 0)
    after = store.read("c").data
    # No token stored, the refresh token kept; the refusal remembered beside.
    kept = json.loads(stored_keys(store))
    assert kept.pop("rekey_refused")["code"] == e.value.code
    assert kept == (json.loads(first) if first else {}), kept
    assert after.dead_grant is None and after.refresh_mark is None and after.lease is None
    for text in secrets_of(other):
        assert text not in str(e.value) and text not in repr(settings)


@pytest.mark.parametrize("source", ["missing file", "unset variable", "public key file"])
def test_no_usable_key_is_invalid_settings_and_nothing_is_sent(client, keyed_provider, tmp_path, monkeypatch, source):
    provider, key, _ = keyed_provider("ES256")
    monkeypatch.delenv("REKEY_TEST_NO_KEY", raising=False)
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(key))
    signing, named = {
        "missing file": (Signing("ES256", key_file=tmp_path / "nope.pem"), str(tmp_path / "nope.pem")),
        "unset variable": (Signing("ES256", key_env="REKEY_TEST_NO_KEY"), "REKEY_TEST_NO_KEY"),
        "public key file": (Signing("ES256", key_file=public), str(public)),
    }[source]
    before = provider.stats()
    for settings in (bearer_settings(provider, signing),
                     provider.settings(grant="client_credentials", client_auth="private_key_jwt", signing=signing)):
        with pytest.raises(rekey.InvalidSettings) as e:
            client.send(settings, Request.get(provider.api_url + "a"), credential="n", on_update_keys=lambda k: None)
        assert named in str(e.value) and e.value.category is rekey.Category.SETTINGS_WRONG
        with pytest.raises(rekey.InvalidSettings, match="signing key"):
            client.check_settings(settings)  # a credential being created finds out at once
    d = delta(provider.stats(), before)
    assert (d["token_calls"], d["api_calls"]) == (0, 0)


def test_signing_is_required_where_it_is_used(client, provider):
    before = provider.stats()
    for settings in (provider.settings(grant="jwt_bearer", subject="s"),
                     provider.settings(client_auth="private_key_jwt")):
        with pytest.raises(rekey.InvalidSettings, match="signing"):
            client.send(settings, Request.get(provider.api_url + "a"), credential="x", on_update_keys=lambda k: None)
        with pytest.raises(rekey.InvalidSettings, match="signing"):
            client.check_settings(settings)
    # The component's own rules reach the caller: an empty subject, a registered claim.
    key = Signing("ES256", key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(rekey.InvalidSettings, match="subject is empty"):
        client.check_settings(provider.settings(grant="jwt_bearer", signing=key))
    with pytest.raises(rekey.InvalidSettings, match="cannot be configured"):
        client.check_settings(provider.settings(grant="jwt_bearer", subject="s", claims={"aud": "x"}, signing=key))
    assert delta(provider.stats(), before)["token_calls"] == 0


def test_a_jwt_bearer_credential_is_never_authorised(client, provider):
    settings = provider.settings(grant="jwt_bearer", subject="s",
                                 signing=Signing("ES256", key=ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(rekey.InvalidSettings, match="never authorised"):
        client.authorize_code(settings, on_url=print, on_update_keys=lambda k: None)


# The key never shows.


def test_the_key_never_shows_in_repr_logs_errors_or_the_store(client, keyed_provider, tmp_path, caplog):
    provider, key, key_file = keyed_provider("ES256")
    other = ec.generate_private_key(ec.SECP256R1())
    caplog.set_level(logging.DEBUG, logger="rekey")
    shown: list[str] = []

    settings = bearer_settings(provider, Signing("ES256", key_file=key_file))
    in_memory = bearer_settings(provider, Signing("ES256", key=key))
    wrong = bearer_settings(provider, Signing("ES256", key=other))
    shown += [repr(settings), repr(in_memory), str(in_memory.signing), repr(wrong)]
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings)
    shown += [store._info("c")[0], json.dumps(store.show("c").settings)]
    assert client.send(settings, Request.get(provider.api_url + "a"), store=store, credential="c").status == 200
    assert client.send(in_memory, Request.get(provider.api_url + "b"), credential="m", on_update_keys=lambda k: None).status == 200
    with pytest.raises(rekey.SettingsRejected) as e:
        client.send(wrong, Request.get(provider.api_url + "c"), credential="w", on_update_keys=lambda k: None)
    shown.append(str(e.value))
    # A key that is there but unusable: its text is not quoted either.
    bad = tmp_path / "bad.pem"
    body = pem(other).decode().splitlines()
    bad.write_text("\n".join([body[0], *[line[::-1] for line in body[1:-1]], body[-1]]) + "\n")
    with pytest.raises(rekey.InvalidSettings) as e:
        client.send(bearer_settings(provider, Signing("ES256", key_file=bad)), Request.get(provider.api_url + "d"),
                    credential="b", on_update_keys=lambda k: None)
    assert "is not a valid PKCS#8 private key" in str(e.value)
    shown.append(str(e.value))
    with pytest.raises(rekey.InvalidSettings) as e:
        store.put("m", in_memory)  # a store never holds a private key
    assert "key_file" in str(e.value) and store.names() == ["c"]
    shown.append(str(e.value))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(in_memory.signing)

    shown += [r.getMessage() for r in caplog.records]
    assert any("assertion signed" in r.getMessage() for r in caplog.records)  # the logs were on
    reversed_lines = [line[::-1] for line in pem(other).decode().splitlines()[1:-1] if len(line) >= 16]
    for text in secrets_of(key) + secrets_of(other) + reversed_lines:
        for out in shown:
            assert text not in out


# The host's key handling, without the component.


def openssl(*args: str, stdin: bytes = b"") -> bytes:
    if shutil.which("openssl") is None:
        pytest.skip("SKIPPED: no openssl binary: the openssl-made key formats were NOT checked")
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


@pytest.mark.parametrize("made_by", ["openssl ecparam -genkey (SEC1 after EC PARAMETERS)", "openssl genpkey EC (PKCS#8)",
                                     "openssl genpkey RSA (PKCS#8)", "openssl rsa -traditional (PKCS#1)"])
def test_openssl_made_keys_load_and_sign(tmp_path, made_by):
    if made_by.startswith("openssl ecparam"):
        text, alg = openssl("ecparam", "-name", "prime256v1", "-genkey"), "ES256"
        assert b"BEGIN EC PARAMETERS" in text and b"BEGIN EC PRIVATE KEY" in text
    elif made_by.startswith("openssl genpkey EC"):
        text, alg = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"), "ES256"
    else:
        text, alg = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"), "RS256"
        if "traditional" in made_by:
            text = openssl("rsa", "-traditional", stdin=text)
            assert b"BEGIN RSA PRIVATE KEY" in text
    path = tmp_path / "k.pem"
    path.write_bytes(text)
    signing = Signing(alg, key_file=path)
    signature = signing.sign(b"header.claims")
    verify(signing.load().public_key(), alg, b"header.claims", signature)


def test_formats_algorithms_and_refusals():
    ec_key, rsa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    for key, alg in ((ec_key, "ES256"), (rsa_key, "RS256")):
        for fmt in (PKCS8, TRADITIONAL):
            loaded = rekey.signing.load_pem(pem(key, fmt), alg)
            assert loaded.private_numbers() == key.private_numbers()
        signature = Signing(alg, key=key).sign(b"x.y")
        verify(key.public_key(), alg, b"x.y", signature)
    # ES256: a fresh r || s each time (ECDSA is randomised), always 64 bytes.
    signatures = {Signing("ES256", key=ec_key).sign(b"x.y") for _ in range(5)}
    assert len(signatures) == 5 and {len(s) for s in signatures} == {64}

    refusals = {
        "is encrypted": pem(ec_key, PKCS8, serialization.BestAvailableEncryption(b"pw")),
        "is encrypted ": pem(rsa_key, TRADITIONAL, serialization.BestAvailableEncryption(b"pw")),
        "not a PEM private key": public_pem(ec_key),
        "not a PEM private key ": b"hello",
        "is an Ed25519 key": pem(ed25519.Ed25519PrivateKey.generate()),
        "2 private keys": pem(ec_key) + pem(ec_key),
    }
    for says, text in refusals.items():
        with pytest.raises(rekey.InvalidSettings, match=says.strip()) as e:
            rekey.signing.load_pem(text, "ES256", "the key at hand")
        assert "the key at hand" in str(e.value)
        assert "Ed25519" in says or "BEGIN PRIVATE KEY (PKCS#8)" in str(e.value)  # says what is expected
    # The key must fit the algorithm.
    cases = [(ec_key, "RS256", "RSA key of 2048"), (rsa_key, "ES256", "P-256"),
             (ec.generate_private_key(ec.SECP384R1()), "ES256", "EC secp384r1"),
             (rsa.generate_private_key(65537, 1024), "RS256", "RSA 1024-bit")]
    for key, alg, says in cases:
        with pytest.raises(rekey.InvalidSettings, match=says):
            Signing(alg, key=key)
        with pytest.raises(rekey.InvalidSettings, match=says):
            rekey.signing.load_pem(pem(key), alg)
    # The component asks for the algorithm of the settings; another is refused.
    assert "asked for an RS256 signature" in rekey.signing.sign_for(Signing("ES256", key=ec_key), "rs256", b"x")
    assert "no signing key is configured" in rekey.signing.sign_for(None, "es256", b"x")


def test_signing_values_spellings_and_the_wit_record(tmp_path):
    with pytest.raises(rekey.InvalidSettings, match="exactly one key source.*got none"):
        Signing("ES256")
    with pytest.raises(rekey.InvalidSettings, match="got key_file, key_env"):
        Signing("ES256", key_file="/k.pem", key_env="K")
    with pytest.raises(rekey.InvalidSettings, match="unknown signing algorithm 'HS256'"):
        Signing("HS256", key_env="K")
    with pytest.raises(rekey.InvalidSettings, match="cryptography RSA or EC private key object"):
        Signing("ES256", key=b"-----BEGIN PRIVATE KEY-----")
    assert Signing("es256", key_env="K").algorithm is rekey.SigningAlgorithm.ES256
    assert rekey.signing.signing_of({"algorithm": "rs256", "key_file": "k.pem"}) == Signing("RS256", key_file="k.pem")

    settings = rekey.Settings(
        token_url="https://login.example.com/token", client_id="svc", grant="JWT-Bearer", subject="user-1",
        claims=[("scope", "a b")], client_auth="private_key_jwt", api_origins=["https://api.example.com"],
        signing={"algorithm": "ES256", "key_id": "k1", "audience": "https://login.example.com", "key_env": "K"},
    )
    assert settings.grant is rekey.Grant.JWT_BEARER and settings.client_auth is rekey.ClientAuth.PRIVATE_KEY_JWT
    assert settings.claims == {"scope": "a b"}
    record = rekey_wit.settings(settings)
    assert (record.grant.tag, record.grant.payload.subject, record.grant.payload.claims) == (
        "jwt-bearer", "user-1", [("scope", "a b")])
    assert record.__dict__["client-auth"] == "private-key-jwt"
    signing = record.signing
    assert (signing.algorithm, signing.__dict__["key-id"], signing.audience) == ("es256", "k1", "https://login.example.com")
    assert rekey_wit.settings(rekey.Settings(token_url="https://t.example", client_id="c")).signing is None
    with pytest.raises(rekey.InvalidSettings, match="string values"):
        rekey.Settings(token_url="https://t.example", client_id="c", claims={"n": 1})

    # The store column: as the other hosts write it; the key's place, never the key.
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings)
    column = json.loads(store._info("c")[0])
    assert (column["grant"], column["subject"], column["claims"], column["client_auth"]) == (
        "jwt-bearer", "user-1", {"scope": "a b"}, "private_key_jwt")
    assert column["signing"] == {"algorithm": "ES256", "key_id": "k1", "audience": "https://login.example.com",
                                 "key_env": "K"}
    relative = rekey.Settings(token_url="https://t.example", client_id="c", grant="client_credentials",
                              client_auth="private_key_jwt", api_origins=["https://api.example.com"],
                              signing=Signing("RS256", key_file="keys/k.pem"))
    store.put("r", relative)
    assert json.loads(store._info("r")[0])["signing"]["key_file"] == os.path.abspath("keys/k.pem")
    for bad, says in ((dict(settings.__dict__, subject=None), "needs subject"),
                      (dict(settings.__dict__, signing=None), "needs signing"),
                      (dict(relative.__dict__, client_auth="basic", signing=None), "client secret or private_key_jwt")):
        with pytest.raises(rekey.InvalidSettings, match=says):
            store.put("bad", rekey.Settings(**bad))
    assert store.names() == ["c", "r"]
