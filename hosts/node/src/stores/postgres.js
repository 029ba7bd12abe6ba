// The record store in PostgreSQL, through `pg` (an optional peer
// dependency: install it to use this store), with the schema every rekey
// host uses (docs/record-store.md): table `rekey_credentials`, schema
// version 3 in `rekey_schema`, created or migrated in one transaction under
// pg_advisory_xact_lock(7301). A write is one autocommit UPDATE: committed
// (durable) when its answer arrives. For fleets on many machines.
//
// Nothing here prints the connection string (it may hold a password), a
// value, or the server's message text (it may quote values): failures are
// named by SQLSTATE or error code.

import { StoreError } from '../errors.js';
import { columnsOf, fromRow, recordOf } from '../record.js';
import { RecordStoreBase, WriteUnknown, checkName } from './base.js';

export const SCHEMA_VERSION = 3;
const LOCK_KEY = 7301;

const CREATE = `
CREATE TABLE IF NOT EXISTS rekey_credentials (
    name            TEXT PRIMARY KEY,
    settings        TEXT NOT NULL,
    keys            TEXT,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    dead_grant_code TEXT,
    dead_grant_at   BIGINT,
    lease_holder    TEXT,
    lease_until_ms  BIGINT,
    mark_holder     TEXT,
    mark_at_ms      BIGINT
);
CREATE TABLE IF NOT EXISTS rekey_schema (version INTEGER NOT NULL);`;

const MIGRATE_02 = `
ALTER TABLE rekey_credentials
    ADD COLUMN IF NOT EXISTS dead_grant_code TEXT,
    ADD COLUMN IF NOT EXISTS dead_grant_at BIGINT,
    ADD COLUMN IF NOT EXISTS lease_holder TEXT,
    ADD COLUMN IF NOT EXISTS lease_until_ms BIGINT,
    ADD COLUMN IF NOT EXISTS mark_holder TEXT,
    ADD COLUMN IF NOT EXISTS mark_at_ms BIGINT;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'rekey_credentials'
                 AND column_name = 'refresh_in_doubt') THEN
        UPDATE rekey_credentials SET mark_holder = 'migrated-0.2', mark_at_ms = updated_at * 1000
         WHERE refresh_in_doubt;
        ALTER TABLE rekey_credentials DROP COLUMN refresh_in_doubt;
    END IF;
END
$$;
DROP TABLE IF EXISTS rekey_leases;`;

const COLUMNS = 'name, settings, keys, version, updated_at, dead_grant_code, dead_grant_at, lease_holder, lease_until_ms, mark_holder, mark_at_ms';

const UPDATE = `UPDATE rekey_credentials
   SET keys = $1, lease_holder = $2, lease_until_ms = $3, mark_holder = $4, mark_at_ms = $5,
       dead_grant_code = $6, dead_grant_at = $7, version = version + 1, updated_at = $8
 WHERE name = $9 AND version = $10`;

const now = () => Math.floor(Date.now() / 1000);

/** SQLSTATE (the server answered) or the client's error code; never message text. */
const why = (err) => err?.code ?? err?.name ?? 'error';
/**
 * The server answered with an ERROR: the statement (and its transaction) did
 * not commit. A FATAL ends the session (e.g. a termination) at a point the
 * client cannot see, so, like a broken connection, its outcome is unknown.
 */
const serverAnswered = (err) => typeof err?.code === 'string' && /^[0-9A-Z]{5}$/.test(err.code) && err.severity === 'ERROR';

export class PostgresStore extends RecordStoreBase {
  #pool;

