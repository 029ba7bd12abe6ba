"""rekey-proxy.wasm under `wasmtime serve` against the test kit's provider:
real HTTP on loopback, nothing mocked. Run by edge/test.sh, which passes
WASMTIME, PROXY, COMPOSE and REKEY_TESTKIT in the environment. Verdicts
count what the provider saw; waits poll (no verdict depends on timing)."""

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import (  # noqa: E402
    CALLER_SECRET, OPERATOR_SECRET, UPSTREAM_KEEP_ALIVE, Echo, Runtime, Serve, Testkit, request, sha256_hex, wait_for,
)

# EDGE_RUNTIME=jco: JCO (jco's dist/jco.js) and JCO_SHIM; else WASMTIME.
RUNTIME = (Runtime("jco", os.environ["JCO"], os.environ["JCO_SHIM"]) if os.environ.get("EDGE_RUNTIME") == "jco"
           else Runtime("wasmtime", os.environ["WASMTIME"]))
PROXY = os.environ["PROXY"]
COMPOSE = os.environ["COMPOSE"]
TESTKIT = os.environ["REKEY_TESTKIT"]
RUN = Path(os.environ.get("EDGE_RUN_DIR", "target/edge/run")).resolve()

SECRETS = set()  # every token and secret seen: none may appear in server output
servers = []


def keys_dir(name, tk):
    """A fresh keys directory holding a new grant as `default.json`, the way
    0.2 stored it (the token set alone): every scenario migrates it."""
    d = RUN / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    grant = tk.admin("authorize")
    remember(grant)
    path = d / "default.json"
    path.write_text(json.dumps(grant))
    path.chmod(0o600)
    return d


def remember(keys):
    for field in ("access_token", "refresh_token", "id_token"):
        if keys.get(field):
            SECRETS.add(keys[field])


KEEP = 4  # generations the store keeps (edge/effects/src/fs_cas.rs)


def generations(d):
    """The record's generation files, `default@<G>.json`, oldest first."""
    found = [(int(m[1]), p) for p in d.iterdir() if (m := re.fullmatch(r"default@([1-9][0-9]*)\.json", p.name))]
    return [p for _, p in sorted(found)]


def record_file(d):
    """The newest generation; `default.json` (the single-file layout, or the 0.2
    keys file a scenario starts from) while there is none."""
    gens = generations(d)
    return gens[-1] if gens else d / "default.json"


def record(d):
    """The stored record; a 0.2 keys file reads as version 0."""
    data = json.loads(record_file(d).read_text())
    if "rekey_record" not in data:
        data = {"version": 0, "keys": data, "lease": None, "refresh_mark": None, "dead_grant": None}
    if data["keys"]:
        remember(data["keys"])
    return data


def stored(d):
    return record(d)["keys"]


def leftovers(d):
    """Files besides the newest `KEEP` generations (or, before the first
    write, `default.json`): temp files, older generations, the old layout's
    lock, 0.2's lease and marker."""
    kept = {p.name for p in generations(d)[-KEEP:]} or {"default.json"}
    return sorted(p.name for p in d.iterdir() if p.name not in kept)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return f"{h:016x}"


def settings(tk, upstream=None, **extra):
    return {
        "REKEY_TOKEN_URL": tk.token_url,
        "REKEY_CLIENT_ID": tk.client_id,
        "REKEY_UPSTREAM": upstream or f"{tk.base}/api",
        "REKEY_KEYS_DIR": "/keys",
        "REKEY_CALLER_SECRET_SHA256": sha256_hex(CALLER_SECRET),
        "REKEY_OPERATOR_SECRET_SHA256": sha256_hex(OPERATOR_SECRET),
        "REKEY_ALLOWED_HOSTS": "127.0.0.1",
        **extra,
    }


def serve(tk, d, name, upstream=None, env_only=False, **extra):
    """The proxy on `d`, configured through wasi:config/store (or, with
    `env_only`, through the environment alone); the client secret by name."""
    s = Serve(RUNTIME, PROXY, RUN, name, settings(tk, upstream, **extra), dirs=[(d, "/keys")],
              secret_env={"REKEY_CLIENT_SECRET": tk.client_secret}, env_only=env_only)
    servers.append(s)
    return s


def wait_expired(tk, d):
    """Polls until the provider refuses the stored access token."""
    token = stored(d)["access_token"]
    wait_for("the stored access token to expire", lambda: not tk.token_works(token), timeout=30)


def delta(before, after, field):
    return after[field] - before[field]


def imports_are_standard_wasi_only():
    """Both compositions import only wasi:*; rekey-proxy.wasm reads
    wasi:config/store, rekey-proxy-env.wasm (noconfig plugged in) does not."""
    out = Path(PROXY).parent
    listed = {}
    for name in ("rekey-proxy.wasm", "rekey-proxy-env.wasm"):
        names = subprocess.run([COMPOSE, "imports", str(out / name)], check=True, capture_output=True,
                               text=True).stdout.split()
        assert names, f"{name} lists no imports"
        foreign = [n for n in names if not n.startswith("wasi:")]
        assert not foreign, f"{name} imports non-WASI interfaces: {foreign}"
        assert "wasi:http/outgoing-handler@0.2.0" in names, names
        listed[name] = names
    assert "wasi:config/store@0.2.0-draft" in listed["rekey-proxy.wasm"], listed["rekey-proxy.wasm"]
    assert "wasi:config/store@0.2.0-draft" not in listed["rekey-proxy-env.wasm"], listed["rekey-proxy-env.wasm"]
    print(f"   rekey-proxy.wasm imports: {', '.join(listed['rekey-proxy.wasm'])}; "
          "rekey-proxy-env.wasm: the same less wasi:config/store")


