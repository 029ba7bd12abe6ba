// Bodies cross the component as handles of the host's `types.body`: an API
// body of any size goes out and comes back byte-exact, the same request body
// twice when a refresh comes between. Real HTTP on loopback: the testkit
// provider's token endpoint and an API server here that checks the token.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { serialize } from 'node:v8';
import { MessagePort, Worker } from 'node:worker_threads';
import { Body } from '../src/bodies.js';
import { InsufficientScope, Rekey, RejectedAfterRefresh } from '../src/index.js';
import { REJECTED_ACCESS_TOKEN, imported, rekey, tempStore } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

const MIB = 1024 * 1024;

/**
 * An API on loopback that keeps every request's body and answers `answer(body)`
 * (a 401 to the rejected access token, or to every token when `alwaysReject`).
 */
async function withApi({ alwaysReject = false, scopeChallenge = false } = {}, body) {
  const seen = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const received = Buffer.concat(chunks);
      const token = req.headers.authorization?.replace(/^Bearer /, '');
      seen.push({ token, body: received });
      const rejected = alwaysReject || token === REJECTED_ACCESS_TOKEN;
      res.writeHead(rejected ? 401 : 200, {
        'content-type': 'application/octet-stream',
        ...(rejected && scopeChallenge ? { 'www-authenticate': 'Bearer error="insufficient_scope", scope="write"' } : {}),
      });
      res.end(answer(received));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await body(`http://127.0.0.1:${server.address().port}/upload`, seen);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

/** The API's answer: a body of the same size that differs from the request in every byte. */
const answer = (bytes) => Buffer.from(bytes.map((b) => b ^ 0xff));
const digest = (bytes) => createHash('sha256').update(bytes).digest('hex');

test('a 1 MiB request body goes out twice around a refresh, and its 1 MiB answer comes back byte-exact', async () => {
  const provider = await startTestkit();
  try {
    const rk = await rekey();
    const store = await tempStore();
    const first = await provider.authorize();
    await store.create('bulk', { settings: provider.settings({ apiOrigins: ['*'] }), keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }) });
    const body = randomBytes(MIB);

    await withApi({}, async (url, seen) => {
      const res = await rk.send({
        credential: 'bulk', store, settings: provider.settings({ apiOrigins: ['*'] }),
        request: { method: 'POST', url, headers: { 'content-type': 'application/octet-stream' }, body },
      });

      assert.equal(res.status, 200);
      assert.equal((await provider.stats()).refreshes_granted, 1, 'one refresh between the two requests');
      assert.equal(seen.length, 2);
      assert.equal(seen[0].token, REJECTED_ACCESS_TOKEN);
      assert.notEqual(seen[1].token, REJECTED_ACCESS_TOKEN, 'the retry carries the new token');
      for (const s of seen) assert.equal(digest(s.body), digest(body), 'the same request body both times');
      assert.equal(res.body.byteLength, MIB);
      assert.equal(digest(res.body), digest(answer(body)), "the API's answer, byte-exact");
      assertOwnsItsBuffer(res.body, [], 'a 1 MiB body');
    });
  } finally {
    await provider.stop();
  }
});

test('a 1 MiB answer carried by an error (rejected after the refresh) comes back byte-exact', async () => {
  const provider = await startTestkit();
  try {
    const rk = await rekey();
    const body = randomBytes(MIB);
    await withApi({ alwaysReject: true }, async (url, seen) => {
      const err = await rk.send({
        settings: provider.settings({ apiOrigins: ['*'] }),
        keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }),
        request: { method: 'PUT', url, body },
        onUpdateKeys: () => {},
      }).then(() => assert.fail('the API rejects every token'), (e) => e);

      assert.ok(err instanceof RejectedAfterRefresh, inspect(err));
      assert.equal(seen.length, 2);
      assert.equal(err.response.status, 401);
      assert.equal(digest(err.response.body), digest(answer(seen[1].body)));
      assertOwnsItsBuffer(err.response.body, [], 'a 1 MiB body in an error');
      assert.equal(digest(seen[1].body), digest(body));
    });
  } finally {
    await provider.stop();
  }
});

/** Runs `body` while counting the bytes of every message between this thread and worker threads. */
async function countingThreadTraffic(body) {
  let bytes = 0;
  const count = (msg) => { bytes += serialize(msg).byteLength; };
  const patched = [[Worker.prototype, 'postMessage'], [MessagePort.prototype, 'postMessage'], [Worker.prototype, 'emit']];
  const originals = patched.map(([proto, name]) => Object.getOwnPropertyDescriptor(proto, name));
  Worker.prototype.postMessage = function (msg, ...rest) { count(msg); return originals[0].value.call(this, msg, ...rest); };
  MessagePort.prototype.postMessage = function (msg, ...rest) { count(msg); return originals[1].value.call(this, msg, ...rest); };
  Worker.prototype.emit = function (event, msg, ...rest) {
    if (event === 'message') count(msg);
    return Object.getPrototypeOf(Worker.prototype).emit.call(this, event, msg, ...rest);
  };
  try {
    await body();
  } finally {
    patched.forEach(([proto, name], i) => {
      if (originals[i]) Object.defineProperty(proto, name, originals[i]);
      else delete proto[name];
    });
  }
  return bytes;
}

