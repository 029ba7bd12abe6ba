// Signed assertions (RFC 7523, contract 0.4.0; DPoP keys, 0.5.0, in dpop.js): the component builds each
// JWT and imports `signer.sign`; this host signs with the credential's
// private key, which never enters the sandbox.
//
// `settings.signing` names the algorithm and the key: `keyFile` (a PEM file),
// `keyEnv` (an environment variable holding the PEM) or `key` (a private
// crypto.KeyObject, in memory, for settings passed with each call). A file or
// variable is read only when the component asks for a signature (a call
// whose stored token is still valid reads no key), at each signature, so a
// rotated key (replaced by an atomic rename) is used at once. Accepted:
// unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE
// KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`); RS256 needs RSA of 2048 bits or
// more, ES256 a P-256 key. Errors name the file or variable, never the key.
// A store's settings column keeps the file or variable (`key_file`,
// `key_env`), never a key: an in-memory key cannot be stored.
//
// Before signing, the host checks what it is asked to sign (checkAssertion):
// the sandbox's boundary signs only the assertion these settings describe.

import { KeyObject, createPrivateKey, createPublicKey, sign as cryptoSign } from 'node:crypto';
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync } from 'node:fs';
import { resolve } from 'node:path';
import { inspect } from 'node:util';
import { InvalidSettings } from './errors.js';

/** The WIT `signing-algorithm` by the JOSE name (RFC 7518), read in any case. */
const ALGORITHMS = { rs256: 'RS256', es256: 'ES256' };
const FIELDS = ['algorithm', 'keyId', 'audience', 'key', 'keyFile', 'keyEnv'];
/** Snake-case names (the settings column's) a caller may pass by mistake. */
const CAMEL = { key_id: 'keyId', key_file: 'keyFile', key_env: 'keyEnv' };
const LABELS = { 'PRIVATE KEY': 'PKCS#8', 'RSA PRIVATE KEY': 'PKCS#1 RSA', 'EC PRIVATE KEY': 'SEC1 EC' };
const EXPECTED = 'expected an unencrypted PEM private key: BEGIN PRIVATE KEY (PKCS#8), BEGIN RSA PRIVATE KEY (PKCS#1) or BEGIN EC PRIVATE KEY (SEC1)';
/** Far above any RSA or EC private key in PEM; a bigger file is something else. */
const MAX_KEY_BYTES = 64 * 1024;

/**
 * `settings.signing` read and checked, without its key: `{algorithm (WIT),
 * keyId, audience, source}`; undefined when absent.
 * @param {unknown} value
 */
export function signingOf(value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidSettings("signing must be an object: { algorithm: 'RS256' | 'ES256', keyFile | keyEnv | key, keyId?, audience? }");
  }
  const s = /** @type {Record<string, unknown>} */ (value);
  for (const name of Object.keys(s)) {
    if (FIELDS.includes(name)) continue;
    const hint = Object.hasOwn(CAMEL, name) ? ` (spelled ${CAMEL[name]} here)` : '';
    throw new InvalidSettings(`signing.${name} is unknown${hint}: use ${FIELDS.join(', ')}`);
  }
  const algorithm = algorithmOf(s.algorithm);
  const optional = (name) => {
    const v = s[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' || v === '') throw new InvalidSettings(`signing.${name} must be a non-empty string (or left out)`);
    return v;
  };
  const keyId = optional('keyId');
  const audience = optional('audience');
  const source = keySourceOf(s, 'signing');
  return { algorithm, keyId, audience, source };
}

/**
 * Where the private key of `settings.signing` or `settings.dpop` (`field`)
 * is: exactly one of `key` (a private KeyObject), `keyFile`, `keyEnv`.
 * @param {Record<string, unknown>} s
 * @param {'signing' | 'dpop'} field
 * @returns {{key: KeyObject} | {keyFile: string} | {keyEnv: string}}
 */
