// The README's ES module quick start, run by run.sh in a brand-new npm
// project where @rekey/node was installed from its tarball (nothing from the
// checkout): against the testkit provider, a first call, then two expiries
// each answered by one refresh with rotation, a typed error, and the
// component's hash. Prints one JSON line; any failed check throws.

import { Rekey, SqliteStore, keysFromTokenResponse } from '@rekey/node';
import { COMPONENT_SHA256, RekeyError, StoreUnavailable } from '@rekey/node';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { check, outOfFreshWindow, startProvider } from './provider.cjs';

// Tokens live 2 s: the component's fresh window is then 1 s (see outOfFreshWindow).
const provider = await startProvider(['--access-ttl-ms', '2000']);
const { token_url: tokenUrl, client_id: clientId, client_secret: clientSecret } = provider;
const apiUrl = `${provider.api_url}v1/me`;
const dbPath = join(await mkdtemp(join(tmpdir(), 'rekey-quickstart-')), 'rekey.db');
const tokenResponse = await provider.authorize(); // what your authorisation flow got from the token endpoint

const settings = { tokenUrl, clientId, clientSecret, apiOrigins: [new URL(apiUrl).origin] };
const rk = await Rekey.load();                     // the packaged component; one per process
const store = await SqliteStore.open(dbPath);      // or new MemoryStore(), or await PostgresStore.connect(url)
await store.create('crm', { settings, keys: keysFromTokenResponse(tokenResponse) });   // once, at authorisation
const res = await rk.send({ credential: 'crm', store, settings, request: { url: apiUrl } });

const statuses = [res.status];
const perExpiry = [];
for (let expiry = 1; expiry <= 2; expiry += 1) {
  await outOfFreshWindow(JSON.parse(await store.loadKeys('crm')));
  const before = (await provider.stats()).refreshes_granted;
  await provider.expireAccessTokens();
  statuses.push((await rk.send({ credential: 'crm', store, settings, request: { url: apiUrl } })).status);
  perExpiry.push((await provider.stats()).refreshes_granted - before);
}
const stats = await provider.stats();
const stored = JSON.parse(await store.loadKeys('crm'));
check(statuses.every((s) => s === 200), `every call answered 200 (${statuses})`);
check(perExpiry.every((n) => n === 1), `one refresh per expiry (${perExpiry})`);
check(stats.refreshes_granted >= 2, `refreshes >= 2 (${stats.refreshes_granted})`);
check(stats.reused_refresh_tokens === 0, `no reused refresh token (${stats.reused_refresh_tokens})`);
check(stats.invalid_grant === 0, `no invalid_grant (${stats.invalid_grant})`);
check(stored.refresh_token !== tokenResponse.refresh_token, 'the rotated refresh token is the one stored');

// A typed error: a credential the store does not hold.
const error = await rk.send({ credential: 'unknown', store, settings, request: { url: apiUrl } }).then(() => undefined, (e) => e);
check(error instanceof StoreUnavailable && error instanceof RekeyError && error.category === 'store',
  `an unknown credential is StoreUnavailable (got ${error?.name})`);

check(COMPONENT_SHA256 === process.env.REKEY_WASM_SHA256, `COMPONENT_SHA256 ${COMPONENT_SHA256} is $REKEY_WASM_SHA256`);
check(rk.wasmSha256 === COMPONENT_SHA256, 'the loaded component is the packaged one');

rk.close();
store.close();
await provider.stop();
console.log(JSON.stringify({
  program: 'esm', node: process.version, mode: rk.mode, store: 'sqlite', statuses, refreshes: stats.refreshes_granted,
  reused: stats.reused_refresh_tokens, invalidGrant: stats.invalid_grant, error: error.name, sha256: COMPONENT_SHA256,
}));
