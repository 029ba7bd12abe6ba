"""A requests transport adapter that sends every request through rekey.

    session = requests.Session()
    session.mount("https://api.example.com/", RekeyAdapter(rekey, settings, store=store, credential="crm"))

An adapter, not a ``requests.auth.AuthBase``: an auth hook only edits the
request and requests' own adapter sends it, so the access token would have
to leave the component and requests would decide where it goes and what
happens on a 401. Here the component sends the request itself, with its
rules (refresh and retry once, new keys persisted before the retry, the
token only to ``settings.api_origins``), and the adapter turns its answer
into a ``requests.Response``. rekey's errors propagate unchanged (see the
README)."""

from __future__ import annotations

import http
import http.client
import io
from typing import Callable, Optional

try:
    import requests
    import requests.adapters
    import requests.cookies
    import requests.structures
    import requests.utils
    import urllib3
except ImportError as e:  # the optional dependency
    raise ImportError("rekey.requests_adapter needs requests: pip install 'rekey[requests]'") from e

from ._binding import Binding, forwarded
from .client import Rekey
from .model import Request, Response, Settings
from .secret import Secret
from .stores import RecordStore

__all__ = ["RekeyAdapter"]


class RekeyAdapter(requests.adapters.BaseAdapter):
    """``session.mount(API_ORIGIN + "/", RekeyAdapter(rekey, settings, store=..., credential=...))``.

    Every request the session sends to the mounted prefix goes through
    ``rekey.send`` with this credential. Mounted on a scheme (``"https://"``,
    and ``"http://"``), every request and every redirect hop comes here: one
    to a URL outside ``settings.api_origins`` raises
    :class:`rekey.InvalidSettings` and sends nothing. Mounted on the API's
    origin prefix, a redirect to another origin is followed by requests' own
    adapter, not by rekey: without a token, but with the body (307/308) and
    the caller's headers.
    The session's ``timeout``, ``verify`` and proxies are not used: rekey
    connects directly with its own :class:`rekey.HttpConfig` and always
    verifies TLS. A client certificate (``cert``) cannot be presented: it is
    a ``ValueError``. The body is read whole (``stream=True`` reads from
    memory)."""

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
        super().__init__()
        if not isinstance(rekey, Rekey):
            raise TypeError(f"rekey must be a rekey.Rekey, not {type(rekey).__name__}")
        self._rekey = rekey
        self._binding = Binding(settings, store, credential, keys, on_update_keys)

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if cert is not None:
            raise ValueError("rekey cannot present a client certificate (cert=): the request was not sent")
        sent = Request(request.method, request.url, forwarded(_text_headers(request.headers)), _body(request.body))
        received = self._rekey.send(self._binding.settings, sent, **self._binding.send_options)
        return self._response(request, received)

    def close(self) -> None:
        pass  # no pool: rekey opens a connection per request

    def _response(self, request, received: Response) -> requests.Response:
        response = requests.Response()
        response.status_code = received.status
        # requests joins repeated headers with ", ", as for its own adapter.
        joined: dict[str, str] = {}
        for name, value in received.headers:
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        response.headers = requests.structures.CaseInsensitiveDict(joined)
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.raw = _raw(request.method, received)
        response.reason = _reason(received.status)
        response.url = request.url
        requests.cookies.extract_cookies_to_jar(response.cookies, request, response.raw)
        response.request = request
        response.connection = self
        return response


def _text_headers(headers) -> list[tuple[str, str]]:
    # requests allows bytes values; latin-1 is how rekey writes them back.
    return [
        (name, value.decode("latin-1") if isinstance(value, bytes) else str(value)) for name, value in headers.items()
    ]


def _body(body) -> bytes:
    """A prepared body (bytes, text, a file or an iterable of chunks) whole."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")  # as urllib3 encodes text bodies
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        return _body(body.read())
    return b"".join(_body(chunk) for chunk in body)


def _raw(method: str, received: Response) -> urllib3.HTTPResponse:
    """``response.raw`` for requests: a urllib3 response over the body in
    memory, so ``iter_content`` decodes a Content-Encoding as usual."""
    # The body is already de-chunked: urllib3 must not read it as chunked.
    headers = urllib3.HTTPHeaderDict()
    message = http.client.HTTPMessage()
    for name, value in received.headers:
        message[name] = value  # appends: a repeated Set-Cookie stays two
        if name != "transfer-encoding":
            headers.add(name, value)
    return urllib3.HTTPResponse(
        body=io.BytesIO(received.body),
        headers=headers,
        status=received.status,
        version=11,
        version_string="HTTP/1.1",
        reason=_reason(received.status),
        preload_content=False,
        decode_content=True,
        original_response=_Received(message),  # where requests reads Set-Cookie from
        request_method=method,
    )


class _Received:
    """The part of an ``http.client.HTTPResponse`` that requests and urllib3
    use once the body is in memory: its headers (``msg``), already closed."""

    def __init__(self, msg: http.client.HTTPMessage):
        self.msg = msg

    def isclosed(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