  /**
   * Connects (a small pool) and creates or migrates the schema.
   * @param {string | object} connection  a postgres:// URL, or pg's client config
   * @param {{max?: number, connectionTimeoutMillis?: number, statementTimeoutMs?: number}} [options]
   */
  static async connect(connection, { max = 4, connectionTimeoutMillis = 10_000, statementTimeoutMs = 30_000 } = {}) {
    let pg;
    try {
      pg = (await import('pg')).default;
    } catch {
      throw new StoreError("PostgresStore needs the 'pg' package: npm install pg");
    }
    const config = typeof connection === 'string' ? { connectionString: connection } : { ...connection };
    const pool = new pg.Pool({ ...config, max, connectionTimeoutMillis, statement_timeout: statementTimeoutMs });
    // An idle client's error (the server restarted) must not crash the process.
    pool.on('error', () => {});
    const store = new PostgresStore(pool);
    try {
      await store.#migrate();
    } catch (err) {
      await pool.end().catch(() => {});
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot set up the PostgreSQL store (${why(err)})`);
    }
    return store;
  }

  constructor(pool) {
    super();
    this.#pool = pool;
  }

  async read(name) {
    checkName(name);
    let result;
    try {
      result = await this.#pool.query(`SELECT ${COLUMNS} FROM rekey_credentials WHERE name = $1`, [name]);
    } catch (err) {
      throw new StoreError(`cannot read the credential (${why(err)})`);
    }
    return result.rows[0] ? fromRow(result.rows[0]) : undefined;
  }

  async write(name, expectedVersion, data) {
    checkName(name);
    const c = columnsOf(data);
    let client;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw new StoreError(`cannot connect to PostgreSQL (${why(err)})`);
    }
    let broken = false;
    try {
      const { rowCount } = await client.query(UPDATE, [
        c.keys, c.lease_holder, c.lease_until_ms, c.mark_holder, c.mark_at_ms,
        c.dead_grant_code, c.dead_grant_at, now(), name, Number(expectedVersion),
      ]);
      if (rowCount === 1) return Number(expectedVersion) + 1;
      const exists = await client.query('SELECT 1 FROM rekey_credentials WHERE name = $1', [name]);
      if (exists.rowCount === 0) throw new StoreError(`no credential named ${JSON.stringify(name)}`);
      return false;
    } catch (err) {
      if (err instanceof StoreError) throw err;
      if (serverAnswered(err)) throw new StoreError(`PostgreSQL refused the write (${why(err)})`);
      // The statement was sent and no answer came: it may have committed.
      broken = true;
      throw new WriteUnknown(`the connection failed mid-write (${why(err)})`);
    } finally {
      client.release(broken);
    }
  }

  async insert(name, settings, keys) {
    const c = columnsOf(recordOf(keys));
    try {
      const { rowCount } = await this.#pool.query(
        'INSERT INTO rekey_credentials (name, settings, keys, version, updated_at) VALUES ($1, $2, $3, 0, $4) ON CONFLICT (name) DO NOTHING',
        [name, settings, c.keys, now()],
      );
      return rowCount === 1;
    } catch (err) {
      throw new StoreError(`cannot create the credential (${why(err)})`);
    }
  }

  async rows(only) {
    try {
      const { rows } = only === undefined
        ? await this.#pool.query(`SELECT ${COLUMNS} FROM rekey_credentials ORDER BY name`)
        : await this.#pool.query(`SELECT ${COLUMNS} FROM rekey_credentials WHERE name = $1`, [only]);
      return rows.map((r) => ({ name: r.name, settings: r.settings, updatedAt: Number(r.updated_at), ...fromRow(r) }));
    } catch (err) {
      throw new StoreError(`cannot list the credentials (${why(err)})`);
    }
  }

  /** Closes the pool. */
  close() {
    return this.#pool.end();
  }

  async #migrate() {
    const client = await this.#pool.connect();
    try {
      // The common case, without the lock: a fleet starting at once does not queue.
      if (await schemaVersion(client) === SCHEMA_VERSION) return;
      await client.query('BEGIN');
      try {
        await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
        const found = await schemaVersion(client);
        if (found > SCHEMA_VERSION) {
          throw new StoreError(`the store's schema version is ${found}, newer than this host knows (${SCHEMA_VERSION}): upgrade @rekey/node`);
        }
        if (found < SCHEMA_VERSION) {
          const { rows } = await client.query("SELECT to_regclass('rekey_credentials') IS NOT NULL AS present");
          await client.query(rows[0].present ? `${MIGRATE_02}\n${CREATE}` : CREATE);
          await client.query('DELETE FROM rekey_schema');
          await client.query('INSERT INTO rekey_schema (version) VALUES ($1)', [SCHEMA_VERSION]);
        }
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      }
    } finally {
      client.release();
    }
  }
}

/** The recorded schema version; 0 when there is none (a new or a 0.2 store). */
async function schemaVersion(client) {
  const { rows } = await client.query("SELECT to_regclass('rekey_schema') IS NOT NULL AS present");
  if (!rows[0].present) return 0;
  const v = await client.query('SELECT max(version) AS version FROM rekey_schema');
  return Number(v.rows[0].version ?? 0);
}
