// The record-store conformance suite (docs/record-store.md), run against each
// backend: memory, SQLite (real files) and PostgreSQL (a throwaway cluster on
// loopback); then the schema's creation and its migration from 0.2.

import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MemoryStore, PostgresStore, SqliteStore, StoreError, WriteUnknown } from '../src/index.js';
import { eventually } from './support/harness.mjs';
import { CallbackStore } from '../src/stores/memory.js';
import { spawnLines } from './support/lines.mjs';
import { postgresAvailable, sql, startPostgres } from './support/postgres.mjs';

const CHILD = fileURLToPath(new URL('./support/store-child.mjs', import.meta.url));
const SETTINGS = { tokenUrl: 'https://idp.example/token', clientId: 'app', apiOrigins: ['https://api.example.com'] };
const empty = { keys: null, lease: null, refreshMark: null, deadGrant: null };
const full = (n) => ({
  keys: JSON.stringify({ access_token: `at-${n}`, refresh_token: `rt-${n}`, expires_at: 1_900_000_000 + n }),
  lease: { holder: `holder-${n}`, untilMs: 1_800_000_000_000 + n },
  refreshMark: { holder: `holder-${n}`, atMs: 1_700_000_000_000 + n },
  deadGrant: { code: 'invalid_grant', at: 1_700_000_000 + n },
});

let tmp;
before(async () => { tmp = await mkdtemp(join(tmpdir(), 'rekey-node-stores-')); });
after(() => rm(tmp, { recursive: true, force: true }));

let pgCluster;
after(() => pgCluster?.stop());
async function pgUrl() {
  pgCluster ??= await startPostgres();
  return pgCluster.database();
}

/** Opens the backend `kind` at `location` (a second call: a second connection). */
const opener = {
  memory: () => { const s = new MemoryStore(); return { open: async () => s, location: null }; },
  sqlite: () => { const path = join(tmp, `s-${Math.random().toString(36).slice(2)}.db`); return { open: () => SqliteStore.open(path), location: path }; },
  postgres: async () => { const url = await pgUrl(); return { open: () => PostgresStore.connect(url), location: url }; },
};

