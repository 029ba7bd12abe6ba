// The record store in one SQLite file, through Node's built-in `node:sqlite`
// (Node >= 22), with the schema every rekey host uses (docs/record-store.md):
// table `credentials`, schema version 3 in `PRAGMA user_version`, opened with
// journal_mode=WAL, synchronous=FULL and a busy timeout; writes in BEGIN
// IMMEDIATE transactions. Any number of processes on one machine (Rust,
// Node and Python workers alike) may share a file.
//
// node:sqlite is synchronous: each statement runs on the calling thread. A
// write holds the file's lock for a few milliseconds; a call that must wait
// for another process's write blocks this thread up to the busy timeout.

import { closeSync, openSync } from 'node:fs';
import { StoreError } from '../errors.js';
import { columnsOf, fromRow, recordOf } from '../record.js';
import { RecordStoreBase, WriteUnknown, checkName } from './base.js';

export const SCHEMA_VERSION = 3;
const BUSY_TIMEOUT_MS = 5_000;

const CREATE = `
CREATE TABLE IF NOT EXISTS credentials (
    name            TEXT PRIMARY KEY NOT NULL,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   INTEGER,
    lease_holder    TEXT,
    lease_until_ms  INTEGER,
    mark_holder     TEXT,
    mark_at_ms      INTEGER
) STRICT;`;

const COLUMNS = 'name, settings, keys, version, updated_at, dead_grant_code, dead_grant_at, lease_holder, lease_until_ms, mark_holder, mark_at_ms';

const UPDATE = `UPDATE credentials
   SET keys = ?, lease_holder = ?, lease_until_ms = ?, mark_holder = ?, mark_at_ms = ?,
       dead_grant_code = ?, dead_grant_at = ?, version = version + 1, updated_at = ?
 WHERE name = ? AND version = ?`;

const now = () => Math.floor(Date.now() / 1000);

/** A failure's name and code only: SQLite's messages may quote values. */
const why = (err) => `${err?.code ?? err?.name ?? 'error'}${err?.errcode !== undefined ? ` ${err.errstr ?? err.errcode}` : ''}`;

export class SqliteStore extends RecordStoreBase {
  #db;
  #statements = new Map();

