// The fleet: 4 Node worker processes (test/support/fleet-worker.mjs) share one
// credential through one record store — a SQLite file, then a PostgreSQL
// database — against the testkit provider with rotation and strict reuse
// detection. Each expiry is made at once with the provider's
// expire-access-tokens knob, then every worker calls. Verdicts count events:
// no reused refresh token, no invalid_grant, exactly one refresh per expiry,
// every call answered 200, and the store ends on the provider's live refresh
// token with no lease or mark.
//
// No verdict waits on a clock: the tokens live 10 minutes, so every expiry is
// one the test made (no natural expiry can fall inside a round however slow
// the machine), and the next expiry is made as soon as a round has ended: the
// component refreshes on a 401 unless the API already rejected that token set
// right after it was obtained (flow.rs rejected_before), and every call here
// is answered 200, so there is no such evidence.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PostgresStore, SqliteStore } from '../src/index.js';
import { imported } from './support/harness.mjs';
import { spawnLines } from './support/lines.mjs';
import { postgresAvailable, startPostgres } from './support/postgres.mjs';
import { startTestkit } from './support/testkit.mjs';

const WORKER = fileURLToPath(new URL('./support/fleet-worker.mjs', import.meta.url));
const WORKERS = 4;
const EXPIRIES = 6;
const ACCESS_TTL_MS = 600_000;

const cleanups = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function fleet(t, location, open) {
  const provider = await startTestkit(['--access-ttl-ms', String(ACCESS_TTL_MS)]);
  cleanups.push(() => provider.stop());
  const store = await open();
  cleanups.push(() => store.close());
  await store.create('shared', { settings: provider.settings(), keys: imported(await provider.authorize()) });

  const env = {
    ...process.env,
    REKEY_FLEET_TOKEN_URL: provider.token_url,
    REKEY_FLEET_CLIENT_ID: provider.client_id,
    REKEY_FLEET_CLIENT_SECRET: provider.client_secret,
    REKEY_FLEET_LEASE_TTL_MS: '10000',
  };
  const workers = Array.from({ length: WORKERS }, () => spawnLines(process.execPath, [WORKER, location, 'shared', provider.api('fleet')], { env }));
  cleanups.push(() => Promise.all(workers.map((w) => w.kill())));
  await Promise.all(workers.map((w) => w.expect('READY')));

  const round = async () => {
    for (const w of workers) w.send('CALL');
    return Promise.all(workers.map((w) => w.next()));
  };
  assert.deepEqual(await round(), Array(WORKERS).fill('OK 200'), 'warm: the stored token works');
  const refreshes = [];
  for (let e = 1; e <= EXPIRIES; e += 1) {
    const before = (await provider.stats()).refreshes_granted;
    await provider.expireAccessTokens();
    assert.deepEqual(await round(), Array(WORKERS).fill('OK 200'), `expiry ${e}: every worker's call succeeds`);
    refreshes.push((await provider.stats()).refreshes_granted - before);
  }
  await Promise.all(workers.map((w) => w.end()));
  for (const w of workers) assert.equal((await w.exited).code, 0, 'EOF ends a worker cleanly');

  const stats = await provider.stats();
  const stored = await store.read('shared');
  const keys = JSON.parse(stored.data.keys);
  const figures = {
    store: location.startsWith('postgres') ? 'postgresql' : 'sqlite',
    workers: WORKERS,
    expiries: EXPIRIES,
    calls: WORKERS * (EXPIRIES + 1),
    refreshes_per_expiry: refreshes,
    refreshes_granted: stats.refreshes_granted,
    token_calls: stats.token_calls,
    reused_refresh_tokens: stats.reused_refresh_tokens,
    invalid_grant: stats.invalid_grant,
    api_calls: stats.api_calls,
    api_unauthorized: stats.api_unauthorized,
    record_version: stored.version,
  };
  console.log(`fleet figures: ${JSON.stringify(figures)}`);
  t.diagnostic(`fleet figures: ${JSON.stringify(figures)}`);

  assert.equal(stats.reused_refresh_tokens, 0, 'no refresh token was spent twice');
  assert.equal(stats.invalid_grant, 0);
  assert.deepEqual(refreshes, Array(EXPIRIES).fill(1), 'one refresh per expiry, however many workers saw it');
  assert.equal(stats.token_calls, EXPIRIES, 'no token request beyond those refreshes');
  assert.equal(await provider.refreshTokenLive(keys.refresh_token), true, "the store holds the provider's live refresh token");
  assert.deepEqual([stored.data.lease, stored.data.refreshMark, stored.data.deadGrant], [null, null, null]);
}

test('fleet: 4 Node worker processes share one credential in one SQLite file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'rekey-node-fleet-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'fleet.db');
  await fleet(t, path, () => SqliteStore.open(path));
});

test('fleet: 4 Node worker processes share one credential in one PostgreSQL database', async (t) => {
  if (!postgresAvailable(t)) return;
  const pg = await startPostgres();
  cleanups.push(() => pg.stop());
  const url = await pg.database();
  await fleet(t, url, () => PostgresStore.connect(url));
});

test('fleet worker: HOLD takes the lease through the store; a dead holder delays a refresh by its TTL, never blocks it; errors by WIT case', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'rekey-node-fleet-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'hold.db');
  const provider = await startTestkit(['--access-ttl-ms', String(ACCESS_TTL_MS)]);
  cleanups.push(() => provider.stop());
  const store = await SqliteStore.open(path);
  cleanups.push(() => store.close());
  await store.create('shared', { settings: provider.settings(), keys: imported(await provider.authorize()) });
  const env = {
    ...process.env,
    REKEY_FLEET_TOKEN_URL: provider.token_url,
    REKEY_FLEET_CLIENT_ID: provider.client_id,
    REKEY_FLEET_CLIENT_SECRET: provider.client_secret,
    REKEY_FLEET_LEASE_TTL_MS: '1500',
  };
  const start = async () => {
    const w = spawnLines(process.execPath, [WORKER, path, 'shared', provider.api('hold')], { env });
    cleanups.push(() => w.kill());
    await w.expect('READY');
    return w;
  };
  const holder = await start();
  holder.send('HOLD');
  await holder.expect('HELD');
  const held = await store.read('shared');
  assert.equal(held.data.lease.holder, `hold-${holder.child.pid}`);
  assert.equal(held.data.refreshMark, null);
  await holder.kill(); // dies holding the lease, before any mark: nothing is in doubt

  await provider.expireAccessTokens();
  const caller = await start();
  caller.send('CALL');
  assert.equal(await caller.next(), 'OK 200', 'the lease ran out and the call refreshed');
  assert.ok(Date.now() >= held.data.lease.untilMs, 'not before the dead holder\'s lease ran out');
  assert.equal((await provider.stats()).refreshes_granted, 1);

  await provider.revokeAll();
  await provider.expireAccessTokens();
  caller.send('CALL');
  assert.equal(await caller.next(), 'ERR reauthorization-required');
  assert.equal((await caller.end()).code, 0);
});
