"""The record's columns, the same in every SQL store and every host
(``docs/record-store.md``, schema version 3)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..records import CredentialRecord, DeadGrant, Lease, RefreshMark, StoredRecord, StoreUnusable

SCHEMA_VERSION = 3

#: The record's columns, in the order of :func:`record_values`.
RECORD_COLUMNS = (
    "keys", "lease_holder", "lease_until_ms", "mark_holder", "mark_at_ms", "dead_grant_code", "dead_grant_at"
)
SELECT_RECORD = "SELECT version, " + ", ".join(RECORD_COLUMNS)
#: SET clause of the conditional write (parameters: record_values(), updated_at).
SET_RECORD = ", ".join(f"{c} = {{p}}" for c in RECORD_COLUMNS) + ", version = version + 1, updated_at = {p}"

#: Marks a refresh that was in doubt in a 0.2 store (its `refresh_in_doubt`).
MIGRATED_MARK_HOLDER = "migrated-0.2"


def record_values(data: CredentialRecord) -> tuple:
    lease, mark, dead = data.lease, data.refresh_mark, data.dead_grant
    return (
        data.keys_text(),
        lease.holder if lease else None,
        lease.until_ms if lease else None,
        mark.holder if mark else None,
        mark.at_ms if mark else None,
        dead.code if dead else None,
        dead.at if dead else None,
    )


def stored_record(name: str, row: Sequence[Any]) -> StoredRecord:
    """A row of ``SELECT_RECORD`` as the record it holds."""
    version, keys, lease_holder, lease_until, mark_holder, mark_at, dead_code, dead_at = row

    def pair(what: str, a: Optional[Any], b: Optional[Any]) -> bool:
        if (a is None) != (b is None):
            raise StoreUnusable(f"credential {name!r} is damaged in the store: its {what} columns are half NULL")
        return a is not None

    return StoredRecord(
        int(version),
        CredentialRecord(
            keys,
            Lease(lease_holder, int(lease_until)) if pair("lease", lease_holder, lease_until) else None,
            RefreshMark(mark_holder, int(mark_at)) if pair("refresh mark", mark_holder, mark_at) else None,
            DeadGrant(dead_code, int(dead_at)) if pair("dead grant", dead_code, dead_at) else None,
        ),
    )