export function keySourceOf(s, field) {
  const given = ['key', 'keyFile', 'keyEnv'].filter((name) => s[name] !== undefined && s[name] !== null);
  if (given.length === 0) {
    throw new InvalidSettings(`${field} needs its private key: ${field}.keyFile (a PEM file), ${field}.keyEnv (an environment variable holding the PEM) or ${field}.key (a crypto.KeyObject)`);
  }
  if (given.length > 1) throw new InvalidSettings(`${field} takes one of keyFile, keyEnv and key, not ${given.join(' and ')}`);
  if (given[0] === 'key') {
    const key = s.key;
    // Not described: a string here may be the PEM itself.
    if (!(key instanceof KeyObject) || key.type !== 'private') {
      throw new InvalidSettings(`${field}.key must be a private crypto.KeyObject (crypto.createPrivateKey(pem)); for PEM text use ${field}.keyEnv or ${field}.keyFile`);
    }
    return { key };
  }
  const name = given[0];
  const v = s[name];
  if (typeof v !== 'string' || v === '') {
    throw new InvalidSettings(name === 'keyFile' ? `${field}.keyFile must be the path of a PEM file` : `${field}.keyEnv must be the name of an environment variable holding the PEM`);
  }
  return name === 'keyFile' ? { keyFile: v } : { keyEnv: v };
}

/** 'rs256' or 'es256' from 'RS256', 'ES256' (any case). */
export function algorithmOf(value, field = 'signing') {
  const name = typeof value === 'string' ? value.trim().toLowerCase() : undefined;
  if (name === undefined || !Object.hasOwn(ALGORITHMS, name)) {
    throw new InvalidSettings(`${field}.algorithm ${JSON.stringify(String(value))} is unknown: use 'RS256' or 'ES256'`);
  }
  return /** @type {'rs256'|'es256'} */ (name);
}

/**
 * What a store's settings column keeps of `signing` (snake_case, as the Rust
 * and Python hosts write it): the algorithm, key id, audience and where the
 * key is; never the key. An in-memory key is refused.
 * @param {unknown} value
 */
export function storedSigning(value) {
  const s = signingOf(value);
  if (s === undefined) return undefined;
  if ('key' in s.source) {
    throw new InvalidSettings('a stored credential names its signing key with signing.keyFile or signing.keyEnv (the store never holds a private key); '
      + 'signing.key (a KeyObject) is for settings passed with each call without a store (keys and onUpdateKeys)');
  }
  return {
    algorithm: ALGORITHMS[s.algorithm],
    ...(s.keyId === undefined ? {} : { key_id: s.keyId }),
    ...(s.audience === undefined ? {} : { audience: s.audience }),
    // Absolute: the workers sharing the store need not share this working directory.
    ...('keyFile' in s.source ? { key_file: resolve(s.source.keyFile) } : { key_env: s.source.keyEnv }),
  };
}

/**
 * The key of checked signing settings, loaded now (a file or variable is
 * read at each call) and checked against the algorithm. `field` names the
 * settings in messages: 'signing' or 'dpop' (the DPoP key, dpop.js).
 * @param {{algorithm: 'rs256'|'es256', source: {key: KeyObject} | {keyFile: string} | {keyEnv: string}}} s
 * @param {'signing' | 'dpop'} [field]
 */
export function loadSigningKey({ algorithm, source }, field = 'signing') {
  const noun = field === 'dpop' ? 'DPoP key' : 'signing key';
  let key;
  let where;
  if ('key' in source) {
    where = `${field}.key`;
    key = source.key;
  } else if ('keyFile' in source) {
    where = `the ${noun} file ${source.keyFile}`;
    key = keyFromPem(readKeyFile(source.keyFile, where), where);
  } else {
    where = `the ${noun}'s environment variable ${source.keyEnv}`;
    // Own variables only: 'constructor' or '__proto__' is not set, not Object's.
    const text = Object.hasOwn(process.env, source.keyEnv) ? process.env[source.keyEnv] : undefined;
    if (typeof text !== 'string' || text === '') throw new InvalidSettings(`${where} is not set`);
    key = keyFromPem(Buffer.from(text, 'utf8'), where);
  }
  const wrong = mismatch(key, algorithm);
  if (wrong) throw new InvalidSettings(`${where} ${wrong}`);
  return new SigningKey(key, algorithm, where);
}

