// Signed assertions (RFC 7523, issue #21): the component builds each JWT and
// this host signs it (node:crypto) with the credential's key from a PEM file
// (`keyFile`), an environment variable (`keyEnv`) or an in-memory KeyObject
// (`key`). Against the testkit provider with the test's public key
// registered (--assertion-key-file), which verifies every assertion's
// signature, iss, sub, aud, exp, iat and jti (a replay is refused): the JWT
// bearer grant with ES256 and RS256 across expiries, private_key_jwt with the
// refresh grant (rotation) and the client's own grant, a wrong key, no key.
// Against a scripted token endpoint: the code exchange of the authorisation
// flow signed too. The real component, real HTTP on loopback, real stores.
// The private keys are made here and live in a temp directory; no key
// material in any error, event, printed value or settings column.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { InvalidRequest, InvalidSettings, MemoryStore, SettingsRejected } from '../src/index.js';
import { loadSigningKey, signingOf } from '../src/signing.js';
import { imported, rekey, tempDir, tempStore } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

const EXPIRIES = 3;
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherEc = generateKeyPairSync('ec', { namedCurve: 'P-256' });

const pem = {
  ecPkcs8: ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  ecSec1: ec.privateKey.export({ type: 'sec1', format: 'pem' }).toString(),
  rsaPkcs1: rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
  rsaPkcs8: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  otherEc: otherEc.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
};

/** Every 16-character run of the keys' base64 bodies: none may show anywhere. */
const KEY_CHUNKS = Object.values(pem).flatMap((text) => {
  const body = text.split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const chunks = [];
  for (let i = 0; i + 16 <= body.length; i += 16) chunks.push(body.slice(i, i + 16));
  return chunks;
});

function assertNoKey(texts, what) {
  const all = texts.join('\n');
  assert.doesNotMatch(all, /PRIVATE KEY-----/, `${what} shows a PEM key`);
  const leaked = KEY_CHUNKS.find((c) => all.includes(c));
  assert.equal(leaked, undefined, `${what} shows key material`);
}

/** Everything printing an error could show. */
const printed = (err) => `${err?.message} ${String(err)} ${err?.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`;

/** A private key as a file of its own (mode 0600) in a temp directory. */
async function keyFile(text, name = 'key.pem') {
  const path = join(await tempDir(), name);
  await writeFile(path, text, { mode: 0o600 });
  return path;
}

const envNames = [];
after(() => { for (const name of envNames) delete process.env[name]; });
/** A fresh environment variable holding `text`. */
function keyEnv(text) {
  const name = `REKEY_TEST_SIGNING_KEY_${envNames.length}_${process.pid}`;
  envNames.push(name);
  process.env[name] = text;
  return name;
}

/** A testkit provider that accepts assertions signed by `publicKey`'s private key. */
async function withProvider(publicKey, body) {
  const spki = join(await tempDir(), 'client.pub.pem');
  await writeFile(spki, publicKey.export({ type: 'spki', format: 'pem' }));
  const provider = await startTestkit(['--assertion-key-file', spki]);
  try {
    return await body(provider);
  } finally {
    await provider.stop();
  }
}

const b64 = (part) => Buffer.from(part, 'base64url');
/** A JWT's header, claims and signature, and whether `publicKey` verifies it. */
function decodeJwt(jwt, publicKey) {
  const [h, c, s] = jwt.split('.');
  const header = JSON.parse(b64(h).toString());
  const claims = JSON.parse(b64(c).toString());
  const signature = b64(s);
  const key = header.alg === 'ES256' ? { key: publicKey, dsaEncoding: /** @type {const} */ ('ieee-p1363') } : publicKey;
  return { header, claims, signature, verified: verify('sha256', Buffer.from(`${h}.${c}`), key, signature) };
}

const formOf = async (p) => Object.fromEntries(await p.lastTokenForm());
const keysOf = async (store, name) => JSON.parse(await store.loadKeys(name));

/**
 * The JWT bearer grant over EXPIRIES expiries: the first call fetches a token
 * with a signed assertion, each expiry one more; never a refresh token.
 */
