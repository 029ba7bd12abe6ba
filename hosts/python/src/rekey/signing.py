"""Signed assertions (RFC 7523): the host's ``signer``. The component builds
each JWT (header and claims, a fresh ``jti`` per request) and asks the host
to sign ``header.claims``; the private key stays here, outside the sandbox.

A credential's :class:`Signing` says how: the algorithm (RS256 or ES256),
the optional ``kid`` and audience, and where the key is: a PEM file
(``key_file``), an environment variable holding the PEM (``key_env``), or
a key object in memory (``key``, for calls that pass their settings each
time; a store never holds a private key). The key is loaded when the
component asks for a signature, so a credential whose token is still valid
touches no key at all.

Every message here names the file or the variable, never the key's text."""

from __future__ import annotations

import enum
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import InvalidSettings

log = logging.getLogger("rekey")

#: A private key object ``Signing(key=...)`` takes (from ``cryptography``).
PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

#: A key file or variable larger than this is not a key (an RSA 8192 PEM is under 7 KiB).
MAX_KEY_BYTES = 64 * 1024
#: RS256 keys under this many bits are refused (RFC 7518 §3.3; the component refuses shorter signatures).
MIN_RSA_BITS = 2048

_PEM_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
#: PEM labels of the private keys accepted, and what each is.
_ACCEPTED = {
    "PRIVATE KEY": "PKCS#8",
    "RSA PRIVATE KEY": "PKCS#1 RSA",
    "EC PRIVATE KEY": "SEC1 EC",
}
_EXPECTED = (
    "expected an unencrypted PEM private key: BEGIN PRIVATE KEY (PKCS#8), "
    "BEGIN RSA PRIVATE KEY (PKCS#1) or BEGIN EC PRIVATE KEY (SEC1)"
)


class SigningAlgorithm(enum.Enum):
    """The JWS algorithm of the component's assertions (RFC 7518 §3.1). Read
    in any case: ``"ES256"``, ``"es256"``."""

    #: RSASSA-PKCS1-v1_5 with SHA-256; an RSA key of 2048 bits or more.
    RS256 = "RS256"
    #: ECDSA on P-256 with SHA-256; the signature is ``r || s`` (64 bytes).
    ES256 = "ES256"

    @classmethod
    def _missing_(cls, value: object) -> "Optional[SigningAlgorithm]":
        if isinstance(value, str):
            spelled = value.strip().upper()
            for alg in cls:
                if spelled == alg.value:
                    return alg
        return None

    @property
    def wit(self) -> str:
        """Its name in the WIT ``signing-algorithm`` enum."""
        return self.value.lower()


def algorithm_of(value: "SigningAlgorithm | str") -> SigningAlgorithm:
    """A ``SigningAlgorithm`` from itself or its name in any case; else a clear error."""
    try:
        return SigningAlgorithm(value)
    except ValueError:
        raise InvalidSettings(f"unknown signing algorithm {value!r} (expected RS256 or ES256)") from None


