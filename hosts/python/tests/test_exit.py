"""The component's native handles are freed while the interpreter is whole:
at exit (before module teardown, when a daemon ticker or a late finaliser
could meet a half-torn-down wasmtime-py; a fleet worker once ended in
SIGSEGV after all its calls had succeeded), or when the user closes a
``Rekey``, never under a call in progress."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rekey
from rekey import Request

SRC = Path(__file__).resolve().parents[1] / "src"

# Registered before rekey is imported, so it runs after rekey's own exit
# hook (atexit runs last-in, first-out) and sees what that hook left.
AFTER_REKEY_EXIT = """
import atexit, os, sys, threading
sys.path.insert(0, {src!r})
state = {{}}
def report():
    ticking = [t.name for t in threading.enumerate() if t.name == "rekey-epoch"]
    engine = state["client"]._runtime.engine
    try:
        engine.ptr()
        closed = False
    except ValueError:
        closed = True
    print(f"ticking={{ticking}} engine_closed={{closed}}", flush=True)
atexit.register(report)
import rekey
CLIENT = rekey.Rekey(os.environ["REKEY_WASM"])  # a module global, as applications keep it
state["client"] = CLIENT
store = rekey.open_store(sys.argv[1])
settings = rekey.Settings(token_url=os.environ["T_TOKEN_URL"], client_id=os.environ["T_CLIENT_ID"],
                          client_secret=os.environ["T_CLIENT_SECRET"], api_origins=[os.environ["T_API_ORIGIN"]])
print(CLIENT.send(settings, rekey.Request.get(sys.argv[2]), store=store, credential="c").status, flush=True)
"""


def test_at_exit_the_ticker_has_stopped_and_the_engine_is_freed(provider, tmp_path):
    store = rekey.SqliteStore(tmp_path / "rekey.db")
    store.put("c", provider.settings(), rekey.keys_from_token_response(provider.authorize()))
    store.close()
    s = provider.settings()
    env = dict(os.environ, T_TOKEN_URL=s.token_url, T_CLIENT_ID=s.client_id, T_CLIENT_SECRET=provider.client_secret,
               T_API_ORIGIN=s.api_origins[0])  # the secret in the environment, never on a command line
    script = AFTER_REKEY_EXIT.format(src=str(SRC))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "rekey.db"), provider.api_url + "me"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout.split("\n"), done.stderr) == (
        0, ["200", "ticking=[] engine_closed=True", ""], "")


class _HeldHandler(http.server.BaseHTTPRequestHandler):
    arrived: threading.Event
    release: threading.Event

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.arrived.set()
        self.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass


def test_close_waits_for_a_call_in_progress_then_refuses_new_ones(provider):
    arrived, release = threading.Event(), threading.Event()
    handler = type("Held", (_HeldHandler,), {"arrived": arrived, "release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    settings = provider.settings(api_origins=[origin])
    client = rekey.Rekey(os.environ["REKEY_WASM"])
    statuses = []

    def call() -> None:
        statuses.append(client.send(settings, Request.get(origin + "/held"), keys='{"access_token":"a"}',
                                    on_update_keys=lambda _keys: None).status)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert arrived.wait(30), "the held request never reached the server"
        # The call sits in http-send, with the runtime's lock released.
        assert client._runtime.close(wait=0.2) is False
        client._runtime.engine.ptr()  # still open: raises if it was freed under the call
    finally:
        release.set()
        caller.join(30)
        server.shutdown()
    assert statuses == [200]
    with client:
        pass  # __exit__ closes it
    with pytest.raises(rekey.ComponentError, match="closed"):
        client.send(settings, Request.get(origin + "/held"), keys='{"access_token":"a"}',
                    on_update_keys=lambda _keys: None)
    client.close()  # twice is fine


def test_closing_right_after_loading_never_frees_the_engine_under_its_ticker():
    # The ticker may be inside increment_epoch when close() runs; before the
    # ticker was stopped and joined first, a few dozen rounds hit SIGSEGV.
    script = (f"import sys; sys.path.insert(0, {str(SRC)!r}); import os, rekey\n"
              "for _ in range(60):\n"
              "    rekey.Rekey(os.environ['REKEY_WASM']).close()\n"
              "print('closed 60')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "closed 60\n", "")


def test_close_from_inside_its_own_call_is_refused_not_a_hang(provider):
    client = rekey.Rekey(os.environ["REKEY_WASM"])
    seen = []

    def on_update(_keys: str) -> None:
        try:
            client.close()
        except RuntimeError as e:
            seen.append(str(e))  # and the keys count as kept: the call goes on

    keys = json.dumps(provider.authorize())
    provider.admin("POST", "expire-access-tokens")
    resp = client.send(provider.settings(), Request.get(provider.api_url + "me"), keys=keys, on_update_keys=on_update)
    assert resp.status == 200
    assert seen and "inside one of its own calls" in seen[0]
    assert client._runtime.close(wait=30) is True  # from outside: closes


FORK_WITH_THE_LOCK_HELD = """
import os, sys
sys.path.insert(0, {src!r})
import rekey
client = rekey.Rekey(os.environ["REKEY_WASM"])
client._runtime.lock.acquire()  # as a call on another thread holds it at the moment of a fork
pid = os.fork()
if pid == 0:
    sys.exit(0)  # the child never uses rekey: its exit must not wait on the parent's lock
_, status = os.waitpid(pid, 0)
client._runtime.lock.release()
print("child", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_forked_child_exits_even_when_the_parent_held_the_runtime_lock():
    done = subprocess.run([sys.executable, "-c", FORK_WITH_THE_LOCK_HELD.format(src=str(SRC))],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "child 0\n"), done.stderr


MANY_BUSY_AT_EXIT = """
import atexit, os, sys, threading, time
sys.path.insert(0, {src!r})
# Registered before rekey's hook, so it runs after it: what that hook left.
atexit.register(lambda: print("ticking", sum(t.name == "rekey-epoch" and t.is_alive()
                                              for t in threading.enumerate()), flush=True))
import rekey, rekey.runtime
rekey.runtime.EXIT_WAIT = 0.5
clients = [rekey.Rekey(os.environ["REKEY_WASM"]) for _ in range(16)]
for c in clients:
    c._runtime.lock.acquire()  # each busy for ever
print(time.monotonic(), flush=True)
"""


def test_the_exit_wait_is_one_bound_for_all_runtimes():
    done = subprocess.run([sys.executable, "-c", MANY_BUSY_AT_EXIT.format(src=str(SRC))],
                          capture_output=True, text=True, timeout=120)
    import time
    started, ticking = done.stdout.split("\n")[:2]
    waited = time.monotonic() - float(started)
    # One 0.5 s bound for all: 16 runtimes waited in turn would take 8 s.
    assert done.returncode == 0 and waited < 6, (done.returncode, waited, done.stderr)
    # Busy runtimes are kept, but their tickers are stopped: no rekey thread meets the teardown.
    assert ticking == "ticking 0", done.stdout
