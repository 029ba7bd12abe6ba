"""``Rekey``: sends requests through the component, which runs the whole
refresh and fleet protocol on the credential's record; this module serves
the component's ``host`` imports (HTTP, the record store) for one call."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Optional

from wasmtime.component import Record

from . import dpop, errors, http, origins, signing, wit
from .authorize import (
    DEFAULT_REDIRECT_URI,
    DEFAULT_TIMEOUT,
    ENTROPY_BYTES,
    AuthorizeImports,
    DeviceAuthorization,
    PendingAuthorization,
    RedirectListener,
    import_token_response,
    run_code_flow,
)
from .component import load_component
from .http import HttpConfig
from .keys import keys_text
from .model import Grant, KeepaliveOutcome, Request, Response, Settings, grant_of
from .records import StoreError, UnknownCredential, WriteConflict, WriteFailed, WriteUnknown
from .runtime import Bodies, Runtime
from .secret import Secret
from .stores import CallbackRecord, CallbackStore, RecordStore
from .stores.memory import scrub_keys

log = logging.getLogger("rekey")

#: Time kept in hand after a token exchange, to persist its result.
SPEND_MARGIN = 1.0


class Rekey:
    """A loaded rekey component. Thread-safe; share one per process.

    ``wasm`` is the component's path; without it, ``$REKEY_WASM`` if set,
    else the component packaged with rekey (:func:`rekey.component_path`).
    ``expected_sha256`` makes loading any other file an error."""

    def __init__(
        self,
        wasm: Optional[str | os.PathLike] = None,
        *,
        expected_sha256: Optional[str] = None,
        http_config: HttpConfig = HttpConfig(),
        call_timeout: float = 120.0,
        memory_limit_bytes: int = 32 * 1024 * 1024,
    ):
        source, code = load_component(wasm)
        #: SHA-256 (hex) of the component this instance runs.
        self.component_sha256 = hashlib.sha256(code).hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != self.component_sha256:
            raise ValueError(
                f"component {source} has SHA-256 {self.component_sha256}, expected {expected_sha256.lower()}"
            )
        self.http_config = http_config
        self.call_timeout = call_timeout
        self._runtime = Runtime(code, memory_limit_bytes, call_timeout)
        self._callback_lock = threading.Lock()
        self._callback_records: dict[str, CallbackRecord] = {}

    def close(self) -> None:
        """Frees the compiled component now (it is also freed at exit),
        after any call in progress. Later calls raise :class:`ComponentError`."""
        self._runtime.close()

    def __enter__(self) -> "Rekey":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        settings: Settings,
        request: Request,
        *,
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ) -> Response:
        """Sends ``request`` with the credential's access token, refreshing
        as ``settings.strategy`` says.

        Either ``store`` and ``credential`` (the record is read from and
        written to the store: any number of processes may share it), or
        ``keys`` (the stored token set: a dict, JSON text or a Secret) with
        ``on_update_keys(keys_json)``, which must make a new set durable
        before it returns (raise to stop the call before the new tokens are
        spent): one process only. Calls naming the same ``credential`` share
        its record; without a name a callback call has one of its own.
        Raises a :class:`errors.RekeyError`."""
        name, records = self._records(store, credential, keys, on_update_keys)
        call = CallState(self, records, name, settings)
        result = self._runtime.call_send(call, wit.settings(settings), wit.request(request, call.bodies))
        if isinstance(result, Record):
            return wit.response_from(result)
        raise wit.send_error(result)

    def keepalive(
        self,
        settings: Settings,
        *,
        older_than: "float | datetime.timedelta",
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ) -> KeepaliveOutcome:
        """Keeps the credential's refresh token from dying of disuse
        (Microsoft: 90 days idle, Xero: 60, Google: six months): the
        component's ``keepalive``. Refreshes when the stored set was obtained
        ``older_than`` ago or more (seconds, or a ``timedelta``; whole seconds
        count), or when that is unknown (an imported set), or when the
        provider said its refresh token expires within that time; otherwise
        sends nothing. The refresh is :meth:`send`'s own (the fleet's lease
        and mark, adopting a set another worker stored meanwhile), so any
        number of processes may run it at once (from cron) and one refresh
        happens. It sends no API request.

        The record as for :meth:`send`: ``store`` and ``credential``, or
        ``keys`` with ``on_update_keys``. Returns a :class:`KeepaliveOutcome`;
        raises what :meth:`send` raises, mapped the same way (a revoked grant:
        :class:`errors.ReauthorizationRequired`, remembered so the next run
        sends nothing; no keys: :class:`errors.NotAuthenticated`)."""
        seconds = _whole_seconds(older_than)
        name, records = self._records(store, credential, keys, on_update_keys)
        call = CallState(self, records, name, settings)
        result = self._runtime.call("keepalive", call, (wit.settings(settings), seconds))
        if isinstance(result, str):
            return KeepaliveOutcome(result)
        raise wit.send_error(result)

    def _records(self, store, credential, keys, on_update_keys) -> tuple[str, RecordStore]:
        """The record a call runs on: the store's, or a callback record."""
        if store is not None:
            if keys is not None or on_update_keys is not None:
                raise TypeError("store= goes with credential=; keys= and on_update_keys= go together without a store")
            if not credential:
                raise TypeError("store= needs credential= (the credential's name in the store)")
            return credential, store
        if on_update_keys is not None:
            record = self._callback_record(credential)
            if keys is not None:
                record.offer(keys_text(keys))
            return credential or "(callback)", CallbackStore(record, on_update_keys)
        raise TypeError("pass store= and credential=, or keys= and on_update_keys=")

    def _callback_record(self, credential: Optional[str]) -> CallbackRecord:
        if credential is None:
            return CallbackRecord()
        with self._callback_lock:
            return self._callback_records.setdefault(credential, CallbackRecord())

    # The first token set: the component's ``authorize`` interface, with this
    # host's effects (random bytes, the loopback listener, HTTP, the store).

    def authorize_code(
        self,
        settings: Settings,
        *,
        on_url: Callable[[str], Any],
        store: Optional[RecordStore] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
        credential: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        redirect_uri: Optional[str] = None,
    ) -> Secret:
        """The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636
        S256) through a loopback redirect (RFC 8252 §7.3).

        Listens on ``http://127.0.0.1:<free port>/callback`` (or
        ``redirect_uri``), calls ``on_url(url)`` with the listener's one-use
        start URL (print it, or ``webbrowser.open``; it must return promptly):
        a :class:`StartUrl` holding no state or PKCE challenge, which
        redirects once to the authorization URL (``url.authorization_url``);
        opened twice, the flow ends (:class:`StartUrlReused`). Waits up to
        ``timeout`` seconds in all; the component checks each redirect
        (state, iss, error): one whose state is not this request's is answered
        400 and the wait goes on; the accepted one's code is exchanged, the
        token response stored as the credential's keys (``store.save``, then
        ``on_update_keys``; both durable when they return), and only then is
        the browser answered.
        Returns the keys stored (a :class:`Secret` of the JSON). Raises a
        :class:`errors.RekeyError`; nothing is stored then."""
        persist = self._authorize_persistence(store, on_update_keys, credential, settings)
        self.check_settings(settings)  # the credential is created: bound, and usable at send
        if not callable(on_url):
            raise TypeError("on_url(url) must be callable: it shows the authorization URL")
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        listener = RedirectListener(redirect_uri or DEFAULT_REDIRECT_URI)
        try:
            pending = self.begin_authorization(settings, listener.redirect_uri)
            return run_code_flow(
                listener,
                pending.url,
                on_url=on_url,
                exchange=lambda query: self.finish_authorization(settings, pending, query),
                persist=lambda keys: persist(keys.expose()),
                timeout=timeout,
            )
        finally:
            listener.close()

    def authorize_device(
        self,
        settings: Settings,
        *,
        on_user_code: Callable[[DeviceAuthorization], Any],
        store: Optional[RecordStore] = None,
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
        persist = self._authorize_persistence(store, on_update_keys, credential, settings)
        self.check_settings(settings)  # the credential is created: bound, and usable at send
        if not callable(on_user_code):
            raise TypeError("on_user_code(device) must be callable: it shows the user code")
        device = self.start_device_authorization(settings)
        on_user_code(device)
        keys = self.poll_device_authorization(settings, device)
        persist(keys.expose())
        return keys

    def check_settings(self, settings: Settings) -> None:
        """Checks ``settings`` by exactly the rules the component applies at
        ``send`` (its ``check-settings``): call it when a credential is
        created or changed, so what is accepted then is not refused later.
        The authorisation flows call it before anything starts. Raises
        :class:`errors.InvalidSettings` saying what is wrong and how to fix it
        (e.g. no ``api_origins``: a token is bound before it is used).
        With ``settings.signing`` (and ``settings.dpop``), the key is loaded
        too (from its file or variable) and checked against the algorithm,
        as a send would when it signs."""
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings)
        refusal = self._runtime.call("check-settings", imports, (wit.settings(settings),))
        if refusal is not None:
            raise errors.InvalidSettings(str(refusal))
        key_source = signing.signing_of(settings.signing)
        if key_source is not None:
            key_source.load()
        dpop_key = dpop.dpop_of(settings.dpop)
        if dpop_key is not None:
            dpop_key.load()

    def begin_authorization(self, settings: Settings, redirect_uri: str) -> PendingAuthorization:
        """The code grant's first step alone, for a caller with its own
        loopback listener at ``redirect_uri``: the authorization URL (state,
        PKCE S256)."""
        auth = wit.authorization(settings, redirect_uri)
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings)
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
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings)
        result = self._runtime.call(
            "finish", imports, (wit.settings(settings), pending._authorization, pending._pending, query)
        )
        if isinstance(result, str):
            return Secret(import_token_response(result))
        raise wit.authorize_error(result)

    def start_device_authorization(self, settings: Settings) -> DeviceAuthorization:
        """The device grant's first step alone (RFC 8628 §3.1)."""
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings)
        result = self._runtime.call("device-start", imports, (wit.settings(settings), wit.authorization(settings, "")))
        if isinstance(result, Record):
            return DeviceAuthorization(result)
        raise wit.authorize_error(result)

    def poll_device_authorization(self, settings: Settings, device: DeviceAuthorization) -> Secret:
        """The device grant's polling alone; returns the keys to store."""
        if not isinstance(device, DeviceAuthorization):
            raise TypeError("device must be what start_device_authorization returned")
        imports = AuthorizeImports(self._runtime.unlocked, self.http_config, settings)
        # Polling lasts as long as the code lives.
        timeout = device.expires_in + self.call_timeout
        result = self._runtime.call(
            "device-poll", imports, (wit.settings(settings), wit.device_grant(device._grant)), timeout
        )
        if isinstance(result, str):
            return Secret(import_token_response(result))
        raise wit.authorize_error(result)

    def _authorize_persistence(self, store, on_update_keys, credential, settings) -> Callable[[str], None]:
        """Where the first token set goes: the store (creating the credential
        with these settings, or replacing its keys), or the callback."""
        grant = grant_of(getattr(settings, "grant", Grant.REFRESH_TOKEN))
        if grant in (Grant.CLIENT_CREDENTIALS, Grant.JWT_BEARER):
            raise errors.InvalidSettings(f"a {grant.value} credential is never authorised: send fetches its token")
        if store is None and on_update_keys is None:
            raise TypeError("pass store= and credential=, or on_update_keys= (the new keys must go somewhere durable)")
        if store is not None and not credential:
            raise TypeError("store= needs credential= (the credential's name in the store)")

        def persist(keys: str) -> None:
            try:
                if store is not None:
                    store.put(credential, settings, keys)
                if on_update_keys is not None:
                    on_update_keys(keys)
            except Exception as e:
                # Its own message may quote what it was given: its type only.
                raise errors.StoreError(
                    f"the new keys could not be saved ({type(e).__name__}); nothing else was changed"
                ) from None
            if store is None and credential is not None:
                # Later callback sends of this credential adopt this set, not an older one.
                self._callback_record(credential).offer(keys)
            log.info("authorised: the new keys are stored")

        return persist


