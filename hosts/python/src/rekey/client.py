"""``Rekey``: sends requests through the component, refreshing and persisting
as the settings say, and serves the component's ``host`` imports."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from typing import Any, Callable, Hashable, Optional

from wasmtime.component import Record

from . import errors, http, wit
from .authorize import (
    DEFAULT_REDIRECT_URI,
    DEFAULT_TIMEOUT,
    ENTROPY_BYTES,
    AuthorizeImports,
    DeviceAuthorization,
    PendingAuthorization,
    RedirectListener,
    import_token_response,
    respond,
)
from .http import HttpConfig
from .lease import HeldLease, Leases
from .model import Request, Response, Settings
from .runtime import Runtime
from .secret import Secret
from .stores import CallbackStore, KeyStore, LatestKeys

log = logging.getLogger("rekey")

#: Time kept in hand after a token exchange, to persist its result.
SPEND_MARGIN = 1.0


class Rekey:
    """A loaded rekey component. Thread-safe; share one per process.

    ``wasm`` is the component's path (default: ``$REKEY_WASM``);
    ``expected_sha256`` makes loading any other file an error."""

    def __init__(
        self,
        wasm: Optional[str | os.PathLike] = None,
        *,
        expected_sha256: Optional[str] = None,
        http_config: HttpConfig = HttpConfig(),
        call_timeout: float = 120.0,
        lease_timeout: float = 60.0,
        memory_limit_bytes: int = 32 * 1024 * 1024,
    ):
        path = wasm if wasm is not None else os.environ.get("REKEY_WASM")
        if not path:
            raise ValueError("no component: pass wasm= or set REKEY_WASM")
        with open(path, "rb") as f:
            code = f.read()
        #: SHA-256 (hex) of the component this instance runs.
        self.component_sha256 = hashlib.sha256(code).hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != self.component_sha256:
            raise ValueError(
                f"component {os.fspath(path)} has SHA-256 {self.component_sha256}, expected {expected_sha256.lower()}"
            )
        self.http_config = http_config
        self.call_timeout = call_timeout
        self.lease_timeout = lease_timeout
        self._runtime = Runtime(code, memory_limit_bytes, call_timeout)
        self._leases = Leases()
        self._latest = LatestKeys()

    def send(
        self,
        settings: Settings,
        request: Request,
        *,
        store: Optional[KeyStore] = None,
        keys: Optional[str] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
        credential: Optional[str] = None,
    ) -> Response:
        """Sends ``request`` with the credential's access token.

        Either ``store`` (keys are loaded from it and saved to it), or ``keys``
        (the stored token set, JSON text) with ``on_update_keys(keys_json)``,
        which must make the new set durable before it returns (raise to stop
        the call before the new tokens are spent). Calls naming the same
        ``credential`` share its refresh lease; without a name a callback call
        has a lease of its own. Raises a :class:`errors.RekeyError`."""
        if (store is None) == (on_update_keys is None):
            raise TypeError("pass either store= or on_update_keys= (with keys=)")
        if store is not None and keys is not None:
            raise TypeError("keys= goes with on_update_keys=; a store supplies its own")
        leases = self._leases
        if store is None:
            if credential is None:
                # Nothing to share the lease with: a registry of this call's own.
                lease_key: Hashable = object()
                leases, latest = Leases(), LatestKeys()
            else:
                lease_key, latest = ("credential", credential), self._latest
            store = CallbackStore(keys, on_update_keys, latest, lease_key)
        else:
            try:
                keys = store.load()
            except Exception as e:
                raise errors.StoreError(f"cannot read the stored keys: {type(e).__name__}") from None

        call = CallState(self, store, leases, settings.token_url)
        try:
            result = self._runtime.call_send(call, wit.settings(settings), keys, wit.request(request))
        finally:
            call.end_lease()
        if isinstance(result, Record):
            return wit.response_from(result)
        raise wit.send_error(result)

    # The first token set: the component's ``authorize`` interface, with this
    # host's effects (random bytes, the loopback listener, HTTP, the store).

    def authorize_code(
        self,
        settings: Settings,
        *,
        on_url: Callable[[str], Any],
        store: Optional[KeyStore] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
        credential: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        redirect_uri: Optional[str] = None,
    ) -> Secret:
        """The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636
        S256) through a loopback redirect (RFC 8252 §7.3).

        Listens on ``http://127.0.0.1:<free port>/callback`` (or
        ``redirect_uri``), calls ``on_url(url)`` with the authorization URL
        (print it, or ``webbrowser.open``; it must return promptly), waits up
        to ``timeout`` seconds for the redirect, lets the component check it
        (state, iss, error) and exchange the code, stores the token response
        as the credential's keys (``store.save``, then ``on_update_keys``;
        both durable when they return), and only then answers the browser.
        Returns the keys stored (a :class:`Secret` of the JSON). Raises a
        :class:`errors.RekeyError`; nothing is stored then."""
        persist = self._authorize_persistence(store, on_update_keys, credential)
        if not callable(on_url):
            raise TypeError("on_url(url) must be callable: it shows the authorization URL")
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        listener = RedirectListener(redirect_uri or DEFAULT_REDIRECT_URI)
        try:
            pending = self.begin_authorization(settings, listener.redirect_uri)
            on_url(pending.url)
            got = listener.wait(time.monotonic() + timeout)
            if got is None:
                raise errors.AuthorizationTimeout(timeout)
            conn, query = got
            try:
                keys = self.finish_authorization(settings, pending, query)
                persist(keys.expose())
            except errors.RekeyError as e:
                respond(conn, "400 Bad Request", f"rekey: authorisation failed: {e}")
                raise
            except BaseException:
                respond(conn, "400 Bad Request", "rekey: authorisation failed: an internal error")
                raise
            respond(conn, "200 OK", "rekey: authorised. You can close this window.")
            return keys
        finally:
            listener.close()

    def authorize_device(
        self,
        settings: Settings,
        *,
        on_user_code: Callable[[DeviceAuthorization], Any],
        store: Optional[KeyStore] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
        credential: Optional[str] = None,
    ) -> Secret:
        """The device authorization grant (RFC 8628): starts it, calls
        ``on_user_code(device)`` (show ``device.user_code`` and
        ``device.verification_uri``), then polls at the server's interval
        (5 s more after each ``slow_down``) until a person approves, refuses
        or the code expires, and stores the token response as the
        credential's keys. Returns the keys stored (a :class:`Secret`).

        The polling runs in one component call on this thread; while the
        component sleeps between polls, other threads' calls on this ``Rekey``
        wait (see the README)."""
        persist = self._authorize_persistence(store, on_update_keys, credential)
        if not callable(on_user_code):
            raise TypeError("on_user_code(device) must be callable: it shows the user code")
        device = self.start_device_authorization(settings)
        on_user_code(device)
        keys = self.poll_device_authorization(settings, device)
        persist(keys.expose())
        return keys

    def begin_authorization(self, settings: Settings, redirect_uri: str) -> PendingAuthorization:
        """The code grant's first step alone, for a caller with its own
        loopback listener at ``redirect_uri``: the authorization URL (state,
        PKCE S256)."""
        auth = wit.authorization(settings, redirect_uri)
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings.token_url)
        result = self._runtime.call("begin", imports, (wit.settings(settings), auth, os.urandom(ENTROPY_BYTES)))
        if isinstance(result, Record):
            return PendingAuthorization(result, auth)
        raise wit.authorize_error(result)

    def finish_authorization(self, settings: Settings, pending: PendingAuthorization, query: str) -> Secret:
        """The code grant's second step alone: checks the redirect (its raw
        query, or the whole redirect URL) for state, iss and error, and
        exchanges the code. Stores nothing: returns the keys to store (the
        token response with ``expires_at``)."""
        if not isinstance(pending, PendingAuthorization):
            raise TypeError("pending must be what begin_authorization returned")
        if query.startswith(("http://", "https://")):
            query = urllib.parse.urlsplit(query).query
        query = query[1:] if query.startswith("?") else query
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings.token_url)
        result = self._runtime.call(
            "finish", imports, (wit.settings(settings), pending._authorization, pending._pending, query)
        )
        if isinstance(result, str):
            return Secret(import_token_response(result))
        raise wit.authorize_error(result)

    def start_device_authorization(self, settings: Settings) -> DeviceAuthorization:
        """The device grant's first step alone (RFC 8628 §3.1)."""
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings.token_url)
        result = self._runtime.call("device-start", imports, (wit.settings(settings), wit.authorization(settings, "")))
        if isinstance(result, Record):
            return DeviceAuthorization(result)
        raise wit.authorize_error(result)

    def poll_device_authorization(self, settings: Settings, device: DeviceAuthorization) -> Secret:
        """The device grant's polling alone; returns the keys to store."""
        if not isinstance(device, DeviceAuthorization):
            raise TypeError("device must be what start_device_authorization returned")
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings.token_url)
        # Polling lasts as long as the code lives.
        timeout = device.expires_in + self.call_timeout
        result = self._runtime.call(
            "device-poll", imports, (wit.settings(settings), wit.device_grant(device._grant)), timeout
        )
        if isinstance(result, str):
            return Secret(import_token_response(result))
        raise wit.authorize_error(result)

    def _authorize_persistence(self, store, on_update_keys, credential) -> Callable[[str], None]:
        """Where the first token set goes: the store, then the callback."""
        if store is None and on_update_keys is None:
            raise TypeError("pass store= or on_update_keys= (the new keys must go somewhere durable)")

        def persist(keys: str) -> None:
            try:
                if store is not None:
                    store.save(keys)
                if on_update_keys is not None:
                    on_update_keys(keys)
            except Exception as e:
                # Its own message may quote what it was given: its type only.
                raise errors.StoreError(
                    f"the new keys could not be saved ({type(e).__name__}); nothing else was changed"
                ) from None
            if store is None and credential is not None:
                # Later callback sends of this credential adopt this set, not an older one.
                self._latest.put(("credential", credential), keys)
            log.info("authorised: the new keys are stored")

        return persist


