"""Processes and HTTP for the edge scenarios and the benchmark (stdlib only):
the test kit's provider, `wasmtime serve` on a component, a header-echoing
upstream, and an HTTP client that never uses proxies from the environment."""

import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
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


POSTS = {"authorize", "revoke-all", "expire-access-tokens"}


SERVE_SH = Path(__file__).resolve().parent.parent / "serve.sh"
JCO_DIR = Path(__file__).resolve().parent.parent / "jco"


class Runtime:
    """Which runtime serves: `wasmtime` (binary: the wasmtime CLI) or `jco`
    (binary: jco's dist/jco.js; shim: the preview2-shim package it links)."""

    def __init__(self, name, binary, shim=None):
        self.name, self.binary, self.shim = name, binary, shim
CALLER_SECRET = "caller-secret-7d1e0b"  # the callers' bearer secret in every scenario
OPERATOR_SECRET = "operator-secret-52a9c4"


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A runtime serving a component on loopback, started through
    edge/serve.sh (which checks the keys directory and sets umask 077) under
    this process's umask 022, in its own process group (jco runs a child).

    - `wasmtime`: `wasmtime serve`; `settings` through wasi:cli/environment
      (`--env`), `secret_env` by name only (never on a command line).
    - `jco`: `jco serve` with edge/jco/setup.mjs (one preopened directory, only
      the named variables) and edge/jco/config-store.mjs as wasi:config/store;
      `settings` in its JSON file, or with `env_only` in the environment."""

    def __init__(self, runtime, component, log_dir, name, settings=None, dirs=(), secret_env=None,
                 caller=CALLER_SECRET, env_only=False):
        self.log = Path(log_dir) / f"{name}.log"
        self.caller = caller
        self.runtime = runtime
        keys = dirs[0][0] if dirs else log_dir
        settings = dict(settings or {})
        proc_env = dict(os.environ)
        proc_env.update(secret_env or {})
        if runtime.name == "wasmtime":
            args = [runtime.binary, "serve", "-S", "cli", "--addr", "127.0.0.1:0"]
            for host_dir, guest_dir in dirs:
                args += ["--dir", f"{host_dir}::{guest_dir}"]
            for k, v in settings.items():
                args += ["--env", f"{k}={v}"]
            for k in secret_env or {}:
                args += ["--env", k]  # by name: the value never appears on a command line
            args.append(str(component))
            self.pattern = r"Serving HTTP on (http://127\.0\.0\.1:\d+)/"
        else:
            port = free_port()
            config = Path(log_dir) / f"{name}.config.json"
            config.write_text(json.dumps({} if env_only else settings))
            names = list(secret_env or {}) + (list(settings) if env_only else [])
            if env_only:
                proc_env.update(settings)
            assert len(dirs) <= 1, "the jco setup preopens one directory"
            proc_env.update({
                "REKEY_JCO_SHIM": runtime.shim, "REKEY_JCO_ENV": ",".join(names), "REKEY_JCO_CONFIG": str(config),
                "REKEY_JCO_PREOPEN": f"{dirs[0][0]}::{dirs[0][1]}" if dirs else "",
            })
            args = ["node", runtime.binary, "serve", str(component), "--port", str(port), "--host", "127.0.0.1",
                    "--jco-dir", str(Path(log_dir) / f"{name}.jco"), "--jco-import", str(JCO_DIR / "setup.mjs"),
                    "--jco-map", f"wasi:config/store@0.2.0-draft={JCO_DIR / 'config-store.mjs'}"]
            self.pattern = r"Server listening @ (127\.0\.0\.1:\d+)\.\.\."
        args = [str(SERVE_SH), str(keys), *args]
        self.logfile = open(self.log, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self.logfile, stderr=self.logfile, stdin=subprocess.DEVNULL, env=proc_env,
            umask=0o022, start_new_session=True,
        )
        found = wait_for(f"{name} to listen", self._address, timeout=120)
        self.base = found if found.startswith("http") else f"http://{found}"

    def _address(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.runtime.name} exited: {self.log.read_text()[-2000:]}")
        found = re.findall(self.pattern, self.log.read_text())
        return found[-1] if found else None

    def request(self, method, path, headers=None, body=None, timeout=60):
        """`request` as an authenticated caller (unless `headers` says otherwise)."""
        headers = dict(headers or {})
        if self.caller and not any(k.lower() == "authorization" for k in headers):
            headers["authorization"] = f"Bearer {self.caller}"
        return request(self.base, method, path, headers, body, timeout)

    def _signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        """SIGKILL to the whole group: no graceful shutdown, nothing flushed."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.logfile.close()

    def stop(self):
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal(signal.SIGKILL)  # a child left behind (jco runs one)
        if not self.logfile.closed:
            self.logfile.close()


UPSTREAM_KEEP_ALIVE = "timeout=77, max=9"  # the upstream's own, told apart from the runtime's


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
                elif self.path.endswith("/hop"):
                    self._answer(200, b"{}", [("connection", "x-hop-secret"), ("x-hop-secret", "upstream-only"),
                                              ("keep-alive", UPSTREAM_KEEP_ALIVE), ("x-end-to-end", "kept")])
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

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = do_PROPFIND = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