async function bearerAcrossExpiries(rk, store, p, settings, publicKey, expect) {
  assert.equal(await store.create('svc', { settings }), true);
  const first = await rk.send({ credential: 'svc', store, settings, request: { url: p.api('me') } });
  assert.equal(first.status, 200);
  let stats = await p.stats();
  assert.equal(stats.jwt_bearer_granted, 1);
  assert.equal(stats.last_assertion_subject, settings.subject);
  assert.equal(stats.client_credentials_granted + stats.refreshes_granted, 0);

  const form = await formOf(p);
  assert.equal(form.grant_type, JWT_BEARER);
  assert.equal(form.client_id, settings.clientId, 'no secret and not private_key_jwt: client_id only');
  assert.equal(form.client_secret, undefined);
  const jwt = decodeJwt(form.assertion, publicKey);
  assert.ok(jwt.verified, 'the signature verifies with the public key');
  assert.equal(jwt.header.alg, expect.alg);
  assert.equal(jwt.header.kid, expect.kid);
  assert.equal(jwt.signature.length, expect.signatureBytes, expect.alg === 'ES256' ? 'r || s, not DER' : 'the modulus length');
  assert.equal(jwt.claims.iss, settings.clientId);
  assert.equal(jwt.claims.sub, settings.subject);
  assert.equal(jwt.claims.aud, expect.aud);
  assert.equal(jwt.claims.exp - jwt.claims.iat, 300);
  for (const [k, v] of Object.entries(settings.claims ?? {})) assert.equal(jwt.claims[k], v);

  let keys = await keysOf(store, 'svc');
  assert.equal(typeof keys.access_token, 'string');
  assert.equal(keys.refresh_token, undefined, 'the grant keeps no refresh token');
  const jtis = new Set([jwt.claims.jti]);
  for (let i = 1; i <= EXPIRIES; i += 1) {
    const before = keys.access_token;
    await p.expireAccessTokens();
    const res = await rk.send({ credential: 'svc', store, settings, request: { url: p.api(`after-expiry-${i}`) } });
    assert.equal(res.status, 200, `expiry ${i}`);
    stats = await p.stats();
    assert.equal(stats.jwt_bearer_granted, 1 + i, `expiry ${i}: one more grant`);
    assert.equal(stats.api_unauthorized, i);
    keys = await keysOf(store, 'svc');
    assert.notEqual(keys.access_token, before, `expiry ${i}: the new token is stored`);
    assert.equal(keys.refresh_token, undefined);
    jtis.add(decodeJwt((await formOf(p)).assertion, publicKey).claims.jti);
  }
  assert.equal(jtis.size, 1 + EXPIRIES, 'a fresh jti per assertion');
  assert.equal(stats.assertions_refused, 0);
  assert.equal(stats.refreshes_granted + stats.client_credentials_granted + stats.invalid_grant, 0);
  const { data } = await store.read('svc');
  assert.equal(data.refreshMark, null, 'nothing spendable: never a refresh mark');
  return store;
}

test('jwt-bearer ES256 (SQLite, a PKCS#8 key file): a token per assertion across expiries, no refresh token; the column names the file', async () => {
  const path = await keyFile(pem.ecPkcs8);
  await withProvider(ec.publicKey, async (p) => {
    const settings = p.settings({
      clientSecret: undefined,
      grant: 'jwt_bearer',
      subject: 'svc-reporting@example',
      claims: { scope: 'api.read', tenant: 't-7' },
      signing: { algorithm: 'ES256', keyFile: path, keyId: 'k-ec-1' },
    });
    const store = await bearerAcrossExpiries(await rekey(), await tempStore(), p, settings, ec.publicKey, {
      alg: 'ES256', kid: 'k-ec-1', signatureBytes: 64, aud: p.token_url,
    });
    const column = (await store.rows('svc'))[0].settings;
    const shown = await store.show('svc');
    assert.equal(shown.settings.grant, 'jwt-bearer');
    assert.equal(shown.settings.subject, 'svc-reporting@example');
    assert.deepEqual(shown.settings.claims, { scope: 'api.read', tenant: 't-7' });
    assert.deepEqual(shown.settings.signing, { algorithm: 'ES256', key_id: 'k-ec-1', key_file: path });
    assertNoKey([column, inspect(shown, { depth: 9 })], 'the settings column');
  });
});

