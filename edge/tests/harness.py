"""Processes and HTTP for the edge scenarios and the benchmark (stdlib only):
the test kit's provider, `wasmtime serve` on a component, a header-echoing
upstream, and an HTTP client that never uses proxies from the environment."""

import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path


def wait_for(what, check, timeout=60.0, every=0.05):
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def request(base, method, path, headers=None, body=None, timeout=60):
    """(status, headers as a list, body bytes) over a new connection, no proxy."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


class Testkit:
    """The rekey-testkit binary: serves until its stdin closes."""

    def __init__(self, binary, *args):
        self.proc = subprocess.Popen(
            [binary, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        info = json.loads(self.proc.stdout.readline())
        self.base = info["base_url"]
        self.token_url = info["token_url"]
        self.client_id = info["client_id"]
        self.client_secret = info["client_secret"]

    def admin(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        status, _, out = request(
            self.base, "POST" if data is not None or path in POSTS else "GET",
            "/_testkit/" + path, headers, data,
        )
        assert status == 200, f"/_testkit/{path} answered {status}"
        return json.loads(out) if out else None

    def stats(self):
        return self.admin("stats")

    def api_log(self):
        return self.admin("api-log")

    def live(self, refresh_token):
        return self.admin("refresh-token-live", {"refresh_token": refresh_token})["live"]

    def token_works(self, access_token):
        status, _, _ = request(
            self.base, "GET", "/api/probe", {"authorization": f"Bearer {access_token}"}
        )
        return status == 200

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


POSTS = {"authorize", "revoke-all"}


class Serve:
    """`wasmtime serve` on a component, on an ephemeral loopback port."""

    def __init__(self, wasmtime, component, log_dir, name, env=None, dirs=(), secret_env=None):
        self.log = Path(log_dir) / f"{name}.log"
        args = [wasmtime, "serve", "-S", "cli", "--addr", "127.0.0.1:0"]
        for host_dir, guest_dir in dirs:
            args += ["--dir", f"{host_dir}::{guest_dir}"]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        proc_env = dict(os.environ)
        for k, v in (secret_env or {}).items():
            # Passed by name: the value never appears on a command line.
            args += ["--env", k]
            proc_env[k] = v
        args.append(str(component))
        self.logfile = open(self.log, "wb")
        # umask 077, as the README says to serve: the component cannot choose
        # a file's mode (wasi:filesystem has none), so new files get 0600.
        self.proc = subprocess.Popen(
            args, stdout=self.logfile, stderr=self.logfile, stdin=subprocess.DEVNULL, env=proc_env,
            umask=0o077,
        )
        self.base = wait_for(f"{name} to listen", self._address, timeout=60)

    def _address(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"wasmtime serve exited: {self.log.read_text()[-2000:]}")
        found = re.findall(r"Serving HTTP on (http://127\.0\.0\.1:\d+)/", self.log.read_text())
        return found[-1] if found else None

    def kill(self):
        """SIGKILL: no graceful shutdown, nothing flushed by the runtime."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.logfile.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self.logfile.closed:
            self.logfile.close()


class Echo:
    """An upstream that records each request and answers it: `.../mirror`
    with the request body back, `.../bytes/N` with N bytes, anything else with
    a small JSON body. A bearer token in `reject` is answered 401 (expired),
    as the API answers a token it no longer takes."""

    def __init__(self):
        seen = self.seen = []
        reject = self.reject = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen.append({
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": body.decode("latin-1"),
                })
                auth = self.headers.get("authorization") or ""
                if auth.removeprefix("Bearer ") in reject:
                    self._answer(401, b"", [("www-authenticate", 'Bearer error="invalid_token"')])
                elif self.path.endswith("/mirror"):
                    self._answer(200, body, [("content-type", "application/octet-stream")])
                elif m := re.search(r"/bytes/(\d+)$", self.path):
                    self._answer(200, b"x" * int(m[1]), [("content-type", "application/octet-stream")])
                else:
                    self._answer(200, json.dumps({"echo": True}).encode(), [("content-type", "application/json")])

            def _answer(self, status, out, headers):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("x-upstream", "echo")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
