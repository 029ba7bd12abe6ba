// The client-credentials grant (RFC 6749 §4.4): a credential with no keys at
// all gets its token from the client's own id and secret on the first call,
// reuses it, and renews it on a 401; a wrong secret stores nothing. The real
// component, real HTTP on loopback, the testkit provider, real stores.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { InvalidSettings, PostgresStore, SettingsRejected } from '../src/index.js';
import { rekey, tempStore } from './support/harness.mjs';
import { postgresAvailable, startPostgres } from './support/postgres.mjs';
import { startTestkit } from './support/testkit.mjs';

async function withProvider(body) {
  const provider = await startTestkit();
  try {
    return await body(provider);
  } finally {
    await provider.stop();
  }
}

const machine = (p, extra = {}) => p.settings({ grant: 'client-credentials', scope: 'api', ...extra });
const keysOf = async (store, name) => JSON.parse(await store.loadKeys(name));

/** The first call on a credential with no keys fetches a token, which the second reuses. */
async function firstAndSecondCall(rk, store, p) {
  assert.equal(await store.create('m2m', { settings: machine(p) }), true);
  assert.equal(await store.loadKeys('m2m'), undefined, 'created with no keys');

  const res = await rk.send({ credential: 'm2m', store, settings: machine(p), request: { url: p.api('me') } });
  assert.equal(res.status, 200);
  let stats = await p.stats();
  assert.equal(stats.client_credentials_granted, 1);
  assert.equal(stats.refreshes_granted, 0);
  assert.equal(stats.api_calls, 1, 'sent once, with the token just fetched');
  const keys = await keysOf(store, 'm2m');
  assert.equal(typeof keys.access_token, 'string');
  assert.equal(keys.refresh_token, undefined, 'no refresh token in this grant');
  const { data } = await store.read('m2m');
  assert.equal(data.refreshMark, null, 'nothing spendable: never a refresh mark');

  const again = await rk.send({ credential: 'm2m', store, settings: machine(p), request: { url: p.api('me') } });
  assert.equal(again.status, 200);
  stats = await p.stats();
  assert.equal(stats.client_credentials_granted, 1, 'the stored token is reused');
  assert.equal(stats.api_calls, 2);
  return keys;
}

test('client-credentials (SQLite): no keys; the first call fetches a token, later calls reuse it, a 401 renews it', () => withProvider(async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const first = await firstAndSecondCall(rk, store, p);
  assert.equal((await store.show('m2m')).settings.grant, 'client-credentials', 'the settings column names the grant');

  await p.expireAccessTokens();
  const res = await rk.send({ credential: 'm2m', store, settings: machine(p), request: { url: p.api('after-expiry') } });
  assert.equal(res.status, 200);
  const stats = await p.stats();
  assert.equal(stats.api_unauthorized, 1, 'the expired token was refused once');
  assert.equal(stats.client_credentials_granted, 2, 'one more grant');
  assert.equal(stats.refreshes_granted, 0);
  const keys = await keysOf(store, 'm2m');
  assert.notEqual(keys.access_token, first.access_token, 'the new token is stored');
  assert.equal(keys.refresh_token, undefined);
}));

test('client-credentials: a wrong client secret is SettingsRejected, stores no token, and is not asked again within the minute', () => withProvider(async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const settings = machine(p, { clientSecret: 'not-the-secret-7f3a' });
  await store.create('m2m', { settings });

  const err = await rk.send({ credential: 'm2m', store, settings, request: { url: p.api('me') } })
    .then(() => assert.fail('the token endpoint refuses the client'), (e) => e);
  assert.ok(err instanceof SettingsRejected, inspect(err));
  assert.equal(err.code, 'invalid_client');
  assert.doesNotMatch(`${err.message} ${inspect(err)}`, /not-the-secret/);
  const stats = await p.stats();
  assert.equal(stats.client_credentials_granted, 0);
  assert.equal(stats.api_calls, 0, 'nothing went to the API');
  const { data } = await store.read('m2m');
  const kept = JSON.parse(data.keys);
  assert.deepEqual(Object.keys(kept), ['rekey_refused'], 'no token stored: only the refusal, remembered');
  assert.equal(kept.rekey_refused.code, 'invalid_client');
  assert.doesNotMatch(data.keys, /not-the-secret/, 'the memory names no secret');
  assert.equal(data.refreshMark, null);
  assert.equal(data.deadGrant, null, 'a client refusal is not a dead grant');

  const again = await rk.send({ credential: 'm2m', store, settings, request: { url: p.api('me') } })
    .then(() => assert.fail('refused a moment ago'), (e) => e);
  assert.ok(again instanceof SettingsRejected && again.code === 'invalid_client', inspect(again));
  assert.equal((await p.stats()).token_calls, stats.token_calls, 'the same settings are not asked again within the minute');
  const fixed = await rk.send({ credential: 'm2m', store, settings: machine(p), request: { url: p.api('me') } });
  assert.equal(fixed.status, 200, 'the right secret asks at once');
  assert.equal('rekey_refused' in await keysOf(store, 'm2m'), false, 'the token set drops the memory');
}));

test('client-credentials with keys passed by callback: none at first, the fetched token goes to onUpdateKeys', () => withProvider(async (p) => {
  const rk = await rekey();
  const updates = [];
  const res = await rk.send({
    settings: machine(p),
    request: { url: p.api('me') },
    onUpdateKeys: (keys) => { updates.push(JSON.parse(keys.toJSONString())); },
  });
  assert.equal(res.status, 200);
  assert.equal(updates.length, 1);
  assert.equal(typeof updates[0].access_token, 'string');
  assert.equal((await p.stats()).client_credentials_granted, 1);
}));

test('grant: an unknown value, or client-credentials without a secret, is a clear InvalidSettings before anything is sent', async () => {
  const rk = await rekey();
  const store = await tempStore();
  const base = { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['http://127.0.0.1:9'], clientId: 'app' };
  const cases = [
    [{ ...base, grant: 'password', clientSecret: 's' }, /grant "password" is unknown: use one of refresh-token, client-credentials/],
    [{ ...base, grant: 'client-credentials' }, /grant 'client-credentials' needs a clientSecret/],
  ];
  for (const [settings, message] of cases) {
    await assert.rejects(store.create('bad', { settings }), (e) => e instanceof InvalidSettings && message.test(e.message));
    await assert.rejects(
      rk.send({ credential: 'bad', store, settings, request: { url: 'http://127.0.0.1:9/api' } }),
      (e) => e instanceof InvalidSettings && message.test(e.message),
    );
  }
  assert.equal(await store.read('bad'), undefined, 'nothing was created');
  // The default needs no secret (a public client); the column leaves it out, as the Rust host does, and show() reads it so.
  assert.equal(await store.create('public', { settings: base }), true);
  assert.equal((await store.rows('public'))[0].settings.includes('grant'), false);
  assert.equal((await store.show('public')).settings.grant, 'refresh-token');
});

test('client-credentials (PostgreSQL): no keys; the first call fetches and stores a token, the next reuses it', async (t) => {
  if (!postgresAvailable(t)) return;
  const rk = await rekey();
  const pg = await startPostgres();
  let store;
  try {
    store = await PostgresStore.connect(await pg.database());
    await withProvider((p) => firstAndSecondCall(rk, store, p));
  } finally {
    await store?.close();
    pg.stop();
  }
});