test('jwt-bearer RS256 (a PKCS#1 key in an environment variable, aud the issuer): a token per assertion across expiries', async () => {
  const name = keyEnv(pem.rsaPkcs1);
  await withProvider(rsa.publicKey, async (p) => {
    assert.equal(typeof p.issuer, 'string');
    const settings = p.settings({
      clientSecret: undefined,
      grant: 'JWT-Bearer',
      subject: 'svc-billing',
      signing: { algorithm: 'rs256', keyEnv: name, audience: p.issuer },
    });
    const store = await bearerAcrossExpiries(await rekey(), new MemoryStore(), p, settings, rsa.publicKey, {
      alg: 'RS256', kid: undefined, signatureBytes: 256, aud: p.issuer,
    });
    const shown = await store.show('svc');
    assert.deepEqual(shown.settings.signing, { algorithm: 'RS256', audience: p.issuer, key_env: name });
    assertNoKey([(await store.rows('svc'))[0].settings], 'the settings column');
  });
});

test('private_key_jwt with the refresh grant (SQLite, a SEC1 EC key file): rotation across expiries, every token request signed, the secret never sent', async () => {
  const path = await keyFile(pem.ecSec1);
  await withProvider(ec.publicKey, async (p) => {
    const rk = await rekey();
    const store = await tempStore();
    // The client secret is configured too: private_key_jwt must never send it.
    const settings = p.settings({ clientAuth: 'Private_Key_JWT', signing: { algorithm: 'ES256', keyFile: path } });
    await store.create('crm', { settings, keys: imported(await p.authorize()) });
    assert.equal((await store.show('crm')).settings.client_auth, 'private_key_jwt');
    let keys = await keysOf(store, 'crm');
    for (let i = 1; i <= EXPIRIES; i += 1) {
      const spent = keys.refresh_token;
      await p.expireAccessTokens();
      const res = await rk.send({ credential: 'crm', store, settings, request: { url: p.api(`v1/me-${i}`) } });
      assert.equal(res.status, 200, `expiry ${i}`);
      const stats = await p.stats();
      assert.equal(stats.refreshes_granted, i, `expiry ${i}: one refresh`);
      assert.equal(stats.client_assertions_ok, i, `expiry ${i}: the client authenticated with an assertion`);
      keys = await keysOf(store, 'crm');
      assert.notEqual(keys.refresh_token, spent, `expiry ${i}: the rotated refresh token is stored`);
      assert.equal(await p.refreshTokenLive(spent), false);
      assert.equal(await p.refreshTokenLive(keys.refresh_token), true);
      const form = await formOf(p);
      assert.equal(form.grant_type, 'refresh_token');
      assert.equal(form.client_assertion_type, CLIENT_ASSERTION_TYPE);
      assert.equal(form.client_id, settings.clientId);
      assert.equal(form.client_secret, undefined, 'the secret is never sent');
      const jwt = decodeJwt(form.client_assertion, ec.publicKey);
      assert.ok(jwt.verified);
      assert.equal(jwt.claims.iss, settings.clientId);
      assert.equal(jwt.claims.sub, settings.clientId);
      assert.equal(jwt.claims.aud, p.token_url);
    }
    const stats = await p.stats();
    assert.equal(stats.assertions_refused, 0);
    assert.equal(stats.invalid_grant, 0);
    assert.equal(stats.reused_refresh_tokens, 0);
    assert.equal(stats.basic_auth_calls + stats.post_auth_calls, 0, 'no client secret in any request');
    const { data } = await store.read('crm');
    assert.equal(data.refreshMark, null);
    assert.equal(data.deadGrant, null);
  });
});