/**
 * The bytes of a key file, at most MAX_KEY_BYTES + 1 of them: opened without
 * blocking (a FIFO with no writer must not hang the call), a regular file
 * only (not /dev/zero, a FIFO, a socket or a directory), symbolic links
 * followed (Kubernetes mounts secrets as links). InvalidSettings naming the
 * path, never the content.
 * @param {string} path
 * @param {string} where
 */
function readKeyFile(path, where) {
  let fd;
  try {
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    throw new InvalidSettings(`${where} cannot be read (${err?.code ?? err?.name ?? 'error'})`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new InvalidSettings(`${where} is not a regular file (${fileKind(stat)}); ${EXPECTED}`);
    if (stat.size > MAX_KEY_BYTES) throw new InvalidSettings(`${where} is larger than ${MAX_KEY_BYTES / 1024} KiB: not a private key; ${EXPECTED}`);
    // One byte more than allowed: a file that grew since fstat is still caught.
    const buffer = Buffer.alloc(MAX_KEY_BYTES + 1);
    let length = 0;
    for (;;) {
      let n;
      try {
        n = readSync(fd, buffer, length, buffer.length - length, null);
      } catch (err) {
        throw new InvalidSettings(`${where} cannot be read (${err?.code ?? err?.name ?? 'error'})`);
      }
      if (n === 0) break;
      length += n;
      if (length === buffer.length) break;
    }
    return buffer.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}

/** What a file that is not a regular file is, for a message. */
function fileKind(stat) {
  if (stat.isDirectory()) return 'a directory';
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isSocket()) return 'a socket';
  return 'not a file';
}

/** A private key from PEM text, or InvalidSettings naming `where` (never the text). */
function keyFromPem(bytes, where) {
  if (bytes.length > MAX_KEY_BYTES) throw new InvalidSettings(`${where} is larger than ${MAX_KEY_BYTES / 1024} KiB: not a private key; ${EXPECTED}`);
  const text = bytes.toString('latin1');
  const labels = [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----/g)].map((m) => m[1]);
  if (labels.includes('ENCRYPTED PRIVATE KEY')) throw new InvalidSettings(`${where} is encrypted; ${EXPECTED} (protect the file instead)`);
  const keys = labels.filter((label) => Object.hasOwn(LABELS, label));
  if (keys.length === 0) {
    const what = labels.length === 0 ? 'is not PEM' : `holds ${labels.map((l) => `a ${l}`).join(', ')}, no private key`;
    throw new InvalidSettings(`${where} ${what}; ${EXPECTED}`);
  }
  if (keys.length > 1) throw new InvalidSettings(`${where} holds ${keys.length} private keys; ${EXPECTED}, one of them`);
  const label = keys[0];
  const begin = text.indexOf(`-----BEGIN ${label}-----`);
  const endLine = `-----END ${label}-----`;
  const end = text.indexOf(endLine, begin);
  if (end < 0) throw new InvalidSettings(`${where} has no '${endLine}' line; ${EXPECTED}`);
  const block = text.slice(begin, end + endLine.length);
  // The legacy OpenSSL encryption of PKCS#1 and SEC1 keys.
  if (/^Proc-Type:\s*4,\s*ENCRYPTED/m.test(block) || /^DEK-Info:/m.test(block)) {
    throw new InvalidSettings(`${where} is encrypted; ${EXPECTED} (protect the file instead)`);
  }
  try {
    return createPrivateKey({ key: block, format: 'pem' });
  } catch (err) {
    // The code only: OpenSSL's text is not ours to vouch for.
    throw new InvalidSettings(`${where} is not a valid ${LABELS[label]} private key (${err?.code ?? 'unreadable'}); ${EXPECTED}`);
  }
}

