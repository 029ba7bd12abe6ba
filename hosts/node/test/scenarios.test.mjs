// The shared scenario list (issue #9 §4): the real component, real HTTP on
// loopback, the testkit provider; nothing mocked across the wasm boundary.
// Test names are the scenario ids of the README's table.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { inspect } from 'node:util';
import {
  KeysNotPersisted, ReauthorizationRequired, RejectedAfterRefresh, Secret, SettingsRejected, TransportError,
} from '../src/index.js';
import {
  REJECTED_ACCESS_TOKEN, eventually, imported, rekey, tempStore,
} from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

async function withProvider(args, body) {
  const provider = await startTestkit(args);
  try {
    return await body(provider);
  } finally {
    await provider.stop();
  }
}

const stored = async (store, credential) => JSON.parse(await store.loadKeys(credential));

test('on-401-refresh-and-retry', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const first = await p.authorize();
  await store.create('crm', { settings: p.settings(), keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }) });

  const res = await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('orders') } });

  assert.equal(res.status, 200);
  assert.equal(res.json().ok, true);
  const stats = await p.stats();
  assert.equal(stats.api_unauthorized, 1);
  assert.equal(stats.api_calls, 2);
  assert.equal(stats.refreshes_granted, 1);
  const keys = await stored(store, 'crm');
  assert.notEqual(keys.access_token, REJECTED_ACCESS_TOKEN);
  assert.notEqual(keys.refresh_token, first.refresh_token, 'the provider rotates: the new refresh token is stored');
  assert.equal(keys.id_token, first.id_token, 'fields the refresh did not send are kept');
  assert.ok(keys.expires_at > Date.now() / 1000, 'expires_at is added');
  assert.equal(await p.refreshTokenLive(keys.refresh_token), true);
}));

test('every-request', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
  const settings = p.settings({ strategy: 'every-request' });

  for (let i = 0; i < 3; i += 1) {
    const res = await rk.send({ credential: 'crm', store, settings, request: { url: p.api(`item/${i}`) } });
    assert.equal(res.status, 200);
  }

  const stats = await p.stats();
  assert.equal(stats.refreshes_granted, 3, 'one refresh before each request');
  assert.equal(stats.api_unauthorized, 0);
  assert.equal(stats.api_calls, 3);
  assert.equal(await p.refreshTokenLive((await stored(store, 'crm')).refresh_token), true);
}));

test('before-expiry', () => withProvider(['--access-ttl-ms', '6000'], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
  const margin = 3;
  const settings = p.settings({ strategy: 'before-expiry', expiryMarginSecs: margin });
  const send = () => rk.send({ credential: 'crm', store, settings, request: { url: p.api('me') } });

  // Well outside the margin: no refresh.
  assert.equal((await send()).status, 200);
  assert.equal((await p.stats()).token_calls, 0);

  // Inside the margin but not expired: refreshed before the request, never a 401.
  const { expires_at: expiresAt } = await stored(store, 'crm');
  await eventually(() => Date.now() / 1000 > expiresAt - margin + 0.2, { what: 'the expiry margin' });
  assert.equal((await send()).status, 200);

  const stats = await p.stats();
  assert.equal(stats.refreshes_granted, 1);
  assert.equal(stats.api_unauthorized, 0);
  assert.ok((await stored(store, 'crm')).expires_at > expiresAt);
}));

// Each expiry is made with the provider's expire-access-tokens knob; the
// tokens otherwise live 10 minutes, so no natural expiry adds a refresh
// however slow the machine (before-expiry is the test of a real lifetime).
test('rotation-5-refreshes', () => withProvider(['--access-ttl-ms', '600000'], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const first = await p.authorize();
  await store.create('crm', { settings: p.settings(), keys: imported(first) });
  const seen = new Set([first.refresh_token]);

  for (let e = 1; e <= 5; e += 1) {
    await p.expireAccessTokens();
    const res = await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('poll') } });
    assert.equal(res.status, 200, `expiry ${e}`);
    assert.equal((await p.stats()).refreshes_granted, e, `expiry ${e}: one refresh`);
    seen.add((await stored(store, 'crm')).refresh_token);
  }

  const stats = await p.stats();
  assert.equal(stats.reused_refresh_tokens, 0);
  assert.equal(stats.invalid_grant, 0);
  assert.equal(stats.token_calls, 5, 'every token call was a granted refresh');
  assert.equal(stats.api_unauthorized, 5, 'one 401 per expiry');
  assert.equal(seen.size, 6, 'a new refresh token per refresh, each one persisted');
  assert.equal(await p.refreshTokenLive((await stored(store, 'crm')).refresh_token), true);
}));

