// keepalive: exercising a refresh token that would die from disuse, through
// the real component (its `keepalive` export), real HTTP on loopback and the
// testkit provider (strict rotation: a reused refresh token revokes the
// grant). Counts are the provider's own stats. Runs in whichever engine
// REKEY_NODE_MODE picks (JSPI on Node 24, worker threads on Node 22 or forced).

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  InvalidRequest, InvalidSettings, NotAuthenticated, PostgresStore, ReauthorizationRequired, RekeyError, SqliteStore,
} from '../src/index.js';
import { imported, rekey, tempDir, tempStore } from './support/harness.mjs';
import { spawnLines } from './support/lines.mjs';
import { postgresAvailable, startPostgres } from './support/postgres.mjs';
import { startTestkit } from './support/testkit.mjs';

const WORKER = fileURLToPath(new URL('./support/keepalive-worker.mjs', import.meta.url));
const DAY = 24 * 3600;
const WEEK = 7 * DAY;
const now = () => Math.floor(Date.now() / 1000);

const cleanups = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function provider(args = []) {
  const p = await startTestkit(args);
  cleanups.push(() => p.stop());
  return p;
}

/** The growth of the provider's counters since `before`. */
async function counted(p, before) {
  const stats = await p.stats();
  const d = {};
  for (const [k, v] of Object.entries(stats)) if (typeof v === 'number') d[k] = v - (before[k] ?? 0);
  return d;
}

const keysOf = async (store, name) => JSON.parse((await store.read(name)).data.keys);

test('(1) a set obtained long ago is refreshed: one token request, no API request, the rotated refresh token stored and live; (2) right after, it is fresh and nothing is sent', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  const first = await p.authorize();
  // Obtained 30 days ago (the component's own stamp), kept alive weekly.
  await store.create('crm', { settings: p.settings(), keys: imported(first, { rekey_refreshed_at: now() - 30 * DAY }) });
  const events = [];

  let before = await p.stats();
  const outcome = await rk.keepalive({ credential: 'crm', store, settings: p.settings(), olderThanSecs: WEEK, onEvent: (e) => events.push(e) });
  assert.equal(outcome, 'refreshed');
  let d = await counted(p, before);
  assert.equal(d.token_calls, 1, 'one token request');
  assert.equal(d.refreshes_granted, 1);
  assert.equal(d.api_calls, 0, 'keepalive sends no API request');
  assert.deepEqual([d.reused_refresh_tokens, d.invalid_grant], [0, 0]);
  const keys = await keysOf(store, 'crm');
  assert.notEqual(keys.refresh_token, first.refresh_token, 'the provider rotated it');
  assert.equal(await p.refreshTokenLive(keys.refresh_token), true, "the stored refresh token is the provider's live one");
  assert.equal(await p.refreshTokenLive(first.refresh_token), false, 'the old one is spent');
  assert.ok(Math.abs(keys.rekey_refreshed_at - now()) <= 5, 'stamped now');
  const { data } = await store.read('crm');
  assert.deepEqual([data.lease, data.refreshMark, data.deadGrant], [null, null, null]);
  assert.deepEqual(events.filter((e) => e.type === 'http').map((e) => [e.exchange, e.status]), [['token-endpoint', 200]]);
  assert.ok(events.every((e) => e.credential === 'crm'));

  before = await p.stats();
  const version = (await store.read('crm')).version;
  assert.equal(await rk.keepalive({ credential: 'crm', store, settings: p.settings(), olderThanSecs: 3600 }), 'fresh');
  d = await counted(p, before);
  assert.deepEqual([d.token_calls, d.api_calls], [0, 0], 'nothing sent');
  assert.equal((await store.read('crm')).version, version, 'nothing written');
});

