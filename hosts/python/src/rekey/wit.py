"""Between plain Python and wasmtime-py's component values for
``rekey:oauth2@0.5.0``: records are ``Record`` objects with kebab-case
attributes; variants whose cases cannot be told apart by Python type are
``Variant(tag, payload)``; ``option``/``result`` are untagged when their cases
have distinct types (``None``/value; for ``result<response, send-error>`` a
``Record`` is ok and a ``Variant`` is err)."""

from __future__ import annotations

from typing import Any, Callable

from wasmtime.component import Record, Variant

from . import errors, origins
from .model import (
    BeforeExpiry,
    EveryRequest,
    OnAuthFailure,
    Request,
    Response,
    Grant,
    Settings,
    claims_of,
    client_auth_of,
    grant_of,
    strategy_of,
)
from . import signing as _signing
from .signing import signing_of
from . import dpop as _dpop
from .records import CredentialRecord, DeadGrant, Lease, RefreshMark, StoredRecord
from .runtime import Bodies


def _record(**fields: Any) -> Record:
    r = Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


def settings(s: Settings) -> Record:
    # Enum fields are read again as the constructor reads them: a dataclass
    # field can be reassigned, e.g. ``settings.client_auth = "post"``.
    kind = strategy_of(s.strategy)
    if isinstance(kind, OnAuthFailure):
        strategy = Variant("on-auth-failure")
    elif isinstance(kind, EveryRequest):
        strategy = Variant("every-request")
    elif isinstance(kind, BeforeExpiry):
        strategy = Variant("before-expiry", int(kind.margin_secs))
    else:
        raise errors.InvalidSettings(f"unknown strategy {type(kind).__name__}")
    # The component has no public suffix list: this rule is the host's.
    origins.check_patterns(s.api_origins, s.instance_url_origins)
    grant = grant_of(s.grant)
    if grant is Grant.JWT_BEARER:
        # An empty subject is the component's to refuse (check-settings says so).
        bearer = _record(subject=s.subject or "", claims=list(claims_of(s.claims).items()))
        wit_grant = Variant(grant.value, bearer)
    else:
        wit_grant = Variant(grant.value)
    signing = signing_of(s.signing)
    dpop = _dpop.dpop_of(s.dpop)
    return _record(
        grant=wit_grant,
        token_url=s.token_url,
        client_id=s.client_id,
        client_secret=s.client_secret.expose() if s.client_secret is not None else None,
        client_auth=client_auth_of(s.client_auth).value,
        scope=s.scope,
        extra_params=[(str(k), str(v)) for k, v in s.extra_params],
        strategy=strategy,
        rejected_statuses=[int(x) for x in s.rejected_statuses],
        api_origins=[str(o) for o in s.api_origins],
        instance_url_origins=[str(o) for o in s.instance_url_origins],
        fleet=_record(lease_ttl_ms=int(s.lease_ttl_ms), lease_wait_ms=int(s.lease_wait_ms)),
        # What the component puts in the JWTs; the key stays here (the signer import).
        signing=None if signing is None else _record(
            algorithm=signing.algorithm.wit, key_id=signing.key_id, audience=audience_of(s, signing)
        ),
        # The DPoP key's algorithm; the key stays here (signer.dpop-public-key, dpop-sign).
        dpop=None if dpop is None else dpop.algorithm.wit,
    )


def audience_of(s: Settings, signing: _signing.Signing) -> "str | None":
    """The assertions' ``aud`` given to the component: ``signing.audience``
    as configured, else the credential's ``issuer`` (rfc7523bis: the
    authorization server's issuer identifier), else None (the component uses
    the token URL)."""
    if signing.audience is not None:
        return signing.audience
    issuer = getattr(s, "issuer", None)
    return issuer if isinstance(issuer, str) and issuer else None


def assertion_rules(s: Settings, signing: _signing.Signing) -> _signing.AssertionRules:
    """What the host's check of an assertion expects (signing.check_assertion),
    from the settings as the component is given them: the algorithm and key
    id, the client id, the jwt-bearer subject and claims, and the audience
    (audience_of, else the token URL, as the component chooses it)."""
    bearer = grant_of(s.grant) is Grant.JWT_BEARER
    return _signing.AssertionRules(
        algorithm=signing.algorithm,
        key_id=signing.key_id,
        client_id=s.client_id,
        audience=audience_of(s, signing) or s.token_url,
        subject=(s.subject or "") if bearer else None,
        claims=dict(claims_of(s.claims)) if bearer else {},
    )