class Signing:
    """How a credential's assertions are signed (the WIT ``signing``, plus
    where the key is): needed by ``client_auth="private_key_jwt"`` and by
    ``grant="jwt_bearer"``.

    ``algorithm``: ``"RS256"`` or ``"ES256"``. ``key_id``: the ``kid`` in
    the JWT header, when the server needs it to pick the key. ``audience``:
    the ``aud`` claim, the authorization server's issuer identifier (None:
    the token URL). Exactly one of ``key_file`` (a PEM file, read when a
    signature is needed), ``key_env`` (the name of an environment variable
    holding the PEM) or ``key`` (a ``cryptography`` RSA or EC private key
    object, checked now; never written to a store). PEM keys may be PKCS#8,
    PKCS#1 RSA or SEC1 EC, unencrypted.

    ``repr()`` shows the file or the variable, never a key."""

    __slots__ = ("algorithm", "key_id", "audience", "key_file", "key_env", "_key")

    def __init__(
        self,
        algorithm: "SigningAlgorithm | str",
        key_id: Optional[str] = None,
        audience: Optional[str] = None,
        *,
        key_file: "Optional[str | os.PathLike]" = None,
        key_env: Optional[str] = None,
        key: Optional[PrivateKey] = None,
    ):
        self.algorithm = algorithm_of(algorithm)
        for name, value in (("key_id", key_id), ("audience", audience), ("key_env", key_env)):
            if value is not None and not isinstance(value, str):
                raise InvalidSettings(f"signing {name} must be a string")
        self.key_id = key_id
        self.audience = audience
        sources = [name for name, v in (("key_file", key_file), ("key_env", key_env), ("key", key)) if v is not None]
        if len(sources) != 1:
            raise InvalidSettings(
                "signing needs exactly one key source: key_file= (a PEM file), key_env= (an environment "
                f"variable holding the PEM) or key= (a private key object); got {', '.join(sources) or 'none'}"
            )
        self.key_file = os.fspath(key_file) if key_file is not None else None
        if key_env is not None and not key_env:
            raise InvalidSettings("signing key_env is empty: name the environment variable that holds the key")
        self.key_env = key_env
        if key is not None:
            if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
                raise InvalidSettings(
                    f"signing key= must be a cryptography RSA or EC private key object, not {type(key).__name__} "
                    "(for a PEM file or text use key_file= or key_env=)"
                )
            _check_type(key, self.algorithm, "the in-memory signing key")
        self._key = key

    @property
    def key(self) -> Optional[PrivateKey]:
        """The in-memory key object, if that is the source."""
        return self._key

    @property
    def source(self) -> str:
        """Where the key is, as messages name it (never the key itself)."""
        if self.key_file is not None:
            return f"the signing key file {self.key_file}"
        if self.key_env is not None:
            return f"the signing key in ${self.key_env}"
        return "the in-memory signing key"

    def load(self) -> PrivateKey:
        """The private key, loaded now from its source and checked against
        the algorithm. Raises :class:`InvalidSettings` naming the source."""
        if self._key is not None:
            return self._key
        return load_pem(_read_source(self), self.algorithm, self.source)

    def sign(self, data: bytes, algorithm: "SigningAlgorithm | str | None" = None) -> bytes:
        """The JWS signature of ``data``: RS256 as long as the modulus,
        ES256 the 64 bytes ``r || s``. ``algorithm`` (the component's ask)
        must be this signing's. Raises :class:`InvalidSettings`."""
        alg = self.algorithm if algorithm is None else algorithm_of(algorithm)
        if alg is not self.algorithm:
            raise InvalidSettings(
                f"the component asked for an {alg.value} signature, but the credential signs with {self.algorithm.value}"
            )
        return sign_with(self.load(), alg, data, self.source)

    def __repr__(self) -> str:
        fields = [f"algorithm={self.algorithm.value!r}"]
        if self.key_id is not None:
            fields.append(f"key_id={self.key_id!r}")
        if self.audience is not None:
            fields.append(f"audience={self.audience!r}")
        if self.key_file is not None:
            fields.append(f"key_file={self.key_file!r}")
        if self.key_env is not None:
            fields.append(f"key_env={self.key_env!r}")
        if self._key is not None:
            fields.append("key=[redacted]")
        return f"Signing({', '.join(fields)})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signing):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        if self._key is not None:
            # Pickling would write the key somewhere unseen.
            raise TypeError("a Signing with an in-memory key cannot be pickled (use key_file= or key_env=)")
        return (_rebuild, (self.algorithm.value, self.key_id, self.audience, self.key_file, self.key_env))

    def stored(self) -> dict:
        """What a store's settings column keeps: the key's file or variable,
        never the key. An in-memory key cannot be stored."""
        if self._key is not None:
            raise InvalidSettings(
                "a stored credential names its signing key with key_file= or key_env= (the store never holds a "
                "private key); key= (an in-memory key) is for settings passed to each send()"
            )
        out: dict = {"algorithm": self.algorithm.value}
        if self.key_id is not None:
            out["key_id"] = self.key_id
        if self.audience is not None:
            out["audience"] = self.audience
        if self.key_file is not None:
            # Absolute: the workers sharing the store need not share this working directory.
            out["key_file"] = os.path.abspath(self.key_file)
        else:
            out["key_env"] = self.key_env
        return out


def _rebuild(algorithm, key_id, audience, key_file, key_env) -> Signing:
    return Signing(algorithm, key_id, audience, key_file=key_file, key_env=key_env)


