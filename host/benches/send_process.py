#!/usr/bin/env python3
"""`rekey send` as a whole process against curl sending the same request.

Usage: python3 host/benches/send_process.py [--runs N]

Builds the release `rekey` and `rekey-testkit` binaries, starts the testkit's
loopback provider, stores a credential (SQLite, the CLI's default store, with
its compiled component cached), then times N pairs of whole processes:

    rekey --store S send bench URL
    curl -sS -o /dev/null -H "Authorization: Bearer TOKEN" URL

The order within each pair alternates, so drift on a busy machine falls on
both sides alike. Prints wall-clock min/median/max per side, the ratio of the
medians with its verdict against the target (<= 1.10), and each side's peak
RSS, measured in a separate pass under GNU time (`/usr/bin/time -f %M`: a
child forked straight from Python would report Python's own peak, which
Linux carries across exec). Never fails on timing: it exits non-zero only if
a request does not return 200.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TARGET = 1.10
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


GNU_TIME = "/usr/bin/time"
RSS_RUNS = 10


def run(argv, env=None):
    """Runs argv to its end; returns (wall seconds, stdout, stderr)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    return wall, proc.stdout, proc.stderr


def peak_rss_mib(argv, env):
    """Peak RSS of one run of argv, as GNU time reports it (MiB)."""
    _, _, err = run([GNU_TIME, "-f", "rss_kib=%M", *argv], env=env)
    line = [x for x in err.decode().splitlines() if x.startswith("rss_kib=")][-1]
    return int(line.split("=")[1]) / 1024


def summary(xs):
    return min(xs), statistics.median(xs), max(xs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    curl = shutil.which("curl")
    if not curl:
        sys.exit("curl is needed (Debian: apt-get install curl)")

    print("building release binaries…", file=sys.stderr)
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "rekey", "-p", "rekey-testkit"],
        cwd=ROOT,
        check=True,
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    rekey = os.path.join(target, "release", "rekey")
    testkit = os.path.join(target, "release", "rekey-testkit")

    work = tempfile.mkdtemp(prefix="rekey-send-bench-")
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"), RUST_LOG="off")
    # The access token must outlive the run; stdin held open keeps it serving.
    provider = subprocess.Popen(
        [testkit, "--access-ttl-ms", "3600000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        info = json.loads(provider.stdout.readline())
        request = urllib.request.Request(info["base_url"] + "/_testkit/authorize", method="POST")
        keys = json.loads(urllib.request.urlopen(request).read())
        keys_file = os.path.join(work, "keys.json")
        with open(keys_file, "w") as f:
            json.dump(keys, f)
        store = os.path.join(work, "rekey.db")
        api = info["api_url"] + "bench"
        run(
            [rekey, "--store", store, "credential", "add", "bench",
             "--token-url", info["token_url"], "--client-id", info["client_id"],
             "--api-origin", info["base_url"], "--keys", keys_file],
            env=env,
        )
        sides = {
            "rekey send": [rekey, "--store", store, "send", "bench", api],
            "curl": [curl, "-sS", "-f", "-o", "/dev/null", "-H",
                     "Authorization: Bearer " + keys["access_token"], api],
        }
        for argv in sides.values():  # warm up: the component cache, page cache
            for _ in range(3):
                run(argv, env=env)
        wall = {name: [] for name in sides}
        rss = {name: [] for name in sides}
        names = list(sides)
        for i in range(args.runs):
            for name in names if i % 2 == 0 else reversed(names):
                wall[name].append(run(sides[name], env=env)[0] * 1000)
        if os.access(GNU_TIME, os.X_OK):
            for _ in range(RSS_RUNS):
                for name in names:
                    rss[name].append(peak_rss_mib(sides[name], env))
    finally:
        provider.stdin.close()
        provider.wait()
        shutil.rmtree(work, ignore_errors=True)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"`rekey send` process vs curl: {args.runs} pairs, order alternating")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average after: {load}")
    print(f"curl: {subprocess.run([curl, '--version'], capture_output=True, text=True).stdout.split(chr(10))[0]}")
    print()
    print("| side        | wall min ms | wall median ms | wall max ms | peak RSS MiB, median (max) |")
    print("| ----------- | ----------- | -------------- | ----------- | -------------------------- |")
    for name in names:
        lo, mid, hi = summary(wall[name])
        peak = (
            f"{statistics.median(rss[name]):.1f} ({max(rss[name]):.1f})"
            if rss[name]
            else "n/a: no GNU time (apt-get install time)"
        )
        print(f"| {name:<11} | {lo:11.2f} | {mid:14.2f} | {hi:11.2f} | {peak:>26} |")
    ratio = statistics.median(wall["rekey send"]) / statistics.median(wall["curl"])
    verdict = "met" if ratio <= TARGET else f"missed by {ratio - TARGET:.2f}"
    print()
    print(f"rekey send / curl, median wall: {ratio:.2f} (target <= {TARGET:.2f}): {verdict}")


if __name__ == "__main__":
    main()
