"""The component this package runs: which file, and its SHA-256.

The wheel carries the component as ``rekey/_component/rekey_guest.wasm``
(hatch_build.py puts it there; the repository keeps the one copy at
host/component/rekey_guest.wasm). :class:`rekey.Rekey` loads, in this order:
its ``wasm=`` argument, else ``$REKEY_WASM`` (when set and not empty), else the
packaged file (read as a package resource, so a zip import works too), else,
in a source checkout or an editable install, the repository's committed
component (the same bytes the wheel carries)."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import Optional

#: Where the wheel keeps the component (absent in a source checkout).
PACKAGED_COMPONENT = Path(__file__).resolve().parent / "_component" / "rekey_guest.wasm"
_HERE = Path(__file__).resolve().parent
#: In a source checkout (hosts/python/src/rekey), the repository's committed component.
CHECKOUT_COMPONENT = _HERE.parents[3] / "host" / "component" / "rekey_guest.wasm" if _HERE.parent.name == "src" else None


def _packaged_bytes() -> Optional[bytes]:
    """The packaged component's bytes, from a directory or a zip; None when
    this rekey has none."""
    try:
        return (importlib.resources.files(__package__) / "_component" / "rekey_guest.wasm").read_bytes()
    except OSError:  # FileNotFoundError, or NotADirectoryError inside a zip
        return None


def load_component(wasm: str | os.PathLike[str] | None = None) -> tuple[str, bytes]:
    """Where the component :class:`rekey.Rekey` loads for ``wasm`` comes
    from (a path, or "the packaged component"), and its bytes."""
    explicit = os.fspath(wasm) if wasm is not None else os.environ.get("REKEY_WASM") or None
    if explicit is not None:
        with open(explicit, "rb") as f:
            return explicit, f.read()
    packaged = _packaged_bytes()
    if packaged is not None:
        return "the packaged component", packaged
    if CHECKOUT_COMPONENT is not None and CHECKOUT_COMPONENT.is_file():
        return str(CHECKOUT_COMPONENT), CHECKOUT_COMPONENT.read_bytes()
    raise ValueError("no component: this rekey has none packaged (a source checkout?); pass wasm= or set REKEY_WASM")


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
    if CHECKOUT_COMPONENT is not None and CHECKOUT_COMPONENT.is_file():
        return str(CHECKOUT_COMPONENT)
    raise ValueError("no component: this rekey has none packaged (a source checkout?); pass wasm= or set REKEY_WASM")


@functools.cache
def packaged_component_sha256() -> str:
    """SHA-256 (lower-case hex) of the component packaged with rekey, as
    ``sha256sum`` prints it. Raises ``FileNotFoundError`` in a source
    checkout, which has none."""
    code = _packaged_bytes()
    if code is None:
        raise FileNotFoundError(
            f"no packaged component at {PACKAGED_COMPONENT} (a source checkout?): build or install the wheel"
        )
    return hashlib.sha256(code).hexdigest()