test('worker threads: API bodies stay on the calling thread; only token forms and answers cross', async (t) => {
  const provider = await startTestkit();
  const rk = await Rekey.load({ mode: 'worker', poolSize: 1 });
  try {
    const body = randomBytes(MIB);
    await rk.send({ settings: provider.settings({ apiOrigins: ['*'] }), keys: imported(await provider.authorize()), request: { url: provider.api('warm') }, onUpdateKeys: () => {} });
    await withApi({}, async (url, seen) => {
      let res;
      const crossed = await countingThreadTraffic(async () => {
        res = await rk.send({
          settings: provider.settings({ apiOrigins: ['*'] }),
          keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }),
          request: { method: 'POST', url, body },
          onUpdateKeys: () => {},
        });
      });
      assert.equal(seen.length, 2, 'sent twice, around a refresh');
      assert.equal(digest(res.body), digest(answer(body)));
      // Two 1 MiB requests and a 1 MiB answer went by; the messages carried
      // the settings, heads, record, token form and token answer only.
      t.diagnostic(`${crossed} bytes crossed between the threads`);
      assert.ok(crossed > 0 && crossed < 32 * 1024, `${crossed} bytes crossed between the threads`);
    });
  } finally {
    rk.close();
    await provider.stop();
  }
});

test("a body's bytes never print (a token form carries the client secret)", () => {
  const secret = 'client_secret=s3cr3t-value';
  const body = new Body(new TextEncoder().encode(secret));
  assert.doesNotMatch(inspect(body, { showHidden: true, depth: 5 }), /s3cr3t|115, 51/);
  assert.doesNotMatch(JSON.stringify(body), /s3cr3t/);
  assert.equal(new TextDecoder().decode(body.read(13n)), 'client_secret');
  assert.equal(body.read(2n ** 64n - 1n).byteLength, secret.length, 'a limit past the end reads it all');
});

/**
 * A body handed to the caller is its own: a view into a larger ArrayBuffer
 * (Node's shared pool slab, where small Buffers live) would let
 * `body.buffer` show whatever else sits there, such as the token answer
 * this call just received.
 */
function assertOwnsItsBuffer(bytes, secrets, what) {
  assert.ok(bytes instanceof Uint8Array, what);
  assert.equal(bytes.byteOffset, 0, `${what}: starts its ArrayBuffer`);
  assert.equal(bytes.buffer.byteLength, bytes.byteLength, `${what}: is its whole ArrayBuffer`);
  const whole = Buffer.from(bytes.buffer).toString('latin1');
  for (const secret of secrets) assert.ok(!whole.includes(secret), `${what}: its ArrayBuffer holds no token`);
}

test('small bodies handed to the caller own their ArrayBuffer: ok, rejected after a refresh, insufficient scope', async () => {
  const provider = await startTestkit(['--access-ttl-ms', '600000']);
  try {
    const rk = await rekey();
    const store = await tempStore();
    const first = await provider.authorize();
    await store.create('small', { settings: provider.settings({ apiOrigins: ['*'] }), keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }) });
    const res = await rk.send({ credential: 'small', store, settings: provider.settings({ apiOrigins: ['*'] }), request: { url: provider.api('me') } });
    assert.equal(res.status, 200);
    assert.ok(res.body.byteLength > 0 && res.body.byteLength < 1024, 'a small body (pooled, were it allocated from the pool)');
    const keys = JSON.parse(await store.loadKeys('small'));
    assert.notEqual(keys.refresh_token, first.refresh_token, 'the refresh this call made rotated it');
    assertOwnsItsBuffer(res.body, [keys.refresh_token, keys.access_token], 'an ok body');

    for (const scopeChallenge of [false, true]) {
      await withApi({ alwaysReject: true, scopeChallenge }, async (url) => {
        let updated;
        const err = await rk.send({
          settings: provider.settings({ apiOrigins: ['*'] }),
          keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }),
          request: { method: 'POST', url, body: 'small' },
          onUpdateKeys: (k) => { updated = JSON.parse(k.toJSONString()); },
        }).then(() => assert.fail('the API rejects every token'), (e) => e);
        const Expected = scopeChallenge ? InsufficientScope : RejectedAfterRefresh;
        assert.ok(err instanceof Expected, inspect(err));
        assert.equal(err.response.body.byteLength, 'small'.length);
        const secrets = updated ? [updated.refresh_token, updated.access_token] : [];
        assertOwnsItsBuffer(err.response.body, secrets, `the body of ${Expected.name}`);
      });
    }
  } finally {
    await provider.stop();
  }
});

test("the request body is the caller's bytes as they were at send(): reusing the buffer meanwhile changes no request", async () => {
  const provider = await startTestkit();
  try {
    const rk = await rekey();
    const original = 'order=42&item=book';
    // A small Buffer: a view into Node's pool, at an offset.
    const body = Buffer.from(original);
    await withApi({}, async (url, seen) => {
      let reused = false;
      const res = await rk.send({
        settings: provider.settings({ apiOrigins: ['*'] }),
        keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }),
        request: { method: 'POST', url, body },
        onUpdateKeys: () => {},
        // After the first API answer (the 401), before the retry: the caller
        // reuses its buffer, as it may once send() has it.
        onEvent: (e) => {
          if (e.type === 'http' && e.exchange === 'api' && !reused) {
            reused = true;
            body.fill('x');
          }
        },
      });
      assert.equal(res.status, 200);
      assert.ok(reused);
      assert.equal(seen.length, 2, 'sent twice, around a refresh');
      assert.deepEqual(seen.map((s) => s.body.toString()), [original, original]);
    });
  } finally {
    await provider.stop();
  }
});
