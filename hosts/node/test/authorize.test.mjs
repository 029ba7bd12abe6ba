// The first token set through the component's `authorize` interface, end to
// end against oidc-provider (tests/oidc/server.mjs; tests/oidc/follow.mjs
// plays the browser through its login, consent and device pages, as the Rust
// scenarios in tests/all/authorize.rs do): the code grant with PKCE through
// this host's loopback listener, then refreshes of the stored keys with
// every strategy (the matching RFC 9207 iss accepted); the device grant,
// then a refresh; denied consent; forged redirects (error=access_denied with a
// wrong state, an equal-length wrong state) answered 400 while the real one
// still succeeds; no redirect in time; a denied device code. Against small
// scripted endpoints: onUrl gets the listener's secret-free start URL (302
// once to the authorization URL, a wrong token 404, opened twice ends the
// flow), the RFC 9207 table, invalid_scope is a settings problem, the PKCE
// verifier the exchange sends matches the challenge, slow_down makes the
// polls further apart, an expired device code ends the polling. Nothing secret
// (code, verifier, device code, tokens, client secret) in any error, event,
// page or printed value. Verdicts never depend on timing: waits poll.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { inspect } from 'node:util';
import {
  AccessDenied, AuthorizationProviderError, AuthorizationRejected, AuthorizationTimeout, DeviceAuthorization,
  DeviceCodeExpired, InvalidSettings, IssuerMismatch, PendingAuthorization, RekeyError, StateMismatch,
  TokenEndpointError, importTokenResponse,
} from '../src/index.js';
import { settingsJson } from '../src/stores/settings-json.js';
import { eventually, rekey, tempStore } from './support/harness.mjs';
import { follow, oidcAvailable, secretOf, startOidcProvider } from './support/oidc.mjs';

const EXPIRIES = 3;

/** Fails if any of `secrets` (8 characters or more) appears in `texts`. */
function assertNoSecret(texts, secrets, what) {
  const all = texts.join('\n');
  for (const s of secrets) {
    if (typeof s === 'string' && s.length >= 8) assert.ok(!all.includes(s), `${what} shows a secret value`);
  }
}

/** A GET on loopback, redirects not followed: its status, body and Location. */
async function get(url) {
  const r = await fetch(url, { redirect: 'manual' });
  return { status: r.status, body: await r.text(), location: r.headers.get('location') };
}

const START_URL = /^http:\/\/127\.0\.0\.1:\d+\/start\/[A-Za-z0-9_-]{43}$/;

/**
 * What a browser does with the URL `onUrl` was given: it is the listener's
 * secret-free start URL, which answers 302 with the authorization URL.
 */
async function openStart(url) {
  assert.match(url, START_URL);
  const r = await get(url);
  assert.equal(r.status, 302, r.body);
  return new URL(r.location);
}

/** A state of the same length as `state` that is not it: the length check alone cannot refuse it. */
const sameLength = (state) => `${state.slice(0, -1)}${state.endsWith('A') ? 'B' : 'A'}`;

/** Everything printing an error could show. */
const printed = (err) => `${err?.message} ${String(err)} ${err?.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`;

const tokensOf = (keys) => ['access_token', 'refresh_token', 'id_token'].map((f) => keys[f]).filter(Boolean);