/** Why `key` cannot sign `algorithm`, or undefined. */
function mismatch(key, algorithm) {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (algorithm === 'rs256') {
    if (type === 'rsa' && (details.modulusLength ?? 0) >= 2048) return undefined;
    return `is ${kindOf(key)}; RS256 needs an RSA key of 2048 bits or more`;
  }
  if (type === 'ec' && details.namedCurve === 'prime256v1') return undefined;
  return `is ${kindOf(key)}; ES256 needs an EC key on P-256 (prime256v1)`;
}

const CURVES = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521', secp256k1: 'secp256k1' };

/** "a 1024-bit RSA key", "an EC P-384 key", "an ed25519 key": no key material. */
function kindOf(key) {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (type === 'rsa' || type === 'rsa-pss') return `a ${details.modulusLength}-bit ${type === 'rsa' ? 'RSA' : 'RSA-PSS'} key`;
  if (type === 'ec') return `an EC ${CURVES[details.namedCurve] ?? details.namedCurve} key`;
  return `${/^[aeiou]/.test(type ?? '') ? 'an' : 'a'} ${type ?? 'unknown'} key`;
}

/**
 * A credential's private key for one call. Its printed forms name the
 * algorithm and where the key came from, never the key.
 */
export class SigningKey {
  #key;

  /**
   * @param {KeyObject} key
   * @param {'rs256'|'es256'} algorithm
   * @param {string} where
   */
  constructor(key, algorithm, where) {
    this.#key = key;
    this.algorithm = algorithm;
    this.where = where;
    Object.freeze(this);
  }