class CallState:
    """One call's side of the ``host`` and ``signer`` interfaces: HTTP behind
    the boundary checks, the credential's record in the store, and its
    signing key. Every wait releases the component lock."""

    def __init__(self, rekey: Rekey, store: RecordStore, name: str, settings: Settings):
        self._config = rekey.http_config
        self._unlocked = rekey._runtime.unlocked
        self._store = store
        self._name = name
        self._settings = settings
        self._deadline = time.monotonic() + rekey.call_timeout
        #: instance_url of every token set this call saw (read or written).
        self._instance_urls: set[str] = set()
        self.bodies = Bodies()

    def http_send(self, purpose: str, head: Record, body: bytes):
        req = wit.request_from(head, body)
        refusal = self._refusal(purpose, req.url)
        if refusal is not None:
            _log_exchange(req, purpose, "refused", time.monotonic())
            return wit.transport_error(errors.TransportError("refused", refusal))
        started = time.monotonic()
        try:
            with self._unlocked():
                resp = http.send(req, self._config)
        except errors.TransportError as e:
            _log_exchange(req, purpose, e.kind, started)
            return wit.transport_error(e)
        except Exception as e:  # a bug here must not trap the guest mid-refresh
            _log_exchange(req, purpose, "other", started)
            return wit.transport_error(errors.TransportError("other", type(e).__name__))
        _log_exchange(req, purpose, resp.status, started)
        return wit.response(resp, self.bodies)

    def _refusal(self, purpose: str, url: str) -> Optional[str]:
        """Why ``url`` may not be sent for ``purpose`` (the boundary's second
        line: the component checked first), or None."""
        try:
            origins.check_transport(url, "the URL")
            if purpose == "api":
                origins.check_api_url(
                    url, self._settings.api_origins, self._instance_urls, self._settings.instance_url_origins
                )
            elif purpose == "token-endpoint":
                if url != self._settings.token_url:
                    return "a token-endpoint request goes only to the credential's token URL"
                if time.monotonic() + self._config.total_timeout + SPEND_MARGIN > self._deadline:
                    # A refresh token spent now could be rotated and then lost at the deadline.
                    return "too little of the call's time is left to exchange and persist a refresh token"
            else:
                return f"a send makes no {purpose} request"
        except ValueError as e:
            return str(e)
        return None

    def read_record(self):
        try:
            with self._unlocked():
                stored = self._store.read(self._name)
        except StoreError as e:
            return str(e)
        except Exception as e:  # a store's bug: its message may hold anything
            log.warning("record store read failed: %s", type(e).__name__)
            return f"the store failed ({type(e).__name__})"
        self._saw(stored.data.keys_text())
        return wit.stored_record(stored)

    def emit_update_keys(self, expected_version: int, data: Record):
        record = wit.credential_record_from(data)
        keys = record.keys_text() or ""
        try:
            with self._unlocked():
                version = self._store.write(self._name, expected_version, record)
        except WriteConflict:
            return wit.write_error("conflict")
        except (WriteFailed, UnknownCredential) as e:
            return self._write_error("failed", str(e), keys)
        except WriteUnknown as e:
            return self._write_error("unknown", str(e), keys)
        except Exception as e:  # any other store failure: it cannot say whether it wrote
            return self._write_error("unknown", f"{type(e).__name__}: {e}", keys)
        self._saw(record.keys_text())
        log.debug("credential record written (version %d)", version)
        return version

    def sign(self, algorithm: str, data: bytes):
        """``signer.sign`` with the key of this call's settings: the host's
        check of what it signs first, then the key, read now (outside the
        component lock)."""
        with self._unlocked():
            return wit.sign_assertion(self._settings, algorithm, data)

    def dpop_public_key(self, algorithm: str):
        """``signer.dpop-public-key``: the public JWK of this call's DPoP key (read now)."""
        with self._unlocked():
            return wit.dpop_public_key(self._settings, algorithm)

    def dpop_sign(self, algorithm: str, data: bytes):
        """``signer.dpop-sign``: the host's check of the proof first (its
        ``htu`` the token URL, or a URL this call's access token may go to:
        the check ``http-send`` makes), then the DPoP key, read now, signs."""
        with self._unlocked():
            return wit.dpop_sign(self._settings, algorithm, data, self._api_refusal)

    def _api_refusal(self, url: str) -> Optional[str]:
        """Why the access token may not go to ``url`` (http-send's check for an API request), or None."""
        return self._refusal("api", url)

    def _write_error(self, kind: str, message: str, keys: str):
        message = scrub_keys(message, keys) if keys else message
        log.warning("credential record not written (%s): %s", kind, message)
        return wit.write_error(kind, message)

    def _saw(self, keys: Optional[str]) -> None:
        if keys and self._settings.instance_url_origins:
            try:
                url = json.loads(keys).get("instance_url")
            except (ValueError, AttributeError):
                return
            if isinstance(url, str):
                self._instance_urls.add(url)


#: The WIT u64's range: keepalive's window in seconds.
_U64_MAX = 2**64 - 1


def _whole_seconds(older_than) -> int:
    """``older_than`` (seconds as a number, or a ``timedelta``) as the whole
    seconds keepalive takes (a fraction is dropped: the component counts whole
    seconds)."""
    if isinstance(older_than, datetime.timedelta):
        seconds = older_than.total_seconds()
    elif isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
        seconds = older_than
    else:
        raise TypeError(
            f"older_than must be seconds (a number) or a datetime.timedelta, not {type(older_than).__name__}"
        )
    if not (0 <= seconds <= _U64_MAX):  # NaN fails this too
        raise ValueError("older_than must be 0 or more (e.g. timedelta(days=7): refresh what is a week old)")
    return int(seconds)


def _log_exchange(req: Request, purpose: str, outcome, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        url = urllib.parse.urlsplit(req.url)
        target = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"  # no userinfo, no query
        kind = "token" if purpose == "token-endpoint" else purpose
        log.debug("%s %s %s -> %s (%.1f ms)", kind, req.method, target, outcome, (time.monotonic() - started) * 1e3)
