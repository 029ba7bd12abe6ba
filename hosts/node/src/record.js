// The credential record (WIT `credential-record`) in two shapes: the one
// stores keep (plain numbers, null for "none") and the one jco hands the
// component (BigInt for u64, undefined for "none"). A store never interprets
// a field: the component decides them all.

/**
 * @typedef {import('../index.js').CredentialRecord} CredentialRecord
 * @typedef {import('../index.js').StoredRecord} StoredRecord
 */

/**
 * A record with nothing in it but `keys`.
 * @returns {CredentialRecord}
 */
export function recordOf(keys = null) {
  return { keys, lease: null, refreshMark: null, deadGrant: null };
}

const safe = (n, what) => {
  const v = Number(n);
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${what} must be a whole number >= 0`);
  return v;
};

/**
 * From the component's (jco) shape to the stores'.
 * @returns {CredentialRecord}
 */
export function fromWit(d) {
  return {
    keys: d.keys ?? null,
    lease: d.lease ? { holder: d.lease.holder, untilMs: safe(d.lease.untilMs, 'lease until-ms') } : null,
    refreshMark: d.refreshMark ? { holder: d.refreshMark.holder, atMs: safe(d.refreshMark.atMs, 'mark at-ms') } : null,
    deadGrant: d.deadGrant ? { code: d.deadGrant.code, at: safe(d.deadGrant.at, 'dead-grant at') } : null,
  };
}

/** From the stores' shape to the component's (jco). */
export function toWit({ version, data: d }) {
  return {
    version: BigInt(version),
    data: {
      keys: d.keys ?? undefined,
      lease: d.lease ? { holder: d.lease.holder, untilMs: BigInt(d.lease.untilMs) } : undefined,
      refreshMark: d.refreshMark ? { holder: d.refreshMark.holder, atMs: BigInt(d.refreshMark.atMs) } : undefined,
      deadGrant: d.deadGrant ? { code: d.deadGrant.code, at: BigInt(d.deadGrant.at) } : undefined,
    },
  };
}

/**
 * A deep copy in the stores' shape, checked (a store keeps what it is given, no more).
 * @returns {CredentialRecord}
 */
export function checkedRecord(d) {
  if (d === null || typeof d !== 'object') throw new TypeError('a credential record is an object');
  const pair = (v, a, b, what) => {
    if (v === null || v === undefined) return null;
    if (typeof v[a] !== 'string') throw new TypeError(`${what}.${a} must be a string`);
    return /** @type {any} */ ({ [a]: v[a], [b]: safe(v[b], `${what}.${b}`) }); // the pair's own field names
  };
  if (d.keys !== null && d.keys !== undefined && typeof d.keys !== 'string') throw new TypeError('keys must be JSON text or null');
  return {
    keys: d.keys ?? null,
    lease: pair(d.lease, 'holder', 'untilMs', 'lease'),
    refreshMark: pair(d.refreshMark, 'holder', 'atMs', 'refreshMark'),
    deadGrant: pair(d.deadGrant, 'code', 'at', 'deadGrant'),
  };
}

/** The record as table columns (the schema in docs/record-store.md). */
export function columnsOf(d) {
  return {
    keys: d.keys,
    lease_holder: d.lease?.holder ?? null,
    lease_until_ms: d.lease?.untilMs ?? null,
    mark_holder: d.refreshMark?.holder ?? null,
    mark_at_ms: d.refreshMark?.atMs ?? null,
    dead_grant_code: d.deadGrant?.code ?? null,
    dead_grant_at: d.deadGrant?.at ?? null,
  };
}

/**
 * A table row back as a stored record; each pair NULL together means none.
 * @returns {StoredRecord}
 */
export function fromRow(row) {
  const n = (v) => (v === null || v === undefined ? null : Number(v));
  return {
    version: Number(row.version),
    data: {
      keys: row.keys ?? null,
      lease: row.lease_holder === null ? null : { holder: row.lease_holder, untilMs: n(row.lease_until_ms) },
      refreshMark: row.mark_holder === null ? null : { holder: row.mark_holder, atMs: n(row.mark_at_ms) },
      deadGrant: row.dead_grant_code === null ? null : { code: row.dead_grant_code, at: n(row.dead_grant_at) },
    },
  };
}

/** The keys as the JSON text a record holds (a TokenSet, an object or text). */
export function keysText(keys) {
  if (keys === undefined || keys === null) return null;
  if (typeof keys === 'string') return keys;
  if (typeof keys.toJSONString === 'function') return keys.toJSONString();
  return JSON.stringify(keys);
}
