#!/usr/bin/env python3
"""rekey (the component in wasmtime-py) against plain http.client, in one run,
interleaved, on loopback against the testkit provider, plus an API here that
answers an empty or a 1 MiB body. Prints medians, rekey's extra time per case,
and how much more a 1 MiB answer costs rekey than an empty one; never fails
on timing.

    REKEY_WASM=... REKEY_TESTKIT=... .venv/bin/python bench.py [iterations]
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))

import rekey  # noqa: E402
from conftest import Provider  # noqa: E402  (the tests' testkit driver)
from rekey import MemoryStore, Request  # noqa: E402


def native(method: str, url: str, token: str, body: bytes = b"", extra=()) -> tuple[int, bytes]:
    """What an integration without rekey does: one http.client exchange with
    a Bearer header (a new connection each time, as the rekey host makes)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, u.path, body=body or None, headers={"Authorization": f"Bearer {token}", **dict(extra)})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def native_refresh(p: Provider, keys: dict) -> dict:
    """401 -> refresh -> persist (in memory) -> retry, by hand."""
    status, _ = native("GET", p.api_url + "bench", keys["access_token"])
    assert status == 401
    u = urllib.parse.urlsplit(p.token_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    basic = base64.b64encode(f"{p.client_id}:{p.client_secret}".encode()).decode()
    form = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": keys["refresh_token"]})
    conn.request("POST", u.path, body=form, headers={
        "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
    resp = conn.getresponse()
    merged = {**keys, **json.loads(resp.read())}
    conn.close()
    status, _ = native("GET", p.api_url + "bench", merged["access_token"])
    assert status == 200
    return merged


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


MIB = 1024 * 1024


def serve_bodies() -> None:
    """``bench.py --serve-bodies``: an API answering ``GET /empty`` with no body
    and ``GET /mib`` with 1 MiB, to any bearer token; prints its port. Its own
    process, so serving does not compete with the measured calls for the GIL."""
    mib = os.urandom(MIB)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if not (self.headers.get("authorization") or "").startswith("Bearer "):
                self.send_error(401)
                return
            body = mib if self.path == "/mib" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_body_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-bodies"], stdout=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/"


def main() -> None:
    if sys.argv[1:] == ["--serve-bodies"]:
        return serve_bodies()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    started = time.perf_counter()
    client = rekey.Rekey()
    load_ms = (time.perf_counter() - started) * 1e3
    p = Provider("--access-ttl-ms", "3600000")
    bodies, bodies_url = start_body_server()
    try:
        # Any origin, explicitly: the body server listens on a port chosen at run time.
        settings = p.settings(api_origins=["*"])
        # one grant each: both rotate their refresh token on every refresh
        store = MemoryStore()
        store.put("c", settings, rekey.keys_from_token_response(p.authorize()))
        keys = p.authorize()
        body = os.urandom(MIB)
        rows = []

        # 1. warm request: a valid token, no refresh
        r, nat = [], []
        for _ in range(n):
            t = time.perf_counter(); client.send(settings, Request.get(p.api_url + "bench"), store=store, credential="c"); r.append(time.perf_counter() - t)
            t = time.perf_counter(); native("GET", p.api_url + "bench", keys["access_token"]); nat.append(time.perf_counter() - t)
        rows.append(("warm GET, median", r, nat))

        # 2. 401 -> refresh -> retry: the stored access token is rejected every time
        r, nat = [], []
        rk_keys = json.loads(store.read("c").data.keys_text())
        for _ in range(max(20, n // 5)):
            # an old set: a rejected token, not one the guest just obtained
            old = {k: v for k, v in rk_keys.items() if k != "rekey_refreshed_at"}
            store.put("c", keys=json.dumps({**old, "access_token": "stale"}))
            t = time.perf_counter(); client.send(settings, Request.get(p.api_url + "bench"), store=store, credential="c"); r.append(time.perf_counter() - t)
            rk_keys = json.loads(store.read("c").data.keys_text())
            t = time.perf_counter(); keys = native_refresh(p, {**keys, "access_token": "stale"}); nat.append(time.perf_counter() - t)
        rows.append(("401 -> refresh -> retry, median", r, nat))

        # 3. a 1 MiB POST body (a body handle: the component never copies it)
        store.put("c", keys=json.dumps(rk_keys))
        r, nat = [], []
        for _ in range(max(10, n // 10)):
            t = time.perf_counter(); client.send(settings, Request.post(p.api_url + "bench", body), store=store, credential="c"); r.append(time.perf_counter() - t)
            t = time.perf_counter(); native("POST", p.api_url + "bench", keys["access_token"], body); nat.append(time.perf_counter() - t)
        rows.append(("warm POST 1 MiB body, median", r, nat))

        # 4, 5. the same GET answered with no body and with 1 MiB
        for path, name in [("empty", "warm GET, empty answer, median"), ("mib", "warm GET, 1 MiB answer, median")]:
            r, nat = [], []
            for _ in range(n):
                t = time.perf_counter(); got = client.send(settings, Request.get(bodies_url + path), store=store, credential="c"); r.append(time.perf_counter() - t)
                t = time.perf_counter(); _, raw = native("GET", bodies_url + path, keys["access_token"]); nat.append(time.perf_counter() - t)
                assert len(got.body) == len(raw) == (MIB if path == "mib" else 0)
            rows.append((name, r, nat))

        print(f"rekey Python host, wasmtime-py 50.0.1, Python {sys.version.split()[0]}, n={n}")
        print(f"Rekey() (read + compile the component): {load_ms:.1f} ms")
        print(f"{'measure':34} {'rekey':>10} {'http.client':>12} {'ratio':>7} {'extra':>10}")
        extra = {}
        for name, a, b in rows:
            ra, rb = median_us(a), median_us(b)
            extra[name] = ra - rb
            print(f"{name:34} {ra:8.0f}µs {rb:10.0f}µs {ra / rb:7.2f} {ra - rb:8.0f}µs")
        empty, mib = extra["warm GET, empty answer, median"], extra["warm GET, 1 MiB answer, median"]
        print(f"extra(1 MiB answer) / extra(empty answer): {mib / empty:.2f} (target <= 1.2)")
        s = p.stats()
        print(f"provider: api_calls {s['api_calls']}, refreshes {s['refreshes_granted']}, invalid_grant {s['invalid_grant']}")
    finally:
        p.close()
        bodies.kill()
        bodies.wait()


if __name__ == "__main__":
    main()
