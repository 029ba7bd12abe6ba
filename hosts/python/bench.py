#!/usr/bin/env python3
"""rekey (the component in wasmtime-py) against plain http.client, in one run,
interleaved, on loopback against the testkit provider. Prints medians and
ratios; never fails on timing.

    REKEY_WASM=... REKEY_TESTKIT=... .venv/bin/python bench.py [iterations]
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import statistics
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    started = time.perf_counter()
    client = rekey.Rekey()
    load_ms = (time.perf_counter() - started) * 1e3
    p = Provider("--access-ttl-ms", "3600000")
    try:
        settings = p.settings()
        # one grant each: both rotate their refresh token on every refresh
        store = MemoryStore()
        store.put("c", settings, rekey.keys_from_token_response(p.authorize()))
        keys = p.authorize()
        body = os.urandom(64 * 1024)
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

        # 3. a 64 KiB POST body (wasmtime-py copies list<u8> element by element)
        store.put("c", keys=json.dumps(rk_keys))
        r, nat = [], []
        for _ in range(max(10, n // 10)):
            t = time.perf_counter(); client.send(settings, Request.post(p.api_url + "bench", body), store=store, credential="c"); r.append(time.perf_counter() - t)
            t = time.perf_counter(); native("POST", p.api_url + "bench", keys["access_token"], body); nat.append(time.perf_counter() - t)
        rows.append(("warm POST 64 KiB body, median", r, nat))

        print(f"rekey Python host, wasmtime-py 50.0.1, Python {sys.version.split()[0]}, n={n}")
        print(f"Rekey() (read + compile the component): {load_ms:.1f} ms")
        print(f"{'measure':34} {'rekey':>10} {'http.client':>12} {'ratio':>7} {'added':>10}")
        for name, a, b in rows:
            ra, rb = median_us(a), median_us(b)
            print(f"{name:34} {ra:8.0f}µs {rb:10.0f}µs {ra / rb:7.2f} {ra - rb:8.0f}µs")
        s = p.stats()
        print(f"provider: api_calls {s['api_calls']}, refreshes {s['refreshes_granted']}, invalid_grant {s['invalid_grant']}")
    finally:
        p.close()


if __name__ == "__main__":
    main()
