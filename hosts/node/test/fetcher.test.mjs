// `rk.fetcher()`: fetch's signature and semantics over rekey. Real HTTP on
// loopback: the testkit provider (rotation, reuse detection) and an API here
// that records each request as it arrived and checks its token with the
// provider's API.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { InvalidRequest, InvalidSettings, UnrepresentableResponse } from '../src/index.js';
import { imported, rekey, tempStore } from './support/harness.mjs';
import { recordingApi } from './support/gates.mjs';
import { startTestkit } from './support/testkit.mjs';

/** A provider whose tokens live 10 minutes (each expiry is made with its knob), an API in front of it, a stored credential. */
async function withSetup(body) {
  const provider = await startTestkit(['--access-ttl-ms', '600000']);
  const api = await recordingApi(provider);
  try {
    const rk = await rekey();
    const store = await tempStore();
    const first = await provider.authorize();
    const settings = provider.settings({ apiOrigins: [api.origin] });
    await store.create('crm', { settings, keys: imported(first) });
    return await body({ provider, api, rk, store, settings, first });
  } finally {
    await api.close();
    await provider.stop();
  }
}

const header = (seen, name) => seen.headers.filter(([k]) => k === name).map(([, v]) => v);
const storedKeys = async (store) => JSON.parse(await store.loadKeys('crm'));

/** Makes the provider's access tokens expire now; returns the refreshes so far. */
async function expire(provider) {
  const before = (await provider.stats()).refreshes_granted;
  await provider.expireAccessTokens();
  return before;
}

