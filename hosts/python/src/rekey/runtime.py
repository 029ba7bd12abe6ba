"""The component in wasmtime-py: compiled once, a fresh instance per call
(instantiation costs ~40 µs here, and nothing of one call survives into the
next), imports served by the call running on the current thread.

wasmtime-py 50 converts component values with module-level mutable state
(``_types.case_test_cache``, ``_enter.LAST_EXCEPTION``), so two threads inside
it at once can corrupt each other's conversions. All Python-side work on the
component therefore runs under one lock; the imports release it while they
wait on the network or the record store, so concurrent calls overlap
exactly where they spend their time.

The only WASI the component imports (``wasi:clocks`` wall-clock ``now`` and
monotonic-clock ``subscribe-duration``, ``wasi:io/poll``'s pollable
``block``, for the guest's sleeps: token-endpoint backoff, waiting for
another worker's refresh lease, the device grant's polling intervals; and
``wasi:random``'s ``get-random-u64``, for lease holder ids and jitter) is
served here in Python rather than by wasmtime's WASI, so a sleeping guest
releases the lock too; no other WASI (files, environment, sockets) is linked
at all.

HTTP bodies cross as handles of the host resource ``types.body``: the bytes
stay in the call's :class:`Bodies` table, keyed by the handle's rep, and the
component copies only the few it reads (token-endpoint answers) or makes
(its token-endpoint forms). wasmtime-py converts a ``list<u8>`` one element
at a time (over a second per MiB), so an API body must never be one."""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Optional

from wasmtime import Config, Engine, Store, Trap, WasmtimeError
from wasmtime.component import Component, Linker, Record, ResourceAny, ResourceHost, ResourceType, Variant

from .errors import ComponentError

HOST_INTERFACE = "rekey:oauth2/host@0.5.0"
TYPES_INTERFACE = "rekey:oauth2/types@0.5.0"
CLIENT_INTERFACE = "rekey:oauth2/client@0.5.0"
AUTHORIZE_INTERFACE = "rekey:oauth2/authorize@0.5.0"
#: The host signs the component's JWTs with the credential's key (0.4.0), and
#: its DPoP proofs with the credential's DPoP key (0.5.0).
SIGNER_INTERFACE = "rekey:oauth2/signer@0.5.0"
AUTHORIZE_FUNCTIONS = ("begin", "finish", "device-start", "device-poll")
EPOCH_TICK = 0.05  # seconds; the call deadline is counted in these

# The call running on this thread (a call never leaves its thread): its
# imports, the runtime's `unlocked`, and its pollables (rep -> deadline).
_current = threading.local()

POLL_INTERFACE = "wasi:io/poll@0.2.0"
MONOTONIC_CLOCK_INTERFACE = "wasi:clocks/monotonic-clock@0.2.0"
WALL_CLOCK_INTERFACE = "wasi:clocks/wall-clock@0.2.0"
RANDOM_INTERFACE = "wasi:random/random@0.2.0"
#: The host resource type ids of `wasi:io/poll.pollable` and `types.body`.
POLLABLE = 1
BODY = 2


class Bodies:
    """One call's HTTP bodies (rep -> bytes), handed to the component as
    ``types.body`` handles. The bytes objects are kept as given: no copy."""

    def __init__(self) -> None:
        self._by_rep: dict[int, bytes] = {}

    def own(self, data: bytes) -> ResourceHost:
        """A new body holding ``data``: an own handle to pass to the component."""
        rep = next(_body_reps) & 0xFFFFFFFF
        self._by_rep[rep] = data
        return ResourceHost.own(rep, BODY)

    def bytes_of(self, ctx, handle: ResourceAny) -> bytes:
        """The bytes of a body handle the component passed (own or borrowed)."""
        data = self._by_rep.get(handle.to_host(ctx).rep)
        if data is None:
            raise ComponentError("the component passed a body handle this call does not hold")
        return data

    def drop(self, rep: int) -> None:
        self._by_rep.pop(rep, None)


