"""The host's side of signed assertions (issue #21 review): what it agrees
to sign, when it reads the key, and how it reads it.

- The second-line check (the same rule in every host): the signer import
  signs only the assertion the credential's settings describe. Called here
  as the component calls it (``CallState.sign`` and ``AuthorizeImports.sign``,
  the import's implementations) with hostile input: another aud, exp, iss,
  sub, kid, alg, an extra header member (jku), an unconfigured claim... each
  is refused naming what failed, before any key is read, and nothing is
  signed.
- aud defaults to the credential's issuer when one is configured (the
  testkit accepts its issuer, its base URL).
- A key file is opened without blocking and must be a regular file:
  /dev/zero and a FIFO are InvalidSettings at once (checked in a child
  process with a time bound, so a host that would hang fails, not stalls).
- An RSA-PSS-restricted key is refused (RS256 is PKCS#1 v1.5).
- The key is read only when the component signs: a valid stored token needs
  none; the next refresh without it is InvalidSettings with nothing sent; a
  key back by an atomic rename signs again.

Against the testkit (the test's public key registered with
--assertion-key-file) and the real component; no key material committed."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import rekey
from conftest import delta, stored_keys
from rekey import HttpConfig, Request, Signing, SqliteStore
from rekey import signing as rekey_signing
from rekey import wit as rekey_wit
from rekey.authorize import AuthorizeImports
from rekey.client import CallState

TOKEN_URL = "https://login.example.com/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def b64(value) -> bytes:
    raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def assertion_input(header, claims) -> bytes:
    """``header.claims`` as the component builds it (raw JSON text allowed)."""
    return b64(header) + b"." + b64(claims)


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_texts(key) -> list[str]:
    return [line for line in pem(key).decode().splitlines()[1:-1] if len(line) >= 16]


def claims_of_jwt(jwt: str) -> dict:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture
def counted(monkeypatch):
    """Counts key loads (``_read_source``: files and variables) and signatures (``sign_with``)."""
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


def signers(client, settings):
    """The signer import of a send and of an authorisation step with these
    settings, as the component calls them (the send's under the component lock)."""
    state = CallState(client, None, "c", settings)

    def send_sign(algorithm, data):
        with client._runtime.lock:
            return state.sign(algorithm, data)

    authorize = AuthorizeImports(contextlib.nullcontext, HttpConfig(), settings)
    return [("send", send_sign), ("authorize", authorize.sign)]


def test_the_check_before_signing_refuses_another_aud_exp_iss_sub_kid_alg_header_or_claim_and_signs_nothing(
        client, tmp_path, counted):
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem(key))
    settings = rekey.Settings(
        token_url=TOKEN_URL, client_id="svc-client", client_secret=None, grant="jwt_bearer", subject="reports@svc",
        claims={"scope": "api.read", "tenant": "t-7"}, api_origins=["https://api.example.com"],
        signing=Signing("ES256", key_id="k-1", key_file=key_file),
    )
    now = int(time.time())
    jti = secrets.token_hex(16)
    header = {"alg": "ES256", "typ": "JWT", "kid": "k-1"}
    claims = {"scope": "api.read", "tenant": "t-7", "iss": "svc-client", "sub": "reports@svc", "aud": TOKEN_URL,
              "iat": now, "exp": now + 300, "jti": jti}

    for surface, sign in signers(client, settings):
        # What the component builds is signed, and verifies.
        good = assertion_input(header, claims)
        signature = sign("es256", good)
        assert isinstance(signature, bytes) and len(signature) == 64, (surface, signature)
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.public_key().verify(der, good, ec.ECDSA(hashes.SHA256()))
        # The client's own assertion in the same credential (sub = client id, no grant claims).
        client_claims = {k: v for k, v in claims.items() if k not in ("scope", "tenant")}
        assert isinstance(sign("es256", assertion_input(header, dict(client_claims, sub="svc-client"))), bytes)
        # Member order and whitespace of its own change nothing.
        spaced = assertion_input('{ "typ" : "JWT", "kid":"k-1","alg":"ES256" }', json.dumps(claims, indent=2))
        assert isinstance(sign("es256", spaced), bytes)
    assert counted == {"reads": 6, "signatures": 6}

    evil = "https://evil.example.net/token"
    raw = lambda first, exp: (  # noqa: E731 (claims as text, for what json.dumps cannot write)
        f'{{{first}"iss":"svc-client","sub":"reports@svc","aud":"{TOKEN_URL}","iat":{now},"exp":{exp},'
        f'"jti":"{jti}","scope":"api.read","tenant":"t-7"}}')
    cases = [
        ("aud another URL", header, dict(claims, aud=evil), "the claim aud is not the expected audience"),
        ("aud a list", header, dict(claims, aud=[TOKEN_URL]), "the claim aud is not a string"),
        ("aud missing", header, {k: v for k, v in claims.items() if k != "aud"}, "the claim aud is not the expected audience"),
        ("exp an hour on", header, dict(claims, exp=now + 3600), "the claim exp is not within 300 s after iat"),
        ("exp at iat", header, dict(claims, exp=now), "the claim exp is not within 300 s after iat"),
        ("exp a string", header, dict(claims, exp=str(now + 300)), "the claim exp is not a whole number"),
        ("exp a fraction", header, raw("", f"{now + 300}.5"), "the claim exp is not a whole number"),
        ("exp true", header, dict(claims, exp=True), "the claim exp is not a whole number"),
        ("iat an hour ago", header, dict(claims, iat=now - 3600, exp=now - 3300), "the claim iat is more than 60 s from this host's clock"),
        ("iat tomorrow", header, dict(claims, iat=now + 86400, exp=now + 86500), "the claim iat is more than 60 s"),
        ("iss another client", header, dict(claims, iss="other-client"), "the claim iss is not the client id"),
        ("sub another subject", header, dict(claims, sub="root@svc"), "the claim sub is neither the client id nor the configured subject"),
        ("kid another key", dict(header, kid="k-2"), claims, "the header's kid is not the configured key id"),
        ("kid missing", {"alg": "ES256", "typ": "JWT"}, claims, "the header's kid is not the configured key id"),
        ("alg RS256 in the header", dict(header, alg="RS256"), claims, "the header's alg is not ES256"),
        ("alg none", dict(header, alg="none"), claims, "the header's alg is not ES256"),
        ("typ missing", {"alg": "ES256", "kid": "k-1"}, claims, 'the header\'s typ is not "JWT"'),
        ("jku in the header", dict(header, jku="https://evil.example.net/jwks"), claims, "the header member jku is not allowed"),
        ("jwk in the header", dict(header, jwk={"kty": "EC"}), claims, "the header member jwk is not"),
        ("crit in the header", dict(header, crit=["exp"]), claims, "the header member crit is not"),
        ("a header member of its own", dict(header, **{"x-exfil": "abc"}), claims,
         "a header member named otherwise (the name is not repeated) is not allowed"),
        ("a configured claim with another value", header, dict(claims, scope="api.admin"), "the claim scope is not its configured value"),
        ("nbf, not configured", header, dict(claims, nbf=now), "the claim nbf is not configured"),
        ("a claim of its own", header, dict(claims, admin="true"), "a claim named otherwise (the name is not repeated) is not configured"),
        ("jti too short", header, dict(claims, jti="abc"), "the claim jti is not a string of 16 characters"),
        ("jti a number", header, dict(claims, jti=1234567890123456789), "the claim jti is not a string"),
        ("aud twice (a server may read the first)", header, raw(f'"aud":"{evil}",', now + 300), "the claim aud appears twice"),
        ("claims not an object", header, '["iss"]', "the claims is not a JSON object"),
        ("header not JSON", "{alg:ES256}", claims, "the header is not a JSON object"),
    ]
    for surface, sign in signers(client, settings):
        for what, h, c, says in cases:
            hostile = assertion_input(h, c)
            refusal = sign("es256", hostile)
            assert isinstance(refusal, str), f"{surface}, {what}: signed"
            assert refusal.startswith("refused by the host's check of what it signs: "), (what, refusal)
            assert says in refusal, (surface, what, refusal)
            for shown in (hostile[:24].decode(), evil, jti, "x-exfil", "admin"):
                assert shown not in refusal, (what, refusal)
            assert "PRIVATE KEY" not in refusal and not any(t in refusal for t in key_texts(key))
        # Not a JWT's header.claims at all.
        for data in (b"", b"abc", assertion_input(header, claims) + b".c2ln", b64(header) + b"=." + b64(claims),
                     assertion_input(header, claims) + b"\n", "é.e30".encode()):
            refusal = sign("es256", data)
            assert isinstance(refusal, str) and ("header.claims" in refusal or "not a JSON object" in refusal), (data, refusal)
        # The component asks for the other algorithm: refused, naming alg.
        refusal = sign("rs256", assertion_input(dict(header, alg="RS256"), claims))
        assert "alg: the component asked for RS256, the credential signs with ES256" in refusal
    assert counted == {"reads": 6, "signatures": 6}, "no key read, nothing signed for any of them"

    # The check comes before the key is read: with the key file gone, a
    # hostile input is refused for what it is, a good one for the key.
    gone = rekey.Settings(**dict(settings.__dict__, signing=Signing("ES256", key_id="k-1", key_file=tmp_path / "absent.pem")))
    for _, sign in signers(client, gone):
        assert "the claim aud is not the expected audience" in sign("es256", assertion_input(header, dict(claims, aud=evil)))
        now = int(time.time())
        refusal = sign("es256", assertion_input(header, dict(claims, iat=now, exp=now + 300)))
        assert refusal.startswith(f"the signing key file {tmp_path / 'absent.pem'} cannot be read"), refusal
    assert counted["signatures"] == 6