def sign_assertion(s: Settings, algorithm: str, data: bytes) -> "bytes | str":
    """The ``signer.sign`` import for a call with settings ``s``: the host's
    check of ``data`` first (signing.check_assertion), then the key, loaded
    now, signs it. The signature, or a message for the component (which
    refuses the call as ``invalid-settings``, nothing sent). Never raises: an
    exception here would trap the guest."""
    try:
        signing = signing_of(s.signing)
        if signing is not None:
            refusal = _signing.check_assertion(bytes(data), algorithm, assertion_rules(s, signing))
            if refusal is not None:
                _signing.log.warning("assertion not signed: %s", refusal)
                return refusal
    except errors.InvalidSettings as e:
        return e.detail
    except Exception as e:  # a bug here must not trap the guest; its message may quote the input
        return f"the host could not check the assertion ({type(e).__name__})"
    return _signing.sign_for(signing, algorithm, data)


def dpop_public_key(s: Settings, algorithm: str) -> Variant:
    """The ``signer.dpop-public-key`` import for a call with settings ``s``:
    ``ok`` the DPoP key's public JWK (JSON text, public members only), or
    ``err`` a message (no key configured, a key of another type). Never raises."""
    try:
        result = _dpop.public_key_for(s.dpop, algorithm)
    except Exception as e:  # a bug here must not trap the guest
        return Variant("err", f"the host could not give the DPoP public key ({type(e).__name__})")
    if isinstance(result, str):
        return Variant("ok", result)
    return Variant("err", result.detail)


def dpop_sign(s: Settings, algorithm: str, data: bytes,
              api_refusal: "Callable[[str], str | None] | None") -> "bytes | str":
    """The ``signer.dpop-sign`` import for a call with settings ``s``: the
    host's check of the proof (dpop.check_proof: ``htu`` the token URL, or a
    URL ``api_refusal`` allows, the access token's own check at http-send;
    None: the token URL only), then the key, loaded now, compared with the
    proof's ``jwk``, signs it. The signature, or a message for the component
    (invalid-settings, nothing sent). Never raises."""
    try:
        return _dpop.sign_for(
            s.dpop, lambda key: _dpop.ProofRules(key.algorithm, s.token_url, api_refusal), algorithm, data
        )
    except Exception as e:  # a bug here must not trap the guest; its message may quote the input
        return f"the host could not check the DPoP proof ({type(e).__name__})"


def request(r: Request, bodies: Bodies) -> Record:
    """The ``request`` record, its body a handle the call's ``bodies`` hold."""
    return _record(
        method=r.method,
        url=r.url,
        headers=[(str(k), str(v)) for k, v in r.headers],
        body=bodies.own(bytes(r.body)),
    )


def request_from(head: Record, body: bytes) -> Request:
    """What ``http-send`` got: the ``request-head`` and the borrowed body's bytes."""
    return Request(head.method, head.url, list(head.headers), body)


def response(r: Response, bodies: Bodies) -> Record:
    """The ``response`` record, its body a new handle the call's ``bodies`` hold."""
    return _record(status=r.status, headers=r.headers, body=bodies.own(r.body))


def response_from(rec: Record) -> Response:
    """A ``response`` an export returned (the runtime has put bytes in for its body)."""
    return Response(rec.status, list(rec.headers), rec.body)


def stored_record(r: StoredRecord) -> Record:
    return _record(version=r.version, data=credential_record(r.data))


def credential_record(d: CredentialRecord) -> Record:
    lease, mark, dead = d.lease, d.refresh_mark, d.dead_grant
    return _record(
        keys=d.keys_text(),
        lease=_record(holder=lease.holder, until_ms=lease.until_ms) if lease else None,
        refresh_mark=_record(holder=mark.holder, at_ms=mark.at_ms) if mark else None,
        dead_grant=_record(code=dead.code, at=dead.at) if dead else None,
    )


def credential_record_from(rec: Record) -> CredentialRecord:
    lease, mark, dead = rec.lease, getattr(rec, "refresh-mark"), getattr(rec, "dead-grant")
    return CredentialRecord(
        rec.keys,
        Lease(lease.holder, getattr(lease, "until-ms")) if lease is not None else None,
        RefreshMark(mark.holder, getattr(mark, "at-ms")) if mark is not None else None,
        DeadGrant(dead.code, dead.at) if dead is not None else None,
    )


