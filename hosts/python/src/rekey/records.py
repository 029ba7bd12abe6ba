"""One credential's record (the WIT ``credential-record``), as every store
keeps it, and the ways a store operation fails. The component decides every
field; stores keep them as given (``docs/record-store.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import StoreError
from .secret import Secret


@dataclass(frozen=True)
class Lease:
    """One holder at a time may refresh; free after ``until_ms`` (wall-clock Unix ms)."""

    holder: str
    until_ms: int


@dataclass(frozen=True)
class RefreshMark:
    """A refresh request may have left under ``holder`` at ``at_ms`` and its result is not stored."""

    holder: str
    at_ms: int


@dataclass(frozen=True)
class DeadGrant:
    """The token endpoint declared the grant dead (``code``) at ``at`` (Unix seconds)."""

    code: str
    at: int


@dataclass(frozen=True)
class CredentialRecord:
    #: The token set, a JSON object as text; None before anyone authenticates.
    keys: Optional[Secret] = None
    lease: Optional[Lease] = None
    refresh_mark: Optional[RefreshMark] = None
    dead_grant: Optional[DeadGrant] = None

    def __post_init__(self) -> None:
        if self.keys is not None and not isinstance(self.keys, Secret):
            object.__setattr__(self, "keys", Secret(self.keys))

    def keys_text(self) -> Optional[str]:
        return self.keys.expose() if self.keys is not None else None


@dataclass(frozen=True)
class StoredRecord:
    """The record with its version, which grows with every write."""

    version: int
    data: CredentialRecord = field(default_factory=CredentialRecord)


@dataclass(frozen=True)
class Credential:
    """What an operator sees of a stored credential: never a token or a
    client secret (``settings`` has a literal secret replaced)."""

    name: str
    #: The settings column, parsed, with ``client_secret.literal`` redacted
    #: and ``grant`` filled in when absent (``"refresh-token"``).
    settings: dict
    version: int
    #: Unix seconds of the last write.
    updated_at: int
    has_keys: bool
    lease: Optional[Lease]
    refresh_mark: Optional[RefreshMark]
    dead_grant: Optional[DeadGrant]


class UnknownCredential(StoreError):
    """No credential of that name in the store."""

    def __init__(self, name: str):
        super().__init__(f"no credential named {name!r} in the store")
        self.name = name


class StoreUnusable(StoreError):
    """The store cannot be opened, read or migrated (messages hold no password)."""


class WriteConflict(StoreError):
    """The stored version was not the expected one: nothing was written."""

    def __init__(self, name: str):
        super().__init__(f"credential {name!r} was changed by someone else meanwhile; nothing was written")
        self.name = name


class WriteFailed(StoreError):
    """Nothing was written (busy, disk full, the database refused, no connection)."""


class WriteUnknown(StoreError):
    """The write may or may not have landed (the connection broke after the
    statement was sent): read the record to know."""
