"""httpx transports that send every request through rekey.

    client = httpx.Client(transport=RekeyTransport(rekey, settings, store=store, credential="crm"))
    client = httpx.AsyncClient(transport=AsyncRekeyTransport(rekey, settings, store=store, credential="crm"))

A transport, not an ``httpx.Auth``: an auth flow only edits the request and
httpx's own transport sends it, so the access token would have to leave the
component and httpx would decide where it goes and what happens on a 401.
Here the component sends the request itself, with its rules (refresh and
retry once, new keys persisted before the retry, the token only to
``settings.api_origins``), and the transport turns its answer into an
``httpx.Response``. rekey's errors propagate unchanged (see the README)."""

from __future__ import annotations

from typing import Callable, Optional

try:
    import httpx
except ImportError as e:  # the optional dependency
    raise ImportError("rekey.httpx_transport needs httpx: pip install 'rekey[httpx]'") from e

from ._binding import Binding, forwarded
from .aio import AsyncRekey
from .client import Rekey
from .model import Request, Response, Settings
from .secret import Secret
from .stores import RecordStore

__all__ = ["RekeyTransport", "AsyncRekeyTransport"]


class RekeyTransport(httpx.BaseTransport):
    """``httpx.Client(transport=RekeyTransport(rekey, settings, store=..., credential=...))``.

    Every request the client sends goes through ``rekey.send`` with this
    credential: a URL outside ``settings.api_origins`` (a redirect hop too)
    raises :class:`rekey.InvalidSettings` and sends nothing. Mount it on the
    API's origin alone to let the client reach other sites as usual:
    ``httpx.Client(mounts={"https://api.example.com": transport})``; a
    redirect to another origin then leaves through httpx's own transport,
    without a token but with the body (307/308) and the caller's headers.
    Not ``mounts={"all://": ...}``: httpx puts the proxy environment
    variables' mounts before it, so a proxied URL would bypass rekey.
    The client's ``timeout``, ``verify``, ``cert`` and proxy settings are not
    used: rekey connects with its own :class:`rekey.HttpConfig`."""

    def __init__(
        self,
        rekey: Rekey,
        settings: Settings,
        *,
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ):
        if not isinstance(rekey, Rekey):
            raise TypeError(f"rekey must be a rekey.Rekey, not {type(rekey).__name__}")
        self._rekey = rekey
        self._binding = Binding(settings, store, credential, keys, on_update_keys)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = to_rekey(request, request.read())
        return from_rekey(self._rekey.send(self._binding.settings, sent, **self._binding.send_options))


class AsyncRekeyTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AsyncRekeyTransport(rekey, settings, store=..., credential=...))``.

    ``rekey`` is an :class:`AsyncRekey` or a :class:`Rekey` (wrapped in an
    ``AsyncRekey`` of this transport's own). Cancelling a request stops the
    waiting, not the call: it ends in its worker thread (a refresh it began
    is finished and persisted); ``aclose()`` (``AsyncClient.aclose``, the end
    of ``async with``) waits for such calls of this transport's own
    ``AsyncRekey``, ``AsyncRekey.drain()`` for a shared one."""

    def __init__(
        self,
        rekey: AsyncRekey | Rekey,
        settings: Settings,
        *,
        store: Optional[RecordStore] = None,
        credential: Optional[str] = None,
        keys: Optional[str | dict | Secret] = None,
        on_update_keys: Optional[Callable[[str], None]] = None,
    ):
        if isinstance(rekey, Rekey):
            self._rekey, self._owned = AsyncRekey(rekey), True
        elif isinstance(rekey, AsyncRekey):
            self._rekey, self._owned = rekey, False
        else:
            raise TypeError(f"rekey must be a rekey.AsyncRekey or rekey.Rekey, not {type(rekey).__name__}")
        self._binding = Binding(settings, store, credential, keys, on_update_keys)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = to_rekey(request, await request.aread())
        return from_rekey(await self._rekey.send(self._binding.settings, sent, **self._binding.send_options))

    async def aclose(self) -> None:
        if self._owned:
            await self._rekey.aclose()  # leaves the Rekey it was given open


def to_rekey(request: httpx.Request, body: bytes) -> Request:
    # Raw header bytes as latin-1 text: rekey writes them back as latin-1,
    # byte for byte. httpx's Host (the URL's own) goes along: the component
    # checks it names the URL's origin.
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    return Request(request.method, str(request.url), forwarded(headers), body)


def from_rekey(response: Response) -> httpx.Response:
    # The body as received (httpx decodes any Content-Encoding itself, as
    # with its own transports); headers back to the bytes that arrived.
    return httpx.Response(
        response.status,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
        stream=httpx.ByteStream(response.body),
        extensions={"http_version": b"HTTP/1.1"},
    )
