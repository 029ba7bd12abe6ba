"""Where a request may go: the host's second line behind the component's
own check (``guest/src/origins.rs``; the same rules, written again so a
component that let something through would still be stopped here).

- Every URL is ``https://``, or ``http://`` on a loopback address written as
  one (``127.x.y.z`` in plain decimal, ``::1``, ``localhost``).
- A token-endpoint request goes only to the settings' token URL.
- An access token goes only to the credential's API origins, when it has
  any: ``https://api.example.com[:port]``, ``https://*.example.com`` (one or
  more labels, never the bare domain), plus the token set's ``instance_url``
  when the settings allow it.

Like the guest's, the parser refuses an authority with a backslash, a
percent sign, whitespace, a control or non-ASCII character rather than
guess how another parser would read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Origin:
    https: bool
    #: Lower case; IPv6 without brackets; a trailing dot kept.
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Optional["Origin"]:
        """The origin of an absolute ``http(s)://`` URL, or None."""
        lower = url[:8].lower()
        if lower.startswith("https://"):
            https, rest = True, url[8:]
        elif lower.startswith("http://"):
            https, rest = False, url[7:]
        else:
            return None
        authority = rest
        for sep in "/?#":
            authority = authority.split(sep, 1)[0]
        if any(c in "\\%" or ord(c) <= 0x20 or ord(c) >= 0x7F for c in authority):
            return None
        hostport = authority.rsplit("@", 1)[-1]
        if hostport.startswith("["):
            host, bracket, after = hostport[1:].partition("]")
            if not bracket:
                return None
            if after and not after.startswith(":"):
                port_text: Optional[str] = None
            else:
                port_text = after[1:] if after else None
        else:
            host, colon, port_text = hostport.partition(":")
            if not colon:
                port_text = None
        if not port_text:
            port = 443 if https else 80
        elif len(port_text) <= 5 and port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
            port = int(port_text)
        else:
            return None
        host = host.lower()
        if not host:
            return None
        return cls(https, host, port)

    def is_loopback(self) -> bool:
        octets = self.host.split(".")
        ipv4 = (
            len(octets) == 4
            and octets[0] == "127"
            and all(o and len(o) <= 3 and o.isascii() and o.isdigit() for o in octets)
        )
        return ipv4 or self.host in ("::1", "localhost")

    def __str__(self) -> str:
        scheme = "https" if self.https else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def check_transport(url: str, what: str) -> Origin:
    """The URL's origin, if a secret may travel there; else ValueError."""
    origin = Origin.of(url)
    if origin is None:
        raise ValueError(f"{what} is not an absolute http(s) URL with a plain host (no %, \\ or spaces)")
    if not origin.https and not origin.is_loopback():
        raise ValueError(f"{what} is plain http:// off loopback: a secret would travel in clear text")
    return origin


@dataclass(frozen=True)
class Pattern:
    origin: Origin
    wildcard: bool

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        scheme, sep, rest = text.partition("://*.")
        wildcard = bool(sep)
        candidate = f"{scheme}://{rest}" if wildcard else text

        def bad(why: str) -> ValueError:
            return ValueError(f"API origin {text!r} {why}")

        after_scheme = candidate.partition("://")[2]
        cut = min((i for i in (after_scheme.find(c) for c in "/?#") if i >= 0), default=-1)
        path = after_scheme[cut:] if cut >= 0 else ""
        if path not in ("", "/"):
            raise bad("must be an origin, without path, query or fragment")
        if "@" in after_scheme:
            raise bad("must not carry user information")
        origin = Origin.of(candidate)
        if origin is None:
            raise bad("is not an origin like https://api.example.com")
        if not origin.https and (wildcard or not origin.is_loopback()):
            raise bad("uses plain http:// off loopback: the token would travel in clear text")
        if wildcard and "." not in origin.host:
            raise bad("has a wildcard over a top-level domain")
        return cls(origin, wildcard)

    def matches(self, o: Origin) -> bool:
        if self.wildcard:
            suffix = "." + self.origin.host
            sub = o.host[: -len(suffix)] if o.host.endswith(suffix) else None
            host_ok = bool(sub) and all(sub.split("."))
        else:
            host_ok = o.host == self.origin.host
        return o.https == self.origin.https and o.port == self.origin.port and host_ok


def check_api_url(url: str, patterns: Iterable[str], instance_urls: Iterable[str] = ()) -> None:
    """ValueError unless the access token may go to ``url``."""
    target = check_transport(url, "the request URL")
    patterns = list(patterns)
    parsed = []
    for p in patterns:
        try:
            parsed.append(Pattern.parse(p))
        except ValueError:
            pass  # the guest refuses such settings before sending anything
    instances = [o for o in map(Origin.of, instance_urls) if o is not None and o.https]
    if not patterns and not instances:
        return
    if any(p.matches(target) for p in parsed) or target in instances:
        return
    raise ValueError(f"{target} is not one of the credential's API origins, so its token is not sent there")
