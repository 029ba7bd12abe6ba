"""rekey-proxy.wasm under `wasmtime serve` against the test kit's provider:
real HTTP on loopback, nothing mocked. Run by edge/test.sh, which passes
WASMTIME, PROXY, COMPOSE and REKEY_TESTKIT in the environment. Verdicts
count what the provider saw; waits poll (no verdict depends on timing)."""

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
from harness import Echo, Serve, Testkit, request, wait_for  # noqa: E402

WASMTIME = os.environ["WASMTIME"]
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


def record(d):
    """The stored record; a 0.2 keys file reads as version 0."""
    data = json.loads((d / "default.json").read_text())
    if "rekey_record" not in data:
        data = {"version": 0, "keys": data, "lease": None, "refresh_mark": None, "dead_grant": None}
    if data["keys"]:
        remember(data["keys"])
    return data


def stored(d):
    return record(d)["keys"]


def leftovers(d):
    """Files besides the record: locks, temp files, 0.2's lease and marker."""
    return sorted(p.name for p in d.iterdir() if p.name != "default.json")


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return f"{h:016x}"


def serve(tk, d, name, upstream=None, **extra):
    env = {
        "REKEY_TOKEN_URL": tk.token_url,
        "REKEY_CLIENT_ID": tk.client_id,
        "REKEY_UPSTREAM": upstream or f"{tk.base}/api",
        "REKEY_KEYS_DIR": "/keys",
        **extra,
    }
    s = Serve(WASMTIME, PROXY, RUN, name, env=env, dirs=[(d, "/keys")],
              secret_env={"REKEY_CLIENT_SECRET": tk.client_secret})
    servers.append(s)
    return s


def wait_expired(tk, d):
    """Polls until the provider refuses the stored access token."""
    token = stored(d)["access_token"]
    wait_for("the stored access token to expire", lambda: not tk.token_works(token), timeout=30)


def delta(before, after, field):
    return after[field] - before[field]


def imports_are_standard_wasi_only():
    out = subprocess.run([COMPOSE, "imports", PROXY], check=True, capture_output=True, text=True).stdout
    names = out.split()
    assert names, "the proxy lists no imports"
    foreign = [n for n in names if not n.startswith("wasi:")]
    assert not foreign, f"rekey-proxy.wasm imports non-WASI interfaces: {foreign}"
    assert "wasi:http/outgoing-handler@0.2.0" in names, names
    print(f"   imports: {', '.join(names)}")


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
        status, _, body = request(s.base, "GET", f"/orders?n={requests}")
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
    mode = (d / "default.json").stat().st_mode & 0o777
    assert mode == 0o600, f"the record file has mode {mode:o}"
    assert leftovers(d) == [], leftovers(d)
    s.stop()
    print(f"   {requests} requests, all 200; {refreshes} expiries, {refreshes} refreshes, invalid_grant 0; "
          f"record version {rec['version']}, mode 600")


def sixteen_at_an_expiry(tk, n_servers=1):
    """16 requests at once on an expired token, spread over `n_servers`
    servers sharing the directory: one token request in all."""
    name = "parallel" if n_servers == 1 else f"parallel-{n_servers}-servers"
    d = keys_dir(name, tk)
    ss = [serve(tk, d, f"{name}-{k}") for k in range(n_servers)]
    assert request(ss[0].base, "GET", "/warm")[0] == 200
    wait_expired(tk, d)
    before = tk.stats()
    results = []
    barrier = threading.Barrier(16)

    def one(i):
        barrier.wait()
        base = ss[i % n_servers].base
        results.append(request(base, "POST", f"/items/{i}", {"content-type": "text/plain"}, f"item {i}".encode()))

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


def sigkill_and_restart(tk):
    d = keys_dir("sigkill", tk)
    s = serve(tk, d, "sigkill-1")
    first = stored(d)["refresh_token"]
    wait_expired(tk, d)
    assert request(s.base, "GET", "/before-kill")[0] == 200
    rotated = stored(d)
    assert rotated["refresh_token"] != first, "no refresh happened before the kill"
    saved = (d / "default.json").read_bytes()
    s.kill()
    assert (d / "default.json").read_bytes() == saved, "the keys changed across SIGKILL"
    # A writer killed inside an update leaves its lock: it goes stale.
    lock = d / "default.lock"
    lock.write_text("0123456789abcdef0123456789abcdef\n")
    old = time.time() - 60
    os.utime(lock, (old, old))
    s2 = serve(tk, d, "sigkill-2")
    before = tk.stats()
    wait_expired(tk, d)
    status, _, body = request(s2.base, "GET", "/after-restart")
    assert status == 200, f"{status} {body[:200]!r}"
    after = tk.stats()
    assert delta(before, after, "refreshes_granted") == 1 and delta(before, after, "invalid_grant") == 0
    assert tk.live(stored(d)["refresh_token"])
    assert leftovers(d) == [], leftovers(d)
    s2.stop()
    print("   SIGKILL + restart: rotated keys survived, a stale lock was broken, the next refresh succeeded")


