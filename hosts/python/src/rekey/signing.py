"""Signed assertions (RFC 7523): the host's ``signer``. The component builds
each JWT (header and claims, a fresh ``jti`` per request) and asks the host
to sign ``header.claims``; the private key stays here, outside the sandbox.

A credential's :class:`Signing` says how: the algorithm (RS256 or ES256),
the optional ``kid`` and audience, and where the key is: a PEM file
(``key_file``), an environment variable holding the PEM (``key_env``), or
a key object in memory (``key``, for calls that pass their settings each
time; a store never holds a private key). The key is loaded when the
component asks for a signature, at each one, so a credential whose token is
still valid touches no key at all, and a key replaced by an atomic rename is
used at the next signature. A key file must be a regular file (symbolic links
followed), opened without blocking and read to 64 KiB at most.

Before signing, :func:`check_assertion` checks what the component asks the
host to sign (the same rule in every host): only the assertion the
credential's settings describe is signed.

Every message here names the file or the variable, never the key's text."""

from __future__ import annotations

import base64
import enum
import json
import logging
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
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
    the settings' ``issuer`` when set, else the token URL). Exactly one of
    ``key_file`` (a regular PEM file of 64 KiB at most, read when a
    signature is needed), ``key_env`` (the name of an environment variable
    holding the PEM) or ``key`` (a ``cryptography`` RSA or EC private key
    object, checked now; never written to a store). PEM keys may be PKCS#8,
    PKCS#1 RSA or SEC1 EC, unencrypted.

    ``repr()`` shows the file or the variable, never a key."""

    __slots__ = ("algorithm", "key_id", "audience", "key_file", "key_env", "_key")
    #: The settings field this is (messages name it) and what its key is called.
    _field = "signing"
    _noun = "signing key"

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
        for name, value in (("key_id", key_id), ("audience", audience)):
            if value is not None and not isinstance(value, str):
                raise InvalidSettings(f"{self._field} {name} must be a string")
        self.key_id = key_id
        self.audience = audience
        self._set_key(key_file, key_env, key)

    def _set_key(self, key_file, key_env, key) -> None:
        if key_env is not None and not isinstance(key_env, str):
            raise InvalidSettings(f"{self._field} key_env must be a string")
        sources = [name for name, v in (("key_file", key_file), ("key_env", key_env), ("key", key)) if v is not None]
        if len(sources) != 1:
            raise InvalidSettings(
                f"{self._field} needs exactly one key source: key_file= (a PEM file), key_env= (an environment "
                f"variable holding the PEM) or key= (a private key object); got {', '.join(sources) or 'none'}"
            )
        self.key_file = os.fspath(key_file) if key_file is not None else None
        if key_env is not None and not key_env:
            raise InvalidSettings(f"{self._field} key_env is empty: name the environment variable that holds the key")
        self.key_env = key_env
        if key is not None:
            if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
                raise InvalidSettings(
                    f"{self._field} key= must be a cryptography RSA or EC private key object, not {type(key).__name__} "
                    "(for a PEM file or text use key_file= or key_env=)"
                )
            _check_type(key, self.algorithm, f"the in-memory {self._noun}")
        self._key = key

    @property
    def key(self) -> Optional[PrivateKey]:
        """The in-memory key object, if that is the source."""
        return self._key

    @property
    def source(self) -> str:
        """Where the key is, as messages name it (never the key itself)."""
        if self.key_file is not None:
            return f"the {self._noun} file {self.key_file}"
        if self.key_env is not None:
            return f"the {self._noun} in ${self.key_env}"
        return f"the in-memory {self._noun}"

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
                f"the component asked for an {alg.value} signature, but the credential's {self._noun} is for "
                f"{self.algorithm.value}"
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
        return f"{type(self).__name__}({', '.join(fields)})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        if self._key is not None:
            # Pickling would write the key somewhere unseen.
            raise TypeError(f"a {type(self).__name__} with an in-memory key cannot be pickled (use key_file= or key_env=)")
        return (_rebuild, (self.algorithm.value, self.key_id, self.audience, self.key_file, self.key_env))

    def stored(self) -> dict:
        """What a store's settings column keeps: the key's file or variable,
        never the key. An in-memory key cannot be stored."""
        if self._key is not None:
            raise InvalidSettings(
                f"a stored credential names its {self._noun} with key_file= or key_env= (the store never holds a "
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
        data = _read_key_file(signing.key_file, where)
    else:
        text = os.environ.get(signing.key_env or "")
        if text is None:
            raise InvalidSettings(f"{where} is not there: the environment variable {signing.key_env} is not set")
        data = text.encode("utf-8", errors="replace")
    if len(data) > MAX_KEY_BYTES:
        raise InvalidSettings(f"{where} is larger than {MAX_KEY_BYTES // 1024} KiB: not a private key ({_EXPECTED})")
    return data


def _read_key_file(path: str, where: str) -> bytes:
    """At most MAX_KEY_BYTES + 1 bytes of a key file: opened without blocking
    (a FIFO with no writer must not hang the call), a regular file only (not
    /dev/zero, a FIFO, a socket or a directory), symbolic links followed
    (Kubernetes mounts secrets as links). Names the path, never the content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise InvalidSettings(f"{where} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidSettings(f"{where} is not a regular file ({_file_kind(info.st_mode)}); {_EXPECTED}")
        if info.st_size > MAX_KEY_BYTES:
            raise InvalidSettings(f"{where} is larger than {MAX_KEY_BYTES // 1024} KiB: not a private key ({_EXPECTED})")
        chunks, size = [], 0
        while size <= MAX_KEY_BYTES:  # one byte more than allowed: a file that grew since fstat is caught
            chunk = os.read(fd, MAX_KEY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise InvalidSettings(f"{where} cannot be read ({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"


#: DER of the OID id-RSASSA-PSS (1.2.840.113549.1.1.10): a PKCS#8 key restricted to PSS signatures.
_RSASSA_PSS_OID = bytes.fromhex("06092a864886f70d01010a")


def _pkcs8_algorithm_oid(der: bytes) -> Optional[bytes]:
    """The DER-encoded algorithm OID of a PKCS#8 PrivateKeyInfo (RFC 5958):
    SEQUENCE { version INTEGER, SEQUENCE { OID, params }, ... }; None when
    ``der`` is not shaped so (the key loader says what is wrong then)."""

    def header(at: int) -> "tuple[int, int, int] | None":  # (tag, start of content, length)
        if at + 2 > len(der):
            return None
        tag, first = der[at], der[at + 1]
        at += 2
        if first < 0x80:
            return tag, at, first
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > len(der):
            return None
        return tag, at + count, int.from_bytes(der[at:at + count], "big")

    outer = header(0)
    if outer is None or outer[0] != 0x30:
        return None
    version = header(outer[1])
    if version is None or version[0] != 0x02:
        return None
    algorithm = header(version[1] + version[2])
    if algorithm is None or algorithm[0] != 0x30:
        return None
    oid = header(algorithm[1])
    if oid is None or oid[0] != 0x06:
        return None
    return der[algorithm[1]:oid[1] + oid[2]]


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
    if label == "PRIVATE KEY":
        # cryptography loads an RSA-PSS-restricted key (openssl genpkey -algorithm RSA-PSS) as a plain RSA key;
        # RS256 is PKCS#1 v1.5, which such a key must not make (RFC 4055 §1.2). Refused, as the other hosts do.
        try:
            der = base64.b64decode("".join(block.splitlines()[1:-1]), validate=False)
        except ValueError:
            der = b""
        if _pkcs8_algorithm_oid(der) == _RSASSA_PSS_OID:
            raise InvalidSettings(f"{where} is an RSA-PSS key (restricted to PSS signatures); {_wanted(alg)} (rsaEncryption)")
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


# The host's second-line check of what it signs (every host applies the same
# rule). The component builds each assertion; a compromised or swapped one
# could ask for any bytes (an ``exp`` far off, another ``aud``), so the host,
# the sandbox's boundary, signs only ``header.claims`` as the credential's
# settings describe it. A refusal names the member that failed, never the
# input or the key; the component reports it as invalid settings and sends
# nothing.

#: An assertion's lifetime at most (the component makes it 300 s).
MAX_ASSERTION_LIFETIME_SECS = 300
#: How far ``iat`` may be from this host's clock.
MAX_ASSERTION_SKEW_SECS = 60
#: A ``jti`` is at least this long (the component's: 32 hex digits).
MIN_JTI_CHARS = 16
_HEADER_MEMBERS = ("alg", "typ", "kid")
_COMPONENT_CLAIMS = ("iss", "sub", "aud", "iat", "exp", "jti")
#: Member names a refusal may quote: the registered JOSE header parameters and
#: JWT claims. Any other name is the component's text and is not repeated.
_NAMEABLE = frozenset({
    "alg", "typ", "kid", "cty", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip", "enc", "epk",
    "apu", "apv", "iv", "tag", "p2s", "p2c", "url", "nonce", "ppt", "svt",
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "client_id", "azp", "cnf", "act", "may_act",
})
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]+")
_REFUSED = "refused by the host's check of what it signs: "


@dataclass(frozen=True)
class AssertionRules:
    """What :func:`check_assertion` expects, from the settings the component
    was given."""

    #: The settings' signing algorithm.
    algorithm: SigningAlgorithm
    #: The header's ``kid`` (absent when None).
    key_id: Optional[str]
    #: ``iss``, and ``sub`` of a client assertion.
    client_id: str
    #: ``aud``: the audience the WIT settings carry, else the token URL.
    audience: str
    #: The jwt-bearer grant's ``sub`` (None for other grants).
    subject: Optional[str] = None
    #: The jwt-bearer grant's further claims.
    claims: dict = field(default_factory=dict)


class _Refused(Exception):
    pass


def _member(name: str, what: str, nameable: frozenset = None) -> str:
    """How a refusal names a member: by name when it is one the check knows
    (``nameable``, by default the assertion's), else without repeating it."""
    known = name in (_NAMEABLE if nameable is None else nameable)
    return f"the {what} {name}" if known else f"a {what} named otherwise (the name is not repeated)"


def _json_object(part: bytes, what: str, objects: tuple = (), nameable: frozenset = None) -> dict:
    """A JWT part's JSON object (unpadded base64url of UTF-8 JSON, no member
    twice: a server's parser may take another of two ``aud`` than this check).
    Only the members in ``objects`` may be objects (of strings: a DPoP
    proof's ``jwk``); refusals name members known in ``nameable``."""
    not_object = f"the {what} is not a JSON object in base64url without padding"
    if len(part) % 4 == 1:
        raise _Refused(not_object)
    try:
        text = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)).decode("utf-8")
    except ValueError:
        raise _Refused(not_object) from None
    kind = "header member" if what == "header" else "claim"

    def pairs(items):
        out = {}
        for name, value in items:
            if name in out:
                raise _Refused(f"{_member(name, kind, nameable)} appears twice")
            out[name] = value
        return out

    def no_constant(name):  # NaN, Infinity: not JSON
        raise ValueError(name)

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=no_constant)
    except (ValueError, RecursionError):
        raise _Refused(not_object) from None
    if not isinstance(value, dict):
        raise _Refused(not_object)
    for name, member in value.items():
        if name in objects and isinstance(member, dict):
            if not all(isinstance(v, str) for v in member.values()):
                raise _Refused(f"{_member(name, kind, nameable)} has a member that is not a string")
        elif isinstance(member, (dict, list)):
            raise _Refused(f"{_member(name, kind, nameable)} is not a string or a number")
    return value