test('authorize: code grant with PKCE through login and consent, then the stored keys refresh with every strategy', async (t) => {
  if (!oidcAvailable(t)) return;
  const clients = [
    ['az-on-auth-failure', 'basic', 'on-auth-failure'],
    ['az-every-request', 'post', 'every-request'],
    ['az-before-expiry', 'basic', 'before-expiry'],
  ];
  const provider = await startOidcProvider(clients.map(([id, auth]) => [id, auth]));
  try {
    const rk = await rekey();
    await Promise.all(clients.map(async ([id, auth, strategy]) => {
      const store = await tempStore();
      const login = `user-${id}`;
      // oidc-provider advertises and sends `iss` (RFC 9207): the matching one is accepted.
      const settings = provider.settings(id, auth, { strategy, expiryMarginSecs: 1, issuerSendsIss: true });
      const events = [];
      const onEvent = (e) => events.push(JSON.stringify(e));
      let shownUrl;
      let browser;
      const before = Math.floor(Date.now() / 1000);
      const keys = await rk.authorizeCode(id, {
        store,
        settings,
        onEvent,
        timeoutMs: 60_000,
        onUrl: (url, { authorizationUrl }) => {
          browser = openStart(url).then((real) => {
            assert.equal(real.href, authorizationUrl, 'the start URL leads to the authorization URL the caller was given');
            shownUrl = real;
            return follow(['--url', real.href, '--login', login]);
          });
        },
      });
      const after = Math.ceil(Date.now() / 1000);
      const page = await browser;

      // The request the component built.
      const q = shownUrl.searchParams;
      assert.equal(`${shownUrl.origin}${shownUrl.pathname}`, `${provider.issuer}/auth`);
      assert.equal(q.get('response_type'), 'code');
      assert.equal(q.get('client_id'), id);
      assert.equal(q.get('code_challenge_method'), 'S256');
      assert.match(q.get('code_challenge'), /^[A-Za-z0-9_-]{43}$/);
      assert.match(q.get('state'), /^[A-Za-z0-9_-]{22}$/);
      assert.equal(q.get('scope'), 'openid offline_access');
      assert.match(q.get('redirect_uri'), /^http:\/\/127\.0\.0\.1:\d+\/callback$/);
      assert.doesNotMatch(q.get('redirect_uri'), /:0\//);
      // The listener answered the browser after the keys were stored.
      assert.equal(page.redirect, q.get('redirect_uri'));
      assert.equal(page.status, 200, page.body);
      assert.match(page.body, /authorised/);
      assert.ok(page.code, 'the provider issued a code');

      // The whole token response is stored, with expires_at from expires_in.
      const stored = JSON.parse(await store.loadKeys(id));
      assert.deepEqual(stored, keys.expose(), 'the returned keys are the stored ones');
      for (const f of ['access_token', 'refresh_token', 'id_token', 'scope', 'token_type', 'expires_in', 'expires_at']) {
        assert.notEqual(stored[f], undefined, `${id}: the stored set has ${f}`);
      }
      assert.ok(stored.expires_at >= before + stored.expires_in && stored.expires_at <= after + stored.expires_in, 'expires_at = now + expires_in');
      assert.equal(stored.rekey_refreshed_at, undefined, 'a first set was not obtained by a refresh');
      const secrets = [page.code, secretOf(id), ...tokensOf(stored)];

      // The stored keys work and refresh across expiries.
      await eventually(async () => {
        const res = await rk.send({ credential: id, store, settings, onEvent, request: { url: `${provider.issuer}/me` } });
        assert.equal(res.status, 200);
        assert.equal(res.json().sub, login);
        return (await provider.stats(id)).refreshes >= EXPIRIES;
      }, { timeoutMs: 90_000, everyMs: 250, what: `${id}: ${EXPIRIES} refreshes` });

      const stats = await provider.stats(id);
      assert.equal(stats.code_exchanges, 1, id);
      assert.deepEqual(stats.grant_errors, {}, `${id}: no token endpoint error`);
      assert.equal(stats.grants_revoked, 0, id);
      assert.equal(stats.auth_seen[auth], stats.refreshes + 1, `${id}: every grant authenticated with ${auth}`);
      const last = JSON.parse(await store.loadKeys(id));
      assert.notEqual(last.refresh_token, stored.refresh_token, 'rotated and persisted');
      secrets.push(...tokensOf(last));
      assert.ok(events.some((e) => e.includes('"exchange":"token-endpoint"')), 'the code exchange is an event');
      assertNoSecret([...events, page.body, inspect(keys), String(keys), JSON.stringify(keys)], secrets, id);
    }));
  } finally {
    await provider.stop();
  }
});

test('authorize: denied consent is AccessDenied; the browser is told, nothing is stored or exchanged', async (t) => {
  if (!oidcAvailable(t)) return;
  const provider = await startOidcProvider([['az-denied', 'basic']]);
  try {
    const rk = await rekey();
    const store = await tempStore();
    let browser;
    const err = await rk.authorizeCode('az-denied', {
      store,
      timeoutMs: 60_000,
      settings: provider.settings('az-denied', 'basic'),
      onUrl: (url) => { browser = openStart(url).then((real) => follow(['--url', real.href, '--deny'])); },
    }).then(() => assert.fail('authorised'), (e) => e);
    assert.ok(err instanceof AccessDenied, printed(err));
    assert.equal(err.category, 'needs-authorization');
    assert.match(err.message, /access_denied/);
    const page = await browser;
    assert.equal(page.status, 400);
    assert.match(page.body, /access_denied/);
    assert.equal(await store.loadKeys('az-denied'), undefined);
    assert.equal((await provider.stats('az-denied'))?.code_exchanges ?? 0, 0);
    assertNoSecret([printed(err), page.body], [secretOf('az-denied')], 'the denial');
  } finally {
    await provider.stop();
  }
});

test('authorize: forged redirects (error=access_denied with a wrong state, an equal-length wrong state) are answered 400 and the real one still succeeds', async (t) => {
  if (!oidcAvailable(t)) return;
  const provider = await startOidcProvider([['az-state', 'basic']]);
  try {
    const rk = await rekey();
    const store = await tempStore();
    const forgedCode = 'forged-code-value-0123456789';
    let browser;
    const keys = await rk.authorizeCode('az-state', {
      store,
      settings: provider.settings('az-state', 'basic'),
      timeoutMs: 60_000,
      onUrl: (url) => {
        browser = (async () => {
          const real = await openStart(url);
          const state = real.searchParams.get('state');
          const redirect = real.searchParams.get('redirect_uri');
          // Another local process reaches the listener first: one forged
          // error, then a code of its own with a state of the right length.
          const forged = [
            await get(`${redirect}?error=access_denied&state=x`),
            await get(`${redirect}?code=${forgedCode}&state=${sameLength(state)}`),
            await get(`${redirect}?code=${forgedCode}`),
          ];
          // Then the person's browser comes back with the real redirect.
          return { forged, page: await follow(['--url', real.href, '--login', 'user-az-state']) };
        })();
      },
    });
    const { forged, page } = await browser;
    for (const f of forged) {
      assert.equal(f.status, 400, f.body);
      assert.match(f.body, /state does not match/);
    }
    assert.equal(page.status, 200, page.body);
    assert.match(page.body, /authorised/);
    const stored = JSON.parse(await store.loadKeys('az-state'));
    assert.deepEqual(stored, keys.expose());
    const res = await rk.send({ credential: 'az-state', store, settings: provider.settings('az-state', 'basic'), request: { url: `${provider.issuer}/me` } });
    assert.equal(res.json().sub, 'user-az-state', 'the stored tokens are the person\'s own account');
    assert.equal((await provider.stats('az-state')).code_exchanges, 1, 'only the real code was exchanged');
    assertNoSecret(forged.map((f) => f.body).concat(page.body), [forgedCode, secretOf('az-state'), ...tokensOf(stored)], 'the refusals');
  } finally {
    await provider.stop();
  }
});

test('authorize: no redirect in time is AuthorizationTimeout, and the listener is closed', async () => {
  const rk = await rekey();
  const store = await tempStore();
  let redirectUri;
  const err = await rk.authorizeCode('t', {
    store,
    settings: { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['http://127.0.0.1:9'], authorizationUrl: 'http://127.0.0.1:9/auth', clientId: 't' },
    timeoutMs: 200,
    onUrl: (_url, { authorizationUrl }) => { redirectUri = new URL(authorizationUrl).searchParams.get('redirect_uri'); },
  }).then(() => assert.fail('authorised'), (e) => e);
  assert.ok(err instanceof AuthorizationTimeout, printed(err));
  assert.equal(err.category, 'needs-authorization');
  assert.match(err.message, /no redirect arrived within 0\.2 s/);
  assert.equal(await store.loadKeys('t'), undefined);
  await assert.rejects(fetch(redirectUri), 'nothing listens any more');

  // A redirect URI off loopback is refused before anything starts.
  await assert.rejects(rk.authorizeCode('t', {
    store,
    settings: { tokenUrl: 'http://127.0.0.1:9/token', apiOrigins: ['http://127.0.0.1:9'], authorizationUrl: 'http://127.0.0.1:9/auth', clientId: 't' },
    redirectUri: 'http://example.com/callback',
    onUrl: () => assert.fail('no URL is shown'),
  }), InvalidSettings);
});

test('authorize: the device grant through the provider\'s device pages, then a refresh; a denied one stores nothing', async (t) => {
  if (!oidcAvailable(t)) return;
  const provider = await startOidcProvider([['az-device', 'basic'], ['az-device-denied', 'post']]);
  try {
    const rk = await rekey();
    const approve = (async () => {
      const store = await tempStore();
      const settings = provider.settings('az-device', 'basic');
      const events = [];
      const onEvent = (e) => events.push(JSON.stringify(e));
      let shown;
      let browser;
      const keys = await rk.authorizeDevice('az-device', {
        store,
        settings,
        onEvent,
        onUserCode: (device) => {
          shown = device;
          browser = follow(['--url', device.verificationUri, '--user-code', device.userCode, '--login', 'user-az-device']);
        },
      });
      assert.ok(shown instanceof DeviceAuthorization);
      assert.ok(shown.verificationUri.startsWith(provider.issuer), shown.verificationUri);
      assert.match(shown.userCode, /\S/);
      assert.ok(shown.expiresIn > 0 && shown.interval > 0);
      assert.deepEqual(Object.keys(JSON.parse(JSON.stringify(shown))).sort(),
        ['expiresIn', 'interval', 'userCode', 'verificationUri', 'verificationUriComplete'].filter((k) => shown[k] !== undefined).sort(),
        'the device code is not among what can be shown');
      assert.equal(typeof (await browser).page, 'string');
      const stored = JSON.parse(await store.loadKeys('az-device'));
      assert.deepEqual(stored, keys.expose());
      for (const f of ['access_token', 'refresh_token', 'expires_at']) assert.notEqual(stored[f], undefined, f);

      await eventually(async () => {
        const res = await rk.send({ credential: 'az-device', store, settings, onEvent, request: { url: `${provider.issuer}/me` } });
        assert.equal(res.status, 200);
        assert.equal(res.json().sub, 'user-az-device');
        return (await provider.stats('az-device')).refreshes >= 1;
      }, { timeoutMs: 60_000, everyMs: 250, what: 'a refresh' });
      const stats = await provider.stats('az-device');
      assert.deepEqual(Object.keys(stats.grant_errors).filter((c) => c !== 'authorization_pending'), [], JSON.stringify(stats.grant_errors));
      const last = JSON.parse(await store.loadKeys('az-device'));
      assert.notEqual(last.refresh_token, stored.refresh_token);
      assert.ok(events.some((e) => e.includes('"exchange":"device-endpoint"')));
      assertNoSecret([...events, inspect(shown), inspect(keys)], [secretOf('az-device'), ...tokensOf(stored), ...tokensOf(last)], 'the device grant');
    })();
    const deny = (async () => {
      const store = await tempStore();
      let browser;
      const err = await rk.authorizeDevice('az-device-denied', {
        store,
        settings: provider.settings('az-device-denied', 'post'),
        onUserCode: (device) => {
          browser = follow(['--url', device.verificationUri, '--user-code', device.userCode, '--deny']);
        },
      }).then(() => assert.fail('authorised'), (e) => e);
      await browser;
      assert.ok(err instanceof AccessDenied, printed(err));
      assert.equal(await store.loadKeys('az-device-denied'), undefined);
      assertNoSecret([printed(err)], [secretOf('az-device-denied')], 'the denial');
    })();
    await Promise.all([approve, deny]);
  } finally {
    await provider.stop();
  }
});

/** A scripted endpoint on loopback: `answer(path, form)` returns [status, body]. */
async function withScripted(answer, body) {
  const requests = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(data));
      requests.push({ path: req.url, form, at: performance.now() });
      const [status, json] = answer(req.url, form, requests.length);
      res.writeHead(status, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify(json));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await body(`http://127.0.0.1:${server.address().port}`, requests);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

test('authorize: the low-level steps with a listener of one\'s own; the verifier matches the challenge and is never shown', async () => {
  const rk = await rekey();
  const tokens = { access_token: 'scripted-access-token', refresh_token: 'scripted-refresh-token', expires_in: '60', expires_at: 0, token_type: 'Bearer' };
  await withScripted((_path, _form, n) => (n === 1 ? [200, tokens] : [400, { error: 'invalid_grant', error_description: 'code already used' }]), async (base, requests) => {
    const settings = { tokenUrl: `${base}/token`, apiOrigins: [new URL(base).origin], authorizationUrl: `${base}/auth?tenant=x`, clientId: 'app', clientSecret: 'scripted-client-secret', clientAuth: 'post' };
    const redirectUri = 'http://127.0.0.1:8765/cb';
    const events = [];
    const onEvent = (e) => events.push(JSON.stringify(e));
    const pending = await rk.beginAuthorization(settings, { redirectUri, onEvent });
    assert.ok(pending instanceof PendingAuthorization);
    assert.equal(pending.redirectUri, redirectUri);
    const url = new URL(pending.url);
    assert.equal(url.searchParams.get('tenant'), 'x');
    const state = url.searchParams.get('state');

    // A wrong state: refused in the component, nothing sent.
    const wrong = await rk.finishAuthorization(settings, pending, '?code=scripted-code-value&state=other').then(() => assert.fail('accepted'), (e) => e);
    assert.ok(wrong instanceof StateMismatch);
    assert.equal(requests.length, 0);

    const keys = await rk.finishAuthorization(settings, pending, new URL(`${redirectUri}?code=scripted-code-value&state=${state}`), { onEvent });
    assert.equal(requests.length, 1);
    const { form } = requests[0];
    assert.equal(form.grant_type, 'authorization_code');
    assert.equal(form.code, 'scripted-code-value');
    assert.equal(form.redirect_uri, redirectUri);
    assert.equal(form.client_secret, 'scripted-client-secret');
    const challenge = createHash('sha256').update(form.code_verifier).digest('base64url');
    assert.equal(challenge, url.searchParams.get('code_challenge'), 'PKCE S256: the verifier sent hashes to the challenge shown');
    assert.match(form.code_verifier, /^[A-Za-z0-9_-]{43}$/);
    // Imported as the Rust host imports: the sender's expires_at dropped, computed from expires_in.
    const k = keys.expose();
    assert.equal(k.access_token, 'scripted-access-token');
    assert.ok(Math.abs(k.expires_at - (Date.now() / 1000 + 60)) < 5, String(k.expires_at));

    // The code again: the endpoint refuses it (invalid_grant: authorise again).
    const again = await rk.finishAuthorization(settings, pending, `code=scripted-code-value&state=${state}`).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(again instanceof AuthorizationRejected, printed(again));
    assert.equal(again.code, 'invalid_grant');
    assert.equal(again.category, 'needs-authorization');
    assert.doesNotMatch(again.message, /already used/, 'no provider text');

    const shown = [...events, printed(wrong), printed(again), inspect(pending), JSON.stringify(pending), String(pending), inspect(keys), JSON.stringify(keys)];
    assertNoSecret(shown, [form.code_verifier, 'scripted-code-value', 'scripted-client-secret', 'scripted-access-token', 'scripted-refresh-token'], 'the low-level steps');
  });
});

/**
 * authorizeCode against a scripted token endpoint, the browser played by
 * `play(startUrl, authorizationUrl)`; resolves with the keys or the error,
 * what `play` returned, the keys saved and the token requests made.
 */
async function scriptedCodeFlow(settings, play) {
  const rk = await rekey();
  const tokens = { access_token: 'scripted-access-token', refresh_token: 'scripted-refresh-token', expires_in: 60 };
  return withScripted(() => [200, tokens], async (base, requests) => {
    const saved = [];
    let played;
    const outcome = await rk.authorizeCode('c', {
      settings: { tokenUrl: `${base}/token`, apiOrigins: [new URL(base).origin], authorizationUrl: `${base}/auth`, clientId: 'c', ...settings },
      onUpdateKeys: (k) => { saved.push(k.get('refresh_token')); },
      timeoutMs: 60_000,
      onUrl: (url, details) => { played = play(url, details.authorizationUrl); },
    }).then((keys) => ({ keys }), (err) => ({ err }));
    return { ...outcome, played: await played, saved, exchanges: requests.filter((r) => r.path === '/token').length };
  });
}

/** The redirect the listener waits for, from the authorization URL, with `query(state)`. */
const redirectTo = (authorizationUrl, query) => {
  const real = new URL(authorizationUrl);
  return `${real.searchParams.get('redirect_uri')}?${query(real.searchParams.get('state'))}`;
};

test('authorize: the URL to open is the listener\'s secret-free start URL: it 302s once to the authorization URL, a wrong start token is 404', async () => {
  const { keys, err, played, saved, exchanges } = await scriptedCodeFlow({}, async (url, authorizationUrl) => {
    const real = new URL(authorizationUrl);
    const origin = new URL(url).origin;
    const token = url.slice(url.lastIndexOf('/') + 1);
    const wrong = [];
    for (const path of [`/start/${sameLength(token)}`, `/start/${token}x`, `/start/${token.slice(1)}`, '/start/', '/start', `/start/${token}/`]) {
      wrong.push({ path, ...(await get(`${origin}${path}`)) });
    }
    const opened = await get(url);
    const page = await get(redirectTo(authorizationUrl, (state) => `code=scripted-code&state=${state}`));
    return { real, wrong, opened, page };
  });
  assert.equal(err, undefined, printed(err));
  const { real, wrong, opened, page } = played;
  for (const secret of ['state', 'code_challenge', 'redirect_uri', 'client_id']) {
    assert.ok(real.searchParams.get(secret), `the authorization URL has ${secret}`);
  }
  for (const w of wrong) assert.equal(w.status, 404, `${w.path}: ${w.body}`);
  assert.ok(wrong.every((w) => w.location === null), 'no wrong start token is redirected');
  assert.equal(opened.status, 302);
  assert.equal(opened.location, real.href, 'the start URL leads to the real authorization URL');
  assert.equal(page.status, 200, page.body);
  assert.equal(exchanges, 1);
  assert.deepEqual(saved, ['scripted-refresh-token']);
  assert.equal(keys.get('access_token'), 'scripted-access-token');
});

test('authorize: the start URL is one-use: opened a second time it is 404 and the flow ends, nothing exchanged or stored', async () => {
  const { err, played, saved, exchanges } = await scriptedCodeFlow({}, async (url, authorizationUrl) => {
    const first = await get(url);
    const second = await get(url);
    // Whoever opened it first now holds the state: its redirect finds no listener.
    const late = await get(redirectTo(authorizationUrl, (state) => `code=scripted-code&state=${state}`)).catch((e) => ({ status: 0, body: String(e) }));
    return { first, second, late };
  });
  assert.ok(err instanceof RekeyError, printed(err));
  assert.equal(err.category, 'needs-authorization');
  assert.match(err.message, /opened more than once/);
  assert.equal(played.first.status, 302);
  assert.equal(played.second.status, 404);
  assert.equal(played.second.location, null);
  assert.notEqual(played.late.status, 200, 'the redirect of whoever opened it is not accepted');
  assert.equal(exchanges, 0);
  assert.deepEqual(saved, []);
});

/**
 * Why the other-user scenarios cannot run here, or undefined: they need Linux
 * (the listener's uid check) and root (to run a client as uid 65534).
 */
function otherUserSkip() {
  if (process.platform !== 'linux') return 'the same-user check is Linux only';
  if (process.geteuid() !== 0) return 'needs root to run a client as another user (uid 65534)';
  return undefined;
}

// A client run as uid 65534 by `setpriv`, on this same node binary. `get`
// sends a GET and prints the answer's status; `half-close` also shuts its
// writing side right after sending (its socket is then FIN_WAIT2 when the
// listener looks it up, and it still reads the answer); `idle` opens N
// connections that send nothing, prints `ready`, and when its stdin closes
// prints how many were answered 403.
const OTHER_CLIENT = `
const net = require('node:net');
const [mode, host, port, target, n] = process.argv.slice(1);
const connect = () => net.connect({ host, port: Number(port), allowHalfOpen: true });
const status = (data) => String(data).split('\\r\\n', 1)[0].split(' ')[1] ?? 'none';
if (mode === 'idle') {
  const held = Array.from({ length: Number(n) }, connect);
  const answers = held.map((s) => { let d = ''; s.on('data', (c) => { d += c; }); s.on('error', () => {}); return () => d; });
  let connected = 0;
  for (const s of held) s.once('connect', () => { if (++connected === held.length) console.log('ready'); });
  process.stdin.resume();
  process.stdin.on('end', () => { console.log(answers.filter((a) => status(a()) === '403').length); process.exit(0); });
} else {
  const s = connect();
  let data = '';
  s.on('data', (c) => { data += c; });
  s.on('error', () => {});
  s.on('end', () => { console.log(status(data)); s.destroy(); });
  const request = 'GET ' + target + ' HTTP/1.0\\r\\nhost: ' + host + ':' + port + '\\r\\n\\r\\n';
  s.once('connect', () => (mode === 'half-close' ? s.end(request) : s.write(request)));
}
`;

/** Runs OTHER_CLIENT as uid 65534 against `url`. */
function asAnotherUser(url, mode, n = 0) {
  const u = new URL(url);
  const args = ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', OTHER_CLIENT, mode, u.hostname, u.port, `${u.pathname}${u.search}`, String(n)];
  return spawn('setpriv', args, { stdio: ['pipe', 'pipe', 'inherit'] });
}

/** The first line `child` prints. */
function firstLine(child) {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
    });
    child.once('error', reject);
    child.once('close', (code) => resolve(out.trim() || `exit ${code}`));
  });
}

