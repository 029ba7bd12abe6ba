// The host's own parts: the engine choice, the component's identity, real
// HTTP's error mapping (through the component, against small local servers)
// and redaction. The boundary checks: boundary.test.mjs; stores: stores.test.mjs.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { inspect } from 'node:util';
import {
  InvalidRequest, MemoryStore, Rekey, Secret, StoreUnavailable, TokenSet, TransportError, jspiAvailable, keysFromTokenResponse,
} from '../src/index.js';
import { rekey } from './support/harness.mjs';

const major = Number(process.versions.node.split('.')[0]);

test('engine: JSPI where the runtime has it, else worker threads', async () => {
  assert.equal(jspiAvailable(), major >= 24, `Node ${process.version}`);
  const rk = await rekey();
  const expected = process.env.REKEY_NODE_MODE && process.env.REKEY_NODE_MODE !== 'auto'
    ? process.env.REKEY_NODE_MODE
    : (major >= 24 ? 'jspi' : 'worker');
  assert.equal(rk.mode, expected);
  if (!jspiAvailable()) await assert.rejects(Rekey.load({ mode: 'jspi' }), /no JSPI/);
});

test('component: built from the wasm the Rust host embeds', async (t) => {
  const rk = await rekey();
  assert.match(rk.wasmSha256, /^[0-9a-f]{64}$/);
  if (process.env.REKEY_WASM) {
    const sha = createHash('sha256').update(await readFile(process.env.REKEY_WASM)).digest('hex');
    assert.equal(rk.wasmSha256, sha, 'gen/ was built from $REKEY_WASM');
  }
  if (!process.env.REKEY_WASM_SHA256) {
    t.skip('REKEY_WASM_SHA256 is not set (CI sets it)');
    return;
  }
  assert.equal(rk.wasmSha256, process.env.REKEY_WASM_SHA256);
});

/** A throwaway HTTP server on loopback for one test. */
async function withServer(handler, body) {
  const server = createServer(handler);
  server.on('connection', (s) => server.sockets?.add(s));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  try {
    return await body(url);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const apiSend = (rk, url, extra = {}) => rk.send({
  settings: { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['*'], clientId: 'c' }, // servers on any port
  keys: { access_token: 'at', refresh_token: 'rt' },
  onUpdateKeys: () => {},
  request: { url, ...extra },
});

const transportKind = (promise) => promise.then(
  (res) => assert.fail(`expected a transport error, got HTTP ${res.status}`),
  (err) => { assert.ok(err instanceof TransportError, String(err)); return err.kind; },
);

test('http: Host and Content-Length are set, the bearer token sent, redirects returned', async () => {
  const rk = await rekey();
  await withServer((req, res) => {
    let size = 0;
    req.on('data', (c) => { size += c.length; });
    req.on('end', () => {
      res.setHeader('location', '/elsewhere');
      res.statusCode = 302;
      res.end(JSON.stringify({ host: req.headers.host, length: req.headers['content-length'], size, auth: req.headers.authorization }));
    });
  }, async (url) => {
    const res = await apiSend(rk, `${url}/p`, { method: 'PUT', body: 'hello' });
    assert.equal(res.status, 302, 'not followed');
    assert.equal(res.header('location'), '/elsewhere');
    assert.deepEqual(res.json(), { host: new URL(url).host, length: '5', size: 5, auth: 'Bearer at' });
  });
});

test('http: connect, timeout, too-large, reset and invalid-request', async () => {
  const rk = await rekey();
  assert.equal(await transportKind(apiSend(rk, 'http://127.0.0.1:9/closed')), 'connect');
  assert.equal(await transportKind(apiSend(rk, 'https://no-such-host.invalid/x')), 'connect');
  assert.equal(await transportKind(apiSend(rk, 'http://127.0.0.1:9/x', { headers: { 'x-bad': 'a\r\nb' } })), 'invalid-request');

  const small = await Rekey.load({ mode: rk.mode, http: { totalTimeoutMs: 500, maxResponseBytes: 1024 }, poolSize: 1 });
  try {
    await withServer((req, res) => {
      if (req.url === '/hang') return; // never answers
      if (req.url === '/reset') { req.socket.destroy(); return; }
      if (req.url === '/big') { res.end(Buffer.alloc(4096)); return; }
      if (req.url === '/big-chunked') { res.write(Buffer.alloc(800)); res.end(Buffer.alloc(800)); return; }
      res.end('ok');
    }, async (url) => {
      assert.equal(await transportKind(apiSend(small, `${url}/hang`)), 'timeout');
      assert.equal(await transportKind(apiSend(small, `${url}/reset`)), 'other');
      assert.equal(await transportKind(apiSend(small, `${url}/big`)), 'too-large');
      assert.equal(await transportKind(apiSend(small, `${url}/big-chunked`)), 'too-large');
      assert.equal((await apiSend(small, `${url}/fine`)).text(), 'ok');
    });
  } finally {
    small.close();
  }
});

test('secrets: Secret and TokenSet never print their values', () => {
  const s = new Secret('hunter2');
  const t = new TokenSet({ access_token: 'at-value', refresh_token: 'rt-value' });
  const printed = [inspect(s), String(s), `${s}`, JSON.stringify({ s }), inspect(t), String(t), JSON.stringify(t), inspect({ nested: [s, t] })].join(' ');
  for (const value of ['hunter2', 'at-value', 'rt-value']) assert.ok(!printed.includes(value), printed);
  assert.equal(s.expose(), 'hunter2');
  assert.equal(t.get('refresh_token'), 'rt-value');
});

test('keysFromTokenResponse adds expires_at', () => {
  const keys = keysFromTokenResponse({ access_token: 'a', expires_in: 60 }, 1_000_000);
  assert.equal(keys.expires_at, 1060);
  assert.throws(() => keysFromTokenResponse({ token_type: 'Bearer' }), /access_token or a refresh_token/);
});

test('a store without the credential: StoreUnavailable, nothing sent; a store and keys together are refused', async () => {
  const rk = await rekey();
  const store = new MemoryStore();
  const err = await rk.send({ credential: 'nobody', store, settings: { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['http://127.0.0.1:9'], clientId: 'c' }, request: { url: 'http://127.0.0.1:9/x' } })
    .then(() => assert.fail('no such credential'), (e) => e);
  assert.ok(err instanceof StoreUnavailable, String(err));
  assert.equal(err.sendErrorCase, 'store-unavailable');
  assert.match(err.message, /no credential named "nobody"/);
  await assert.rejects(rk.send({ credential: 'nobody', store, keys: {}, onUpdateKeys: () => {}, settings: { tokenUrl: 'https://idp.example/token', clientId: 'c', apiOrigins: ['https://api.example'] }, request: { url: 'https://api.example/' } }), InvalidRequest);
});
