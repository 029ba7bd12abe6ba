#!/usr/bin/env node
// One Node worker of a fleet sharing one credential through a record store,
// steered in lines (for the fleet tests, mixed-language ones included).
//
//   node fleet-worker.mjs STORE CREDENTIAL API_URL
//     STORE: a SQLite file path, or a postgres:// URL. The credential's row
//     exists already, with keys.
//   env: REKEY_WASM (the component; transpiled into a cache directory unless
//        gen/ was built from it), REKEY_FLEET_TOKEN_URL,
//        REKEY_FLEET_CLIENT_ID, REKEY_FLEET_CLIENT_SECRET,
//        REKEY_FLEET_LEASE_TTL_MS (0 or unset: the default),
//        REKEY_NODE_MODE (auto | jspi | worker).
//
// Prints `READY` once loaded. Each stdin line:
//   CALL  -> one GET API_URL through rekey -> `OK <status>` or `ERR <kind>`
//            (kind: the WIT send-error case, e.g. `refresh-in-doubt`; calls
//            run concurrently, answers in the order they finish)
//   HOLD  -> takes the credential's refresh lease directly through the store
//            (a conditional write on the version read: lease {holder
//            "hold-<pid>", until now + ttl}, no mark), prints `HELD`, then
//            waits to be killed
// EOF: exits 0 once the calls under way have answered.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PostgresStore, Rekey, SqliteStore } from '../../src/index.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEFAULT_LEASE_TTL_MS = 40_000;

const say = (line) => process.stdout.write(`${line}\n`);
const die = (why) => {
  process.stderr.write(`fleet-worker: ${why}\n`);
  process.exit(2);
};

/** The transpiled component for $REKEY_WASM: gen/ when built from it, else a cache directory. */
function genDirFor(wasmPath) {
  if (!wasmPath) return undefined;
  const sha = createHash('sha256').update(readFileSync(wasmPath)).digest('hex');
  const built = join(ROOT, 'gen', 'build-info.json');
  if (existsSync(built) && JSON.parse(readFileSync(built, 'utf8')).wasmSha256 === sha) return join(ROOT, 'gen');
  const cached = join(tmpdir(), `rekey-node-gen-${sha.slice(0, 16)}`);
  if (!existsSync(join(cached, 'build-info.json'))) {
    // Built aside, then renamed into place: workers starting at once agree.
    const aside = `${cached}.${process.pid}`;
    execFileSync(process.execPath, [join(ROOT, 'scripts', 'build.mjs'), wasmPath, aside], { stdio: ['ignore', 'ignore', 'inherit'] });
    try {
      renameSync(aside, cached);
    } catch {
      rmSync(aside, { recursive: true, force: true }); // another worker was first
    }
  }
  return cached;
}

const [location, credential, apiUrl] = process.argv.slice(2);
if (!location || !credential || !apiUrl) die('usage: fleet-worker.mjs STORE CREDENTIAL API_URL');
const env = (name) => process.env[name] ?? die(`${name} is not set`);
const ttl = Number(process.env.REKEY_FLEET_LEASE_TTL_MS ?? 0);
if (!Number.isInteger(ttl) || ttl < 0) die('REKEY_FLEET_LEASE_TTL_MS must be a whole number of milliseconds');
const settings = {
  tokenUrl: env('REKEY_FLEET_TOKEN_URL'),
  clientId: env('REKEY_FLEET_CLIENT_ID'),
  clientSecret: process.env.REKEY_FLEET_CLIENT_SECRET,
  fleet: { leaseTtlMs: ttl },
  apiOrigins: [new URL(apiUrl).origin],
};

const store = /^postgres(ql)?:\/\//.test(location) ? await PostgresStore.connect(location) : await SqliteStore.open(location);
const rk = await Rekey.load({ mode: process.env.REKEY_NODE_MODE ?? 'auto', genDir: genDirFor(process.env.REKEY_WASM) });

async function call() {
  try {
    const res = await rk.send({ credential, store, settings, request: { url: apiUrl } });
    say(`OK ${res.status}`);
  } catch (err) {
    say(`ERR ${err.sendErrorCase ?? kebab(err.name ?? 'error')}`);
  }
}

async function hold() {
  for (;;) {
    const stored = await store.read(credential);
    if (!stored) die(`no credential named ${credential}`);
    const lease = { holder: `hold-${process.pid}`, untilMs: Date.now() + (ttl || DEFAULT_LEASE_TTL_MS) };
    if (await store.write(credential, stored.version, { ...stored.data, lease, refreshMark: null }) !== false) break;
  }
  say('HELD');
  await new Promise(() => setInterval(() => {}, 1 << 30)); // until killed
}

const kebab = (s) => s.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();

say('READY');
const running = new Set();
for await (const line of createInterface({ input: process.stdin })) {
  const command = line.trim();
  if (command === 'CALL') {
    const p = call();
    running.add(p);
    p.finally(() => running.delete(p));
  } else if (command === 'HOLD') {
    await hold();
  } else if (command !== '') {
    process.stderr.write(`fleet-worker: unknown command ${JSON.stringify(command)}\n`);
  }
}
await Promise.all(running);
rk.close();
await store.close();