class Imports:
    """What one call supplies for the ``host`` interface (see client.CallState).
    ``http_send`` gets the request's body as bytes, and returns a response
    whose body is a handle from ``bodies.own``."""

    bodies: Bodies

    def http_send(self, purpose: str, head: Record, body: bytes) -> Any: ...
    def read_record(self) -> Any: ...
    def emit_update_keys(self, expected_version: int, data: Record) -> Any: ...

    def sign(self, algorithm: str, data: bytes) -> "bytes | str":
        """``signer.sign``: the signature of ``data`` with the credential's
        key (``algorithm``: ``rs256`` or ``es256``), or a message saying why
        not (never the key). Must not raise."""
        ...

    def dpop_public_key(self, algorithm: str) -> Any:
        """``signer.dpop-public-key``: ``Variant("ok", jwk_json)`` with the
        public JWK of the credential's DPoP key, or ``Variant("err", why)``.
        Must not raise."""
        ...

    def dpop_sign(self, algorithm: str, data: bytes) -> "bytes | str":
        """``signer.dpop-sign``: the signature of the DPoP proof ``data``
        with the credential's DPoP key, after the host's check of the proof,
        or a message saying why not. Must not raise."""
        ...


class Runtime:
    def __init__(self, wasm: bytes, memory_limit_bytes: int, call_timeout: float):
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.component = Component(self.engine, wasm)
        self.memory_limit_bytes = memory_limit_bytes
        self.call_timeout = call_timeout
        self.lock = threading.Lock()
        # Calls in progress: their waits release the lock, so holding it is
        # not enough to know no call is inside the component.
        self._active = 0
        self._idle = threading.Condition(self.lock)
        self.closed = False
        self.linker = self._link()
        found = self.component.get_export_index(CLIENT_INTERFACE)
        send = found and self.component.get_export_index("send", found)
        if send is None:
            raise ComponentError(f"the component does not export {CLIENT_INTERFACE}#send")
        #: export name -> index: "send", "check-settings", "keepalive", and the authorize interface's functions
        self._exports = {"send": send}
        for name in ("check-settings", "keepalive"):
            index = self.component.get_export_index(name, found)
            if index is not None:
                self._exports[name] = index
        authorize = self.component.get_export_index(AUTHORIZE_INTERFACE)
        for name in AUTHORIZE_FUNCTIONS:
            index = authorize and self.component.get_export_index(name, authorize)
            if index is not None:
                self._exports[name] = index
        self._stop_ticking = threading.Event()
        self._ticker = _start_epoch_ticker(self.engine, self._stop_ticking)
        _open_runtimes.add(self)

    def close(self, wait: Optional[float] = None) -> bool:
        """Frees the engine, component and linker now, rather than when the
        garbage collector gets to them. Waits up to ``wait`` seconds (None:
        for ever) for a call in progress; returns False, freeing nothing, if
        one is still running then. Later calls raise :class:`ComponentError`."""
        if getattr(_current, "runtime", None) is self:
            # A callback, store or log handler of this runtime's own call:
            # waiting for the call to end would wait for ever.
            raise RuntimeError("close() from inside one of its own calls (a callback, store or log handler)")
        deadline = None if wait is None else time.monotonic() + wait
        left = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())  # noqa: E731
        # Bounded as a whole: the lock too may be held by a call (or, in a
        # forked child, by a thread that no longer exists).
        if not self.lock.acquire(timeout=-1 if deadline is None else left()):
            return False
        try:
            if not self._idle.wait_for(lambda: self._active == 0, left()):
                return False
            if not self.closed:
                self.closed = True
                # The ticker may be inside increment_epoch: stop it first.
                self._stop_ticking.set()
                self._ticker.join()
                for native in (self.linker, self.component, self.engine):
                    native.close()
            return True
        finally:
            self.lock.release()

    def _link(self) -> Linker:
        linker = Linker(self.engine)
        imports: dict[str, Callable[..., Any]] = {
            # Module-level lookups, not bound methods: wasmtime-py keeps these
            # functions in a global table, which would otherwise keep this
            # runtime (and its engine and ticker) alive forever.
            "http-send": lambda ctx, purpose, head, body: _current.imports.http_send(
                purpose, head, _current.imports.bodies.bytes_of(ctx, body)
            ),
            "read-record": lambda _ctx: _current.imports.read_record(),
            "emit-update-keys": lambda _ctx, expected, data: _current.imports.emit_update_keys(expected, data),
        }
        with linker.root() as root:
            with root.add_instance(HOST_INTERFACE) as host:
                for name, func in imports.items():
                    host.add_func(name, func)
            with root.add_instance(SIGNER_INTERFACE) as signer:
                signer.add_func("sign", lambda _ctx, algorithm, data: _current.imports.sign(algorithm, data))
                signer.add_func(
                    "dpop-public-key", lambda _ctx, algorithm: _current.imports.dpop_public_key(algorithm)
                )
                signer.add_func(
                    "dpop-sign", lambda _ctx, algorithm, data: _current.imports.dpop_sign(algorithm, data)
                )
            with root.add_instance(TYPES_INTERFACE) as types:
                types.add_resource("body", ResourceType.host(BODY), _drop_body)
                types.add_func("[constructor]body", _new_body)
                types.add_func("[method]body.read", _read_body)
            # The clocks and the sleep (see the module's docstring).
            with root.add_instance(POLL_INTERFACE) as poll:
                poll.add_resource("pollable", ResourceType.host(POLLABLE), _drop_pollable)
                poll.add_func("[method]pollable.block", _block)
            with root.add_instance(MONOTONIC_CLOCK_INTERFACE) as monotonic:
                monotonic.add_func("subscribe-duration", _subscribe_duration)
            with root.add_instance(WALL_CLOCK_INTERFACE) as wall:
                wall.add_func("now", _wall_clock_now)
            with root.add_instance(RANDOM_INTERFACE) as random:
                random.add_func("get-random-u64", _random_u64)
        return linker

    @contextmanager
    def unlocked(self):
        """For an import's waits: lets other threads' calls run meanwhile."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    def call_send(self, imports: Imports, settings: Record, req: Record) -> Any:
        """Runs ``client.send`` in a fresh instance: a ``Record`` (the
        response) or a ``Variant`` (the send-error), with bytes for bodies."""
        return self.call("send", imports, (settings, req))

    def call(self, export: str, imports: Imports, args: tuple, timeout: Optional[float] = None) -> Any:
        """Runs one export (``send``, ``check-settings``, ``keepalive``, or
        ``begin``, ``finish``, ``device-start``, ``device-poll`` of the
        authorize interface) in a fresh instance,
        trapped at ``timeout`` (default: the call timeout); returns what it
        returns (the ok value, or a ``Variant`` for the error case), each
        body handle in it replaced by its bytes."""
        index = self._exports.get(export)
        if index is None:
            raise ComponentError(f"the component does not export {export!r} (an older component?)")
        with self.lock:
            if self.closed:
                raise ComponentError("this rekey instance is closed")
            _current.imports = imports
            _current.unlocked = self.unlocked
            _current.pollables = {}
            _current.runtime = self
            self._active += 1
            store = None
            try:
                store = Store(self.engine)
                store.set_limits(memory_size=self.memory_limit_bytes)
                bound = self.call_timeout if timeout is None else timeout
                store.set_epoch_deadline(max(1, int(bound / EPOCH_TICK)))
                instance = self.linker.instantiate(store, self.component)
                func = instance.get_func(store, index)
                if func is None:
                    raise ComponentError(f"the component's {export!r} is not a function")
                # Resolved while the store (and the call's bodies) still exist.
                return _with_bytes(store, imports.bodies, func(store, *args))
            except (WasmtimeError, Trap) as e:
                raise ComponentError(_first_line(str(e))) from None
            finally:
                if store is not None:
                    # Now, on this thread, while the call's bodies and
                    # pollables are still its own: their destructors run here.
                    store.close()
                _current.imports = None
                _current.unlocked = None
                _current.pollables = {}
                _current.runtime = None
                self._active -= 1
                self._idle.notify_all()


_pollable_reps = itertools.count(1)
_body_reps = itertools.count(1)
#: How ``pollable.block`` waits (a module attribute, so a test can watch it).
_sleep = time.sleep


def _subscribe_duration(_ctx, nanoseconds: int) -> ResourceHost:
    """``monotonic-clock.subscribe-duration``: a pollable ready that long from now."""
    rep = next(_pollable_reps) & 0xFFFFFFFF
    _current.pollables[rep] = time.monotonic() + nanoseconds / 1e9
    return ResourceHost.own(rep, POLLABLE)


def _block(ctx, pollable) -> None:
    """``pollable.block``: sleeps until the pollable is ready, without the lock."""
    deadline = _current.pollables.get(pollable.to_host(ctx).rep)
    left = (deadline or 0.0) - time.monotonic()
    if left > 0:
        with _current.unlocked():
            _sleep(left)


def _drop_pollable(_ctx, rep: int) -> None:
    # May run when a store is collected, on any thread.
    getattr(_current, "pollables", {}).pop(rep, None)


def _new_body(_ctx, data: bytes) -> ResourceHost:
    """``[constructor]body``: the component's own bodies (token-endpoint forms)."""
    return _current.imports.bodies.own(data)