def test_the_check_before_signing_a_private_key_jwt_client_assertion_rs256_with_the_audience_configured(client):
    key = rsa.generate_private_key(65537, 2048)
    settings = rekey.Settings(
        token_url=TOKEN_URL, client_id="svc-client", client_auth="private_key_jwt", api_origins=["https://api.example.com"],
        issuer="https://issuer.example.com", signing=Signing("RS256", audience="https://login.example.com", key=key),
    )
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": "svc-client", "sub": "svc-client", "aud": "https://login.example.com", "iat": now, "exp": now + 300,
              "jti": secrets.token_hex(16)}
    for _, sign in signers(client, settings):
        signature = sign("rs256", assertion_input(header, claims))
        assert isinstance(signature, bytes) and len(signature) == 256
        for h, c, says in (
            (header, dict(claims, aud=TOKEN_URL), "the claim aud is not the expected audience"),  # the audience configured wins
            (header, dict(claims, aud="https://issuer.example.com"), "the claim aud is not the expected audience"),
            (header, dict(claims, sub="someone-else"), "the claim sub is not the client id"),
            (header, dict(claims, scope="api.read"), "the claim scope is not configured"),  # no jwt-bearer claims here
            (dict(header, kid="k-1"), claims, "the header has a kid, and no key id (signing key_id) is configured"),
            (dict(header, alg="ES256"), claims, "the header's alg is not RS256"),
        ):
            refusal = sign("rs256", assertion_input(h, c))
            assert isinstance(refusal, str) and says in refusal, refusal
    # Without signing settings nothing is signed at all.
    plain = rekey.Settings(token_url=TOKEN_URL, client_id="c", client_secret="s", api_origins=["https://api.example.com"])
    for _, sign in signers(client, plain):
        assert "no signing key is configured for this credential" in sign("rs256", assertion_input(header, claims))