/** The status another user's `mode` GET of `url` got. */
const statusAsAnotherUser = (url, mode) => firstLine(asAnotherUser(url, mode));

test('authorize: another user\'s programs (uid 65534) get 403 for the start URL and the redirect, also with a half-closed socket; the flow then succeeds for this user', async (t) => {
  const skip = otherUserSkip();
  if (skip) {
    console.log(`SKIPPED: ${skip}`);
    t.skip(skip);
    return;
  }
  const { keys, err, played, saved, exchanges } = await scriptedCodeFlow({}, async (url, authorizationUrl) => {
    const start = { get: await statusAsAnotherUser(url, 'get'), halfClosed: await statusAsAnotherUser(url, 'half-close') };
    const opened = await get(url);
    const redirect = redirectTo(authorizationUrl, (state) => `code=scripted-code&state=${state}`);
    const theirs = { get: await statusAsAnotherUser(redirect, 'get'), halfClosed: await statusAsAnotherUser(redirect, 'half-close') };
    const page = await get(redirect);
    return { start, opened, theirs, page };
  });
  assert.equal(err, undefined, printed(err));
  assert.deepEqual(played.start, { get: '403', halfClosed: '403' }, 'the start URL is not served to another user');
  assert.equal(played.opened.status, 302, 'and is still there for ours');
  assert.deepEqual(played.theirs, { get: '403', halfClosed: '403' }, 'another user has no say in the redirect');
  assert.equal(played.page.status, 200, played.page.body);
  assert.equal(exchanges, 1, 'one exchange: ours');
  assert.deepEqual(saved, ['scripted-refresh-token']);
  assert.equal(keys.get('access_token'), 'scripted-access-token');
});