test('an imported set (no rekey_refreshed_at) is refreshed whatever the window; olderThanSecs 0 refreshes a set just obtained', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  await store.create('imported', { settings: p.settings(), keys: imported(await p.authorize()) });
  assert.equal((await keysOf(store, 'imported')).rekey_refreshed_at, undefined, 'undated as imported');
  const before = await p.stats();
  assert.equal(await rk.keepalive({ credential: 'imported', store, settings: p.settings(), olderThanSecs: 10n * 365n * BigInt(DAY) }), 'refreshed');
  assert.equal(await rk.keepalive({ credential: 'imported', store, settings: p.settings(), olderThanSecs: 0 }), 'refreshed');
  const d = await counted(p, before);
  assert.deepEqual([d.refreshes_granted, d.token_calls, d.api_calls, d.reused_refresh_tokens], [2, 2, 0, 0]);
  assert.equal(await p.refreshTokenLive((await keysOf(store, 'imported')).refresh_token), true);
});

test('a refresh token the provider says expires within the window is refreshed once half its stated life is gone', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  // Just refreshed, stated to live 3 days: within a week, but another
  // machine's cron a minute later leaves it alone.
  await store.create('young', { settings: p.settings(), keys: imported(await p.authorize(), { rekey_refreshed_at: now(), refresh_expires_at: now() + 3 * DAY }) });
  // Refreshed 4 days ago, its refresh token ends in 3: half its life gone.
  await store.create('dying', { settings: p.settings(), keys: imported(await p.authorize(), { rekey_refreshed_at: now() - 4 * DAY, refresh_expires_at: now() + 3 * DAY }) });
  const before = await p.stats();
  assert.equal(await rk.keepalive({ credential: 'young', store, settings: p.settings(), olderThanSecs: DAY }), 'fresh', 'not within a day');
  assert.equal(await rk.keepalive({ credential: 'young', store, settings: p.settings(), olderThanSecs: WEEK }), 'fresh', 'just refreshed');
  assert.equal((await counted(p, before)).token_calls, 0);
  assert.equal(await rk.keepalive({ credential: 'dying', store, settings: p.settings(), olderThanSecs: WEEK }), 'refreshed', 'within a week, half its life gone');
  assert.equal((await counted(p, before)).token_calls, 1);
});

test('the callback style: keys with onUpdateKeys, the refreshed set handed over before keepalive resolves', async () => {
  const rk = await rekey();
  const p = await provider();
  const first = await p.authorize();
  const saved = [];
  const outcome = await rk.keepalive({
    settings: p.settings(),
    keys: imported(first, { rekey_refreshed_at: now() - 30 * DAY }),
    onUpdateKeys: (keys) => { saved.push(JSON.parse(keys.toJSONString())); },
    olderThanSecs: WEEK,
  });
  assert.equal(outcome, 'refreshed');
  assert.equal(saved.length, 1);
  assert.notEqual(saved[0].refresh_token, first.refresh_token);
  assert.equal(await p.refreshTokenLive(saved[0].refresh_token), true);
});

test('(4) client-credentials settings: nothing-to-keep, nothing sent, nothing written; a refresh-token credential stored without a refresh token: the same', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  const machine = p.settings({ grant: 'client-credentials', scope: 'api' });
  await store.create('m2m', { settings: machine });
  const before = await p.stats();
  const version = (await store.read('m2m')).version;
  assert.equal(await rk.keepalive({ credential: 'm2m', store, settings: machine, olderThanSecs: 0 }), 'nothing-to-keep');
  assert.equal((await store.read('m2m')).version, version, 'nothing written');

  const { refresh_token: _, ...accessOnly } = await p.authorize();
  await store.create('access-only', { settings: p.settings(), keys: imported(accessOnly) });
  assert.equal(await rk.keepalive({ credential: 'access-only', store, settings: p.settings(), olderThanSecs: 0 }), 'nothing-to-keep');

  const d = await counted(p, before);
  assert.deepEqual([d.token_calls, d.client_credentials_granted, d.api_calls], [0, 0, 0], 'nothing sent');
});

