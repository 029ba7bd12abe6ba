"""The refresh lease: at most one refresh per credential at a time in this
process, so a rotating refresh token is never spent twice by two threads.
A thread that waited gets the keys stored *now* and the guest adopts them
instead of spending its (already rotated) refresh token."""

from __future__ import annotations

import threading
from typing import Hashable, Optional


class Leases:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}

    def acquire(self, key: Hashable, timeout: float) -> Optional["HeldLease"]:
        """Waits up to ``timeout`` seconds; None if another call kept it longer."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=timeout):
            return None
        return HeldLease(lock)


class HeldLease:
    def __init__(self, lock: threading.Lock):
        self._lock: Optional[threading.Lock] = lock

    def release(self) -> None:
        """Ends the lease; ending it twice is harmless."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