class CallState:
    """One call's side of the ``host`` interface."""

    def __init__(self, rekey: Rekey, store: KeyStore, leases: Leases, token_url: str):
        self._rekey = rekey
        self._unlocked = rekey._runtime.unlocked
        self._store = store
        self._leases = leases
        self._token_url = token_url
        self._lease: Optional[HeldLease] = None
        self._deadline = time.monotonic() + rekey.call_timeout

    def end_lease(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def http_send(self, rec: Record):
        req = wit.request_from(rec)
        token_endpoint = req.url == self._token_url
        config = self._rekey.http_config
        if token_endpoint and time.monotonic() + config.total_timeout + SPEND_MARGIN > self._deadline:
            # A refresh token spent now could be rotated and then lost at the deadline.
            return wit.transport_error(
                errors.TransportError(
                    "refused",
                    "too little of the call's time is left to exchange and persist a refresh token",
                )
            )
        started = time.monotonic()
        try:
            with self._unlocked():
                resp = http.send(req, config)
        except errors.TransportError as e:
            _log_exchange(req, token_endpoint, e.kind, started)
            return wit.transport_error(e)
        except Exception as e:  # a bug here must not trap the guest mid-refresh
            _log_exchange(req, token_endpoint, "other", started)
            return wit.transport_error(errors.TransportError("other", type(e).__name__))
        _log_exchange(req, token_endpoint, resp.status, started)
        return wit.response(resp)

    def emit_update_keys(self, keys: str) -> Optional[str]:
        try:
            with self._unlocked():
                self._store.save(keys)
        except Exception as e:
            reason = _scrub(f"{type(e).__name__}: {e}", keys)
            log.warning("refreshed keys not persisted: %s", reason)
            return reason
        log.info("refreshed keys persisted")
        # Durable: other threads may now refresh from what was stored.
        self.end_lease()
        return None

    def acquire_refresh_lease(self):
        if self._lease is None:
            timeout = self._rekey.lease_timeout
            with self._unlocked():
                self._lease = self._leases.acquire(self._store.lease_key, timeout)
            if self._lease is None:
                return f"another call in this process held it for more than {timeout:g} s"
        try:
            with self._unlocked():
                current = self._store.load()
        except Exception as e:
            return f"cannot re-read the stored keys: {type(e).__name__}"
        # in-doubt stays false: an in-process lease cannot outlive its holder
        # unnoticed (the Rust host answers false as well).
        return wit.lease(current, False)

    def release_refresh_lease(self) -> None:
        self.end_lease()


def _log_exchange(req: Request, token_endpoint: bool, outcome, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        url = urllib.parse.urlsplit(req.url)
        target = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"  # no userinfo, no query
        kind = "token" if token_endpoint else "api"
        log.debug("%s %s %s -> %s (%.1f ms)", kind, req.method, target, outcome, (time.monotonic() - started) * 1e3)


def _scrub(text: str, keys: str) -> str:
    """A store's error message with every value of the token set cut out
    (a callback's own message might quote what it failed to write)."""
    try:
        values = [v for v in json.loads(keys).values() if isinstance(v, str) and len(v) >= 6]
    except (ValueError, AttributeError):
        values = []
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text.replace(keys, "[redacted]")
