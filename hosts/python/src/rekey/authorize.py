"""The first token set: what the component's ``authorize`` interface needs from
this host (see ``wit/rekey.wit``). The component decides (the authorization
URL with state and PKCE S256, checking the redirect's state, iss and error,
the code exchange, device polling with slow_down); this module supplies random
bytes, the loopback redirect listener (RFC 8252 §7.3), HTTP for the
component's requests, and turns the token response it returns into the stored
token set exactly as the Rust host does (``TokenSet::import``)."""

from __future__ import annotations

import base64
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import selectors
import socket
import time
import urllib.parse
from typing import Any, Callable, Optional

from wasmtime.component import Record

from . import errors, http, origins, wit
from .http import HttpConfig
from .model import Request, first_token_set
from .runtime import Bodies
from .same_user import same_user

log = logging.getLogger("rekey")

#: How long ``authorize_code`` waits for the redirect unless told otherwise (seconds).
DEFAULT_TIMEOUT = 300.0
#: The redirect URI when none is given: a free port is chosen.
DEFAULT_REDIRECT_URI = "http://127.0.0.1/callback"
#: Random bytes ``begin`` takes: 16 make the state, 32 the PKCE verifier.
ENTROPY_BYTES = 48
#: Bound on reading one request at the loopback listener (seconds).
READ_TIMEOUT = 10.0
#: Longest request head the listener reads.
MAX_HEAD = 16 * 1024
#: Random bytes in the start URL's one-use token (256 bits).
START_TOKEN_BYTES = 32
#: Refused connections kept open (answered, what they send discarded) at once.
MAX_LINGERING = 256

_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 §2.1
_U64_MAX = 2**64 - 1


def import_token_response(token_response: str, now: Optional[float] = None) -> str:
    """A first token set (JSON text) from the token response an
    authorization-code or device exchange returned, as the Rust host imports
    one: a JSON object holding an access or a refresh token; an access token
    must be an RFC 6750 b64token; the fields the component derives
    (``model.DERIVED_FIELDS``: a sender's ``expires_at``, ``rekey_rejected``,
    ...) are dropped and ``expires_at`` is computed from
    ``expires_in`` (whole seconds, or a numeric string) and the clock only.
    Raises :class:`errors.TokenEndpointError`, never quoting the response."""

    def unusable(why: str) -> errors.TokenEndpointError:
        return errors.TokenEndpointError(f"the token response is unusable: {why}")

    try:
        fields = json.loads(token_response)
    except ValueError as e:
        raise unusable(f"invalid JSON at line {getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')}") from None
    if not isinstance(fields, dict):
        raise unusable("not a JSON object")

    def non_empty(k: str) -> Optional[str]:
        v = fields.get(k)
        return v if isinstance(v, str) and v else None

    access = non_empty("access_token")
    if access is None and non_empty("refresh_token") is None:
        raise unusable("it holds neither access_token nor refresh_token")
    if access is not None and not _B64TOKEN.match(access):
        raise unusable("access_token has characters a bearer token cannot carry (RFC 6750 b64token)")
    secs = _seconds(fields.get("expires_in"))
    at = None if secs is None else min(int(time.time() if now is None else now) + secs, _U64_MAX)
    return first_token_set(fields, at)


