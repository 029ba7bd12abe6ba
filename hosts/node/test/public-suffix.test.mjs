// Wildcards over a public suffix (issue 20). The component has no public
// suffix list, so this host refuses them itself, as the Rust host does
// (host/src/origins.rs): when a credential is created (store.create), in
// every call's settings check (checkSettings, send), and again at http-send.

import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { refusal } from '../src/boundary.js';
import { CallHost } from '../src/call-host.js';
import { HttpClient } from '../src/http.js';
import { InvalidSettings, MemoryStore } from '../src/index.js';
import { toWitSettings } from '../src/wit-values.js';
import { imported, rekey, tempStore } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

// ICANN section (co.uk, 公司.cn), private section (github.io, googleapis.com).
// kobe.jp has only the rule `*.kobe.jp`: every name below it is a public
// suffix, so it counts as one (as the list's linter and issue 1989 of the
// list read it; the Rust host's psl crate does not yet), while city.kobe.jp,
// the rule's exception, is a registrable domain.
const REFUSED = ['https://*.co.uk', 'https://*.github.io', 'https://*.googleapis.com', 'https://*.CO.UK:8443',
  'https://*.xn--55qx5d.cn', 'https://*.公司.cn', 'https://*.kobe.jp'];
const ACCEPTED = ['https://*.example.com', 'https://*.my.salesforce.com', 'https://*.example.co.uk',
  'https://*.example.github.io', 'https://co.uk', 'https://*.city.kobe.jp'];
const FIELDS = ['apiOrigins', 'instanceUrlOrigins'];
const base = { tokenUrl: 'https://idp.example/token', clientId: 'c' };
const withPattern = (field, pattern) => ({ ...base, apiOrigins: field === 'apiOrigins' ? [pattern] : ['https://api.example.com'], [field]: [pattern] });

function refusedFor(pattern, field) {
  return (e) => e instanceof InvalidSettings
    && e.message.includes(`${field}: ${JSON.stringify(pattern)} is a wildcard over a public suffix`)
    && e.message.includes("matches other people's sites");
}

test('checkSettings refuses a wildcard over a public suffix in either pattern list, naming it', async () => {
  const rk = await rekey();
  for (const field of FIELDS) {
    for (const pattern of REFUSED) {
      await assert.rejects(rk.checkSettings(withPattern(field, pattern)), refusedFor(pattern, field), `${field} ${pattern}`);
    }
    for (const pattern of ACCEPTED) {
      await rk.checkSettings(withPattern(field, pattern));
    }
  }
});

test('store.create refuses it and writes nothing; the memory and SQLite stores alike', async () => {
  for (const store of [new MemoryStore(), await tempStore()]) {
    for (const field of FIELDS) {
      for (const pattern of REFUSED) {
        await assert.rejects(store.create('c', { settings: withPattern(field, pattern) }), refusedFor(pattern, field), `${field} ${pattern}`);
      }
    }
    assert.deepEqual(await store.list(), [], 'no credential was created');
    let n = 0;
    for (const field of FIELDS) {
      for (const pattern of ACCEPTED) {
        assert.equal(await store.create(`ok${n++}`, { settings: withPattern(field, pattern) }), true, `${field} ${pattern}`);
      }
    }
    assert.equal((await store.list()).length, n);
  }
});

test('send: settings with such a wildcard fail before any request; the registrable domain below it works', async () => {
  const p = await startTestkit([]);
  try {
    const rk = await rekey();
    const store = new MemoryStore();
    await store.create('crm', { settings: p.settings(), keys: imported(await p.authorize()) });
    const send = (extra) => rk.send({ credential: 'crm', store, settings: p.settings(extra), request: { url: p.api('me') } });
    const origin = new URL(p.api_url).origin;
    await assert.rejects(send({ apiOrigins: [origin, 'https://*.co.uk'] }), refusedFor('https://*.co.uk', 'apiOrigins'));
    await assert.rejects(send({ apiOrigins: ['*'], instanceUrlOrigins: ['https://*.github.io'] }), refusedFor('https://*.github.io', 'instanceUrlOrigins'));
    const stats = await p.stats();
    assert.equal(stats.api_calls + stats.token_calls, 0, 'nothing was sent');
    assert.equal((await send({ apiOrigins: [origin, 'https://*.example.co.uk'], instanceUrlOrigins: ['https://*.example.github.io'] })).status, 200);
  } finally {
    await p.stop();
  }
});

/** A TCP listener on loopback that counts connections and closes each at once. */
async function counting(body) {
  let connections = 0;
  const server = net.createServer((socket) => { connections += 1; socket.destroy(); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await body(server.address().port, () => connections);
  } finally {
    await new Promise((r) => server.close(r));
  }
}

test('http-send, the second line: such a pattern in the settings refuses API requests unsent, even ones another pattern allows', async () => {
  await counting(async (port, connections) => {
    // Every name resolves to the counting listener: "refused" means no connection was made.
    const http = new HttpClient({ resolve: (host, options, callback) => callback(null, [{ address: '127.0.0.1', family: 4 }]) });
    // Settings as a component that let them through would hand them over.
    const send = (patterns) => new CallHost({
      credential: 'c', record: 'c', store: new MemoryStore(), http, deadline: Date.now() + 120_000,
      settings: { ...toWitSettings({ ...base, apiOrigins: ['*'] }), ...patterns },
    }).httpSend('api', { method: 'GET', url: `https://api.example.co.uk:${port}/v1`, headers: [] }, new Uint8Array());
    try {
      const allowed = await send({ apiOrigins: [`https://*.example.co.uk:${port}`] });
      assert.notEqual(allowed.error?.tag, 'refused', 'the registrable domain is allowed: it connected');
      assert.equal(connections(), 1);
      for (const patterns of [
        { apiOrigins: [`https://*.co.uk:${port}`] },
        { apiOrigins: [`https://*.example.co.uk:${port}`, `https://*.co.uk:${port}`] },
        { apiOrigins: ['*'], instanceUrlOrigins: ['https://*.github.io'] },
      ]) {
        const result = await send(patterns);
        assert.equal(result.error?.tag, 'refused', JSON.stringify(patterns));
        assert.match(result.error.val, /is a wildcard over a public suffix \((co\.uk|github\.io)\)/);
      }
      assert.equal(connections(), 1, 'nothing more reached the listener');
    } finally {
      http.close();
    }
  });
});

test('refusal(): the rule on its own', () => {
  const url = 'https://api.example.co.uk/';
  for (const pattern of ['https://*.co.uk', 'https://*.github.io', 'https://*.googleapis.com']) {
    assert.match(refusal('api', url, { tokenUrl: base.tokenUrl, apiOrigins: [pattern] }), /public suffix/, pattern);
  }
  assert.equal(refusal('api', url, { tokenUrl: base.tokenUrl, apiOrigins: ['https://*.example.co.uk'] }), undefined);
  assert.equal(refusal('api', 'https://eu42.my.salesforce.com/x', { tokenUrl: base.tokenUrl, apiOrigins: ['https://*.my.salesforce.com'] }), undefined);
  assert.equal(refusal('api', 'https://a.example.com/x', { tokenUrl: base.tokenUrl, apiOrigins: ['https://*.example.com'] }), undefined);
  // Token requests do not carry the access token: the rule is not theirs.
  assert.equal(refusal('token-endpoint', base.tokenUrl, { tokenUrl: base.tokenUrl, apiOrigins: ['https://*.co.uk'] }), undefined);
});
