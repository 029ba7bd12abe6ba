// Every grant and client-authentication method against oidc-provider 9.13.3
// (tests/oidc/server.mjs; issue #21's acceptance), end to end: the real
// component, real HTTP on loopback, 2-second access tokens, DPoP nonces off
// (none of these clients uses DPoP; dpop.test.mjs covers it), verdicts from
// the server's own counters (GET /_stats).
// - client credentials without DPoP, the client authenticated by
//   client_secret_basic and by client_secret_post: /_api/whoami over two
//   expiries, every call 200 as a Bearer token, one grant per expiry (the
//   first because nothing was stored), every grant authenticated the
//   configured way, never a refresh token, refresh mark, lease or dead grant
//   stored.
// - private_key_jwt (RFC 7523 §2.2): a client registered with only the public
//   JWK of a key made here (no secret at the server; the settings carry one,
//   which must never be sent), authorised through the code flow (PKCE;
//   follow.mjs plays the browser), then /me over two expiries: every call
//   200, every token request (the code exchange and each refresh)
//   authenticated by a signed assertion and by nothing else, refresh tokens
//   rotate, no error at the token endpoint (no invalid_grant, no reused jti),
//   no grant revoked. ES256 with the default audience (the issuer, as it is
//   configured) from a key file; RS256 with the token URL as the audience
//   from an environment variable.
// - the JWT bearer grant (RFC 7523 §2.1, server.mjs's registered grant): an
//   assertion for a subject, /_api/whoami over two expiries, the subject seen
//   by the server and in the API's answer, one grant per expiry, no assertion
//   refused, no refresh token stored: ES256 from a public client (client_id
//   only), aud the token URL; RS256 with private_key_jwt client auth (the
//   same key), aud the configured issuer; an assertion signed with a key the server does
//   not know (the registered kid even) is SettingsRejected (invalid_grant,
//   reason signature), no token stored, the API never called, and the same
//   settings are refused again without a request.
// Keys are made per test (node:crypto), written to temp files, never
// committed; no key, secret or token in any error, event or printed value.
// Waits between calls only pace the loop; no verdict rests on timing.

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { SettingsRejected } from '../src/index.js';
import { eventually, rekey, tempDir, tempStore } from './support/harness.mjs';
import { follow, oidcAvailable, startOidcProvider } from './support/oidc.mjs';

/** Access-token expiries each scenario lives through (the brief: at least two). */
const EXPIRIES = 2;
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const NO_AUTH = { basic: 0, post: 0, private_key_jwt: 0, none: 0 };

// ---------------------------------------------------------------- keys and secrets

const newKey = (alg) => (alg === 'ES256'
  ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
  : generateKeyPairSync('rsa', { modulusLength: 2048 }));
const pemOf = ({ privateKey }) => privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

/** The registration's JWK: the public members only, with a kid. */
function publicJwk({ publicKey }, alg, kid) {
  const { kty, crv, x, y, n, e } = publicKey.export({ format: 'jwk' });
  const members = kty === 'EC' ? { kty, crv, x, y } : { kty, n, e };
  return { ...members, alg, kid, use: 'sig' };
}

/** A private key as a file of its own (mode 0600) in a temp directory. */
async function keyFile(pair, name) {
  const path = join(await tempDir(), name);
  await writeFile(path, pemOf(pair), { mode: 0o600 });
  return path;
}

const envNames = [];
after(() => { for (const name of envNames) delete process.env[name]; });
function keyEnv(pair) {
  const name = `REKEY_TEST_OIDC_GRANTS_KEY_${envNames.length}_${process.pid}`;
  envNames.push(name);
  process.env[name] = pemOf(pair);
  return name;
}

/** Every 16-character run of the key's PEM body, and its private JWK members. */
function keyTexts({ privateKey }) {
  const texts = [];
  for (const format of [{ type: 'pkcs8', format: 'pem' }, privateKey.asymmetricKeyType === 'ec' ? { type: 'sec1', format: 'pem' } : { type: 'pkcs1', format: 'pem' }]) {
    const body = privateKey.export(format).toString().split('\n').filter((l) => l && !l.startsWith('-----')).join('');
    for (let i = 0; i + 16 <= body.length; i += 16) texts.push(body.slice(i, i + 16));
  }
  const jwk = privateKey.export({ format: 'jwk' });
  return texts.concat(['d', 'p', 'q', 'dp', 'dq', 'qi'].map((m) => jwk[m]).filter(Boolean));
}

/** Everything printing an error could show. */
const printed = (err) => `${err?.message} ${String(err)} ${err?.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`;

