"""Loopback servers for the HTTP-library integration tests: an API that
records what reaches it and answers as told, and a token endpoint in front
of the testkit's that holds each request until the test lets it through."""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    gzip: bool = False


class RecordingApi:
    """An API on 127.0.0.1 that records every request and answers ``answer``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer = Answer()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                api.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
                answer = api.answer
                payload = gzip.compress(answer.body) if answer.gzip else answer.body
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                if answer.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HeldTokenEndpoint:
    """Forwards each token request to ``token_url`` (the testkit's), but
    first sets ``arrived`` and waits for ``release``: a test can act while a
    refresh is in flight, with no timing involved."""

    def __init__(self, token_url: str) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.requests = 0
        upstream = urllib.parse.urlsplit(token_url)
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held.requests += 1
                held.arrived.set()
                assert held.release.wait(60), "the test never released the token request"
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                try:
                    forward = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    conn.request("POST", upstream.path, body=body, headers=forward)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def stored_tokens(store, name: str) -> dict:
    return json.loads(store.read(name).data.keys_text())


def record_is_settled(store, name: str) -> bool:
    """No lease held and no refresh mark left: no refresh is half done."""
    data = store.read(name).data
    return data.lease is None and data.refresh_mark is None


def long_lived(provider_factory):
    """A provider whose access tokens live 10 minutes: they expire when the
    test says (``expire-access-tokens``), never on their own mid-test."""
    return provider_factory("--access-ttl-ms", "600000")