test('response-without-refresh-token-keeps-old', () => withProvider(['--no-rotate'], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const first = await p.authorize();
  await store.create('crm', { settings: p.settings(), keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }) });
  await p.omitRefreshToken(true);

  const res = await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('x') } });

  assert.equal(res.status, 200);
  assert.equal(await p.stats().then((s) => s.refreshes_granted), 1);
  const keys = await stored(store, 'crm');
  assert.equal(keys.refresh_token, first.refresh_token);
  assert.notEqual(keys.access_token, REJECTED_ACCESS_TOKEN);
  assert.equal(await p.refreshTokenLive(keys.refresh_token), true);
}));

test('rejected-after-fresh-token', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });

  const err = await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('reject') } })
    .then(() => assert.fail('the API always rejects'), (e) => e);

  assert.ok(err instanceof RejectedAfterRefresh, String(err));
  assert.equal(err.category, 'rejected-by-api');
  assert.equal(err.response.status, 401);
  const stats = await p.stats();
  assert.equal(stats.api_calls, 2, 'the request and one retry: no loop');
  assert.equal(stats.token_calls, 1);
}));

// A provider that never says how long a token lives (Salesforce, GitHub,
// Slack) and ends sessions at its own time: every call succeeds across three
// session ends, one refresh each; a URL that always answers 401 costs one
// refresh, and its evidence never blocks the next session end's refresh.
test('no-expires-in-refresh-on-401', () => withProvider(['--no-expires-in'], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
  const get = (path) => rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api(path) } });
  let ok = 0;
  for (let call = 0; call < 10; call += 1) {
    if (call % 3 === 1) await p.expireAccessTokens(); // the session ends
    if ((await get('me')).status === 200) ok += 1;
  }
  assert.equal(ok, 10, '10 of 10 calls across 3 session ends');
  assert.equal((await p.stats()).token_calls, 3);

  for (let i = 0; i < 3; i += 1) {
    const err = await get('reject').then(() => assert.fail('the API always rejects'), (e) => e);
    assert.ok(err instanceof RejectedAfterRefresh, String(err));
  }
  assert.equal((await p.stats()).token_calls, 4, 'one refresh for the bad URL');
  await p.expireAccessTokens();
  assert.equal((await get('me')).status, 200);
  const stats = await p.stats();
  assert.equal(stats.token_calls, 5);
  assert.equal(stats.invalid_grant, 0);
  assert.equal('expires_at' in await stored(store, 'crm'), false, 'no lifetime was invented');
}));

test('invalid-grant', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize(), { access_token: REJECTED_ACCESS_TOKEN }) });
  const before = await store.loadKeys('crm');
  await p.revokeAll();
  const send = () => rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('x') } })
    .then(() => assert.fail('the grant is revoked'), (e) => e);

  const err = await send();

  assert.ok(err instanceof ReauthorizationRequired, String(err));
  assert.equal(err.category, 'needs-authorization');
  assert.equal(err.code, 'invalid_grant');
  assert.equal(await store.loadKeys('crm'), before, 'the stored keys are byte-identical');
  assert.equal((await p.stats()).api_calls, 1);
  assert.equal((await store.read('crm')).data.deadGrant?.code, 'invalid_grant', 'the dead grant is remembered');

  // Remembered: the next call fails fast, without a request anywhere.
  const again = await send();
  assert.ok(again instanceof ReauthorizationRequired, String(again));
  const stats = await p.stats();
  assert.equal(stats.token_calls, 1, 'no second token request');
  assert.equal(stats.api_calls, 1, 'no second API request');

  // A new authorisation (putKeys) starts clean.
  await store.putKeys('crm', imported(await p.authorize()));
  assert.equal((await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('x') } })).status, 200);
}));

test('503-then-200', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize(), { access_token: REJECTED_ACCESS_TOKEN }) });
  await p.forceTokenResponses([[503, '{"error":"temporarily_unavailable"}']]);

  const res = await rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api('x') } });

  assert.equal(res.status, 200);
  const stats = await p.stats();
  assert.equal(stats.refreshes_granted, 1);
  assert.equal(stats.token_calls, 2, 'the 503 and the retried refresh');
  assert.equal(await p.refreshTokenLive((await stored(store, 'crm')).refresh_token), true);
}));

