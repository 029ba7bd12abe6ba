"""The plain-Python values a caller passes in and gets back."""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from . import origins
from .errors import InvalidSettings
from .keys import keys_text
from .secret import Secret
from .signing import Signing, SigningAlgorithm, signing_of  # noqa: F401 (SigningAlgorithm: re-exported)
from .dpop import Dpop, dpop_of


class Grant(enum.Enum):
    """How the credential gets a new token set (the WIT ``grant``)."""

    #: Spends the stored refresh token (RFC 6749 §6); a person authorises first.
    REFRESH_TOKEN = "refresh-token"
    #: The client's own credentials (RFC 6749 §4.4), machine to machine: no
    #: keys are needed before the first call; needs a client secret or
    #: ``private_key_jwt`` client authentication.
    CLIENT_CREDENTIALS = "client-credentials"
    #: A signed assertion (RFC 7523 §2.1), e.g. a service account: like the
    #: client's own grant (nothing stored first, no refresh token), the
    #: assertion's ``sub`` being ``Settings.subject``; needs ``Settings.signing``.
    JWT_BEARER = "jwt-bearer"

    @classmethod
    def _missing_(cls, value: object) -> "Optional[Grant]":
        # Every host's spelling: any case, '_' or '-' ("jwt_bearer").
        if isinstance(value, str):
            spelled = value.strip().lower().replace("_", "-")
            for grant in cls:
                if spelled == grant.value:
                    return grant
        return None


def grant_of(value: "Grant | str") -> Grant:
    """A ``Grant`` from itself or its name in any host's spelling
    (``"jwt_bearer"``, ``"client-credentials"``); anything else is a clear error."""
    if isinstance(value, Grant):
        return value
    try:
        return Grant(value)
    except ValueError:
        names = ", ".join(repr(g.value) for g in Grant)
        raise InvalidSettings(f"unknown grant {value!r} (expected one of {names})") from None


class KeepaliveOutcome(enum.Enum):
    """What :meth:`Rekey.keepalive` did (the WIT ``keepalive-outcome``)."""

    #: Nothing was due (the stored set is younger than asked and its refresh
    #: token not about to expire), or another worker renewed it meanwhile:
    #: nothing was spent or written.
    FRESH = "fresh"
    #: The refresh token was exchanged and the new set stored.
    REFRESHED = "refreshed"
    #: The grant keeps no refresh token (client credentials, jwt-bearer), or
    #: the stored set has none: nothing dies from disuse.
    NOTHING_TO_KEEP = "nothing-to-keep"


class ClientAuth(enum.Enum):
    """How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
    ``ClientAuth("post")`` and the RFC's ``client_secret_post`` name it too:
    every host reads the same spellings."""

    BASIC = "client-secret-basic"
    POST = "client-secret-post"
    #: A JWT signed with the client's private key (RFC 7523 §2.2, OIDC's
    #: ``private_key_jwt``); needs ``Settings.signing``; no secret is sent.
    PRIVATE_KEY_JWT = "private-key-jwt"

    @classmethod
    def _missing_(cls, value: object) -> "Optional[ClientAuth]":
        if isinstance(value, str):
            spelled = value.strip().lower().replace("_", "-")
            for auth in cls:
                if spelled in (auth.value, auth.value.removeprefix("client-secret-")):
                    return auth
        return None


def client_auth_of(value: "ClientAuth | str") -> ClientAuth:
    """A ``ClientAuth`` from itself or any host's spelling; anything else is a clear error."""
    try:
        return ClientAuth(value)
    except ValueError:
        raise InvalidSettings(
            f"unknown client auth {value!r} (expected basic, post, client-secret-basic, client-secret-post "
            "or private-key-jwt)"
        ) from None


@dataclass(frozen=True)
class OnAuthFailure:
    """Refresh only after the API rejects the access token (the standard way)."""


@dataclass(frozen=True)
class EveryRequest:
    """Refresh before every request."""


