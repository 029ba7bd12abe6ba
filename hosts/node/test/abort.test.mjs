// AbortSignal on send and through the fetcher: an abort rejects the caller at
// once with the signal's reason, while a refresh under way finishes and is
// stored (the refresh token the provider rotated is never lost); nothing is
// sent for a signal already aborted or a call still queued. The refresh is
// held at a token endpoint in front of the provider's, after the provider
// has rotated, until the test releases it: no timing decides anything.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { InvalidRequest, Rekey } from '../src/index.js';
import { imported, rekey, tempStore } from './support/harness.mjs';
import { heldTokenEndpoint, recordingApi } from './support/gates.mjs';
import { startTestkit } from './support/testkit.mjs';

async function withSetup(body) {
  const provider = await startTestkit();
  const token = await heldTokenEndpoint(provider.token_url);
  const api = await recordingApi(provider);
  try {
    const store = await tempStore();
    const first = await provider.authorize();
    const settings = provider.settings({ tokenUrl: token.url, apiOrigins: [api.origin] });
    await store.create('crm', { settings, keys: imported(first) });
    return await body({ provider, token, api, store, settings, first });
  } finally {
    await api.close();
    await token.close();
    await provider.stop();
  }
}

const isAbortError = (e) => e instanceof DOMException && e.name === 'AbortError';
const storedKeys = async (store) => JSON.parse(await store.loadKeys('crm'));

/**
 * Starts a call that needs a refresh, holds the refresh's answer after the
 * provider rotated, aborts, and checks the caller was rejected while the
 * answer was still held; then lets it go and checks the rotated keys were
 * stored and are what the next call uses.
 */
async function abortMidRefresh({ provider, token, api, store, first }, rk, call) {
  await provider.expireAccessTokens();
  const hold = token.holdNext();
  const controller = new AbortController();
  const pending = call(controller.signal);
  await hold.arrived;
  // The provider has rotated: the old refresh token is spent, the new one only in the held answer.
  assert.equal((await provider.stats()).refreshes_granted, 1);
  assert.equal(await provider.refreshTokenLive(first.refresh_token), false);
  const record = await store.read('crm');
  assert.notEqual(record.data.refreshMark, null, 'the refresh is under way (marked in the record)');

  controller.abort();
  // Rejected while the answer is still held: were the caller waiting for the
  // call, this would never settle (the test would time out).
  await assert.rejects(pending, isAbortError);

  hold.release();
  await rk.drain();
  const keys = await storedKeys(store);
  assert.notEqual(keys.refresh_token, first.refresh_token, 'the rotated keys were stored');
  assert.equal(await provider.refreshTokenLive(keys.refresh_token), true, "the store holds the provider's live refresh token");
  const after = await store.read('crm');
  assert.deepEqual([after.data.lease, after.data.refreshMark], [null, null], 'the refresh ended cleanly');
  const apiCalls = api.seen.length;

  // The next call uses them: no refresh, accepted at once.
  const res = await rk.send({ credential: 'crm', store, settings: providerSettings(provider, token, api), request: { url: api.url('/v1/next') } });
  assert.equal(res.status, 200);
  assert.equal(api.seen.length, apiCalls + 1, 'one request, accepted');
  assert.equal(api.seen.at(-1).headers.find(([k]) => k === 'authorization')[1], `Bearer ${keys.access_token}`);
  const stats = await provider.stats();
  assert.deepEqual([stats.refreshes_granted, stats.reused_refresh_tokens, stats.invalid_grant], [1, 0, 0]);
}

const providerSettings = (provider, token, api) => provider.settings({ tokenUrl: token.url, apiOrigins: [api.origin] });

test('send: an abort mid-refresh rejects the caller at once; the refresh finishes and its rotated keys are stored and used next', { timeout: 60_000 }, () => withSetup(async (s) => {
  const rk = await rekey();
  await abortMidRefresh(s, rk, (signal) => rk.send({ credential: 'crm', store: s.store, settings: s.settings, signal, request: { url: s.api.url('/v1/me') } }));
}));

test('fetcher: an abort mid-refresh rejects at once with the signal\'s reason; the refresh finishes and is stored', { timeout: 60_000 }, () => withSetup(async (s) => {
  const rk = await rekey();
  const crmFetch = rk.fetcher({ credential: 'crm', store: s.store, settings: s.settings });
  await abortMidRefresh(s, rk, (signal) => crmFetch(s.api.url('/v1/me'), { method: 'POST', body: 'x', signal }));
}));