for (const method of ['basic', 'post']) {
  test(`client-auth-${method}`, () => withProvider(['--client-auth', method], async (p) => {
    const rk = await rekey();
    const store = await tempStore();
    await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize(), { access_token: REJECTED_ACCESS_TOKEN }) });
    const send = (clientAuth) => rk.send({
      credential: 'crm', store, settings: p.settings({ clientAuth }), request: { url: p.api('x') },
    });

    // The other method is refused by the provider: a settings problem, the
    // keys untouched but for the component's memory of the refusal.
    const before = await stored(store, 'crm');
    const err = await send(method === 'basic' ? 'post' : 'basic').then(() => assert.fail('wrong client auth'), (e) => e);
    assert.ok(err instanceof SettingsRejected, String(err));
    assert.equal(err.code, 'invalid_client');
    const { rekey_refused: refused, ...after } = await stored(store, 'crm');
    assert.deepEqual(after, before);
    assert.equal(refused.code, 'invalid_client');
    // Other settings (the right method) ask at once.

    assert.equal((await send(method)).status, 200);
    const stats = await p.stats();
    assert.equal(stats.refreshes_granted, 1);
    assert.equal(stats[`${method}_auth_calls`], 1);
    const form = Object.fromEntries(await p.lastTokenForm());
    assert.equal(form.grant_type, 'refresh_token');
    assert.equal('client_secret' in form, method === 'post');
  }));
}

test('post-body-identical-on-retry', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize(), { access_token: REJECTED_ACCESS_TOKEN }) });
  const body = randomBytes(64 * 1024);

  const res = await rk.send({
    credential: 'crm', store, settings: p.settings(),
    request: { method: 'POST', url: p.api('upload'), headers: { 'content-type': 'application/octet-stream' }, body },
  });

  assert.equal(res.status, 200);
  const log = await p.apiLog();
  assert.equal(log.length, 2);
  assert.deepEqual(log.map((e) => [e.method, e.authorized]), [['POST', false], ['POST', true]]);
  for (const entry of log) assert.ok(Buffer.from(entry.body_base64, 'base64').equals(body), 'byte-identical body');
}));

test('keys-callback-failure-stops-before-retry', () => withProvider([], async (p) => {
  const rk = await rekey();
  const first = await p.authorize();
  let calls = 0;

  const err = await rk.send({
    // The component retries a failed keys write until its pauses (100 ms, doubling) add up to one lease TTL: 300 ms, three attempts.
    settings: { ...p.settings(), fleet: { leaseTtlMs: 300 } },
    keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }),
    request: { url: p.api('x') },
    onUpdateKeys: async () => {
      calls += 1;
      await new Promise((r) => setTimeout(r, 20));
      throw new Error('disk full');
    },
  }).then(() => assert.fail('persistence failed'), (e) => e);

  assert.ok(err instanceof KeysNotPersisted, String(err));
  assert.equal(err.category, 'store');
  // A retry would spend the refresh token the provider may have rotated.
  assert.equal(err.retryable, false);
  assert.ok(calls >= 1, 'the component retried the write a bounded number of times');
  const stats = await p.stats();
  assert.equal(stats.api_calls, 1, 'the request is not resent with keys that are not durable');
  assert.equal(stats.refreshes_granted, 1);
}));

// The refreshed token lives a minute, so no second expiry can fall inside
// the run however loaded the machine; the first one is made at once.
test('16-concurrent-one-refresh', () => withProvider(['--access-ttl-ms', '60000'], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
  const send = (i) => rk.send({ credential: 'crm', store, settings: p.settings(), request: { url: p.api(`c/${i}`) } });
  assert.equal((await send('warm')).status, 200);
  await p.expireAccessTokens();

  const results = await Promise.all(Array.from({ length: 16 }, (_, i) => send(i)));

  assert.deepEqual(results.map((r) => r.status), Array(16).fill(200));
  const stats = await p.stats();
  assert.equal(stats.refreshes_granted, 1, 'one expiry, one refresh');
  assert.equal(stats.token_calls, 1);
  assert.equal(stats.invalid_grant, 0);
  assert.equal(stats.reused_refresh_tokens, 0);
  assert.equal(await p.refreshTokenLive((await stored(store, 'crm')).refresh_token), true);
}));

