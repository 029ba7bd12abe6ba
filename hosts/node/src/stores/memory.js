// Stores in this process's memory: lost when it exits, shared by the calls
// of this process only.
//
// MemoryStore: the record store for tests and single-process apps.
// CallbackStore: the single-process callback style (`keys` passed to `send`
// plus `onUpdateKeys`): a memory store seeded with the caller's keys whose
// callback runs inside every write that changes the keys, before the write
// returns; if it fails, the write reports `failed` and nothing changes. Safe
// for ONE process only: two processes each hold their own record, so their
// refreshes are not coordinated.

import { createHash } from 'node:crypto';
import { StoreError } from '../errors.js';
import { TokenSet } from '../secret.js';
import { checkedRecord, recordOf } from '../record.js';
import { RecordStoreBase, checkName } from './base.js';

const copy = (stored) => stored && { version: stored.version, data: checkedRecord(stored.data) };

export class MemoryStore extends RecordStoreBase {
  /** name -> {version, data, settings, updatedAt} */
  #rows = new Map();

  async read(name) {
    checkName(name);
    return copy(this.#rows.get(name));
  }

  async write(name, expectedVersion, data) {
    checkName(name);
    return this.writeNow(name, expectedVersion, checkedRecord(data));
  }

  /** The conditional write itself: synchronous, so atomic on this thread. */
  writeNow(name, expectedVersion, data) {
    const row = this.#rows.get(name);
    if (!row) throw new StoreError(`no credential named ${JSON.stringify(name)}`);
    if (row.version !== Number(expectedVersion)) return false;
    row.version += 1;
    row.data = data;
    row.updatedAt = Math.floor(Date.now() / 1000);
    return row.version;
  }

  async insert(name, settings, keys) {
    if (this.#rows.has(name)) return false;
    this.#rows.set(name, { version: 0, data: recordOf(keys), settings, updatedAt: Math.floor(Date.now() / 1000) });
    return true;
  }

  async rows(only) {
    return [...this.#rows].filter(([name]) => only === undefined || name === only)
      .map(([name, r]) => ({ name, settings: r.settings, updatedAt: r.updatedAt, version: r.version, data: checkedRecord(r.data) }));
  }

  close() {}
}

/**
 * The callback style's records, one per credential name. Writes are
 * serialised per store: a write that changes the keys awaits that call's
 * callback between its version check and its commit.
 */
export class CallbackStore extends MemoryStore {
  #queue = Promise.resolve();
  /** name -> hashes of every token the record has held (newest last) */
  #seen = new Map();

  /**
   * Makes the record hold the caller's keys, unless it already knows them:
   * keys this process has held (the set onUpdateKeys was given, or an older
   * one the caller still has) never replace newer ones, so a call that
   * passes stale keys adopts the refreshed set instead of spending a rotated
   * refresh token. Keys it never saw (a new authorisation) replace the record.
   */
  async seed(name, keys, { replace = false } = {}) {
    if (keys === null) {
      await this.insert(name, '{}', null);
      return;
    }
    if (await this.insert(name, '{}', keys)) {
      this.#remember(name, keys);
      return;
    }
    if (!replace && tokensOf(keys).some((t) => this.#seen.get(name)?.has(t))) return;
    await this.#serial(async () => {
      const current = await this.read(name);
      this.writeNow(name, current.version, recordOf(keys));
      this.#remember(name, keys);
    });
  }

  /** The store `send` uses for one call: its own callback runs in its writes. */
  forCall(onUpdateKeys) {
    return {
      read: (name) => this.read(name),
      write: (name, expectedVersion, data) => this.#write(name, expectedVersion, checkedRecord(data), onUpdateKeys),
    };
  }

  async write() {
    throw new Error('a CallbackStore is written through forCall(onUpdateKeys)');
  }

  #write(name, expectedVersion, record, onUpdateKeys) {
    return this.#serial(async () => {
      const current = await this.read(name);
      if (!current) throw new StoreError(`no credential named ${JSON.stringify(name)}`);
      if (current.version !== Number(expectedVersion)) return false;
      if (record.keys !== null && record.keys !== current.data.keys) {
        try {
          await onUpdateKeys(new TokenSet(JSON.parse(record.keys)));
        } catch (err) {
          // Its own message may quote what it was given: name it only.
          throw new StoreError(`onUpdateKeys failed (${err instanceof Error ? err.name : typeof err}); the keys were not persisted`);
        }
        this.#remember(name, record.keys);
      }
      return this.writeNow(name, expectedVersion, record);
    });
  }

  #serial(fn) {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  #remember(name, keys) {
    let seen = this.#seen.get(name);
    if (!seen) this.#seen.set(name, (seen = new Set()));
    for (const t of tokensOf(keys)) seen.add(t);
    // Bounded: the oldest go first (a caller never holds keys that old).
    for (const t of seen) {
      if (seen.size <= MAX_SEEN) break;
      seen.delete(t);
    }
  }
}

const MAX_SEEN = 4096;

/** Hashes of a token set's access and refresh tokens (not the tokens: nothing to leak). */
function tokensOf(keys) {
  let k;
  try {
    k = JSON.parse(keys);
  } catch {
    return [];
  }
  return ['access_token', 'refresh_token'].filter((f) => typeof k?.[f] === 'string' && k[f] !== '')
    .map((f) => createHash('sha256').update(`${f}\0${k[f]}`).digest('base64'));
}
