"""Exceptions mirroring the WIT ``send-error``, each in a category that says
who can fix it (the same categories as the Rust host's ``rekey::Category``).
Every message is safe to log: no token, secret or token-response body."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # annotations only: model needs errors at import
    from .model import Response


class Category(enum.Enum):
    BAD_INPUT = "bad-input"
    NEEDS_AUTHORIZATION = "needs-authorization"
    SETTINGS_WRONG = "settings-wrong"
    TOKEN_ENDPOINT = "token-endpoint"
    REFRESH_IN_DOUBT = "refresh-in-doubt"
    REJECTED_BY_API = "rejected-by-api"
    TRANSPORT = "transport"
    STORE = "store"
    COMPONENT = "component"


class RekeyError(Exception):
    category: Category = Category.COMPONENT
    #: The WIT ``send-error`` case (kebab-case) when the component reported it, else None.
    case: Optional[str] = None

    @property
    def needs_authorization(self) -> bool:
        """True when only a person running the authorisation flow can fix it."""
        return self.category is Category.NEEDS_AUTHORIZATION

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later unchanged."""
        return self.category in (Category.TOKEN_ENDPOINT, Category.TRANSPORT)


class NotAuthenticated(RekeyError):
    category = Category.NEEDS_AUTHORIZATION

    def __init__(self, detail: str):
        super().__init__(f"not authenticated: {detail}")