def five_expiries(tk):
    d = keys_dir("expiries", tk)
    s = serve(tk, d, "expiries")
    before = tk.stats()
    log_start = len(tk.api_log())
    tokens = [stored(d)["access_token"]]
    requests = 0
    deadline = time.monotonic() + 90
    while len(tokens) < 6:  # the first token plus five refreshed ones
        assert time.monotonic() < deadline, f"only {len(tokens) - 1} refreshes in 90 s"
        status, _, body = s.request("GET", f"/orders?n={requests}")
        requests += 1
        assert status == 200, f"request {requests}: {status} {body[:200]!r}"
        now = stored(d)["access_token"]
        if now != tokens[-1]:
            tokens.append(now)
        time.sleep(0.2)
    after = tk.stats()
    refreshes = delta(before, after, "refreshes_granted")
    assert refreshes == len(tokens) - 1, f"{refreshes} refreshes for {len(tokens) - 1} new tokens"
    assert delta(before, after, "token_calls") == refreshes
    assert delta(before, after, "invalid_grant") == 0
    refusals = [e["refused"] for e in tk.api_log()[log_start:] if e["refused"]]
    assert all(r == "expired" for r in refusals), refusals
    assert len(refusals) == refreshes, f"{len(refusals)} rejections for {refreshes} refreshes"
    assert tk.live(stored(d)["refresh_token"]), "the stored refresh token is not the live one"
    rec = record(d)
    # Per refresh: take the lease, set the mark, store the keys.
    assert rec["version"] == 3 * refreshes, (rec["version"], refreshes)
    assert rec["lease"] is None and rec["refresh_mark"] is None and rec["dead_grant"] is None, rec
    assert generations(d), "no generation was written"
    modes = {p.name: f"{p.stat().st_mode & 0o777:o}" for p in generations(d)}
    assert set(modes.values()) == {"600"}, f"record files' modes: {modes}"
    assert leftovers(d) == [], leftovers(d)
    # Each write synced the directory after its link (a runtime that cannot
    # says so: "cannot be synced"; a sync that fails makes the write unknown).
    log = s.log.read_text()
    unsynced = [line for line in log.splitlines() if "cannot be synced" in line or "then syncing" in line]
    assert not unsynced, f"records linked without the directory synced: {unsynced[:2]}"
    s.stop()
    print(f"   {requests} requests, all 200; {refreshes} expiries, {refreshes} refreshes, invalid_grant 0; "
          f"record version {rec['version']}, mode 600; every link's directory sync answered ok")