@dataclass(frozen=True)
class BeforeExpiry:
    """Refresh when the access token expires within ``margin_secs``; still
    refreshes when the API rejects it."""

    margin_secs: int = 60


Strategy = Union[OnAuthFailure, EveryRequest, BeforeExpiry]

_STRATEGY_NAMES = {"on-auth-failure": OnAuthFailure, "every-request": EveryRequest, "before-expiry": BeforeExpiry}


def strategy_of(value: "Strategy | str") -> Strategy:
    """A strategy from itself or its name in every host (``"every-request"``;
    ``"before-expiry"`` takes the default margin); anything else is a clear error."""
    if isinstance(value, (OnAuthFailure, EveryRequest, BeforeExpiry)):
        return value
    kind = _STRATEGY_NAMES.get(value.strip().lower().replace("_", "-")) if isinstance(value, str) else None
    if kind is None:
        raise InvalidSettings(f"unknown strategy {value!r} (expected one of {', '.join(_STRATEGY_NAMES)})")
    return kind()


@dataclass
class Settings:
    """A credential's settings (the WIT ``settings`` record)."""

    token_url: str
    client_id: str
    client_secret: Optional[Secret] = None
    client_auth: ClientAuth = ClientAuth.BASIC
    scope: Optional[str] = None
    extra_params: list[tuple[str, str]] = field(default_factory=list)
    strategy: Strategy = field(default_factory=OnAuthFailure)
    #: Statuses that mean "token rejected"; empty means [401].
    rejected_statuses: list[int] = field(default_factory=list)
    #: The authorization endpoint (https; http only on loopback), for ``authorize_code``.
    authorization_url: Optional[str] = None
    #: The device authorization endpoint (RFC 8628), for ``authorize_device``.
    device_url: Optional[str] = None
    #: The issuer a redirect's ``iss`` must name (RFC 9207); None: a redirect
    #: that carries ``iss`` is refused (InvalidSettings: set the issuer).
    issuer: Optional[str] = None
    #: Extra authorization request parameters, e.g. ``[("prompt", "consent")]``; a
    #: ``scope`` here is the scope asked for at authorisation (default: ``scope``).
    auth_params: list[tuple[str, str]] = field(default_factory=list)
    #: Where the access token may be sent: ``https://api.example.com[:port]``,
    #: ``https://*.example.com`` (subdomains), ``http://`` only on loopback.
    #: Empty: not bound (any https origin, or http on loopback).
    api_origins: list[str] = field(default_factory=list)
    #: Patterns (the syntax of ``api_origins``) the token set's ``instance_url``
    #: must match for its origin to receive the token too (Salesforce:
    #: ``["https://*.my.salesforce.com"]``). One that matches none is ignored.
    instance_url_origins: list[str] = field(default_factory=list)
    #: The refresh lease's time to live across the fleet (ms; 0: 40 000). Must
    #: exceed the HTTP total timeout; workers' clocks must agree well within it.
    lease_ttl_ms: int = 0
    #: How long a call waits for another worker's lease (ms; 0: 60 000).
    lease_wait_ms: int = 0
    #: How new token sets are obtained (a ``Grant`` or its name, e.g.
    #: ``"client-credentials"``). Last, so positional arguments keep their meaning.
    grant: Grant = Grant.REFRESH_TOKEN
    #: The issuer's metadata says ``authorization_response_iss_parameter_supported``
    #: (RFC 9207 §3): a redirect without ``iss`` is refused (IssuerMismatch).
    #: This host discovers no metadata: say it here (default False).
    issuer_sends_iss: bool = False
    #: The ``jwt_bearer`` grant's subject: the assertion's ``sub`` (a service
    #: account, or the user the token acts for).
    subject: Optional[str] = None
    #: The ``jwt_bearer`` grant's further assertion claims (string values),
    #: e.g. ``{"scope": "api.read"}``; rekey sets iss, sub, aud, exp, iat,
    #: nbf and jti itself.
    claims: dict[str, str] = field(default_factory=dict)
    #: How ``private_key_jwt`` and ``jwt_bearer`` assertions are signed, and
    #: with which key (:class:`Signing`, or a dict of its fields).
    signing: Optional[Signing] = None
    #: DPoP (RFC 9449): the credential's DPoP key (:class:`Dpop`, or a dict
    #: of its fields: ``{"algorithm": "ES256", "key_file": ...}``). Token
    #: requests carry a proof signed with it, so the server binds the tokens
    #: to it; a ``DPoP`` token set is sent as ``Authorization: DPoP`` with a
    #: proof. None: no proofs, and a DPoP-bound token set is refused.
    dpop: Optional[Dpop] = None

    def __post_init__(self) -> None:
        self.grant = grant_of(self.grant)
        self.client_auth = client_auth_of(self.client_auth)
        self.strategy = strategy_of(self.strategy)
        self.signing = signing_of(self.signing)
        self.dpop = dpop_of(self.dpop)
        self.claims = claims_of(self.claims)
        # Accept a plain str, keep a Secret: the dataclass repr stays safe.
        if self.client_secret is not None and not isinstance(self.client_secret, Secret):
            self.client_secret = Secret(self.client_secret)