def write_error(kind: str, message: str = "") -> Variant:
    """A ``write-error``: conflict, failed(message), unknown(message)."""
    return Variant("conflict") if kind == "conflict" else Variant(kind, message)


def transport_error(e: errors.TransportError) -> Variant:
    if e.kind == "timeout":
        return Variant("timeout")
    if e.kind == "too-large":
        return Variant("too-large", int(e.detail))
    return Variant(e.kind, str(e.detail))


def send_error(v: Variant) -> errors.RekeyError:
    """The typed exception for one ``send-error`` case; ``.case`` names it
    (kebab-case, as in the WIT)."""
    e = _send_error(v.tag, v.payload)
    e.case = v.tag
    return e


def _send_error(tag: str, p) -> errors.RekeyError:
    simple = {
        "not-authenticated": errors.NotAuthenticated,
        "token-endpoint": errors.TokenEndpointError,
        "refresh-in-doubt": errors.RefreshInDoubt,
        "keys-not-persisted": errors.KeysNotPersisted,
        "lease-unavailable": errors.LeaseUnavailable,
        "store-unavailable": errors.StoreUnavailable,
        "invalid-settings": errors.InvalidSettings,
        "invalid-keys": errors.InvalidKeys,
    }
    if tag in simple:
        return simple[tag](p)
    if tag == "reauthorization-required":
        return errors.ReauthorizationRequired(p.status, p.code)
    if tag == "settings-rejected":
        return errors.SettingsRejected(p.status, p.code)
    if tag == "rejected-after-refresh":
        return errors.RejectedAfterRefresh(response_from(p))
    if tag == "insufficient-scope":
        return errors.InsufficientScope(p.scope, response_from(p.response))
    if tag == "transport":
        return errors.TransportError(p.tag, p.payload)
    return errors.ComponentError(f"unknown send-error case {tag!r}")


def authorization(
    s: Settings,
    redirect_uri: str,
) -> Record:
    """The ``authorization`` record for a credential's settings: the scope
    asked for is ``auth_params``' ``scope`` when there is one, else
    ``settings.scope`` (as the Rust host does)."""
    params = [(str(k), str(v)) for k, v in s.auth_params]
    scope = next((v for k, v in params if k == "scope"), s.scope)
    return _record(
        authorization_url=s.authorization_url,
        device_url=s.device_url,
        redirect_uri=redirect_uri,
        scope=scope,
        auth_params=[(k, v) for k, v in params if k != "scope"],
        issuer=s.issuer,
        issuer_sends_iss=_flag(getattr(s, "issuer_sends_iss", False), "issuer_sends_iss"),
    )


def _flag(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise errors.InvalidSettings(f"{name} must be True or False")
    return v


def pending(url: str, state: str, code_verifier: str) -> Record:
    return _record(url=url, state=state, code_verifier=code_verifier)


def device_grant(fields: dict) -> Record:
    return _record(**fields)


def device_grant_fields(rec: Record) -> dict:
    return {
        name.replace("-", "_"): getattr(rec, name)
        for name in (
            "user-code", "verification-uri", "verification-uri-complete", "expires-in", "interval", "device-code",
        )
    }


def authorize_error(v: Variant) -> errors.RekeyError:
    """The typed exception for one ``authorize-error`` case."""
    tag, p = v.tag, v.payload
    if tag == "invalid-settings":
        return errors.InvalidSettings(p)
    if tag == "access-denied":
        return errors.AccessDenied()
    if tag == "state-mismatch":
        return errors.StateMismatch()
    if tag == "issuer-mismatch":
        return errors.IssuerMismatch()
    if tag == "provider-error":
        e = errors.AuthorizationProviderError(p)
        if p == "invalid_scope":
            # The scope asked for comes from the settings: approving again cannot fix it.
            e.category = errors.Category.SETTINGS_WRONG
        return e
    if tag == "expired":
        return errors.DeviceCodeExpired()
    if tag == "rejected":
        return errors.AuthorizationRejected(p.status, p.code)
    if tag == "endpoint":
        return errors.TokenEndpointError(p)
    if tag == "transport":
        return errors.TransportError(p.tag, p.payload)
    return errors.ComponentError(f"unknown authorize-error case {tag!r}")
