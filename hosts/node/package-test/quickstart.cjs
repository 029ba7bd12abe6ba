// The README's CommonJS quick start, run by run.sh in a brand-new npm
// project where @rekey/node was installed from its tarball: the same API
// through require(), against the testkit provider — a first call, two
// expiries each answered by one refresh with rotation, a typed error
// (settings the token endpoint rejects), the component's hash. Prints one
// JSON line; any failed check exits non-zero.

'use strict';

const { Rekey, MemoryStore, keysFromTokenResponse } = require('@rekey/node');
const { COMPONENT_SHA256, RekeyError, SettingsRejected } = require('@rekey/node');
const { check, outOfFreshWindow, startProvider } = require('./provider.cjs');

async function main() {
  // Tokens live 2 s: the component's fresh window is then 1 s (see outOfFreshWindow).
  const provider = await startProvider(['--access-ttl-ms', '2000']);
  const { token_url: tokenUrl, client_id: clientId, client_secret: clientSecret } = provider;
  const apiUrl = `${provider.api_url}v1/me`;
  const tokenResponse = await provider.authorize();

  const settings = { tokenUrl, clientId, clientSecret, apiOrigins: [new URL(apiUrl).origin] };
  const rk = await Rekey.load();
  const store = new MemoryStore();
  await store.create('crm', { settings, keys: keysFromTokenResponse(tokenResponse) });
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

  // A typed error: machine-to-machine settings with a secret the token endpoint refuses.
  const m2m = { ...settings, grant: 'client-credentials', clientSecret: 'not-the-secret' };
  await store.create('m2m', { settings: m2m });
  const error = await rk.send({ credential: 'm2m', store, settings: m2m, request: { url: apiUrl } }).then(() => undefined, (e) => e);
  check(error instanceof SettingsRejected && error instanceof RekeyError && error.category === 'settings-wrong',
    `a refused client secret is SettingsRejected (got ${error && error.name})`);
  const refused = JSON.parse(await store.loadKeys('m2m') ?? '{}');
  check(refused.access_token === undefined && refused.rekey_refused?.code === 'invalid_client',
    'no token stored for the refused credential, only the refusal remembered');

  check(COMPONENT_SHA256 === process.env.REKEY_WASM_SHA256, `COMPONENT_SHA256 ${COMPONENT_SHA256} is $REKEY_WASM_SHA256`);
  check(rk.wasmSha256 === COMPONENT_SHA256, 'the loaded component is the packaged one');

  rk.close();
  store.close();
  await provider.stop();
  console.log(JSON.stringify({
    program: 'cjs', node: process.version, mode: rk.mode, store: 'memory', statuses, refreshes: stats.refreshes_granted,
    reused: stats.reused_refresh_tokens, invalidGrant: stats.invalid_grant, error: error.name, sha256: COMPONENT_SHA256,
  }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1); // worker threads of a Rekey left open would keep the process alive
});
