"""A string that never prints itself: tokens, client secrets, token sets."""


class Secret:
    """Holds a secret value. ``str()``/``repr()`` print ``[redacted]``; the
    value is reachable only through :meth:`expose`, so every place a secret
    leaves this type is greppable."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.expose()
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        self._value = value

    def expose(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "[redacted]"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        # Pickling would write the value somewhere unseen.
        raise TypeError("a Secret cannot be pickled")
