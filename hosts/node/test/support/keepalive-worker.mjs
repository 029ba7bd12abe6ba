#!/usr/bin/env node
// One Node process of a fleet running keepalive on one shared credential, as
// cron would start it on many machines at once (test/keepalive.test.mjs).
//
//   node keepalive-worker.mjs STORE CREDENTIAL
//     STORE: a SQLite file path, or a postgres:// URL; the credential's row
//     exists already, with keys.
//   env: REKEY_FLEET_TOKEN_URL, REKEY_FLEET_CLIENT_ID,
//        REKEY_FLEET_CLIENT_SECRET, REKEY_FLEET_API_ORIGIN (the origin the
//        credential is bound to), REKEY_NODE_MODE (auto | jspi | worker).
//        The component is the package's gen/, as the in-process tests load it.
//
// Prints `READY` once loaded (the store open, the component instantiated).
// Each stdin line `KEEPALIVE <seconds>` runs one keepalive with that
// olderThanSecs and prints `OK <outcome>` (refreshed | fresh |
// nothing-to-keep) or `ERR <WIT send-error case>`. EOF: exits 0 once the
// calls under way have answered.

import { createInterface } from 'node:readline';
import { PostgresStore, Rekey, SqliteStore } from '../../src/index.js';

const say = (line) => process.stdout.write(`${line}\n`);
const die = (why) => {
  process.stderr.write(`keepalive-worker: ${why}\n`);
  process.exit(2);
};

const [location, credential] = process.argv.slice(2);
if (!location || !credential) die('usage: keepalive-worker.mjs STORE CREDENTIAL');
const env = (name) => process.env[name] ?? die(`${name} is not set`);
const settings = {
  tokenUrl: env('REKEY_FLEET_TOKEN_URL'),
  clientId: env('REKEY_FLEET_CLIENT_ID'),
  clientSecret: process.env.REKEY_FLEET_CLIENT_SECRET,
  apiOrigins: [env('REKEY_FLEET_API_ORIGIN')],
};

const store = /^postgres(ql)?:\/\//.test(location) ? await PostgresStore.connect(location) : await SqliteStore.open(location);
const rk = await Rekey.load({ mode: process.env.REKEY_NODE_MODE ?? 'auto' });
// The first call pays for the instance (a worker thread in worker mode);
// loading it now lets every process start its keepalive at the same moment.
await rk.checkSettings(settings);

async function keepalive(olderThanSecs) {
  try {
    say(`OK ${await rk.keepalive({ credential, store, settings, olderThanSecs })}`);
  } catch (err) {
    process.stderr.write(`keepalive-worker ${process.pid}: ${err.message}\n`);
    say(`ERR ${err.sendErrorCase ?? err.name ?? 'error'}`);
  }
}

say('READY');
const running = new Set();
for await (const line of createInterface({ input: process.stdin })) {
  const [command, secs] = line.trim().split(/\s+/);
  if (command === 'KEEPALIVE' && /^\d+$/.test(secs ?? '')) {
    const p = keepalive(Number(secs));
    running.add(p);
    p.finally(() => running.delete(p));
  } else if (command) {
    process.stderr.write(`keepalive-worker: unknown command ${JSON.stringify(line)}\n`);
    say('ERR unknown-command');
  }
}
await Promise.all(running);
rk.close();
await store.close();
