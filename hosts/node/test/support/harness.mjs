// What every scenario needs: one loaded Rekey (the engine chosen as CI asks:
// REKEY_NODE_MODE = auto | jspi | worker), temp SQLite stores, and condition
// polling instead of fixed sleeps (CI machines are loaded).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { Rekey, SqliteStore, keysFromTokenResponse } from '../../src/index.js';

let loaded;
export function rekey() {
  loaded ??= Rekey.load({ mode: process.env.REKEY_NODE_MODE ?? 'auto' });
  return loaded;
}

const dirs = [];
const stores = [];
export async function tempDir() {
  const dir = await mkdtemp(join(tmpdir(), 'rekey-node-test-'));
  dirs.push(dir);
  return dir;
}

/** A new SQLite record store in a temp directory. */
export async function tempStore() {
  const store = await SqliteStore.open(join(await tempDir(), 'rekey.db'));
  stores.push(store);
  return store;
}

after(async () => {
  if (loaded) (await loaded).close();
  for (const s of stores) s.close();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

/** A stored token set from a provider's token response, as an app would import it. */
export function imported(tokenResponse, changes = {}) {
  return { ...keysFromTokenResponse(tokenResponse), ...changes };
}

/** An access token the API refuses: the stored one "expired". */
export const REJECTED_ACCESS_TOKEN = 'at_expired_or_revoked';

/** Polls `check` until it returns a truthy value, or fails after `timeoutMs`. */
export async function eventually(check, { timeoutMs = 20_000, everyMs = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
