"""rekey: OAuth2 refresh-and-retry, run as the rekey WebAssembly component
(``rekey:oauth2@0.5.0``) in wasmtime.

    from rekey import Rekey, Settings, Request, SqliteStore

    rekey = Rekey()          # the component packaged with rekey (or wasm=, $REKEY_WASM)
    settings = Settings(token_url="https://login.example.com/oauth2/token",
                        client_id="my-app", client_secret=os.environ["CRM_SECRET"],
                        api_origins=["https://api.example.com"])
    store = SqliteStore("rekey.db")
    resp = rekey.send(settings, Request.get("https://api.example.com/v1/me"),
                      store=store, credential="crm")
"""

import logging

from .aio import AsyncRekey
from .authorize import DeviceAuthorization, PendingAuthorization, StartUrl, StartUrlReused, import_token_response
from .client import Rekey
from .component import PACKAGED_COMPONENT, component_path, packaged_component_sha256
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
    StoreUnavailable,
    TokenEndpointError,
    TransportError,
)
from .http import HttpConfig
from .model import (
    BeforeExpiry,
    ClientAuth,
    EveryRequest,
    Grant,
    KeepaliveOutcome,
    OnAuthFailure,
    Request,
    Response,
    Settings,
    Strategy,
    keys_from_token_response,
)
from .records import (
    Credential,
    CredentialRecord,
    DeadGrant,
    Lease,
    RefreshMark,
    StoredRecord,
    StoreUnusable,
    UnknownCredential,
    WriteConflict,
    WriteFailed,
    WriteUnknown,
)
from .secret import Secret
from .signing import Signing, SigningAlgorithm
from .dpop import Dpop
from .stores import MemoryStore, PostgresStore, RecordStore, SqliteStore, open_store

# A library prints nothing unless the application configures logging
# (without a handler, Python's last-resort handler would print warnings).
logging.getLogger("rekey").addHandler(logging.NullHandler())

__all__ = [
    "Rekey", "AsyncRekey", "Settings", "Request", "Response", "ClientAuth", "Grant", "KeepaliveOutcome", "Strategy",
    "OnAuthFailure",
    "EveryRequest", "BeforeExpiry", "HttpConfig", "Secret", "Signing", "SigningAlgorithm", "Dpop", "RecordStore",
    "MemoryStore", "SqliteStore",
    "PostgresStore", "open_store", "CredentialRecord", "StoredRecord", "Lease", "RefreshMark", "DeadGrant",
    "Credential", "UnknownCredential", "StoreUnusable", "WriteConflict", "WriteFailed", "WriteUnknown",
    "StoreUnavailable",
    "Category", "RekeyError", "NotAuthenticated", "ReauthorizationRequired", "SettingsRejected",
    "TokenEndpointError", "RefreshInDoubt", "RejectedAfterRefresh", "InsufficientScope",
    "TransportError", "KeysNotPersisted", "LeaseUnavailable", "InvalidSettings", "InvalidKeys",
    "StoreError", "ComponentError", "keys_from_token_response",
    "PendingAuthorization", "DeviceAuthorization", "import_token_response", "AccessDenied", "StateMismatch",
    "IssuerMismatch", "AuthorizationProviderError", "DeviceCodeExpired", "AuthorizationTimeout",
    "AuthorizationRejected", "ListenerError", "StartUrl", "StartUrlReused",
    "PACKAGED_COMPONENT", "component_path", "packaged_component_sha256",
]

__version__ = "0.3.0"


def __getattr__(name: str) -> str:
    # ``rekey.COMPONENT_SHA256``: the packaged component's SHA-256, hashed on
    # first use (a source checkout has no packaged component: FileNotFoundError).
    if name == "COMPONENT_SHA256":
        return packaged_component_sha256()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
