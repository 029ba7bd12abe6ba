"""Records in this process only: :class:`MemoryStore`, and the callback
style (keys passed in, ``on_update_keys`` persisting them) as a memory
store seeded with the keys whose callback runs inside the write."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from ..keys import canonical_keys
from ..records import CredentialRecord, StoredRecord, UnknownCredential, WriteConflict, WriteFailed
from .base import OperatorFunctions, now


@dataclass
class _Row:
    settings: str
    updated_at: int
    version: int
    data: CredentialRecord


class MemoryStore(OperatorFunctions):
    """Every credential's record in a dict: for tests and one process only.
    Threads of this process share it safely; other processes never see it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}

    def read(self, name: str) -> StoredRecord:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                raise UnknownCredential(name)
            return StoredRecord(row.version, row.data)

    def write(self, name: str, expected_version: int, data: CredentialRecord) -> int:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                raise WriteFailed(f"no credential named {name!r}")
            if row.version != expected_version:
                raise WriteConflict(name)
            row.version, row.data, row.updated_at = expected_version + 1, data, now()
            return row.version

    def _put(self, name: str, settings: Optional[str], keys: Optional[str], at: int) -> None:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                if settings is None:
                    raise UnknownCredential(name)
                row = self._rows[name] = _Row(settings, at, 0, CredentialRecord())
            elif settings is not None:
                row.settings = settings
            if keys is not None:
                row.version, row.data, row.updated_at = row.version + 1, CredentialRecord(keys), at

    def _names(self) -> list[str]:
        with self._lock:
            return list(self._rows)

    def _info(self, name: str) -> tuple[str, int]:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                raise UnknownCredential(name)
            return row.settings, row.updated_at

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._rows)} credentials)"


class CallbackRecord:
    """One credential's record in this process for the callback style:
    the caller passes the stored keys in and persists new ones in
    ``on_update_keys(keys_json)``, which runs inside the write, before it
    returns; if it raises, the write reports ``failed`` and nothing changes.

    Keys passed in become the record's keys only if this process has never
    seen them (a fresh authorisation, or a set stored elsewhere); a set seen
    before is an older copy the caller loaded before a refresh here finished,
    and must not displace that refresh's result. Safe for ONE process only:
    nothing here is shared with other processes."""

    _REMEMBERED = 64  # digests of past token sets kept

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._data = CredentialRecord()
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def offer(self, keys: str) -> None:
        with self._lock:
            if _digest(keys) not in self._seen:
                self._remember(keys)
                # A new token set starts afresh, as an operator's put does.
                self._version += 1
                self._data = CredentialRecord(keys)

    def read(self) -> StoredRecord:
        with self._lock:
            return StoredRecord(self._version, self._data)

    def write(self, expected_version: int, data: CredentialRecord, on_update_keys: Callable[[str], None]) -> int:
        with self._lock:
            if self._version != expected_version:
                raise WriteConflict("(callback)")
            new_keys = data.keys_text()
            if new_keys is not None and new_keys != self._data.keys_text():
                try:
                    on_update_keys(new_keys)
                except Exception as e:
                    raise WriteFailed(f"on_update_keys failed: {scrub_keys(f'{type(e).__name__}: {e}', new_keys)}") from None
                self._remember(new_keys)
            self._version += 1
            self._data = data
            return self._version

    def _remember(self, keys: str) -> None:
        d = _digest(keys)
        self._seen[d] = None
        self._seen.move_to_end(d)
        while len(self._seen) > self._REMEMBERED:
            self._seen.popitem(last=False)


class CallbackStore:
    """The :class:`RecordStore` one callback-style call runs on: one
    :class:`CallbackRecord` and the call's ``on_update_keys``."""

    def __init__(self, record: CallbackRecord, on_update_keys: Callable[[str], None]):
        self._record = record
        self._on_update_keys = on_update_keys

    def read(self, name: str) -> StoredRecord:
        return self._record.read()

    def write(self, name: str, expected_version: int, data: CredentialRecord) -> int:
        return self._record.write(expected_version, data, self._on_update_keys)


def _digest(keys: str) -> bytes:
    # Over the canonical form: older keys offered as a dict or re-spaced are still recognised.
    return hashlib.sha256(canonical_keys(keys).encode("utf-8")).digest()


def scrub_keys(text: str, keys: str) -> str:
    """A callback's error message with every value of the token set cut out
    (its own message might quote what it failed to write)."""
    try:
        values = [v for v in json.loads(keys).values() if isinstance(v, str) and len(v) >= 6]
    except (ValueError, AttributeError):
        values = []
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text.replace(keys, "[redacted]")