test('an already-aborted signal rejects with its reason and sends nothing (send, fetcher, a fetcher-wide signal)', () => withSetup(async ({ provider, token, api, store, settings }) => {
  const rk = await rekey();
  await provider.expireAccessTokens(); // a call that went ahead would refresh
  const reason = new Error('the caller gave up');
  await assert.rejects(rk.send({ credential: 'crm', store, settings, signal: AbortSignal.abort(reason), request: { url: api.url('/v1/me') } }), (e) => e === reason);
  const crmFetch = rk.fetcher({ credential: 'crm', store, settings });
  await assert.rejects(crmFetch(api.url('/v1/me'), { signal: AbortSignal.abort() }), isAbortError);
  const stopped = rk.fetcher({ credential: 'crm', store, settings, signal: AbortSignal.abort() });
  await assert.rejects(stopped(api.url('/v1/me')), isAbortError);
  await assert.rejects(rk.send({ credential: 'crm', store, settings, signal: /** @type {any} */ ('soon'), request: { url: api.url('/v1/me') } }), InvalidRequest);

  assert.equal(api.seen.length, 0, 'no API request');
  assert.equal(token.requests(), 0, 'no token request');
  const record = await store.read('crm');
  assert.equal(record.version, 0, 'the record was not touched');
}));

test('a call aborted while queued for a free instance never starts', { timeout: 60_000 }, () => withSetup(async ({ provider, token, api, store, settings }) => {
  const rk = await Rekey.load({ mode: /** @type {any} */ (process.env.REKEY_NODE_MODE ?? 'auto'), poolSize: 1 });
  try {
    await provider.expireAccessTokens();
    const hold = token.holdNext();
    const first = rk.send({ credential: 'crm', store, settings, request: { url: api.url('/v1/first') } });
    await hold.arrived; // the only instance is busy with the first call's refresh
    const controller = new AbortController();
    const queued = rk.send({ credential: 'crm', store, settings, signal: controller.signal, request: { url: api.url('/v1/queued') } });
    controller.abort();
    await assert.rejects(queued, isAbortError);
    hold.release();
    assert.equal((await first).status, 200);
    await rk.drain();
    assert.deepEqual(api.seen.map((r) => r.target), ['/v1/first', '/v1/first'], 'the queued call sent nothing');
    const stats = await provider.stats();
    assert.deepEqual([stats.refreshes_granted, stats.reused_refresh_tokens, stats.invalid_grant], [1, 0, 0]);
  } finally {
    rk.close();
  }
}));

test('authorizeDevice: an abort while polling rejects at once; polling stops at its next request, nothing stored', { timeout: 60_000 }, async () => {
  const rk = await rekey();
  let firstPoll;
  const polled = new Promise((r) => { firstPoll = r; });
  const requests = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests.push(req.url);
      const device = req.url === '/device';
      if (!device) firstPoll();
      res.writeHead(device ? 200 : 400, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify(device
        ? { device_code: 'scripted-device-code', user_code: 'ABCD-EFGH', verification_uri: 'http://127.0.0.1/activate', expires_in: 60, interval: 1 }
        : { error: 'authorization_pending' }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const saved = [];
    const controller = new AbortController();
    const flow = rk.authorizeDevice('d', {
      settings: { tokenUrl: `${base}/token`, apiOrigins: [base], deviceUrl: `${base}/device`, clientId: 'd' },
      onUpdateKeys: (k) => { saved.push(k); },
      onUserCode: () => {},
      signal: controller.signal,
    });
    await polled;
    controller.abort();
    await assert.rejects(flow, isAbortError);
    await rk.drain(); // the component's next poll is refused unsent, and the call ends
    assert.deepEqual(requests, ['/device', '/token'], 'no poll after the abort');
    assert.deepEqual(saved, [], 'nothing stored');
    await assert.rejects(rk.authorizeDevice('d', { settings: { tokenUrl: `${base}/token`, apiOrigins: [base], deviceUrl: `${base}/device`, clientId: 'd' },
      onUpdateKeys() {}, onUserCode() {}, signal: AbortSignal.abort() }), isAbortError);
    assert.equal(requests.length, 2, 'an already-aborted signal sends nothing');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
