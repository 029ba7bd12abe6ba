"""The component this package runs: which file, and its SHA-256.

The wheel carries the component as ``rekey/_component/rekey_guest.wasm``
(hatch_build.py puts it there; the repository keeps the one copy at
host/component/rekey_guest.wasm). :class:`rekey.Rekey` loads, in this order:
its ``wasm=`` argument, else ``$REKEY_WASM`` (when set and not empty), else the
packaged file. A source checkout has no packaged file: pass ``wasm=`` or set
``REKEY_WASM`` there."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

#: Where the wheel keeps the component (absent in a source checkout).
PACKAGED_COMPONENT = Path(__file__).resolve().parent / "_component" / "rekey_guest.wasm"


def component_path(wasm: str | os.PathLike[str] | None = None) -> str:
    """The component :class:`rekey.Rekey` loads for ``wasm``: ``wasm`` if
    given, else ``$REKEY_WASM`` if set, else the packaged component."""
    if wasm is not None:
        return os.fspath(wasm)
    env = os.environ.get("REKEY_WASM")
    if env:
        return env
    if PACKAGED_COMPONENT.is_file():
        return str(PACKAGED_COMPONENT)
    raise ValueError("no component: this rekey has none packaged (a source checkout?); pass wasm= or set REKEY_WASM")


@functools.cache
def packaged_component_sha256() -> str:
    """SHA-256 (lower-case hex) of the component packaged with rekey, as
    ``sha256sum`` prints it. Raises ``FileNotFoundError`` in a source
    checkout, which has none."""
    try:
        code = PACKAGED_COMPONENT.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no packaged component at {PACKAGED_COMPONENT} (a source checkout?): build or install the wheel"
        ) from None
    return hashlib.sha256(code).hexdigest()
