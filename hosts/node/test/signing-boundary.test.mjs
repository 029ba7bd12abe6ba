// The host's side of signed assertions (issue #21 review): what it agrees to
// sign, when it reads the key, and how it reads it.
// - The second-line check (the same rule in every host): the signer import
//   signs only the assertion the credential's settings describe. Called here
//   as the component calls it (CallHost.sign, the import's implementation)
//   with hostile input: another aud, exp, iss, sub, kid, alg, an extra header
//   member (jku), an unconfigured claim... each is refused naming what failed,
//   before any key is read, and nothing is signed.
// - The key is read only when the component asks for a signature: a valid
//   stored token needs no key (the file may be gone); the next refresh is
//   InvalidSettings with nothing sent; a key replaced by an atomic rename is
//   used at the next signature.
// - A key file is opened without blocking and must be a regular file:
//   /dev/zero and a FIFO are InvalidSettings at once (checked in a child
//   process with a time bound, so a host that would hang fails, not stalls).
// - aud defaults to the credential's issuer when one is configured.
// - An environment variable named like an Object property ('constructor') is
//   simply unset.
// Against the testkit (the test's public key registered with
// --assertion-key-file) and the real component; no key material committed.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { mkdir, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { CallHost } from '../src/call-host.js';
import { InvalidSettings, MemoryStore } from '../src/index.js';
import { SigningKey, loadSigningKey, signingOf } from '../src/signing.js';
import { toWitSettings } from '../src/wit-values.js';
import { imported, rekey, tempDir, tempStore } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

const SRC = new URL('../src/', import.meta.url);
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ecPem = ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const rsaPem = rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();

/** Every 16-character run of the keys' base64 bodies: none may show in a message. */
const KEY_CHUNKS = [ecPem, rsaPem].flatMap((text) => {
  const body = text.split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const chunks = [];
  for (let i = 0; i + 16 <= body.length; i += 16) chunks.push(body.slice(i, i + 16));
  return chunks;
});
function assertNoKey(text, what) {
  assert.doesNotMatch(text, /PRIVATE KEY-----/, `${what} shows a PEM key`);
  assert.equal(KEY_CHUNKS.find((c) => text.includes(c)), undefined, `${what} shows key material`);
}
const printed = (err) => `${err?.message} ${String(err)} ${err?.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`;

async function keyFile(text, name = 'key.pem') {
  const path = join(await tempDir(), name);
  await writeFile(path, text, { mode: 0o600 });
  return path;
}

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
/** `header.claims` as the component builds it (raw JSON text allowed, for what JSON.stringify cannot write). */
const input = (header, claims) => Buffer.from(`${b64(header)}.${b64(claims)}`);

/** The signer import of one call with these settings, as the engines call it. */
const signerOf = (settings) => new CallHost({ settings: toWitSettings(settings) });

/** Counts the signatures made (SigningKey.sign: every key, every source). */
function countSignatures() {
  const original = SigningKey.prototype.sign;
  const counter = { count: 0, restore: () => { SigningKey.prototype.sign = original; } };
  SigningKey.prototype.sign = function sign(...args) {
    counter.count += 1;
    return original.apply(this, args);
  };
  return counter;
}

const BASE = {
  tokenUrl: 'https://login.example.com/oauth2/token',
  apiOrigins: ['https://api.example.com'],
  clientId: 'svc-client',
};