# The testkit.


@pytest.fixture
def keyed(provider_factory, tmp_path):
    """A testkit provider that knows an ES256 key's public half: (provider, key, its PKCS#8 file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(key))
    private = tmp_path / "private.pem"
    private.write_bytes(pem(key))
    os.chmod(private, 0o600)
    return provider_factory("--access-ttl-ms", "600000", "--assertion-key-file", str(public)), key, private


def test_aud_is_the_issuer_when_one_is_configured_and_no_audience_else_the_token_url(client, keyed):
    provider, key, key_file = keyed
    issuer = provider.base_url  # the testkit's issuer identifier (its startup line's "issuer")
    # What the component is given.
    base = dict(token_url=TOKEN_URL, client_id="c", grant="jwt_bearer", subject="s", api_origins=["https://api.example.com"])
    record = lambda **kw: rekey_wit.settings(rekey.Settings(**dict(base, **kw))).signing  # noqa: E731
    assert record(issuer="https://login.example.com", signing=Signing("ES256", key=key)).audience == "https://login.example.com"
    assert record(issuer="https://login.example.com",
                  signing=Signing("ES256", audience="https://aud.example.com", key=key)).audience == "https://aud.example.com"
    assert record(signing=Signing("ES256", key=key)).audience is None  # the component uses the token URL

    before = provider.stats()
    bearer = provider.settings(client_secret=None, issuer=issuer, grant="jwt_bearer", subject="svc-7",
                               signing=Signing("ES256", key_file=key_file))
    assert client.send(bearer, Request.get(provider.api_url + "a"), credential="b", on_update_keys=lambda k: None).status == 200
    form = dict(provider.admin("GET", "last-token-form"))
    assert form["grant_type"] == JWT_BEARER
    assert claims_of_jwt(form["assertion"])["aud"] == issuer

    m2m = provider.settings(client_secret=None, issuer=issuer, grant="client_credentials", client_auth="private_key_jwt",
                            signing=Signing("ES256", key=key))
    assert client.send(m2m, Request.get(provider.api_url + "a"), credential="m", on_update_keys=lambda k: None).status == 200
    assert claims_of_jwt(dict(provider.admin("GET", "last-token-form"))["client_assertion"])["aud"] == issuer

    plain = provider.settings(client_secret=None, grant="client_credentials", client_auth="private_key_jwt",
                              signing=Signing("ES256", key=key))
    assert client.send(plain, Request.get(provider.api_url + "a"), credential="p", on_update_keys=lambda k: None).status == 200
    assert claims_of_jwt(dict(provider.admin("GET", "last-token-form"))["client_assertion"])["aud"] == provider.token_url
    d = delta(provider.stats(), before)
    assert (d["jwt_bearer_granted"], d["client_assertions_ok"], d["assertions_refused"]) == (1, 2, 0)


def test_private_key_jwt_reads_the_key_only_to_sign_and_an_atomic_rename_rotates_it(client, keyed, tmp_path):
    provider, key, key_file = keyed
    settings = provider.settings(client_secret=None, client_auth="private_key_jwt", signing=Signing("ES256", key_file=key_file))
    store = SqliteStore(tmp_path / "rekey.db")
    store.put("c", settings, rekey.keys_from_token_response(provider.authorize()))

    provider.admin("POST", "expire-access-tokens")
    assert client.send(settings, Request.get(provider.api_url + "first"), store=store, credential="c").status == 200
    assert (provider.stats()["refreshes_granted"], provider.stats()["client_assertions_ok"]) == (1, 1)
    stored = stored_keys(store)

    # The key file is gone; the stored access token is valid: the call needs no key.
    key_file.unlink()
    before = provider.stats()
    assert client.send(settings, Request.get(provider.api_url + "warm"), store=store, credential="c").status == 200
    assert (delta(provider.stats(), before)["token_calls"], delta(provider.stats(), before)["api_calls"]) == (0, 1)

    # The token expires: the refresh needs the key: InvalidSettings naming the file, nothing sent.
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()
    with pytest.raises(rekey.InvalidSettings) as e:
        client.send(settings, Request.get(provider.api_url + "cold"), store=store, credential="c")
    assert f"the signing key file {key_file} cannot be read" in str(e.value)
    assert delta(provider.stats(), before)["token_calls"] == 0
    assert stored_keys(store) == stored and provider.refresh_token_live(json.loads(stored)["refresh_token"])
    record = store.read("c").data
    assert record.refresh_mark is None and record.dead_grant is None

    # Back by an atomic rename, as a rotation writes it: used at the next signature.
    staged = tmp_path / ".private.pem.new"
    staged.write_bytes(pem(key))
    os.rename(staged, key_file)
    assert client.send(settings, Request.get(provider.api_url + "again"), store=store, credential="c").status == 200
    stats = provider.stats()
    assert (stats["refreshes_granted"], stats["client_assertions_ok"], stats["assertions_refused"]) == (2, 2, 0)


# How a key file is read.

_CHILD = r"""
import contextlib, json, os, sys, time
import rekey
from rekey import HttpConfig, Signing
from rekey.authorize import AuthorizeImports
path = sys.argv[1]
out = {}
try:
    Signing("ES256", key_file=path).load()
    out["load"] = "loaded"
