""""Loopback" is an address: ``http-send`` goes to ``localhost`` only when
every address it resolves to is loopback, and writes a plain http:// request
only to a socket whose peer is loopback. Driven on ``rekey.http.send``
directly, with the resolver's answers chosen by the test, against listeners
that count connections and bytes."""

from __future__ import annotations

import socket
import threading

import pytest

from rekey import http as rhttp
from rekey.errors import TransportError
from rekey.http import HttpConfig, is_loopback_ip
from rekey.model import Request

CONFIG = HttpConfig(connect_timeout=2.0, total_timeout=5.0)


def post(url: str) -> Request:
    return Request.post(url, b"grant_type=refresh_token&refresh_token=r", [("authorization", "Basic c2VjcmV0")])


def resolving_to(monkeypatch, *addresses: str) -> None:
    """Every name resolves to these addresses (the port is the one asked for)."""

    def resolve(host, port):
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(rhttp, "_resolve", resolve)


class Sink:
    """A listener on ``host`` that counts connections and bytes, answering 204."""

    def __init__(self, host: str):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.bytes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = conn.recv(65536)
                self.bytes += len(data)
                if data:
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")

    def close(self):
        self.sock.close()


def test_loopback_means_an_address():
    for a in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"):
        assert is_loopback_ip(a), a
    for a in ("10.9.9.9", "::ffff:10.9.9.9", "0.0.0.0", "::", "localhost", ""):
        assert not is_loopback_ip(a), a


@pytest.mark.parametrize("answers", [("127.0.0.1", "10.9.9.9"), ("10.9.9.9", "127.0.0.1"), ("::ffff:10.9.9.9",)])
def test_localhost_resolving_elsewhere_is_refused_before_any_connection(monkeypatch, answers):
    sink = Sink("127.0.0.1")
    try:
        resolving_to(monkeypatch, *answers)
        for url in (f"http://localhost:{sink.port}/t", f"https://localhost:{sink.port}/t", f"http://LOCALHOST.:{sink.port}/t"):
            with pytest.raises(TransportError) as caught:
                rhttp.send(post(url), CONFIG)
            assert caught.value.kind == "refused", (url, str(caught.value))
            assert "not a loopback address" in str(caught.value)
        assert (sink.connections, sink.bytes) == (0, 0), "the sink was reached"
        # The control: loopback answers alone reach the same sink.
        resolving_to(monkeypatch, "127.0.0.1")
        assert rhttp.send(post(f"http://localhost:{sink.port}/t"), CONFIG).status == 204
        assert sink.connections == 1
    finally:
        sink.close()


def _off_loopback_address():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet: picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if is_loopback_ip(address) or address == "0.0.0.0" else address


def test_plain_http_is_written_only_to_a_loopback_peer(monkeypatch):
    ip = _off_loopback_address()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address here to be the peer")
    sink = Sink(ip)
    try:
        # A name the URL check lets through, resolved (as a hostile resolver
        # would) to another machine's address: the peer check stops it.
        resolving_to(monkeypatch, ip)
        with pytest.raises(TransportError) as caught:
            rhttp.send(post(f"http://loopback.test:{sink.port}/t"), CONFIG)
        assert caught.value.kind == "refused", str(caught.value)
        assert f"the http:// peer is {ip}" in str(caught.value)
        assert sink.bytes == 0, "a byte reached a non-loopback peer"
    finally:
        sink.close()


def test_the_host_sent_is_the_urls_own():
    """Second line against domain fronting: whatever Host the request
    carries, the one written names the URL's own host and port."""
    seen = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]

    def serve():
        conn, _ = sock.accept()
        with conn:
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        req = post(f"http://127.0.0.1:{port}/t")
        req = Request.post(req.url, req.body, [*req.headers, ("Host", "evil.example")])
        assert rhttp.send(req, CONFIG).status == 204
        server.join(10)
        head = seen[0].decode("latin-1").lower()
        assert f"host: 127.0.0.1:{port}\r\n" in head, head
        assert "evil.example" not in head, head
    finally:
        sock.close()
