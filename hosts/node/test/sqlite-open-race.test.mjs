// Opening a new SQLite store while another connection holds its write lock.
// A new file's switch to WAL (`PRAGMA journal_mode = WAL`) reads the file and
// then writes its header; SQLite calls no busy handler for that upgrade, so
// of several processes creating one store at once one could fail at once with
// "database is locked", whatever the busy timeout. The store retries the
// switch itself until its busy timeout (the Rust host's f44833f).
//
// Verdicts are success or failure, never a duration: the lock is released
// from a timer, and a failure is only checked to come no sooner than the
// timeout.

import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, test } from 'node:test';
import { SqliteStore, StoreError } from '../src/index.js';
import { spawnLines } from './support/lines.mjs';

const SETTINGS = { tokenUrl: 'https://idp.example/token', clientId: 'app', apiOrigins: ['https://api.example.com'] };

let tmp;
before(async () => { tmp = await mkdtemp(join(tmpdir(), 'rekey-node-sqlite-open-')); });
after(() => rm(tmp, { recursive: true, force: true }));

/** A new, empty store file and another connection holding its write lock (not yet WAL). */
function newFileLocked(name) {
  const path = join(tmp, name);
  closeSync(openSync(path, 'wx', 0o600));
  const other = new DatabaseSync(path);
  // What another process holds in the middle of its own switch to WAL.
  other.exec('BEGIN IMMEDIATE');
  return { path, other };
}

test('a new store opens once another opener releases the write lock of its switch to WAL', async () => {
  const { path, other } = newFileLocked('released.db');
  const release = setTimeout(() => { other.exec('COMMIT'); }, 200);
  let store;
  try {
    store = await SqliteStore.open(path, { busyTimeoutMs: 10_000 });
  } finally {
    clearTimeout(release);
    if (other.isTransaction) other.exec('COMMIT');
    other.close();
  }
  try {
    assert.equal(await store.create('c', { settings: SETTINGS }), true);
    assert.deepEqual((await store.list()).map((c) => c.name), ['c']);
    const check = new DatabaseSync(path);
    assert.equal(check.prepare('PRAGMA journal_mode').get().journal_mode, 'wal');
    check.close();
  } finally {
    store.close();
  }
});

test('a new store whose write lock is held past the busy timeout fails with a StoreError, not before the timeout', async () => {
  const { path, other } = newFileLocked('held.db');
  const busyTimeoutMs = 300;
  const started = Date.now();
  let failure;
  try {
    const store = await SqliteStore.open(path, { busyTimeoutMs });
    store.close();
  } catch (err) {
    failure = err;
  } finally {
    other.exec('COMMIT');
    other.close();
  }
  const waited = Date.now() - started;
  assert.ok(failure instanceof StoreError, `opened, or failed otherwise: ${failure}`);
  assert.match(failure.message, /database is locked/);
  assert.ok(waited >= busyTimeoutMs, `failed after ${waited} ms, before the ${busyTimeoutMs} ms timeout`);
});

// Each child imports the store, says READY, and on `go` opens the store and
// creates its own credential: `OK` or `FAILED <message>`.
const CHILD = `
import { createInterface } from 'node:readline';
const { SqliteStore } = await import(process.argv[1]);
const [path, name] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
process.stdout.write('READY\\n');
for await (const line of lines) {
  if (line !== 'go') continue;
  try {
    const store = await SqliteStore.open(path);
    await store.create(name, { settings: ${JSON.stringify(SETTINGS)} });
    store.close();
    process.stdout.write('OK\\n');
  } catch (err) {
    process.stdout.write('FAILED ' + err.message + '\\n');
  }
  break;
}
lines.close();
`;

test('8 processes creating one new store at once all open it', async () => {
  const index = new URL('../src/index.js', import.meta.url).href;
  for (let round = 0; round < 5; round += 1) {
    const path = join(tmp, `fleet-${round}.db`);
    const children = Array.from({ length: 8 }, (_, i) => spawnLines(
      process.execPath,
      ['--no-warnings', '--input-type=module', '-e', CHILD, index, path, `c${i}`],
    ));
    try {
      for (const c of children) await c.expect('READY');
      for (const c of children) c.send('go'); // all ready, then all at once
      const answers = await Promise.all(children.map((c) => c.next()));
      assert.deepEqual(answers, answers.map(() => 'OK'), `round ${round}: ${JSON.stringify(answers)}`);
    } finally {
      await Promise.all(children.map((c) => c.end()));
    }
    const store = await SqliteStore.open(path);
    try {
      assert.deepEqual((await store.list()).map((c) => c.name), ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7']);
    } finally {
      store.close();
    }
  }
});
