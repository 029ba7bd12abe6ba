"""DPoP (RFC 9449): the host's side of ``signer.dpop-public-key`` and
``signer.dpop-sign``. With ``Settings.dpop`` the component sends a proof
(a JWT with ``typ`` ``dpop+jwt`` and the DPoP key's public JWK in its
header) with every token-endpoint request, and with every API request that
carries a DPoP-bound token; the host holds the key and signs the proofs.

A credential's :class:`Dpop` names the key's algorithm (RS256 or ES256) and
where the key is, as :class:`rekey.Signing` does: a PEM file (``key_file``),
an environment variable holding the PEM (``key_env``) or, for settings
passed to each call, a key object in memory (``key``; a store never holds
it). The DPoP key is its own setting: it may be the signing key's file or
another one.

Before signing, :func:`check_proof` checks what the component asks the host
to sign (the same rule in every host): only a DPoP proof for this
credential's token URL or for an origin its access token may go to, dated
now, with this key's public JWK and nothing else. A refusal names the member
that failed, never the input or the key."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Optional

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import signing as _signing
from .errors import InvalidSettings
from .signing import PrivateKey, Signing, SigningAlgorithm, algorithm_of

#: How far a proof's ``iat`` may be from this host's clock.
MAX_PROOF_SKEW_SECS = 60
#: A proof's ``jti`` is at least this long (the component's: 32 hex digits).
MIN_JTI_CHARS = 16
#: ``ath``: base64url (unpadded) of a SHA-256 digest.
ATH_CHARS = 43

_HEADER_MEMBERS = ("typ", "alg", "jwk")
_CLAIMS = ("jti", "htm", "htu", "iat", "nonce", "ath")
#: Member names a refusal may quote (registered JOSE header parameters and JWT
#: and DPoP claims); any other name is the component's text and is not repeated.
_NAMEABLE = _signing._NAMEABLE | {"htm", "htu", "ath", "dpop_jkt", "kty", "crv", "x", "y", "n", "e", "d", "p", "q",
                                  "dp", "dq", "qi", "oth", "k", "use", "key_ops"}
_UPPER = re.compile(r"[A-Z]+")
_ATH = re.compile(r"[A-Za-z0-9_-]{%d}" % ATH_CHARS)
_REFUSED = "refused by the host's check of what it signs (DPoP proof): "


class Dpop(Signing):
    """A credential's DPoP key (RFC 9449): its algorithm, ``"ES256"`` or
    ``"RS256"``, and exactly one of ``key_file`` (a regular PEM file of 64
    KiB at most, read when a proof is signed), ``key_env`` (the name of an
    environment variable holding the PEM) or ``key`` (a ``cryptography`` RSA
    or EC private key object; never written to a store). PEM keys may be
    PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted; RS256 needs RSA of 2048 bits
    or more, ES256 an EC key on P-256.

    ``repr()`` shows the file or the variable, never a key."""

    __slots__ = ()
    _field = "dpop"
    _noun = "DPoP key"

    def __init__(
        self,
        algorithm: "SigningAlgorithm | str",
        *,
        key_file: "Optional[str | os.PathLike]" = None,
        key_env: Optional[str] = None,
        key: Optional[PrivateKey] = None,
    ):
        self.algorithm = algorithm_of(algorithm)
        self.key_id = None
        self.audience = None
        self._set_key(key_file, key_env, key)

    def __reduce__(self):
        if self._key is not None:
            raise TypeError("a Dpop with an in-memory key cannot be pickled (use key_file= or key_env=)")
        return (_rebuild, (self.algorithm.value, self.key_file, self.key_env))

    def public_jwk(self, algorithm: "SigningAlgorithm | str | None" = None) -> dict:
        """The key's public JWK (only public members), the key loaded now.
        ``algorithm`` (the component's ask) must be this key's. Raises
        :class:`InvalidSettings` naming the source."""
        alg = self.algorithm if algorithm is None else algorithm_of(algorithm)
        if alg is not self.algorithm:
            raise InvalidSettings(
                f"the component asked for an {alg.value} DPoP key, but the credential's DPoP key is for "
                f"{self.algorithm.value}"
            )
        return public_jwk(self.load())


def _rebuild(algorithm, key_file, key_env) -> Dpop:
    return Dpop(algorithm, key_file=key_file, key_env=key_env)


def dpop_of(value: "Dpop | dict | None") -> Optional[Dpop]:
    """A ``Dpop`` from itself, None, or a dict of its arguments (as a store
    keeps them: ``{"algorithm": "ES256", "key_file": ...}``)."""
    if value is None or isinstance(value, Dpop):
        return value
    if isinstance(value, dict):
        known = {"algorithm", "key_file", "key_env", "key"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidSettings(f"unknown dpop field(s) {', '.join(map(repr, unknown))} (expected {sorted(known)})")
        if "algorithm" not in value:
            raise InvalidSettings("dpop needs an algorithm (ES256 or RS256)")
        args = dict(value)
        return Dpop(args.pop("algorithm"), **args)
    if isinstance(value, Signing):
        raise InvalidSettings("dpop must be a rekey.Dpop (or a dict of its fields), not a rekey.Signing")
    raise InvalidSettings(f"dpop must be a rekey.Dpop (or a dict of its fields), not {type(value).__name__}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned(value: int) -> bytes:
    """Big-endian, as short as it goes (no leading zero byte; RFC 7518 §6.3.1.1)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def public_jwk(key: PrivateKey) -> dict:
    """The public JWK of ``key`` (RFC 7518 §6.2.1, §6.3.1): EC P-256 ``kty``,
    ``crv``, ``x``, ``y`` (32 bytes each); RSA ``kty``, ``n``, ``e``. Only
    public members; base64url without padding."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidSettings(f"a DPoP key on {key.curve.name} has no JWK here; ES256 needs P-256")
        numbers = key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big"))}
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _b64url(_unsigned(numbers.n)), "e": _b64url(_unsigned(numbers.e))}
    raise InvalidSettings(f"a DPoP key must be RSA or EC P-256, not {type(key).__name__}")


def public_key_for(dpop: "Dpop | dict | None", algorithm: str) -> "str | InvalidSettings":
    """The ``signer.dpop-public-key`` import: the public JWK as JSON text,
    or an ``InvalidSettings`` whose detail goes to the component. Never raises."""
    where = "the DPoP key"
    try:
        key = dpop_of(dpop)
        if key is None:
            raise InvalidSettings("no DPoP key is configured for this credential (settings.dpop)")
        where = key.source
        return json.dumps(key.public_jwk(algorithm), separators=(",", ":"))
    except InvalidSettings as e:
        _signing.log.warning("DPoP public key not given: %s", e.detail)
        return e
    except Exception as e:  # a library's surprise: its type only
        _signing.log.warning("DPoP public key not given: %s failed (%s)", where, type(e).__name__)
        return InvalidSettings(f"{where} could not be read ({type(e).__name__})")


@dataclass(frozen=True)
class ProofRules:
    """What :func:`check_proof` expects, from the call's settings."""

    #: The settings' DPoP algorithm.
    algorithm: SigningAlgorithm
    #: The credential's token URL (``htu`` of a token-endpoint proof).
    token_url: str
    #: Why the access token may not go to a URL (the host's own check at
    #: ``http-send``), or None when it may; None for calls that make no API
    #: request (an authorisation): then only the token URL is an ``htu``.
    api_refusal: Optional[Callable[[str], Optional[str]]] = None


_Refused = _signing._Refused


def _member(name: str, what: str) -> str:
    return _signing._member(name, what, _NAMEABLE)


def _without_query(url: str) -> str:
    return url.split("#", 1)[0].split("?", 1)[0]


def check_proof(data: bytes, algorithm: "SigningAlgorithm | str", rules: ProofRules,
                now: Optional[float] = None) -> "tuple[Optional[str], Optional[dict]]":
    """Whether ``data`` may be signed as a DPoP proof for ``algorithm`` under
    ``rules``, checked without the key: ``(refusal, None)``, or ``(None,
    jwk)`` with the header's ``jwk``, which the caller compares with the
    key's public JWK (:func:`jwk_refusal`) before it signs. The rule: ASCII
    ``header.claims``, each part base64url (unpadded) of a JSON object; the
    header exactly ``typ`` "dpop+jwt", ``alg`` (the algorithm asked and
    configured) and ``jwk`` (an object); the claims ``htm`` (upper-case
    ASCII letters), ``htu`` (the token URL, or an http(s) URL without query
    or fragment whose origin the access token may go to), integer ``iat``
    within 60 s of this host's clock, ``jti`` of 16 characters or more,
    optional ``nonce`` (a string) and ``ath`` (43 base64url characters), and
    nothing else. Names the member that failed; never quotes the input."""
    try:
        jwk = _check_proof(bytes(data), algorithm, rules, time.time() if now is None else now)
    except _Refused as e:
        return _REFUSED + str(e), None
    return None, jwk


def jwk_refusal(jwk: dict, public: dict) -> Optional[str]:
    """Why the header's ``jwk`` is not the key's public JWK ``public`` (same
    members, same values: a private member such as ``d`` is refused), or None."""
    if jwk != public:
        extra = sorted(set(jwk) - set(public))
        private = [n for n in extra if n in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")]
        if private:
            return _REFUSED + f"the header's jwk has the private member {private[0]}"
        return _REFUSED + "the header's jwk is not this credential's DPoP public key"
    return None


def _check_proof(data: bytes, algorithm, rules: ProofRules, now: float) -> dict:
    configured = rules.algorithm.value
    header, claims = _signing._signing_input(data, algorithm, configured, _HEADER_MEMBERS, "the DPoP key is for",
                                             objects=("jwk",), nameable=_NAMEABLE)
    if not _signing._is_string(header.get("typ"), "dpop+jwt"):
        raise _Refused('the header\'s typ is not "dpop+jwt"')
    if not _signing._is_string(header.get("alg"), configured):
        raise _Refused(f"the header's alg is not {configured}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _Refused("the header's jwk is not a JSON object")

    for name in claims:
        if name not in _CLAIMS:
            raise _Refused(f"{_member(name, 'claim')} is not allowed (only jti, htm, htu, iat, nonce and ath)")
    htm = claims.get("htm")
    if not isinstance(htm, str) or not _UPPER.fullmatch(htm):
        raise _Refused("the claim htm is not an HTTP method (upper-case ASCII letters)")
    htu = claims.get("htu")
    if not isinstance(htu, str):
        raise _Refused("the claim htu is not a string")
    if htu not in (rules.token_url, _without_query(rules.token_url)):
        _check_htu(htu, rules)
    iat = _signing._integer(claims.get("iat"))
    if iat is None:
        raise _Refused("the claim iat is not a whole number of seconds")
    if not (math.isfinite(now) and abs(iat - now) <= MAX_PROOF_SKEW_SECS):
        raise _Refused(f"the claim iat is more than {MAX_PROOF_SKEW_SECS} s from this host's clock")
    jti = claims.get("jti")
    if not isinstance(jti, str) or len(jti) < MIN_JTI_CHARS:
        raise _Refused(f"the claim jti is not a string of {MIN_JTI_CHARS} characters or more")
    if "nonce" in claims and not isinstance(claims["nonce"], str):
        raise _Refused("the claim nonce is not a string")
    if "ath" in claims and not (isinstance(claims["ath"], str) and _ATH.fullmatch(claims["ath"])):
        raise _Refused(f"the claim ath is not {ATH_CHARS} base64url characters (a SHA-256 digest)")
    return jwk


def _ambiguous_authority(url: str) -> bool:
    """Whether the authority (between ``://`` and the next ``/``, ``?`` or
    ``#``) holds anything URL parsers disagree on: WHATWG reads
    ``https://a.example\\@b.example/`` as host ``a.example``, Python's as
    ``b.example``. The same rule in every host."""
    rest = url.split("://", 1)[1] if "://" in url else url
    end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    return any(c in "@\\%" or ord(c) <= 0x20 or ord(c) >= 0x7f for c in rest[:end])


def _check_htu(htu: str, rules: ProofRules) -> None:
    """An ``htu`` that is not the token URL: an http(s) URL without query or
    fragment that the access token may go to (the host's check at http-send)."""
    not_allowed = "the claim htu is neither the token URL nor a URL the access token may go to"
    if rules.api_refusal is None:
        raise _Refused("the claim htu is not the token URL (an authorisation makes no API request)")
    if _ambiguous_authority(htu):
        raise _Refused("the claim htu has an authority parsers read differently (user information, '\\', '%', "
                       "spaces or control characters)")
    try:
        url = urllib.parse.urlsplit(htu)
    except ValueError:
        raise _Refused(not_allowed) from None
    if url.scheme not in ("http", "https") or not url.netloc:
        raise _Refused("the claim htu is not an http(s) URL")
    if "?" in htu or "#" in htu:
        raise _Refused("the claim htu has a query or a fragment")
    if rules.api_refusal(htu) is not None:
        raise _Refused(not_allowed)


def sign_for(dpop: "Dpop | dict | None", rules_of: Callable[[Dpop], ProofRules], algorithm: str,
             data: bytes) -> "bytes | str":
    """The ``signer.dpop-sign`` import: the host's check of ``data`` first
    (everything it can check without the key), then the key, loaded now, is
    compared with the proof's ``jwk`` and signs it. The signature, or a
    message for the component (which refuses the call as invalid-settings,
    nothing sent). Never raises: an exception here would trap the guest."""
    where = "the DPoP key"
    try:
        key_source = dpop_of(dpop)
        if key_source is None:
            raise InvalidSettings("no DPoP key is configured for this credential (settings.dpop)")
        where = key_source.source
        refusal, jwk = check_proof(bytes(data), algorithm, rules_of(key_source))
        if refusal is not None:
            _signing.log.warning("DPoP proof not signed: %s", refusal)
            return refusal
        key = key_source.load()
        refusal = jwk_refusal(jwk or {}, public_jwk(key))
        if refusal is not None:
            _signing.log.warning("DPoP proof not signed: %s", refusal)
            return refusal
        signature = _signing.sign_with(key, key_source.algorithm, bytes(data), where)
    except InvalidSettings as e:
        _signing.log.warning("DPoP proof not signed: %s", e.detail)
        return e.detail
    except Exception as e:  # a library's surprise or a bug: its type only, its message may hold anything
        _signing.log.warning("DPoP proof not signed: %s failed (%s)", where, type(e).__name__)
        return f"{where} could not sign the DPoP proof ({type(e).__name__})"
    _signing.log.debug("DPoP proof signed (%s, %s)", key_source.algorithm.value, where)
    return signature