test('the check before signing: a jwt-bearer assertion with another aud, exp, iat, iss, sub, kid, alg, header member or claim is refused naming it, and nothing is signed', async () => {
  const path = await keyFile(ecPem);
  const settings = {
    ...BASE,
    grant: 'jwt-bearer',
    subject: 'reports@svc',
    claims: { scope: 'api.read', tenant: 't-7' },
    signing: { algorithm: 'ES256', keyFile: path, keyId: 'k-1' },
  };
  const now = Math.floor(Date.now() / 1000);
  const jti = randomBytes(16).toString('hex');
  const header = { alg: 'ES256', typ: 'JWT', kid: 'k-1' };
  const claims = { scope: 'api.read', tenant: 't-7', iss: 'svc-client', sub: 'reports@svc', aud: BASE.tokenUrl, iat: now, exp: now + 300, jti };

  const counter = countSignatures();
  try {
    // What the component builds is signed, and verifies.
    const good = input(header, claims);
    const signed = signerOf(settings).sign('es256', good);
    assert.equal(signed.ok, true, signed.ok ? '' : signed.error);
    assert.ok(verify('sha256', good, { key: ec.publicKey, dsaEncoding: 'ieee-p1363' }, signed.ok && signed.value));
    // The client's own assertion (sub = client id) in the same credential, without the grant's claims.
    const client = signerOf(settings).sign('es256', input(header, { ...claims, sub: 'svc-client', scope: undefined, tenant: undefined }));
    assert.equal(client.ok, true, client.ok ? '' : client.error);
    // A claim order or whitespace of its own changes nothing.
    const spaced = input(`{ "typ" : "JWT", "kid":"k-1","alg":"ES256" }`, JSON.stringify(claims, null, 2));
    assert.equal(signerOf(settings).sign('es256', spaced).ok, true);
    assert.equal(counter.count, 3);

    const evil = 'https://evil.example.net/token';
    const cases = [
      ['aud another URL', header, { ...claims, aud: evil }, /the claim aud is not the expected audience/],
      ['aud a list', header, { ...claims, aud: [BASE.tokenUrl] }, /the claim aud is not a string/],
      ['aud missing', header, { ...claims, aud: undefined }, /the claim aud is not the expected audience/],
      ['exp an hour on', header, { ...claims, exp: now + 3600 }, /the claim exp is not within 300 s after iat/],
      ['exp at iat', header, { ...claims, exp: now }, /the claim exp is not within 300 s after iat/],
      ['exp a string', header, { ...claims, exp: String(now + 300) }, /the claim exp is not a whole number/],
      ['exp a fraction', header, `{"iss":"svc-client","sub":"reports@svc","aud":"${BASE.tokenUrl}","iat":${now},"exp":${now + 300}.5,"jti":"${jti}","scope":"api.read","tenant":"t-7"}`, /the claim exp is not a whole number/],
      ['iat an hour ago', header, { ...claims, iat: now - 3600, exp: now - 3300 }, /the claim iat is more than 60 s from this host's clock/],
      ['iat tomorrow', header, { ...claims, iat: now + 86400, exp: now + 86500 }, /the claim iat is more than 60 s/],
      ['iss another client', header, { ...claims, iss: 'other-client' }, /the claim iss is not the client id/],
      ['sub another subject', header, { ...claims, sub: 'root@svc' }, /the claim sub is neither the client id nor the configured subject/],
      ['kid another key', { ...header, kid: 'k-2' }, claims, /the header's kid is not the configured key id/],
      ['kid missing', { alg: 'ES256', typ: 'JWT' }, claims, /the header's kid is not the configured key id/],
      ['alg RS256 in the header', { ...header, alg: 'RS256' }, claims, /the header's alg is not ES256/],
      ['alg none', { ...header, alg: 'none' }, claims, /the header's alg is not ES256/],
      ['typ missing', { alg: 'ES256', kid: 'k-1' }, claims, /the header's typ is not "JWT"/],
      ['jku in the header', { ...header, jku: 'https://evil.example.net/jwks' }, claims, /the header member jku is not allowed/],
      ['jwk in the header', { ...header, jwk: { kty: 'EC' } }, claims, /the header member jwk is not/],
      ['crit in the header', { ...header, crit: ['exp'] }, claims, /the header member crit is not/],
      ['a header member of its own', { ...header, 'x-exfil': 'abc' }, claims, /a header member named otherwise \(the name is not repeated\) is not allowed/],
      ['a configured claim with another value', header, { ...claims, scope: 'api.admin' }, /the claim scope is not its configured value/],
      ['nbf, not configured', header, { ...claims, nbf: now }, /the claim nbf is not configured/],
      ['a claim of its own', header, { ...claims, admin: 'true' }, /a claim named otherwise \(the name is not repeated\) is not configured/],
      ['jti too short', header, { ...claims, jti: 'abc' }, /the claim jti is not a string of 16 characters/],
      ['jti a number', header, { ...claims, jti: 1234567890123456789 }, /the claim jti is not a string/],
      ['aud twice (a server may read the first)', header, `{"aud":"${evil}","iss":"svc-client","sub":"reports@svc","aud":"${BASE.tokenUrl}","iat":${now},"exp":${now + 300},"jti":"${jti}","scope":"api.read","tenant":"t-7"}`, /the claim aud appears twice/],
      ['claims not an object', header, '["iss"]', /the claims is not a JSON object/],
      ['header not JSON', '{alg:ES256}', claims, /the header is not a JSON object/],
    ];
    for (const [what, h, c, message] of cases) {
      const hostile = input(h, c);
      const result = signerOf(settings).sign('es256', hostile);
      assert.equal(result.ok, false, `${what}: signed`);
      const error = result.ok ? '' : result.error;
      assert.match(error, message, what);
      assert.match(error, /^refused by the host's check of what it signs: /, what);
      assert.ok(!error.includes(hostile.toString().slice(0, 24)) && !error.includes(evil) && !error.includes(jti) && !error.includes('x-exfil') && !error.includes('admin'), `${what}: the input is not quoted: ${error}`);
      assertNoKey(error, what);
    }
    // Not a JWT's header.claims at all.
    for (const raw of ['', 'abc', `${b64(header)}.${b64(claims)}.c2ln`, `${b64(header)}=.${b64(claims)}`, `${b64(header)}.${b64(claims)}\n`, 'é.e30']) {
      const result = signerOf(settings).sign('es256', Buffer.from(raw));
      assert.equal(result.ok, false, JSON.stringify(raw));
      assert.match(result.ok ? '' : result.error, /header\.claims|not a JSON object/, JSON.stringify(raw));
    }
    // The component asks for the other algorithm: refused, naming alg.
    const other = signerOf(settings).sign('rs256', input({ ...header, alg: 'RS256' }, claims));
    assert.equal(other.ok, false);
    assert.match(other.ok ? '' : other.error, /alg: the component asked for RS256, the credential signs with ES256/);
    assert.equal(counter.count, 3, 'nothing but the three good inputs was signed');

    // The check comes before the key is read: with the key file gone, a
    // hostile input is refused for what it is, a good one for the key.
    const gone = { ...settings, signing: { ...settings.signing, keyFile: join(await tempDir(), 'absent.pem') } };
    const refused = signerOf(gone).sign('es256', input(header, { ...claims, aud: evil }));
    assert.match(refused.ok ? '' : refused.error, /the claim aud is not the expected audience/);
    const unread = signerOf(gone).sign('es256', input(header, { ...claims, iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 300 }));
    assert.match(unread.ok ? '' : unread.error, new RegExp(`^the signing key file ${escape(gone.signing.keyFile)} cannot be read \\(ENOENT\\)$`));
    assert.equal(counter.count, 3);
  } finally {
    counter.restore();
  }
});

test('the check before signing: a private_key_jwt client assertion (RS256, no kid) is signed for the client only, with the audience configured', async () => {
  const settings = {
    ...BASE,
    clientAuth: 'private_key_jwt',
    signing: { algorithm: 'RS256', key: rsa.privateKey, audience: 'https://login.example.com' },
  };
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'RS256', typ: 'JWT' };
  const claims = { iss: 'svc-client', sub: 'svc-client', aud: 'https://login.example.com', iat: now, exp: now + 300, jti: randomBytes(16).toString('hex') };
  const good = signerOf(settings).sign('rs256', input(header, claims));
  assert.equal(good.ok, true, good.ok ? '' : good.error);
  assert.equal(good.ok && good.value.length, 256);
  const cases = [
    [header, { ...claims, aud: BASE.tokenUrl }, /the claim aud is not the expected audience/], // the audience configured wins
    [header, { ...claims, sub: 'someone-else' }, /the claim sub is not the client id/],
    [header, { ...claims, scope: 'api.read' }, /the claim scope is not configured/], // no jwt-bearer claims here
    [{ ...header, kid: 'k-1' }, claims, /the header has a kid, and no key id \(signing\.keyId\) is configured/],
    [{ ...header, alg: 'ES256' }, claims, /the header's alg is not RS256/],
  ];
  for (const [h, c, message] of cases) {
    const result = signerOf(settings).sign('rs256', input(h, c));
    assert.equal(result.ok, false);
    assert.match(result.ok ? '' : result.error, message);
  }
  // A call without signing settings signs nothing at all.
  const none = signerOf({ ...BASE, clientSecret: 's' }).sign('rs256', input(header, claims));
  assert.match(none.ok ? '' : none.error, /no signing key is configured for this credential/);
});

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
const claimsOfJwt = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

test('private_key_jwt: the key is read only to sign; a valid stored token needs none, the next refresh without it is InvalidSettings with nothing sent, an atomic rename rotates it', async () => {
  const dir = await tempDir();
  const path = join(dir, 'client.pem');
  await writeFile(path, ecPem, { mode: 0o600 });
  await withProvider(ec.publicKey, async (p) => {
    const rk = await rekey();
    const store = await tempStore();
    const settings = p.settings({ clientSecret: undefined, clientAuth: 'private_key_jwt', signing: { algorithm: 'ES256', keyFile: path } });
    await store.create('crm', { settings, keys: imported(await p.authorize()) });

    // A refresh: signed with the key in the file.
    await p.expireAccessTokens();
    assert.equal((await rk.send({ credential: 'crm', store, settings, request: { url: p.api('v1/first') } })).status, 200);
    let stats = await p.stats();
    assert.equal(stats.refreshes_granted, 1);
    assert.equal(stats.client_assertions_ok, 1);
    const stored = await store.loadKeys('crm');

    // The key file is gone; the stored access token is still valid: the call needs no key.
    await unlink(path);
    const warm = await rk.send({ credential: 'crm', store, settings, request: { url: p.api('v1/warm') } });
    assert.equal(warm.status, 200, 'a warm call reads no key');
    stats = await p.stats();
    assert.equal(stats.token_calls, 1, 'no token request');
    assert.equal(stats.api_calls, 3, 'the expired call, its retry, the warm call');

    // The token expires: the refresh needs the key, which is missing: InvalidSettings, nothing sent.
    await p.expireAccessTokens();
    const err = await rk.send({ credential: 'crm', store, settings, request: { url: p.api('v1/cold') } }).then(() => assert.fail('sent'), (e) => e);
    assert.ok(err instanceof InvalidSettings, printed(err));
    assert.match(err.message, new RegExp(`the signing key file ${escape(path)} cannot be read \\(ENOENT\\)`));
    stats = await p.stats();
    assert.equal(stats.token_calls, 1, 'nothing went to the token endpoint');
    assert.equal(await store.loadKeys('crm'), stored, 'the stored keys are unchanged');
    assert.equal(await p.refreshTokenLive(JSON.parse(stored).refresh_token), true, 'the refresh token was not spent');
    const { data } = await store.read('crm');
    assert.equal(data.refreshMark, null);
    assert.equal(data.deadGrant, null);

    // The key comes back by an atomic rename (as a rotation writes it): used at the next signature.
    const staged = join(dir, '.client.pem.new');
    await writeFile(staged, ecPem, { mode: 0o600 });
    await rename(staged, path);
    assert.equal((await rk.send({ credential: 'crm', store, settings, request: { url: p.api('v1/again') } })).status, 200);
    stats = await p.stats();
    assert.equal(stats.refreshes_granted, 2);
    assert.equal(stats.client_assertions_ok, 2);
    assert.equal(stats.assertions_refused + stats.invalid_grant, 0);
  });
});

test('aud: with no signing.audience, the credential\'s issuer (rfc7523bis), else the token URL; the testkit accepts it', async () => {
  // What the component is given.
  const wit = (extra) => toWitSettings({ ...BASE, grant: 'jwt-bearer', subject: 's', ...extra }).signing.audience;
  assert.equal(wit({ issuer: 'https://login.example.com', signing: { algorithm: 'ES256', key: ec.privateKey } }), 'https://login.example.com');
  assert.equal(wit({ issuer: 'https://login.example.com', signing: { algorithm: 'ES256', key: ec.privateKey, audience: 'https://aud.example.com' } }), 'https://aud.example.com');
  assert.equal(wit({ signing: { algorithm: 'ES256', key: ec.privateKey } }), undefined, 'none: the component uses the token URL');

  await withProvider(ec.publicKey, async (p) => {
    assert.equal(typeof p.issuer, 'string');
    assert.notEqual(p.issuer, p.token_url);
    const rk = await rekey();
    // The JWT bearer grant.
    const store = new MemoryStore();
    const bearer = p.settings({ clientSecret: undefined, issuer: p.issuer, grant: 'jwt-bearer', subject: 'svc-7', signing: { algorithm: 'ES256', keyFile: await keyFile(ecPem) } });
    await store.create('svc', { settings: bearer });
    assert.equal((await rk.send({ credential: 'svc', store, settings: bearer, request: { url: p.api('me') } })).status, 200);
    let form = Object.fromEntries(await p.lastTokenForm());
    assert.equal(form.grant_type, JWT_BEARER);
    assert.equal(claimsOfJwt(form.assertion).aud, p.issuer);
    // private_key_jwt with client credentials.
    const m2m = p.settings({ clientSecret: undefined, issuer: p.issuer, grant: 'client_credentials', clientAuth: 'private_key_jwt', signing: { algorithm: 'ES256', key: ec.privateKey } });
    assert.equal((await rk.send({ settings: m2m, request: { url: p.api('me') }, onUpdateKeys() {} })).status, 200);
    form = Object.fromEntries(await p.lastTokenForm());
    assert.equal(claimsOfJwt(form.client_assertion).aud, p.issuer);
    // No issuer, no audience: the token URL.
    const plain = p.settings({ clientSecret: undefined, grant: 'client_credentials', clientAuth: 'private_key_jwt', signing: { algorithm: 'ES256', key: ec.privateKey } });
    assert.equal((await rk.send({ settings: plain, request: { url: p.api('me') }, onUpdateKeys() {} })).status, 200);
    form = Object.fromEntries(await p.lastTokenForm());
    assert.equal(claimsOfJwt(form.client_assertion).aud, p.token_url);
    const stats = await p.stats();
    assert.equal(stats.jwt_bearer_granted, 1);
    assert.equal(stats.client_assertions_ok, 2);
    assert.equal(stats.assertions_refused, 0);
  });
});

/**
 * Runs `loadSigningKey`, `checkSettings` and the signer import on `keyFile`
 * in a child process bounded by `timeoutMs`: a host that reads /dev/zero to
 * its end or blocks on a FIFO fails here instead of stalling the suite.
 */
async function loadInChild(keyFilePath, timeoutMs = 20_000) {
  const script = join(await tempDir(), 'load-key.mjs');
  await writeFile(script, `
    const { loadSigningKey, signingOf } = await import(${JSON.stringify(new URL('signing.js', SRC).href)});
    const { Rekey } = await import(${JSON.stringify(new URL('index.js', SRC).href)});
    const { CallHost } = await import(${JSON.stringify(new URL('call-host.js', SRC).href)});
    const { toWitSettings } = await import(${JSON.stringify(new URL('wit-values.js', SRC).href)});
    const keyFile = process.argv[2];
    const out = {};
    try { loadSigningKey(signingOf({ algorithm: 'ES256', keyFile })); out.load = 'loaded'; } catch (e) { out.load = e.constructor.name + ': ' + e.message; }
    const settings = { tokenUrl: 'https://login.example.com/t', apiOrigins: ['https://api.example.com'], clientId: 'c', grant: 'jwt-bearer', subject: 's', signing: { algorithm: 'ES256', keyFile } };
    const now = Math.floor(Date.now() / 1000);
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const input = Buffer.from(b64({ alg: 'ES256', typ: 'JWT' }) + '.' + b64({ iss: 'c', sub: 's', aud: settings.tokenUrl, iat: now, exp: now + 300, jti: 'j'.repeat(32) }));
    const signed = new CallHost({ settings: toWitSettings(settings) }).sign('es256', input);
    out.sign = signed.ok ? 'signed' : signed.error;
    const rk = await Rekey.load({ mode: process.env.REKEY_NODE_MODE ?? 'auto' });
    try { await rk.checkSettings(settings); out.check = 'ok'; } catch (e) { out.check = e.constructor.name + ': ' + e.message; }
    rk.close();
    process.stdout.write(JSON.stringify(out));
  `);
  const started = Date.now();
  const child = spawnSync(process.execPath, [...process.execArgv.filter((a) => !a.startsWith('--test')), script, keyFilePath], {
    timeout: timeoutMs, encoding: 'utf8', maxBuffer: 1 << 20, killSignal: 'SIGKILL',
  });
  return { ...child, elapsedMs: Date.now() - started };
}

test('a key file is opened without blocking and must be a regular file: /dev/zero, a FIFO, a directory are InvalidSettings at once, naming the path; a symlink to a key is followed', async () => {
  const dir = await tempDir();
  const fifo = join(dir, 'key.fifo');
  execFileSync('mkfifo', [fifo]);
  const folder = join(dir, 'a-directory');
  await mkdir(folder);
  const big = await keyFile(`${ecPem}${'#'.repeat(70 * 1024)}`, 'big.pem');
  // Kubernetes mounts a secret as a chain of links (key.pem -> ..data/key.pem -> ..2024_01/key.pem).
  const real = await keyFile(ecPem, 'real.pem');
  await mkdir(join(dir, '..data'));
  await symlink(real, join(dir, '..data', 'key.pem'));
  const linked = join(dir, 'linked.pem');
  await symlink(join(dir, '..data', 'key.pem'), linked);
  const toFifo = join(dir, 'to-fifo.pem');
  await symlink(fifo, toFifo);

  const refused = [
    ['/dev/zero', /is not a regular file \(a character device\)/],
    [fifo, /is not a regular file \(a FIFO\)/],
    [toFifo, /is not a regular file \(a FIFO\)/],
    [folder, /is not a regular file \(a directory\)|cannot be read \(EISDIR\)/],
    [big, /is larger than 64 KiB: not a private key/],
  ];
  for (const [path, message] of refused) {
    const child = await loadInChild(path);
    assert.equal(child.error, undefined, `${path}: ${child.error?.message} after ${child.elapsedMs} ms (a read that never ends)`);
    assert.equal(child.status, 0, `${path}: ${child.stderr}`);
    const out = JSON.parse(child.stdout);
    for (const [surface, text] of Object.entries(out)) {
      const where = `${path} (${surface})`;
      if (surface !== 'sign') assert.match(text, /^InvalidSettings: /, where);
      assert.ok(text.includes(`the signing key file ${path} `), `${where} names the path: ${text}`);
      assert.match(text, message, where);
      assert.ok(text.length < 400, `${where}: no content in the message`);
      assert.doesNotMatch(text, /#####|\u0000/, where);
    }
  }
  const followed = await loadInChild(linked);
  assert.equal(followed.status, 0, followed.stderr);
  assert.deepEqual(JSON.parse(followed.stdout), { load: 'loaded', sign: 'signed', check: 'ok' });
});

test('keyEnv or a secret\'s env named like an Object property (constructor, __proto__, hasOwnProperty, toString) is unset: InvalidSettings, not a TypeError', async () => {
  const rk = await rekey();
  for (const name of ['constructor', '__proto__', 'hasOwnProperty', 'toString', 'valueOf']) {
    assert.equal(Object.hasOwn(process.env, name), false);
    const err = (() => {
      try {
        loadSigningKey(signingOf({ algorithm: 'ES256', keyEnv: name }));
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    assert.ok(err instanceof InvalidSettings, `${name}: ${printed(err)}`);
    assert.match(err.message, new RegExp(`the signing key's environment variable ${escape(name)} is not set`));
    const settings = { ...BASE, grant: 'jwt-bearer', subject: 's', signing: { algorithm: 'ES256', keyEnv: name } };
    await assert.rejects(rk.checkSettings(settings), (e) => e instanceof InvalidSettings && e.message.includes(`${name} is not set`), name);
    // The client secret's { env } reads own variables the same way.
    assert.throws(() => toWitSettings({ ...BASE, clientSecret: { env: name } }), (e) => e instanceof InvalidSettings && e.message.includes(`${name} is not set`), name);
  }
});

test('an RSA-PSS-restricted key (openssl genpkey -algorithm RSA-PSS) is refused for RS256, as in every host', async (t) => {
  let pss;
  try {
    pss = execFileSync('openssl', ['genpkey', '-algorithm', 'RSA-PSS', '-pkeyopt', 'rsa_keygen_bits:2048'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  } catch {
    t.skip('no openssl');
    return;
  }
  const path = await keyFile(pss, 'pss.pem');
  assert.throws(() => loadSigningKey(signingOf({ algorithm: 'RS256', keyFile: path })), (e) => e instanceof InvalidSettings && /RSA-PSS key; RS256 needs an RSA key/.test(e.message) && e.message.includes(path));
  assert.ok(createPublicKey(pss)); // a valid key, refused for what it is
});