/** Fails if any of `secrets` (8 characters or more) appears in `texts`. */
function assertNothingShown(texts, secrets, what) {
  const all = texts.join('\n');
  assert.doesNotMatch(all, /PRIVATE KEY-----/, `${what} shows a PEM key`);
  for (const s of secrets) {
    if (typeof s === 'string' && s.length >= 8) assert.ok(!all.includes(s), `${what} shows a secret value`);
  }
}

// ---------------------------------------------------------------- the peer

/** server.mjs with exactly these registrations, DPoP nonces off; `body(provider)` then stop. */
async function withPeer(t, registrations, body) {
  if (!oidcAvailable(t)) return;
  const provider = await startOidcProvider([], { OIDC_DPOP_NONCE: '0', OIDC_CLIENTS: JSON.stringify(registrations) });
  try {
    await body({
      ...provider,
      origin: new URL(provider.issuer).origin,
      tokenUrl: `${provider.issuer}/token`,
      whoami: `${provider.issuer}/_api/whoami`,
      all: async () => (await fetch(`${provider.issuer}/_stats`)).json(),
    });
  } finally {
    await provider.stop();
  }
}

const keysOf = async (store, name) => JSON.parse(await store.loadKeys(name));

/**
 * Calls /_api/whoami through rekey until the server counted `grants` of
 * `counter` for `clientId`; every call must answer 200 for the client as a
 * Bearer token (for `sub`, a jwt-bearer token's subject, when given).
 * Returns the calls made and each distinct stored key set, in order.
 */
async function whoamiUntil(rk, p, { store, settings, clientId, counter, grants, sub, events }) {
  let calls = 0;
  const sets = [];
  const expected = { client_id: clientId, scope: null, token_type: 'Bearer', ...(sub ? { sub } : {}) };
  await eventually(async () => {
    const res = await rk.send({ credential: 'c', store, settings, request: { url: p.whoami }, onEvent: (e) => events.push(JSON.stringify(e)) });
    calls += 1;
    assert.equal(res.status, 200, res.text());
    assert.deepEqual(res.json(), expected);
    const keys = await keysOf(store, 'c');
    if (sets.at(-1)?.access_token !== keys.access_token) sets.push(keys);
    return ((await p.stats(clientId))?.[counter] ?? 0) >= grants;
  }, { timeoutMs: 60_000, everyMs: 250, what: `${grants} ${counter} grants for ${clientId}` });
  return { calls, sets };
}

/** No refresh token in any stored set, and nothing of a refresh in the record. */
async function assertNothingRefreshable(store, sets) {
  for (const keys of sets) {
    assert.equal(keys.refresh_token, undefined, 'the grant keeps no refresh token');
    assert.equal(keys.token_type.toLowerCase(), 'bearer', JSON.stringify(Object.keys(keys)));
  }
  const { data } = await store.read('c');
  assert.equal(data.refreshMark, null, 'never a refresh mark');
  assert.equal(data.lease, null, 'no lease left');
  assert.equal(data.deadGrant, null);
  const shown = await store.show('c');
  assert.equal(shown.keyFields.includes('refresh_token'), false, JSON.stringify(shown.keyFields));
}

// ---------------------------------------------------------------- client credentials without DPoP

for (const auth of ['basic', 'post']) {
  test(`client credentials without DPoP (client_secret_${auth}): /_api/whoami over ${EXPIRIES} expiries, one grant per expiry, nothing refreshable stored`, async (t) => {
    const clientId = `cc-${auth}`;
    const secret = `${clientId}:s3cr&t +%/?=`;
    await withPeer(t, [{ client_id: clientId, client_secret: secret, token_endpoint_auth_method: `client_secret_${auth}`, grant_types: ['client_credentials'] }], async (p) => {
      const rk = await rekey();
      const settings = { grant: 'client-credentials', tokenUrl: p.tokenUrl, clientId, clientSecret: secret, clientAuth: auth, apiOrigins: [p.origin] };
      const store = await tempStore();
      assert.equal(await store.create('c', { settings }), true);
      assert.equal(await store.loadKeys('c'), undefined, 'nothing stored: the first call fetches a token');
      assert.equal((await store.show('c')).settings.grant, 'client-credentials');

      const events = [];
      const grants = EXPIRIES + 1;
      const { calls, sets } = await whoamiUntil(rk, p, { store, settings, clientId, counter: 'client_credentials', grants, events });
      const s = await p.stats(clientId);
      assert.equal(s.client_credentials, grants, JSON.stringify(s));
      assert.deepEqual(s.auth_seen, { ...NO_AUTH, [auth]: grants }, `every grant authenticated with client_secret_${auth}: ${JSON.stringify(s)}`);
      assert.deepEqual(s.grant_errors, {}, JSON.stringify(s));
      assert.equal(s.grants_revoked, 0);
      // One grant per expiry: each later grant followed exactly one 401 (on-auth-failure), then 200.
      assert.equal(s.api_ok, calls, JSON.stringify(s));
      assert.equal(s.api_rejected, grants - 1, JSON.stringify(s));
      assert.deepEqual([s.dpop_proofs, s.dpop_tokens, s.refreshes, s.code_exchanges], [0, 0, 0, 0], JSON.stringify(s));
      assert.equal(sets.length, grants, "each grant's token was stored, and only those");
      await assertNothingRefreshable(store, sets);
      const all = await p.all();
      assert.equal(all.server_errors, 0);
      assert.equal(all.api_rejected_unknown, 0);
      assertNothingShown([...events, inspect(await store.show('c'), { depth: 9 })], [secret, ...sets.map((k) => k.access_token)], 'the events or the shown record');
    });
  });
}