test('(5) a revoked grant: ReauthorizationRequired (invalid_grant once, the stored keys kept); the next keepalive sends nothing', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  const first = await p.authorize();
  await store.create('gone', { settings: p.settings(), keys: imported(first, { rekey_refreshed_at: now() - 30 * DAY }) });
  await p.revokeAll();
  const before = await p.stats();
  const keepalive = () => rk.keepalive({ credential: 'gone', store, settings: p.settings(), olderThanSecs: WEEK });

  const err = await keepalive().then(() => assert.fail('a revoked grant cannot be kept'), (e) => e);
  assert.ok(err instanceof ReauthorizationRequired, err.stack);
  assert.equal(err.sendErrorCase, 'reauthorization-required');
  assert.equal(err.code, 'invalid_grant');
  assert.equal(err.needsAuthorization, true);
  let d = await counted(p, before);
  assert.deepEqual([d.token_calls, d.invalid_grant, d.api_calls], [1, 1, 0]);
  const { data } = await store.read('gone');
  assert.equal(data.deadGrant?.code, 'invalid_grant', 'the dead grant is recorded');
  assert.equal(JSON.parse(data.keys).refresh_token, first.refresh_token, 'the stored keys were left as they were');

  await assert.rejects(keepalive(), (e) => e instanceof ReauthorizationRequired && e.sendErrorCase === 'reauthorization-required');
  d = await counted(p, before);
  assert.deepEqual([d.token_calls, d.invalid_grant, d.api_calls], [1, 1, 0], 'the second sent nothing');
});

test('no keys stored: NotAuthenticated, nothing sent; a bad olderThanSecs is refused before anything runs', async () => {
  const rk = await rekey();
  const p = await provider();
  const store = await tempStore();
  await store.create('empty', { settings: p.settings() });
  const before = await p.stats();
  await assert.rejects(
    rk.keepalive({ credential: 'empty', store, settings: p.settings(), olderThanSecs: 60 }),
    (e) => e instanceof NotAuthenticated && e.sendErrorCase === 'not-authenticated',
  );
  for (const olderThanSecs of [undefined, -1, 1.5, '60', Number.NaN, 2n ** 64n, -1n]) {
    await assert.rejects(
      rk.keepalive({ credential: 'empty', store, settings: p.settings(), olderThanSecs }),
      (e) => e instanceof InvalidRequest && /olderThanSecs/.test(e.message),
      `olderThanSecs ${String(olderThanSecs)}`,
    );
  }
  await assert.rejects(rk.keepalive(/** @type {any} */ (null)), InvalidRequest);
  await assert.rejects(rk.keepalive(/** @type {any} */ ({ store, settings: p.settings(), olderThanSecs: 1 })), InvalidRequest, 'a store needs a name');
  const aborted = AbortSignal.abort();
  await assert.rejects(rk.keepalive({ credential: 'empty', store, settings: p.settings(), olderThanSecs: 1, signal: aborted }), { name: 'AbortError' });
  assert.equal((await counted(p, before)).token_calls, 0);
});

// (3) The fleet: processes (test/support/keepalive-worker.mjs) run keepalive
// at once on one credential, as cron would on many machines.

const WORKERS = 4;

