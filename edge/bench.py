"""Per-request latency through rekey-proxy.wasm against the same `wasmtime
serve` forwarding without rekey (passthrough.wasm, the caller sending the
token itself), one run, medians. Never fails on timing. Then the same for an
empty and a 1 MiB response body: rekey's extra time over the passthrough per
case, and their ratio (bodies are handles, so the 1 MiB body should cost
rekey about what the empty one does). Run by bench.sh:

    edge/bench.sh          # builds, then prints a table
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))
from harness import CALLER_SECRET, Echo, Runtime, Serve, Testkit, request, sha256_hex  # noqa: E402

WASMTIME, OUT, TESTKIT = os.environ["WASMTIME"], Path(os.environ["OUT"]), os.environ["REKEY_TESTKIT"]
N = int(os.environ.get("EDGE_BENCH_N", "300"))
RT = Runtime("wasmtime", WASMTIME)
CALLER = {"authorization": f"Bearer {CALLER_SECRET}"}  # the proxy's callers authenticate


def timed(base, path, headers=None, size=None):
    t = time.perf_counter()
    status, _, body = request(base, "GET", path, headers)
    elapsed = (time.perf_counter() - t) * 1e6
    assert status == 200, f"{path}: {status}"
    assert size is None or len(body) == size, f"{path}: {len(body)} bytes"
    return elapsed


def main():
    run = OUT / "bench"
    run.mkdir(parents=True, exist_ok=True)
    tk = Testkit(TESTKIT, "--access-ttl-ms", "3600000")
    echo = Echo()
    servers = []
    try:
        def proxy(name, strategy, upstream=f"{tk.base}/api"):
            d = run / name
            d.mkdir(mode=0o700, exist_ok=True)
            (d / "default.json").write_text(json.dumps(tk.admin("authorize")))
            (d / "default.json").chmod(0o600)
            env = {"REKEY_TOKEN_URL": tk.token_url, "REKEY_CLIENT_ID": tk.client_id,
                   "REKEY_UPSTREAM": upstream, "REKEY_STRATEGY": strategy,
                   "REKEY_CALLER_SECRET_SHA256": sha256_hex(CALLER_SECRET), "REKEY_ALLOWED_HOSTS": "127.0.0.1"}
            s = Serve(RT, OUT / "rekey-proxy-env.wasm", run, name, env, dirs=[(d, "/keys")],
                      secret_env={"REKEY_CLIENT_SECRET": tk.client_secret})
            servers.append(s)
            return s

        plain = Serve(RT, OUT / "passthrough.wasm", run, "passthrough", {"REKEY_UPSTREAM": tk.base}, caller=None)
        servers.append(plain)
        warm = proxy("warm", "on-auth-failure")
        refreshing = proxy("refreshing", "every-request")
        token = tk.admin("authorize")["access_token"]
        bearer = {"authorization": f"Bearer {token}"}
        rows = {"direct": [], "passthrough": [], "warm": [], "refreshing": []}
        for _ in range(20):  # warm-up: compiled code, connections, caches
            timed(tk.base, "/api/me", bearer), timed(plain.base, "/api/me", bearer)
            timed(warm.base, "/me", CALLER), timed(refreshing.base, "/me", CALLER)
        for i in range(N):  # interleaved, so drift hits all alike
            rows["direct"].append(timed(tk.base, "/api/me", bearer))
            rows["passthrough"].append(timed(plain.base, "/api/me", bearer))
            rows["warm"].append(timed(warm.base, "/me", CALLER))
            if i % 3 == 0:
                rows["refreshing"].append(timed(refreshing.base, "/me", CALLER))
        med = {k: statistics.median(v) for k, v in rows.items()}
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"wasmtime serve, loopback, {N} requests each (refreshing: {len(rows['refreshing'])}), medians; "
              f"load average {load} on {os.cpu_count()} CPUs:\n")
        print("| path | median | vs passthrough |")
        print("|---|---|---|")
        print(f"| upstream direct (Python client → testkit) | {med['direct']:.0f} µs | |")
        print(f"| passthrough.wasm (same forwarding, no rekey) | {med['passthrough']:.0f} µs | 1.00 |")
        print(f"| rekey-proxy-env.wasm, warm token | {med['warm']:.0f} µs | {med['warm'] / med['passthrough']:.2f} |")
        print(f"| rekey-proxy-env.wasm, refresh on every request | {med['refreshing']:.0f} µs | {med['refreshing'] / med['passthrough']:.2f} |")
        bodies(proxy("bodies", "on-auth-failure", upstream=echo.base), servers, echo)
    finally:
        for s in servers:
            s.stop()
        echo.close()
        tk.close()


def bodies(proxied, servers, echo):
    """An empty and a 1 MiB response from the same upstream (the harness's
    Echo, which checks no token), through the passthrough and the proxy
    (warm token). Each iteration times both back to back, in alternating
    order, so rekey's extra time is the median of the paired differences:
    the machine's drift cancels out of each pair."""
    plain = Serve(RT, OUT / "passthrough.wasm", OUT / "bench", "passthrough-bodies",
                  {"REKEY_UPSTREAM": echo.base}, caller=None)
    servers.append(plain)
    cases = {"empty": 0, "1 MiB": 1 << 20}
    times = {(case, via): [] for case in cases for via in ("passthrough", "proxy")}
    extras = {case: [] for case in cases}
    for i in range(N + 20):  # the first 20: warm-up
        for case, size in cases.items():
            pair = [("passthrough", plain), ("proxy", proxied)]
            t = {via: timed(server.base, f"/bytes/{size}", CALLER if via == "proxy" else None, size=size)
                 for via, server in pair[:: 1 - 2 * (i % 2)]}
            if i >= 20:
                for via in t:
                    times[(case, via)].append(t[via])
                extras[case].append(t["proxy"] - t["passthrough"])
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = {case: statistics.median(v) for case, v in extras.items()}
    print(f"\nResponse bodies, {N} requests each, medians; rekey's extra: the median of paired "
          "differences (proxy − passthrough, timed back to back):\n")
    print("| response body | passthrough.wasm | rekey-proxy-env.wasm, warm token | rekey's extra |")
    print("|---|---|---|---|")
    for case in cases:
        print(f"| {case} | {med[(case, 'passthrough')]:.0f} µs | {med[(case, 'proxy')]:.0f} µs | {extra[case]:.0f} µs |")
    print(f"\nextra(1 MiB) / extra(empty) = {extra['1 MiB'] / extra['empty']:.2f} (target ≤ 1.2)")


if __name__ == "__main__":
    main()
