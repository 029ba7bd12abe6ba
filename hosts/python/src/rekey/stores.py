"""Where a credential's token set (a JSON object, as text) lives between calls.

A store is anything with ``load() -> str | None``, ``save(keys: str)`` (durable
when it returns) and ``lease_key`` (calls whose stores have equal keys share
one refresh lease). ``save`` raising makes the guest stop before it spends the
new token set."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
import threading
from typing import Hashable, Optional, Protocol

from .secret import Secret


class KeyStore(Protocol):
    lease_key: Hashable

    def load(self) -> Optional[str]: ...

    def save(self, keys: str) -> None: ...


class MemoryStore:
    """Keys in this process only (tests, short-lived tools)."""

    def __init__(self, keys: Optional[str] = None):
        self._keys = Secret(keys) if keys is not None else None
        self._lock = threading.Lock()
        self.lease_key = ("memory", id(self))

    def load(self) -> Optional[str]:
        with self._lock:
            return self._keys.expose() if self._keys is not None else None

    def save(self, keys: str) -> None:
        with self._lock:
            self._keys = Secret(keys)

    def __repr__(self) -> str:
        return f"MemoryStore(keys={'[redacted]' if self._keys is not None else None})"


class FileStore:
    """One credential's token set in one file, replaced atomically: written to
    a temporary file in the same directory, fsynced, renamed over the old one,
    and the directory fsynced, so a crash leaves the old set or the new one,
    never a torn file. Mode 0600: the file holds tokens.

    The lease is in-process (threads sharing this path); processes sharing a
    file need a store with a cross-process lease."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.lease_key = ("file", os.path.realpath(self.path))

    def load(self) -> Optional[str]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return text if text.strip() else None

    def save(self, keys: str) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".rekey-", suffix=".tmp", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(keys)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable only once the directory is
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return f"FileStore({self.path!r})"


class CallbackStore:
    """The keys a caller passed in plus its ``on_update_keys`` callback.

    ``load`` (the lease's re-read) answers the newest token set this process
    knows for the credential (see :class:`LatestKeys`): a thread that waited
    for another's refresh adopts its result instead of spending a rotated
    refresh token."""

    def __init__(self, keys: Optional[str], on_update_keys, latest: "LatestKeys", lease_key: Hashable):
        self._on_update_keys = on_update_keys
        self._latest = latest
        self.lease_key = lease_key
        if keys is not None:
            latest.offer(lease_key, keys)

    def load(self) -> Optional[str]:
        return self._latest.get(self.lease_key)

    def save(self, keys: str) -> None:
        self._on_update_keys(keys)
        self._latest.put(self.lease_key, keys)


class LatestKeys:
    """Per credential name, the newest token set this process has seen.

    A set persisted by a refresh is newest. A set passed in by a caller
    becomes newest only if this process has never seen it (a fresh
    authorisation, or keys another process stored); a set seen before is an
    older one the caller loaded before a refresh finished, and must not
    displace that refresh's result."""

    _REMEMBERED = 64  # digests of past sets kept per credential

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[Hashable, Secret] = {}
        self._seen: dict[Hashable, "OrderedDict[bytes, None]"] = {}

    def offer(self, key: Hashable, keys: str) -> None:
        with self._lock:
            if _digest(keys) not in self._seen.get(key, ()):
                self._record(key, keys)

    def put(self, key: Hashable, keys: str) -> None:
        with self._lock:
            self._record(key, keys)

    def get(self, key: Hashable) -> Optional[str]:
        with self._lock:
            found = self._latest.get(key)
        return found.expose() if found is not None else None

    def _record(self, key: Hashable, keys: str) -> None:
        seen = self._seen.setdefault(key, OrderedDict())
        seen[_digest(keys)] = None
        seen.move_to_end(_digest(keys))
        while len(seen) > self._REMEMBERED:
            seen.popitem(last=False)
        self._latest[key] = Secret(keys)


def _digest(keys: str) -> bytes:
    return hashlib.sha256(keys.encode("utf-8")).digest()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