// ---------------------------------------------------------------- private_key_jwt

/** What a browser does with the URL `onUrl` was given: the listener's start URL answers 302 to the authorization URL. */
async function openStart(url) {
  const r = await fetch(url, { redirect: 'manual' });
  assert.equal(r.status, 302);
  return r.headers.get('location');
}

for (const { alg, audience, source } of [
  { alg: 'ES256', audience: 'issuer (the default with issuer set)', source: 'keyFile' },
  { alg: 'RS256', audience: 'token URL', source: 'keyEnv' },
]) {
  test(`private_key_jwt (${alg}, aud the ${audience}, ${source}): a client known only by its public JWK, the code flow, then /me over ${EXPIRIES} expiries, every token request a signed assertion, rotation, no invalid_grant, the secret never sent`, async (t) => {
    const pair = newKey(alg);
    const clientId = `pkjwt-${alg.toLowerCase()}`;
    const kid = `${clientId}-1`;
    // The server knows only the public JWK: no client secret is registered.
    await withPeer(t, [{
      client_id: clientId, token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [publicJwk(pair, alg, kid)] },
      application_type: 'native', redirect_uris: ['http://127.0.0.1/callback'], grant_types: ['authorization_code', 'refresh_token'],
    }], async (p) => {
      const rk = await rekey();
      const store = await tempStore();
      const signing = source === 'keyFile'
        ? { algorithm: alg, keyId: kid, keyFile: await keyFile(pair, `${clientId}.pem`) }
        : { algorithm: alg, keyId: kid, keyEnv: keyEnv(pair), audience: p.tokenUrl };
      // A client secret in the settings too: the key proves the client, the secret is never
      // sent (oidc-provider refuses a request carrying a secret besides the assertion, and
      // counts any secret it sees under basic or post).
      const secret = `never-sent-${clientId}-s3cret`;
      const settings = p.settings(clientId, 'basic', { clientSecret: secret, clientAuth: 'private_key_jwt', signing, issuerSendsIss: true });
      const events = [];
      const onEvent = (e) => events.push(JSON.stringify(e));
      const login = `user-${clientId}`;
      let browser;
      const keys = await rk.authorizeCode('c', {
        store,
        settings,
        onEvent,
        timeoutMs: 60_000,
        onUrl: (url) => { browser = openStart(url).then((real) => follow(['--url', real, '--login', login])); },
      });
      const page = await browser;
      assert.equal(page.status, 200, page.body);
      const first = await keysOf(store, 'c');
      assert.deepEqual(first, keys.expose());
      assert.equal(typeof first.refresh_token, 'string');
      assert.equal(first.token_type.toLowerCase(), 'bearer');
      let s = await p.stats(clientId);
      assert.equal(s.code_exchanges, 1, JSON.stringify(s));
      assert.deepEqual(s.auth_seen, { ...NO_AUTH, private_key_jwt: 1 }, `the code exchange authenticated by an assertion: ${JSON.stringify(s)}`);
      // The column names the key's source and algorithm, never the key.
      const column = (await store.show('c')).settings;
      assert.equal(column.client_auth, 'private_key_jwt');
      assert.equal(column.signing.algorithm, alg);
      assert.equal(column.signing.key_id, kid);
      if (source === 'keyFile') assert.equal(column.signing.key_file, signing.keyFile);
      else assert.equal(column.signing.key_env, signing.keyEnv);

      // /me over EXPIRIES expiries: each refresh is authenticated by a fresh assertion
      // (oidc-provider refuses a jti it has seen) and rotates the refresh token.
      let calls = 0;
      const refreshTokens = [first.refresh_token];
      await eventually(async () => {
        const res = await rk.send({ credential: 'c', store, settings, onEvent, request: { url: `${p.issuer}/me` } });
        calls += 1;
        assert.equal(res.status, 200, res.text());
        assert.equal(res.json().sub, login);
        const current = await keysOf(store, 'c');
        if (current.refresh_token !== refreshTokens.at(-1)) refreshTokens.push(current.refresh_token);
        return (await p.stats(clientId)).refreshes >= EXPIRIES;
      }, { timeoutMs: 90_000, everyMs: 250, what: `${EXPIRIES} refreshes` });

      s = await p.stats(clientId);
      const grants = 1 + s.refreshes;
      assert.equal(s.refreshes, EXPIRIES, JSON.stringify(s));
      assert.equal(s.code_exchanges, 1);
      assert.deepEqual(s.auth_seen, { ...NO_AUTH, private_key_jwt: grants }, `every token request authenticated by a signed assertion, no secret: ${JSON.stringify(s)}`);
      assert.deepEqual(s.grant_errors, {}, `no invalid_grant, no refused assertion: ${JSON.stringify(s)}`);
      assert.equal(s.grants_revoked, 0, JSON.stringify(s));
      assert.equal(new Set(refreshTokens).size, refreshTokens.length, 'no refresh token came back twice');
      assert.equal(refreshTokens.length, grants, 'every refresh rotated the refresh token');
      // on-auth-failure: each refresh followed exactly one 401 at /me.
      assert.equal(s.userinfo_ok, calls, JSON.stringify(s));
      assert.equal(s.userinfo_rejected, s.refreshes, JSON.stringify(s));
      const all = await p.all();
      assert.equal(all.server_errors, 0);
      assert.equal(all.userinfo_rejected_unknown, 0);
      const last = await keysOf(store, 'c');
      assertNothingShown(
        [...events, page.body, inspect(keys), String(keys), JSON.stringify(keys), inspect(await store.show('c'), { depth: 9 })],
        [secret, ...keyTexts(pair), ...refreshTokens, first.access_token, last.access_token],
        'the events, page, keys or shown record',
      );
    });
  });
}

