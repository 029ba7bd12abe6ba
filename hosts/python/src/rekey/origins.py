"""Where a request may go: the host's second line behind the component's
own check (``guest/src/origins.rs``; the same rules, written again so a
component that let something through would still be stopped here).

- Every URL is ``https://``, or ``http://`` on a loopback address written as
  one (``127.x.y.z`` in plain decimal, ``::1``, ``localhost``).
- A token-endpoint request goes only to the settings' token URL.
- An access token goes only to the credential's API origins:
  ``https://api.example.com[:port]``, ``https://*.example.com`` (one or more
  labels, never the bare domain), or ``*`` alone (any origin, said
  explicitly), plus the token set's ``instance_url`` origin when it matches
  one of the credential's instance patterns.

Like the guest's, the parser refuses an authority with a backslash, a
percent sign, whitespace, a control or non-ASCII character rather than
guess how another parser would read it.

A wildcard over a public suffix (``https://*.co.uk``, ``https://*.github.io``)
is refused here, not by the component, which has no public suffix list (too
large for it): as the Rust host does (``host/src/origins.rs``, the ``psl``
crate), by the list's ICANN and private sections alike. ``publicsuffixlist``
also counts the parent of a wildcard rule (``kobe.jp`` for ``*.kobe.jp``), as
the list's own linter does and ``psl`` does not: stricter than Rust there."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Iterable, Optional

from publicsuffixlist import PublicSuffixList

from .errors import InvalidSettings


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
        port_text: Optional[str]
        if hostport.startswith("["):
            # An IPv6 address, then nothing or ``:port``: urlsplit reads
            # ``[::1]x:8080`` as port 8080.
            host, bracket, after = hostport[1:].partition("]")
            ipv6 = ":" in host and all(c in "0123456789abcdefABCDEF:." for c in host)
            if not bracket or not ipv6 or (after and not after.startswith(":")):
                return None
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
        if not host or (":" not in host and not all(host.split("."))):
            return None  # empty, or an empty label (``a..example.com``, ``host.``)
        if ":" not in host and _ends_in_a_number(host) and not _is_dotted_quad(host):
            return None  # ``127.1``, ``0x7f.1``, ``127.0.0.010``: read as another address, or refused
        return cls(https, host, port)

    def is_loopback(self) -> bool:
        return self.is_literal_loopback() or self.host == "localhost"

    def is_literal_loopback(self) -> bool:
        """A loopback address written as one (a name is not)."""
        octets = self.host.split(".")
        ipv4 = (
            len(octets) == 4
            and octets[0] == "127"
            and all(o and len(o) <= 3 and o.isascii() and o.isdigit() for o in octets)
        )
        return ipv4 or self.host == "::1"

    def is_ip(self) -> bool:
        return ":" in self.host or all(p.isdigit() for p in self.host.split("."))

    def __str__(self) -> str:
        scheme = "https" if self.https else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _ends_in_a_number(host: str) -> bool:
    """Whether WHATWG parsers read ``host`` as IPv4: its last label is
    decimal or ``0x`` hex (octal, hex or one number to them)."""
    last = host.rsplit(".", 1)[-1]
    if last.startswith("0x"):
        return all(c in "0123456789abcdef" for c in last[2:])
    return last.isascii() and all(c.isdigit() for c in last)


def _is_dotted_quad(host: str) -> bool:
    """Four decimal octets 0..255 without a leading zero: read alike by all."""
    octets = host.split(".")
    return len(octets) == 4 and all(
        o.isascii() and o.isdigit() and len(o) <= 3 and not (len(o) > 1 and o[0] == "0") and int(o) <= 255
        for o in octets
    )


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
        if wildcard and ("." not in origin.host or origin.is_ip()):
            raise bad("has a wildcard over fewer than two labels (e.g. https://*.com): it would match unrelated sites")
        return cls(origin, wildcard)

    def matches(self, o: Origin) -> bool:
        if self.wildcard:
            suffix = "." + self.origin.host
            sub = o.host[: -len(suffix)] if o.host.endswith(suffix) else None
            host_ok = bool(sub) and all(sub.split("."))
        else:
            host_ok = o.host == self.origin.host
        return o.https == self.origin.https and o.port == self.origin.port and host_ok


ANY = "*"
"""The explicit "any origin" entry of ``api_origins``."""


@functools.lru_cache(maxsize=1)
def _public_suffix_list() -> PublicSuffixList:
    # accept_unknown=False: the list's implicit ``*`` rule (any unknown
    # top-level domain) does not count, as in the Rust host.
    return PublicSuffixList(accept_unknown=False)


def is_public_suffix(host: str) -> bool:
    """Whether ``host`` (lower case, IDN as punycode) is itself a public
    suffix named by a rule of the list (``co.uk``, ``github.io``)."""
    return _public_suffix_list().is_public(host)


def public_suffix_wildcard(api_origins: Iterable[str], instance_url_origins: Iterable[str] = ()) -> Optional[str]:
    """Why the settings' origin patterns must be refused for a wildcard over
    a public suffix, or None. Other malformed patterns are left to the
    component, which names them."""
    for name, patterns in (("api_origins", api_origins), ("instance_url_origins", instance_url_origins)):
        for text in patterns:
            try:
                p = Pattern.parse(str(text))
            except ValueError:
                continue
            if p.wildcard and is_public_suffix(p.origin.host):
                host = p.origin.host
                return (
                    f"{name}: {json.dumps(str(text), ensure_ascii=False)} is a wildcard over a public suffix ({host}): "
                    "a wildcard over a public suffix matches other people's sites; "
                    f"name the registrable domain below it, e.g. https://*.example.{host}"
                )
    return None


def check_patterns(api_origins: Iterable[str], instance_url_origins: Iterable[str]) -> None:
    """InvalidSettings for a wildcard over a public suffix in either list:
    what creating a credential and every call's settings check run."""
    why = public_suffix_wildcard(api_origins, instance_url_origins)
    if why is not None:
        raise InvalidSettings(why)


