// Node-only scenario: a real authorization server, oidc-provider 9.13.3 (the
// peer the Rust conformance tests run, from ../../tests/oidc), with 2-second
// access tokens and a new refresh token on every refresh. The credential
// starts from a real authorization-code flow (authorize.mjs); rekey then calls
// userinfo across several expiries.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { eventually, imported, rekey, tempStore } from './support/harness.mjs';

const OIDC_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'tests', 'oidc');
const CLIENT = { id: 'rekey-basic', secret: 'rekey-basic-secret' };
const EXPIRIES = 3;

async function startOidcProvider() {
  const child = spawn(process.execPath, [join(OIDC_DIR, 'server.mjs'), '--access-token-ttl', '2'], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, OIDC_MAX_LIFETIME: '300' },
  });
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`server.mjs exited (${code})`)));
  });
  const { issuer } = JSON.parse(line);
  return {
    issuer,
    stats: async () => (await (await fetch(`${issuer}/_stats`)).json()).clients[CLIENT.id],
    stop: () => { child.stdin.end(); return new Promise((r) => child.once('exit', r)); },
  };
}

test('oidc-provider', async (t) => {
  if (!existsSync(join(OIDC_DIR, 'node_modules', 'oidc-provider'))) {
    const why = `SKIPPED: oidc-provider is not installed in ${OIDC_DIR} (run npm ci there)`;
    if (process.env.REKEY_REQUIRE_PEERS === '1') assert.fail(why);
    t.diagnostic(why);
    t.skip(why);
    return;
  }
  const provider = await startOidcProvider();
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [
      join(OIDC_DIR, 'authorize.mjs'), '--issuer', provider.issuer, '--client-id', CLIENT.id, '--auth', 'basic',
    ], { env: { ...process.env, OIDC_CLIENT_SECRET: CLIENT.secret } });
    const first = JSON.parse(stdout);
    const store = await tempStore();
    const settings = { tokenUrl: `${provider.issuer}/token`, clientId: CLIENT.id, clientSecret: CLIENT.secret, clientAuth: 'basic', apiOrigins: [new URL(provider.issuer).origin] };
    await store.create('oidc', { settings, keys: imported(first) });
    const rk = await rekey();

    await eventually(async () => {
      const res = await rk.send({ credential: 'oidc', store, settings, request: { url: `${provider.issuer}/me` } });
      assert.equal(res.status, 200);
      assert.equal(typeof res.json().sub, 'string');
      return (await provider.stats()).refreshes >= EXPIRIES;
    }, { timeoutMs: 60_000, everyMs: 250, what: `${EXPIRIES} refreshes` });

    const stats = await provider.stats();
    assert.deepEqual(stats.grant_errors, {}, 'no invalid_grant or any other token error');
    assert.equal(stats.grants_revoked, 0);
    assert.equal(stats.auth_seen.basic, stats.refreshes + 1, 'every grant authenticated with Basic');
    assert.equal(stats.userinfo_rejected, stats.refreshes, 'on-auth-failure: each refresh follows one 401');
    const keys = JSON.parse(await store.loadKeys('oidc'));
    assert.notEqual(keys.refresh_token, first.refresh_token, 'rotated and persisted');
    assert.equal(keys.id_token !== undefined, true, 'id_token kept');
    assert.equal(keys.scope, first.scope);
  } finally {
    await provider.stop();
  }
});
