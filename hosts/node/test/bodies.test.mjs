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
import { Rekey, RejectedAfterRefresh } from '../src/index.js';
import { REJECTED_ACCESS_TOKEN, imported, rekey, tempStore } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

const MIB = 1024 * 1024;

/**
 * An API on loopback that keeps every request's body and answers `answer(body)`
 * (a 401 to the rejected access token, or to every token when `alwaysReject`).
 */
async function withApi({ alwaysReject = false } = {}, body) {
  const seen = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const received = Buffer.concat(chunks);
      const token = req.headers.authorization?.replace(/^Bearer /, '');
      seen.push({ token, body: received });
      const rejected = alwaysReject || token === REJECTED_ACCESS_TOKEN;
      res.writeHead(rejected ? 401 : 200, { 'content-type': 'application/octet-stream' });
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
    await store.create('bulk', { settings: provider.settings(), keys: imported(first, { access_token: REJECTED_ACCESS_TOKEN }) });
    const body = randomBytes(MIB);

    await withApi({}, async (url, seen) => {
      const res = await rk.send({
        credential: 'bulk', store, settings: provider.settings(),
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
        settings: provider.settings(),
        keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }),
        request: { method: 'PUT', url, body },
        onUpdateKeys: () => {},
      }).then(() => assert.fail('the API rejects every token'), (e) => e);

      assert.ok(err instanceof RejectedAfterRefresh, inspect(err));
      assert.equal(seen.length, 2);
      assert.equal(err.response.status, 401);
      assert.equal(digest(err.response.body), digest(answer(seen[1].body)));
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
    await rk.send({ settings: provider.settings(), keys: imported(await provider.authorize()), request: { url: provider.api('warm') }, onUpdateKeys: () => {} });
    await withApi({}, async (url, seen) => {
      let res;
      const crossed = await countingThreadTraffic(async () => {
        res = await rk.send({
          settings: provider.settings(),
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
