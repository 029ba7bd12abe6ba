"""``AsyncRekey``: the asyncio face of :class:`rekey.Rekey`.

Each call runs the synchronous one in a worker thread: the component, its
HTTP and the store block, and a call must never be cut short once it may
have spent a refresh token (the provider rotates it; the new one must reach
the store). So cancelling the task that awaits a call does not stop the
call: a call that has not started in its thread yet never starts, one that
has started runs to its end there (a refresh it began is finished and
persisted) and its result is dropped. :meth:`AsyncRekey.drain` waits for
those."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime
import functools
import os
import threading
from typing import Any, Callable, Optional, TypeVar

from .client import Rekey
from .model import KeepaliveOutcome, Request, Response, Settings
from .secret import Secret
from .stores import RecordStore

T = TypeVar("T")


class AsyncRekey:
    """``await arekey.send(...)``: :meth:`Rekey.send` in a worker thread.

    ``AsyncRekey(rekey)`` shares a loaded :class:`Rekey` (left open by
    :meth:`aclose`); ``AsyncRekey(wasm=..., ...)`` loads its own with those
    arguments (closed by :meth:`aclose`). ``max_workers`` bounds how many
    calls run at once (default: ``concurrent.futures``' default); more wait
    their turn, and one cancelled while waiting is never sent."""

    def __init__(
        self,
        rekey: Optional[Rekey] = None,
        *,
        max_workers: Optional[int] = None,
        wasm: Optional[str | os.PathLike] = None,
        **rekey_options: Any,
    ):
        if rekey is not None and (wasm is not None or rekey_options):
            raise TypeError("pass a loaded Rekey, or the arguments to load one, not both")
        if rekey is not None and not isinstance(rekey, Rekey):
            raise TypeError(f"rekey must be a Rekey, not {type(rekey).__name__}")
        self._owned = rekey is None
        #: The synchronous :class:`Rekey` the calls run on.
        self.rekey: Rekey = rekey if rekey is not None else Rekey(wasm, **rekey_options)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="rekey-async")
        self._lock = threading.Lock()
        self._in_flight: set[concurrent.futures.Future] = set()
        self._closed = False

    async def send(
        self,
        settings: Settings,
        request: Request,
        *,
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ) -> Response:
        """:meth:`Rekey.send` (the same arguments, results and errors), in a
        worker thread; ``on_update_keys`` runs in that thread."""
        return await self._run(
            functools.partial(
                self.rekey.send,
                settings,
                request,
                store=store,
                credential=credential,
                keys=keys,
                on_update_keys=on_update_keys,
            )
        )

    async def keepalive(
        self,
        settings: Settings,
        *,
        older_than: "float | datetime.timedelta",
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ) -> KeepaliveOutcome:
        """:meth:`Rekey.keepalive` (the same arguments, results and errors),
        in a worker thread: once started it runs to its end there, a refresh
        it began stored, even if the awaiting task is cancelled."""
        return await self._run(
            functools.partial(
                self.rekey.keepalive,
                settings,
                older_than=older_than,
                store=store,
                credential=credential,
                keys=keys,
                on_update_keys=on_update_keys,
            )
        )

    async def check_settings(self, settings: Settings) -> None:
        """:meth:`Rekey.check_settings` in a worker thread."""
        await self._run(functools.partial(self.rekey.check_settings, settings))

    async def drain(self) -> None:
        """Waits until every call started here has ended, including calls
        whose awaiting task was cancelled. Their outcomes are not reported
        (each has already done what the component decided: e.g. stored a
        refreshed token set). Cancelling ``drain`` stops the waiting only."""
        while True:
            with self._lock:
                pending = list(self._in_flight)
            if not pending:
                return
            # asyncio.wait never cancels what it waits for.
            await asyncio.wait([asyncio.wrap_future(f) for f in pending])

    async def aclose(self) -> None:
        """Refuses new calls, waits for the calls in flight (:meth:`drain`),
        and frees the component if this ``AsyncRekey`` loaded it."""
        with self._lock:
            self._closed = True
        await self.drain()
        self._executor.shutdown(wait=False)  # every call has ended: nothing left to wait for
        if self._owned:
            self.rekey.close()

    async def __aenter__(self) -> "AsyncRekey":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: Callable[[], T]) -> T:
        context = contextvars.copy_context()  # as asyncio.to_thread: contextvars reach the call
        with self._lock:
            if self._closed:
                raise RuntimeError("this AsyncRekey is closed")
            future = self._executor.submit(context.run, call)
            self._in_flight.add(future)
        future.add_done_callback(self._done)
        # Cancelling the awaiting task cancels `future` only if it has not
        # started (Future.cancel refuses a running one): a started call ends
        # in its thread.
        return await asyncio.wrap_future(future)

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def __repr__(self) -> str:
        return f"AsyncRekey(component_sha256={self.rekey.component_sha256!r})"