// ---------------------------------------------------------------- jwt-bearer

/** A client allowed only the JWT bearer grant, public at /token (the assertion is what proves it) unless `auth` says otherwise. */
const jwtBearerClient = (clientId, jwks, auth = 'none') => ({ client_id: clientId, token_endpoint_auth_method: auth, jwks: { keys: jwks }, grant_types: [JWT_BEARER] });

for (const { alg, clientAuth, aud } of [
  { alg: 'ES256', clientAuth: 'none', aud: 'token_endpoint' },
  { alg: 'RS256', clientAuth: 'private_key_jwt', aud: 'issuer' },
]) {
  test(`jwt-bearer (${alg}, client auth ${clientAuth}, aud the ${aud === 'issuer' ? 'issuer' : 'token URL'}) for a subject: /_api/whoami over ${EXPIRIES} expiries, the subject seen by the server, one grant per expiry, no refresh token stored`, async (t) => {
    const pair = newKey(alg);
    const clientId = `jwt-bearer-${alg.toLowerCase()}`;
    const subject = `svc-${alg}@example.test`;
    await withPeer(t, [jwtBearerClient(clientId, [publicJwk(pair, alg, 'bearer-1')], clientAuth)], async (p) => {
      const rk = await rekey();
      const path = await keyFile(pair, 'bearer.pem');
      const settings = {
        grant: 'jwt-bearer', subject, tokenUrl: p.tokenUrl, clientId, signing: { algorithm: alg, keyId: 'bearer-1', keyFile: path }, apiOrigins: [p.origin],
        // The issuer configured: the assertions' default aud (else the token URL).
        ...(aud === 'issuer' ? { issuer: p.issuer } : {}),
        // The same key signs the client assertion (RFC 7523 §2.2) and the grant's (§2.1).
        ...(clientAuth === 'private_key_jwt' ? { clientAuth } : {}),
      };
      const store = await tempStore();
      assert.equal(await store.create('c', { settings }), true);
      assert.equal(await store.loadKeys('c'), undefined, 'nothing stored: the first call fetches a token');
      const column = (await store.show('c')).settings;
      assert.equal(column.grant, 'jwt-bearer');
      assert.equal(column.subject, subject);
      assert.deepEqual(column.signing, { algorithm: alg, key_id: 'bearer-1', key_file: path });

      const events = [];
      const grants = EXPIRIES + 1;
      const { calls, sets } = await whoamiUntil(rk, p, { store, settings, clientId, counter: 'jwt_bearer', grants, sub: subject, events });
      const s = await p.stats(clientId);
      assert.equal(s.jwt_bearer, grants, JSON.stringify(s));
      assert.equal(s.last_jwt_bearer_subject, subject, JSON.stringify(s));
      assert.deepEqual(s.jwt_bearer_aud, { issuer: 0, token_endpoint: 0, [aud]: grants }, `every assertion's aud: ${JSON.stringify(s)}`);
      assert.equal(s.jwt_bearer_refused, 0, `no assertion refused (a fresh jti each time): ${JSON.stringify(s)}`);
      assert.deepEqual(s.jwt_bearer_refused_reasons, {}, JSON.stringify(s));
      assert.deepEqual(s.grant_errors, {}, JSON.stringify(s));
      assert.deepEqual(s.auth_seen, { ...NO_AUTH, [clientAuth]: grants }, `client auth ${clientAuth} at every grant, never a secret: ${JSON.stringify(s)}`);
      assert.deepEqual([s.client_credentials, s.refreshes, s.code_exchanges, s.dpop_tokens], [0, 0, 0, 0], JSON.stringify(s));
      // One grant per expiry: each later grant followed exactly one 401, then 200.
      assert.equal(s.api_ok, calls, JSON.stringify(s));
      assert.equal(s.api_rejected, grants - 1, JSON.stringify(s));
      assert.equal(sets.length, grants, "each grant's token was stored, and only those");
      await assertNothingRefreshable(store, sets);
      const all = await p.all();
      assert.equal(all.server_errors, 0);
      assert.equal(all.api_rejected_unknown, 0);
      assertNothingShown([...events, inspect(settings), inspect(await store.show('c'), { depth: 9 })], [...keyTexts(pair), ...sets.map((k) => k.access_token)], 'the events, settings or shown record');
    });
  });
}