test('private_key_jwt with an in-memory KeyObject (RS256, keys + onUpdateKeys): refreshes signed, the key in no printed value; a store refuses it', async () => {
  await withProvider(rsa.publicKey, async (p) => {
    const rk = await rekey();
    const settings = p.settings({ clientSecret: undefined, clientAuth: 'private-key-jwt', signing: { algorithm: 'RS256', key: rsa.privateKey } });
    let keys = imported(await p.authorize());
    const events = [];
    for (let i = 1; i <= EXPIRIES; i += 1) {
      await p.expireAccessTokens();
      const updates = [];
      const res = await rk.send({
        credential: 'in-memory',
        settings,
        keys,
        onUpdateKeys: (k) => { updates.push(k); },
        onEvent: (e) => events.push(JSON.stringify(e)),
        request: { url: p.api(`v1/me-${i}`) },
      });
      assert.equal(res.status, 200, `expiry ${i}`);
      assert.equal(updates.length, 1, `expiry ${i}: the refreshed keys`);
      const next = JSON.parse(updates[0].toJSONString());
      assert.notEqual(next.refresh_token, keys.refresh_token, 'rotated');
      keys = next;
    }
    const stats = await p.stats();
    assert.equal(stats.refreshes_granted, EXPIRIES);
    assert.equal(stats.client_assertions_ok, EXPIRIES);
    assert.equal(stats.assertions_refused + stats.invalid_grant, 0);
    assertNoKey([inspect(settings, { depth: 9 }), JSON.stringify(settings), String(settings.signing.key), ...events], 'the settings or events');

    // A store's column never holds a key: creating a credential with only a KeyObject is refused, nothing created.
    const store = new MemoryStore();
    const err = await store.create('in-memory', { settings }).then(() => assert.fail('stored'), (e) => e);
    assert.ok(err instanceof InvalidSettings, printed(err));
    assert.match(err.message, /signing\.keyFile or signing\.keyEnv.*never holds a private key/);
    assert.equal(await store.read('in-memory'), undefined);
    // Nor does an authorisation flow start with it and a built-in store.
    await assert.rejects(
      rk.authorizeCode('in-memory', { store, settings: { ...settings, authorizationUrl: `${p.base_url}/authorize` }, onUrl: () => assert.fail('started') }),
      (e) => e instanceof InvalidSettings && /never holds a private key/.test(e.message),
    );
    assertNoKey([printed(err)], 'the refusal');
  });
});

