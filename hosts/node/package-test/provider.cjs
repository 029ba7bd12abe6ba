// The testkit provider (a loopback OAuth2 provider with refresh-token
// rotation and reuse detection, and a protected API) as a child process, and
// its admin API. CommonJS, so both quick starts can use it. The binary is
// $REKEY_TESTKIT; it prints one JSON line with its URLs and client, and
// exits when its stdin closes.

'use strict';

const { spawn } = require('node:child_process');
const { createInterface } = require('node:readline');

async function startProvider(args = []) {
  const path = process.env.REKEY_TESTKIT;
  if (!path) throw new Error('set REKEY_TESTKIT to the rekey-testkit binary');
  const child = spawn(path, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const line = await Promise.race([
    new Promise((resolve) => createInterface({ input: child.stdout }).once('line', resolve)),
    exited.then((code) => { throw new Error(`the testkit exited (${code}) before printing its address`); }),
  ]);
  const info = JSON.parse(line);
  const admin = async (method, path) => {
    const res = await fetch(`${info.base_url}/_testkit/${path}`, { method });
    if (!res.ok) throw new Error(`testkit ${method} ${path} answered ${res.status}`);
    const text = await res.text();
    return text === '' ? undefined : JSON.parse(text);
  };
  return {
    ...info,
    /** A new grant's first token response (what an app gets at authorisation). */
    authorize: () => admin('POST', 'authorize'),
    /** Ends every access token issued so far, now. */
    expireAccessTokens: () => admin('POST', 'expire-access-tokens'),
    /** {refreshes_granted, reused_refresh_tokens, invalid_grant, api_calls, ...} */
    stats: () => admin('GET', 'stats'),
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}

/**
 * Resolves once `keys` (a stored token set) is out of the component's fresh
 * window: it does not refresh again a token it refreshed less than
 * min(30 s, half its lifetime) ago (an API that always answers 401 costs one
 * refresh, not a loop), so an expiry made sooner is answered
 * rejected-after-refresh. A wait for a clock condition, not for an event.
 */
async function outOfFreshWindow(keys) {
  if (keys.rekey_refreshed_at === undefined) return;
  const window = Math.min(30, Math.floor(Number(keys.expires_in) / 2));
  const until = (keys.rekey_refreshed_at + window) * 1000;
  while (Date.now() < until) await new Promise((resolve) => setTimeout(resolve, until - Date.now()));
}

/** Fails the program with `message` unless `ok`. */
function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
}

module.exports = { startProvider, outOfFreshWindow, check };
