// DPoP (RFC 9449, contract 0.5.0): with `settings.dpop` the component sends a
// proof (a JWT whose header carries the DPoP key's public JWK) with every
// token request, so the server binds the tokens it issues to that key, and
// with every API request that presents a DPoP-bound token (`ath`). It builds
// each proof and imports `signer.dpop-public-key` and `signer.dpop-sign`;
// this host holds the key and signs.
//
// `settings.dpop` names the key's algorithm and where the key is, as
// `settings.signing` does (signing.js): `keyFile` (a PEM file), `keyEnv` (an
// environment variable holding the PEM) or `key` (a private KeyObject, for
// settings passed with each call). The DPoP key is its own setting: it may be
// the signing key's file or another. A store's settings column records
// `{"algorithm", "key_file" | "key_env"}`, never a key.
//
// Before signing, the host checks what it is asked to sign (checkProof, the
// same rule in every host): only a DPoP proof with this key's public JWK, for
// the token URL or for a URL the access token may go to (the host's own
// check at `http-send`), dated now, and nothing else. A refusal names the
// member that failed, never the input or the key.

import { resolve } from 'node:path';
import { InvalidSettings } from './errors.js';
import { NAMEABLE, algorithmOf, integerOf, isString, jsonObjectOf, keySourceOf, memberOf, partsOf } from './signing.js';

/** The WIT `signing-algorithm` by the JOSE name. */
const ALGORITHMS = { rs256: 'RS256', es256: 'ES256' };
const FIELDS = ['algorithm', 'key', 'keyFile', 'keyEnv'];
/** Snake-case names (the settings column's) a caller may pass by mistake. */
const CAMEL = { key_file: 'keyFile', key_env: 'keyEnv' };

/** How far a proof's `iat` may be from this host's clock. */
export const MAX_PROOF_SKEW_SECS = 60;
/** A proof's `jti` is at least this long (the component's: 32 hex digits). */
const MIN_JTI_CHARS = 16;
/** `ath`: base64url (unpadded) of a SHA-256 digest. */
const ATH = /^[A-Za-z0-9_-]{43}$/;
const HEADER_MEMBERS = ['typ', 'alg', 'jwk'];
const CLAIMS = ['jti', 'htm', 'htu', 'iat', 'nonce', 'ath'];
/** JWK members that are (part of) a private key (RFC 7518 §6.2.2, §6.3.2, §6.4). */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
/** Names a refusal may quote: the assertion's, DPoP's claims and the JWK members. */
const DPOP_NAMEABLE = new Set([...NAMEABLE, 'htm', 'htu', 'ath', 'kty', 'crv', 'x', 'y', 'n', 'e', ...PRIVATE_MEMBERS, 'use', 'key_ops']);

/** The `signer` of a call without a DPoP key: every proof refused, the reason said. */
export const NO_DPOP_KEY = 'no DPoP key is configured for this credential (settings.dpop)';

/**
 * `settings.dpop` read and checked, without its key: `{algorithm (WIT),
 * source}`; undefined when absent.
 * @param {unknown} value
 * @returns {{algorithm: 'rs256'|'es256', source: {key: import('node:crypto').KeyObject} | {keyFile: string} | {keyEnv: string}} | undefined}
 */
export function dpopOf(value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidSettings("dpop must be an object: { algorithm: 'ES256' | 'RS256', keyFile | keyEnv | key }");
  }
  const s = /** @type {Record<string, unknown>} */ (value);
  for (const name of Object.keys(s)) {
    if (FIELDS.includes(name)) continue;
    const hint = Object.hasOwn(CAMEL, name) ? ` (spelled ${CAMEL[name]} here)` : '';
    throw new InvalidSettings(`dpop.${name} is unknown${hint}: use ${FIELDS.join(', ')}`);
  }
  const algorithm = algorithmOf(s.algorithm, 'dpop');
  return { algorithm, source: keySourceOf(s, 'dpop') };
}

/**
 * What a store's settings column keeps of `dpop` (snake_case, as the Rust and
 * Python hosts write it): the algorithm and where the key is, never the key.
 * An in-memory key is refused.
 * @param {unknown} value
 */