test('fetcher: across two expiries with rotation, each request goes out as given and each answer comes back whole', () => withSetup(async ({ provider, api, rk, store, settings, first }) => {
  const crmFetch = rk.fetcher({ credential: 'crm', store, settings });
  api.answerWith((r) => ({
    status: r.method === 'POST' ? 201 : 200,
    headers: [['content-type', 'application/octet-stream'], ['x-answer', 'one'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2']],
    body: Buffer.concat([Buffer.from(`${r.method} ${r.target}\n`), r.body]),
  }));

  // 1: a POST with binary bytes, a query and headers of the caller's.
  const bytes = randomBytes(3000);
  const r1 = await crmFetch(api.url('/v1/orders?b=2&a=x%20y&a=z'), {
    method: 'POST', headers: { 'content-type': 'application/x-thing', 'x-request-id': 'r-1' }, body: bytes,
  });
  assert.equal(r1.status, 201);
  assert.equal(r1.ok, true);
  assert.equal(r1.url, api.url('/v1/orders?b=2&a=x%20y&a=z'));
  assert.equal(r1.headers.get('x-answer'), 'one');
  assert.deepEqual(r1.headers.getSetCookie(), ['a=1', 'b=2']);
  assert.deepEqual(Buffer.from(await r1.arrayBuffer()), Buffer.concat([Buffer.from('POST /v1/orders?b=2&a=x%20y&a=z\n'), bytes]));
  const s1 = api.seen.at(-1);
  assert.deepEqual([s1.method, s1.target], ['POST', '/v1/orders?b=2&a=x%20y&a=z']);
  assert.deepEqual(header(s1, 'content-type'), ['application/x-thing']);
  assert.deepEqual(header(s1, 'x-request-id'), ['r-1']);
  assert.equal(header(s1, 'authorization').length, 1);
  assert.match(header(s1, 'authorization')[0], /^Bearer /);
  assert.deepEqual(s1.body, bytes);
  assert.equal((await provider.stats()).refreshes_granted, 0, 'a fresh token: no refresh yet');

  // 2: first expiry; a Request object with a URLSearchParams body (fetch's default content type).
  let before = await expire(provider);
  const seenBefore = api.seen.length;
  const r2 = await crmFetch(new Request(api.url('/v1/search'), { method: 'PUT', body: new URLSearchParams({ q: 'a b', n: '1' }), headers: { 'x-two': '2' } }));
  assert.equal(r2.status, 200);
  assert.equal(await r2.text(), 'PUT /v1/search\nq=a+b&n=1');
  assert.equal((await provider.stats()).refreshes_granted - before, 1, 'the expiry cost one refresh');
  const sent2 = api.seen.slice(seenBefore);
  assert.deepEqual(sent2.map((s) => s.method), ['PUT', 'PUT'], 'refused once (expired), sent again after the refresh');
  for (const s of sent2) {
    assert.deepEqual(header(s, 'content-type'), ['application/x-www-form-urlencoded;charset=UTF-8']);
    assert.deepEqual(header(s, 'x-two'), ['2']);
    assert.equal(s.body.toString(), 'q=a+b&n=1', 'the same body both times');
  }
  assert.notEqual(header(sent2[0], 'authorization')[0], header(sent2[1], 'authorization')[0], 'the retry carries the new token');

  // 3: second expiry; a Blob body and a DELETE with a custom status.
  before = await expire(provider);
  api.answerWith(() => ({ status: 418, headers: [['x-teapot', 'yes']], body: Buffer.from('short and stout') }));
  const r3 = await crmFetch(api.url('/v1/pot'), { method: 'PATCH', body: new Blob(['{"k":1}'], { type: 'application/json' }) });
  assert.equal(r3.status, 418);
  assert.equal(r3.ok, false);
  assert.equal(r3.headers.get('x-teapot'), 'yes');
  assert.equal(await r3.text(), 'short and stout');
  const s3 = api.seen.at(-1);
  assert.deepEqual([s3.method, s3.body.toString(), header(s3, 'content-type')], ['PATCH', '{"k":1}', ['application/json']]);
  assert.equal((await provider.stats()).refreshes_granted - before, 1, 'the second expiry cost one refresh');

  const stats = await provider.stats();
  assert.equal(stats.refreshes_granted, 2);
  assert.equal(stats.reused_refresh_tokens, 0);
  assert.equal(stats.invalid_grant, 0);
  const keys = await storedKeys(store);
  assert.notEqual(keys.refresh_token, first.refresh_token, 'rotated');
  assert.equal(await provider.refreshTokenLive(keys.refresh_token), true, "the store holds the provider's live refresh token");
}));

test('fetcher: a URL off the credential\'s API origins rejects with InvalidSettings and sends nothing', () => withSetup(async ({ provider, api, rk, store, settings }) => {
  const crmFetch = rk.fetcher({ credential: 'crm', store, settings });
  const statsBefore = await provider.stats();
  // The provider's own API: reachable, but not one of this credential's origins.
  const err = await crmFetch(provider.api('v1/me')).then(() => undefined, (e) => e);
  assert.ok(err instanceof InvalidSettings, String(err));
  assert.match(err.message, /not one of the credential's API origins/);
  const statsAfter = await provider.stats();
  assert.equal(statsAfter.api_calls, statsBefore.api_calls, 'nothing reached the provider\'s API');
  assert.equal(statsAfter.token_calls, statsBefore.token_calls, 'no token request');
  assert.equal(api.seen.length, 0);
}));

test('fetcher: redirects are never followed: 3xx comes back as it is (follow, manual); redirect \'error\' rejects with a TypeError', () => withSetup(async ({ api, rk, store, settings }) => {
  const crmFetch = rk.fetcher({ credential: 'crm', store, settings });
  api.answerWith(() => ({ status: 302, headers: [['location', '/v1/elsewhere']], body: Buffer.alloc(0) }));
  for (const redirect of [undefined, 'follow', 'manual']) {
    const res = await crmFetch(api.url('/v1/moved'), redirect ? { redirect } : undefined);
    assert.equal(res.status, 302, `redirect: ${redirect}`);
    assert.equal(res.headers.get('location'), '/v1/elsewhere');
    assert.equal(res.redirected, false);
  }
  await assert.rejects(crmFetch(api.url('/v1/moved'), { redirect: 'error' }), (e) => e instanceof TypeError && /redirect/.test(e.message));
  assert.deepEqual(api.seen.map((s) => s.target), Array(4).fill('/v1/moved'), 'only the URL asked for was ever requested');
}));

test('fetcher: fetch\'s own input errors, and options that make no sense', async () => {
  const rk = await rekey();
  assert.throws(() => rk.fetcher(/** @type {any} */ ({ credential: 'x', store: {}, settings: {}, request: { url: 'https://x' } })), InvalidRequest);
  const f = rk.fetcher(/** @type {any} */ ({ credential: 'x', store: { read() {}, write() {} }, settings: {} }));
  await assert.rejects(f('/relative'), TypeError, 'a relative URL, as fetch');
  await assert.rejects(f('https://api.example.com/', { method: 'CONNECT' }), TypeError, 'a forbidden method, as fetch');
});

test('fetcher: keys with onUpdateKeys and no credential name: one record for the fetcher\'s life, two expiries cost two refreshes and no rotated token is spent again', () => withSetup(async ({ provider, api, rk, settings, first }) => {
  const saved = [];
  const keys = imported(first);
  // The same first keys are given on every call (captured once): later calls must continue from the newest set.
  const f = rk.fetcher({ settings, keys, onUpdateKeys: (k) => { saved.push(JSON.parse(k.toJSONString())); } });
  const statuses = [(await f(api.url('/v1/me'))).status];
  for (let i = 0; i < 2; i++) {
    await provider.expireAccessTokens();
    statuses.push(await f(api.url('/v1/me')).then((r) => r.status, (e) => e.name));
  }
  assert.deepEqual(statuses, [200, 200, 200]);
  const stats = await provider.stats();
  assert.deepEqual([stats.refreshes_granted, stats.reused_refresh_tokens, stats.invalid_grant], [2, 0, 0]);
  assert.equal(saved.length, 2, 'each refresh reached onUpdateKeys');
  assert.equal(await provider.refreshTokenLive(saved.at(-1).refresh_token), true, 'the last keys given hold the live refresh token');
  // A second nameless fetcher, made with the newest keys, starts from them.
  const other = rk.fetcher({ settings, keys: saved.at(-1), onUpdateKeys: () => {} });
  assert.equal((await other(api.url('/v1/me'))).status, 200);
}));

test('fetcher: an abort while a stream body is read rejects at once with the signal\'s reason, cancels the body, sends nothing', { timeout: 30_000 }, () => withSetup(async ({ provider, api, rk, store, settings }) => {
  const f = rk.fetcher({ credential: 'crm', store, settings });
  let pulled;
  const pulling = new Promise((resolve) => { pulled = resolve; });
  let cancelledWith;
  const body = new ReadableStream({
    start(c) { c.enqueue(new Uint8Array([1, 2, 3])); },
    pull() { pulled(); return new Promise(() => {}); }, // a body that never ends
    cancel(reason) { cancelledWith = reason; },
  }, { highWaterMark: 0 });
  const statsBefore = await provider.stats();
  const controller = new AbortController();
  const call = f(api.url('/v1/upload'), { method: 'POST', body, duplex: 'half', signal: controller.signal });
  await pulling; // the first chunk is read; the next never comes
  const reason = new Error('shutting down');
  controller.abort(reason);
  await assert.rejects(call, (e) => e === reason);
  assert.equal(cancelledWith, reason, 'the body stream was cancelled with the reason');
  const statsAfter = await provider.stats();
  assert.deepEqual([statsAfter.token_calls, statsAfter.api_calls], [statsBefore.token_calls, statsBefore.api_calls]);
  assert.equal(api.seen.length, 0, 'nothing was sent');
}));

test('fetcher: a status a Response cannot carry (999) rejects with UnrepresentableResponse holding the answer; toResponse() too; 599 passes', () => withSetup(async ({ api, rk, store, settings }) => {
  const f = rk.fetcher({ credential: 'crm', store, settings });
  api.answerWith(() => ({ status: 999, headers: [['x-why', 'bot']], body: Buffer.from('request denied') }));
  const err = await f(api.url('/v1/profile')).then(() => undefined, (e) => e);
  assert.ok(err instanceof UnrepresentableResponse, String(err));
  assert.equal(err.category, 'rejected-by-api');
  assert.equal(err.response.status, 999);
  assert.equal(err.response.header('x-why'), 'bot');
  assert.equal(err.response.text(), 'request denied');
  assert.equal(api.seen.length, 1, 'sent once');
  const res = await rk.send({ credential: 'crm', store, settings, request: { url: api.url('/v1/profile') } });
  assert.equal(res.status, 999);
  assert.throws(() => res.toResponse(), (e) => e instanceof UnrepresentableResponse && e.response === res);
  api.answerWith(() => ({ status: 599, headers: [], body: Buffer.from('edge') }));
  const r599 = await f(api.url('/v1/profile'));
  assert.deepEqual([r599.status, await r599.text()], [599, 'edge']);
}));

test('fetcher: gzip, deflate, br (and stacked) bodies are decoded as fetch decodes them; an unknown coding is left; a corrupt one rejects holding the answer', () => withSetup(async ({ api, rk, store, settings }) => {
  const f = rk.fetcher({ credential: 'crm', store, settings });
  const text = 'hello, '.repeat(200);
  const cases = [
    ['gzip', gzipSync(text)],
    ['deflate', deflateSync(text)],
    ['br', brotliCompressSync(text)],
    ['deflate, gzip', gzipSync(deflateSync(text))],
  ];
  for (const [coding, bytes] of cases) {
    api.answerWith(() => ({ status: 200, headers: [['content-encoding', coding], ['content-type', 'text/plain'], ['x-kept', 'yes']], body: bytes }));
    const res = await f(api.url('/v1/text'), { headers: { 'accept-encoding': 'gzip, deflate, br' } });
    assert.equal(await res.text(), text, coding);
    assert.equal(res.headers.get('content-encoding'), null, coding);
    assert.equal(res.headers.get('content-length'), null, coding);
    assert.equal(res.headers.get('x-kept'), 'yes', coding);
  }
  api.answerWith(() => ({ status: 200, headers: [['content-encoding', 'compress']], body: Buffer.from('as it came') }));
  const unknown = await f(api.url('/v1/text'));
  assert.deepEqual([await unknown.text(), unknown.headers.get('content-encoding')], ['as it came', 'compress']);
  api.answerWith(() => ({ status: 200, headers: [['content-encoding', 'gzip']], body: Buffer.from('not gzip') }));
  const err = await f(api.url('/v1/text')).then(() => undefined, (e) => e);
  assert.ok(err instanceof UnrepresentableResponse, String(err));
  assert.equal(Buffer.from(err.response.body).toString(), 'not gzip', 'the answer kept as it came');
}));
