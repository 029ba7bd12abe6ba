// Where a token may go. The component refuses first (guest/src/origins.rs);
// the host repeats the rules at `http-send` as a second line. The host's
// checks are driven here directly (the component never asks for these
// requests), against real listeners that count connections, so "refused"
// means no byte left.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { networkInterfaces } from 'node:os';
import { test } from 'node:test';
import { refusal } from '../src/boundary.js';
import { CallHost } from '../src/call-host.js';
import { HttpClient } from '../src/http.js';
import { InvalidSettings, MemoryStore } from '../src/index.js';
import { toWitSettings } from '../src/wit-values.js';
import { imported, rekey } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

/** A listener on every interface that counts connections. */
async function counting(body) {
  let connections = 0;
  const server = createServer((req, res) => res.end('ok'));
  server.on('connection', () => { connections += 1; });
  await new Promise((r) => server.listen(0, '0.0.0.0', r));
  try {
    return await body(server.address().port, () => connections);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

/** This machine's first non-loopback IPv4 address (a listener on 0.0.0.0 answers there). */
function offLoopbackAddress() {
  return Object.values(networkInterfaces()).flat().find((i) => i?.family === 'IPv4' && !i.internal)?.address;
}

const hostFor = (settings, store, record) => new CallHost({
  credential: record, record, store, settings: toWitSettings({ clientId: 'c', apiOrigins: ['*'], ...settings }),
  http: new HttpClient(), deadline: Date.now() + 120_000,
});
// A request head and its (empty) body, as `http-send` gets them.
const request = (url) => [{ method: 'POST', url, headers: [] }, new Uint8Array()];

test('http-send: a token-endpoint request over plain http off loopback is refused, no byte sent', async (t) => {
  const ip = offLoopbackAddress();
  if (!ip) t.diagnostic('no non-loopback IPv4 address here: the refusal is checked against a name instead');
  await counting(async (port, connections) => {
    const tokenUrl = ip ? `http://${ip}:${port}/token` : 'http://idp.rekey-test.invalid/token';
    const host = hostFor({ tokenUrl });
    const result = await host.httpSend('token-endpoint', ...request(tokenUrl));
    assert.equal(result.ok, false);
    assert.equal(result.error.tag, 'refused');
    assert.match(result.error.val, /loopback/);
    assert.equal(connections(), 0, 'nothing reached the listener');
    if (ip) {
      // The same listener is reachable: only the rule kept the request back.
      const api = await hostFor({ tokenUrl: 'https://idp.example/token', apiOrigins: ['*'] }).httpSend('api', ...request(`http://127.0.0.1:${port}/x`));
      assert.equal(api.ok, true);
      assert.equal(connections(), 1);
    }
  });
});

test("http-send: a token-endpoint request goes to the settings' token URL only", async () => {
  await counting(async (port, connections) => {
    const host = hostFor({ tokenUrl: `http://127.0.0.1:${port}/token` });
    for (const url of [`http://127.0.0.1:${port}/elsewhere`, `http://127.0.0.1:${port}/token?x=1`, `http://localhost:${port}/token`]) {
      const result = await host.httpSend('token-endpoint', ...request(url));
      assert.deepEqual([result.ok, result.error?.tag], [false, 'refused'], url);
    }
    assert.equal(connections(), 0);
    assert.equal((await host.httpSend('token-endpoint', ...request(`http://127.0.0.1:${port}/token`))).ok, true);
    assert.equal(connections(), 1);
  });
});

test("http-send: an API request outside the credential's origins is refused, no byte sent", async () => {
  await counting(async (port, connections) => {
    const url = `http://127.0.0.1:${port}/v1/me`;
    const bound = hostFor({ tokenUrl: 'https://idp.example/token', apiOrigins: ['https://api.example.com', 'https://*.example.org'] });
    const result = await bound.httpSend('api', ...request(url));
    assert.deepEqual([result.ok, result.error?.tag], [false, 'refused']);
    assert.equal(connections(), 0);
    const allowed = hostFor({ tokenUrl: 'https://idp.example/token', apiOrigins: [`http://127.0.0.1:${port}`] });
    assert.equal((await allowed.httpSend('api', ...request(url))).ok, true);
    assert.equal(connections(), 1);
  });
});

test('the origin rules: exact origins, subdomain wildcards, plain http only on loopback, instance_url when allowed', () => {
  const rules = { tokenUrl: 'https://idp.example/token', apiOrigins: ['https://api.example.com', 'https://*.crm.example'] };
  for (const url of ['https://api.example.com/v1/me?x=1', 'https://API.example.com:443/', 'https://eu1.crm.example/data', 'https://a.b.crm.example/']) {
    assert.equal(refusal('api', url, rules), undefined, url);
  }
  for (const url of ['https://crm.example/', 'https://evilcrm.example/', 'https://api.example.com.evil/', 'https://api.example.com:8443/',
    'http://api.example.com/', 'https://evil.example/?https://api.example.com', 'https://api.example.com@evil.example/']) {
    assert.notEqual(refusal('api', url, rules), undefined, url);
  }
  // Unbound: refused; `*`: any origin, over a safe transport.
  assert.notEqual(refusal('api', 'https://anywhere.example/', { tokenUrl: 'https://idp.example/token' }), undefined);
  const any = { tokenUrl: 'https://idp.example/token', apiOrigins: ['*'] };
  assert.equal(refusal('api', 'https://anywhere.example/', any), undefined);
  assert.equal(refusal('api', 'http://[::1]:8080/x', any), undefined);
  assert.notEqual(refusal('api', 'http://api.example.com/', any), undefined);
  assert.notEqual(refusal('device-endpoint', 'http://idp.example/device', any), undefined);
  // Wildcards need two labels and no empty label matches.
  assert.notEqual(refusal('api', 'https://a.com/', { ...any, apiOrigins: ['https://*.com'] }), undefined);
  assert.notEqual(refusal('api', 'https://a..example.com/', { ...any, apiOrigins: ['https://*.example.com'] }), undefined);
  const instance = { ...rules, instanceUrlOrigins: ['https://*.my.salesforce.com'], instanceUrl: 'https://eu42.my.salesforce.com' };
  assert.equal(refusal('api', 'https://eu42.my.salesforce.com/services', instance), undefined);
  assert.notEqual(refusal('api', 'https://eu43.my.salesforce.com/', instance), undefined);
  assert.notEqual(refusal('api', 'http://127.0.0.2/steal', { ...rules, instanceUrlOrigins: ['https://*.my.salesforce.com'], instanceUrl: 'http://127.0.0.2' }), undefined);
  // An instance_url outside the instance patterns is ignored: never adopted.
  assert.notEqual(refusal('api', 'https://evil.example/', { ...rules, instanceUrlOrigins: ['https://*.my.salesforce.com'], instanceUrl: 'https://evil.example' }), undefined);
});

test("http-send: the token set's instance_url origin only when it matches the settings' instance patterns", async () => {
  const store = new MemoryStore();
  // The instance: a closed port on loopback over https, so an allowed request fails to connect and a refused one never tries.
  await store.create('sf', { settings: { tokenUrl: 'https://login.example/token', clientId: 'c' }, keys: { access_token: 'a', instance_url: 'https://127.0.0.1:9' } });
  const tag = async (instanceUrlOrigins) => {
    const host = hostFor({ tokenUrl: 'https://login.example/token', apiOrigins: ['https://login.example'], instanceUrlOrigins }, store, 'sf');
    assert.equal((await host.readRecord()).ok, true);
    return (await host.httpSend('api', ...request('https://127.0.0.1:9/services'))).error?.tag;
  };
  assert.equal(await tag(['https://127.0.0.1:9']), 'connect', 'allowed: it tried');
  assert.equal(await tag([]), 'refused');
  assert.equal(await tag(['https://*.my.salesforce.com']), 'refused', 'not matching: ignored');
});

test('through the component: an API URL outside the origins, or a token URL in clear text, is refused before any request', async () => {
  const p = await startTestkit([]);
  try {
    const rk = await rekey();
    const store = new MemoryStore();
    await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
    const send = (settings) => rk.send({ credential: 'crm', store, settings: p.settings(settings), request: { url: p.api('me') } })
      .then(() => assert.fail('refused'), (e) => e);
    const outside = await send({ apiOrigins: ['https://api.example.com'] });
    assert.ok(outside instanceof InvalidSettings, String(outside));
    assert.match(outside.message, /not one of the credential's API origins/);
    const clear = await send({ tokenUrl: 'http://idp.example/token' });
    assert.ok(clear instanceof InvalidSettings, String(clear));
    const stats = await p.stats();
    assert.equal(stats.api_calls + stats.token_calls, 0, 'nothing was sent');
    // The same credential with its origin listed works.
    assert.equal((await rk.send({ credential: 'crm', store, settings: p.settings({ apiOrigins: [new URL(p.api_url).origin] }), request: { url: p.api('me') } })).status, 200);
  } finally {
    await p.stop();
  }
});

test('a device request goes only to the device URL of an authorize call; a send makes none', () => {
  // Its body carries the client's credentials (client_secret_post, or Basic).
  const rules = { tokenUrl: 'https://idp.example/token', apiOrigins: ['*'] };
  for (const url of ['https://evil.example/steal', 'https://idp.example/token', 'https://idp.example/device']) {
    assert.notEqual(refusal('device-endpoint', url, rules), undefined, `${url}: admitted in a send`);
  }
  const authorize = { ...rules, deviceUrl: 'https://idp.example/device' };
  assert.equal(refusal('device-endpoint', 'https://idp.example/device', authorize), undefined);
  for (const url of ['https://evil.example/steal', 'https://idp.example/token', 'https://idp.example/device?x']) {
    assert.notEqual(refusal('device-endpoint', url, authorize), undefined, url);
  }
});
