"""The first token set through the component's ``authorize`` interface, end to
end against oidc-provider (``tests/oidc/server.mjs``; ``tests/oidc/follow.mjs``
plays the browser through its login, consent and device pages, as the Rust
scenarios in ``tests/all/authorize.rs`` do): the code grant with PKCE through
this host's loopback listener, then refreshes of the stored keys with every
strategy (the matching RFC 9207 ``iss`` accepted); the device grant, then a
refresh; denied consent; forged redirects (``error=access_denied`` with a
wrong state, an equal-length wrong state) answered 400 while the real redirect
still succeeds; no redirect in time; a denied device code. Against small
scripted endpoints: the URL handed to ``on_url`` is the listener's secret-free
start URL (302 once to the authorization URL, a wrong token 404, opened twice
ends the flow), the RFC 9207 table, ``invalid_scope`` is a settings problem,
the PKCE verifier the exchange sends matches the challenge, ``slow_down``
makes the polls further apart, an expired device code ends the polling, and
the polls' sleeps leave other threads' calls running. Nothing secret
(code, verifier, device code, tokens, client secret) in any log line,
exception, page or repr. Verdicts never depend on timing: waits poll.

oidc-provider runs under Node.js from ``tests/oidc`` (``npm ci`` there; ci.sh
does it). Without it these scenarios skip loudly, or fail under
``REKEY_REQUIRE_PEERS=1``."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import rekey
from conftest import delta, stored_keys
from rekey import BeforeExpiry, ClientAuth, EveryRequest, MemoryStore, OnAuthFailure, Request, Settings, SqliteStore
from rekey.model import settings_json

OIDC_DIR = Path(__file__).resolve().parents[3] / "tests" / "oidc"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
EXPIRIES = 3


def _node() -> str:
    """The node binary, or a loud skip (a failure under REKEY_REQUIRE_PEERS=1)."""
    node = shutil.which("node")
    why = None
    if node is None:
        why = "node is not on PATH"
    elif int(subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                            text=True).stdout.strip() or 0) < 20:
        why = "node is older than 20"
    elif not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        why = f"oidc-provider is not installed in {OIDC_DIR} (run npm ci there)"
    if why:
        message = f"SKIPPED: {why}, so the oidc-provider authorisation scenarios did NOT run"
        if os.environ.get("REKEY_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


def secret_of(client_id: str) -> str:
    """Reserved characters on purpose, as the Rust scenarios use."""
    return f"{client_id}:s3cr&t +%/?="


class Oidc:
    """server.mjs with 2-second access tokens and these clients, each native (a
    loopback redirect on any port) and allowed the code, refresh and device grants."""

    def __init__(self, node: str, clients: list[tuple[str, str]]):
        self.node = node
        registrations = [
            {
                "client_id": cid,
                "client_secret": secret_of(cid),
                "token_endpoint_auth_method": f"client_secret_{auth}",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
            }
            for cid, auth in clients
        ]
        env = dict(os.environ, OIDC_PORT="0", OIDC_ACCESS_TOKEN_TTL="2", OIDC_MAX_LIFETIME="300",
                   OIDC_CLIENTS=json.dumps(registrations))
        self.proc = subprocess.Popen([node, str(OIDC_DIR / "server.mjs")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server.mjs exited before announcing itself: {self.proc.wait()}")
        self.issuer = json.loads(line)["issuer"]
        self.issuer_origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.issuer))

    def settings(self, client_id: str, auth: str, **extra) -> Settings:
        fields = dict(
            token_url=f"{self.issuer}/token",
            authorization_url=f"{self.issuer}/auth",
            device_url=f"{self.issuer}/device/auth",
            issuer=self.issuer,
            client_id=client_id,
            client_secret=secret_of(client_id),
            client_auth=ClientAuth.BASIC if auth == "basic" else ClientAuth.POST,
            auth_params=[("scope", "openid offline_access")],
            api_origins=[self.issuer_origin],
        )
        fields.update(extra)
        return Settings(**fields)

    def stats(self, client_id: str):
        """The provider's counters for one client (None: it never saw the client)."""
        url = urllib.parse.urlsplit(self.issuer)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/_stats")
            return json.loads(conn.getresponse().read())["clients"].get(client_id)
        finally:
            conn.close()

    def follow(self, *args: str) -> subprocess.Popen:
        """follow.mjs, the browser, started (``browse`` waits for its answer)."""
        return subprocess.Popen([self.node, str(OIDC_DIR / "follow.mjs"), *args], stdout=subprocess.PIPE)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def browse(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "follow.mjs failed (see its stderr above)"
    return json.loads(out)


@pytest.fixture
def oidc():
    node = _node()
    started: list[Oidc] = []

    def start(clients: list[tuple[str, str]]) -> Oidc:
        o = Oidc(node, clients)
        started.append(o)
        return o

    yield start
    for o in started:
        o.close()


def assert_no_secret(texts: list[str], secrets, what: str) -> None:
    everything = "\n".join(texts)
    for s in secrets:
        if isinstance(s, str) and len(s) >= 8:
            assert s not in everything, f"{what} shows a secret value"


def tokens_of(keys: dict) -> list[str]:
    return [keys[f] for f in ("access_token", "refresh_token", "id_token") if keys.get(f)]


def said(e: BaseException) -> str:
    return f"{e} {e!r}"


def get(url: str) -> dict:
    """A GET on loopback, redirects not followed: status, body and Location."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", f"{u.path}?{u.query}" if u.query else u.path)
        resp = conn.getresponse()
        return {"status": resp.status, "body": resp.read().decode(), "location": resp.getheader("location")}
    finally:
        conn.close()


START_URL = re.compile(r"http://127\.0\.0\.1:\d+/start/[A-Za-z0-9_-]{43}")


def open_start(url: str) -> str:
    """What a browser does with the URL ``on_url`` was given: it is the
    listener's secret-free start URL, which answers 302 with the
    authorization URL (also on ``url.authorization_url``)."""
    assert isinstance(url, rekey.StartUrl)
    assert START_URL.fullmatch(url), url
    r = get(url)
    assert r["status"] == 302, r
    assert r["location"] == url.authorization_url
    return r["location"]


def same_length(state: str) -> str:
    """A state of the same length that is not it: the length check alone cannot refuse it."""
    return state[:-1] + ("B" if state.endswith("A") else "A")


def query_of(url: str) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def redirect_to(authorization_url: str, query) -> str:
    """The redirect the listener waits for, with ``query(state)``."""
    q = query_of(authorization_url)
    return f"{q['redirect_uri']}?{query(q['state'])}"


class Browser:
    """Plays the browser on a thread, so ``on_url`` returns promptly."""

    def __init__(self, play):
        self.result = None
        self.error = None

        def run():
            try:
                self.result = play()
            except BaseException as e:  # reported by join()
                self.error = e

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self):
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        return self.result


def refresh_until(client, oidc_peer: Oidc, settings, store, client_id: str, login: str, refreshes: int) -> None:
    """Calls userinfo with the stored keys until the provider counted
    ``refreshes`` refreshes; every call must succeed as ``login``."""
    give_up = time.monotonic() + 90
    while True:
        resp = client.send(settings, Request.get(f"{oidc_peer.issuer}/me"), store=store, credential="c")
        assert resp.status == 200, resp
        assert resp.json()["sub"] == login
        if oidc_peer.stats(client_id)["refreshes"] >= refreshes:
            return
        assert time.monotonic() < give_up, f"{client_id}: fewer than {refreshes} refreshes"
        time.sleep(0.25)  # pacing, not a verdict


def test_authorize_code_then_refresh_with_every_strategy(client, oidc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    clients = [
        ("az-on-auth-failure", "basic", OnAuthFailure()),
        ("az-every-request", "post", EveryRequest()),
        ("az-before-expiry", "basic", BeforeExpiry(1)),
    ]
    peer = oidc([(cid, auth) for cid, auth, _ in clients])
    shown: list[str] = []

    def run(cid: str, auth: str, strategy) -> list[str]:
        store = SqliteStore(tmp_path / f"{cid}.db")
        login = f"user-{cid}"
        # oidc-provider advertises and sends ``iss`` (RFC 9207): the matching one is accepted.
        settings = peer.settings(cid, auth, strategy=strategy, issuer_sends_iss=True)
        seen: dict = {}

        def on_url(url: str) -> None:
            def play():
                seen["url"] = open_start(url)
                return browse(peer.follow("--url", seen["url"], "--login", login))

            seen["browser"] = Browser(play)

        before = int(time.time())
        keys = client.authorize_code(settings, on_url=on_url, store=store, credential="c", timeout=60)
        after = int(time.time()) + 1
        page = seen["browser"].join()

        url = urllib.parse.urlsplit(seen["url"])
        q = dict(urllib.parse.parse_qsl(url.query))
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{peer.issuer}/auth"
        assert (q["response_type"], q["client_id"], q["code_challenge_method"]) == ("code", cid, "S256")
        assert len(q["code_challenge"]) == 43 and len(q["state"]) == 22
        assert q["scope"] == "openid offline_access"
        assert q["redirect_uri"].startswith("http://127.0.0.1:") and q["redirect_uri"].endswith("/callback")
        assert ":0/" not in q["redirect_uri"]
        # The listener answered the browser after the keys were stored.
        assert page["redirect"] == q["redirect_uri"]
        assert page["status"] == 200, page["body"]
        assert "authorised" in page["body"]
        assert page["code"]

        stored = json.loads(stored_keys(store))
        assert stored == json.loads(keys.expose()), "the returned keys are the stored ones"
        for f in ("access_token", "refresh_token", "id_token", "scope", "token_type", "expires_in", "expires_at"):
            assert f in stored, f"{cid}: the stored set has no {f}"
        assert before + stored["expires_in"] <= stored["expires_at"] <= after + stored["expires_in"]
        assert "rekey_refreshed_at" not in stored, "a first set was not obtained by a refresh"

        refresh_until(client, peer, settings, store, cid, login, EXPIRIES)
        stats = peer.stats(cid)
        assert stats["code_exchanges"] == 1, stats
        assert stats["grant_errors"] == {}, stats
        assert stats["grants_revoked"] == 0, stats
        assert stats["auth_seen"][auth] == stats["refreshes"] + 1, f"{cid}: every grant authenticated with {auth}"
        last = json.loads(stored_keys(store))
        assert last["refresh_token"] != stored["refresh_token"], "rotated and persisted"
        shown.extend([page["body"], repr(keys), str(keys)])
        return [page["code"], secret_of(cid), *tokens_of(stored), *tokens_of(last)]

    with ThreadPoolExecutor(len(clients)) as pool:
        secrets = [s for f in [pool.submit(run, *c) for c in clients] for s in f.result()]
    assert "token POST" in caplog.text, "the code exchange is logged"
    assert_no_secret([caplog.text, *shown], secrets, "the code grant")


def test_authorize_denied_consent_is_access_denied(client, oidc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    peer = oidc([("az-denied", "basic")])
    store = SqliteStore(tmp_path / "keys.db")
    browser = {}
    with pytest.raises(rekey.AccessDenied) as caught:
        client.authorize_code(peer.settings("az-denied", "basic"), store=store, credential="c",
                              timeout=60,
                              on_url=lambda url: browser.setdefault(
                                  "p", Browser(lambda: browse(peer.follow("--url", open_start(url), "--deny")))))
    assert caught.value.category is rekey.Category.NEEDS_AUTHORIZATION
    assert "access_denied" in str(caught.value)
    page = browser["p"].join()
    assert page["status"] == 400 and "access_denied" in page["body"]
    assert stored_keys(store) is None
    assert (peer.stats("az-denied") or {}).get("code_exchanges", 0) == 0
    assert_no_secret([caplog.text, said(caught.value), page["body"]], [secret_of("az-denied")], "the denial")


def test_authorize_forged_redirects_are_answered_400_and_the_real_one_succeeds(client, oidc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    peer = oidc([("az-state", "basic")])
    settings = peer.settings("az-state", "basic")
    store = SqliteStore(tmp_path / "keys.db")
    forged = "forged-code-value-0123456789"
    seen = {}

    def play(url: str) -> dict:
        real = open_start(url)
        state = query_of(real)["state"]
        # Another local process reaches the listener first: a forged error,
        # then a code of its own with a state of the right length, then none.
        hits = [get(redirect_to(real, q)) for q in (
            lambda _: "error=access_denied&state=x",
            lambda _: f"code={forged}&state={same_length(state)}",
            lambda _: f"code={forged}",
        )]
        # Then the person's browser comes back with the real redirect.
        return {"forged": hits, "page": browse(peer.follow("--url", real, "--login", "user-az-state"))}

    keys = client.authorize_code(settings, store=store, credential="c", timeout=60,
                                 on_url=lambda url: seen.setdefault("b", Browser(lambda: play(url))))
    played = seen["b"].join()
    for hit in played["forged"]:
        assert hit["status"] == 400 and "state does not match" in hit["body"], hit
    page = played["page"]
    assert page["status"] == 200 and "authorised" in page["body"], page
    stored = json.loads(stored_keys(store))
    assert stored == json.loads(keys.expose())
    resp = client.send(settings, Request.get(f"{peer.issuer}/me"), store=store, credential="c")
    assert resp.json()["sub"] == "user-az-state", "the stored tokens are the person's own account"
    assert peer.stats("az-state")["code_exchanges"] == 1, "only the real code was exchanged"
    assert_no_secret([caplog.text, *[h["body"] for h in played["forged"]], page["body"]],
                     [forged, secret_of("az-state"), *tokens_of(stored)], "the refusals")


def test_authorize_redirect_timeout_and_the_listener_closes(client, tmp_path):
    store = SqliteStore(tmp_path / "keys.db")
    settings = Settings(api_origins=["http://127.0.0.1:9"], token_url="http://127.0.0.1:9/token", client_id="t", authorization_url="http://127.0.0.1:9/auth")
    shown = []
    with pytest.raises(rekey.AuthorizationTimeout) as caught:
        client.authorize_code(settings, store=store, credential="c", on_url=shown.append, timeout=0.2)
    assert caught.value.category is rekey.Category.NEEDS_AUTHORIZATION
    assert "no redirect arrived within 0.2 s" in str(caught.value)
    assert stored_keys(store) is None
    redirect = urllib.parse.urlsplit(query_of(shown[0].authorization_url)["redirect_uri"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((redirect.hostname, redirect.port), timeout=5)
    # A redirect URI off loopback is refused before anything starts.
    with pytest.raises(rekey.InvalidSettings):
        client.authorize_code(settings, store=store, credential="c", on_url=shown.append, redirect_uri="http://example.com/callback")
    assert len(shown) == 1


def test_authorize_device_then_refresh_and_a_denied_one(client, oidc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    peer = oidc([("az-device", "basic"), ("az-device-denied", "post")])

    def approve() -> list[str]:
        store = SqliteStore(tmp_path / "device.db")
        settings = peer.settings("az-device", "basic")
        seen: dict = {}

        def on_user_code(device: rekey.DeviceAuthorization) -> None:
            seen["device"] = device
            seen["browser"] = peer.follow("--url", device.verification_uri, "--user-code", device.user_code,
                                          "--login", "user-az-device")

        keys = client.authorize_device(settings, store=store, credential="c", on_user_code=on_user_code)
        device = seen["device"]
        assert device.verification_uri.startswith(peer.issuer)
        assert device.user_code.strip() and device.expires_in > 0 and device.interval > 0
        assert "device_code" not in repr(device) and "_grant" not in repr(device)
        assert isinstance(browse(seen["browser"])["page"], str)
        stored = json.loads(stored_keys(store))
        assert stored == json.loads(keys.expose())
        for f in ("access_token", "refresh_token", "expires_at"):
            assert f in stored, f
        refresh_until(client, peer, settings, store, "az-device", "user-az-device", 1)
        last = json.loads(stored_keys(store))
        assert last["refresh_token"] != stored["refresh_token"]
        return [secret_of("az-device"), *tokens_of(stored), *tokens_of(last), device._grant["device_code"]]

    def deny() -> list[str]:
        saved = []
        browser = {}
        with pytest.raises(rekey.AccessDenied) as caught:
            client.authorize_device(
                peer.settings("az-device-denied", "post"),
                on_update_keys=saved.append,
                on_user_code=lambda d: browser.setdefault(
                    "p", peer.follow("--url", d.verification_uri, "--user-code", d.user_code, "--deny")),
            )
        browse(browser["p"])
        assert saved == []
        return [said(caught.value)]

    with ThreadPoolExecutor(2) as pool:
        approved, denied = pool.submit(approve), pool.submit(deny)
        secrets, texts = approved.result(), denied.result()
    assert "device POST" in caplog.text, "the device authorization request is logged"
    assert_no_secret([caplog.text, *texts], [*secrets, secret_of("az-device-denied")], "the device grant")


class Scripted:
    """A scripted endpoint on loopback: ``answer(path, form, n)`` returns (status, json)."""

    def __init__(self, answer):
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                form = dict(urllib.parse.parse_qsl(data))
                outer.requests.append({"path": self.path, "form": form, "at": time.monotonic()})
                status, body = answer(self.path, form, len(outer.requests))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scripted_code_flow(client, play, **settings) -> dict:
    """authorize_code against a scripted token endpoint, the browser played by
    ``play(start_url)`` on a thread: the keys or the error, what ``play``
    returned, the keys saved and the token requests made."""
    tokens = {"access_token": "scripted-access-token", "refresh_token": "scripted-refresh-token", "expires_in": 60}
    scripted = Scripted(lambda path, form, n: (200, tokens))
    saved: list[str] = []
    seen: dict = {}
    out: dict = {"keys": None, "err": None}
    try:
        s = Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", authorization_url=f"{scripted.base}/auth", client_id="c", **settings)
        try:
            out["keys"] = client.authorize_code(s, on_update_keys=saved.append, timeout=60,
                                                on_url=lambda url: seen.setdefault("b", Browser(lambda: play(url))))
        except rekey.RekeyError as e:
            out["err"] = e
        out["played"] = seen["b"].join()
        out["saved"] = [json.loads(k)["refresh_token"] for k in saved]
        out["exchanges"] = len([r for r in scripted.requests if r["path"] == "/token"])
        return out
    finally:
        scripted.close()


def test_authorize_opens_a_secret_free_start_url_that_302s_once_and_404s_a_wrong_token(client):
    def play(url):
        real = url.authorization_url
        origin = url[: url.index("/start/")]
        token = url[len(origin) + len("/start/"):]
        wrong = {path: get(f"{origin}{path}") for path in (
            f"/start/{same_length(token)}", f"/start/{token}x", f"/start/{token[1:]}", "/start/", "/start", f"/start/{token}/")}
        opened = get(url)
        page = get(redirect_to(real, lambda st: f"code=scripted-code&state={st}"))
        return {"url": str(url), "real": real, "wrong": wrong, "opened": opened, "page": page}

    out = scripted_code_flow(client, play)
    assert out["err"] is None, said(out["err"])
    played = out["played"]
    q = query_of(played["real"])
    for field in ("state", "code_challenge", "redirect_uri", "client_id"):
        assert q.get(field), f"the authorization URL has {field}"
    assert START_URL.fullmatch(played["url"]) and "?" not in played["url"]
    for path, hit in played["wrong"].items():
        assert hit["status"] == 404 and hit["location"] is None, (path, hit)
    assert played["opened"]["status"] == 302
    assert played["opened"]["location"] == played["real"], "the start URL leads to the real authorization URL"
    assert played["page"]["status"] == 200, played["page"]
    assert out["exchanges"] == 1 and out["saved"] == ["scripted-refresh-token"]
    assert json.loads(out["keys"].expose())["access_token"] == "scripted-access-token"


def test_authorize_start_url_opened_twice_ends_the_flow_with_nothing_exchanged(client):
    def play(url):
        first, second = get(url), get(url)
        # Whoever opened it first holds the state: its redirect is not accepted.
        try:
            late = get(redirect_to(url.authorization_url, lambda st: f"code=scripted-code&state={st}"))
        except OSError as e:
            late = {"status": 0, "body": type(e).__name__}
        return {"first": first, "second": second, "late": late}

    out = scripted_code_flow(client, play)
    assert isinstance(out["err"], rekey.StartUrlReused), said(out["err"])
    assert out["err"].category is rekey.Category.NEEDS_AUTHORIZATION
    assert "opened more than once" in str(out["err"])
    played = out["played"]
    assert played["first"]["status"] == 302
    assert played["second"]["status"] == 404 and played["second"]["location"] is None
    assert played["late"]["status"] != 200, "the redirect of whoever opened it is not accepted"
    assert out["exchanges"] == 0 and out["saved"] == []


# A client run as uid 65534 (setpriv). ``get`` sends a GET and prints the
# answer's status; ``half-close`` also shuts its writing side right after
# sending (its socket is then FIN_WAIT2 when the listener looks it up, and it
# still reads the answer); ``idle`` opens N connections that send nothing,
# prints ``ready``, and when its stdin closes prints how many were answered 403.
OTHER_CLIENT = r"""
import socket, sys
mode, host, port, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def status(data):
    head = data.split(b"\r\n", 1)[0].split()
    return head[1].decode() if len(head) > 1 else "none"
def answer(s):
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data
if mode == "idle":
    held = [socket.create_connection((host, port)) for _ in range(n)]
    print("ready", flush=True)
    sys.stdin.read()
    print(sum(status(answer(s)) == "403" for s in held), flush=True)
    sys.exit(0)
s = socket.create_connection((host, port))
s.sendall(("GET %s HTTP/1.0\r\nhost: %s:%d\r\n\r\n" % (target, host, port)).encode())
if mode == "half-close":
    s.shutdown(socket.SHUT_WR)
print(status(answer(s)), flush=True)
"""
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _other_user_python() -> str:
    """A Python that uid 65534 can run (this one may live under /root), or a
    skip with the reason: these scenarios need Linux and root."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("the same-user check is Linux only")
    if os.geteuid() != 0:
        print("SKIPPED: needs root to run a client as another user (uid 65534)")
        pytest.skip("needs root to run a client as another user (uid 65534)")
    for candidate in (os.path.realpath(os.sys.executable), "/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and subprocess.run([*AS_NOBODY, candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    pytest.skip("no Python that uid 65534 can run")


def as_another_user(python: str, url: str, mode: str, n: int = 0) -> subprocess.Popen:
    u = urllib.parse.urlsplit(url)
    target = f"{u.path}?{u.query}" if u.query else u.path
    return subprocess.Popen([*AS_NOBODY, python, "-c", OTHER_CLIENT, mode, u.hostname, str(u.port), target, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def status_as_another_user(python: str, url: str, mode: str) -> str:
    proc = as_another_user(python, url, mode)
    out, _ = proc.communicate(timeout=60)
    return out.strip()


def test_authorize_another_users_programs_get_403_for_the_start_url_and_the_redirect(client, caplog):
    """Issue #20's attacker is another local user who read the start URL on
    the opener's command line: plain or with a half-closed socket, it gets 403
    for the start URL and for a redirect with this request's state; the start
    URL is still there for ours, and the flow succeeds with one exchange."""
    python = _other_user_python()

    def play(url):
        start = {mode: status_as_another_user(python, url, mode) for mode in ("get", "half-close")}
        opened = get(url)
        redirect = redirect_to(url.authorization_url, lambda st: f"code=scripted-code&state={st}")
        theirs = {mode: status_as_another_user(python, redirect, mode) for mode in ("get", "half-close")}
        page = get(redirect)
        return {"start": start, "opened": opened, "theirs": theirs, "page": page}

    with caplog.at_level(logging.WARNING, logger="rekey"):
        out = scripted_code_flow(client, play)
    assert out["err"] is None, said(out["err"])
    played = out["played"]
    assert played["start"] == {"get": "403", "half-close": "403"}, "the start URL is not served to another user"
    assert played["opened"]["status"] == 302, "and is still there for ours"
    assert played["theirs"] == {"get": "403", "half-close": "403"}, "another user has no say in the redirect"
    assert played["page"]["status"] == 200, played["page"]
    assert out["exchanges"] == 1 and out["saved"] == ["scripted-refresh-token"]
    assert json.loads(out["keys"].expose())["access_token"] == "scripted-access-token"
    assert caplog.text.count("another user's program reached the authorisation listener; refused") == 4


def test_authorize_400_idle_connections_of_another_user_do_not_hold_the_listener(client):
    """Each is answered 403 before a byte is read (the listener reads requests
    one at a time, each for up to 10 s: read, 400 would hold it for over an
    hour); the start URL and the redirect are served."""
    python = _other_user_python()

    def play(url):
        idle = as_another_user(python, url, "idle", 400)
        try:
            ready = idle.stdout.readline().strip()
            opened = get(url)
            page = get(redirect_to(url.authorization_url, lambda st: f"code=scripted-code&state={st}"))
            refused, _ = idle.communicate("", timeout=60)
        finally:
            idle.kill()
        return {"ready": ready, "opened": opened, "page": page, "refused": refused.strip()}

    out = scripted_code_flow(client, play)
    assert out["err"] is None, said(out["err"])
    played = out["played"]
    assert played["ready"] == "ready"
    assert played["opened"]["status"] == 302, "the start URL answered behind 400 idle connections"
    assert played["page"]["status"] == 200, played["page"]
    assert played["refused"] == "400", "each idle connection was answered 403"
    assert out["exchanges"] == 1


ISSUER = "https://idp.example"
_ENC = urllib.parse.quote


@pytest.mark.parametrize("settings, query, refused", [
    pytest.param(dict(issuer=ISSUER, issuer_sends_iss=True), lambda st: f"code=c0de&state={st}",
                 rekey.IssuerMismatch, id="no iss though advertised"),
    pytest.param(dict(issuer=ISSUER, issuer_sends_iss=True), lambda st: f"code=c0de&state={st}&iss={_ENC('https://evil.example', safe='')}",
                 rekey.IssuerMismatch, id="a forged iss"),
    pytest.param(dict(issuer=ISSUER), lambda st: f"code=c0de&state={st}&iss={_ENC(ISSUER + '/', safe='')}",
                 rekey.IssuerMismatch, id="a forged iss, not advertised"),
    pytest.param(dict(), lambda st: f"code=c0de&state={st}&iss={_ENC(ISSUER, safe='')}",
                 rekey.InvalidSettings, id="an iss with no issuer configured"),
    pytest.param(dict(issuer=ISSUER, issuer_sends_iss=True), lambda st: f"code=c0de&state={st}&iss={_ENC(ISSUER, safe='')}",
                 None, id="the matching iss"),
    pytest.param(dict(issuer=ISSUER), lambda st: f"code=c0de&state={st}", None, id="no iss, not advertised"),
])
def test_authorize_rfc9207_iss(client, settings, query, refused):
    def play(url):
        get(url)
        return get(redirect_to(url.authorization_url, query))

    out = scripted_code_flow(client, play, **settings)
    if refused is None:
        assert out["err"] is None, said(out["err"])
        assert out["played"]["status"] == 200
        assert out["exchanges"] == 1 and out["saved"] == ["scripted-refresh-token"]
    else:
        assert isinstance(out["err"], refused), said(out["err"])
        assert out["played"]["status"] == 400
        assert out["exchanges"] == 0 and out["saved"] == [], "nothing exchanged or stored"
        if refused is rekey.InvalidSettings:
            assert "issuer" in str(out["err"]), "names the issuer option"


def test_authorize_issuer_sends_iss_must_be_a_bool(client):
    s = Settings(token_url="https://idp.example/token", authorization_url="https://idp.example/auth", client_id="c",
                 api_origins=["https://api.example"], issuer_sends_iss="yes")
    with pytest.raises(rekey.InvalidSettings, match="issuer_sends_iss"):
        client.begin_authorization(s, "http://127.0.0.1:8765/cb")
    # The settings column carries it only when set, as the Rust host writes it.
    s.issuer_sends_iss = True
    assert json.loads(settings_json(s))["issuer_sends_iss"] is True
    s.issuer_sends_iss = False
    assert "issuer_sends_iss" not in json.loads(settings_json(s))


@pytest.mark.parametrize("code, category", [
    ("invalid_scope", rekey.Category.SETTINGS_WRONG),
    ("server_error", rekey.Category.NEEDS_AUTHORIZATION),
])
def test_authorize_invalid_scope_on_the_redirect_is_a_settings_problem(client, code, category):
    def play(url):
        get(url)
        return get(redirect_to(url.authorization_url, lambda st: f"error={code}&state={st}"))

    out = scripted_code_flow(client, play)
    assert isinstance(out["err"], rekey.AuthorizationProviderError), said(out["err"])
    assert out["err"].code == code and out["err"].category is category
    assert out["played"]["status"] == 400 and out["exchanges"] == 0


def test_authorize_low_level_steps_pkce_verifier_matches_and_is_never_shown(client, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = {"access_token": "scripted-access-token", "refresh_token": "scripted-refresh-token",
              "expires_in": "60", "expires_at": 0, "token_type": "Bearer"}
    scripted = Scripted(lambda path, form, n: (200, tokens) if n == 1
                        else (400, {"error": "invalid_grant", "error_description": "code already used"}))
    try:
        settings = Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", authorization_url=f"{scripted.base}/auth?tenant=x",
                            client_id="app", client_secret="scripted-client-secret", client_auth=ClientAuth.POST)
        redirect_uri = "http://127.0.0.1:8765/cb"
        pending = client.begin_authorization(settings, redirect_uri)
        assert isinstance(pending, rekey.PendingAuthorization) and pending.redirect_uri == redirect_uri
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(pending.url).query))
        assert q["tenant"] == "x"

        with pytest.raises(rekey.StateMismatch) as wrong:
            client.finish_authorization(settings, pending, "?code=scripted-code-value&state=other")
        assert scripted.requests == [], "a wrong state sends nothing"

        keys = client.finish_authorization(settings, pending, f"{redirect_uri}?code=scripted-code-value&state={q['state']}")
        form = scripted.requests[0]["form"]
        assert (form["grant_type"], form["code"], form["redirect_uri"]) == ("authorization_code", "scripted-code-value", redirect_uri)
        assert form["client_secret"] == "scripted-client-secret"
        challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=").decode()
        assert challenge == q["code_challenge"], "PKCE S256: the verifier sent hashes to the challenge shown"
        assert len(form["code_verifier"]) == 43
        k = json.loads(keys.expose())
        assert k["access_token"] == "scripted-access-token"
        assert abs(k["expires_at"] - (time.time() + 60)) < 5, "the sender's expires_at is dropped, computed from expires_in"

        with pytest.raises(rekey.AuthorizationRejected) as again:
            client.finish_authorization(settings, pending, f"code=scripted-code-value&state={q['state']}")
        assert (again.value.code, again.value.category) == ("invalid_grant", rekey.Category.NEEDS_AUTHORIZATION)
        assert "already used" not in str(again.value), "no provider text"

        shown = [caplog.text, said(wrong.value), said(again.value), repr(pending), str(pending), repr(keys), str(keys)]
        assert_no_secret(shown, [form["code_verifier"], "scripted-code-value", "scripted-client-secret",
                                 "scripted-access-token", "scripted-refresh-token"], "the low-level steps")
    finally:
        scripted.close()


def test_authorize_slow_down_makes_the_device_polls_five_seconds_further_apart(client):
    def answer(path, form, n):
        if path == "/device":
            return 200, {"device_code": "scripted-device-code", "user_code": "ABCD-EFGH",
                         "verification_uri": "http://127.0.0.1/activate", "expires_in": 60, "interval": 1}
        if n == 2:
            return 400, {"error": "slow_down"}
        return 200, {"access_token": "scripted-access-token", "refresh_token": "scripted-refresh-token", "expires_in": 60}

    scripted = Scripted(answer)
    try:
        store = MemoryStore()
        codes = []
        keys = client.authorize_device(
            Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", device_url=f"{scripted.base}/device", client_id="s"),
            store=store, credential="c", on_user_code=lambda d: codes.append(d.user_code))
        assert codes == ["ABCD-EFGH"]
        assert json.loads(stored_keys(store)) == json.loads(keys.expose())
        assert json.loads(stored_keys(store))["refresh_token"] == "scripted-refresh-token"
        polls = [r for r in scripted.requests if r["path"] == "/token"]
        assert len(polls) == 2 and polls[0]["form"]["device_code"] == "scripted-device-code"
        # Interval 1 s, then 6 s after slow_down (a lower bound only: slower is fine).
        assert polls[1]["at"] - polls[0]["at"] >= 5.8
    finally:
        scripted.close()


def test_authorize_an_expired_device_code_ends_the_polling_cleanly(client):
    def device(expires_in: int):
        return 200, {"device_code": "scripted-device-code", "user_code": "ABCD",
                     "verification_uri": "http://127.0.0.1/activate", "expires_in": expires_in, "interval": 1}

    # The server says so (expired_token) ...
    scripted = Scripted(lambda path, form, n: device(60) if path == "/device" else (400, {"error": "expired_token"}))
    try:
        settings = Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", device_url=f"{scripted.base}/device", client_id="e")
        with pytest.raises(rekey.DeviceCodeExpired) as caught:
            client.authorize_device(settings, on_update_keys=lambda k: pytest.fail("nothing to store"),
                                    on_user_code=lambda d: None)
        assert caught.value.category is rekey.Category.NEEDS_AUTHORIZATION
        assert len([r for r in scripted.requests if r["path"] == "/token"]) == 1
        assert "scripted-device-code" not in said(caught.value)
    finally:
        scripted.close()
    # ... or its expires_in runs out while the person has not acted.
    scripted = Scripted(lambda path, form, n: device(2) if path == "/device" else (400, {"error": "authorization_pending"}))
    try:
        settings = Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", device_url=f"{scripted.base}/device", client_id="e")
        with pytest.raises(rekey.DeviceCodeExpired):
            client.authorize_device(settings, on_update_keys=lambda k: pytest.fail("nothing to store"),
                                    on_user_code=lambda d: None)
    finally:
        scripted.close()


def test_authorize_device_polls_sleep_without_the_component_lock(client, provider, monkeypatch):
    """While the component sleeps between device polls (seconds to minutes),
    other threads' calls run: the sleep is served in Python, outside the
    component lock. The guest's sleep here ends when the test says, so the
    verdict does not depend on timing: a send made while it sleeps must
    finish first."""
    import rekey.runtime

    asleep = threading.Event()
    wake = threading.Event()
    woken_by_test: list[bool] = []

    def sleep(_seconds: float) -> None:
        asleep.set()
        woken_by_test.append(wake.wait(30))

    monkeypatch.setattr(rekey.runtime, "_sleep", sleep)
    scripted = Scripted(lambda path, form, n: (200, {"device_code": "d", "user_code": "U", "verification_uri": "http://127.0.0.1/a",
                                                     "expires_in": 60, "interval": 5}) if path == "/device"
                        else (200, {"access_token": "scripted-access-token", "expires_in": 60}))
    try:
        settings = Settings(api_origins=[scripted.base], token_url=f"{scripted.base}/token", device_url=f"{scripted.base}/device", client_id="s")
        result = {}
        thread = threading.Thread(target=lambda: result.update(
            keys=client.authorize_device(settings, store=MemoryStore(), credential="c", on_user_code=lambda d: None)))
        thread.start()
        assert asleep.wait(30), "the device poll never slept"
        store = MemoryStore()
        store.put("c", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
        resp = client.send(provider.settings(), Request.get(provider.api_url + "me"), store=store, credential="c")
        wake.set()
        thread.join(30)
        assert resp.status == 200
        assert woken_by_test == [True], "the send had to wait for the device poll's sleep"
        assert json.loads(result["keys"].expose())["access_token"] == "scripted-access-token"
    finally:
        wake.set()
        scripted.close()


def test_import_token_response_as_the_rust_host_does():
    keys = json.loads(rekey.import_token_response(
        '{"access_token":"a.b-c_d~e+f/g==","expires_in":"60","expires_at":0,"rekey_refreshed_at":5,"id_token":"i"}',
        now=1_000_000_000))
    assert keys == {"access_token": "a.b-c_d~e+f/g==", "expires_in": "60", "id_token": "i", "expires_at": 1_000_000_060}
    assert "expires_at" not in json.loads(rekey.import_token_response('{"refresh_token":"r","expires_in":1.5}'))
    for bad in ['{"token_type":"bearer"}', '{"access_token":"sekrit with space"}', '{"access_token":"sekrit\\r\\nX: 1"}',
                '["sekrit"]', '{"access_token": "sekrit']:
        with pytest.raises(rekey.TokenEndpointError) as caught:
            rekey.import_token_response(bad)
        assert "sekrit" not in said(caught.value), bad


DERIVED = {"expires_at": 2**40, "rekey_refreshed_at": 5, "rekey_rejected": {"0123456789abcdef": 5},
           "rekey_lifetime": 7, "refresh_expires_at": 2**40}


@pytest.mark.parametrize("importer", [rekey.import_token_response, rekey.keys_from_token_response])
def test_a_first_set_drops_the_fields_the_component_derives(importer):
    # A provider (or a hostile one) sending them must not decide the guest's
    # expiry, its rejection evidence or its lifetimes.
    sent = {"access_token": "a", "refresh_token": "r", "id_token": "i", **DERIVED}
    assert json.loads(importer(json.dumps(sent), now=1_000)) == {"access_token": "a", "refresh_token": "r", "id_token": "i"}
    sent["expires_in"] = 60
    assert json.loads(importer(json.dumps(sent), now=1_000)) == {
        "access_token": "a", "refresh_token": "r", "id_token": "i", "expires_in": 60, "expires_at": 1_060}


def _request_key(method: str, url: str) -> str:
    """The guest's ``keys::request_key`` (FNV-1a 64 of "METHOD url-without-query")."""
    h = 0xCBF29CE484222325
    for b in f"{method} {url.split('?')[0].split('#')[0]}".encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return f"{h:016x}"


def test_a_provider_sent_rejection_evidence_does_not_stop_the_refresh(client, provider_factory, tmp_path):
    # Kept, this field would make the component answer the next 401 with
    # rejected-after-refresh instead of refreshing.
    provider = provider_factory("--access-ttl-ms", "600000")
    url = provider.api_url + "orders"
    tokens = {**provider.authorize(), "rekey_rejected": {_request_key("GET", url): int(time.time())}}
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(tokens))
    provider.admin("POST", "expire-access-tokens")
    before = provider.stats()

    resp = client.send(provider.settings(), rekey.Request.get(url), store=store, credential="c")

    assert resp.status == 200
    d = delta(provider.stats(), before)
    assert (d["api_unauthorized"], d["refreshes_granted"]) == (1, 1)