test('client-credentials with private_key_jwt and no client secret: the token comes with an assertion', async () => {
  await withProvider(ec.publicKey, async (p) => {
    const rk = await rekey();
    const store = new MemoryStore();
    const settings = p.settings({ clientSecret: undefined, grant: 'client_credentials', clientAuth: 'private_key_jwt', signing: { algorithm: 'ES256', key: ec.privateKey } });
    const res = await rk.send({ settings, request: { url: p.api('me') }, onUpdateKeys() {} });
    assert.equal(res.status, 200);
    const stats = await p.stats();
    assert.equal(stats.client_credentials_granted, 1);
    assert.equal(stats.client_assertions_ok, 1);
    assert.equal(stats.basic_auth_calls + stats.post_auth_calls, 0);
    // Without signing it cannot authenticate at all: said before anything is sent.
    const { signing: _, ...unsigned } = settings;
    await assert.rejects(store.create('m2m', { settings: unsigned }), (e) => e instanceof InvalidSettings && /private_key_jwt' needs signing/.test(e.message));
    await assert.rejects(rk.send({ settings: unsigned, request: { url: p.api('me') }, onUpdateKeys() {} }), (e) => e instanceof InvalidSettings);
    assert.equal((await p.stats()).token_calls, 1, 'nothing more sent');
  });
});

test('a wrong key (another P-256 key) is SettingsRejected and stores no token, for private_key_jwt and for jwt-bearer', async () => {
  const wrong = await keyFile(pem.otherEc);
  await withProvider(ec.publicKey, async (p) => {
    const rk = await rekey();
    const store = await tempStore();
    const signing = { algorithm: 'ES256', keyFile: wrong };

    const client = p.settings({ clientAuth: 'private_key_jwt', signing });
    await store.create('crm', { settings: client, keys: imported(await p.authorize()) });
    const stored = await keysOf(store, 'crm');
    await p.expireAccessTokens();
    const err = await rk.send({ credential: 'crm', store, settings: client, request: { url: p.api('me') } }).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(err instanceof SettingsRejected, printed(err));
    assert.equal(err.code, 'invalid_client');
    assert.equal(err.category, 'settings-wrong');
    const { rekey_refused: refused, ...rest } = await keysOf(store, 'crm');
    assert.deepEqual(rest, stored, 'the stored keys are unchanged');
    assert.equal(refused.code, 'invalid_client', 'the refusal is remembered beside them');
    assert.equal(await p.refreshTokenLive(stored.refresh_token), true, 'the refresh token was not spent');
    const { data } = await store.read('crm');
    assert.equal(data.refreshMark, null);
    assert.equal(data.deadGrant, null, 'a client refusal is not a dead grant');

    const bearer = p.settings({ clientSecret: undefined, grant: 'jwt-bearer', subject: 'svc', signing });
    await store.create('svc', { settings: bearer });
    const err2 = await rk.send({ credential: 'svc', store, settings: bearer, request: { url: p.api('me') } }).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(err2 instanceof SettingsRejected, printed(err2));
    assert.equal(err2.category, 'settings-wrong');
    assert.deepEqual(Object.keys(await keysOf(store, 'svc')), ['rekey_refused'], 'no token stored');

    const stats = await p.stats();
    assert.equal(stats.assertions_refused, 2, 'both signatures were checked and refused');
    assert.equal(stats.refreshes_granted + stats.jwt_bearer_granted + stats.client_assertions_ok, 0);
    assert.equal(stats.api_calls, 1, 'only the expired token reached the API');
    assertNoKey([printed(err), printed(err2)], 'the errors');
  });
});

test('no key: InvalidSettings naming the file or the variable (never a key), nothing sent', async () => {
  await withProvider(ec.publicKey, async (p) => {
    const rk = await rekey();
    const missingFile = join(await tempDir(), 'absent.pem');
    const unset = `REKEY_TEST_SURELY_UNSET_${process.pid}`;
    const bearer = (signing) => p.settings({ clientSecret: undefined, grant: 'jwt-bearer', subject: 'svc', signing });
    const cases = [
      [bearer({ algorithm: 'ES256', keyFile: missingFile }), new RegExp(`the signing key file ${missingFile.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} cannot be read \\(ENOENT\\)`)],
      [bearer({ algorithm: 'ES256', keyEnv: unset }), new RegExp(`the signing key's environment variable ${unset} is not set`)],
      [bearer({ algorithm: 'ES256' }), /signing needs its private key: signing\.keyFile .*signing\.keyEnv .*signing\.key/],
      [bearer(undefined), /grant 'jwt-bearer' needs signing/],
      [p.settings({ clientAuth: 'private_key_jwt' }), /clientAuth 'private_key_jwt' needs signing/],
      [p.settings({ clientSecret: undefined, grant: 'jwt-bearer', signing: { algorithm: 'ES256', key: ec.privateKey } }), /grant 'jwt-bearer' needs subject/],
    ];
    for (const [settings, message] of cases) {
      const store = new MemoryStore();
      // The credential's record, holding no keys: the key is read only when
      // an assertion is signed (create would refuse some of these settings).
      await store.insert('x', null, undefined);
      for (const call of [
        () => rk.send({ credential: 'x', store, settings, request: { url: p.api('me') } }),
        () => rk.send({ settings, request: { url: p.api('me') }, onUpdateKeys() {} }),
        () => rk.checkSettings(settings),
      ]) {
        const err = await call().then(() => assert.fail('accepted'), (e) => e);
        assert.ok(err instanceof InvalidSettings, printed(err));
        assert.match(err.message, message);
      }
    }
    const stats = await p.stats();
    assert.equal(stats.token_calls, 0, 'nothing went to the token endpoint');
    assert.equal(stats.api_calls, 0, 'nor to the API');
  });
});

test('key formats: PKCS#8, PKCS#1 RSA and SEC1 EC (an openssl one too) sign; encrypted, public, too small, the wrong type or curve are refused naming the source, never the key', async () => {
  const rk = await rekey();
  const base = { tokenUrl: 'https://login.example.com/token', apiOrigins: ['https://api.example.com'], clientId: 'svc-client', grant: 'jwt-bearer', subject: 'svc' };
  const accepted = [['ES256', pem.ecPkcs8], ['ES256', pem.ecSec1], ['RS256', pem.rsaPkcs1], ['RS256', pem.rsaPkcs8]];
  let openssl;
  try {
    // `ecparam -genkey` writes an EC PARAMETERS block before the SEC1 key.
    openssl = execFileSync('openssl', ['ecparam', '-name', 'prime256v1', '-genkey'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
    accepted.push(['ES256', openssl]);
  } catch {
    // No openssl on this machine: the node:crypto exports above cover the formats.
  }
  for (const [algorithm, text] of accepted) {
    await rk.checkSettings({ ...base, signing: { algorithm, keyFile: await keyFile(text) } });
    await rk.checkSettings({ ...base, signing: { algorithm, keyEnv: keyEnv(text) } });
    const key = loadSigningKey(signingOf({ algorithm, keyFile: await keyFile(text) }));
    const signed = key.sign(algorithm.toLowerCase(), Buffer.from('header.claims'));
    assert.equal(signed.ok, true);
    const pub = createPublicKey(text.slice(text.search(/-----BEGIN [A-Z ]*PRIVATE KEY-----/)));
    const check = algorithm === 'ES256' ? { key: pub, dsaEncoding: /** @type {const} */ ('ieee-p1363') } : pub;
    assert.ok(verify('sha256', Buffer.from('header.claims'), check, signed.ok && signed.value), `${algorithm} verifies`);
    assert.equal(signed.ok && signed.value.length, algorithm === 'ES256' ? 64 : 256);
    const other = key.sign(algorithm === 'ES256' ? 'rs256' : 'es256', Buffer.from('x'));
    assert.equal(other.ok, false, 'a key signs for its own algorithm only');
    assertNoKey([inspect(key), JSON.stringify({ key }), String(key), other.ok ? '' : other.error], 'the loaded key');
  }

  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const ed25519 = generateKeyPairSync('ed25519').privateKey;
  const encrypted = { cipher: 'aes-256-cbc', passphrase: 'a passphrase' };
  const refused = [
    ['ES256', ec.privateKey.export({ type: 'pkcs8', format: 'pem', ...encrypted }).toString(), /is encrypted; expected an unencrypted PEM private key/],
    ['RS256', rsa.privateKey.export({ type: 'pkcs1', format: 'pem', ...encrypted }).toString(), /is encrypted; expected an unencrypted PEM private key/],
    ['ES256', ec.publicKey.export({ type: 'spki', format: 'pem' }).toString(), /holds a PUBLIC KEY, no private key; expected .*BEGIN PRIVATE KEY \(PKCS#8\)/],
    ['ES256', 'not a key at all', /is not PEM; expected/],
    ['ES256', `${pem.ecPkcs8}${pem.otherEc}`, /holds 2 private keys/],
    ['ES256', `-----BEGIN PRIVATE KEY-----\n${pem.ecPkcs8.split('\n')[1]}\n-----END PRIVATE KEY-----\n`, /is not a valid PKCS#8 private key/],
    ['RS256', rsa1024.export({ type: 'pkcs8', format: 'pem' }).toString(), /is a 1024-bit RSA key; RS256 needs an RSA key of 2048 bits or more/],
    ['RS256', pem.ecPkcs8, /is an EC P-256 key; RS256 needs an RSA key/],
    ['ES256', p384.export({ type: 'sec1', format: 'pem' }).toString(), /is an EC P-384 key; ES256 needs an EC key on P-256/],
    ['ES256', pem.rsaPkcs1, /is a 2048-bit RSA key; ES256 needs/],
    ['ES256', ed25519.export({ type: 'pkcs8', format: 'pem' }).toString(), /is an ed25519 key; ES256 needs/],
  ];
  for (const [algorithm, text, message] of refused) {
    const path = await keyFile(text);
    const name = keyEnv(text);
    for (const [signing, where] of [[{ keyFile: path }, `the signing key file ${path}`], [{ keyEnv: name }, `the signing key's environment variable ${name}`]]) {
      const err = await rk.checkSettings({ ...base, signing: { algorithm, ...signing } }).then(() => assert.fail(`accepted: ${message}`), (e) => e);
      assert.ok(err instanceof InvalidSettings, printed(err));
      assert.ok(err.message.includes(where), `${err.message} names ${where}`);
      assert.match(err.message, message);
      assertNoKey([printed(err)], `the refusal (${message})`);
    }
  }
  // In memory: a KeyObject of the right kind only; a string is never echoed.
  for (const [key, message] of [[pem.ecPkcs8, /signing\.key must be a private crypto\.KeyObject/], [ec.publicKey, /signing\.key must be a private/], [rsa1024, /signing\.key is a 1024-bit RSA key/]]) {
    const err = await rk.checkSettings({ ...base, signing: { algorithm: key === rsa1024 ? 'RS256' : 'ES256', key } }).then(() => assert.fail('accepted'), (e) => e);
    assert.ok(err instanceof InvalidSettings, printed(err));
    assert.match(err.message, message);
    assertNoKey([printed(err)], 'the refusal of signing.key');
  }
  // Settings the hosts spell alike; a snake_case field is pointed to its name here.
  const cases = [
    [{ signing: { algorithm: 'HS256', key: ec.privateKey } }, /signing\.algorithm "HS256" is unknown: use 'RS256' or 'ES256'/],
    [{ signing: { algorithm: 'ES256', key_file: '/x.pem' } }, /signing\.key_file is unknown \(spelled keyFile here\)/],
    [{ signing: { algorithm: 'ES256', keyFile: '/x.pem', key: ec.privateKey } }, /signing takes one of keyFile, keyEnv and key, not key and keyFile|not keyFile and key/],
    [{ signing: { algorithm: 'ES256', key: ec.privateKey, keyId: '' } }, /signing\.keyId must be a non-empty string/],
    [{ claims: { scope: 7 }, signing: { algorithm: 'ES256', key: ec.privateKey } }, /claims must map claim names to string values/],
    // The component's rule: the claims it sets itself cannot be configured.
    [{ claims: { aud: 'elsewhere' }, signing: { algorithm: 'ES256', key: ec.privateKey } }, /aud/],
  ];
  for (const [change, message] of cases) {
    await assert.rejects(rk.checkSettings({ ...base, ...change }), (e) => e instanceof InvalidSettings && message.test(e.message), String(message));
  }
});

test('authorize: the code exchange authenticates with private_key_jwt (ES256 KeyObject), signed anew, the verifier beside it', async () => {
  const rk = await rekey();
  const requests = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(data));
      requests.push({ form, authorization: req.headers.authorization });
      const jwt = decodeJwt(form.client_assertion ?? '..', ec.publicKey);
      const ok = form.client_assertion_type === CLIENT_ASSERTION_TYPE && jwt.verified && jwt.claims.sub === 'app';
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify(ok ? { access_token: 'scripted-access', refresh_token: 'scripted-refresh', expires_in: 60, token_type: 'Bearer' } : { error: 'invalid_client' }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const base = `http://127.0.0.1:${/** @type {import('node:net').AddressInfo} */ (server.address()).port}`;
    const settings = {
      tokenUrl: `${base}/token`, apiOrigins: [base], authorizationUrl: `${base}/auth`, clientId: 'app',
      clientAuth: 'private_key_jwt', signing: { algorithm: 'ES256', key: ec.privateKey, audience: base },
    };
    const redirectUri = 'http://127.0.0.1:8765/cb';
    const pending = await rk.beginAuthorization(settings, { redirectUri });
    const state = new URL(pending.url).searchParams.get('state');
    const keys = await rk.finishAuthorization(settings, pending, `code=scripted-code&state=${state}`);
    assert.equal(keys.get('access_token'), 'scripted-access');
    assert.equal(requests.length, 1);
    const [{ form, authorization }] = requests;
    assert.equal(form.grant_type, 'authorization_code');
    assert.equal(form.code, 'scripted-code');
    assert.equal(typeof form.code_verifier, 'string');
    assert.equal(form.client_id, 'app');
    assert.equal(form.client_secret, undefined);
    assert.equal(authorization, undefined, 'no Basic authentication');
    const jwt = decodeJwt(form.client_assertion, ec.publicKey);
    assert.ok(jwt.verified);
    assert.equal(jwt.claims.aud, base, 'the configured audience');

    // A jwt-bearer credential is never authorised: send fetches its token.
    await assert.rejects(
      rk.authorizeCode('svc', { settings: { ...settings, grant: 'jwt-bearer', subject: 'svc' }, onUrl() {}, onUpdateKeys() {} }),
      (e) => e instanceof InvalidRequest && /jwt-bearer credential is never authorised/.test(e.message),
    );
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
