// Rekey vs plain Node `http`, in one run, against the testkit provider on
// loopback: the same request with a Bearer header (warm call), and the same
// 401 -> token refresh -> retry sequence done by hand (refresh call). Runs
// are interleaved; medians and ratios are printed. Never fails on timing.
//
//   node bench.mjs [--mode auto|jspi|worker] [--warm N] [--refresh N]

import http from 'node:http';
import { parseArgs } from 'node:util';
import { Rekey, keysFromTokenResponse } from './src/index.js';
import { startTestkit } from './test/support/testkit.mjs';

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string', default: 'auto' },
    warm: { type: 'string', default: '2000' },
    refresh: { type: 'string', default: '200' },
  },
});

const provider = await startTestkit(['--access-ttl-ms', '3600000']);
const rk = await Rekey.load({ mode: args.mode });
const settings = provider.settings();
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

async function compare(name, n, rekeyFn, nativeFn) {
  const samples = { rekey: [], native: [] };
  for (let i = 0; i < Math.min(50, n); i += 1) { await rekeyFn(); await nativeFn(); } // warm-up
  for (let i = 0; i < n; i += 1) {
    samples.rekey.push(await timeOne(rekeyFn));
    samples.native.push(await timeOne(nativeFn));
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const r = median(samples.rekey);
  const m = median(samples.native);
  return { name, n, rekey: r, native: m, ratio: r / m };
}

const rows = [
  await compare('warm call', Number(args.warm), rekeyWarm, nativeWarm),
  await compare('401 -> refresh -> retry', Number(args.refresh), rekeyRefresh, nativeRefresh),
];
const stats = await provider.stats();
console.log(`rekey node host bench: Node ${process.version}, engine ${rk.mode}, loopback testkit`);
console.log('| measure | n | rekey median | plain http median | rekey/plain | added |');
console.log('|---|---|---|---|---|---|');
for (const row of rows) {
  console.log(`| ${row.name} | ${row.n} | ${row.rekey.toFixed(1)} µs | ${row.native.toFixed(1)} µs | ${row.ratio.toFixed(2)} | +${(row.rekey - row.native).toFixed(1)} µs |`);
}
console.log(`provider: refreshes ${stats.refreshes_granted}, invalid_grant ${stats.invalid_grant}, reused ${stats.reused_refresh_tokens}`);
rk.close();
agent.destroy();
await provider.stop();
