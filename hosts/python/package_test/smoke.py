"""The installed rekey wheel against the testkit provider: the README's quick
start as it is, then rotation across expiries, a typed error and the packaged
component's hash. package_test/run.sh runs it with the wheel's venv, from a
temporary directory, as ``python -I`` (nothing from the checkout on sys.path).

Environment: REKEY_TESTKIT (the testkit binary), REKEY_WASM_SHA256 (the
component's expected SHA-256), REKEY_README (hosts/python/README.md)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import sysconfig
import urllib.parse
from pathlib import Path

EXPIRIES = 3
MARKER = "<!-- package_test/run.sh runs the next block"


class Testkit:
    """The loopback provider; it exits when its stdin closes."""

    def __init__(self, binary: str):
        # Long-lived access tokens: only expire-access-tokens expires them, so
        # the refresh count is exact whatever this machine's speed.
        self.proc = subprocess.Popen(
            [binary, "--access-ttl-ms", "600000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the testkit exited before announcing itself: {self.proc.wait()}")
        self.info = json.loads(line)

    def admin(self, method: str, path: str, body: object = None) -> object:
        url = urllib.parse.urlsplit(self.info["base_url"])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, f"/_testkit/{path}", body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            check(resp.status == 200, f"testkit {path}: HTTP {resp.status}")
            return json.loads(data) if data else None
        finally:
            conn.close()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def quick_start(readme: Path) -> str:
    """The README's quick-start block, the one after the marker."""
    text = readme.read_text()
    check(MARKER in text, f"no quick-start marker in {readme}")
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    check(block is not None, f"no python block after the marker in {readme}")
    return block.group(1)


def stored_keys(store, name: str) -> dict:
    return json.loads(store.read(name).data.keys_text())


def main() -> None:
    expected_sha256 = os.environ["REKEY_WASM_SHA256"].lower()
    check("REKEY_WASM" not in os.environ, "REKEY_WASM is set: the packaged component would not be tested")

    # The wheel, not the checkout: rekey comes from this venv's site-packages.
    import rekey

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(Path(rekey.__file__).resolve().is_relative_to(site), f"rekey imported from {rekey.__file__}, not {site}")
    check(Path(rekey.component_path()).resolve() == rekey.PACKAGED_COMPONENT, "Rekey() would not load the package's")
    check(rekey.PACKAGED_COMPONENT.is_relative_to(site), f"component at {rekey.PACKAGED_COMPONENT}")
    check((site / "rekey" / "py.typed").is_file(), "no py.typed")

    provider = Testkit(os.environ["REKEY_TESTKIT"])
    try:
        info = provider.info
        api = urllib.parse.urlsplit(info["api_url"])
        first = provider.admin("POST", "authorize")
        # The quick start reads the secret from the environment, as it says.
        os.environ["CLIENT_SECRET"] = info["client_secret"]
        names = {
            "TOKEN_URL": info["token_url"],
            "CLIENT_ID": info["client_id"],
            "API_ORIGIN": f"{api.scheme}://{api.netloc}",
            "API_URL": info["api_url"] + "me",
            "first_token_response": first,
        }
        before = provider.admin("GET", "stats")
        # The README's own lines, run as written (they are what a user copies).
        exec(compile(quick_start(Path(os.environ["REKEY_README"])), "README quick start", "exec"), names)  # noqa: S102
        client, settings, store = names["rekey"], names["settings"], names["store"]
        check(names["resp"].status == 200, f"quick start: HTTP {names['resp'].status}")

        # Expiries: each 401 is refreshed once, rotating the refresh token.
        seen = {first["refresh_token"]}
        for i in range(EXPIRIES):
            provider.admin("POST", "expire-access-tokens")
            resp = client.send(settings, rekey.Request.get(names["API_URL"]), store=store, credential="crm")
            check(resp.status == 200, f"after expiry {i + 1}: HTTP {resp.status}")
            seen.add(stored_keys(store, "crm")["refresh_token"])
        stats = provider.admin("GET", "stats")
        d = {k: v - (before.get(k) or 0) for k, v in stats.items() if isinstance(v, int)}  # the counters
        check(d["refreshes_granted"] == EXPIRIES, f"refreshes {d['refreshes_granted']}, expected {EXPIRIES}")
        check((d["reused_refresh_tokens"], d["invalid_grant"]) == (0, 0), f"reused/invalid_grant: {d}")
        check(len(seen) == EXPIRIES + 1, f"{len(seen)} distinct refresh tokens, expected {EXPIRIES + 1}")
        live = provider.admin(
            "POST", "refresh-token-live", {"refresh_token": stored_keys(store, "crm")["refresh_token"]}
        )
        check(live["live"], "the stored refresh token is not the live one")

        # A typed error: the grant revoked, the refresh answers invalid_grant.
        provider.admin("POST", "revoke-all")
        try:
            client.send(settings, rekey.Request.get(names["API_URL"]), store=store, credential="crm")
            raise AssertionError("a revoked grant's call succeeded")
        except rekey.ReauthorizationRequired as e:
            check(e.code == "invalid_grant" and e.category is rekey.Category.NEEDS_AUTHORIZATION, f"{e!r}")
            check(info["client_secret"] not in str(e), "the client secret is in the error")
        after = provider.admin("GET", "stats")
        check(after["invalid_grant"] - stats["invalid_grant"] == 1, "no invalid_grant seen by the provider")

        # The packaged component's hash, three ways.
        packaged = hashlib.sha256(rekey.PACKAGED_COMPONENT.read_bytes()).hexdigest()
        printed = subprocess.run(
            [sys.executable, "-I", "-m", "rekey", "component", "--sha256"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for what, value in [
            ("file", packaged),
            ("COMPONENT_SHA256", rekey.COMPONENT_SHA256),
            ("python -m rekey component --sha256", printed),
            ("Rekey().component_sha256", client.component_sha256),
        ]:
            check(value == expected_sha256, f"{what}: {value}, expected {expected_sha256}")

        # The overrides: $REKEY_WASM over the packaged file, wasm= over both.
        os.environ["REKEY_WASM"] = "/nonexistent/override.wasm"
        try:
            rekey.Rekey()
            raise AssertionError("Rekey() ignored $REKEY_WASM")
        except FileNotFoundError as e:
            check(e.filename == "/nonexistent/override.wasm", f"{e!r}")
        # Left open, freed at exit: closing is the runtime's matter (tests/test_exit.py).
        explicit = rekey.Rekey(wasm=rekey.PACKAGED_COMPONENT)
        check(explicit.component_sha256 == expected_sha256, "wasm= did not win over $REKEY_WASM")
        del os.environ["REKEY_WASM"]
    finally:
        provider.close()
    print(
        f"package smoke: rekey {rekey.__version__} from {site}: quick start 200, {EXPIRIES} expiries -> "
        f"{d['refreshes_granted']} refreshes (reused 0, invalid_grant 0), ReauthorizationRequired(invalid_grant), "
        f"component sha256 {expected_sha256[:16]}… ok"
    )


if __name__ == "__main__":
    main()
