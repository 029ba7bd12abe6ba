// DPoP (RFC 9449, contract 0.5.0): the host's side.
// - Settings: `dpop: {algorithm, keyFile | keyEnv | key}` read and checked,
//   carried to the component as the WIT `settings.dpop` (the algorithm only),
//   recorded in a store's settings column as `{"algorithm", "key_file" |
//   "key_env"}` (never a key; a KeyObject alone is refused there).
// - `signer.dpop-public-key`: the public JWK with only its public members
//   (EC: kty, crv, x, y of 32 bytes; RSA: kty, n without a leading zero, e).
// - `signer.dpop-sign` and the host's check before it (the same rule in every
//   host): a good proof is signed and verifies; a wrong typ, a foreign or
//   private jwk, an htu outside the API origins (or any API htu in an
//   authorisation), a stale iat, an extra claim or header member... is refused
//   naming the member, before the key is read, and nothing is signed.
// - End to end against oidc-provider 9.13.3 (tests/oidc/server.mjs) with DPoP
//   nonces required at /token, /me and /_api/whoami: a public client
//   authorised through the code flow with DPoP, then /me over three
//   access-token expiries (every call 200, refresh tokens rotated, no
//   invalid_grant, no reuse, token_type DPoP, nonce challenges answered);
//   the DPoP-bound set with settings lacking dpop is InvalidSettings with
//   nothing sent; the bound refresh token cannot be refreshed with another
//   key; client credentials (confidential client, RS256 key from an
//   environment variable) call the server's API as DPoP.
// Real component, real HTTP on loopback; no key material committed.

import assert from 'node:assert/strict';
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { CallHost } from '../src/call-host.js';
import { NO_DPOP_KEY, checkProof, dpopOf, jwkRefusal } from '../src/dpop.js';
import { InvalidSettings, MemoryStore, ReauthorizationRequired } from '../src/index.js';
import { SigningKey } from '../src/signing.js';
import { settingsJson } from '../src/stores/settings-json.js';
import { toWitSettings } from '../src/wit-values.js';
import { eventually, rekey, tempDir, tempStore } from './support/harness.mjs';
import { follow, oidcAvailable, startOidcProvider } from './support/oidc.mjs';

const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ecPem = ec.privateKey.export({ type: 'sec1', format: 'pem' }).toString();
const rsaPem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

/** Every 16-character run of the keys' base64 bodies, and their private JWK members: none may show in a message. */
const KEY_CHUNKS = [ecPem, rsaPem].flatMap((text) => {
  const body = text.split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const chunks = [];
  for (let i = 0; i + 16 <= body.length; i += 16) chunks.push(body.slice(i, i + 16));
  return chunks;
}).concat([ec.privateKey, rsa.privateKey].map((k) => k.export({ format: 'jwk' }).d));
function assertNoKey(text, what) {
  assert.doesNotMatch(text, /PRIVATE KEY-----/, `${what} shows a PEM key`);
  assert.equal(KEY_CHUNKS.find((c) => text.includes(c)), undefined, `${what} shows key material`);
}
const printed = (err) => `${err?.message} ${String(err)} ${err?.stack} ${inspect(err, { depth: 5 })} ${JSON.stringify(err)}`;

async function keyFile(text, name = 'dpop.pem') {
  const path = join(await tempDir(), name);
  await writeFile(path, text, { mode: 0o600 });
  return path;
}

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
/** `header.claims` as the component builds it (raw JSON text allowed). */
const input = (header, claims) => Buffer.from(`${b64(header)}.${b64(claims)}`);
const ath = (token) => createHash('sha256').update(token).digest('base64url');

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
  apiOrigins: ['https://api.example.com', 'https://*.tenants.example.com'],
  clientId: 'dpop-client',
};
/** A record store stand-in: its presence makes the CallHost a send's (API proofs allowed). */
const SEND = { read: async () => undefined, write: async () => false };
/** The signer imports of one send (or, with `authorize`, of an authorisation: no record). */
const signerOf = (settings, { authorize = false } = {}) => new CallHost({ settings: toWitSettings(settings), ...(authorize ? {} : { store: SEND }) });

const publicJwkOf = (keyObject) => {
  const jwk = (keyObject.type === 'public' ? keyObject : createPublicKey(keyObject)).export({ format: 'jwk' });
  return jwk.kty === 'EC' ? { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: jwk.kty, n: jwk.n, e: jwk.e };
};