for (const kind of ['memory', 'sqlite', 'postgres']) {
  describe(`record store conformance: ${kind}`, () => {
    const withStore = (body) => async (t) => {
      if (kind === 'postgres' && !postgresAvailable(t)) return;
      const backend = await opener[kind]();
      const store = await backend.open();
      try {
        await body(store, backend);
      } finally {
        await store.close();
      }
    };

    test('a missing credential: read is undefined, a write fails and creates nothing', withStore(async (store) => {
      assert.equal(await store.read('nope'), undefined);
      await assert.rejects(store.write('nope', 0, full(1)), (e) => e instanceof StoreError && /no credential named "nope"/.test(e.message));
      assert.equal(await store.read('nope'), undefined);
      assert.deepEqual(await store.list(), []);
    }));

    test('create: version 0, nothing but the keys; a second create changes nothing', withStore(async (store) => {
      assert.equal(await store.create('crm', { settings: SETTINGS, keys: { access_token: 'a' } }), true);
      assert.deepEqual(await store.read('crm'), { version: 0, data: { ...empty, keys: '{"access_token":"a"}' } });
      assert.equal(await store.create('crm', { settings: SETTINGS, keys: { access_token: 'b' } }), false);
      assert.equal(await store.loadKeys('crm'), '{"access_token":"a"}');
      const shown = await store.show('crm');
      assert.equal(shown.settings.token_url, SETTINGS.tokenUrl, 'the settings column, in the Rust host format');
      assert.equal(shown.settings.client_auth, 'basic');
      assert.equal(shown.settings.strategy, 'on-auth-failure');
      assert.deepEqual(shown.keyFields, ['access_token']);
    }));

    test('conditional write: the expected version wins once, a stale one conflicts and changes nothing', withStore(async (store) => {
      await store.create('crm', { settings: SETTINGS });
      assert.equal(await store.write('crm', 0, full(1)), 1);
      assert.equal(await store.write('crm', 0, full(2)), false, 'conflict');
      assert.deepEqual(await store.read('crm'), { version: 1, data: full(1) });
      assert.equal(await store.write('crm', 7, full(3)), false, 'a version from the future conflicts too');
    }));

    test('the version grows by one with every write', withStore(async (store) => {
      await store.create('crm', { settings: SETTINGS });
      for (let v = 0; v < 5; v += 1) assert.equal(await store.write('crm', v, full(v)), v + 1);
      assert.equal((await store.read('crm')).version, 5);
      // Operator writes count too.
      assert.equal(await store.clearRefreshMark('crm'), 6);
      assert.deepEqual((await store.read('crm')).data, { ...full(4), refreshMark: null });
      assert.equal(await store.forgetDeadGrant('crm'), 7);
      assert.equal(await store.putKeys('crm', { access_token: 'new' }), 8);
      assert.deepEqual((await store.read('crm')).data, { ...empty, keys: '{"access_token":"new"}' }, 'new keys end lease, mark and dead grant');
    }));

    test('every field round-trips, NULLs included', withStore(async (store) => {
      await store.create('crm', { settings: SETTINGS });
      const cases = [full(1), empty, { ...empty, lease: { holder: 'h', untilMs: 2 ** 52 } }, { ...empty, refreshMark: { holder: 'm', atMs: 0 } },
        { ...empty, deadGrant: { code: 'invalid_grant', at: 1 } }, { ...full(2), keys: '{"k":"ü ✓ \\u0000"}' }];
      for (const [i, data] of cases.entries()) {
        assert.equal(await store.write('crm', i, data), i + 1);
        assert.deepEqual((await store.read('crm')).data, data, `case ${i}`);
      }
    }));

    test('durable: a second connection sees a write once it returned', withStore(async (store, backend) => {
      await store.create('crm', { settings: SETTINGS });
      await store.write('crm', 0, full(1));
      const other = await backend.open();
      try {
        assert.deepEqual(await other.read('crm'), { version: 1, data: full(1) });
        assert.equal(await other.write('crm', 1, full(2)), 2);
        assert.deepEqual(await store.read('crm'), { version: 2, data: full(2) });
      } finally {
        if (other !== store) await other.close();
      }
    }));

    test('concurrent writers on one expected version: exactly one wins', withStore(async (store, backend) => {
      await store.create('crm', { settings: SETTINGS });
      await store.write('crm', 0, full(0));
      let answers;
      if (backend.location === null) {
        answers = (await Promise.all([1, 2, 3, 4, 5, 6].map((n) => store.write('crm', 1, full(n)))))
          .map((v, i) => (v === false ? 'CONFLICT' : `OK ${v} ${i + 1}`));
      } else {
        // Separate processes, each with its own connection, all told at once.
        const children = [1, 2, 3, 4].map(() => spawnLines(process.execPath, [CHILD, backend.location, 'crm']));
        try {
          await Promise.all(children.map((c) => c.expect('READY')));
          for (const [i, c] of children.entries()) c.send(`WRITE 1 ${JSON.stringify(full(i + 1))}`);
          answers = await Promise.all(children.map(async (c, i) => {
            const a = await c.next();
            return a.startsWith('OK') ? `${a} ${i + 1}` : a;
          }));
        } finally {
          await Promise.all(children.map((c) => c.end()));
        }
      }
      const wins = answers.filter((a) => a.startsWith('OK 2'));
      assert.equal(wins.length, 1, `answers: ${answers.join(', ')}`);
      assert.equal(answers.filter((a) => a === 'CONFLICT').length, answers.length - 1, `answers: ${answers.join(', ')}`);
      const winner = Number(wins[0].split(' ')[2]);
      assert.deepEqual(await store.read('crm'), { version: 2, data: full(winner) }, "the winner's record is stored");
    }));
  });
}

test('SQLite: the file is created 0600 in WAL mode with schema version 3', async () => {
  const path = join(tmp, 'mode.db');
  const store = await SqliteStore.open(path);
  await store.create('crm', { settings: SETTINGS, keys: { access_token: 'a' } });
  store.close();
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  const { DatabaseSync } = await import('node:sqlite');
  const db = new DatabaseSync(path);
  try {
    assert.equal(db.prepare('PRAGMA journal_mode').get().journal_mode, 'wal');
    assert.equal(db.prepare('PRAGMA user_version').get().user_version, 3);
    const columns = db.prepare('PRAGMA table_info(credentials)').all().map((c) => c.name);
    assert.deepEqual(columns, ['name', 'settings', 'keys', 'version', 'updated_at', 'dead_grant_code', 'dead_grant_at',
      'lease_holder', 'lease_until_ms', 'mark_holder', 'mark_at_ms']);
  } finally {
    db.close();
  }
});

