"""Token sets as the API takes them: a ``dict``, JSON text or a :class:`Secret`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .secret import Secret


def keys_text(keys: "Mapping | str | Secret", what: str = "keys") -> str:
    """``keys`` as JSON text: a mapping is serialised, JSON text and a
    ``Secret`` (what the authorisation flows return) are taken as they are.
    Anything else is a TypeError naming its type, never its value."""
    if isinstance(keys, Secret):
        return keys.expose()
    if isinstance(keys, str):
        return keys
    if isinstance(keys, Mapping):
        try:
            # allow_nan=False: NaN and Infinity are not JSON.
            return json.dumps(dict(keys), allow_nan=False)
        except (TypeError, ValueError) as e:
            # json's messages name a type or "out of range float", not a value.
            raise TypeError(f"{what} given as a dict must hold JSON values only: {e}") from None
    raise TypeError(f"{what} must be a dict, JSON text (str) or a Secret, not {type(keys).__name__}")


def canonical_keys(keys: str) -> str:
    """One spelling per token set, to recognise a set seen before whatever
    its spacing or key order (a dict is re-serialised by ``json.dumps``, the
    component writes compact JSON). Text that is not JSON stays as it is."""
    try:
        value = json.loads(keys)
    except (ValueError, RecursionError):
        return keys
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