class _OAuthError(RekeyError):
    def __init__(self, message: str, status: int, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


class ReauthorizationRequired(_OAuthError):
    category = Category.NEEDS_AUTHORIZATION

    def __init__(self, status: int, code: str):
        super().__init__(
            f"re-authorisation needed: the token endpoint refused the refresh with {code} "
            f"(HTTP {status}); the stored keys were left as they were",
            status,
            code,
        )


class SettingsRejected(_OAuthError):
    category = Category.SETTINGS_WRONG

    def __init__(self, status: int, code: str):
        super().__init__(
            f"the token endpoint refused the credential's settings with {code} (HTTP {status}): "
            "check the client id, secret, client authentication, scope and extra parameters; "
            "the stored keys were left as they were",
            status,
            code,
        )


class TokenEndpointError(RekeyError):
    category = Category.TOKEN_ENDPOINT

    def __init__(self, detail: str):
        super().__init__(f"token endpoint failed: {detail}")


class RefreshInDoubt(RekeyError):
    category = Category.REFRESH_IN_DOUBT

    def __init__(self, detail: str):
        super().__init__(
            f"refresh in doubt: {detail}; if the provider rotated the refresh token, "
            "a person must authorise again"
        )


class RejectedAfterRefresh(RekeyError):
    category = Category.REJECTED_BY_API

    def __init__(self, response: Response):
        super().__init__(
            f"the API rejected the request (HTTP {response.status}) again with a freshly refreshed token"
        )
        self.response = response


class InsufficientScope(RekeyError):
    category = Category.REJECTED_BY_API

    def __init__(self, scope: Optional[str], response: Response):
        asks = f" (it asks for {scope!r})" if scope is not None else ""
        super().__init__(f"the API refused the token for lacking scope{asks}")
        self.scope = scope
        self.response = response


class TransportError(RekeyError):
    """The API request could not be sent or answered. ``kind`` is the WIT
    ``transport-error`` case: timeout, connect, too-large, invalid-request,
    refused, other."""

    category = Category.TRANSPORT

    def __init__(self, kind: str, detail: Optional[str] = None):
        super().__init__(f"request failed: {describe_transport(kind, detail)}")
        self.kind = kind
        self.detail = detail
        if kind == "invalid-request":
            self.category = Category.BAD_INPUT


class KeysNotPersisted(RekeyError):
    """Not retryable: the provider may have rotated the refresh token, and a
    retry would spend the old one again."""

    category = Category.STORE

    def __init__(self, detail: str):
        super().__init__(
            f"refreshed keys could not be persisted, so the request was not retried: {detail}"
        )


class LeaseUnavailable(RekeyError):
    category = Category.TOKEN_ENDPOINT

    def __init__(self, detail: str):
        super().__init__(f"refresh lease unavailable: {detail}")


class InvalidSettings(RekeyError):
    category = Category.SETTINGS_WRONG

    def __init__(self, detail: str):
        super().__init__(f"credential settings are unusable: {detail}")
        #: What is wrong, without the prefix.
        self.detail = detail


class InvalidKeys(RekeyError):
    category = Category.BAD_INPUT

    def __init__(self, detail: str):
        super().__init__(f"stored keys are unusable: {detail}")


class StoreUnavailable(RekeyError):
    """The credential's record could not be read or written; nothing was spent."""

    category = Category.STORE

    def __init__(self, detail: str):
        super().__init__(f"the record store is unavailable: {detail}")

    @property
    def retryable(self) -> bool:
        return True


class StoreError(RekeyError):
    """A record store operation failed (see ``rekey.records`` for the kinds)."""

    category = Category.STORE


class ComponentError(RekeyError):
    """A trap, an exhausted deadline or memory limit, or an instantiation failure."""

    category = Category.COMPONENT

    def __init__(self, detail: str):
        super().__init__(f"the rekey component failed: {detail}")


def describe_transport(kind: str, detail) -> str:
    return {
        "timeout": lambda: "timed out",
        "connect": lambda: f"could not connect: {detail}",
        "too-large": lambda: f"response body exceeds the cap of {detail} bytes",
        "invalid-request": lambda: f"invalid request: {detail}",
        "refused": lambda: f"not sent: {detail}",
    }.get(kind, lambda: str(detail))()


# The first token set (``Rekey.authorize_code``, ``authorize_device``): one
# exception per WIT ``authorize-error`` case that is not a send-error's, plus
# the host's own (the redirect timeout, the loopback listener). Besides these,
# authorisation raises InvalidSettings, TokenEndpointError, TransportError and
# StoreError. Messages say nothing was stored; never a code, verifier, token
# or provider text.


class AccessDenied(RekeyError):
    """The person (or the provider for them) refused: ``access_denied``."""

    category = Category.NEEDS_AUTHORIZATION

    def __init__(self) -> None:
        super().__init__("authorisation was refused (access_denied); nothing was stored")


class StateMismatch(RekeyError):
    """The redirect's ``state`` was missing or not this request's (CSRF, a stale tab)."""

    category = Category.NEEDS_AUTHORIZATION

    def __init__(self) -> None:
        super().__init__(
            "the redirect's state does not match this authorisation request (a stale or forged redirect); "
            "nothing was exchanged or stored"
        )


class IssuerMismatch(RekeyError):
    """The redirect's ``iss`` named another issuer (RFC 9207 mix-up)."""

    category = Category.NEEDS_AUTHORIZATION

    def __init__(self) -> None:
        super().__init__(
            "the redirect's iss names another issuer than the credential's (RFC 9207 mix-up); "
            "nothing was exchanged or stored"
        )


class AuthorizationProviderError(RekeyError):
    """The provider answered the authorisation request with another OAuth error
    (``code``), or with no code at all (``no_code``)."""

    category = Category.NEEDS_AUTHORIZATION

    def __init__(self, code: str):
        super().__init__(f"the provider answered the authorisation request with error {code}; nothing was stored")
        self.code = code


class DeviceCodeExpired(RekeyError):
    category = Category.NEEDS_AUTHORIZATION

    def __init__(self) -> None:
        super().__init__("the device code expired before it was approved; nothing was stored")


class AuthorizationTimeout(RekeyError):
    """No redirect arrived at the loopback listener in time."""

    category = Category.NEEDS_AUTHORIZATION

    def __init__(self, timeout: float):
        super().__init__(f"no redirect arrived within {timeout:g} s; nothing was stored (authorise again)")
        self.timeout = timeout


class AuthorizationRejected(_OAuthError):
    """The token or device endpoint refused the request (RFC 6749 §5.2):
    ``invalid_grant`` (a code expired or used: authorise again) or the client's
    settings (``invalid_client``, ...)."""

    def __init__(self, status: int, code: str):
        super().__init__(
            f"the token endpoint refused the request with {code} (HTTP {status}); nothing was stored",
            status,
            code,
        )
        self.category = Category.NEEDS_AUTHORIZATION if code == "invalid_grant" else Category.SETTINGS_WRONG


class ListenerError(RekeyError):
    """The loopback redirect listener could not be set up or read."""

    category = Category.TRANSPORT

    def __init__(self, detail: str):
        super().__init__(f"the loopback redirect listener failed: {detail}")
