// Rekey vs plain Node `http`, in one run, on loopback: the same request with a
// Bearer header (warm call) against the testkit provider; the same 401 ->
// token refresh -> retry sequence done by hand (refresh call); and an empty
// and a 1 MiB response from a loopback API in a child process (bodies cross
// the component as handles, so rekey's extra time should not grow with the
// size). Runs are interleaved (the two body cases with each other too);
// medians, rekey's extra time over plain http per case (the median of the
// paired differences) and extra(1 MiB) / extra(empty) are printed. Never
// fails on timing.
//
//   node bench.mjs [--mode auto|jspi|worker] [--warm N] [--refresh N] [--bodies N]

import { spawn } from 'node:child_process';
import http from 'node:http';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Rekey, keysFromTokenResponse } from './src/index.js';
import { startTestkit } from './test/support/testkit.mjs';

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string', default: 'auto' },
    warm: { type: 'string', default: '2000' },
    refresh: { type: 'string', default: '200' },
    bodies: { type: 'string', default: '500' },
  },
});

const provider = await startTestkit(['--access-ttl-ms', '3600000']);
const rk = await Rekey.load({ mode: args.mode });
// Any origin, explicitly: the body server listens on a port chosen at run time.
const settings = provider.settings({ apiOrigins: ['*'] });
const agent = new http.Agent({ keepAlive: true });

function nativeRequest(method, url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// Each side has its own grant, so neither spends the other's refresh token.
let rekeyKeys = keysFromTokenResponse(await provider.authorize());
let native = await provider.authorize();
const url = provider.api('bench');

const rekeyWarm = () => rk.send({ settings, keys: rekeyKeys, request: { url }, onUpdateKeys: (k) => { rekeyKeys = k.expose(); } });
const nativeWarm = () => nativeRequest('GET', url, { authorization: `Bearer ${native.access_token}` });

// A stored set whose access token the API now refuses; without the marker of
// a refresh moments ago (the guest does not refresh a token that fresh again).
const expired = () => {
  const { rekey_refreshed_at: _, ...rest } = rekeyKeys;
  return { ...rest, access_token: 'rejected' };
};
const rekeyRefresh = () => rk.send({
  settings, keys: expired(), request: { url },
  onUpdateKeys: (k) => { rekeyKeys = k.expose(); },
});
async function nativeRefresh() {
  const first = await nativeRequest('GET', url, { authorization: 'Bearer rejected' });
  if (first.status !== 401) throw new Error('expected a 401');
  const basic = Buffer.from(`${encodeURIComponent(settings.clientId)}:${encodeURIComponent(settings.clientSecret)}`).toString('base64');
  const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: native.refresh_token }).toString();
  const token = await nativeRequest('POST', settings.tokenUrl, {
    authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json',
  }, form);
  native = { ...native, ...JSON.parse(token.body) };
  return nativeRequest('GET', url, { authorization: `Bearer ${native.access_token}` });
}

async function timeOne(fn) {
  const start = process.hrtime.bigint();
  const res = await fn();
  const us = Number(process.hrtime.bigint() - start) / 1000;
  if (res.status !== 200) throw new Error(`unexpected HTTP ${res.status}`);
  return us;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Times `cases` ({name, rekey, native}) n times each, interleaved (rekey then
 * plain, case after case), so a change in the machine's load hits every case
 * alike. Rekey's extra time is the median of the paired differences.
 */
async function compare(n, ...cases) {
  for (let i = 0; i < Math.min(50, n); i += 1) for (const c of cases) { await c.rekey(); await c.native(); } // warm-up
  const samples = cases.map(() => ({ rekey: [], native: [], extra: [] }));
  for (let i = 0; i < n; i += 1) {
    for (const [j, c] of cases.entries()) {
      const r = await timeOne(c.rekey);
      const m = await timeOne(c.native);
      samples[j].rekey.push(r);
      samples[j].native.push(m);
      samples[j].extra.push(r - m);
    }
  }
  return cases.map((c, j) => {
    const r = median(samples[j].rekey);
    const m = median(samples[j].native);
    return { name: c.name, n, rekey: r, native: m, ratio: r / m, extra: median(samples[j].extra) };
  });
}

// The body cases' API: its own process, so serving 1 MiB does not share the
// measured event loop. `/empty` answers no body, `/mib` 1 MiB; any token.
const API_SERVER = `
  import http from 'node:http';
  const mib = Buffer.alloc(1024 * 1024, 'x');
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end(req.url === '/mib' ? mib : undefined));
  });
  server.listen(0, '127.0.0.1', () => console.log(server.address().port));
  process.stdin.on('end', () => process.exit(0)).resume();
`;
const apiServer = spawn(process.execPath, ['--input-type=module', '-e', API_SERVER], { stdio: ['pipe', 'pipe', 'inherit'] });
const apiPort = await new Promise((resolve) => createInterface({ input: apiServer.stdout }).once('line', resolve));
const bodyCase = (name, path, size) => {
  const at = `http://127.0.0.1:${apiPort}${path}`;
  const check = (res) => {
    if (res.body.byteLength !== size) throw new Error(`expected ${size} bytes, got ${res.body.byteLength}`);
    return res;
  };
  return {
    name,
    rekey: async () => check(await rk.send({ settings, keys: rekeyKeys, request: { url: at }, onUpdateKeys: (k) => { rekeyKeys = k.expose(); } })),
    native: async () => check(await nativeRequest('GET', at, { authorization: `Bearer ${native.access_token}` })),
  };
};

const rows = [
  ...await compare(Number(args.warm), { name: 'warm call (testkit)', rekey: rekeyWarm, native: nativeWarm }),
  ...await compare(Number(args.refresh), { name: '401 -> refresh -> retry', rekey: rekeyRefresh, native: nativeRefresh }),
  ...await compare(Number(args.bodies), bodyCase('empty response', '/empty', 0), bodyCase('1 MiB response', '/mib', 1024 * 1024)),
];
const stats = await provider.stats();
console.log(`rekey node host bench: Node ${process.version}, engine ${rk.mode}, loopback`);
console.log('| measure | n | rekey median | plain http median | rekey/plain | rekey extra (median of pairs) |');
console.log('|---|---|---|---|---|---|');
for (const row of rows) {
  console.log(`| ${row.name} | ${row.n} | ${row.rekey.toFixed(1)} µs | ${row.native.toFixed(1)} µs | ${row.ratio.toFixed(2)} | +${row.extra.toFixed(1)} µs |`);
}
const extraOf = (name) => rows.find((r) => r.name === name).extra;
console.log(`extra(1 MiB) / extra(empty) = ${(extraOf('1 MiB response') / extraOf('empty response')).toFixed(2)}`);
console.log(`provider: refreshes ${stats.refreshes_granted}, invalid_grant ${stats.invalid_grant}, reused ${stats.reused_refresh_tokens}`);
rk.close();
agent.destroy();
apiServer.stdin.end();
await provider.stop();
