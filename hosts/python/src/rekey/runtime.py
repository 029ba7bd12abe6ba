"""The component in wasmtime-py: compiled once, a fresh instance per call
(instantiation costs ~40 µs here, and nothing of one call survives into the
next), imports served by the call running on the current thread.

wasmtime-py 50 converts component values with module-level mutable state
(``_types.case_test_cache``, ``_enter.LAST_EXCEPTION``), so two threads inside
it at once can corrupt each other's conversions. All Python-side work on the
component therefore runs under one lock; the imports release it while they
wait on the network, the store or the lease, so concurrent calls overlap
exactly where they spend their time."""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Optional

from wasmtime import Config, Engine, Store, Trap, WasiConfig, WasmtimeError
from wasmtime.component import Component, Linker, Record, Variant

from .errors import ComponentError

HOST_INTERFACE = "rekey:oauth2/host@0.2.0"
CLIENT_INTERFACE = "rekey:oauth2/client@0.2.0"
EPOCH_TICK = 0.05  # seconds; the call deadline is counted in these

# The imports of the call running on this thread (a call never leaves its thread).
_current = threading.local()


class Imports:
    """What one call supplies for the ``host`` interface (see client.CallState)."""

    def http_send(self, req: Record) -> Any: ...
    def emit_update_keys(self, keys: str) -> Optional[str]: ...
    def acquire_refresh_lease(self) -> Any: ...
    def release_refresh_lease(self) -> None: ...


class Runtime:
    def __init__(self, wasm: bytes, memory_limit_bytes: int, call_timeout: float):
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.component = Component(self.engine, wasm)
        self.memory_limit_bytes = memory_limit_bytes
        self.call_timeout = call_timeout
        self.lock = threading.Lock()
        self.linker = self._link()
        found = self.component.get_export_index(CLIENT_INTERFACE)
        send = found and self.component.get_export_index("send", found)
        if send is None:
            raise ComponentError(f"the component does not export {CLIENT_INTERFACE}#send")
        self._send = send
        _start_epoch_ticker(self.engine)

    def _link(self) -> Linker:
        linker = Linker(self.engine)
        # wasi:clocks and wasi:io/poll (the guest sleeps between token
        # retries); its WASI context below has no files, env, args or stdio.
        linker.add_wasip2()
        imports: dict[str, Callable[..., Any]] = {
            # Module-level lookups, not bound methods: wasmtime-py keeps these
            # functions in a global table, which would otherwise keep this
            # runtime (and its engine and ticker) alive forever.
            "http-send": lambda _ctx, req: _current.imports.http_send(req),
            "emit-update-keys": lambda _ctx, keys: _current.imports.emit_update_keys(keys),
            "acquire-refresh-lease": lambda _ctx: _current.imports.acquire_refresh_lease(),
            "release-refresh-lease": lambda _ctx: _current.imports.release_refresh_lease(),
        }
        with linker.root() as root:
            with root.add_instance(HOST_INTERFACE) as host:
                for name, func in imports.items():
                    host.add_func(name, func)
        return linker

    @contextmanager
    def unlocked(self):
        """For an import's waits: lets other threads' calls run meanwhile."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    def call_send(self, imports: Imports, settings: Record, keys: Optional[str], req: Record) -> Any:
        """Runs ``client.send`` in a fresh instance: a ``Record`` (the
        response) or a ``Variant`` (the send-error)."""
        with self.lock:
            _current.imports = imports
            try:
                store = Store(self.engine)
                store.set_wasi(WasiConfig())
                store.set_limits(memory_size=self.memory_limit_bytes)
                store.set_epoch_deadline(max(1, int(self.call_timeout / EPOCH_TICK)))
                instance = self.linker.instantiate(store, self.component)
                send = instance.get_func(store, self._send)
                if send is None:
                    raise ComponentError(f"{CLIENT_INTERFACE}#send is not a function")
                return send(store, settings, keys, req)
            except (WasmtimeError, Trap) as e:
                raise ComponentError(_first_line(str(e))) from None
            finally:
                _current.imports = None


def _first_line(message: str) -> str:
    # A trap's message ends with a wasm backtrace; its first line says what happened.
    return message.strip().splitlines()[0] if message.strip() else "trap"


def _start_epoch_ticker(engine: Engine) -> None:
    """Advances the epoch while the engine lives, so a runaway guest traps at
    its deadline; the thread ends at the first tick after the engine is gone."""
    ref = weakref.ref(engine)

    def tick() -> None:
        while True:
            engine = ref()
            if engine is None:
                return
            engine.increment_epoch()
            del engine
            time.sleep(EPOCH_TICK)

    threading.Thread(target=tick, name="rekey-epoch", daemon=True).start()
