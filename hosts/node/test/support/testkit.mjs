// The testkit provider (a loopback OAuth2 provider + protected API, the same
// binary the Rust scenarios use) as a child process, and its admin API.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';

// Only a convenience for this project's development machines; CI passes REKEY_TESTKIT.
const DEV_FALLBACK = '/tmp/rekey-dev/rekey-testkit';

export function testkitPath() {
  const path = process.env.REKEY_TESTKIT ?? DEV_FALLBACK;
  if (!existsSync(path)) throw new Error(`the testkit binary is not at ${path}: set REKEY_TESTKIT`);
  return path;
}

/**
 * Starts a provider; `args` are the testkit's options, e.g. ['--client-auth', 'post'].
 * It exits when its stdin closes: `stop()`, or this process ending.
 */
export async function startTestkit(args = []) {
  const child = spawn(testkitPath(), args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const line = await Promise.race([
    new Promise((resolve) => createInterface({ input: child.stdout }).once('line', resolve)),
    exited.then((code) => { throw new Error(`the testkit exited (${code}) before printing its address`); }),
  ]);
  const info = JSON.parse(line);
  const admin = async (method, path, body) => {
    const res = await fetch(`${info.base_url}/_testkit/${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`testkit ${method} ${path} answered ${res.status}`);
    return text === '' ? undefined : JSON.parse(text);
  };
  return {
    ...info,
    /** Settings for this provider, overridable. */
    settings(extra = {}) {
      // Bound to the provider's API, as every credential must be.
      return { tokenUrl: info.token_url, clientId: info.client_id, clientSecret: info.client_secret, apiOrigins: [new URL(info.api_url).origin], ...extra };
    },
    api: (path) => `${info.api_url}${path}`,
    /** A new grant's first token response. */
    authorize: () => admin('POST', 'authorize'),
    stats: () => admin('GET', 'stats'),
    apiLog: () => admin('GET', 'api-log'),
    lastTokenForm: () => admin('GET', 'last-token-form'),
    forceTokenResponses: (list) => admin('POST', 'force-token-responses', list),
    loseAnswers: (list) => admin('POST', 'lose-answers', list),
    omitRefreshToken: (on) => admin('POST', 'omit-refresh-token', on),
    revokeAll: () => admin('POST', 'revoke-all'),
    // Ends every access token issued so far, now: an expiry without waiting
    // on clocks (expires_at has whole-second precision).
    expireAccessTokens: () => admin('POST', 'expire-access-tokens'),
    refreshTokenLive: async (token) => (await admin('POST', 'refresh-token-live', { refresh_token: token })).live,
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}