def _seconds(v: Any) -> Optional[int]:
    """Seconds as providers send them: a whole number or a numeric string."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 0 <= v <= _U64_MAX else None
    if isinstance(v, str) and re.fullmatch(r"\+?[0-9]+", v.strip()):
        n = int(v.strip())
        return n if n <= _U64_MAX else None
    return None


class PendingAuthorization:
    """A started code grant (``Rekey.begin_authorization``): ``url`` to open
    and the ``redirect_uri`` it returns to. The state and PKCE verifier stay
    inside (``repr`` shows neither)."""

    __slots__ = ("url", "redirect_uri", "_pending", "_authorization")

    def __init__(self, pending: Record, authorization: Record):
        self.url: str = pending.url
        self.redirect_uri: str = getattr(authorization, "redirect-uri")
        self._pending = wit.pending(pending.url, pending.state, getattr(pending, "code-verifier"))
        self._authorization = authorization

    def __repr__(self) -> str:
        return f"PendingAuthorization(redirect_uri={self.redirect_uri!r})"

    def __reduce__(self):
        raise TypeError("a PendingAuthorization holds a secret and cannot be pickled")


class DeviceAuthorization:
    """A started device grant (``Rekey.start_device_authorization``): what a
    person needs. The device code stays inside (``repr`` leaves it out)."""

    __slots__ = ("user_code", "verification_uri", "verification_uri_complete", "expires_in", "interval", "_grant")

    def __init__(self, grant: Record):
        fields = wit.device_grant_fields(grant)
        #: Show it: the code the person types in.
        self.user_code: str = fields["user_code"]
        #: Show it: where the person types it in.
        self.verification_uri: str = fields["verification_uri"]
        #: The same with the code filled in, when the server gives one.
        self.verification_uri_complete: Optional[str] = fields["verification_uri_complete"]
        #: Seconds the code stays valid.
        self.expires_in: int = fields["expires_in"]
        #: Seconds between polls the server asks for.
        self.interval: int = fields["interval"]
        self._grant = fields

    def __repr__(self) -> str:
        return (
            f"DeviceAuthorization(user_code={self.user_code!r}, verification_uri={self.verification_uri!r}, "
            f"expires_in={self.expires_in}, interval={self.interval})"
        )

    def __reduce__(self):
        raise TypeError("a DeviceAuthorization holds a secret and cannot be pickled")


class AuthorizeImports:
    """The ``host`` interface for an authorize call: only ``http-send`` is used
    (the component neither reads nor writes the record, and spends no refresh
    token), and ``signer`` for ``private_key_jwt`` and DPoP proofs. A token-endpoint request goes only to the settings' token URL, a
    device-endpoint one only to their device URL, and either only over https
    or plain http on loopback."""

    def __init__(self, unlocked, config: HttpConfig, settings):
        self._unlocked = unlocked
        self._config = config
        self._settings = settings
        self.bodies = Bodies()

    def http_send(self, purpose: str, head: Record, body: bytes):
        req = wit.request_from(head, body)
        allowed = {"token-endpoint": self._settings.token_url, "device-endpoint": self._settings.device_url}
        try:
            origins.check_transport(req.url, "the URL")
            if purpose not in allowed or req.url != allowed[purpose]:
                raise ValueError(f"an authorisation sends a {purpose} request only to the settings' {purpose} URL")
        except ValueError as e:
            return wit.transport_error(errors.TransportError("refused", str(e)))
        kind = "token" if purpose == "token-endpoint" else "device"
        started = time.monotonic()
        try:
            with self._unlocked():
                resp = http.send(req, self._config)
        except errors.TransportError as e:
            _log_exchange(req, kind, e.kind, started)
            return wit.transport_error(e)
        except Exception as e:  # a bug here must not trap the guest
            _log_exchange(req, kind, "other", started)
            return wit.transport_error(errors.TransportError("other", type(e).__name__))
        _log_exchange(req, kind, resp.status, started)
        return wit.response(resp, self.bodies)

    def read_record(self):
        return "authorisation reads no record"

    def emit_update_keys(self, expected_version: int, data: Record):
        return wit.write_error("failed", "authorisation stores nothing through the component")

    def sign(self, algorithm: str, data: bytes):
        # private_key_jwt: each code exchange and device poll carries a fresh assertion,
        # checked by the host before it is signed.
        with self._unlocked():
            return wit.sign_assertion(self._settings, algorithm, data)

    def dpop_public_key(self, algorithm: str):
        with self._unlocked():
            return wit.dpop_public_key(self._settings, algorithm)

    def dpop_sign(self, algorithm: str, data: bytes):
        # The code exchange and each device poll carry a proof for the token URL
        # (an authorisation makes no API request: no other htu is signed).
        with self._unlocked():
            return wit.dpop_sign(self._settings, algorithm, data, None)


def _log_exchange(req: Request, kind: str, outcome, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        url = urllib.parse.urlsplit(req.url)
        target = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"  # no userinfo, no query
        log.debug("%s %s %s -> %s (%.1f ms)", kind, req.method, target, outcome, (time.monotonic() - started) * 1e3)


def is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class StartUrlReused(errors.RekeyError):
    """The start URL was opened a second time: whoever opened it first (maybe
    another local user who read it from the browser's command line) holds the
    authorization request, so the flow ends before its redirect can arrive."""

    category = errors.Category.NEEDS_AUTHORIZATION

    def __init__(self) -> None:
        super().__init__(
            "the start URL was opened more than once (another process may have read it); "
            "nothing was exchanged or stored: authorise again"
        )


class StartUrl(str):
    """What ``authorize_code`` hands ``on_url``: the listener's one-use start
    URL (``http://127.0.0.1:PORT/start/<token>``), which holds no state or
    PKCE challenge and so is safe on a browser's command line. It answers once
    with a redirect to ``authorization_url``, kept here (in memory) for
    callers who want it: never put that one on a command line or in a file."""

    authorization_url: str

    def __new__(cls, url: str, authorization_url: str) -> "StartUrl":
        self = super().__new__(cls, url)
        self.authorization_url = authorization_url
        return self


class RedirectListener:
    """The loopback listener the redirect arrives at (RFC 8252 §7.3): bound to
    the redirect URI's loopback address (``localhost`` as 127.0.0.1), on its
    port or a free one. It also serves ``start_url``, ``/start/<one-use
    token>``: answered once with a 302 to the authorization URL (``serve``), a
    wrong token with 404; opened twice, ``wait`` raises
    :class:`StartUrlReused`. ``wait`` returns the next GET of the redirect
    path (its connection, to answer after the check, and its raw query);
    other paths are answered 404, other methods 405. On Linux it serves only
    programs of this user (:func:`same_user`): another user's connection is
    answered 403 before a byte of it is read, so it cannot hold the listener
    (its connection stays open, and what it sends is discarded, until its
    program closes it or ``READ_TIMEOUT``, so that it reads the answer)."""

    def __init__(self, configured: str):
        def bad(m: str) -> errors.InvalidSettings:
            return errors.InvalidSettings(f"redirect URI: {m}")

        try:
            url = urllib.parse.urlsplit(configured)
            port = url.port or 0
        except ValueError:
            raise bad("not a URL") from None
        host = url.hostname or ""
        if url.scheme != "http" or not is_loopback(host):
            raise bad("must be http:// on loopback (127.0.0.1, [::1] or localhost)")
        if "?" in configured or "#" in configured:
            raise bad("must have no query or fragment")
        self._path = url.path or "/"
        if self._path == "/start" or self._path.startswith("/start/"):
            raise bad("/start is the listener's own path")
        try:
            ip = ipaddress.ip_address(host)
            address = str(ip)
        except ValueError:
            address = "127.0.0.1"  # RFC 8252 §8.3 prefers the literal
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.bind((address, port))
            self._sock.listen(128)  # room for a burst of another user's connections, each refused at once
        except OSError as e:
            self._sock.close()
            raise errors.ListenerError(f"cannot listen on {address}:{port} ({type(e).__name__})") from None
        bound = self._sock.getsockname()[1]
        netloc = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        #: As sent in the authorization request, with the bound port.
        self.redirect_uri = urllib.parse.urlunsplit(("http", netloc, self._path, "", ""))
        self._token = base64.urlsafe_b64encode(os.urandom(START_TOKEN_BYTES)).rstrip(b"=").decode()
        origin = f"[{address}]:{bound}" if ":" in address else f"{address}:{bound}"
        #: What to open: redirects once to the authorization URL (``serve``).
        self.start_url = f"http://{origin}/start/{self._token}"
        self._target: Optional[str] = None
        self._opened = False
        self._reused = False
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        #: Refused connections -> [when to drop them, bytes discarded].
        self._lingering: dict[socket.socket, list] = {}

    def serve(self, authorization_url: str) -> None:
        """The authorization URL the start URL redirects to."""
        if not re.fullmatch(r"[\x21-\x7e]+", authorization_url):
            raise errors.InvalidSettings("the authorization URL has characters a redirect cannot carry")
        self._target = authorization_url

    def check(self) -> None:
        """Raises :class:`StartUrlReused` once the start URL was opened twice."""
        if self._reused:
            raise StartUrlReused()

    def wait(self, deadline: float) -> Optional[tuple[socket.socket, str]]:
        """The next request for the redirect path, or None at ``deadline``
        (``time.monotonic()``)."""
        while True:
            self.check()
            now = time.monotonic()
            if now >= deadline:
                return None
            for conn, (until, _) in list(self._lingering.items()):
                if until <= now:
                    self._drop(conn)
            wake = min([deadline, *(until for until, _ in self._lingering.values())])
            try:
                ready = [key.fileobj for key, _ in self._selector.select(wake - now)]
            except OSError as e:
                raise errors.ListenerError(type(e).__name__) from None
            for conn in ready:
                if conn is not self._sock:
                    self._discard(conn)
            if self._sock not in ready:
                continue
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:
                raise errors.ListenerError(type(e).__name__) from None
            conn.setblocking(True)
            if not same_user(conn):
                # Another local user (who may have read the start URL on the
                # opener's command line) gets neither the authorization URL
                # nor a say in the redirect.
                log.warning("another user's program reached the authorisation listener; refused")
                self._refuse(conn)
                continue
            target = _read_target(conn, min(READ_TIMEOUT, max(0.1, deadline - time.monotonic())))
            if target is None:
                continue
            path, _, query = target.partition("?")
            if path.startswith("/start/"):
                self._start(conn, path[len("/start/"):])
                continue
            if path != self._path:
                respond(conn, "404 Not Found", "not found")
                continue
            return conn, query

    def _refuse(self, conn: socket.socket) -> None:
        """403 at once, without reading a byte first; then the connection is
        kept, what it sends discarded unread, until its program closes it (so
        closing sends FIN, not RST, and that program sees the answer) or
        ``READ_TIMEOUT``: nothing is waited for."""
        body = b"not yours\n"
        try:
            conn.settimeout(READ_TIMEOUT)
            conn.sendall(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\ncache-control: no-store\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            conn.shutdown(socket.SHUT_WR)
            conn.setblocking(False)
        except OSError:
            conn.close()
            return
        if len(self._lingering) >= MAX_LINGERING:
            self._drop(min(self._lingering, key=lambda c: self._lingering[c][0]))
        self._lingering[conn] = [time.monotonic() + READ_TIMEOUT, 0]
        self._selector.register(conn, selectors.EVENT_READ)
        self._discard(conn)

    def _discard(self, conn: socket.socket) -> None:
        """Reads and drops what a refused connection sent; drops it at its end."""
        entry = self._lingering[conn]
        try:
            while entry[1] <= MAX_HEAD:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                entry[1] += len(chunk)
            else:
                self._drop(conn)  # more than a request head: not a browser
                return
        except (BlockingIOError, InterruptedError):
            return  # all it sent so far is read
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._lingering[conn]
        conn.close()

    def _start(self, conn: socket.socket, token: str) -> None:
        # Compared in time independent of where the tokens differ.
        if self._target is None or not hmac.compare_digest(token.encode(), self._token.encode()):
            respond(conn, "404 Not Found", "not found")
            return
        if self._opened:
            self._reused = True
            respond(conn, "404 Not Found", "not found")
            return
        self._opened = True
        _send(conn, (
            f"HTTP/1.1 302 Found\r\nlocation: {self._target}\r\ncontent-length: 0\r\n"
            "cache-control: no-store\r\nreferrer-policy: no-referrer\r\nconnection: close\r\n\r\n"
        ).encode())

    def close(self) -> None:
        for conn in list(self._lingering):
            self._drop(conn)
        self._selector.close()
        self._sock.close()


def run_code_flow(
    listener: RedirectListener,
    authorization_url: str,
    *,
    on_url: Callable[[str], Any],
    exchange: Callable[[str], Any],
    persist: Callable[[Any], None],
    timeout: float,
):
    """The code grant's wait at the listener: hands ``on_url`` the start URL
    (a :class:`StartUrl`), then checks each redirect with ``exchange(query)``
    (the component's ``finish``) until one is accepted, stores its keys with
    ``persist`` (unless the start URL was opened twice) and only then answers
    the browser. A redirect whose state is not this request's is answered 400
    and the wait goes on (any local process can reach the listener; the
    component checks the state before any effect); anything else ends the
    flow. At most ``timeout`` seconds in all."""
    listener.serve(authorization_url)
    deadline = time.monotonic() + timeout
    on_url(StartUrl(listener.start_url, authorization_url))
    while True:
        got = listener.wait(deadline)
        if got is None:
            raise errors.AuthorizationTimeout(timeout)
        conn, query = got
        try:
            keys = exchange(query)
            listener.check()
            persist(keys)
        except errors.StateMismatch:
            respond(conn, "400 Bad Request", "rekey: this redirect's state does not match the authorisation in progress; it was ignored")
            continue
        except errors.RekeyError as e:
            respond(conn, "400 Bad Request", f"rekey: authorisation failed: {e}")
            raise
        except BaseException:
            respond(conn, "400 Bad Request", "rekey: authorisation failed: an internal error")
            raise
        respond(conn, "200 OK", "rekey: authorised. You can close this window.")
        return keys


def _read_target(conn: socket.socket, timeout: float) -> Optional[str]:
    """The request target of a GET; None for anything else (answered and closed)."""
    head = b""
    try:
        conn.settimeout(timeout)
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = conn.recv(2048)
            if not chunk:
                break
            head += chunk
    except OSError:
        conn.close()
        return None
    parts = head.split(b"\n", 1)[0].decode("latin-1").strip().split(" ")
    if len(parts) < 2:
        conn.close()
        return None
    if parts[0] != "GET":
        respond(conn, "405 Method Not Allowed", "GET only")
        return None
    return parts[1]


def respond(conn: socket.socket, status: str, message: str) -> None:
    """A small HTML page, then the connection closes."""
    body = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>rekey</title></head>'
        f"<body><p>{html.escape(message)}</p></body></html>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "cache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode()
    _send(conn, head + body)


def _send(conn: socket.socket, data: bytes) -> None:
    """Writes a whole answer, then the connection closes."""
    try:
        conn.settimeout(READ_TIMEOUT)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()
