// Loopback servers in front of the testkit provider, for tests that must see
// or hold what passes: a token endpoint that forwards to the provider's and
// can hold an answer until the test lets it go (a refresh caught between the
// provider's rotation and rekey's write, with no timing involved), and an API
// that records each request as it arrived and answers as told once the
// provider's own API has accepted the token.

import { createServer } from 'node:http';

/** Collects a request's body. */
function bodyOf(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function listen(handler) {
  const server = createServer((req, res) => {
    handler(req, res).catch(() => {
      res.writeHead(500).end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/**
 * A token endpoint forwarding to `tokenUrl` (the testkit's). `holdNext()`
 * makes the next request's answer wait, AFTER the provider has answered
 * (so it has rotated the refresh token): `arrived` resolves then, and the
 * answer goes back to rekey when the test calls `release()`.
 */
export async function heldTokenEndpoint(tokenUrl) {
  const holds = [];
  let requests = 0;
  const server = await listen(async (req, res) => {
    const body = await bodyOf(req);
    requests += 1;
    const headers = { 'content-type': req.headers['content-type'] ?? 'application/x-www-form-urlencoded' };
    if (req.headers.authorization) headers.authorization = req.headers.authorization;
    const answer = await fetch(tokenUrl, { method: 'POST', headers, body });
    const text = await answer.text();
    const hold = holds.shift();
    if (hold) {
      hold.arrive();
      await hold.released;
    }
    res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'application/json' });
    res.end(text);
  });
  return {
    url: `${server.origin}/token`,
    requests: () => requests,
    holdNext() {
      let arrive;
      let release;
      const hold = {
        arrived: new Promise((r) => { arrive = r; }),
        released: new Promise((r) => { release = r; }),
      };
      hold.arrive = arrive;
      holds.push(hold);
      return { arrived: hold.arrived, release };
    },
    close: () => server.close(),
  };
}

/**
 * An API that records every request ({method, target (path and query as
 * sent), headers (raw pairs), body}) and checks its bearer token with the
 * testkit's API (`/api/echo`): a token the provider refuses gets the
 * provider's 401; an accepted one gets `answer(request)` ({status, headers
 * (pairs), body}), by default 200 with the request's body.
 */
export async function recordingApi(provider) {
  const seen = [];
  let answer = (r) => ({ status: 200, headers: [['content-type', 'application/octet-stream']], body: r.body });
  const server = await listen(async (req, res) => {
    const body = await bodyOf(req);
    const request = { method: req.method, target: req.url, headers: pairs(req.rawHeaders), body };
    seen.push(request);
    const check = await fetch(provider.api('echo'), {
      method: 'POST',
      headers: req.headers.authorization ? { authorization: req.headers.authorization } : {},
    });
    await check.arrayBuffer();
    if (check.status !== 200) {
      res.writeHead(check.status, { 'www-authenticate': check.headers.get('www-authenticate') ?? 'Bearer' });
      res.end();
      return;
    }
    const a = answer(request);
    res.writeHead(a.status, a.headers.flat());
    res.end(a.body);
  });
  return {
    origin: server.origin,
    url: (path) => `${server.origin}${path}`,
    seen,
    /** Sets how accepted requests are answered. */
    answerWith(fn) {
      answer = fn;
    },
    close: () => server.close(),
  };
}

function pairs(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) out.push([raw[i].toLowerCase(), raw[i + 1]]);
  return out;
}