  /**
   * The WIT `signer.sign`: the JWS signature of `input`; ES256 as the 64
   * bytes `r || s` (RFC 7518 §3.4), not DER. Never throws: resolves to the
   * import's result, its error naming no key material.
   * @param {string} algorithm  the WIT `signing-algorithm` ('rs256' | 'es256')
   * @param {Uint8Array} input
   * @returns {{ok: true, value: Uint8Array} | {ok: false, error: string}}
   */
  sign(algorithm, input) {
    if (algorithm !== this.algorithm) {
      const name = ALGORITHMS[algorithm] ?? String(algorithm);
      return { ok: false, error: `the credential's key (${this.where}) is for ${ALGORITHMS[this.algorithm]}, not ${name}` };
    }
    try {
      const options = algorithm === 'es256' ? { key: this.#key, dsaEncoding: /** @type {const} */ ('ieee-p1363') } : this.#key;
      const signature = cryptoSign('sha256', input, options);
      return { ok: true, value: new Uint8Array(signature.buffer, signature.byteOffset, signature.byteLength) };
    } catch (err) {
      return { ok: false, error: `signing with ${this.where} failed (${err?.code ?? err?.name ?? 'error'})` };
    }
  }

  /**
   * The public half as a JWK (RFC 7517, 7518 §6) with only its public
   * members: `{kty: 'EC', crv: 'P-256', x, y}` or `{kty: 'RSA', n, e}`,
   * base64url without padding (node:crypto's JWK export).
   * @returns {Record<string, string>}
   */
  publicJwk() {
    const jwk = createPublicKey(this.#key).export({ format: 'jwk' });
    const members = jwk.kty === 'EC' ? ['kty', 'crv', 'x', 'y'] : ['kty', 'n', 'e'];
    return Object.fromEntries(members.map((name) => [name, String(jwk[name])]));
  }

  toString() {
    return `SigningKey(${ALGORITHMS[this.algorithm]}, ${this.where}: [redacted])`;
  }

  toJSON() {
    return '[redacted]';
  }

  [inspect.custom]() {
    return this.toString();
  }
}

/** The `signer` of a call without a key: every signature refused, the reason said. */
export const NO_KEY = 'no signing key is configured for this credential (settings.signing)';

// The host's second-line check of what it signs (every host applies the same
// rule). The component builds each assertion; a compromised or swapped one
// could ask for any bytes (an `exp` far off, another `aud`), so the host, the
// sandbox's boundary, signs only `header.claims` as these settings describe
// it. A refusal names the member that failed, never the input or the key;
// the component reports it as invalid settings and sends nothing.

/** An assertion's lifetime at most (the component makes it 300 s). */
const MAX_LIFETIME_SECS = 300;
/** How far `iat` may be from this host's clock. */
const MAX_SKEW_SECS = 60;
/** A `jti` is at least this long (the component's: 32 hex digits). */
const MIN_JTI_CHARS = 16;
const HEADER_MEMBERS = ['alg', 'typ', 'kid'];
const COMPONENT_CLAIMS = ['iss', 'sub', 'aud', 'iat', 'exp', 'jti'];
/**
 * Member names a refusal may quote: the registered JOSE header parameters
 * and JWT claims (RFC 7515 §4.1, 7516, 7519 §4.1 and the IANA registries'
 * usual ones). Any other name is the component's text and is not repeated.
 */
export const NAMEABLE = new Set([
  'alg', 'typ', 'kid', 'cty', 'jku', 'jwk', 'x5u', 'x5c', 'x5t', 'x5t#S256', 'crit', 'b64', 'zip', 'enc', 'epk',
  'apu', 'apv', 'iv', 'tag', 'p2s', 'p2c', 'url', 'nonce', 'ppt', 'svt',
  'iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'scope', 'client_id', 'azp', 'cnf', 'act', 'may_act', 'nonce',
]);

/**
 * What the host's check expects of an assertion, from the WIT settings the
 * component was given.
 * @typedef {object} AssertionRules
 * @property {'rs256'|'es256'} algorithm  the settings' signing algorithm
 * @property {string} [keyId]  the settings' key id: the header's `kid` (absent when unset)
 * @property {string} clientId  `iss`, and `sub` of a client assertion
 * @property {string} [subject]  the jwt-bearer grant's `sub`
 * @property {[string, string][]} claims  the jwt-bearer grant's further claims
 * @property {string} audience  `aud`: the settings' audience, else the token URL
 */

/**
 * Why `input` must not be signed for `algorithm` under `rules`, or undefined
 * when it is the assertion they describe: ASCII `header.claims`, each part
 * base64url (unpadded) of a JSON object; the header exactly `alg` (the
 * algorithm asked and configured), `typ` "JWT" and `kid` (the configured key
 * id, absent when none); the claims `iss` the client id, `sub` the client id
 * or the jwt-bearer subject, `aud` the expected audience, integer `iat` and
 * `exp` with 0 < exp - iat <= 300 and iat within 60 s of this host's clock, a
 * `jti` of 16 characters or more, and no other claim but the configured
 * ones, with their values. Names the member that failed; never quotes the
 * input.
 * @param {Uint8Array} input
 * @param {string} algorithm  the WIT `signing-algorithm` asked for
 * @param {AssertionRules} rules
 * @param {number} [now]  this host's clock, seconds since the epoch
 * @returns {string | undefined}
 */
export function checkAssertion(input, algorithm, rules, now = Date.now() / 1000) {
  const refused = (what) => `refused by the host's check of what it signs: ${what}`;
  const [parts, partsError] = partsOf(input);
  if (partsError) return refused(partsError);
  const [header, headerError] = jsonObjectOf(parts[0], 'header');
  if (headerError) return refused(headerError);
  const [claims, claimsError] = jsonObjectOf(parts[1], 'claims');
  if (claimsError) return refused(claimsError);

  // The header.
  for (const name of header.keys()) {
    if (!HEADER_MEMBERS.includes(name)) return refused(`${memberOf(name, 'header member')} is not allowed (only alg, typ and kid)`);
  }
  const asked = ALGORITHMS[algorithm];
  const configured = ALGORITHMS[rules.algorithm];
  if (asked === undefined || asked !== configured) {
    return refused(`alg: the component asked for ${asked ?? 'an unknown algorithm'}, the credential signs with ${configured}`);
  }
  if (!isString(header.get('alg'), configured)) return refused(`the header's alg is not ${configured}`);
  if (!isString(header.get('typ'), 'JWT')) return refused('the header\'s typ is not "JWT"');
  if (rules.keyId === undefined) {
    if (header.has('kid')) return refused('the header has a kid, and no key id (signing.keyId) is configured');
  } else if (!isString(header.get('kid'), rules.keyId)) {
    return refused('the header\'s kid is not the configured key id (signing.keyId)');
  }

  // The claims.
  if (!isString(claims.get('iss'), rules.clientId)) return refused('the claim iss is not the client id');
  const sub = claims.get('sub');
  if (!isString(sub, rules.clientId) && !(rules.subject !== undefined && isString(sub, rules.subject))) {
    return refused(rules.subject === undefined ? 'the claim sub is not the client id' : 'the claim sub is neither the client id nor the configured subject');
  }
  if (!isString(claims.get('aud'), rules.audience)) {
    return refused('the claim aud is not the expected audience (signing.audience, else the issuer, else the token URL)');
  }
  const iat = integerOf(claims.get('iat'));
  if (iat === undefined) return refused('the claim iat is not a whole number of seconds');
  const exp = integerOf(claims.get('exp'));
  if (exp === undefined) return refused('the claim exp is not a whole number of seconds');
  if (!(exp - iat > 0 && exp - iat <= MAX_LIFETIME_SECS)) return refused(`the claim exp is not within ${MAX_LIFETIME_SECS} s after iat`);
  if (!(Math.abs(iat - now) <= MAX_SKEW_SECS)) return refused(`the claim iat is more than ${MAX_SKEW_SECS} s from this host's clock`);
  const jti = claims.get('jti');
  if (jti?.kind !== 'string' || [...String(jti.value)].length < MIN_JTI_CHARS) return refused(`the claim jti is not a string of ${MIN_JTI_CHARS} characters or more`);
  const configuredClaims = new Map(rules.claims);
  for (const [name, value] of claims) {
    if (COMPONENT_CLAIMS.includes(name)) continue;
    if (!configuredClaims.has(name)) return refused(`${memberOf(name, 'claim')} is not configured (only the jwt-bearer claims are added)`);
    if (!isString(value, configuredClaims.get(name))) return refused(`the claim ${name} is not its configured value`);
  }
  return undefined;
}

/**
 * The two parts of a JWT's signing input `header.claims` (ASCII base64url,
 * exactly one '.'), or why it is not one.
 * @param {unknown} input
 * @returns {[[Uint8Array, Uint8Array], undefined] | [undefined, string]}
 */
export function partsOf(input) {
  if (!(input instanceof Uint8Array)) return [undefined, 'the input is not bytes'];
  const parts = [];
  let start = 0;
  for (let i = 0; i <= input.length; i += 1) {
    const b = i === input.length ? 0x2e : input[i];
    if (b === 0x2e) {
      parts.push(input.subarray(start, i));
      start = i + 1;
    } else if (!isBase64url(b)) {
      return [undefined, "the input is not a JWT's header.claims (ASCII base64url, one '.')"];
    }
  }
  if (parts.length !== 2) return [undefined, "the input is not a JWT's header.claims: it needs exactly one '.'"];
  return [[parts[0], parts[1]], undefined];
}

/** base64url's alphabet (RFC 4648 §5). */
function isBase64url(b) {
  return (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x5f;
}

/**
 * A JWT part's JSON object as a Map of its members (each `{kind: 'string' |
 * 'integer' | 'other', value}`), or the reason it is not one: unpadded
 * base64url, UTF-8, one flat JSON object, no member twice (a server's parser
 * may take another of two `aud`s than this check). A member named in
 * `objects` may be a flat object of strings (a DPoP proof's `jwk`):
 * `{kind: 'object', value: Map<string, string>}`.
 * @param {Uint8Array} part
 * @param {'header' | 'claims'} what
 * @param {string[]} [objects]
 * @param {Set<string>} [nameable]  the member names a refusal may quote
 * @returns {[Map<string, {kind: string, value?: any}>, undefined] | [undefined, string]}
 */
export function jsonObjectOf(part, what, objects = [], nameable = NAMEABLE) {
  const notObject = `the ${what} is not a JSON object in base64url without padding`;
  if (part.length === 0 || part.length % 4 === 1) return [undefined, notObject];
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(Buffer.from(part).toString('latin1'), 'base64url'));
  } catch {
    return [undefined, notObject];
  }
  const members = new Map();
  const token = /[ \t\n\r]*(?:("(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)|(true|false|null)|([{}:,[\]]))/y;
  const next = () => {
    const m = token.exec(text);
    if (!m) return undefined;
    if (m[1] !== undefined) return { type: 'string', raw: m[1] };
    if (m[2] !== undefined) return { type: 'number', raw: m[2] };
    if (m[3] !== undefined) return { type: 'literal', raw: m[3] };
    return { type: m[4] };
  };
  if (next()?.type !== '{') return [undefined, notObject];
  let t = next();
  if (t?.type !== '}') {
    for (;;) {
      if (t?.type !== 'string') return [undefined, notObject];
      const name = JSON.parse(t.raw);
      if (next()?.type !== ':') return [undefined, notObject];
      const v = next();
      let value;
      if (v?.type === 'string') value = { kind: 'string', value: JSON.parse(v.raw) };
      else if (v?.type === 'number') value = /^-?(?:0|[1-9][0-9]*)$/.test(v.raw) ? { kind: 'integer', value: Number(v.raw) } : { kind: 'other' };
      else if (v?.type === 'literal') value = { kind: 'other' };
      else if (v?.type === '{' && objects.includes(name)) {
        // A flat object of string members, none twice.
        const inner = new Map();
        let u = next();
        if (u?.type !== '}') {
          for (;;) {
            if (u?.type !== 'string') return [undefined, notObject];
            const key = JSON.parse(u.raw);
            if (next()?.type !== ':') return [undefined, notObject];
            const w = next();
            if (w?.type !== 'string') {
              if (w?.type === 'number' || w?.type === 'literal' || w?.type === '{' || w?.type === '[') {
                return [undefined, `${memberOf(name, what === 'header' ? 'header member' : 'claim', nameable)} has a member that is not a string`];
              }
              return [undefined, notObject];
            }
            if (inner.has(key)) return [undefined, `${memberOf(name, what === 'header' ? 'header member' : 'claim', nameable)} has a member twice`];
            inner.set(key, JSON.parse(w.raw));
            u = next();
            if (u?.type === '}') break;
            if (u?.type !== ',') return [undefined, notObject];
            u = next();
          }
        }
        value = { kind: 'object', value: inner };
      }
      // A nested object or array: no member of an assertion is one.
      else if (v?.type === '{' || v?.type === '[') return [undefined, `${memberOf(name, what === 'header' ? 'header member' : 'claim', nameable)} is not a string or a number`];
      else return [undefined, notObject];
      if (members.has(name)) return [undefined, `${memberOf(name, what === 'header' ? 'header member' : 'claim', nameable)} appears twice`];
      members.set(name, value);
      t = next();
      if (t?.type === '}') break;
      if (t?.type !== ',') return [undefined, notObject];
      t = next();
    }
  }
  if (!/^[ \t\n\r]*$/.test(text.slice(token.lastIndex))) return [undefined, notObject];
  return [members, undefined];
}

/** A member as a refusal says it: by a registered name; another name is the component's text, not repeated. */
export function memberOf(name, what, nameable = NAMEABLE) {
  return nameable.has(name) ? `the ${what} ${name}` : `a ${what} named otherwise (the name is not repeated)`;
}

export function isString(member, expected) {
  return member?.kind === 'string' && member.value === expected;
}

export function integerOf(member) {
  return member?.kind === 'integer' && Number.isSafeInteger(member.value) ? member.value : undefined;
}