test('dpop settings: key sources, the WIT settings carry the algorithm only, the column records the file or variable, never a key', async () => {
  const path = await keyFile(ecPem);
  assert.deepEqual(dpopOf({ algorithm: 'es256', keyFile: path }), { algorithm: 'es256', source: { keyFile: path } });
  assert.deepEqual(dpopOf({ algorithm: 'RS256', keyEnv: 'DPOP_KEY' }), { algorithm: 'rs256', source: { keyEnv: 'DPOP_KEY' } });
  assert.equal(dpopOf(undefined), undefined);
  assert.equal(toWitSettings({ ...BASE, dpop: { algorithm: 'ES256', keyFile: path } }).dpop, 'es256');
  assert.equal(toWitSettings({ ...BASE, dpop: { algorithm: 'RS256', key: rsa.privateKey } }).dpop, 'rs256');
  assert.equal(toWitSettings(BASE).dpop, undefined, 'no dpop: None');

  const column = JSON.parse(settingsJson({ ...BASE, dpop: { algorithm: 'es256', keyFile: 'relative/dpop.pem' } }));
  assert.deepEqual(column.dpop, { algorithm: 'ES256', key_file: join(process.cwd(), 'relative/dpop.pem') }, 'absolute, upper-case algorithm');
  assert.deepEqual(JSON.parse(settingsJson({ ...BASE, dpop: { algorithm: 'RS256', keyEnv: 'DPOP_KEY' } })).dpop, { algorithm: 'RS256', key_env: 'DPOP_KEY' });
  assert.equal(JSON.parse(settingsJson(BASE)).dpop, undefined);

  const refusals = [
    [{ algorithm: 'ES256', key: ec.privateKey }, /dpop\.key \(a KeyObject\) is for settings passed with each call/, 'column'],
    [{ algorithm: 'PS256', keyFile: path }, /dpop\.algorithm "PS256" is unknown: use 'RS256' or 'ES256'/],
    [{ algorithm: 'ES256' }, /dpop needs its private key: dpop\.keyFile/],
    [{ algorithm: 'ES256', keyFile: path, keyEnv: 'X' }, /dpop takes one of keyFile, keyEnv and key, not keyFile and keyEnv/],
    [{ algorithm: 'ES256', key_file: path }, /dpop\.key_file is unknown \(spelled keyFile here\)/],
    [{ algorithm: 'ES256', keyFile: path, keyId: 'k1' }, /dpop\.keyId is unknown/],
    [{ algorithm: 'ES256', key: ecPem }, /dpop\.key must be a private crypto\.KeyObject/],
    [{ algorithm: 'ES256', key: ec.publicKey }, /dpop\.key must be a private crypto\.KeyObject/],
    ['ES256', /dpop must be an object/],
  ];
  for (const [dpop, message, where] of refusals) {
    const run = where === 'column' ? () => settingsJson({ ...BASE, dpop }) : () => toWitSettings({ ...BASE, dpop });
    assert.throws(run, (err) => {
      assert.ok(err instanceof InvalidSettings, printed(err));
      assert.match(err.message, message);
      assertNoKey(printed(err), 'the refusal');
      return true;
    }, inspect(dpop));
  }

  // checkSettings reads the key at once: a missing file or a key of the wrong type is InvalidSettings naming the source.
  const rk = await rekey();
  await rk.checkSettings({ ...BASE, dpop: { algorithm: 'ES256', keyFile: path } });
  const missing = join(await tempDir(), 'absent.pem');
  const err = await rk.checkSettings({ ...BASE, dpop: { algorithm: 'ES256', keyFile: missing } }).then(() => assert.fail('accepted'), (e) => e);
  assert.ok(err instanceof InvalidSettings, printed(err));
  assert.match(err.message, new RegExp(`the DPoP key file ${missing.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} cannot be read \\(ENOENT\\)`));
  const rsaPath = await keyFile(rsaPem, 'rsa.pem');
  const wrong = await rk.checkSettings({ ...BASE, dpop: { algorithm: 'ES256', keyFile: rsaPath } }).then(() => assert.fail('accepted'), (e) => e);
  assert.match(wrong.message, /the DPoP key file .* is a 2048-bit RSA key; ES256 needs an EC key on P-256/);
  assertNoKey(printed(wrong), 'the refusal');
});

