// The first token set through the component's `authorize` interface, end to
// end against oidc-provider (tests/oidc/server.mjs; tests/oidc/follow.mjs
// plays the browser through its login, consent and device pages, as the Rust
// scenarios in tests/all/authorize.rs do): the code grant with PKCE through
// this host's loopback listener, then refreshes of the stored keys with
// every strategy; the device grant, then a refresh; denied consent, a forged
// redirect (wrong state), no redirect in time, a denied device code. Against
// small scripted endpoints: the PKCE verifier the exchange sends matches the
// challenge, slow_down makes the polls further apart, an expired device code
// ends the polling. Nothing secret
// (code, verifier, device code, tokens, client secret) in any error, event,
// page or printed value. Verdicts never depend on timing: waits poll.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { inspect } from 'node:util';
import {
  AccessDenied, AuthorizationRejected, AuthorizationTimeout, DeviceAuthorization, DeviceCodeExpired, InvalidSettings,
  PendingAuthorization, StateMismatch, TokenEndpointError, importTokenResponse,
} from '../src/index.js';
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
      const settings = provider.settings(id, auth, { strategy, expiryMarginSecs: 1 });
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
        onUrl: (url) => {
          shownUrl = new URL(url);
          browser = follow(['--url', url, '--login', login]);
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
      settings: provider.settings('az-denied', 'basic'),
      onUrl: (url) => { browser = follow(['--url', url, '--deny']); },
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

test('authorize: a redirect with a wrong state is refused before any exchange', async (t) => {
  if (!oidcAvailable(t)) return;
  const provider = await startOidcProvider([['az-state', 'basic']]);
  try {
    const rk = await rekey();
    const store = await tempStore();
    const forged = 'forged-code-value-0123456789';
    let hit;
    const err = await rk.authorizeCode('az-state', {
      store,
      settings: provider.settings('az-state', 'basic'),
      // Another page (or process) reaches the listener first with a code of its own.
      onUrl: (url) => {
        const redirect = new URL(url).searchParams.get('redirect_uri');
        hit = fetch(`${redirect}?code=${forged}&state=not-ours`).then(async (r) => ({ status: r.status, body: await r.text() }));
      },
    }).then(() => assert.fail('authorised'), (e) => e);
    assert.ok(err instanceof StateMismatch, printed(err));
    const page = await hit;
    assert.equal(page.status, 400);
    assert.match(page.body, /state does not match/);
    assert.equal(await store.loadKeys('az-state'), undefined);
    assert.equal(await provider.stats('az-state'), undefined, 'nothing reached the token endpoint');
    assertNoSecret([printed(err), page.body], [forged, secretOf('az-state')], 'the refusal');
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
    settings: { tokenUrl: 'http://127.0.0.1:9/token', authorizationUrl: 'http://127.0.0.1:9/auth', clientId: 't' },
    timeoutMs: 200,
    onUrl: (url) => { redirectUri = new URL(url).searchParams.get('redirect_uri'); },
  }).then(() => assert.fail('authorised'), (e) => e);
  assert.ok(err instanceof AuthorizationTimeout, printed(err));
  assert.equal(err.category, 'needs-authorization');
  assert.match(err.message, /no redirect arrived within 0\.2 s/);
  assert.equal(await store.loadKeys('t'), undefined);
  await assert.rejects(fetch(redirectUri), 'nothing listens any more');

  // A redirect URI off loopback is refused before anything starts.
  await assert.rejects(rk.authorizeCode('t', {
    store,
    settings: { tokenUrl: 'http://127.0.0.1:9/token', authorizationUrl: 'http://127.0.0.1:9/auth', clientId: 't' },
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
    const settings = { tokenUrl: `${base}/token`, authorizationUrl: `${base}/auth?tenant=x`, clientId: 'app', clientSecret: 'scripted-client-secret', clientAuth: 'post' };
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

    const keys = await rk.finishAuthorization(settings, pending, new URL(`${redirectUri}?code=scripted-code-value&state=${state}&iss=ignored`), { onEvent });
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

test('authorize: slow_down makes the device polls five seconds further apart', async () => {
  const rk = await rekey();
  await withScripted((path, _form, n) => {
    if (path === '/device') return [200, { device_code: 'scripted-device-code', user_code: 'ABCD-EFGH', verification_uri: 'http://127.0.0.1/activate', expires_in: 60, interval: 1 }];
    if (n === 2) return [400, { error: 'slow_down' }];
    return [200, { access_token: 'scripted-access-token', refresh_token: 'scripted-refresh-token', expires_in: 60 }];
  }, async (base, requests) => {
    const saved = [];
    const keys = await rk.authorizeDevice('s', {
      settings: { tokenUrl: `${base}/token`, deviceUrl: `${base}/device`, clientId: 's' },
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
      settings: { tokenUrl: `${base}/token`, deviceUrl: `${base}/device`, clientId: 'e' },
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
      settings: { tokenUrl: `${base}/token`, deviceUrl: `${base}/device`, clientId: 'e' },
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