test('authorize: 400 idle connections of another user are each answered 403 and do not hold the listener: the start URL and the redirect are served', async (t) => {
  const skip = otherUserSkip();
  if (skip) {
    console.log(`SKIPPED: ${skip}`);
    t.skip(skip);
    return;
  }
  const { err, played, exchanges } = await scriptedCodeFlow({}, async (url, authorizationUrl) => {
    const idle = asAnotherUser(url, 'idle', 400);
    const ready = await firstLine(idle);
    const opened = await get(url);
    const page = await get(redirectTo(authorizationUrl, (state) => `code=scripted-code&state=${state}`));
    const counted = firstLine(idle);
    idle.stdin.end();
    return { ready, opened, page, refused: await counted };
  });
  assert.equal(err, undefined, printed(err));
  assert.equal(played.ready, 'ready');
  assert.equal(played.opened.status, 302, 'the start URL answered behind 400 idle connections');
  assert.equal(played.page.status, 200, played.page.body);
  assert.equal(played.refused, '400', 'each idle connection was answered 403');
  assert.equal(exchanges, 1);
});

test('authorize: RFC 9207: a missing iss when the issuer sends it, and a forged iss, are refused before any exchange; the matching one is accepted', async () => {
  const issuer = 'https://idp.example';
  const enc = encodeURIComponent;
  const cases = [
    ['no iss though advertised', { issuer, issuerSendsIss: true }, (st) => `code=scripted-code&state=${st}`, IssuerMismatch],
    ['a forged iss', { issuer, issuerSendsIss: true }, (st) => `code=scripted-code&state=${st}&iss=${enc('https://evil.example')}`, IssuerMismatch],
    ['a forged iss, not advertised', { issuer }, (st) => `code=scripted-code&state=${st}&iss=${enc('https://idp.example/')}`, IssuerMismatch],
    ['an iss with no issuer configured', {}, (st) => `code=scripted-code&state=${st}&iss=${enc(issuer)}`, InvalidSettings],
    ['the matching iss', { issuer, issuerSendsIss: true }, (st) => `code=scripted-code&state=${st}&iss=${enc(issuer)}`, undefined],
    ['no iss, not advertised', { issuer }, (st) => `code=scripted-code&state=${st}`, undefined],
  ];
  for (const [what, settings, query, refused] of cases) {
    const { keys, err, played, saved, exchanges } = await scriptedCodeFlow(settings, async (url, authorizationUrl) => {
      await get(url);
      return get(redirectTo(authorizationUrl, query));
    });
    if (refused) {
      assert.ok(err instanceof refused, `${what}: ${printed(err)}`);
      assert.equal(played.status, 400, what);
      assert.equal(exchanges, 0, `${what}: nothing exchanged`);
      assert.deepEqual(saved, [], `${what}: nothing stored`);
      if (refused === InvalidSettings) assert.match(err.message, /issuer/, `${what}: names the issuer option`);
    } else {
      assert.equal(err, undefined, `${what}: ${printed(err)}`);
      assert.equal(played.status, 200, what);
      assert.equal(exchanges, 1, what);
      assert.equal(keys.get('refresh_token'), 'scripted-refresh-token', what);
    }
  }
  // The settings column carries it only when set, as the Rust host writes it.
  const column = (extra) => JSON.parse(settingsJson({ tokenUrl: 'https://idp.example/token', clientId: 'c', apiOrigins: ['*'], ...extra }));
  assert.equal(column({ issuerSendsIss: true }).issuer_sends_iss, true);
  assert.equal('issuer_sends_iss' in column({}), false);
  // issuerSendsIss must be a boolean.
  await assert.rejects((await rekey()).beginAuthorization({ tokenUrl: 'https://idp.example/token', apiOrigins: ['https://api.example'], authorizationUrl: 'https://idp.example/auth', clientId: 'c', issuerSendsIss: 'yes' }, { redirectUri: 'http://127.0.0.1:8765/cb' }), (e) => e instanceof InvalidSettings && /issuerSendsIss/.test(e.message));
});