def _is_string(value: object, expected: object) -> bool:
    return isinstance(value, str) and value == expected


def _integer(value: object) -> Optional[int]:
    return value if type(value) is int else None


def check_assertion(data: bytes, algorithm: "SigningAlgorithm | str", rules: AssertionRules,
                    now: Optional[float] = None) -> Optional[str]:
    """Why ``data`` must not be signed for ``algorithm`` under ``rules``, or
    None when it is the assertion they describe: ASCII ``header.claims``,
    each part base64url (unpadded) of a JSON object; the header exactly
    ``alg`` (the algorithm asked and configured), ``typ`` "JWT" and ``kid``
    (the configured key id, absent when none); the claims ``iss`` the client
    id, ``sub`` the client id or the jwt-bearer subject, ``aud`` the expected
    audience, integer ``iat`` and ``exp`` with 0 < exp - iat <= 300 and iat
    within 60 s of this host's clock, a ``jti`` of 16 characters or more, and
    no other claim but the configured ones, with their values. Names the
    member that failed; never quotes the input."""
    try:
        _check_assertion(bytes(data), algorithm, rules, time.time() if now is None else now)
    except _Refused as e:
        return _REFUSED + str(e)
    return None


def _signing_input(data: bytes, algorithm, configured: str, header_members: tuple, key_is: str,
                   objects: tuple = (), nameable: frozenset = None) -> "tuple[dict, dict]":
    """The header and claims of a JWT the component asks to have signed
    (ASCII ``base64url(header).base64url(claims)``): both JSON objects, the
    header's members among ``header_members``, and the algorithm asked for
    the configured one (``key_is`` says whose: "the credential signs with")."""
    parts = data.split(b".")
    if len(parts) != 2:
        raise _Refused("the input is not a JWT's header.claims: it needs exactly one '.'")
    if not all(_BASE64URL.fullmatch(p) for p in parts):
        raise _Refused("the input is not a JWT's header.claims (ASCII base64url, one '.')")
    header = _json_object(parts[0], "header", objects, nameable)
    claims = _json_object(parts[1], "claims", (), nameable)
    allowed = ", ".join(header_members[:-1]) + " and " + header_members[-1]
    for name in header:
        if name not in header_members:
            raise _Refused(f"{_member(name, 'header member', nameable)} is not allowed (only {allowed})")
    try:
        asked = algorithm_of(algorithm).value
    except InvalidSettings:
        asked = None
    if asked != configured:
        raise _Refused(f"alg: the component asked for {asked or 'an unknown algorithm'}, {key_is} {configured}")
    return header, claims


