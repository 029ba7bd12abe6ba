"""``http-send``: one real HTTP exchange over ``http.client``: no redirects,
bounded in time (connect and total) and in response size. Failures raise
:class:`TransportError` with the WIT case as ``kind``; messages never carry
the URL's query or a header value."""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from .errors import TransportError
from .model import Request, Response

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_CHUNK = 256 * 1024  # read1 returns what one socket read gives, up to this (measured best of 64 KiB..1 MiB)


@dataclass(frozen=True)
class HttpConfig:
    connect_timeout: float = 10.0
    #: The whole exchange, body included.
    total_timeout: float = 30.0
    #: Larger response bodies fail with ``too-large`` instead of filling memory.
    max_response_bytes: int = 4 * 1024 * 1024


_tls_lock = threading.Lock()
_tls_context: Optional[ssl.SSLContext] = None


def _tls() -> ssl.SSLContext:
    # Built on first https use: loading the CA bundle costs milliseconds.
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            _tls_context = ssl.create_default_context()
        return _tls_context


class NotLoopback(Exception):
    """``localhost``, or a plain http:// peer, is not a loopback address:
    nothing was sent (not an OSError, so no connect handler takes it)."""


def is_loopback_ip(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped 127.x.x.x: an address, not a name."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _is_localhost(host: str) -> bool:
    return host.lower() in ("localhost", "localhost.")


def _resolve(host: str, port: int):
    """getaddrinfo, as socket.create_connection uses it (tests replace this)."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


def _connector(scheme: str):
    """``socket.create_connection`` for http.client, with "loopback is an
    address": ``localhost`` is used only when every address it resolves to
    is loopback, and a plain http:// socket is handed over only once its
    peer address is loopback, so no byte is written before the check."""

    def connect(address, timeout=None, source_address=None, **_):
        host, port = address
        answers = _resolve(host, port)
        if _is_localhost(host):
            for *_, sockaddr in answers:
                if not is_loopback_ip(sockaddr[0]):
                    raise NotLoopback(f"localhost resolves to {sockaddr[0]}, which is not a loopback address")
        last: Optional[OSError] = None
        for family, kind, proto, _, sockaddr in answers:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                last = e
                continue
            peer = sock.getpeername()[0]
            if scheme == "http" and not is_loopback_ip(peer):
                sock.close()
                raise NotLoopback(f"the http:// peer is {peer}, which is not a loopback address")
            return sock
        raise last or OSError(f"{host} resolved to no address")

    return connect


def send(req: Request, config: HttpConfig) -> Response:
    deadline = time.monotonic() + config.total_timeout
    conn, target = _connection(req, config)
    try:
        _connect(conn)
        # Kept: http.client drops conn.sock when the server closes after answering.
        sock = conn.sock
        sock.settimeout(_remaining(deadline))
        try:
            _write(conn, req, target)
            resp = conn.getresponse()
            return _read(sock, resp, deadline, config.max_response_bytes)
        except (socket.timeout, TimeoutError):
            raise TransportError("timeout") from None
        except TransportError:
            raise
        except (OSError, http.client.HTTPException) as e:
            # Reset, broken pipe, a malformed answer: the request may have arrived.
            raise TransportError("other", _describe(e)) from None
    finally:
        conn.close()


def _connection(req: Request, config: HttpConfig):
    if not _TOKEN.match(req.method or ""):
        raise TransportError("invalid-request", "invalid HTTP method")
    try:
        url = urllib.parse.urlsplit(req.url)
        port = url.port
    except ValueError:
        raise TransportError("invalid-request", "invalid URL") from None
    if url.scheme not in ("http", "https"):
        raise TransportError("invalid-request", "URL scheme must be http or https")
    if not url.hostname:
        raise TransportError("invalid-request", "URL has no host")
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    timeout = config.connect_timeout
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.hostname, port, timeout=timeout, context=_tls())
    else:
        conn = http.client.HTTPConnection(url.hostname, port, timeout=timeout)
    conn._create_connection = _connector(url.scheme)  # the hook http.client connects through
    return conn, target


def _connect(conn: http.client.HTTPConnection) -> None:
    """DNS, TCP and TLS: a failure here means the request provably never left."""
    try:
        conn.connect()
    except NotLoopback as e:
        raise TransportError(
            "refused",
            f"{e}: nothing is sent to it (plain http:// and localhost only ever go to 127.0.0.0/8 or ::1)",
        ) from None
    except (socket.timeout, TimeoutError):
        raise TransportError("timeout") from None
    except (OSError, ssl.SSLError) as e:  # gaierror, refused, unreachable, handshake
        raise TransportError("connect", _describe(e)) from None


def _write(conn: http.client.HTTPConnection, req: Request, target: str) -> None:
    try:
        # The Host sent is always the URL's own (http.client writes it): the
        # component refuses a caller's naming another site; this is the
        # second line (no domain fronting).
        conn.putrequest(req.method, target, skip_accept_encoding=True)
        for name, value in req.headers:
            if name.lower() in ("content-length", "transfer-encoding", "host"):
                continue  # framing and Host are ours
            if not _TOKEN.match(name):
                raise TransportError("invalid-request", "invalid header name")
            if any(c in value for c in "\r\n\0"):
                # Never echo the value: it may be the Authorization header.
                raise TransportError("invalid-request", f"invalid value for header {name}")
            conn.putheader(name, value)
        if req.body or req.method.upper() in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(bytes(req.body) if req.body else None)
    except (http.client.InvalidURL, ValueError, UnicodeEncodeError):
        raise TransportError("invalid-request", "the request line or a header cannot be encoded") from None


def _read(sock: socket.socket, resp: http.client.HTTPResponse, deadline: float, cap: int) -> Response:
    length = resp.getheader("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise TransportError("too-large", cap)
    headers = [(k.lower(), v) for k, v in resp.getheaders()]
    # One socket read per step (read1), each bounded by what is left of the
    # deadline. The chunks are joined once at the end: growing a bytearray
    # and copying it out cost a 1 MiB answer ~0.5 ms over plain http.client.
    chunks, size = [], 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = resp.read1(_CHUNK) if not resp.isclosed() else b""
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise TransportError("too-large", cap)
    return Response(resp.status, headers, b"".join(chunks))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransportError("timeout")
    return left


def _describe(e: BaseException) -> str:
    # The exception's own words name no URL (http.client never puts one in);
    # its class tells refused from reset from DNS.
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