test('authorize: invalid_scope on the redirect is a settings problem; another provider error needs authorisation', async () => {
  for (const [code, category] of [['invalid_scope', 'settings-wrong'], ['server_error', 'needs-authorization']]) {
    const { err, played, exchanges } = await scriptedCodeFlow({}, async (url, authorizationUrl) => {
      await get(url);
      return get(redirectTo(authorizationUrl, (st) => `error=${code}&state=${st}`));
    });
    assert.ok(err instanceof AuthorizationProviderError, printed(err));
    assert.equal(err.code, code);
    assert.equal(err.category, category, code);
    assert.equal(played.status, 400);
    assert.equal(exchanges, 0);
  }
});

test('authorize: slow_down makes the device polls five seconds further apart', async () => {
  const rk = await rekey();
  await withScripted((path, _form, n) => {
    if (path === '/device') return [200, { device_code: 'scripted-device-code', user_code: 'ABCD-EFGH', verification_uri: 'http://127.0.0.1/activate', expires_in: 60, interval: 1 }];
    if (n === 2) return [400, { error: 'slow_down' }];
    return [200, { access_token: 'scripted-access-token', refresh_token: 'scripted-refresh-token', expires_in: 60 }];
  }, async (base, requests) => {
    const saved = [];
    const keys = await rk.authorizeDevice('s', {
      settings: { tokenUrl: `${base}/token`, apiOrigins: [new URL(base).origin], deviceUrl: `${base}/device`, clientId: 's' },
      onUpdateKeys: (k) => { saved.push(k.toJSONString()); },
      onUserCode: (d) => assert.equal(d.userCode, 'ABCD-EFGH'),
    });
    assert.equal(keys.get('refresh_token'), 'scripted-refresh-token');
    assert.deepEqual(saved, [keys.toJSONString()], 'onUpdateKeys got the keys once');
    const polls = requests.filter((r) => r.path === '/token');
    assert.equal(polls.length, 2);
    assert.equal(polls[0].form.device_code, 'scripted-device-code');
    // Interval 1 s, then 6 s after slow_down (a lower bound only: slower is fine).
    assert.ok(polls[1].at - polls[0].at >= 5_800, `polled again after ${polls[1].at - polls[0].at} ms`);
  });
});