except rekey.InvalidSettings as e:
    out["load"] = "InvalidSettings: " + str(e)
settings = rekey.Settings(token_url="https://login.example.com/t", client_id="c", grant="jwt_bearer", subject="s",
                          api_origins=["https://api.example.com"], signing=Signing("ES256", key_file=path))
now = int(time.time())
b64 = lambda v: __import__("base64").urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=")
data = b64({"alg": "ES256", "typ": "JWT"}) + b"." + b64({"iss": "c", "sub": "s", "aud": settings.token_url, "iat": now,
                                                         "exp": now + 300, "jti": "j" * 32})
signed = AuthorizeImports(contextlib.nullcontext, HttpConfig(), settings).sign("es256", data)
out["sign"] = "signed" if isinstance(signed, bytes) else signed
client = rekey.Rekey(os.environ["REKEY_WASM"])
try:
    client.check_settings(settings)
    out["check"] = "ok"
except rekey.InvalidSettings as e:
    out["check"] = "InvalidSettings: " + str(e)
print(json.dumps(out))
"""


def load_in_child(path, timeout=30):
    """Loads, signs with and checks a key file in a child process with a time
    bound: a host that reads /dev/zero to its end or blocks on a FIFO fails
    here instead of stalling the suite."""
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path}: no answer in {timeout} s (a read that never ends)")
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1]), time.monotonic() - started


def test_a_key_file_is_opened_without_blocking_and_must_be_a_regular_file(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "a-directory"
    folder.mkdir()
    big = tmp_path / "big.pem"
    big.write_bytes(pem(key) + b"#" * (70 * 1024))
    # Kubernetes mounts a secret as a chain of links (key.pem -> ..data/key.pem -> ..2024_01/key.pem).
    real = tmp_path / "real.pem"
    real.write_bytes(pem(key))
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "key.pem").symlink_to(real)
    linked = tmp_path / "linked.pem"
    linked.symlink_to(tmp_path / "..data" / "key.pem")
    to_fifo = tmp_path / "to-fifo.pem"
    to_fifo.symlink_to(fifo)

    for path, says in (("/dev/zero", "is not a regular file (a character device)"),
                       (fifo, "is not a regular file (a FIFO)"),
                       (to_fifo, "is not a regular file (a FIFO)"),
                       (folder, "is not a regular file (a directory)"),
                       (big, "is larger than 64 KiB: not a private key")):
        out, _ = load_in_child(path)
        for surface, text in out.items():
            if surface != "sign":
                assert text.startswith("InvalidSettings: "), (path, surface, text)
            assert f"the signing key file {path} " in text, (path, surface, text)
            assert says in text, (path, surface, text)
            assert len(text) < 400 and "#####" not in text and "\x00" not in text, (path, surface, text)
    out, _ = load_in_child(linked)
    assert out == {"load": "loaded", "sign": "signed", "check": "ok"}


def test_an_rsa_pss_restricted_key_is_refused_for_rs256(client, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    path = tmp_path / "pss.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)],
                   check=True, capture_output=True)
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    with pytest.raises(rekey.InvalidSettings) as e:
        Signing("RS256", key_file=path).load()
    assert "is an RSA-PSS key" in str(e.value) and str(path) in str(e.value)
    assert "RS256 needs an RSA key" in str(e.value)
    settings = rekey.Settings(token_url=TOKEN_URL, client_id="c", grant="jwt_bearer", subject="s",
                              api_origins=["https://api.example.com"], signing=Signing("RS256", key_file=path))
    with pytest.raises(rekey.InvalidSettings, match="RSA-PSS"):
        client.check_settings(settings)
    # A plain RSA key in the same PKCS#8 form still loads.
    plain = tmp_path / "rsa.pem"
    plain.write_bytes(pem(rsa.generate_private_key(65537, 2048)))
    assert isinstance(Signing("RS256", key_file=plain).load(), rsa.RSAPrivateKey)


def test_a_key_variable_named_like_an_object_attribute_is_simply_unset(monkeypatch):
    for name in ("constructor", "__proto__", "hasOwnProperty", "__class__"):
        monkeypatch.delenv(name, raising=False)
        with pytest.raises(rekey.InvalidSettings, match=f"the environment variable {name} is not set"):
            Signing("ES256", key_env=name).load()