def claims_of(value) -> dict[str, str]:
    """The jwt-bearer claims as a dict of strings, from a dict or a list of
    (name, value) pairs; a value that is not a string is a clear error."""
    if value is None:
        return {}
    try:
        pairs = list(value.items()) if hasattr(value, "items") else [tuple(p) for p in value]
    except TypeError:
        raise InvalidSettings("claims must be a dict of names to string values") from None
    out: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
            raise InvalidSettings("claims must map claim names to string values (e.g. {\"scope\": \"api.read\"})")
        out[pair[0]] = pair[1]
    return out


@dataclass
class Request:
    """One HTTP request. rekey adds ``Authorization`` itself and replaces any
    the caller set; ``Host`` and ``Content-Length`` come from the body/URL."""

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def get(cls, url: str, headers: Optional[list[tuple[str, str]]] = None) -> "Request":
        return cls("GET", url, list(headers or []))

    @classmethod
    def post(cls, url: str, body: bytes, headers: Optional[list[tuple[str, str]]] = None) -> "Request":
        return cls("POST", url, list(headers or []), bytes(body))

    def __repr__(self) -> str:
        # Header values may be API keys; the URL's query may hold secrets too.
        names = [name for name, _ in self.headers]
        return f"Request(method={self.method!r}, url={_url_without_query(self.url)!r}, header_names={names!r}, body_len={len(self.body)})"


@dataclass
class Response:
    """The API's answer. Header names are lower-case, order and duplicates kept."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), if any."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        # A body can echo anything the API holds; show its size only.
        return f"Response(status={self.status}, headers={len(self.headers)}, body_len={len(self.body)})"


def _url_without_query(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


#: Fields the component derives and keeps in a token set itself
#: (``guest/src/keys.rs`` ``DERIVED``): a provider's own are dropped on
#: import, or a sent ``expires_at`` far ahead would keep an expired token in
#: use and a sent ``rekey_rejected`` would stop refreshes.
DERIVED_FIELDS = ("expires_at", "rekey_refreshed_at", "rekey_rejected", "rekey_lifetime", "refresh_expires_at", "rekey_refused")


def first_token_set(fields: dict, expires_at: "int | None") -> str:
    """A first token set (JSON text) from a token response's fields: the
    derived fields dropped, ``expires_at`` (Unix seconds) the caller's own."""
    keys = {k: v for k, v in fields.items() if k not in DERIVED_FIELDS}
    if expires_at is not None:
        keys["expires_at"] = expires_at
    return json.dumps(keys)