def _parsed(patterns: Iterable[str]) -> list[Pattern]:
    out = []
    for p in patterns:
        try:
            pattern = Pattern.parse(p)
        except ValueError:
            continue  # the guest refuses such settings before sending anything
        if not (pattern.wildcard and is_public_suffix(pattern.origin.host)):
            out.append(pattern)  # one over a public suffix never matches
    return out


def adopted_instance(instance_url: str, patterns: Iterable[str]) -> Optional[Origin]:
    """The origin of a token set's ``instance_url`` when it may receive the
    token (https or http on a literal loopback address, no user information,
    matching one of ``patterns``); else None: it never unbinds or widens."""
    origin = Origin.of(instance_url)
    authority = instance_url.partition("://")[2]
    for sep in "/?#":
        authority = authority.split(sep, 1)[0]
    if origin is None or "@" in authority or not (origin.https or origin.is_literal_loopback()):
        return None
    return origin if any(p.matches(origin) for p in _parsed(patterns)) else None


def check_api_url(
    url: str,
    patterns: Iterable[str],
    instance_urls: Iterable[str] = (),
    instance_patterns: Iterable[str] = (),
) -> None:
    """ValueError unless the access token may go to ``url``."""
    target = check_transport(url, "the request URL")
    patterns = list(patterns)
    instance_patterns = list(instance_patterns)
    # As in the Rust host, such a pattern anywhere in the settings (an
    # instance pattern beside ``*`` too) refuses every API request.
    unmeant = public_suffix_wildcard(patterns, instance_patterns)
    if unmeant is not None:
        raise ValueError(unmeant)
    if patterns == [ANY]:
        return
    instances = [o for o in (adopted_instance(u, instance_patterns) for u in instance_urls) if o is not None]
    if any(p.matches(target) for p in _parsed(patterns)) or target in instances:
        return
    raise ValueError(f"{target} is not one of the credential's API origins, so its token is not sent there")