test('no-secret-in-output', () => withProvider([], async (p) => {
  const rk = await rekey();
  const store = await tempStore();
  const secrets = new Set([p.client_secret]);
  const remember = (keys) => { for (const f of ['access_token', 'refresh_token', 'id_token']) if (keys[f]) secrets.add(keys[f]); };
  const printed = [];
  const original = { out: process.stdout.write, err: process.stderr.write };
  const capture = (chunk, ...rest) => { printed.push(String(chunk)); return true; };
  const outcomes = [];

  // Everything a caller would print: events (logged), each result's and error's
  // message, String(), JSON and inspect(), and the keys given to onUpdateKeys.
  const record = async (label, run) => {
    try {
      const res = await run();
      outcomes.push(`${label}: ${res.status} ${inspect(res)}`);
    } catch (err) {
      outcomes.push(`${label}: ${err.message} ${String(err)} ${err.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`);
    }
  };
  const onEvent = (event) => console.log('rekey event', event);
  const settings = p.settings({ clientSecret: new Secret(p.client_secret), clientAuth: 'post' });
  // Each step its own grant, stored with an access token the API refuses.
  const grant = async (credential) => {
    const first = await p.authorize();
    remember(first);
    const keys = imported(first, { access_token: REJECTED_ACCESS_TOKEN });
    if (credential) await store.create(credential, { settings: p.settings(), keys: keys });
    return keys;
  };
  const send = (credential, extra) => rk.send({ credential, store, settings, request: { url: p.api('a') }, onEvent, ...extra });
  const persisted = (keys) => { remember(keys.expose()); console.log('persisted', keys, `${keys}`, JSON.stringify(keys)); };
  await grant('refresh');
  await grant('rejected');
  await grant('settings');
  await grant('revoked');
  const callbackKeys = await grant();
  const callbackRefreshKeys = await grant();

  process.stdout.write = capture;
  process.stderr.write = capture;
  try {
    console.log('settings', settings, String(settings.clientSecret), JSON.stringify(settings));
    await record('refresh', () => send('refresh'));
    await record('rejected', () => send('rejected', { request: { url: p.api('reject') } }));
    await record('callback refresh', () => rk.send({ settings, keys: callbackRefreshKeys, request: { url: p.api('c') }, onEvent, onUpdateKeys: persisted }));
    // The component retries a failed keys write until its pauses (100 ms, doubling) add up to one lease TTL: 300 ms, three attempts.
    await record('keys failure', () => rk.send({ settings: { ...settings, fleet: { leaseTtlMs: 300 } }, keys: callbackKeys, request: { url: p.api('b') }, onEvent,
      onUpdateKeys: (keys) => { remember(keys.expose()); throw new Error(`cannot write ${JSON.stringify(keys.expose())}`); } }));
    await record('settings rejected', () => send('settings', { settings: { ...settings, clientId: 'someone-else' } }));
    await p.revokeAll();
    await record('invalid grant', () => send('revoked'));
    await record('transport', () => send('refresh', { settings: { ...settings, apiOrigins: ['http://127.0.0.1:9'] }, request: { url: 'http://127.0.0.1:9/closed' } }));
  } finally {
    process.stdout.write = original.out;
    process.stderr.write = original.err;
  }
  for (const c of ['refresh', 'rejected']) remember(await stored(store, c));

  const everything = [...printed, ...outcomes].join('\n');
  // The run must have exercised what it claims to check.
  assert.match(everything, /persisted TokenSet\(access_token/);
  assert.match(everything, /refresh: 200/);
  assert.match(everything, /KeysNotPersisted/);
  assert.match(everything, /RejectedAfterRefresh/);
  assert.match(everything, /SettingsRejected/);
  assert.match(everything, /ReauthorizationRequired/);
  assert.match(everything, /could not connect/);
  assert.ok(secrets.size >= 12, `collected ${secrets.size} secrets`);
  for (const secret of secrets) {
    assert.ok(!everything.includes(secret), `a secret (${secret.slice(0, 3)}…) appears in the output`);
  }
}));

// Not in the shared list: what a transport failure looks like to a caller.
test('transport-error-is-typed', async () => {
  const rk = await rekey();
  const err = await rk.send({
    settings: { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['http://127.0.0.1:9'], clientId: 'c' },
    keys: { access_token: 'a', refresh_token: 'r' },
    request: { url: 'http://127.0.0.1:9/closed' },
    onUpdateKeys: () => {},
  }).then(() => assert.fail('port 9 is closed'), (e) => e);
  assert.ok(err instanceof TransportError, String(err));
  assert.equal(err.kind, 'connect');
  assert.equal(err.category, 'transport');
});
