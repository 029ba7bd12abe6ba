"""rekey: OAuth2 refresh-and-retry, run as the rekey WebAssembly component
(``rekey:oauth2@0.2.0``) in wasmtime.

    from rekey import Rekey, Settings, Request, FileStore

    rekey = Rekey("rekey_guest.wasm")
    settings = Settings(token_url="https://login.example.com/oauth2/token",
                        client_id="my-app", client_secret=os.environ["CRM_SECRET"])
    resp = rekey.send(settings, Request.get("https://api.example.com/v1/me"),
                      store=FileStore("crm-token.json"))
"""

from .authorize import DeviceAuthorization, PendingAuthorization, import_token_response
from .client import Rekey
from .errors import (
    AccessDenied,
    AuthorizationProviderError,
    AuthorizationRejected,
    AuthorizationTimeout,
    Category,
    ComponentError,
    DeviceCodeExpired,
    InsufficientScope,
    InvalidKeys,
    InvalidSettings,
    IssuerMismatch,
    KeysNotPersisted,
    LeaseUnavailable,
    ListenerError,
    NotAuthenticated,
    ReauthorizationRequired,
    RefreshInDoubt,
    RejectedAfterRefresh,
    RekeyError,
    SettingsRejected,
    StateMismatch,
    StoreError,
    TokenEndpointError,
    TransportError,
)
from .http import HttpConfig
from .model import (
    BeforeExpiry,
    ClientAuth,
    EveryRequest,
    OnAuthFailure,
    Request,
    Response,
    Settings,
    Strategy,
    keys_from_token_response,
)
from .secret import Secret
from .stores import FileStore, KeyStore, MemoryStore

__all__ = [
    "Rekey", "Settings", "Request", "Response", "ClientAuth", "Strategy", "OnAuthFailure",
    "EveryRequest", "BeforeExpiry", "HttpConfig", "Secret", "KeyStore", "FileStore", "MemoryStore",
    "Category", "RekeyError", "NotAuthenticated", "ReauthorizationRequired", "SettingsRejected",
    "TokenEndpointError", "RefreshInDoubt", "RejectedAfterRefresh", "InsufficientScope",
    "TransportError", "KeysNotPersisted", "LeaseUnavailable", "InvalidSettings", "InvalidKeys",
    "StoreError", "ComponentError", "keys_from_token_response",
    "PendingAuthorization", "DeviceAuthorization", "import_token_response", "AccessDenied", "StateMismatch",
    "IssuerMismatch", "AuthorizationProviderError", "DeviceCodeExpired", "AuthorizationTimeout",
    "AuthorizationRejected", "ListenerError",
]
