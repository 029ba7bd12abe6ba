// "Loopback" is an address: `http-send` goes to `localhost` only when every
// address it resolves to is loopback, and writes a plain http:// request only
// to a socket whose peer is loopback. Driven on HttpClient directly, with the
// resolver's answers chosen by the test, against listeners that count bytes.

import assert from 'node:assert/strict';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import { test } from 'node:test';
import { HttpClient, isLoopbackAddress } from '../src/http.js';

/** A TCP listener on `host` that counts connections and bytes, answering 204 to whatever arrives. */
async function sink(host, body) {
  const seen = { connections: 0, bytes: 0 };
  const server = net.createServer((socket) => {
    seen.connections += 1;
    socket.on('data', (chunk) => {
      seen.bytes += chunk.length;
      socket.end('HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n');
    });
    socket.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, host, r));
  try {
    return await body(server.address().port, seen);
  } finally {
    await new Promise((r) => server.close(r));
  }
}

/** A client whose resolver answers these addresses for every name. */
const resolvingTo = (...addresses) => new HttpClient({
  resolve: (hostname, options, callback) => callback(null, addresses.map((address) => ({
    address, family: net.isIP(address),
  }))),
});

const post = (url) => ({ method: 'POST', url, headers: [['authorization', 'Basic c2VjcmV0']], body: new TextEncoder().encode('refresh_token=r') });

test('loopback: addresses, not names', () => {
  for (const a of ['127.0.0.1', '127.9.9.9', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) assert.ok(isLoopbackAddress(a), a);
  for (const a of ['10.9.9.9', '::ffff:10.9.9.9', '0.0.0.0', '::', 'localhost', '', undefined]) assert.ok(!isLoopbackAddress(a), a);
});

test('loopback: localhost that also resolves elsewhere is refused before any connection', () => sink('127.0.0.1', async (port, seen) => {
  for (const answers of [['127.0.0.1', '10.9.9.9'], ['10.9.9.9', '127.0.0.1'], ['::ffff:10.9.9.9']]) {
    const client = resolvingTo(...answers);
    try {
      for (const url of [`http://localhost:${port}/t`, `https://localhost:${port}/t`, `http://LOCALHOST.:${port}/t`]) {
        for (const freshConnection of [true, false]) {
          const result = await client.send(post(url), { freshConnection });
          assert.equal(result.ok, false, `${answers} ${url}`);
          assert.equal(result.error.tag, 'refused', `${answers} ${url}: ${JSON.stringify(result.error)}`);
          assert.match(result.error.val, /not a loopback address/);
        }
      }
    } finally {
      client.close();
    }
  }
  assert.deepEqual(seen, { connections: 0, bytes: 0 }, 'the sink was reached');
  // The control: loopback answers alone reach the same sink.
  const client = resolvingTo('127.0.0.1');
  try {
    const result = await client.send(post(`http://localhost:${port}/t`), { freshConnection: true });
    assert.equal(result.value?.status, 204, JSON.stringify(result));
    assert.equal(seen.connections, 1);
  } finally {
    client.close();
  }
}));

test('loopback: a plain http:// request is written only to a loopback peer', async (t) => {
  const ip = Object.values(networkInterfaces()).flat().find((i) => i?.family === 'IPv4' && !i.internal)?.address;
  if (!ip) {
    t.skip('no non-loopback IPv4 address here to be the peer');
    return;
  }
  await sink(ip, async (port, seen) => {
    // A name the URL check lets through, resolved (as a hostile resolver
    // would) to another machine's address: the peer check is what stops it.
    const client = resolvingTo(ip);
    try {
      for (const freshConnection of [true, false]) {
        const result = await client.send(post(`http://loopback.test:${port}/t`), { freshConnection });
        assert.equal(result.error?.tag, 'refused', JSON.stringify(result));
        assert.match(result.error.val, /http:\/\/ peer is .* not a loopback address/);
      }
    } finally {
      client.close();
    }
    assert.equal(seen.bytes, 0, 'a byte reached a non-loopback peer');
  });
});

test('host: the Host sent is always the URL\'s own (no domain fronting)', async () => {
  let head = '';
  const server = net.createServer((socket) => {
    socket.on('data', (chunk) => {
      head += chunk.toString('latin1');
      if (head.includes('\r\n\r\n')) socket.end('HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n');
    });
    socket.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const { port } = server.address();
    const req = post(`http://127.0.0.1:${port}/t`);
    req.headers.push(['Host', 'evil.example']);
    const res = await new HttpClient({}).send(req);
    assert.equal(res.ok ? res.value.status : res, 204);
    assert.match(head.toLowerCase(), new RegExp(`host: 127\\.0\\.0\\.1:${port}\r\n`));
    assert.doesNotMatch(head.toLowerCase(), /evil\.example/);
  } finally {
    await new Promise((r) => server.close(r));
  }
});