test('jwt-bearer with a key the server does not know: SettingsRejected (invalid_grant, reason signature), no token stored, the API never called, refused again without a request', async (t) => {
  const registered = newKey('ES256');
  const unknown = newKey('ES256');
  const clientId = 'jwt-bearer-unknown-key';
  await withPeer(t, [jwtBearerClient(clientId, [publicJwk(registered, 'ES256', 'bearer-1')])], async (p) => {
    const rk = await rekey();
    // The right kind of key, the registered kid even, but not the registered key.
    const settings = {
      grant: 'jwt-bearer', subject: 'svc-8@example.test', tokenUrl: p.tokenUrl, clientId,
      signing: { algorithm: 'ES256', keyId: 'bearer-1', keyFile: await keyFile(unknown, 'unknown.pem') }, apiOrigins: [p.origin],
    };
    const store = await tempStore();
    assert.equal(await store.create('c', { settings }), true);

    const err = await rk.send({ credential: 'c', store, settings, request: { url: p.whoami } }).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(err instanceof SettingsRejected, printed(err));
    assert.equal(err.category, 'settings-wrong');
    assert.equal(err.code, 'invalid_grant');
    const s = await p.stats(clientId);
    assert.equal(s.jwt_bearer, 0, JSON.stringify(s));
    assert.deepEqual(s.grant_errors, { invalid_grant: 1 }, JSON.stringify(s));
    assert.equal(s.jwt_bearer_refused, 1, JSON.stringify(s));
    assert.deepEqual(s.jwt_bearer_refused_reasons, { signature: 1 }, JSON.stringify(s));
    assert.equal(s.last_jwt_bearer_subject, null);
    assert.deepEqual([s.api_ok, s.api_rejected], [0, 0], 'the API was never called');
    // No token stored: only the component's memory of the refusal.
    const { data } = await store.read('c');
    assert.deepEqual(Object.keys(JSON.parse(data.keys ?? '{}')).filter((k) => k !== 'rekey_refused'), [], 'no token stored');
    assert.equal(data.refreshMark, null);
    assert.equal(data.lease, null);
    assert.equal(data.deadGrant, null, 'a refused assertion is not a dead grant');

    // The same settings again within the minute: refused without a request.
    const again = await rk.send({ credential: 'c', store, settings, request: { url: p.whoami } }).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(again instanceof SettingsRejected, printed(again));
    assert.deepEqual(await p.stats(clientId), s, 'nothing sent');
    assertNothingShown([printed(err), printed(again)], [...keyTexts(unknown), ...keyTexts(registered)], 'the errors');
  });
});