def keys_from_token_response(token_response: "str | dict | Secret", now: "float | None" = None) -> str:
    """A token set to store from the provider's authorization-code answer
    (a dict, JSON text or a Secret; anything else is a TypeError): the whole
    response plus ``expires_at`` (Unix seconds) from ``expires_in``, as the
    guest does for the sets it emits, so ``BeforeExpiry`` can tell; fields
    the component derives itself (:data:`DERIVED_FIELDS`) are dropped."""
    keys = json.loads(keys_text(token_response, "a token response"))
    if not isinstance(keys, dict) or not (keys.get("access_token") or keys.get("refresh_token")):
        raise ValueError("a token response must be a JSON object with an access or a refresh token")
    expires_in = keys.get("expires_in")
    expires_at = None
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        expires_at = int((time.time() if now is None else now) + expires_in)
    return first_token_set(keys, expires_at)


def settings_json(settings: Settings, client_secret_env: "str | None" = None) -> str:
    """The settings column a store writes when it creates a credential: the
    Rust host's format (``host/src/settings.rs``), so its CLI can show it and
    its workers can use it. The client secret is written as
    ``{"env": client_secret_env}`` when that is given (the store then never
    holds it), else as ``{"literal": ...}`` as the Rust CLI stores one."""
    grant = grant_of(settings.grant)
    auth = client_auth_of(settings.client_auth)
    signing = signing_of(settings.signing)
    if grant is Grant.CLIENT_CREDENTIALS and settings.client_secret is None and auth is not ClientAuth.PRIVATE_KEY_JWT:
        raise InvalidSettings("the client-credentials grant needs a client secret or private_key_jwt client authentication")
    if grant is Grant.JWT_BEARER and not settings.subject:
        raise InvalidSettings("the jwt-bearer grant needs subject= (the assertion's sub)")
    for needs, what in ((grant is Grant.JWT_BEARER, "the jwt-bearer grant"),
                        (auth is ClientAuth.PRIVATE_KEY_JWT, "private_key_jwt client authentication")):
        if needs and signing is None:
            raise InvalidSettings(f"{what} needs signing= (the algorithm and the key's file or variable)")
    # Never written: the Rust host sharing the store refuses such settings.
    origins.check_patterns(settings.api_origins, settings.instance_url_origins)
    strategy = settings.strategy
    margin = strategy.margin_secs if isinstance(strategy, BeforeExpiry) else 60
    name = {OnAuthFailure: "on-auth-failure", EveryRequest: "every-request", BeforeExpiry: "before-expiry"}
    secret = None
    if settings.client_secret is not None:
        secret = {"env": client_secret_env} if client_secret_env else {"literal": settings.client_secret.expose()}
    out: dict = {
        # Written only when not the default, as the Rust and Node hosts do: a
        # column without it (any 0.3 one) reads as refresh-token everywhere.
        **({} if grant is Grant.REFRESH_TOKEN else {"grant": grant.value}),
        "token_url": settings.token_url,
        "client_id": settings.client_id,
        "client_secret": secret,
        "client_auth": {ClientAuth.BASIC: "basic", ClientAuth.POST: "post"}.get(auth, "private_key_jwt"),
        "scope": settings.scope,
        "extra_params": [[str(k), str(v)] for k, v in settings.extra_params],
        "strategy": name[type(strategy)],
        "expiry_margin_secs": int(margin),
        "rejected_statuses": [int(s) for s in settings.rejected_statuses] or [401],
        "api_origins": list(settings.api_origins),
        "instance_url_origins": list(settings.instance_url_origins),
    }
    for key in ("authorization_url", "device_url", "issuer"):
        if getattr(settings, key) is not None:
            out[key] = getattr(settings, key)
    if settings.issuer_sends_iss is True:
        out["issuer_sends_iss"] = True  # written only when set, as the Rust host does
    if settings.auth_params:
        out["auth_params"] = [[str(k), str(v)] for k, v in settings.auth_params]
    if grant is Grant.JWT_BEARER:
        out["subject"] = settings.subject
        out["claims"] = claims_of(settings.claims)
    if signing is not None:
        # The key's file or variable, never the key (an in-memory key is refused here).
        out["signing"] = signing.stored()
    dpop = dpop_of(settings.dpop)
    if dpop is not None:
        # {"algorithm": ..., "key_file" | "key_env": ...}: never the key.
        out["dpop"] = dpop.stored()
    return json.dumps(out)
