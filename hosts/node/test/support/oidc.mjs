// The oidc-provider peer (tests/oidc/server.mjs, the one the Rust scenarios
// run) with the clients a scenario registers, and tests/oidc/follow.mjs, the
// "browser" that goes through its login, consent and device pages.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const OIDC_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'tests', 'oidc');
export const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

/**
 * True when oidc-provider is installed; otherwise skips `t` loudly (a failure
 * under REKEY_REQUIRE_PEERS=1, as CI sets).
 */
export function oidcAvailable(t) {
  if (existsSync(join(OIDC_DIR, 'node_modules', 'oidc-provider'))) return true;
  const why = `SKIPPED: oidc-provider is not installed in ${OIDC_DIR} (run npm ci there)`;
  if (process.env.REKEY_REQUIRE_PEERS === '1') assert.fail(why);
  t.diagnostic(why);
  t.skip(why);
  return false;
}

/** Reserved characters on purpose, as the Rust scenarios use. */
export const secretOf = (id) => `${id}:s3cr&t +%/?=`;

/**
 * server.mjs with 2-second access tokens and these clients ([id, 'basic'|'post']),
 * each native (a loopback redirect on any port) and allowed the code,
 * refresh and device grants.
 */
export async function startOidcProvider(clients, env = {}) {
  const registrations = clients.map(([id, auth]) => ({
    client_id: id,
    client_secret: secretOf(id),
    token_endpoint_auth_method: `client_secret_${auth}`,
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
  }));
  const child = spawn(process.execPath, [join(OIDC_DIR, 'server.mjs')], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: {
      ...process.env,
      OIDC_PORT: '0',
      OIDC_ACCESS_TOKEN_TTL: '2',
      OIDC_CLIENTS: JSON.stringify(registrations),
      OIDC_MAX_LIFETIME: '300',
      ...env,
    },
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const line = await Promise.race([
    new Promise((resolve) => createInterface({ input: child.stdout }).once('line', resolve)),
    exited.then((code) => { throw new Error(`server.mjs exited (${code}) before announcing itself`); }),
  ]);
  const { issuer } = JSON.parse(line);
  return {
    issuer,
    /** Settings for one registered client: every endpoint given, iss checked. */
    settings(id, auth, extra = {}) {
      return {
        tokenUrl: `${issuer}/token`,
        authorizationUrl: `${issuer}/auth`,
        deviceUrl: `${issuer}/device/auth`,
        issuer,
        clientId: id,
        clientSecret: secretOf(id),
        clientAuth: auth,
        authParams: [['scope', 'openid offline_access']],
        apiOrigins: [new URL(issuer).origin],
        ...extra,
      };
    },
    /** The provider's counters for one client (undefined: it never saw the client). */
    stats: async (id) => (await (await fetch(`${issuer}/_stats`)).json()).clients[id],
    stop: () => { child.stdin.end(); return exited; },
  };
}

/** follow.mjs: the browser. Resolves with the JSON line it prints. */
export async function follow(args) {
  const { stdout } = await promisify(execFile)(process.execPath, [join(OIDC_DIR, 'follow.mjs'), ...args]);
  return JSON.parse(stdout);
}
