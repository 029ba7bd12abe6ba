// Signed assertions (RFC 7523, contract 0.4.0): the component builds each
// JWT and imports `signer.sign`; this host signs with the credential's
// private key, which never enters the sandbox.
//
// `settings.signing` names the algorithm and the key: `keyFile` (a PEM file),
// `keyEnv` (an environment variable holding the PEM) or `key` (a private
// crypto.KeyObject, in memory, for settings passed with each call). A file or
// variable is read at each call, so a rotated key is used at once. Accepted:
// unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE
// KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`); RS256 needs RSA of 2048 bits or
// more, ES256 a P-256 key. Errors name the file or variable, never the key.
// A store's settings column keeps the file or variable (`key_file`,
// `key_env`), never a key: an in-memory key cannot be stored.

import { KeyObject, createPrivateKey, sign as cryptoSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
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
  const given = ['key', 'keyFile', 'keyEnv'].filter((name) => s[name] !== undefined && s[name] !== null);
  if (given.length === 0) {
    throw new InvalidSettings('signing needs its private key: signing.keyFile (a PEM file), signing.keyEnv (an environment variable holding the PEM) or signing.key (a crypto.KeyObject)');
  }
  if (given.length > 1) throw new InvalidSettings(`signing takes one of keyFile, keyEnv and key, not ${given.join(' and ')}`);
  /** @type {{key: KeyObject} | {keyFile: string} | {keyEnv: string}} */
  let source;
  if (given[0] === 'key') {
    const key = s.key;
    // Not described: a string here may be the PEM itself.
    if (!(key instanceof KeyObject) || key.type !== 'private') {
      throw new InvalidSettings('signing.key must be a private crypto.KeyObject (crypto.createPrivateKey(pem)); for PEM text use signing.keyEnv or signing.keyFile');
    }
    source = { key };
  } else {
    const name = given[0];
    const v = s[name];
    if (typeof v !== 'string' || v === '') {
      throw new InvalidSettings(name === 'keyFile' ? 'signing.keyFile must be the path of a PEM file' : 'signing.keyEnv must be the name of an environment variable holding the PEM');
    }
    source = name === 'keyFile' ? { keyFile: v } : { keyEnv: v };
  }
  return { algorithm, keyId, audience, source };
}

/** 'rs256' or 'es256' from 'RS256', 'ES256' (any case). */
export function algorithmOf(value) {
  const name = typeof value === 'string' ? value.trim().toLowerCase() : undefined;
  if (name === undefined || !Object.hasOwn(ALGORITHMS, name)) {
    throw new InvalidSettings(`signing.algorithm ${JSON.stringify(String(value))} is unknown: use 'RS256' or 'ES256'`);
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
 * read at each call) and checked against the algorithm.
 * @param {{algorithm: 'rs256'|'es256', source: {key: KeyObject} | {keyFile: string} | {keyEnv: string}}} s
 */
export function loadSigningKey({ algorithm, source }) {
  let key;
  let where;
  if ('key' in source) {
    where = 'signing.key';
    key = source.key;
  } else if ('keyFile' in source) {
    where = `the signing key file ${source.keyFile}`;
    let bytes;
    try {
      bytes = readFileSync(source.keyFile);
    } catch (err) {
      throw new InvalidSettings(`${where} cannot be read (${err?.code ?? err?.name ?? 'error'})`);
    }
    key = keyFromPem(bytes, where);
  } else {
    where = `the signing key's environment variable ${source.keyEnv}`;
    const text = process.env[source.keyEnv];
    if (text === undefined || text === '') throw new InvalidSettings(`${where} is not set`);
    key = keyFromPem(Buffer.from(text, 'utf8'), where);
  }
  const wrong = mismatch(key, algorithm);
  if (wrong) throw new InvalidSettings(`${where} ${wrong}`);
  return new SigningKey(key, algorithm, where);
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