def _read_body(ctx, body: ResourceAny, limit: int) -> bytes:
    """``[method]body.read``: its first ``limit`` bytes (only token-endpoint
    answers are read: small, so the element-wise copy does not matter)."""
    data = _current.imports.bodies.bytes_of(ctx, body)
    return data if len(data) <= limit else data[:limit]


def _drop_body(_ctx, rep: int) -> None:
    # Like _drop_pollable: may run on another thread, whose table lacks rep.
    imports = getattr(_current, "imports", None)
    if imports is not None:
        imports.bodies.drop(rep)


def _with_bytes(ctx, bodies: Bodies, value: Any) -> Any:
    """``value`` (an export's result) with every body handle in it replaced by
    the body's bytes: the response, and the one inside ``send-error``'s
    ``rejected-after-refresh`` or ``insufficient-scope``."""
    if isinstance(value, ResourceAny):
        return bodies.bytes_of(ctx, value)
    if isinstance(value, Record):
        for name, field in list(vars(value).items()):
            setattr(value, name, _with_bytes(ctx, bodies, field))
    elif isinstance(value, Variant):
        value.payload = _with_bytes(ctx, bodies, value.payload)
    return value


def _wall_clock_now(_ctx) -> Record:
    """``wall-clock.now``: a ``datetime`` record."""
    ns = time.time_ns()
    now = Record()
    now.seconds = ns // 1_000_000_000
    now.nanoseconds = ns % 1_000_000_000
    return now