export function storedDpop(value) {
  const d = dpopOf(value);
  if (d === undefined) return undefined;
  if ('key' in d.source) {
    throw new InvalidSettings('a stored credential names its DPoP key with dpop.keyFile or dpop.keyEnv (the store never holds a private key); '
      + 'dpop.key (a KeyObject) is for settings passed with each call without a store (keys and onUpdateKeys)');
  }
  return {
    algorithm: ALGORITHMS[d.algorithm],
    // Absolute: the workers sharing the store need not share this working directory.
    ...('keyFile' in d.source ? { key_file: resolve(d.source.keyFile) } : { key_env: d.source.keyEnv }),
  };
}

/**
 * What the host's check of a proof expects, from the call's settings.
 * @typedef {object} ProofRules
 * @property {'rs256'|'es256'} algorithm  the settings' DPoP algorithm
 * @property {string} tokenUrl  the `htu` of a token-endpoint proof
 * @property {(url: string) => (string | undefined)} [apiRefusal]  why the access
 *   token may not go to `url` (the host's check at `http-send`), or undefined
 *   when it may; absent for a call that makes no API request (an authorisation):
 *   then the token URL is the only `htu`
 */

const refused = (what) => `refused by the host's check of what it signs (DPoP proof): ${what}`;

/**
 * Whether `input` may be signed as a DPoP proof for `algorithm` under
 * `rules`, as far as it can be told without the key: `{refusal}`, or `{jwk}`,
 * the header's `jwk` (a Map of its string members), which the caller compares
 * with the key's public JWK (jwkRefusal) before it signs. The rule: ASCII
 * `header.claims`, each part base64url (unpadded) of a JSON object, no member
 * twice; the header exactly `typ` "dpop+jwt", `alg` (the algorithm asked and
 * configured) and `jwk` (an object of strings); the claims `htm` (upper-case
 * ASCII letters), `htu` (the token URL, or an http(s) URL without query or
 * fragment the access token may go to), an integer `iat` within 60 s of this
 * host's clock, a `jti` of 16 characters or more, an optional string `nonce`,
 * an optional `ath` of 43 base64url characters, and nothing else. Names the
 * member that failed; never quotes the input.
 * @param {Uint8Array} input
 * @param {string} algorithm  the WIT `signing-algorithm` asked for
 * @param {ProofRules} rules
 * @param {number} [now]  this host's clock, seconds since the epoch
 * @returns {{refusal: string} | {jwk: Map<string, string>}}
 */
export function checkProof(input, algorithm, rules, now = Date.now() / 1000) {
  const why = proofRefusal(input, algorithm, rules, now);
  return typeof why === 'string' ? { refusal: refused(why) } : { jwk: why };
}

