"""Record stores: one versioned record per credential, written only by
compare-and-swap (``docs/record-store.md``). :class:`MemoryStore` (this
process), :class:`SqliteStore` (one machine), :class:`PostgresStore` (a
fleet; ``pip install 'rekey[postgres]'``); SQLite and PostgreSQL use the
tables the Rust and Node hosts use, so their workers share credentials."""

from __future__ import annotations

import os

from .base import OperatorFunctions, RecordStore, check_keys, check_name
from .memory import CallbackRecord, CallbackStore, MemoryStore
from .postgres import PostgresStore
from .sqlite import SqliteStore


def open_store(url: "str | os.PathLike"):
    """``postgres://…`` / ``postgresql://…`` (PostgreSQL), else a path or
    ``sqlite:PATH`` (SQLite)."""
    text = os.fspath(url)
    if text.startswith(("postgres://", "postgresql://")):
        return PostgresStore(text)
    return SqliteStore(text[len("sqlite:"):] if text.startswith("sqlite:") else text)


__all__ = [
    "RecordStore", "OperatorFunctions", "MemoryStore", "SqliteStore", "PostgresStore", "CallbackRecord",
    "CallbackStore", "open_store", "check_keys", "check_name",
]