def _random_u64(_ctx) -> int:
    """``random.get-random-u64``: from the OS's CSPRNG."""
    return secrets.randbits(64)


def _first_line(message: str) -> str:
    # A trap's message ends with a wasm backtrace; its first line says what happened.
    return message.strip().splitlines()[0] if message.strip() else "trap"


def _start_epoch_ticker(engine: Engine, stop: threading.Event) -> threading.Thread:
    """Advances the epoch while the engine lives, so a runaway guest traps at
    its deadline; the thread ends at the first tick after ``stop`` is set or
    the engine is gone. (Runtime.close sets ``stop`` and joins the thread
    before it frees the engine.)"""
    ref = weakref.ref(engine)

    def tick() -> None:
        while not stop.is_set():
            engine = ref()
            if engine is None:
                return
            engine.increment_epoch()
            del engine
            stop.wait(EPOCH_TICK)

    ticker = threading.Thread(target=tick, name="rekey-epoch", daemon=True)
    ticker.start()
    return ticker


# Native handles are freed at exit while the interpreter is still whole.
# Left to the interpreter's teardown, a daemon ticker can run into a
# half-finalised runtime, and an engine, linker or store can be freed after
# the ctypes callbacks wasmtime-py registered for it: a worker process once
# ended in SIGSEGV after all its calls had succeeded.
_open_runtimes: "weakref.WeakSet[Runtime]" = weakref.WeakSet()
EXIT_WAIT = 1.0  # seconds for a call still running on another thread at exit


def _close_at_exit() -> None:
    deadline = time.monotonic() + EXIT_WAIT  # one bound for all, however many runtimes
    for runtime in list(_open_runtimes):
        if getattr(_current, "runtime", None) is runtime:
            continue  # exiting from inside its own call (sys.exit in a callback)
        # A call still running on a daemon thread keeps its runtime: freeing
        # it under the call would be worse than the teardown. Its ticker
        # stops all the same (the process is ending: no deadline to keep),
        # so no thread of rekey's is left to meet the teardown.
        if not runtime.close(wait=max(0.0, deadline - time.monotonic())):
            runtime._stop_ticking.set()
            runtime._ticker.join(EPOCH_TICK * 4)


def _forget_runtimes_in_child() -> None:
    # A forked child inherits the runtimes but not the threads that run them
    # (their locks may be held for ever, their tickers are gone): it must
    # make its own Rekey (see the README), and it never frees the parent's.
    _open_runtimes.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_forget_runtimes_in_child)