test('authorize: a device code that expires ends the polling cleanly', async () => {
  const rk = await rekey();
  const device = (expiresIn) => [200, { device_code: 'scripted-device-code', user_code: 'ABCD', verification_uri: 'http://127.0.0.1/activate', expires_in: expiresIn, interval: 1 }];
  // The server says so (expired_token) ...
  await withScripted((path) => (path === '/device' ? device(60) : [400, { error: 'expired_token' }]), async (base, requests) => {
    const err = await rk.authorizeDevice('e', {
      settings: { tokenUrl: `${base}/token`, apiOrigins: [new URL(base).origin], deviceUrl: `${base}/device`, clientId: 'e' },
      onUpdateKeys: () => assert.fail('nothing to store'),
      onUserCode: () => {},
    }).then(() => assert.fail('authorised'), (e) => e);
    assert.ok(err instanceof DeviceCodeExpired, printed(err));
    assert.equal(err.category, 'needs-authorization');
    assert.equal(requests.filter((r) => r.path === '/token').length, 1);
    assertNoSecret([printed(err)], ['scripted-device-code'], 'the expiry');
  });
  // ... or its expires_in runs out while the person has not acted.
  await withScripted((path) => (path === '/device' ? device(2) : [400, { error: 'authorization_pending' }]), async (base) => {
    await assert.rejects(rk.authorizeDevice('e', {
      settings: { tokenUrl: `${base}/token`, apiOrigins: [new URL(base).origin], deviceUrl: `${base}/device`, clientId: 'e' },
      onUpdateKeys: () => assert.fail('nothing to store'),
      onUserCode: () => {},
    }), DeviceCodeExpired);
  });
});