// The 0.2 schemas, as the 0.2 Rust host created them (git show pre-0.3:host/src/store/).
const SQLITE_02 = `
CREATE TABLE credentials (name TEXT PRIMARY KEY NOT NULL, settings TEXT NOT NULL, keys TEXT,
  version INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL, refresh_in_doubt INTEGER NOT NULL DEFAULT 0,
  dead_grant_code TEXT, dead_grant_at INTEGER) STRICT;
CREATE TABLE leases (name TEXT PRIMARY KEY NOT NULL, holder TEXT NOT NULL, expires_at_ms INTEGER NOT NULL) STRICT;
INSERT INTO credentials VALUES ('doubt', '{}', '{"access_token":"a"}', 4, 1700000000, 1, NULL, NULL);
INSERT INTO credentials VALUES ('fine', '{}', '{"access_token":"b"}', 2, 1700000001, 0, 'invalid_grant', 1700000002);
INSERT INTO leases VALUES ('doubt', 'old-holder', 1700000000000);`;

const PG_02 = `
CREATE TABLE rekey_credentials (name TEXT PRIMARY KEY, settings TEXT NOT NULL, keys TEXT,
  version BIGINT NOT NULL DEFAULT 0, updated_at BIGINT NOT NULL, refresh_in_doubt BOOLEAN NOT NULL DEFAULT FALSE,
  dead_grant_code TEXT, dead_grant_at BIGINT);
CREATE TABLE rekey_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
INSERT INTO rekey_credentials VALUES ('doubt', '{}', '{"access_token":"a"}', 4, 1700000000, TRUE, NULL, NULL);
INSERT INTO rekey_credentials VALUES ('fine', '{}', '{"access_token":"b"}', 2, 1700000001, FALSE, 'invalid_grant', 1700000002);
INSERT INTO rekey_leases VALUES ('doubt', 'old-holder', now());`;

async function assertMigrated(store) {
  assert.deepEqual(await store.read('doubt'), {
    version: 4,
    data: { keys: '{"access_token":"a"}', lease: null, refreshMark: { holder: 'migrated-0.2', atMs: 1_700_000_000_000 }, deadGrant: null },
  }, 'a 0.2 refresh in doubt stays in doubt');
  assert.deepEqual(await store.read('fine'), {
    version: 2,
    data: { keys: '{"access_token":"b"}', lease: null, refreshMark: null, deadGrant: { code: 'invalid_grant', at: 1_700_000_002 } },
  });
  assert.equal(await store.write('fine', 2, full(1)), 3, 'writable after migration');
}