def signing_of(value: "Signing | dict | None") -> Optional[Signing]:
    """A ``Signing`` from itself, None, or a dict of its arguments (as a
    store keeps them: ``{"algorithm": "ES256", "key_file": ...}``)."""
    if value is None or isinstance(value, Signing):
        return value
    if isinstance(value, dict):
        known = {"algorithm", "key_id", "audience", "key_file", "key_env", "key"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidSettings(f"unknown signing field(s) {', '.join(map(repr, unknown))} (expected {sorted(known)})")
        if "algorithm" not in value:
            raise InvalidSettings("signing needs an algorithm (RS256 or ES256)")
        args = dict(value)
        return Signing(args.pop("algorithm"), args.pop("key_id", None), args.pop("audience", None), **args)
    raise InvalidSettings(f"signing must be a rekey.Signing (or a dict of its fields), not {type(value).__name__}")


def _read_source(signing: Signing) -> bytes:
    where = signing.source
    if signing.key_file is not None:
        try:
            with open(signing.key_file, "rb") as f:
                data = f.read(MAX_KEY_BYTES + 1)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise InvalidSettings(f"{where} cannot be read ({reason})") from None
    else:
        text = os.environ.get(signing.key_env or "")
        if text is None:
            raise InvalidSettings(f"{where} is not there: the environment variable {signing.key_env} is not set")
        data = text.encode("utf-8", errors="replace")
    if len(data) > MAX_KEY_BYTES:
        raise InvalidSettings(f"{where} is larger than {MAX_KEY_BYTES // 1024} KiB: not a private key ({_EXPECTED})")
    return data


def load_pem(data: bytes, algorithm: "SigningAlgorithm | str", where: str = "the signing key") -> PrivateKey:
    """The private key in PEM ``data`` (PKCS#8, PKCS#1 RSA or SEC1 EC,
    unencrypted), checked against ``algorithm``. Other PEM blocks in the
    same text (``EC PARAMETERS``, a certificate) are passed over. Raises
    :class:`InvalidSettings` naming ``where``; never quotes ``data``."""
    alg = algorithm_of(algorithm)
    text = data.decode("latin-1")
    labels = _PEM_LABEL.findall(text)
    if "ENCRYPTED PRIVATE KEY" in labels:
        raise InvalidSettings(f"{where} is encrypted; {_EXPECTED} (protect the file instead)")
    keys = [label for label in labels if label in _ACCEPTED]
    if not keys:
        raise InvalidSettings(f"{where} is not a PEM private key; {_EXPECTED}")
    if len(keys) > 1:
        raise InvalidSettings(f"{where} holds {len(keys)} private keys; {_EXPECTED}, one of them")
    label = keys[0]
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start = text.index(begin)
    stop = text.find(end, start)
    if stop < 0:
        raise InvalidSettings(f"{where} has no '{end}' line; {_EXPECTED}")
    block = text[start:stop + len(end)]
    if "Proc-Type:" in block:  # a legacy encrypted PEM (Proc-Type: 4,ENCRYPTED); base64 has no ':'
        raise InvalidSettings(f"{where} is encrypted; {_EXPECTED} (protect the file instead)")
    try:
        key = serialization.load_pem_private_key(block.encode("latin-1"), password=None)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted".
        raise InvalidSettings(f"{where} is encrypted; {_EXPECTED} (protect the file instead)") from None
    except (ValueError, UnsupportedAlgorithm):
        # Its message is not quoted: it says nothing the caller can use, and must not risk the key's text.
        raise InvalidSettings(f"{where} is not a valid {_ACCEPTED[label]} private key ({label}); {_EXPECTED}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise InvalidSettings(f"{where} is an {_kind(key)} key; {_wanted(alg)}")
    _check_type(key, alg, where)
    return key


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    name = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
    return name or "unknown"


def _wanted(alg: SigningAlgorithm) -> str:
    if alg is SigningAlgorithm.RS256:
        return f"RS256 needs an RSA key of {MIN_RSA_BITS} bits or more"
    return "ES256 needs an EC key on P-256 (secp256r1, prime256v1)"


def _check_type(key: PrivateKey, alg: SigningAlgorithm, where: str) -> None:
    if alg is SigningAlgorithm.RS256:
        ok = isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS
    else:
        ok = isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    if not ok:
        raise InvalidSettings(f"{where} is an {_kind(key)} key; {_wanted(alg)}")


def sign_with(key: PrivateKey, alg: SigningAlgorithm, data: bytes, where: str = "the signing key") -> bytes:
    """The JWS signature of ``data`` with ``key`` (checked against ``alg`` first)."""
    _check_type(key, alg, where)
    if alg is SigningAlgorithm.RS256:
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # cryptography gives DER (a SEQUENCE of two INTEGERs); JWS wants the fixed r || s (RFC 7518 §3.4).
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_for(setting: "Signing | dict | None", algorithm: str, data: bytes) -> "bytes | str":
    """The ``signer.sign`` import for a call whose settings hold ``setting``:
    the signature, or a message for the component (which refuses the call
    as ``invalid-settings``, nothing sent). Never raises: an exception here
    would trap the guest."""
    where = "the signing key"
    try:
        signing = signing_of(setting)
        if signing is None:
            raise InvalidSettings("no signing key is configured for this credential (settings.signing)")
        where = signing.source
        signature = signing.sign(bytes(data), algorithm)
    except InvalidSettings as e:
        log.warning("assertion not signed: %s", e.detail)
        return e.detail  # the component refuses the call as invalid-settings, with this
    except Exception as e:  # a library's surprise: its type only, its message may hold anything
        log.warning("assertion not signed: %s failed (%s)", where, type(e).__name__)
        return f"{where} could not sign ({type(e).__name__})"
    log.debug("assertion signed (%s, %s)", signing.algorithm.value, where)
    return signature
