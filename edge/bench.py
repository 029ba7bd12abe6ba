"""Per-request latency through rekey-proxy.wasm against the same `wasmtime
serve` forwarding without rekey (passthrough.wasm, the caller sending the
token itself), one run, medians. Never fails on timing. Run by bench.sh:

    edge/bench.sh          # builds, then prints a table
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))
from harness import Serve, Testkit, request  # noqa: E402

WASMTIME, OUT, TESTKIT = os.environ["WASMTIME"], Path(os.environ["OUT"]), os.environ["REKEY_TESTKIT"]
N = int(os.environ.get("EDGE_BENCH_N", "300"))


def timed(base, path, headers=None):
    t = time.perf_counter()
    status, _, _ = request(base, "GET", path, headers)
    elapsed = (time.perf_counter() - t) * 1e6
    assert status == 200, f"{path}: {status}"
    return elapsed


def main():
    run = OUT / "bench"
    run.mkdir(parents=True, exist_ok=True)
    tk = Testkit(TESTKIT, "--access-ttl-ms", "3600000")
    servers = []
    try:
        def proxy(name, strategy):
            d = run / name
            d.mkdir(exist_ok=True)
            (d / "default.json").write_text(json.dumps(tk.admin("authorize")))
            env = {"REKEY_TOKEN_URL": tk.token_url, "REKEY_CLIENT_ID": tk.client_id,
                   "REKEY_UPSTREAM": f"{tk.base}/api", "REKEY_STRATEGY": strategy}
            s = Serve(WASMTIME, OUT / "rekey-proxy.wasm", run, name, env=env, dirs=[(d, "/keys")],
                      secret_env={"REKEY_CLIENT_SECRET": tk.client_secret})
            servers.append(s)
            return s

        plain = Serve(WASMTIME, OUT / "passthrough.wasm", run, "passthrough", env={"REKEY_UPSTREAM": tk.base})
        servers.append(plain)
        warm = proxy("warm", "on-auth-failure")
        refreshing = proxy("refreshing", "every-request")
        token = tk.admin("authorize")["access_token"]
        bearer = {"authorization": f"Bearer {token}"}
        rows = {"direct": [], "passthrough": [], "warm": [], "refreshing": []}
        for _ in range(20):  # warm-up: compiled code, connections, caches
            timed(tk.base, "/api/me", bearer), timed(plain.base, "/api/me", bearer)
            timed(warm.base, "/me"), timed(refreshing.base, "/me")
        for i in range(N):  # interleaved, so drift hits all alike
            rows["direct"].append(timed(tk.base, "/api/me", bearer))
            rows["passthrough"].append(timed(plain.base, "/api/me", bearer))
            rows["warm"].append(timed(warm.base, "/me"))
            if i % 3 == 0:
                rows["refreshing"].append(timed(refreshing.base, "/me"))
        med = {k: statistics.median(v) for k, v in rows.items()}
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"wasmtime serve, loopback, {N} requests each (refreshing: {len(rows['refreshing'])}), medians; "
              f"load average {load} on {os.cpu_count()} CPUs:\n")
        print("| path | median | vs passthrough |")
        print("|---|---|---|")
        print(f"| upstream direct (Python client → testkit) | {med['direct']:.0f} µs | |")
        print(f"| passthrough.wasm (same forwarding, no rekey) | {med['passthrough']:.0f} µs | 1.00 |")
        print(f"| rekey-proxy.wasm, warm token | {med['warm']:.0f} µs | {med['warm'] / med['passthrough']:.2f} |")
        print(f"| rekey-proxy.wasm, refresh on every request | {med['refreshing']:.0f} µs | {med['refreshing'] / med['passthrough']:.2f} |")
    finally:
        for s in servers:
            s.stop()
        tk.close()


if __name__ == "__main__":
    main()