test('SQLite: a 0.2 store is migrated to 3 once; a newer one is refused', async () => {
  const { DatabaseSync } = await import('node:sqlite');
  const path = join(tmp, 'v02.db');
  const db = new DatabaseSync(path);
  db.exec(SQLITE_02);
  db.close();
  // Several processes open it at once: one migrates, all see version 3.
  const children = [1, 2, 3].map(() => spawnLines(process.execPath, [CHILD, path, 'doubt']));
  await Promise.all(children.map((c) => c.expect('READY')));
  await Promise.all(children.map((c) => c.end()));
  const store = await SqliteStore.open(path);
  try {
    await assertMigrated(store);
  } finally {
    store.close();
  }
  const check = new DatabaseSync(path);
  try {
    assert.equal(check.prepare('PRAGMA user_version').get().user_version, 3);
    assert.equal(check.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'leases'").get().n, 0, 'leases table dropped');
    assert.ok(!check.prepare('PRAGMA table_info(credentials)').all().some((c) => c.name === 'refresh_in_doubt'));
    check.exec('PRAGMA user_version = 4');
  } finally {
    check.close();
  }
  await assert.rejects(SqliteStore.open(path), /schema version is 4, newer than this host knows/);
});

test('PostgreSQL: a 0.2 store is migrated to 3 once, under the advisory lock; a newer one is refused', async (t) => {
  if (!postgresAvailable(t)) return;
  const url = await pgUrl();
  await sql(url, PG_02);
  // Several workers start at once: the lock lets one migrate.
  const stores = await Promise.all([1, 2, 3, 4].map(() => PostgresStore.connect(url)));
  try {
    await assertMigrated(stores[0]);
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
  assert.deepEqual((await sql(url, 'SELECT version FROM rekey_schema')).rows, [{ version: 3 }]);
  assert.equal((await sql(url, "SELECT to_regclass('rekey_leases') AS t")).rows[0].t, null, 'leases table dropped');
  const cols = (await sql(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'rekey_credentials'")).rows.map((r) => r.column_name);
  assert.ok(!cols.includes('refresh_in_doubt'));
  assert.ok(['lease_holder', 'lease_until_ms', 'mark_holder', 'mark_at_ms'].every((c) => cols.includes(c)));
  await sql(url, 'UPDATE rekey_schema SET version = 4');
  await assert.rejects(PostgresStore.connect(url), /schema version is 4, newer than this host knows/);
});

test('the callback style: the callback runs inside the write, before it returns; its failure writes nothing', async () => {
  const store = new CallbackStore();
  await store.seed('crm', '{"access_token":"a","refresh_token":"r"}');
  const seen = [];
  let fail = false;
  const writer = store.forCall(async (keys) => {
    await new Promise((r) => setTimeout(r, 5));
    if (fail) throw new Error('disk full, and the keys were {"access_token":"secret"}');
    seen.push(keys.get('access_token'));
  });
  // Racing writers: one wins, its callback ran once, before the write returned.
  const answers = await Promise.all([1, 2, 3].map((n) => writer.write('crm', 0, { ...empty, keys: `{"access_token":"a${n}"}` })));
  assert.deepEqual(answers.filter((v) => v !== false), [1]);
  assert.equal(seen.length, 1);
  assert.equal(JSON.parse((await store.read('crm')).data.keys).access_token, seen[0]);
  // A write that leaves the keys alone does not call back.
  assert.equal(await writer.write('crm', 1, { ...(await store.read('crm')).data, lease: { holder: 'h', untilMs: 1 } }), 2);
  assert.equal(seen.length, 1);
  fail = true;
  await assert.rejects(writer.write('crm', 2, { ...empty, keys: '{"access_token":"b"}' }), (e) => e instanceof StoreError && !e.message.includes('secret'));
  assert.equal((await store.read('crm')).version, 2, 'nothing written');
  // Stale keys a caller passes again never replace the record; new ones do.
  await store.seed('crm', '{"access_token":"a","refresh_token":"r"}');
  assert.equal((await store.read('crm')).version, 2);
  await store.seed('crm', '{"access_token":"fresh","refresh_token":"r2"}');
  assert.deepEqual(await store.read('crm'), { version: 3, data: { ...empty, keys: '{"access_token":"fresh","refresh_token":"r2"}' } });
});

test('PostgreSQL: a write whose session ends mid-statement is unknown; nothing is lost and the store recovers', async (t) => {
  if (!postgresAvailable(t)) return;
  const url = await pgUrl();
  const store = await PostgresStore.connect(url, { max: 1 });
  const pg = (await import('pg')).default;
  const locker = new pg.Client({ connectionString: url });
  try {
    await store.create('crm', { settings: SETTINGS });
    await locker.connect();
    await locker.query('BEGIN');
    await locker.query("SELECT 1 FROM rekey_credentials WHERE name = 'crm' FOR UPDATE");
    const writing = store.write('crm', 0, full(1));
    writing.catch(() => {});
    // The writer's session, once it waits on the row lock, is terminated (as a failover or an admin would).
    const pid = await eventually(async () => (await sql(url, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")).rows[0]?.pid,
      { what: 'the write to wait on the lock' });
    await sql(url, 'SELECT pg_terminate_backend($1)', [pid]);
    await assert.rejects(writing, (e) => e instanceof WriteUnknown && !e.message.includes('postgres://'));
    await locker.query('ROLLBACK');
    assert.deepEqual(await store.read('crm'), { version: 0, data: empty }, 'the terminated write did not land');
    assert.equal(await store.write('crm', 0, full(1)), 1, 'a new connection serves the next write');
  } finally {
    await locker.end().catch(() => {});
    await store.close();
  }
});