  /**
   * Opens (creating it, mode 0600, if missing) the store at `path`, and
   * creates or migrates its schema.
   * @param {string} path
   * @param {{busyTimeoutMs?: number}} [options]
   */
  static async open(path, { busyTimeoutMs = BUSY_TIMEOUT_MS } = {}) {
    if (typeof path !== 'string' || path === '') throw new TypeError('a SQLite store needs a file path');
    let DatabaseSync;
    try {
      ({ DatabaseSync } = await import('node:sqlite'));
    } catch {
      throw new StoreError(`this Node.js (${process.version}) has no node:sqlite: use Node >= 22.13`);
    }
    try {
      // Tokens live here: the file (and so its -wal and -shm, which SQLite
      // creates with the same mode) is the owner's alone.
      closeSync(openSync(path, 'a', 0o600));
    } catch (err) {
      throw new StoreError(`cannot create the store file (${err.code ?? err.name})`);
    }
    let db;
    try {
      db = new DatabaseSync(path);
      db.exec(`PRAGMA busy_timeout = ${Number(busyTimeoutMs)}`);
      await switchToWal(db, Number(busyTimeoutMs));
      db.exec('PRAGMA synchronous = FULL');
      migrate(db);
    } catch (err) {
      db?.close();
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot open the SQLite store (${why(err)})`);
    }
    return new SqliteStore(db);
  }

  constructor(db) {
    super();
    this.#db = db;
  }

  async read(name) {
    checkName(name);
    let row;
    try {
      row = this.#prepare(`SELECT ${COLUMNS} FROM credentials WHERE name = ?`).get(name);
    } catch (err) {
      throw new StoreError(`cannot read the credential (${why(err)})`);
    }
    return row ? fromRow(row) : undefined;
  }

  async write(name, expectedVersion, data) {
    checkName(name);
    const c = columnsOf(data);
    let committing = false;
    try {
      this.#db.exec('BEGIN IMMEDIATE');
      try {
        const { changes } = this.#prepare(UPDATE).run(
          c.keys, c.lease_holder, c.lease_until_ms, c.mark_holder, c.mark_at_ms,
          c.dead_grant_code, c.dead_grant_at, now(), name, Number(expectedVersion),
        );
        const exists = changes === 1 || this.#prepare('SELECT 1 AS one FROM credentials WHERE name = ?').get(name) !== undefined;
        committing = true;
        this.#db.exec('COMMIT');
        if (!exists) throw new StoreError(`no credential named ${JSON.stringify(name)}`);
        return changes === 1 ? Number(expectedVersion) + 1 : false;
      } catch (err) {
        if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      if (err instanceof StoreError) throw err;
      // A COMMIT that failed may still have reached the WAL (recovered later).
      if (committing) throw new WriteUnknown(`the commit failed (${why(err)})`);
      throw new StoreError(`the write failed (${why(err)})`);
    }
  }

  async insert(name, settings, keys) {
    const c = columnsOf(recordOf(keys));
    try {
      const { changes } = this.#prepare(
        'INSERT INTO credentials (name, settings, keys, version, updated_at) VALUES (?, ?, ?, 0, ?) ON CONFLICT (name) DO NOTHING',
      ).run(name, settings, c.keys, now());
      return changes === 1;
    } catch (err) {
      throw new StoreError(`cannot create the credential (${why(err)})`);
    }
  }

  async rows(only) {
    try {
      const rows = only === undefined
        ? this.#prepare(`SELECT ${COLUMNS} FROM credentials ORDER BY name`).all()
        : this.#prepare(`SELECT ${COLUMNS} FROM credentials WHERE name = ?`).all(only);
      return rows.map((r) => ({ name: r.name, settings: r.settings, updatedAt: Number(r.updated_at), ...fromRow(r) }));
    } catch (err) {
      throw new StoreError(`cannot list the credentials (${why(err)})`);
    }
  }

  close() {
    this.#db.close();
  }

  #prepare(sql) {
    let s = this.#statements.get(sql);
    if (!s) this.#statements.set(sql, (s = this.#db.prepare(sql)));
    return s;
  }
}

/**
 * `PRAGMA journal_mode = WAL`, waiting up to the busy timeout for another
 * connection's lock as every other statement does.
 *
 * A new store (or one in rollback mode) is switched by a transaction that
 * reads the file (a SHARED lock) and then writes its header (RESERVED, then
 * EXCLUSIVE). SQLite calls no busy handler for that upgrade from a read, so
 * of several processes opening a new store at once (a fleet's first start)
 * the one that found another's lock got SQLITE_BUSY at once, "database is
 * locked", whatever the busy timeout. Its statement ends and its SHARED lock
 * goes, so the other switches; a retry then finds WAL set (no write, no
 * upgrade). Retried with a short backoff (1 ms doubling to 50 ms, jittered by
 * pid), the last try at the deadline. The other statements at open wait by
 * themselves: `synchronous` touches no file, the `user_version` read takes
 * its lock through the busy handler, and the migration is `BEGIN IMMEDIATE`.
 * @param {import('node:sqlite').DatabaseSync} db
 * @param {number} busyTimeoutMs
 */
async function switchToWal(db, busyTimeoutMs) {
  const deadline = Date.now() + Math.max(0, busyTimeoutMs || 0);
  let delay = 1;
  // Processes started together should not retry in step.
  const jitter = (process.pid % 997) / 1000;
  for (;;) {
    try {
      db.exec('PRAGMA journal_mode = WAL');
      return;
    } catch (err) {
      const left = deadline - Date.now();
      // SQLITE_BUSY (5), or an extended code of it.
      if (((err?.errcode ?? 0) & 0xff) !== 5 || left <= 0) throw err;
      await new Promise((resolve) => { setTimeout(resolve, Math.min(delay + jitter, left)); });
      delay = Math.min(delay * 2, 50);
    }
  }
}

/**
 * Creates the schema, or brings a 0.2 store to version 3, in one IMMEDIATE
 * transaction (so processes opening the file at once do it once).
 */
function migrate(db) {
  const version = () => db.prepare('PRAGMA user_version').get().user_version;
  if (version() === SCHEMA_VERSION) return;
  db.exec('BEGIN IMMEDIATE');
  try {
    const found = version();
    if (found > SCHEMA_VERSION) {
      throw new StoreError(`the store's schema version is ${found}, newer than this host knows (${SCHEMA_VERSION}): upgrade @rekey/node`);
    }
    if (found < SCHEMA_VERSION) {
      const columns = new Set(db.prepare('PRAGMA table_info(credentials)').all().map((c) => c.name));
      if (columns.size === 0) {
        db.exec(CREATE);
      } else {
        // A 0.2 store: the lease and mark move onto the record. A refresh in
        // doubt stays in doubt; a 0.2 lease is at most a TTL old: dropped.
        for (const [col, type] of [['dead_grant_code', 'TEXT'], ['dead_grant_at', 'INTEGER'], ['lease_holder', 'TEXT'],
          ['lease_until_ms', 'INTEGER'], ['mark_holder', 'TEXT'], ['mark_at_ms', 'INTEGER']]) {
          if (!columns.has(col)) db.exec(`ALTER TABLE credentials ADD COLUMN ${col} ${type}`);
        }
        if (columns.has('refresh_in_doubt')) {
          db.exec("UPDATE credentials SET mark_holder = 'migrated-0.2', mark_at_ms = updated_at * 1000 WHERE refresh_in_doubt <> 0");
          db.exec('ALTER TABLE credentials DROP COLUMN refresh_in_doubt');
        }
        db.exec('DROP TABLE IF EXISTS leases');
      }
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    }
    db.exec('COMMIT');
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}