def _check_assertion(data: bytes, algorithm, rules: AssertionRules, now: float) -> None:
    configured = rules.algorithm.value
    header, claims = _signing_input(data, algorithm, configured, _HEADER_MEMBERS, "the credential signs with")
    if not _is_string(header.get("alg"), configured):
        raise _Refused(f"the header's alg is not {configured}")
    if not _is_string(header.get("typ"), "JWT"):
        raise _Refused('the header\'s typ is not "JWT"')
    if rules.key_id is None:
        if "kid" in header:
            raise _Refused("the header has a kid, and no key id (signing key_id) is configured")
    elif not _is_string(header.get("kid"), rules.key_id):
        raise _Refused("the header's kid is not the configured key id (signing key_id)")

    if not _is_string(claims.get("iss"), rules.client_id):
        raise _Refused("the claim iss is not the client id")
    sub = claims.get("sub")
    if not _is_string(sub, rules.client_id) and not (rules.subject is not None and _is_string(sub, rules.subject)):
        raise _Refused("the claim sub is not the client id" if rules.subject is None
                       else "the claim sub is neither the client id nor the configured subject")
    if not _is_string(claims.get("aud"), rules.audience):
        raise _Refused("the claim aud is not the expected audience (signing audience, else the issuer, else the token URL)")
    iat = _integer(claims.get("iat"))
    if iat is None:
        raise _Refused("the claim iat is not a whole number of seconds")
    exp = _integer(claims.get("exp"))
    if exp is None:
        raise _Refused("the claim exp is not a whole number of seconds")
    if not 0 < exp - iat <= MAX_ASSERTION_LIFETIME_SECS:
        raise _Refused(f"the claim exp is not within {MAX_ASSERTION_LIFETIME_SECS} s after iat")
    if not (math.isfinite(now) and abs(iat - now) <= MAX_ASSERTION_SKEW_SECS):
        raise _Refused(f"the claim iat is more than {MAX_ASSERTION_SKEW_SECS} s from this host's clock")
    jti = claims.get("jti")
    if not isinstance(jti, str) or len(jti) < MIN_JTI_CHARS:
        raise _Refused(f"the claim jti is not a string of {MIN_JTI_CHARS} characters or more")
    for name, value in claims.items():
        if name in _COMPONENT_CLAIMS:
            continue
        if name not in rules.claims:
            raise _Refused(f"{_member(name, 'claim')} is not configured (only the jwt-bearer claims are added)")
        if not _is_string(value, rules.claims[name]):
            raise _Refused(f"the claim {name} is not its configured value")