test('dpop-public-key: the public JWK with only its public members; errors name the source, never the key', async () => {
  process.env.REKEY_TEST_DPOP_RSA = rsaPem;
  try {
    const es = signerOf({ ...BASE, dpop: { algorithm: 'ES256', keyFile: await keyFile(ecPem) } }).dpopPublicKey('es256');
    assert.equal(es.ok, true, es.ok ? '' : es.error);
    const esJwk = JSON.parse(es.ok && es.value);
    assert.deepEqual(Object.keys(esJwk).sort(), ['crv', 'kty', 'x', 'y']);
    assert.deepEqual(esJwk, publicJwkOf(ec.publicKey));
    assert.equal(esJwk.kty, 'EC');
    assert.equal(esJwk.crv, 'P-256');
    for (const c of [esJwk.x, esJwk.y]) {
      assert.match(c, /^[A-Za-z0-9_-]{43}$/, 'base64url of 32 bytes, no padding');
      assert.equal(Buffer.from(c, 'base64url').length, 32);
    }

    const rs = signerOf({ ...BASE, dpop: { algorithm: 'RS256', keyEnv: 'REKEY_TEST_DPOP_RSA' } }).dpopPublicKey('rs256');
    assert.equal(rs.ok, true, rs.ok ? '' : rs.error);
    const rsJwk = JSON.parse(rs.ok && rs.value);
    assert.deepEqual(Object.keys(rsJwk).sort(), ['e', 'kty', 'n']);
    assert.deepEqual(rsJwk, publicJwkOf(rsa.publicKey));
    const n = Buffer.from(rsJwk.n, 'base64url');
    assert.equal(n.length, 256, 'the 2048-bit modulus, no leading zero byte');
    assert.notEqual(n[0], 0);
    assert.equal(rsJwk.e, 'AQAB');
    assert.doesNotMatch(rs.ok && rs.value, /"d"|"p"|"q"|"dp"|"dq"|"qi"/);

    // The same from an in-memory key.
    const mem = signerOf({ ...BASE, dpop: { algorithm: 'ES256', key: ec.privateKey } }).dpopPublicKey('es256');
    assert.deepEqual(JSON.parse(mem.ok && mem.value), esJwk);

    const missing = join(await tempDir(), 'absent.pem');
    const failures = [
      [signerOf(BASE).dpopPublicKey('es256'), NO_DPOP_KEY],
      [signerOf({ ...BASE, dpop: { algorithm: 'ES256', keyFile: missing } }).dpopPublicKey('es256'), /the DPoP key file .*absent\.pem cannot be read \(ENOENT\)/],
      [signerOf({ ...BASE, dpop: { algorithm: 'ES256', key: ec.privateKey } }).dpopPublicKey('rs256'), /the credential's DPoP key is for ES256, not RS256/],
      [signerOf({ ...BASE, dpop: { algorithm: 'ES256', keyEnv: 'REKEY_TEST_DPOP_RSA' } }).dpopPublicKey('es256'), /the DPoP key's environment variable REKEY_TEST_DPOP_RSA is a 2048-bit RSA key; ES256 needs/],
      [signerOf({ ...BASE, dpop: { algorithm: 'RS256', keyEnv: 'REKEY_TEST_DPOP_UNSET' } }).dpopPublicKey('rs256'), /the DPoP key's environment variable REKEY_TEST_DPOP_UNSET is not set/],
    ];
    for (const [result, expected] of failures) {
      assert.equal(result.ok, false);
      if (typeof expected === 'string') assert.equal(result.error, expected);
      else assert.match(result.error, expected);
      assertNoKey(result.error, 'the error');
    }
  } finally {
    delete process.env.REKEY_TEST_DPOP_RSA;
  }
});

test('dpop-sign: a good proof (token URL, API URL with ath and nonce, instance of a wildcard origin) is signed and verifies, ES256 as r||s and RS256', async () => {
  const now = Math.floor(Date.now() / 1000);
  const counter = countSignatures();
  try {
    for (const [alg, keys, pem] of [['ES256', ec, ecPem], ['RS256', rsa, rsaPem]]) {
      const wit = alg.toLowerCase();
      const settings = { ...BASE, dpop: { algorithm: alg, keyFile: await keyFile(pem) } };
      const jwk = publicJwkOf(keys.publicKey);
      const header = { typ: 'dpop+jwt', alg, jwk };
      const proofs = [
        { jti: randomBytes(16).toString('hex'), htm: 'POST', htu: BASE.tokenUrl, iat: now },
        { jti: randomBytes(16).toString('hex'), htm: 'POST', htu: BASE.tokenUrl, iat: now, nonce: 'eyJ7S_zG.eyJH0-Z' },
        { jti: randomBytes(16).toString('hex'), htm: 'GET', htu: 'https://api.example.com/v1/me', iat: now, ath: ath('tok'), nonce: 'n-1' },
        { jti: randomBytes(16).toString('hex'), htm: 'DELETE', htu: 'https://a.b.tenants.example.com/items/7', iat: now - 59, ath: ath('tok') },
      ];
      for (const claims of proofs) {
        const host = signerOf(settings);
        // As the component asks: the public key, then the signature.
        const pub = host.dpopPublicKey(wit);
        assert.deepEqual(JSON.parse(pub.ok && pub.value), jwk);
        const data = input(header, claims);
        const signed = host.dpopSign(wit, data);
        assert.equal(signed.ok, true, signed.ok ? '' : signed.error);
        const signature = signed.ok && signed.value;
        if (alg === 'ES256') {
          assert.equal(signature.length, 64, 'r || s, not DER');
          assert.ok(verify('sha256', data, { key: keys.publicKey, dsaEncoding: 'ieee-p1363' }, signature));
        } else {
          assert.equal(signature.length, 256);
          assert.ok(verify('sha256', data, keys.publicKey, signature));
        }
      }
      // The member order and spacing are the component's own.
      const spaced = input(`{ "jwk" : ${JSON.stringify(jwk, null, 1)}, "alg":"${alg}", "typ":"dpop+jwt" }`, JSON.stringify(proofs[0], null, 2));
      assert.equal(signerOf(settings).dpopSign(wit, spaced).ok, true);
    }
    assert.equal(counter.count, 10);
  } finally {
    counter.restore();
  }
});

test('dpop-sign: the check refuses a wrong typ, a foreign or private jwk, an htu outside the origins, a stale iat, an extra claim... naming it, before the key is read; nothing is signed', async () => {
  const now = Math.floor(Date.now() / 1000);
  const path = await keyFile(ecPem);
  const settings = { ...BASE, dpop: { algorithm: 'ES256', keyFile: path } };
  const jwk = publicJwkOf(ec.publicKey);
  const header = { typ: 'dpop+jwt', alg: 'ES256', jwk };
  const claims = { jti: randomBytes(16).toString('hex'), htm: 'GET', htu: 'https://api.example.com/v1/me', iat: now, ath: ath('tok') };
  const foreign = publicJwkOf(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
  const privateJwk = ec.privateKey.export({ format: 'jwk' });

  const counter = countSignatures();
  try {
    assert.equal(signerOf(settings).dpopSign('es256', input(header, claims)).ok, true, 'the good proof');
    const cases = [
      // The header.
      ['typ JWT', { ...header, typ: 'JWT' }, claims, /the header's typ is not "dpop\+jwt"/],
      ['typ missing', { alg: 'ES256', jwk }, claims, /the header's typ is not "dpop\+jwt"/],
      ['alg RS256 in the header', { ...header, alg: 'RS256' }, claims, /the header's alg is not ES256/],
      ['alg none', { ...header, alg: 'none' }, claims, /the header's alg is not ES256/],
      ['a foreign jwk', { ...header, jwk: foreign }, claims, /the header's jwk is not this credential's DPoP public key/],
      ['the private jwk', { ...header, jwk: privateJwk }, claims, /the header's jwk has the private member d/],
      ['a jwk with an extra member', { ...header, jwk: { ...jwk, kid: 'k1' } }, claims, /the header's jwk is not this credential's DPoP public key/],
      ['a jwk missing y', { ...header, jwk: { kty: 'EC', crv: 'P-256', x: jwk.x } }, claims, /the header's jwk is not this credential's DPoP public key/],
      ['jwk a string', { ...header, jwk: JSON.stringify(jwk) }, claims, /the header's jwk is not a JSON object/],
      ['jwk with a nested member', { ...header, jwk: { ...jwk, key_ops: ['sign'] } }, claims, /the header member jwk has a member that is not a string/],
      ['jwk missing', { typ: 'dpop+jwt', alg: 'ES256' }, claims, /the header's jwk is not a JSON object/],
      ['kid in the header', { ...header, kid: 'k1' }, claims, /the header member kid is not allowed \(only typ, alg and jwk\)/],
      ['jku in the header', { ...header, jku: 'https://evil.example.net/jwks' }, claims, /the header member jku is not allowed/],
      ['x5c in the header', { ...header, x5c: ['MIIB'] }, claims, /the header member x5c is not/],
      ['crit in the header', { ...header, crit: ['htm'] }, claims, /the header member crit is not/],
      ['a header member of its own', { ...header, 'x-exfil': 'abc' }, claims, /a header member named otherwise \(the name is not repeated\) is not allowed/],
      // The claims.
      ['htu another origin', header, { ...claims, htu: 'https://evil.example.net/v1/me' }, /the claim htu is neither the token URL nor a URL the access token may go to/],
      ['htu the bare wildcard domain', header, { ...claims, htu: 'https://tenants.example.com/x' }, /the claim htu is neither the token URL/],
      ['htu another port', header, { ...claims, htu: 'https://api.example.com:8443/v1/me' }, /the claim htu is neither the token URL/],
      ['htu plain http', header, { ...claims, htu: 'http://api.example.com/v1/me' }, /the claim htu is neither the token URL/],
      ['htu with a query', header, { ...claims, htu: 'https://api.example.com/v1/me?x=1' }, /the claim htu has a query or a fragment/],
      // WHATWG reads host api.example.com; Python's urllib (and a resource server built on it) evil.example.
      ['htu a backslash before @', header, { ...claims, htu: 'https://api.example.com\\@evil.example/v1/me' }, /the claim htu has an authority parsers read differently/],
      ['htu user information', header, { ...claims, htu: 'https://evil.example@api.example.com/v1/me' }, /the claim htu has an authority parsers read differently/],
      ['htu a percent in the host', header, { ...claims, htu: 'https://api.%65xample.com/v1/me' }, /the claim htu has an authority parsers read differently/],
      ['htu with a fragment', header, { ...claims, htu: 'https://api.example.com/v1/me#f' }, /the claim htu has a query or a fragment/],
      ['htu with user information', header, { ...claims, htu: 'https://u:p@api.example.com/v1/me' }, /the claim htu has an authority parsers read differently/],
      ['htu not http', header, { ...claims, htu: 'ftp://api.example.com/x' }, /the claim htu is not an http\(s\) URL/],
      ['htu not a URL', header, { ...claims, htu: 'not a url' }, /the claim htu is not an http\(s\) URL/],
      ['htu a number', header, { ...claims, htu: 7 }, /the claim htu is not a string/],
      ['htu missing', header, { ...claims, htu: undefined }, /the claim htu is not a string/],
      ['iat an hour ago', header, { ...claims, iat: now - 3600 }, /the claim iat is more than 60 s from this host's clock/],
      ['iat tomorrow', header, { ...claims, iat: now + 86400 }, /the claim iat is more than 60 s/],
      ['iat a string', header, { ...claims, iat: String(now) }, /the claim iat is not a whole number/],
      ['iat missing', header, { ...claims, iat: undefined }, /the claim iat is not a whole number/],
      ['exp, not a proof claim', header, { ...claims, exp: now + 60 }, /the claim exp is not allowed \(only jti, htm, htu, iat, nonce and ath\)/],
      ['iss, not a proof claim', header, { ...claims, iss: 'dpop-client' }, /the claim iss is not allowed/],
      ['a claim of its own', header, { ...claims, 'x-exfil': 'abc' }, /a claim named otherwise \(the name is not repeated\) is not allowed/],
      ['htm lower case', header, { ...claims, htm: 'get' }, /the claim htm is not an HTTP method/],
      ['htm empty', header, { ...claims, htm: '' }, /the claim htm is not an HTTP method/],
      ['htm with a space', header, { ...claims, htm: 'GET X' }, /the claim htm is not an HTTP method/],
      ['jti short', header, { ...claims, jti: 'abc' }, /the claim jti is not a string of 16 characters or more/],
      ['jti missing', header, { ...claims, jti: undefined }, /the claim jti is not a string/],
      ['nonce a number', header, { ...claims, nonce: 7 }, /the claim nonce is not a string/],
      ['ath short', header, { ...claims, ath: 'abc' }, /the claim ath is not 43 base64url characters/],
      ['ath padded', header, { ...claims, ath: `${ath('tok').slice(0, 42)}=` }, /the claim ath is not 43 base64url characters/],
      ['ath a number', header, { ...claims, ath: 7 }, /the claim ath is not 43 base64url characters/],
      ['claims twice', header, `{"jti":"${claims.jti}","htm":"GET","htu":"${claims.htu}","htu":"https://evil.example.net/","iat":${now}}`, /the claim htu appears twice/],
      ['a claim an object', header, { ...claims, nonce: { a: 'b' } }, /the claim nonce is not a string or a number/],
    ];
    for (const [what, h, c, expected] of cases) {
      const result = signerOf(settings).dpopSign('es256', input(h, c));
      assert.equal(result.ok, false, `${what}: signed`);
      assert.match(result.error, /^refused by the host's check of what it signs \(DPoP proof\): /, what);
      assert.match(result.error, expected, what);
      assert.ok(!result.error.includes('x-exfil') && !result.error.includes('evil'), `${what}: the refusal quotes the input`);
      assertNoKey(result.error, what);
    }
    const shapes = [
      ['not base64url', Buffer.from('a+b.c/d'), /ASCII base64url, one '\.'/],
      ['three parts', Buffer.from(`${b64(header)}.${b64(claims)}.sig`), /exactly one '\.'/],
      ['no dot', Buffer.from(b64(header)), /exactly one '\.'/],
      ['the claims a list', Buffer.from(`${b64(header)}.${b64([claims])}`), /the claims is not a JSON object/],
      ['padded', Buffer.from(`${b64(header)}==.${b64(claims)}`), /ASCII base64url/],
    ];
    for (const [what, data, expected] of shapes) {
      const result = signerOf(settings).dpopSign('es256', data);
      assert.equal(result.ok, false, what);
      assert.match(result.error, expected, what);
    }
    // The algorithm asked must be the configured one.
    const asked = signerOf(settings).dpopSign('rs256', input({ ...header, alg: 'RS256' }, claims));
    assert.match(asked.ok ? '' : asked.error, /alg: the component asked for RS256, the DPoP key is for ES256/);
    // An authorisation makes no API request: its proofs are for the token URL only.
    const authorize = signerOf(settings, { authorize: true });
    assert.match(authorize.dpopSign('es256', input(header, claims)).error ?? '', /the claim htu is not the token URL \(an authorisation makes no API request\)/);
    assert.equal(authorize.dpopSign('es256', input(header, { ...claims, htm: 'POST', htu: BASE.tokenUrl, ath: undefined })).ok, true);
    // No DPoP key configured: nothing is signed.
    assert.equal(signerOf(BASE).dpopSign('es256', input(header, claims)).error, NO_DPOP_KEY);
    assert.equal(counter.count, 2, 'only the good proofs were signed');

    // The check comes before the key is read: with the file gone, a bad proof is refused for what it is.
    const gone = { ...BASE, dpop: { algorithm: 'ES256', keyFile: join(await tempDir(), 'gone.pem') } };
    assert.match(signerOf(gone).dpopSign('es256', input({ ...header, typ: 'JWT' }, claims)).error, /typ is not "dpop\+jwt"/);
    assert.match(signerOf(gone).dpopSign('es256', input(header, claims)).error, /the DPoP key file .*gone\.pem cannot be read/);
  } finally {
    counter.restore();
  }
  // The pure functions, as other callers use them.
  assert.deepEqual(checkProof(input(header, claims), 'es256', { algorithm: 'es256', tokenUrl: BASE.tokenUrl, apiRefusal: () => undefined }, now).jwk,
    new Map(Object.entries(jwk)));
  assert.match(checkProof(input(header, claims), 'es256', { algorithm: 'es256', tokenUrl: BASE.tokenUrl, apiRefusal: () => undefined }, now + 61).refusal, /iat/);
  assert.match(checkProof(input(header, claims), 'es256', { algorithm: 'es256', tokenUrl: BASE.tokenUrl, apiRefusal: () => 'no' }, now).refusal, /htu/);
  assert.equal(jwkRefusal(new Map(Object.entries(jwk)), jwk), undefined);
});

// ---------------------------------------------------------------- end to end: oidc-provider with DPoP nonces

/** What a browser does with the URL `onUrl` was given: the listener's start URL answers 302 to the authorization URL. */
async function openStart(url) {
  const r = await fetch(url, { redirect: 'manual' });
  assert.equal(r.status, 302);
  return r.headers.get('location');
}

/** Every token request carried a proof; every token issued is DPoP-bound; no token error but the nonce challenges. */
function assertEveryTokenRequestHadAProof(stats, granted) {
  const nonce400 = stats.grant_errors.use_dpop_nonce ?? 0;
  assert.equal(stats.dpop_proofs, granted + nonce400, JSON.stringify(stats));
  assert.equal(stats.dpop_tokens, granted, `every access token is DPoP-bound: ${JSON.stringify(stats)}`);
  assert.deepEqual(Object.keys(stats.grant_errors).filter((code) => code !== 'use_dpop_nonce'), [], `no other token endpoint error: ${JSON.stringify(stats)}`);
  assert.equal(stats.grants_revoked, 0, JSON.stringify(stats));
}

const allStats = async (provider) => (await fetch(`${provider.issuer}/_stats`)).json();

test('dpop end to end: a public client authorised with DPoP (nonces required) calls /me over three expiries; without dpop the bound set is InvalidSettings, nothing sent; another key cannot refresh it', async (t) => {
  if (!oidcAvailable(t)) return;
  const id = 'dpop-public';
  const provider = await startOidcProvider([], {
    OIDC_DPOP_NONCE: '1',
    OIDC_CLIENTS: JSON.stringify([{
      client_id: id, token_endpoint_auth_method: 'none', application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'], grant_types: ['authorization_code', 'refresh_token'],
    }]),
  });
  try {
    const rk = await rekey();
    const store = await tempStore();
    const settings = provider.settings(id, 'basic', {
      clientSecret: undefined,
      clientAuth: undefined,
      issuerSendsIss: true,
      dpop: { algorithm: 'ES256', keyFile: await keyFile(ecPem) },
    });
    const events = [];
    const onEvent = (e) => events.push(JSON.stringify(e));
    const login = 'dpop-user';
    let browser;
    const keys = await rk.authorizeCode(id, {
      store,
      settings,
      onEvent,
      timeoutMs: 60_000,
      onUrl: (url) => { browser = openStart(url).then((real) => follow(['--url', real, '--login', login])); },
    });
    const page = await browser;
    assert.equal(page.status, 200, page.body);
    const first = JSON.parse(await store.loadKeys(id));
    assert.deepEqual(first, keys.expose());
    assert.equal(first.token_type.toLowerCase(), 'dpop', 'the code exchange carried a proof: a DPoP-bound set');
    let stats = await provider.stats(id);
    assert.equal(stats.code_exchanges, 1, JSON.stringify(stats));
    assert.equal(stats.auth_seen.none, 1, JSON.stringify(stats));
    assert.ok((stats.grant_errors.use_dpop_nonce ?? 0) >= 1, 'the exchange answered the server\'s nonce challenge');
    assertEveryTokenRequestHadAProof(stats, 1);
    // The column records the DPoP key's file (what an operator sees), never the key.
    const shown = await store.show(id);
    assert.deepEqual(shown.settings.dpop, { algorithm: 'ES256', key_file: settings.dpop.keyFile });

    // /me over three expiries: oidc-provider checks the proof, ath, the key binding and the nonce.
    let calls = 0;
    const refreshTokens = [first.refresh_token];
    await eventually(async () => {
      const res = await rk.send({ credential: id, store, settings, onEvent, request: { url: `${provider.issuer}/me` } });
      calls += 1;
      assert.equal(res.status, 200, res.text());
      assert.equal(res.json().sub, login);
      const current = JSON.parse(await store.loadKeys(id));
      if (current.refresh_token !== refreshTokens.at(-1)) refreshTokens.push(current.refresh_token);
      return (await provider.stats(id)).refreshes >= 3;
    }, { timeoutMs: 90_000, everyMs: 250, what: '3 refreshes' });

    stats = await provider.stats(id);
    const last = JSON.parse(await store.loadKeys(id));
    assert.equal(last.token_type.toLowerCase(), 'dpop');
    assert.equal(new Set(refreshTokens).size, refreshTokens.length, 'every refresh rotated the refresh token');
    assert.ok(refreshTokens.length >= 4, `${refreshTokens.length} refresh tokens`);
    assert.equal(stats.userinfo_ok, calls, JSON.stringify(stats));
    assert.equal(stats.code_exchanges, 1);
    assertEveryTokenRequestHadAProof(stats, 1 + stats.refreshes);
    assert.ok(stats.dpop_nonce_challenges >= 1, JSON.stringify(stats));
    // Nonce challenges at /me are answered, not refreshed for: each other 401 was an expiry, and refreshed.
    assert.equal(stats.userinfo_rejected, stats.refreshes, JSON.stringify(stats));
    assert.equal((await allStats(provider)).server_errors, 0);

    // The same DPoP-bound set with settings lacking dpop: InvalidSettings, nothing sent, nothing changed.
    const before = await allStats(provider);
    const plain = { ...settings, dpop: undefined };
    const refused = await rk.send({ credential: id, store, settings: plain, request: { url: `${provider.issuer}/me` } }).then(() => assert.fail('sent'), (e) => e);
    assert.ok(refused instanceof InvalidSettings, printed(refused));
    assert.match(refused.message, /DPoP/);
    assert.deepEqual(await allStats(provider), before, 'nothing was sent');
    assert.deepEqual(JSON.parse(await store.loadKeys(id)), last, 'nothing was changed');

    // The refresh token is bound to the key: a copy of the set with another DPoP key cannot refresh it.
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const forced = { ...settings, strategy: 'every-request', dpop: { algorithm: 'ES256', key: other } };
    const copy = new MemoryStore();
    await copy.create(id, { settings: { ...forced, dpop: { algorithm: 'ES256', keyFile: settings.dpop.keyFile } }, keys: JSON.stringify(last) });
    const stolen = await rk.send({ credential: id, store: copy, settings: forced, request: { url: `${provider.issuer}/me` } }).then(() => assert.fail('refreshed'), (e) => e);
    assert.ok(stolen instanceof ReauthorizationRequired, printed(stolen));
    const afterStolen = await provider.stats(id);
    assert.equal(afterStolen.grant_errors.invalid_grant, 1, JSON.stringify(afterStolen));
    assert.equal(afterStolen.refreshes, stats.refreshes);
    assert.equal(afterStolen.grants_revoked, 0);
    // ...while the key's own holder still can call.
    const res = await rk.send({ credential: id, store, settings, request: { url: `${provider.issuer}/me` } });
    assert.equal(res.status, 200);

    // No token and no key in any event or error.
    const texts = [...events, printed(refused), printed(stolen), inspect(keys), String(keys), JSON.stringify(keys)].join('\n');
    for (const secret of [first.access_token, first.refresh_token, ...refreshTokens, last.access_token]) {
      assert.ok(!texts.includes(secret), 'a token shows');
    }
    assertNoKey(texts, 'the events and errors');
  } finally {
    await provider.stop();
  }
});

test('dpop end to end: client credentials (confidential client, RS256 key from a variable) call the API as DPoP across expiries', async (t) => {
  if (!oidcAvailable(t)) return;
  const id = 'dpop-m2m';
  const secret = 'm2m-s3cret-value';
  const provider = await startOidcProvider([], {
    OIDC_DPOP_NONCE: '1',
    OIDC_CLIENTS: JSON.stringify([{ client_id: id, client_secret: secret, token_endpoint_auth_method: 'client_secret_basic', grant_types: ['client_credentials'] }]),
  });
  process.env.REKEY_TEST_DPOP_M2M = rsaPem;
  try {
    const rk = await rekey();
    const settings = {
      grant: 'client-credentials',
      tokenUrl: `${provider.issuer}/token`,
      clientId: id,
      clientSecret: secret,
      apiOrigins: [new URL(provider.issuer).origin],
      dpop: { algorithm: 'RS256', keyEnv: 'REKEY_TEST_DPOP_M2M' },
    };
    const store = new MemoryStore();
    await store.create('m2m', { settings }); // nothing stored first: send fetches the token
    assert.deepEqual((await store.show('m2m')).settings.dpop, { algorithm: 'RS256', key_env: 'REKEY_TEST_DPOP_M2M' });
    let calls = 0;
    await eventually(async () => {
      const res = await rk.send({ credential: 'm2m', store, settings, request: { url: `${provider.issuer}/_api/whoami` } });
      calls += 1;
      assert.equal(res.status, 200, res.text());
      assert.deepEqual(res.json(), { client_id: id, scope: null, token_type: 'DPoP' });
      return ((await provider.stats(id))?.client_credentials ?? 0) >= 3;
    }, { timeoutMs: 60_000, everyMs: 250, what: '3 client-credentials grants' });
    const stats = await provider.stats(id);
    assert.equal(JSON.parse(await store.loadKeys('m2m')).token_type.toLowerCase(), 'dpop');
    assert.equal(stats.api_ok, calls, JSON.stringify(stats));
    // The first token was fetched because none was stored; each later one after an expiry's 401.
    assert.equal(stats.api_rejected, stats.client_credentials - 1, JSON.stringify(stats));
    assert.equal(stats.auth_seen.basic, stats.client_credentials, JSON.stringify(stats));
    assertEveryTokenRequestHadAProof(stats, stats.client_credentials);
    assert.ok(stats.dpop_nonce_challenges >= 1, JSON.stringify(stats));
    assert.equal((await allStats(provider)).server_errors, 0);
  } finally {
    delete process.env.REKEY_TEST_DPOP_M2M;
    await provider.stop();
  }
});
