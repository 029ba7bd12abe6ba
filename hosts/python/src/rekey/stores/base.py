"""What every record store offers: the two effects the component needs
(``read``, ``write``) and the operator's functions, written once on top of
the store's own ``_put``, ``_names`` and ``_info``."""

from __future__ import annotations

import json
import time
from typing import Optional, Protocol, runtime_checkable

from ..keys import keys_text
from ..model import Settings, settings_json
from ..records import Credential, CredentialRecord, StoredRecord, WriteConflict
from ..secret import Secret


@runtime_checkable
class RecordStore(Protocol):
    """One versioned record per credential name (``docs/record-store.md``).

    ``read(name)`` is the record as stored now (:class:`UnknownCredential`
    when there is none, :class:`StoreUnusable` when the store cannot say).
    ``write(name, expected_version, data)`` replaces the whole record only if
    its version is still ``expected_version`` and returns the new version
    once the write is durable; else :class:`WriteConflict` and nothing
    changes. :class:`WriteFailed`: nothing was written; :class:`WriteUnknown`:
    the store cannot tell. Both may be called from many threads."""

    def read(self, name: str) -> StoredRecord: ...

    def write(self, name: str, expected_version: int, data: CredentialRecord) -> int: ...


class OperatorFunctions:
    """The operator's side of a store: create a credential or put new keys,
    clear a refresh mark, forget a dead grant, list and show. Each write is a
    whole-record write like the component's (version + 1)."""

    def put(
        self,
        name: str,
        settings: Optional[Settings] = None,
        keys: Optional[str | dict | Secret] = None,
        *,
        client_secret_env: Optional[str] = None,
    ) -> None:
        """Creates credential ``name`` (``settings`` required then), or
        replaces its settings column when ``settings`` is given. ``keys`` (a
        token set: a dict, a JSON object as text, or a Secret) replace the
        stored ones and start afresh: no lease, no refresh mark, no dead
        grant, version + 1; without
        keys the record is left as it is, so editing settings never drops a
        live refresh token or upsets a refresh in flight."""
        check_name(name)
        if keys is not None:
            keys = check_keys(keys)
        column = settings_json(settings, client_secret_env) if settings is not None else None
        self._put(name, column, keys, now())

    def clear_refresh_mark(self, name: str) -> None:
        """Forgets the refresh mark (and any lease) of ``name``: an operator
        checked with the provider that the stored refresh token is still
        good. Until then no call spends it (``RefreshInDoubt``)."""
        self._edit(name, lambda r: CredentialRecord(r.keys, None, None, r.dead_grant))

    def forget_dead_grant(self, name: str) -> None:
        """Lets calls try the stored refresh token again after the token
        endpoint declared the grant dead (normally: put new keys instead)."""
        self._edit(name, lambda r: CredentialRecord(r.keys, r.lease, r.refresh_mark, None))

    def names(self) -> list[str]:
        """Every credential name, sorted."""
        return sorted(self._names())

    def show(self, name: str) -> Credential:
        """What is stored for ``name``, without any secret."""
        settings_text, updated_at = self._info(name)
        stored = self.read(name)
        try:
            settings = json.loads(settings_text)
        except ValueError:
            settings = {}
        if isinstance(settings, dict):
            settings.setdefault("grant", "refresh-token")  # absent: the default, as every host reads it
        secret = settings.get("client_secret") if isinstance(settings, dict) else None
        if isinstance(secret, dict) and "literal" in secret:
            secret["literal"] = "[redacted]"
        d = stored.data
        return Credential(name, settings, stored.version, updated_at, d.keys is not None, d.lease,
                          d.refresh_mark, d.dead_grant)

    def _edit(self, name: str, change) -> None:
        while True:
            stored = self.read(name)
            try:
                self.write(name, stored.version, change(stored.data))
                return
            except WriteConflict:
                continue  # a worker wrote meanwhile: apply the change to its record

    # Each store implements these.
    def _put(self, name: str, settings: Optional[str], keys: Optional[str], now: int) -> None:
        raise NotImplementedError

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _info(self, name: str) -> tuple[str, int]:
        """(settings column, updated_at) of ``name``; UnknownCredential if none."""
        raise NotImplementedError


def now() -> int:
    return int(time.time())


def check_name(name: str) -> None:
    """1 to 64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit (the Rust host's rule)."""
    ok = (
        isinstance(name, str)
        and 1 <= len(name) <= 64
        and name.isascii()
        and name[0].isalnum()
        and all(c.isalnum() or c in "._-" for c in name)
    )
    if not ok:
        raise ValueError("a credential name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def check_keys(keys) -> str:
    """Keys given to a store: a JSON object, as a dict, JSON text or a
    Secret (the error quotes none of it)."""
    text = keys_text(keys)
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        where = f" (line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"keys must be a JSON object: not valid JSON{where}") from None
    if not isinstance(value, dict):
        raise ValueError("keys must be a JSON object")
    return text