async function fleet(t, location, open) {
  // Each granted refresh is answered after 300 ms: the others arrive while
  // the lease is held, wait, and adopt the set it stores.
  const p = await provider(['--token-delay-ms', '300']);
  const store = await open();
  cleanups.push(() => store.close());
  const first = await p.authorize();
  await store.create('shared', { settings: p.settings(), keys: imported(first, { rekey_refreshed_at: now() - 30 * DAY }) });
  const env = {
    ...process.env,
    REKEY_FLEET_TOKEN_URL: p.token_url,
    REKEY_FLEET_CLIENT_ID: p.client_id,
    REKEY_FLEET_CLIENT_SECRET: p.client_secret,
    REKEY_FLEET_API_ORIGIN: new URL(p.api_url).origin,
  };
  const workers = Array.from({ length: WORKERS }, () => spawnLines(process.execPath, [WORKER, location, 'shared'], { env }));
  cleanups.push(() => Promise.all(workers.map((w) => w.kill())));
  await Promise.all(workers.map((w) => w.expect('READY')));

  const round = async (olderThanSecs) => {
    for (const w of workers) w.send(`KEEPALIVE ${olderThanSecs}`);
    return Promise.all(workers.map((w) => w.next()));
  };
  const before = await p.stats();
  const due = await round(WEEK);
  const afterDue = await counted(p, before);
  const again = await round(3600);
  const d = await counted(p, before);
  await Promise.all(workers.map((w) => w.end()));
  for (const w of workers) assert.equal((await w.exited).code, 0, `a worker ended cleanly; stderr:\n${w.stderr}`);

  const stored = await store.read('shared');
  const keys = JSON.parse(stored.data.keys);
  const figures = {
    store: location.startsWith('postgres') ? 'postgresql' : 'sqlite',
    processes: WORKERS,
    due,
    again,
    refreshes_granted: d.refreshes_granted,
    token_calls: d.token_calls,
    reused_refresh_tokens: d.reused_refresh_tokens,
    invalid_grant: d.invalid_grant,
    api_calls: d.api_calls,
  };
  t.diagnostic(`keepalive fleet: ${JSON.stringify(figures)}`);

  assert.ok(due.every((a) => a === 'OK refreshed' || a === 'OK fresh'), `every process answers refreshed or fresh: ${due}`);
  assert.equal(due.filter((a) => a === 'OK refreshed').length, 1, `one process refreshed, the others adopted its set: ${due}`);
  assert.deepEqual([afterDue.refreshes_granted, afterDue.token_calls], [1, 1], 'exactly one refresh, however many processes ran');
  assert.deepEqual(again, Array(WORKERS).fill('OK fresh'), 'then nothing is due');
  assert.deepEqual([d.refreshes_granted, d.token_calls], [1, 1], 'and nothing more was sent');
  assert.deepEqual([d.reused_refresh_tokens, d.invalid_grant, d.api_calls], [0, 0, 0]);
  assert.notEqual(keys.refresh_token, first.refresh_token);
  assert.equal(await p.refreshTokenLive(keys.refresh_token), true, "the store holds the provider's live refresh token");
  assert.deepEqual([stored.data.lease, stored.data.refreshMark, stored.data.deadGrant], [null, null, null]);
}

test(`(3) fleet: ${WORKERS} Node processes run keepalive at once on one SQLite credential: one refresh, the rest fresh`, async (t) => {
  const path = join(await tempDir(), 'keepalive.db');
  await fleet(t, path, () => SqliteStore.open(path));
});

test(`(3) fleet: ${WORKERS} Node processes run keepalive at once on one PostgreSQL credential: one refresh, the rest fresh`, async (t) => {
  if (!postgresAvailable(t)) return;
  const pg = await startPostgres();
  cleanups.push(() => pg.stop());
  const url = await pg.database();
  await fleet(t, url, () => PostgresStore.connect(url));
});

test('keepalive errors are RekeyErrors with send-error cases, as send maps them', async () => {
  const rk = await rekey();
  const store = await tempStore();
  const p = await provider();
  await store.create('x', { settings: p.settings(), keys: imported(await p.authorize(), { rekey_refreshed_at: now() - 30 * DAY }) });
  // Settings the component refuses (a token URL in the clear off loopback): its invalid-settings, nothing sent.
  const bad = p.settings({ tokenUrl: 'http://login.example.com/token' });
  const err = await rk.keepalive({ credential: 'x', store, settings: bad, olderThanSecs: WEEK }).then(() => assert.fail('an http token URL'), (e) => e);
  assert.ok(err instanceof InvalidSettings, err.stack);
  assert.ok(err instanceof RekeyError);
  assert.equal(err.sendErrorCase, 'invalid-settings');
  assert.equal(err.category, 'settings-wrong');
  assert.equal((await p.stats()).token_calls, 0);
});