test('authorize: a token response is imported as the Rust host imports it', () => {
  const now = 1_000_000_000;
  const k = importTokenResponse('{"access_token":"a.b-c_d~e+f/g==","expires_in":"60","expires_at":0,"rekey_refreshed_at":5,"id_token":"i"}', now).expose();
  assert.deepEqual(k, { access_token: 'a.b-c_d~e+f/g==', expires_in: '60', id_token: 'i', expires_at: 1_000_060 });
  assert.equal(importTokenResponse('{"refresh_token":"r","expires_in":1.5}', now).get('expires_at'), undefined);
  // Nor anything else the component derives and keeps itself.
  const derived = importTokenResponse('{"access_token":"a","rekey_rejected":{"x":9999999999},"rekey_lifetime":1,"refresh_expires_at":0}', now);
  for (const f of ['rekey_rejected', 'rekey_lifetime', 'refresh_expires_at']) assert.equal(derived.get(f), undefined, f);
  for (const bad of ['{"token_type":"bearer"}', '{"access_token":"sekrit with space"}', '{"access_token":"sekrit\\r\\nX: 1"}', '["sekrit"]', '{"access_token": "sekrit']) {
    assert.throws(() => importTokenResponse(bad), (e) => e instanceof TokenEndpointError && !printed(e).includes('sekrit'), bad);
  }
});