def sixteen_at_an_expiry(tk, n_servers=1):
    """16 requests at once on an expired token, spread over `n_servers`
    servers sharing the directory: one token request in all."""
    name = "parallel" if n_servers == 1 else f"parallel-{n_servers}-servers"
    d = keys_dir(name, tk)
    ss = [serve(tk, d, f"{name}-{k}") for k in range(n_servers)]
    assert ss[0].request("GET", "/warm")[0] == 200
    wait_expired(tk, d)
    before = tk.stats()
    results = []
    barrier = threading.Barrier(16)

    def one(i):
        barrier.wait()
        results.append(ss[i % n_servers].request("POST", f"/items/{i}", {"content-type": "text/plain"}, f"item {i}".encode()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = tk.stats()
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * 16, statuses
    assert delta(before, after, "token_calls") == 1, delta(before, after, "token_calls")
    assert delta(before, after, "refreshes_granted") == 1, delta(before, after, "refreshes_granted")
    assert delta(before, after, "invalid_grant") == 0
    assert after["reused_refresh_tokens"] == 0
    assert tk.live(stored(d)["refresh_token"])
    rec = record(d)
    assert rec["lease"] is None and rec["refresh_mark"] is None, rec
    assert leftovers(d) == [], leftovers(d)
    for s in ss:
        s.stop()
    print(f"   16 parallel requests at an expiry on {n_servers} server(s): all 200, 1 token request, "
          "invalid_grant 0, no lease or mark left")


def stalled_writer_is_fenced(tk):
    """Issue #22. Server A's write is held between its version check and its
    commit (the effects' test hook, REKEY_TEST_HOLD_WRITES=1: the write that
    takes `default.hold` waits until `default.held` is gone); meanwhile
    server B refreshes. Released, the held write lands nowhere and ends in a
    conflict; B's record, with the rotated refresh token, stays."""
    d = keys_dir("stalled-writer", tk)
    a = serve(tk, d, "stalled-a", REKEY_TEST_HOLD_WRITES="1")
    b = serve(tk, d, "stalled-b")
    wait_expired(tk, d)
    before = tk.stats()
    (d / "default.hold").write_text("")
    held = {}
    thread = threading.Thread(target=lambda: held.update(answer=a.request("GET", "/held", timeout=120)))
    thread.start()
    wait_for("server A to hold its write", lambda: (d / "default.held").exists(), timeout=60)
    status, _, body = b.request("GET", "/meanwhile", timeout=120)
    assert status == 200, (status, body[:200])
    assert delta(before, tk.stats(), "refreshes_granted") == 1, "server B did not refresh"
    newer = record(d)
    newer_file = record_file(d), record_file(d).read_bytes()
    (d / "default.held").unlink()  # releases A's write
    thread.join(timeout=120)
    assert not thread.is_alive(), "server A's request did not end"
    assert (record_file(d), record_file(d).read_bytes()) == newer_file, (
        f"the held write landed over the newer record (version {newer['version']}): now version "
        f"{record(d)['version']}, dead_grant {record(d)['dead_grant']}")
    log = a.log.read_text()
    ended = re.findall(r"test hook: the held write ended: (\w+)", log)
    assert ended == ["conflict"], f"the held write ended: {ended}"
    after = tk.stats()
    assert delta(before, after, "refreshes_granted") == 1 and delta(before, after, "invalid_grant") == 0, after
    assert after["reused_refresh_tokens"] == 0, after
    assert tk.live(stored(d)["refresh_token"]), "the stored refresh token is not the live one"
    assert held["answer"][0] == 200, held["answer"][:1] + (held["answer"][2][:200],)
    assert leftovers(d) == [], leftovers(d)
    # The hook is in the shipped proxy: setting it is never silent.
    assert HOLD_WARNING in log, "REKEY_TEST_HOLD_WRITES=1 was set without a warning on stderr"
    assert HOLD_WARNING not in b.log.read_text(), "a server without the hook warned of it"
    a.stop()
    b.stop()
    print(f"   A's write held after its check; B refreshed meanwhile (record version {newer['version']}); "
          "released, A's write ended in a conflict and landed nowhere; both 200, 1 refresh, invalid_grant 0, "
          "the stored refresh token live")


HOLD_WARNING = "WARNING: REKEY_TEST_HOLD_WRITES=1"


def foreign_files_and_other_credentials(tk):
    """The review of #22 (F1): the store lists the keys directory on every
    read and write, and others change it meanwhile. Two credentials share the
    directory, each served with REKEY_STRATEGY=every-request (every request
    writes three generations of its record and removes old ones) by two
    threads at once; a thread creates and removes files named like another
    credential's generations and temp files all along (one cycle before the
    first request, until the last ends). Then a file whose name is not UTF-8
    joins them. A file that goes away while the directory is listed, or a
    name that is not text, is not the store's: every request is 200."""
    d = keys_dir("shared-directory", tk)
    grant = tk.admin("authorize")
    remember(grant)
    (d / "other.json").write_text(json.dumps(grant))
    (d / "other.json").chmod(0o600)
    servers_by = {"default": serve(tk, d, "shared-default", REKEY_STRATEGY="every-request"),
                  "other": serve(tk, d, "shared-other", REKEY_STRATEGY="every-request", REKEY_CREDENTIAL="other")}
    before = tk.stats()
    stop, cycled, cycles = threading.Event(), threading.Event(), [0]

    def churn():
        while True:
            i = cycles[0]
            for name in (f"churn@{i + 1}.json", f".churn@{i + 1}.{i:016x}.tmp"):
                f = os.open(d / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(f)
                os.unlink(d / name)
            cycles[0] = i + 1
            cycled.set()
            if stop.is_set():
                return

    churner = threading.Thread(target=churn)
    churner.start()
    cycled.wait()
    answers = {"default": [], "other": []}
    each = 40

    def requests(who, k):
        for i in range(each):
            status, _, body = servers_by[who].request("GET", f"/shared/{who}/{k}/{i}")
            answers[who].append((status, body[:200]))

    threads = [threading.Thread(target=requests, args=(who, k)) for who in answers for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    churner.join()
    # A name that is not UTF-8 (wasi:filesystem's names are strings).
    odd = os.path.join(os.fsencode(d), b"backup-\xff.json")
    fd = os.open(odd, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"{}")
    os.close(fd)
    beside_odd = {who: s.request("GET", f"/beside-a-non-utf-8-name/{who}") for who, s in servers_by.items()}
    after = tk.stats()
    failed = {who: [a for a in got if a[0] != 200] for who, got in answers.items()}
    odd_failed = {who: (a[0], a[2][:200]) for who, a in beside_odd.items() if a[0] != 200}
    assert not any(failed.values()) and not odd_failed, (
        "; ".join(f"{who}: {len(f)} of {len(answers[who])} requests failed while others changed the directory"
                  + (f", e.g. {sorted(set(f))[:2]}" if f else "") for who, f in failed.items())
        + f"; beside a non-UTF-8 name: {odd_failed or 'all 200'}")
    assert all(len(got) == 2 * each for got in answers.values())
    refreshes = delta(before, after, "refreshes_granted")
    assert delta(before, after, "invalid_grant") == 0 and after["reused_refresh_tokens"] == 0, after
    assert 2 <= refreshes <= 4 * each + 2, refreshes
    records = {"default": record(d)}
    gens = sorted((int(m[1]), p) for p in d.iterdir() if (m := re.fullmatch(r"other@([1-9][0-9]*)\.json", p.name)))
    records["other"] = json.loads(gens[-1][1].read_text())
    for who, rec in records.items():
        remember(rec["keys"])
        assert tk.live(rec["keys"]["refresh_token"]), f"{who}: the stored refresh token is not the live one"
        assert rec["lease"] is None and rec["refresh_mark"] is None, (who, rec)
    # Each refresh writes three versions (lease, mark, keys); nothing else was written.
    versions = sum(rec["version"] for rec in records.values())
    assert versions == 3 * refreshes, f"record versions {versions} for {refreshes} refreshes"
    names = sorted(os.listdir(os.fsencode(d)))
    kept = [os.fsencode(p.name) for p in generations(d)[-KEEP:]] + [os.fsencode(p.name) for _, p in gens[-KEEP:]]
    assert names == sorted([os.path.basename(odd), *kept]), names
    for s in servers_by.values():
        s.stop()
    print(f"   2 credentials in one directory, every-request, 2 threads each: {4 * each} requests, all 200, while "
          f"{cycles[0]} cycles of another's files were created and removed; then beside a non-UTF-8 name: 200 "
          f"each; {refreshes} refreshes, record versions 3 per refresh, invalid_grant 0")


def a_fifo_is_never_opened(tk):
    """The review of #22 (F5): a FIFO named like the newest generation would
    block the open that reads it (wasi:filesystem 0.2 opens cannot be
    non-blocking): the store looks at what a name is before opening it, so
    the request is 503 store_unavailable, nothing is sent, and once the FIFO
    is gone the next request is served on the same grant."""
    d = keys_dir("fifo", tk)
    s = serve(tk, d, "fifo")
    fifo = d / "default@1.json"  # the directory holds default.json (generation 0) only
    os.mkfifo(fifo, 0o600)
    before, api_seen = tk.stats(), len(tk.api_log())
    try:
        status, _, body = s.request("GET", "/fifo", timeout=30)
    except TimeoutError:
        raise AssertionError("the request on a FIFO named like the newest generation hung (30 s)") from None
    finally:
        fifo.unlink()
    assert status == 503 and answer_of(body)["error"] == "store_unavailable", (status, body)
    nothing_left(tk, None, before, api_seen)
    assert "is not a regular file" in s.log.read_text(), "the log does not say why"
    status, _, body = s.request("GET", "/after")
    assert status == 200, (status, body[:200])
    after = tk.stats()
    assert delta(before, after, "invalid_grant") == 0 and tk.live(stored(d)["refresh_token"]), after
    s.stop()
    print("   a FIFO named default@1.json: 503 store_unavailable, nothing sent; removed: the next request 200 "
          "on the same grant")


def sigkill_and_restart(tk):
    d = keys_dir("sigkill", tk)
    s = serve(tk, d, "sigkill-1")
    first = stored(d)["refresh_token"]
    wait_expired(tk, d)
    assert s.request("GET", "/before-kill")[0] == 200
    rotated = stored(d)
    assert rotated["refresh_token"] != first, "no refresh happened before the kill"
    saved = record_file(d), record_file(d).read_bytes()
    s.kill()
    assert (record_file(d), record_file(d).read_bytes()) == saved, "the keys changed across SIGKILL"
    # What a writer killed inside an update leaves: its temp file (here
    # older than the hour after which it counts as left behind); and a
    # server of the single-file layout killed mid-write, its lock.
    newest = int(re.fullmatch(r"default@(\d+)\.json", record_file(d).name)[1])
    planted = [d / f".default@{newest + 1}.00000000deadbeef.tmp", d / "default.lock"]
    for p in planted:
        p.write_text("{}")
        p.chmod(0o600)
        os.utime(p, (time.time() - 3700, time.time() - 3700))
    assert leftovers(d) == sorted(p.name for p in planted), leftovers(d)
    s2 = serve(tk, d, "sigkill-2")
    before = tk.stats()
    wait_expired(tk, d)
    status, _, body = s2.request("GET", "/after-restart")
    assert status == 200, f"{status} {body[:200]!r}"
    after = tk.stats()
    assert delta(before, after, "refreshes_granted") == 1 and delta(before, after, "invalid_grant") == 0
    assert tk.live(stored(d)["refresh_token"])
    assert leftovers(d) == [], leftovers(d)
    s2.stop()
    print("   SIGKILL + restart: rotated keys survived; the next refresh succeeded and removed what a killed "
          "writer leaves (a temp file, the single-file layout's lock)")


def killed_mid_refresh_is_in_doubt(tk):
    d = keys_dir("in-doubt", tk)
    s = serve(tk, d, "in-doubt-1", REKEY_LEASE_TTL_MS="3000")
    wait_expired(tk, d)
    kept = stored(d)
    tk.admin("lose-answers", [{"hang_ms": 60000}])
    before = tk.stats()
    hung = threading.Thread(target=lambda: request_quiet(s, "/hangs"), daemon=True)
    hung.start()
    wait_for("the refresh to be granted", lambda: delta(before, tk.stats(), "refreshes_granted") == 1)
    assert record(d)["refresh_mark"], "no refresh mark while a token request was out"
    s.kill()
    s2 = serve(tk, d, "in-doubt-2", REKEY_LEASE_TTL_MS="3000")
    mid = tk.stats()
    status, _, body = s2.request("GET", "/after-crash")
    answer = json.loads(body)
    assert status == 502 and answer["error"] == "refresh_in_doubt", (status, answer)
    after = tk.stats()
    assert delta(mid, after, "token_calls") == 0, "the successor spent the refresh token again"
    assert after["reused_refresh_tokens"] == 0 and delta(before, after, "invalid_grant") == 0
    assert stored(d) == kept and record(d)["refresh_mark"], "the keys or the mark changed"
    s2.stop()
    print("   killed mid-refresh: successor waited out the lease, answered 502 refresh_in_doubt, spent nothing")


def request_quiet(s, path):
    try:
        s.request("GET", path, timeout=90)
    except Exception:
        pass


def callers_authorization_never_reaches_upstream(tk):
    echo = Echo()
    d = keys_dir("authorization", tk)
    s = serve(tk, d, "authorization", upstream=echo.base + "/base", REKEY_FORWARD_HEADERS="x-custom")
    caller_token = CALLER_SECRET
    status, headers, body = s.request(
        "PUT", "/v1/things?a=1&b=two", {"x-custom": "kept", "content-type": "application/json"}, b'{"n":1}',
    )
    assert status == 200 and json.loads(body) == {"echo": True}, (status, body)
    assert dict((k.lower(), v) for k, v in headers).get("x-upstream") == "echo"
    seen = echo.seen[-1]
    auth = [v for k, v in seen["headers"] if k == "authorization"]
    assert auth == [f"Bearer {stored(d)['access_token']}"], "upstream did not get exactly the stored token"
    assert caller_token not in json.dumps(seen), "the caller's Authorization reached the upstream"
    assert seen["method"] == "PUT" and seen["path"] == "/base/v1/things?a=1&b=two", seen
    assert ["x-custom", "kept"] in seen["headers"] and seen["body"] == '{"n":1}', seen
    s.stop()
    echo.close()
    print("   the caller's Authorization is dropped; method, path, query, headers, body forwarded")


def one_mib_bodies_through_a_refresh(tk):
    """A 1 MiB request body goes up and a 1 MiB response comes back byte for
    byte; the upstream refuses the stored token first, so the same request
    body is sent twice, around one real refresh (bodies are handles: the
    rekey component holds neither)."""
    echo = Echo()
    d = keys_dir("big-bodies", tk)
    s = serve(tk, d, "big-bodies", upstream=echo.base)
    payload = os.urandom(1 << 20)  # random: no luck in matching, no compression
    old = stored(d)["access_token"]
    echo.reject.add(old)
    before = tk.stats()
    status, _, body = s.request("POST", "/v1/mirror", {"content-type": "application/octet-stream"}, payload)
    assert status == 200, (status, body[:200])
    assert body == payload, f"the response is not the request body ({len(body)} bytes came back)"
    assert delta(before, tk.stats(), "refreshes_granted") == 1, "the rejected token was not refreshed once"
    new = stored(d)["access_token"]
    tries = echo.seen[-2:]

    def bearer(seen):
        return [v for k, v in seen["headers"] if k == "authorization"]

    assert [bearer(t) for t in tries] == [[f"Bearer {old}"], [f"Bearer {new}"]], "not one try per token"
    for t in tries:
        assert t["body"].encode("latin-1") == payload, "a try did not carry the whole request body"
    # And once more with the refreshed token, no refresh: the same bytes back.
    status, _, body = s.request("POST", "/v1/mirror", {}, payload)
    assert status == 200 and body == payload, (status, len(body))
    assert delta(before, tk.stats(), "refreshes_granted") == 1
    s.stop()
    echo.close()
    print("   1 MiB up and back byte for byte, twice around one refresh (401, refresh, same body again), then once more")


def migrated_refresh_in_doubt(tk):
    """A 0.2 directory whose `.inflight` marker names the stored keys: the
    refresh 0.2 began is still in doubt, and nothing spends the token."""
    d = keys_dir("migrated-in-doubt", tk)
    keys_bytes = (d / "default.json").read_bytes()
    (d / "default.inflight").write_text(fnv1a64(keys_bytes))
    wait_expired(tk, d)
    s = serve(tk, d, "migrated-in-doubt")
    before = tk.stats()
    status, _, body = s.request("GET", "/after-upgrade")
    answer = json.loads(body)
    assert status == 502 and answer["error"] == "refresh_in_doubt", (status, answer)
    assert delta(before, tk.stats(), "token_calls") == 0, "a refresh in doubt was spent again"
    assert (d / "default.json").read_bytes() == keys_bytes
    s.stop()
    print("   a 0.2 refresh in doubt stays in doubt: 502 refresh_in_doubt, no token request")


def unreadable_record_is_503(tk):
    """A record that cannot be read (here a directory in its place) is
    `store-unavailable`: 503, nothing sent anywhere."""
    d = RUN / "unreadable"
    shutil.rmtree(d, ignore_errors=True)
    (d / "default.json").mkdir(parents=True)
    s = serve(tk, d, "unreadable")
    before, api_seen = tk.stats(), len(tk.api_log())
    status, _, body = s.request("GET", "/any")
    answer = json.loads(body)
    assert status == 503 and answer["error"] == "store_unavailable", (status, answer)
    assert delta(before, tk.stats(), "token_calls") == 0 and len(tk.api_log()) == api_seen
    s.stop()
    print("   unreadable record: 503 store_unavailable, no request sent")


def client_credentials_without_keys(tk):
    """The client's own grant (REKEY_GRANT=client-credentials): an empty keys
    directory; the first request fetches a token, the next reuse it."""
    d = RUN / "client-credentials"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    s = serve(tk, d, "client-credentials", REKEY_GRANT="client-credentials")
    before = tk.stats()
    for i in range(3):
        status, _, body = s.request("GET", f"/m2m/{i}")
        assert status == 200, (status, body)
    after = tk.stats()
    assert delta(before, after, "client_credentials_granted") == 1, after
    assert delta(before, after, "refreshes_granted") == 0, after
    keys = stored(d)
    assert keys["access_token"] and "refresh_token" not in keys, sorted(keys)
    assert record(d)["refresh_mark"] is None and record(d)["lease"] is None
    s.stop()
    print("   client credentials: no keys stored, 1 token fetched for 3 requests, no refresh token")


def silent_provider():
    """A provider that never says how long a token lives (Salesforce, GitHub,
    Slack) and ends sessions at its own time: every request succeeds across
    three session ends, one refresh each; a path that always answers 401
    costs one refresh and never blocks the next session end's refresh."""
    silent = Testkit(TESTKIT, "--no-expires-in")
    try:
        d = keys_dir("silent-provider", silent)
        s = serve(silent, d, "silent-provider")
        ok = 0
        for call in range(10):
            if call % 3 == 1:
                silent.admin("expire-access-tokens")  # the session ends
            ok += s.request("GET", f"/me/{call}")[0] == 200
        assert ok == 10, f"{ok} of 10 requests answered 200"
        assert silent.stats()["token_calls"] == 3, silent.stats()
        for i in range(3):
            status, _, body = s.request("GET", "/reject")
            assert status == 401, (status, body)  # the upstream's own answer, passed through
        assert silent.stats()["token_calls"] == 4, "more than one refresh for the always-401 path"
        silent.admin("expire-access-tokens")
        assert s.request("GET", "/me/after")[0] == 200
        stats = silent.stats()
        assert (stats["token_calls"], stats["invalid_grant"]) == (5, 0), stats
        assert "expires_at" not in stored(d), "a lifetime was invented"
        remember(stored(d))
        s.stop()
    finally:
        silent.close()
    print("   no expires_in: 10 of 10 requests over 3 session ends, 3 refreshes; an always-401 path: 1 refresh")


def revoked_grant_costs_one_token_request(tk):
    d = keys_dir("revoked", tk)
    s = serve(tk, d, "revoked")
    assert s.request("GET", "/ok")[0] == 200
    kept = stored(d)
    tk.admin("revoke-all")
    before = tk.stats()
    status, headers, body = s.request("GET", "/after-revoke")
    answer = json.loads(body)
    assert status == 401, (status, body)
    assert answer["error"] == "reauthorization_required" and answer["oauth_error"] == "invalid_grant", answer
    assert dict((k.lower(), v) for k, v in headers)["content-type"] == "application/json"
    assert delta(before, tk.stats(), "token_calls") == 1
    assert record(d)["dead_grant"]["code"] == "invalid_grant", record(d)
    api_seen = len(tk.api_log())
    for i in range(2):  # fail fast: no token request, no API request
        status, _, body = s.request("GET", f"/again/{i}")
        assert status == 401 and json.loads(body)["error"] == "reauthorization_required", (status, body)
    after = tk.stats()
    assert delta(before, after, "token_calls") == 1, delta(before, after, "token_calls")
    assert delta(before, after, "invalid_grant") == 1, delta(before, after, "invalid_grant")
    assert len(tk.api_log()) == api_seen, "a request went out for a dead grant"
    assert stored(d) == kept, "the keys changed after invalid_grant"
    s.stop()
    print("   revoked grant: 3 requests, 1 token request, 1 invalid_grant at the provider; keys unchanged")


def answer_of(body):
    return json.loads(body) if body else {}


def nothing_left(tk, echo, before, api_seen=None):
    """Nothing reached the upstream or the token endpoint since `before`."""
    assert echo is None or echo.seen == [], f"the upstream received {len(echo.seen)} request(s)"
    assert delta(before, tk.stats(), "token_calls") == 0, "a token request was sent"
    if api_seen is not None:
        assert len(tk.api_log()) == api_seen, "an API request reached the provider"


def callers_without_the_secret_get_401(tk):
    echo = Echo()
    d = keys_dir("caller-secret", tk)
    s = serve(tk, d, "caller-secret", upstream=echo.base)
    wait_expired(tk, d)  # a request that touched the credential would refresh it
    kept = record_file(d), record_file(d).read_bytes()
    before = tk.stats()
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {CALLER_SECRET}"},
                    {"authorization": f"Bearer {OPERATOR_SECRET}"}, {"authorization": f"Bearer {CALLER_SECRET}x"},
                    {"authorization": f"Bearer {CALLER_SECRET[:-1]}"}):
        status, hdrs, body = request(s.base, "GET", "/v1/me", headers)
        assert status == 401 and answer_of(body)["error"] == "caller_unauthenticated", (headers, status, body)
        assert dict((k.lower(), v) for k, v in hdrs)["www-authenticate"].startswith("Bearer "), hdrs
    nothing_left(tk, echo, before)
    assert (record_file(d), record_file(d).read_bytes()) == kept, "the record changed for an unauthenticated caller"
    status, _, body = s.request("GET", "/v1/me")
    assert status == 200, (status, body)
    auth = [v for k, v in echo.seen[-1]["headers"] if k == "authorization"]
    assert auth == [f"Bearer {stored(d)['access_token']}"], auth
    assert CALLER_SECRET not in json.dumps(echo.seen), "the caller secret went upstream"
    s.stop()
    echo.close()
    print("   6 requests without the caller secret (none, wrong, Basic, the operator's, longer, shorter): "
          "401 each, nothing sent, record untouched; with it: 200, the upstream saw the stored token only")


def wrong_host_is_refused(tk):
    echo = Echo()
    d = keys_dir("host", tk)
    s = serve(tk, d, "host", upstream=echo.base, REKEY_ALLOWED_HOSTS="127.0.0.1,[::1]")
    before = tk.stats()
    refused = ("evil.example", "127.0.0.1.evil.example", "localhost", "127.0.0.2", "[::1]evil.example", "[::1]:x",
               "127.0.0.1:x")
    for host in refused:
        status, _, body = request(s.base, "GET", "/v1/me", {"host": host, "authorization": f"Bearer {CALLER_SECRET}"})
        assert status == 421 and answer_of(body)["error"] == "host_not_allowed", (host, status, body)
    nothing_left(tk, echo, before)
    assert s.request("GET", "/v1/me")[0] == 200  # Host 127.0.0.1:<port>, configured as 127.0.0.1
    assert s.request("GET", "/v1/me", {"host": "[::1]:8080"})[0] == 200
    s.stop()
    echo.close()
    print(f"   {len(refused)} Hosts not configured (a rebinding name, a suffix, localhost, 127.0.0.2, text after an "
          "IPv6 literal or a port): 421, nothing sent")


CALLER_CREDENTIALS = {"cookie": "session=c00k1e", "x-api-key": "k-3a3a", "api-key": "k-4b4b",
                      "proxy-authorization": "Basic eDp5", "forwarded": "for=198.51.100.7",
                      "x-forwarded-for": "198.51.100.7", "x-forwarded-host": "evil.example", "x-real-ip": "198.51.100.7"}


def header_hygiene(tk):
    echo = Echo()
    d = keys_dir("headers", tk)
    s = serve(tk, d, "headers", upstream=echo.base, REKEY_FORWARD_HEADERS="x-listed-hop")
    sent = {**CALLER_CREDENTIALS, "connection": "x-drop-me, x-listed-hop", "x-drop-me": "1", "x-listed-hop": "1",
            "keep-alive": "timeout=5", "te": "trailers", "x-not-listed": "1", "accept": "application/json",
            "user-agent": "edge-scenario"}
    status, headers, body = s.request("GET", "/v1/hop", sent)
    assert status == 200, (status, body)
    seen = {k for k, _ in echo.seen[-1]["headers"]}
    arrived = sorted(seen & (set(CALLER_CREDENTIALS) | {"x-drop-me", "keep-alive", "te", "x-not-listed"}))
    assert not arrived, f"reached the upstream: {arrived}"
    assert {"accept", "user-agent"} <= seen, seen
    # Both runtimes remove the caller's `Connection` before the component
    # sees it, so a header it names goes upstream when it is allow-listed
    # (README, "Not guaranteed"); the allow-list is what keeps the rest out.
    assert "x-listed-hop" in seen, "the runtime now shows Connection to the component: update the README"
    values = json.dumps(echo.seen)
    assert not [v for v in CALLER_CREDENTIALS.values() if v in values], "a caller credential's value went upstream"
    back = {k.lower(): v for k, v in headers}
    # The runtime's own server may add a keep-alive of its own (jco's Node server does).
    assert back.get("keep-alive") != UPSTREAM_KEEP_ALIVE and back.get("x-end-to-end") == "kept", back
    # wasmtime serve 49 removes the upstream's `Connection` before the
    # component sees the response, and keeps the headers it names: the proxy
    # cannot know them (README, "Not guaranteed"). jco passes it on.
    if RUNTIME.name == "wasmtime":
        back_named = "x-hop-secret" in back
    else:
        assert "x-hop-secret" not in back, f"a Connection-named header came back: {sorted(back)}"
        back_named = False
    s.stop()
    echo.close()
    print(f"   {len(CALLER_CREDENTIALS)} caller credential/forwarding headers, a Connection-named one, keep-alive, "
          "te, an unlisted one: none upstream; a Connection-named one allow-listed: upstream (the runtime hides the "
          "caller's Connection); keep-alive not returned; the upstream's Connection-named header: "
          f"{'returned (the runtime hides Connection)' if back_named else 'not returned'}; accept, user-agent, "
          "x-end-to-end passed")


def paths_and_methods(tk):
    echo = Echo()
    d = keys_dir("paths", tk)
    s = serve(tk, d, "paths", upstream=echo.base + "/base", REKEY_ALLOWED_PATHS="/v1,/status",
              REKEY_ALLOWED_METHODS="GET,POST")
    before = tk.stats()
    climbing = ["/v1/../admin", "/../base2/x", "/v1/%2e%2e/admin", "/v1/%2E%2E/admin", "/v1/.%2e/admin",
                "/v1/a%2fb", "/v1/a%5cb", "/v1/./x", "/v1/.."]
    # What some upstream reads as a dot segment: a path parameter (Tomcat,
    # Jetty, Spring: `..;`), double encoding, a decoded `?`/`#` or trailing
    # space, overlong UTF-8 or full-width dots, IIS's `%u`, broken escapes.
    climbing += ["/v1/..;/admin", "/v1/.;/x", "/v1/%2e%2e;x/admin", "/v1/%252e%252e/admin", "/v1/a%252fb",
                 "/v1/..%3f/x", "/v1/..%23", "/v1/..%20/x", "/v1/%c0%ae%c0%ae/admin", "/v1/%ef%bc%8e%ef%bc%8e/admin",
                 "/v1/%u002e%u002e/admin", "/v1/x%zz", "/v1/...", "/v1/%0d%0ax"]
    for path in climbing:
        status, _, body = s.request("GET", path)
        assert status == 400 and answer_of(body)["error"] == "bad_path", (path, status, body)
    for path in ("/admin", "/v1x", "/", "/status2"):
        status, _, body = s.request("GET", path)
        assert status == 403 and answer_of(body)["error"] == "path_not_allowed", (path, status, body)
    for method in ("TRACE", "PUT", "DELETE", "PROPFIND"):
        status, hdrs, body = s.request(method, "/v1/x")
        assert status == 405 and answer_of(body)["error"] == "method_not_allowed", (method, status, body)
        assert dict((k.lower(), v) for k, v in hdrs)["allow"] == "GET, POST"
    # CONNECT: 405 when it reaches the proxy; a runtime may refuse it first
    # (jco's Node server closes the connection).
    connect = []
    for target in ("/v1/x", "127.0.0.1:443"):
        try:
            connect.append(request(s.base, "CONNECT", target, {"authorization": f"Bearer {CALLER_SECRET}"})[0])
        except (ConnectionError, http.client.HTTPException):
            connect.append("closed")
    assert all(c in (400, 405, "closed") for c in connect), connect
    nothing_left(tk, echo, before)
    status, _, _ = s.request("GET", "/v1/ok?next=/../admin")
    assert status == 200 and echo.seen[-1]["path"] == "/base/v1/ok?next=/../admin", echo.seen[-1]
    # Names that only look like the refused ones still pass, as sent.
    for path in ("/v1/a;b", "/v1/.well-known", "/v1/b.", "/v1/100%25", "/v1/caf%C3%A9", "/v1/a..b"):
        status, _, body = s.request("GET", path)
        assert status == 200 and echo.seen[-1]["path"] == "/base" + path, (path, status, body)
    s.stop()
    echo.close()
    print(f"   {len(climbing)} climbing or encoded paths: 400; 4 outside /v1,/status: 403; TRACE, PUT, DELETE, "
          f"PROPFIND: 405; CONNECT: {connect}; nothing sent; a query holding /../ and 6 look-alike names pass")


def keys_directory_is_checked(tk):
    d = keys_dir("keys-mode", tk)
    refusals = []
    for dir_mode, file_mode in ((0o777, 0o600), (0o720, 0o600), (0o700, 0o644)):
        d.chmod(dir_mode)
        (d / "default.json").chmod(file_mode)
        try:
            serve(tk, d, f"keys-mode-{dir_mode:o}-{file_mode:o}")
        except AssertionError as e:
            assert "edge/serve.sh" in str(e) and ("writable" in str(e) or "chmod 600" in str(e)), e
            refusals.append(f"{dir_mode:o}/{file_mode:o}")
        else:
            raise AssertionError(f"served a keys directory {dir_mode:o} with a record {file_mode:o}")
    d.chmod(0o700)
    (d / "default.json").chmod(0o600)
    s = serve(tk, d, "keys-mode")  # under this process's umask 022
    wait_expired(tk, d)
    assert s.request("GET", "/refresh")[0] == 200
    assert record(d)["version"] > 0 and generations(d), "the record was not rewritten"
    mode = record_file(d).stat().st_mode & 0o777
    assert mode == 0o600, f"the rewritten record has mode {mode:o}"
    s.stop()
    print(f"   refused (dir/record modes): {', '.join(refusals)}; served at 700/600 under umask 022: "
          f"the rewritten record is {mode:o}")


def in_doubt_recovery(tk):
    """A mark left by a worker that died before its token request left (the
    provider never saw it): 502 with the evidence; the operator checks the
    refresh token with the provider, clears the mark; the next request
    refreshes once."""
    d = keys_dir("recovery", tk)
    grant = stored(d)
    at = int(time.time() * 1000) - 60_000
    (d / "default.json").write_text(json.dumps({
        "rekey_record": 1, "version": 7, "updated_at": at // 1000, "lease": None,
        "refresh_mark": {"holder": "crashed-worker", "at_ms": at}, "dead_grant": None, "keys": grant}))
    wait_expired(tk, d)
    s = serve(tk, d, "recovery", REKEY_CONNECT_TIMEOUT_MS="2000", REKEY_FIRST_BYTE_TIMEOUT_MS="5000",
              REKEY_BETWEEN_BYTES_TIMEOUT_MS="5000")
    before = tk.stats()
    status, _, body = s.request("GET", "/v1/me")  # the API refuses the expired token; no refresh may follow
    api_seen = len(tk.api_log())
    answer = answer_of(body)
    assert status == 502 and answer["error"] == "refresh_in_doubt", (status, answer)
    assert answer["record"]["refresh_mark"] == {"holder": "crashed-worker", "at_ms": at}, answer
    assert answer["record"]["lease"] is None and re.search(r"began 6\d s ago", answer["detail"]), answer
    op = {"authorization": f"Bearer {OPERATOR_SECRET}"}
    clear = f"/_rekey/clear-refresh-mark?at_ms={at}"
    for who in ({}, {"authorization": f"Bearer {CALLER_SECRET}"}):
        status, _, body = request(s.base, "POST", clear, who)
        assert status == 401, ("the operator path without the operator secret", who, status, body)
    status, _, body = request(s.base, "GET", "/_rekey/record", op)
    assert status == 200 and json.loads(body)["refresh_mark"]["at_ms"] == at, (status, body)
    assert grant["access_token"] not in body.decode() and grant["refresh_token"] not in body.decode()
    # A mark younger than a token request's timeouts (connect + first byte +
    # between bytes: 12 s here): its request may still be running, lease or
    # not (the lease can lapse first), so it is not cleared yet.
    kept = (d / "default.json").read_text()
    now = int(time.time() * 1000)
    for mark_at, lease in ((now - 5_000, None), (at, {"holder": "crashed-worker", "until_ms": now - 1_000})):
        planted = json.loads(kept)
        planted.update(refresh_mark={"holder": "crashed-worker", "at_ms": mark_at}, lease=lease)
        (d / "default.json").write_text(json.dumps(planted))
        status, _, body = request(s.base, "POST", f"/_rekey/clear-refresh-mark?at_ms={mark_at}", op)
        assert status == 409 and answer_of(body)["error"] == "refresh_may_be_live", (lease, status, body)
        assert record(d)["refresh_mark"], "a mark was cleared while its request could be running"
    (d / "default.json").write_text(kept)
    status, _, body = request(s.base, "POST", f"/_rekey/clear-refresh-mark?at_ms={at + 1}", op)
    assert status == 409 and answer_of(body)["error"] == "other_refresh_mark", (status, body)
    assert record(d)["refresh_mark"], "a wrong mark was cleared"
    nothing_left(tk, None, before, api_seen)
    assert tk.live(grant["refresh_token"]), "the provider says the refresh token was spent"  # the operator's check
    status, _, body = request(s.base, "POST", clear, op)
    assert status == 200 and json.loads(body) == {"cleared": True, "version": 8}, (status, body)
    rec = record(d)
    assert rec["refresh_mark"] is None and rec["keys"] == grant, rec
    status, _, body = request(s.base, "POST", clear, op)
    assert status == 409 and answer_of(body)["error"] == "no_refresh_mark", (status, body)
    status, _, body = s.request("GET", "/v1/me")
    assert status == 200, (status, body)
    after = tk.stats()
    assert delta(before, after, "refreshes_granted") == 1 and delta(before, after, "invalid_grant") == 0, after
    s.stop()
    print("   502 refresh_in_doubt with the mark (holder, at_ms) and the detail; operator path: 401 without "
          "its secret, 409 for another mark, 409 while a token request could still run (a 5 s old mark; a lease "
          "lapsed 1 s ago); cleared "
          "after the provider's check; next request: 200, 1 refresh")


def keepalive_from_the_operator(tk):
    """`POST /_rekey/keepalive`: the operator's cron exercises a refresh
    token that would die from disuse; one refresh however many instances are
    asked at once, no API request; callers cannot reach it."""
    d = keys_dir("keepalive", tk)  # imported: when it was obtained is unknown
    ss = [serve(tk, d, f"keepalive-{k}") for k in range(2)]
    op = {"authorization": f"Bearer {OPERATOR_SECRET}"}
    path = "/_rekey/keepalive?older_than_secs=86400"
    before = tk.stats()
    api_seen = len(tk.api_log())
    status, _, body = request(ss[0].base, "POST", path, {"authorization": f"Bearer {CALLER_SECRET}"})
    assert status == 401, ("a caller reached the operator path", status, body)
    status, _, body = request(ss[0].base, "POST", "/_rekey/keepalive", op)
    assert status == 400 and answer_of(body)["error"] == "bad_request", (status, body)
    assert delta(before, tk.stats(), "token_calls") == 0
    answers = []
    barrier = threading.Barrier(8)

    def one(i):
        barrier.wait()
        answers.append(request(ss[i % 2].base, "POST", path, op))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(json.loads(b)["outcome"] if st == 200 else f"{st} {b[:120]!r}" for st, _, b in answers)
    assert outcomes == ["fresh"] * 7 + ["refreshed"], outcomes
    after = tk.stats()
    assert delta(before, after, "refreshes_granted") == 1 and delta(before, after, "token_calls") == 1, after
    assert delta(before, after, "invalid_grant") == 0 and after["reused_refresh_tokens"] == 0, after
    assert len(tk.api_log()) == api_seen, "keepalive sent an API request"
    keys = stored(d)
    remember(keys)
    assert tk.live(keys["refresh_token"]) and isinstance(keys.get("rekey_refreshed_at"), int), sorted(keys)
    status, _, body = request(ss[1].base, "POST", path, op)
    assert (status, json.loads(body)) == (200, {"outcome": "fresh"}), (status, body)
    assert delta(before, tk.stats(), "token_calls") == 1, "a young set was refreshed again"
    for s in ss:
        s.stop()
    print("   keepalive: callers 401, no age 400; 8 operator calls at once on 2 servers: 1 refreshed, 7 fresh, "
          "1 token request, 0 API requests, the rotated refresh token live; then fresh")


def localhost_is_not_loopback(tk):
    d = keys_dir("localhost", tk)
    port = tk.base.rsplit(":", 1)[1]
    before, api_seen = tk.stats(), len(tk.api_log())
    for name, extra in (("upstream", {"upstream": f"http://localhost:{port}/api"}),
                        ("token", {"REKEY_TOKEN_URL": f"http://localhost:{port}/token"})):
        s = serve(tk, d, f"localhost-{name}", **extra)
        status, _, body = s.request("GET", "/v1/me")
        assert status == 500 and answer_of(body)["error"] == "proxy_misconfigured", (name, status, body)
        s.stop()
    nothing_left(tk, None, before, api_seen)
    print("   http://localhost as upstream or token URL: 500 proxy_misconfigured, nothing sent")


def misconfiguration_fails_closed(tk):
    """Each of these configurations answers every request 500
    proxy_misconfigured, the operator path included, and sends nothing."""
    d = keys_dir("misconfigured", tk)
    caller = sha256_hex(CALLER_SECRET)
    cases = {
        "the operator's secret is a caller's": {"REKEY_OPERATOR_SECRET_SHA256": caller},
        "a caller secret is empty": {"REKEY_CALLER_SECRET_SHA256": f"{caller},{sha256_hex('')}"},
        "an operator secret is empty": {"REKEY_OPERATOR_SECRET_SHA256": sha256_hex("")},
        "a hash is not hex": {"REKEY_CALLER_SECRET_SHA256": "z" * 64},
        "a hash is short": {"REKEY_CALLER_SECRET_SHA256": caller[:-1]},
        "no Host listed": {"REKEY_ALLOWED_HOSTS": ","},
        "CONNECT listed": {"REKEY_ALLOWED_METHODS": "GET,CONNECT"},
        "a relative path prefix": {"REKEY_ALLOWED_PATHS": "v1"},
        "a credential header forwarded": {"REKEY_FORWARD_HEADERS": "Cookie"},
    }
    before, api_seen = tk.stats(), len(tk.api_log())
    kept = (d / "default.json").read_bytes()
    for i, (why, extra) in enumerate(cases.items()):
        s = serve(tk, d, f"misconfigured-{i}", **extra)
        for who, path in ((CALLER_SECRET, "/v1/me"), (CALLER_SECRET, "/_rekey/record"),
                          (OPERATOR_SECRET, "/_rekey/record")):
            status, _, body = request(s.base, "GET", path, {"authorization": f"Bearer {who}"})
            assert status == 500 and answer_of(body)["error"] == "proxy_misconfigured", (why, path, status, body)
        s.stop()
    nothing_left(tk, None, before, api_seen)
    assert (d / "default.json").read_bytes() == kept
    print(f"   {len(cases)} configurations ({'; '.join(cases)}): every request 500 proxy_misconfigured, "
          "the operator path too; nothing sent")


def configuration_from_the_environment(tk):
    d = keys_dir("env-only", tk)
    s = serve(tk, d, "env-only", env_only=True)
    assert s.request("GET", "/v1/me")[0] == 200
    assert request(s.base, "GET", "/v1/me")[0] == 401
    s.stop()
    print("   every setting through wasi:cli/environment (wasi:config/store empty): served, caller secret enforced")


def no_secret_in_server_output(tk):
    SECRETS.add(tk.client_secret)
    output = "".join(p.read_text(errors="replace") for p in RUN.glob("*.log"))
    assert "rekey-edge" in output, "the servers logged nothing (the check would be vacuous)"
    leaked = [s for s in SECRETS if s in output]
    assert not leaked, f"{len(leaked)} secrets appear in the server output"
    assert not re.search(r"\b(at|rt|idt)_[0-9a-f]{32}\b", output), "a token appears in the server output"
    print(f"   {len(SECRETS)} tokens and secrets checked against {len(output)} bytes of server output")


def main():
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    tk = Testkit(TESTKIT, "--access-ttl-ms", "2000")
    scenarios = [
        imports_are_standard_wasi_only,
        lambda: five_expiries(tk),
        lambda: sixteen_at_an_expiry(tk),
        lambda: sixteen_at_an_expiry(tk, n_servers=2),
        lambda: stalled_writer_is_fenced(tk),
        lambda: foreign_files_and_other_credentials(tk),
        lambda: a_fifo_is_never_opened(tk),
        lambda: sigkill_and_restart(tk),
        lambda: killed_mid_refresh_is_in_doubt(tk),
        lambda: callers_authorization_never_reaches_upstream(tk),
        lambda: one_mib_bodies_through_a_refresh(tk),
        lambda: migrated_refresh_in_doubt(tk),
        lambda: unreadable_record_is_503(tk),
        lambda: callers_without_the_secret_get_401(tk),
        lambda: wrong_host_is_refused(tk),
        lambda: header_hygiene(tk),
        lambda: paths_and_methods(tk),
        lambda: keys_directory_is_checked(tk),
        lambda: in_doubt_recovery(tk),
        lambda: keepalive_from_the_operator(tk),
        lambda: localhost_is_not_loopback(tk),
        lambda: configuration_from_the_environment(tk),
        lambda: misconfiguration_fails_closed(tk),
        lambda: client_credentials_without_keys(tk),
        silent_provider,
        lambda: revoked_grant_costs_one_token_request(tk),  # revokes every grant: last
        lambda: no_secret_in_server_output(tk),
    ]
    names = ["imports", "five-expiries", "sixteen-parallel", "two-servers", "stalled-writer", "shared-directory",
             "fifo-record", "sigkill-restart", "killed-mid-refresh",
             "caller-authorization", "one-mib-bodies", "migrated-in-doubt", "unreadable-record",
             "caller-secret", "wrong-host", "header-hygiene", "paths-and-methods", "keys-directory", "in-doubt-recovery",
             "keepalive",
             "localhost-refused", "config-env-fallback", "misconfigured", "client-credentials",
             "silent-provider", "revoked-grant", "no-secret-in-output"]
    only = set(filter(None, os.environ.get("EDGE_ONLY", "").split(",")))  # e.g. EDGE_ONLY=revoked-grant
    failed = 0
    rows = []  # the report's table: what each scenario saw, from this run
    try:
        for name, scenario in zip(names, scenarios):
            if only and name not in only:
                continue
            started = time.monotonic()
            said = io.StringIO()
            try:
                with contextlib.redirect_stdout(said):
                    scenario()
                verdict = "ok"
            except Exception as e:  # report every scenario, then fail
                failed += 1
                verdict = "FAIL"
                print(said.getvalue(), end="")
                print(f"FAIL {name}: {type(e).__name__}: {e}")
            else:
                print(said.getvalue(), end="")
                print(f"ok   {name} ({time.monotonic() - started:.1f} s)")
            seen = " ".join(line.strip() for line in said.getvalue().splitlines()).replace("|", "/")
            rows.append(f"| {name} | {verdict} | {seen} |")
    finally:
        for s in servers:
            s.stop()
        tk.close()
    passed = sum(r.split(" | ")[1] == "ok" for r in rows)
    (RUN / "report.md").write_text(
        f"{RUNTIME.name}, {Path(PROXY).name}: {passed} passed, {failed} failed\n\n"
        "| scenario | verdict | seen in this run |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    print(f"{RUNTIME.name}: {passed} passed, {failed} failed")
    if failed:
        print(f"edge: {failed} scenario(s) failed; server logs in {RUN}")
        sys.exit(1)
    print("edge: all scenarios passed")


if __name__ == "__main__":
    main()