/** @returns {string | Map<string, string>} */
function proofRefusal(input, algorithm, rules, now) {
  const [parts, partsError] = partsOf(input);
  if (partsError) return partsError;
  const [header, headerError] = jsonObjectOf(parts[0], 'header', ['jwk'], DPOP_NAMEABLE);
  if (headerError) return headerError;
  const [claims, claimsError] = jsonObjectOf(parts[1], 'claims', [], DPOP_NAMEABLE);
  if (claimsError) return claimsError;
  const member = (name, what) => memberOf(name, what, DPOP_NAMEABLE);

  // The header.
  for (const name of header.keys()) {
    if (!HEADER_MEMBERS.includes(name)) return `${member(name, 'header member')} is not allowed (only typ, alg and jwk)`;
  }
  const asked = ALGORITHMS[algorithm];
  const configured = ALGORITHMS[rules.algorithm];
  if (asked === undefined || asked !== configured) {
    return `alg: the component asked for ${asked ?? 'an unknown algorithm'}, the DPoP key is for ${configured}`;
  }
  if (!isString(header.get('typ'), 'dpop+jwt')) return 'the header\'s typ is not "dpop+jwt"';
  if (!isString(header.get('alg'), configured)) return `the header's alg is not ${configured}`;
  const jwk = header.get('jwk');
  if (jwk?.kind !== 'object') return "the header's jwk is not a JSON object";

  // The claims.
  for (const name of claims.keys()) {
    if (!CLAIMS.includes(name)) return `${member(name, 'claim')} is not allowed (only jti, htm, htu, iat, nonce and ath)`;
  }
  const htm = claims.get('htm');
  if (htm?.kind !== 'string' || !/^[A-Z]+$/.test(htm.value)) return 'the claim htm is not an HTTP method (upper-case ASCII letters)';
  const htu = claims.get('htu');
  if (htu?.kind !== 'string') return 'the claim htu is not a string';
  if (htu.value !== rules.tokenUrl && htu.value !== withoutQuery(rules.tokenUrl)) {
    const bad = htuRefusal(htu.value, rules);
    if (bad) return bad;
  }
  const iat = integerOf(claims.get('iat'));
  if (iat === undefined) return 'the claim iat is not a whole number of seconds';
  if (!(Math.abs(iat - now) <= MAX_PROOF_SKEW_SECS)) return `the claim iat is more than ${MAX_PROOF_SKEW_SECS} s from this host's clock`;
  const jti = claims.get('jti');
  if (jti?.kind !== 'string' || [...String(jti.value)].length < MIN_JTI_CHARS) return `the claim jti is not a string of ${MIN_JTI_CHARS} characters or more`;
  const nonce = claims.get('nonce');
  if (nonce !== undefined && nonce.kind !== 'string') return 'the claim nonce is not a string';
  const ath = claims.get('ath');
  if (ath !== undefined && !(ath.kind === 'string' && ATH.test(ath.value))) return 'the claim ath is not 43 base64url characters (a SHA-256 digest)';
  return jwk.value;
}

/** A URL without its query and fragment (the `htu` of a request to it, RFC 9449 §4.2). */
function withoutQuery(url) {
  const end = url.search(/[?#]/);
  return end < 0 ? url : url.slice(0, end);
}

/**
 * Whether the authority (between `://` and the next `/`, `?` or `#`) holds anything URL parsers disagree on:
 * WHATWG reads `https://a.example\\@b.example/` as host `a.example`, Python's urllib as `b.example`. The same
 * rule in every host.
 */
function ambiguousAuthority(url) {
  const at = url.indexOf('://');
  const rest = at < 0 ? url : url.slice(at + 3);
  const end = rest.search(/[/?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  return /[@\\%\x00-\x20\x7f-\uffff]/.test(authority);
}

/** Why an `htu` that is not the token URL is refused, or undefined: it must be a URL the access token may go to. */
function htuRefusal(htu, rules) {
  if (!rules.apiRefusal) return 'the claim htu is not the token URL (an authorisation makes no API request)';
  let url;
  try {
    url = new URL(htu);
  } catch {
    return 'the claim htu is not an http(s) URL';
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return 'the claim htu is not an http(s) URL';
  if (ambiguousAuthority(htu)) {
    return "the claim htu has an authority parsers read differently (user information, '\\', '%', spaces or control characters)";
  }
  if (htu.includes('?') || htu.includes('#')) return 'the claim htu has a query or a fragment';
  if (url.username !== '' || url.password !== '') return 'the claim htu has user information';
  if (rules.apiRefusal(htu) !== undefined) return 'the claim htu is neither the token URL nor a URL the access token may go to';
  return undefined;
}

/**
 * Why the proof header's `jwk` is not `publicJwk`, the key's own (same
 * members, same values; a private member such as `d` is refused by name), or
 * undefined.
 * @param {Map<string, string>} jwk
 * @param {Record<string, string>} publicJwk
 */
export function jwkRefusal(jwk, publicJwk) {
  const privateMember = PRIVATE_MEMBERS.find((name) => jwk.has(name));
  if (privateMember) return refused(`the header's jwk has the private member ${privateMember}`);
  const names = Object.keys(publicJwk);
  const same = jwk.size === names.length && names.every((name) => jwk.get(name) === publicJwk[name]);
  return same ? undefined : refused("the header's jwk is not this credential's DPoP public key");
}
