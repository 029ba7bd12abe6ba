"""What the HTTP-library integrations share: a credential bound once (the
arguments :meth:`Rekey.send` takes besides the request), and the request
headers that belong to the connection rekey opens, not to the caller."""

from __future__ import annotations

from typing import Callable, Optional

from .keys import keys_text
from .model import Settings
from .secret import Secret
from .stores import CallbackRecord, CallbackStore, RecordStore

#: Framing and hop-by-hop headers: rekey sends the body whole on a
#: connection of its own, and writes Content-Length itself.
CONNECTION_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class Binding:
    """``settings`` plus either ``store`` and ``credential`` or
    ``on_update_keys`` (with ``keys``, a dict, JSON text or a Secret, and an
    optional ``credential``), checked by the rules of :meth:`Rekey.send`.

    Without a ``credential`` name the binding keeps one callback record of
    its own for its lifetime, seeded once with ``keys``: every request
    continues from the newest keys a refresh wrote (passing ``keys`` to each
    ``Rekey.send`` would give each request a fresh record seeded with the
    first keys, whose refresh token is spent after one refresh)."""

    def __init__(
        self,
        settings: Settings,
        store: Optional[RecordStore],
        credential: Optional[str],
        keys: Optional[str | dict | Secret],
        on_update_keys: Optional[Callable[[str], None]],
    ):
        if not isinstance(settings, Settings):
            raise TypeError(f"settings must be rekey.Settings, not {type(settings).__name__}")
        if store is not None:
            if keys is not None or on_update_keys is not None:
                raise TypeError("store= goes with credential=; keys= and on_update_keys= go together without a store")
            if not credential:
                raise TypeError("store= needs credential= (the credential's name in the store)")
        elif on_update_keys is None:
            raise TypeError("pass store= and credential=, or keys= and on_update_keys=")
        self.settings = settings
        text = keys_text(keys) if keys is not None else None
        if store is None and not credential:
            record = CallbackRecord()
            if text is not None:
                record.offer(text)
            # Rekey.send runs a callback call on exactly this store, under this name.
            self.send_options = dict(store=CallbackStore(record, on_update_keys), credential="(callback)")
        else:
            self.send_options = dict(store=store, credential=credential, keys=text, on_update_keys=on_update_keys)


def forwarded(headers) -> list[tuple[str, str]]:
    """The caller's headers minus the connection's own (order and duplicates kept)."""
    return [(name, value) for name, value in headers if name.lower() not in CONNECTION_HEADERS]