def killed_mid_refresh_is_in_doubt(tk):
    d = keys_dir("in-doubt", tk)
    s = serve(tk, d, "in-doubt-1", REKEY_LEASE_TTL_MS="3000")
    wait_expired(tk, d)
    kept = stored(d)
    tk.admin("lose-answers", [{"hang_ms": 60000}])
    before = tk.stats()
    hung = threading.Thread(target=lambda: request_quiet(s.base, "/hangs"), daemon=True)
    hung.start()
    wait_for("the refresh to be granted", lambda: delta(before, tk.stats(), "refreshes_granted") == 1)
    assert record(d)["refresh_mark"], "no refresh mark while a token request was out"
    s.kill()
    s2 = serve(tk, d, "in-doubt-2", REKEY_LEASE_TTL_MS="3000")
    mid = tk.stats()
    status, _, body = request(s2.base, "GET", "/after-crash")
    answer = json.loads(body)
    assert status == 502 and answer["error"] == "refresh_in_doubt", (status, answer)
    after = tk.stats()
    assert delta(mid, after, "token_calls") == 0, "the successor spent the refresh token again"
    assert after["reused_refresh_tokens"] == 0 and delta(before, after, "invalid_grant") == 0
    assert stored(d) == kept and record(d)["refresh_mark"], "the keys or the mark changed"
    s2.stop()
    print("   killed mid-refresh: successor waited out the lease, answered 502 refresh_in_doubt, spent nothing")


def request_quiet(base, path):
    try:
        request(base, "GET", path, timeout=90)
    except Exception:
        pass


def callers_authorization_never_reaches_upstream(tk):
    echo = Echo()
    d = keys_dir("authorization", tk)
    s = serve(tk, d, "authorization", upstream=echo.base + "/base")
    caller_token = "caller-own-token-3f9d2c"
    status, headers, body = request(
        s.base, "PUT", "/v1/things?a=1&b=two",
        {"authorization": f"Bearer {caller_token}", "x-custom": "kept", "content-type": "application/json"},
        b'{"n":1}',
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
    status, _, body = request(s.base, "POST", "/v1/mirror", {"content-type": "application/octet-stream"}, payload)
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
    status, _, body = request(s.base, "POST", "/v1/mirror", {}, payload)
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
    status, _, body = request(s.base, "GET", "/after-upgrade")
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
    status, _, body = request(s.base, "GET", "/any")
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
        status, _, body = request(s.base, "GET", f"/m2m/{i}")
        assert status == 200, (status, body)
    after = tk.stats()
    assert delta(before, after, "client_credentials_granted") == 1, after
    assert delta(before, after, "refreshes_granted") == 0, after
    keys = stored(d)
    assert keys["access_token"] and "refresh_token" not in keys, sorted(keys)
    assert record(d)["refresh_mark"] is None and record(d)["lease"] is None
    s.stop()
    print("   client credentials: no keys stored, 1 token fetched for 3 requests, no refresh token")


def revoked_grant_costs_one_token_request(tk):
    d = keys_dir("revoked", tk)
    s = serve(tk, d, "revoked")
    assert request(s.base, "GET", "/ok")[0] == 200
    kept = stored(d)
    tk.admin("revoke-all")
    before = tk.stats()
    status, headers, body = request(s.base, "GET", "/after-revoke")
    answer = json.loads(body)
    assert status == 401, (status, body)
    assert answer["error"] == "reauthorization_required" and answer["oauth_error"] == "invalid_grant", answer
    assert dict((k.lower(), v) for k, v in headers)["content-type"] == "application/json"
    assert delta(before, tk.stats(), "token_calls") == 1
    assert record(d)["dead_grant"]["code"] == "invalid_grant", record(d)
    api_seen = len(tk.api_log())
    for i in range(5):  # fail fast: no token request, no API request
        status, _, body = request(s.base, "GET", f"/again/{i}")
        assert status == 401 and json.loads(body)["error"] == "reauthorization_required", (status, body)
    after = tk.stats()
    assert delta(before, after, "token_calls") == 1, delta(before, after, "token_calls")
    assert len(tk.api_log()) == api_seen, "a request went out for a dead grant"
    assert stored(d) == kept, "the keys changed after invalid_grant"
    s.stop()
    print("   revoked grant: 1 token request, then 5 requests answered 401 without any; keys unchanged")


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
        lambda: sigkill_and_restart(tk),
        lambda: killed_mid_refresh_is_in_doubt(tk),
        lambda: callers_authorization_never_reaches_upstream(tk),
        lambda: one_mib_bodies_through_a_refresh(tk),
        lambda: migrated_refresh_in_doubt(tk),
        lambda: unreadable_record_is_503(tk),
        lambda: client_credentials_without_keys(tk),
        lambda: revoked_grant_costs_one_token_request(tk),  # revokes every grant: last
        lambda: no_secret_in_server_output(tk),
    ]
    names = ["imports", "five-expiries", "sixteen-parallel", "two-servers", "sigkill-restart", "killed-mid-refresh",
             "caller-authorization", "one-mib-bodies", "migrated-in-doubt", "unreadable-record", "client-credentials", "revoked-grant", "no-secret-in-output"]
    only = set(filter(None, os.environ.get("EDGE_ONLY", "").split(",")))  # e.g. EDGE_ONLY=revoked-grant
    failed = 0
    try:
        for name, scenario in zip(names, scenarios):
            if only and name not in only:
                continue
            started = time.monotonic()
            try:
                scenario()
                print(f"ok   {name} ({time.monotonic() - started:.1f} s)")
            except Exception as e:  # report every scenario, then fail
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    finally:
        for s in servers:
            s.stop()
        tk.close()
    if failed:
        print(f"edge: {failed} scenario(s) failed; server logs in {RUN}")
        sys.exit(1)
    print("edge: all scenarios passed")


if __name__ == "__main__":
    main()
