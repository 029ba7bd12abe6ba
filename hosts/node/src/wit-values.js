// Converting between what a Node developer passes and the WIT values the
// component takes (jco's representation: camelCase records, `{tag, val}`
// variants, Uint8Array bodies, header lists as [name, value] pairs).

import { publicSuffixWildcard } from './boundary.js';
import { InvalidRequest, InvalidSettings, UnrepresentableResponse } from './errors.js';
import { Secret, reveal } from './secret.js';
import { dpopOf } from './dpop.js';
import { signingOf } from './signing.js';

// The same spellings as every host: the WIT names ('client-secret-basic',
// as Python's ClientAuth values), the short ones the Rust host's settings
// column and CLI use ('basic') and the RFC's ('client_secret_basic',
// 'private_key_jwt'), read as Python reads them: trimmed, any case, '_' as
// '-'. Each maps to the settings column's spelling.
const CLIENT_AUTH = {
  basic: 'basic',
  post: 'post',
  'client-secret-basic': 'basic',
  'client-secret-post': 'post',
  'private-key-jwt': 'private_key_jwt',
};
/** The WIT `client-auth` of each settings-column spelling. */
const WIT_CLIENT_AUTH = { basic: 'client-secret-basic', post: 'client-secret-post', private_key_jwt: 'private-key-jwt' };
export const STRATEGIES = ['on-auth-failure', 'every-request', 'before-expiry'];
export const GRANTS = ['refresh-token', 'client-credentials', 'jwt-bearer'];
/**
 * Where the private key of each call's WIT settings is (kept out of them:
 * they go to worker threads), loaded only when the component asks for a
 * signature.
 */
const SIGNING_SOURCES = new WeakMap();
/** Likewise the DPoP key of each call's WIT settings (settings.dpop). */
const DPOP_SOURCES = new WeakMap();
const DEFAULT_EXPIRY_MARGIN_SECS = 60;

/**
 * @param {import('../index.js').Settings} s
 * @returns the WIT `settings` record
 */
export function toWitSettings(s) {
  if (s === null || typeof s !== 'object') throw new InvalidSettings('settings must be an object');
  const string = (name, value, optional = false) => {
    if (optional && value === undefined) return undefined;
    if (typeof value !== 'string' || value === '') throw new InvalidSettings(`${name} must be a non-empty string`);
    return value;
  };
  const grant = grantOf(s.grant);
  const clientAuth = WIT_CLIENT_AUTH[clientAuthOf(s.clientAuth)];
  const strategyName = strategyOf(s.strategy);
  const margin = s.expiryMarginSecs ?? DEFAULT_EXPIRY_MARGIN_SECS;
  if (!Number.isInteger(margin) || margin < 0 || margin > 0xffffffff) throw new InvalidSettings('expiryMarginSecs must be a whole number of seconds');
  const rejected = s.rejectedStatuses ?? [401];
  if (!Array.isArray(rejected) || !rejected.every((n) => Number.isInteger(n) && n >= 100 && n <= 599)) {
    throw new InvalidSettings('rejectedStatuses must be a list of HTTP statuses');
  }
  const origins = s.apiOrigins ?? [];
  if (!Array.isArray(origins) || !origins.every((o) => typeof o === 'string')) {
    throw new InvalidSettings("apiOrigins must be a list of origins like https://api.example.com or https://*.example.com, or ['*'] for any");
  }
  if ('allowInstanceUrl' in s) {
    throw new InvalidSettings("allowInstanceUrl is replaced by instanceUrlOrigins: the patterns the token set's instance_url must match, e.g. ['https://*.my.salesforce.com']");
  }
  const instanceOrigins = s.instanceUrlOrigins ?? [];
  if (!Array.isArray(instanceOrigins) || !instanceOrigins.every((o) => typeof o === 'string')) {
    throw new InvalidSettings('instanceUrlOrigins must be a list of origin patterns like https://*.my.salesforce.com');
  }
  // Bound by default (the component refuses it too, before anything is sent).
  if (origins.length === 0 && instanceOrigins.length === 0) {
    throw new InvalidSettings("the credential is not bound to API origins, so its token could go anywhere: set apiOrigins (e.g. ['https://api.example.com']), or ['*'] to allow any https origin explicitly");
  }
  // The component has no public suffix list: this rule is the host's.
  const unmeant = publicSuffixWildcard({ apiOrigins: origins, instanceUrlOrigins: instanceOrigins });
  if (unmeant) throw new InvalidSettings(unmeant);
  const fleet = s.fleet ?? {};
  const ms = (name) => {
    const v = fleet[name] ?? 0;
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new InvalidSettings(`fleet.${name} must be a whole number of milliseconds (0: the default)`);
    return v;
  };
  const clientSecret = clientSecretOf(s.clientSecret);
  // The component refuses these too; saying so here also stops a store from
  // creating a credential that could never get a token.
  const needs = needsOf(s, grant, clientAuth === 'private-key-jwt', clientSecret !== undefined);
  if (needs) throw new InvalidSettings(needs);
  // Checked here; its key is read only when the component asks for a
  // signature (a call whose stored token is still valid reads none), at each
  // signature, so a rotated file or variable counts at once.
  const signing = signingOf(s.signing);
  // Likewise the DPoP key: read when the component asks for its public JWK or a proof.
  const dpop = dpopOf(s.dpop);
  const wit = {
    grant: grant === 'jwt-bearer'
      ? { tag: grant, val: { subject: s.subject, claims: claimsOf(s.claims) } }
      : { tag: grant },
    tokenUrl: string('tokenUrl', s.tokenUrl),
    clientId: string('clientId', s.clientId),
    // Not checked with `string()`: its message must not depend on a secret.
    clientSecret,
    clientAuth,
    scope: string('scope', s.scope, true),
    extraParams: pairs(s.extraParams ?? [], (m) => new InvalidSettings(`extraParams ${m}`)),
    strategy: strategyName === 'before-expiry' ? { tag: strategyName, val: margin } : { tag: strategyName },
    rejectedStatuses: Uint16Array.from(rejected),
    apiOrigins: [...origins],
    instanceUrlOrigins: [...instanceOrigins],
    fleet: { leaseTtlMs: ms('leaseTtlMs'), leaseWaitMs: ms('leaseWaitMs') },
    signing: signing === undefined ? undefined : { algorithm: signing.algorithm, keyId: signing.keyId, audience: audienceOf(s, signing) },
    dpop: dpop?.algorithm,
  };
  if (signing !== undefined) SIGNING_SOURCES.set(wit, signing);
  if (dpop !== undefined) DPOP_SOURCES.set(wit, dpop);
  return wit;
}

/**
 * The assertions' `aud` given to the component: `signing.audience` as
 * configured, else the credential's `issuer` (rfc7523bis: the authorization
 * server's issuer identifier), else none (the component uses the token URL).
 * @param {{issuer?: unknown}} s
 * @param {{audience?: string}} signing
 */
function audienceOf(s, signing) {
  if (signing.audience !== undefined) return signing.audience;
  return typeof s.issuer === 'string' && s.issuer !== '' ? s.issuer : undefined;
}

/**
 * The checked signing settings of these WIT settings (made by
 * toWitSettings), their key not yet loaded (loadSigningKey), or undefined
 * when they have none.
 * @param {object} witSettings
 * @returns {ReturnType<typeof signingOf>}
 */
export function signingSourceOf(witSettings) {
  return SIGNING_SOURCES.get(witSettings);
}

/**
 * The checked DPoP settings of these WIT settings (made by toWitSettings),
 * their key not yet loaded, or undefined when they have none.
 * @param {object} witSettings
 * @returns {ReturnType<typeof dpopOf>}
 */
export function dpopSourceOf(witSettings) {
  return DPOP_SOURCES.get(witSettings);
}

/**
 * What the host's check of an assertion (checkAssertion) expects, from the
 * WIT settings the component was given: their algorithm and key id, the
 * client id, the jwt-bearer subject and claims, and the audience they name
 * or else the token URL (as the component chooses it).
 * @param {any} witSettings
 * @returns {import('./signing.js').AssertionRules}
 */
export function assertionRules(witSettings) {
  const bearer = witSettings.grant?.tag === 'jwt-bearer' ? witSettings.grant.val : undefined;
  return {
    algorithm: witSettings.signing.algorithm,
    keyId: witSettings.signing.keyId,
    clientId: witSettings.clientId,
    subject: bearer?.subject,
    claims: bearer?.claims ?? [],
    audience: witSettings.signing.audience ?? witSettings.tokenUrl,
  };
}

/**
 * What the grant and client authentication need and the settings lack (the
 * component's rules, said before anything runs), or undefined. Shared with
 * the settings column's writer.
 * @param {{subject?: unknown, signing?: unknown}} s
 * @param {string} grant  one of GRANTS
 * @param {boolean} privateKeyJwt
 * @param {boolean} hasSecret
 */
export function needsOf(s, grant, privateKeyJwt, hasSecret) {
  if (grant === 'client-credentials' && !hasSecret && !privateKeyJwt) {
    return "grant 'client-credentials' needs a clientSecret, or clientAuth 'private_key_jwt' with signing";
  }
  if (grant === 'jwt-bearer' && (typeof s.subject !== 'string' || s.subject === '')) {
    return "grant 'jwt-bearer' needs subject: the assertion's sub (e.g. the service account)";
  }
  const signed = grant === 'jwt-bearer' ? "grant 'jwt-bearer'" : privateKeyJwt ? "clientAuth 'private_key_jwt'" : undefined;
  if (signed && (s.signing === undefined || s.signing === null)) {
    return `${signed} needs signing: { algorithm: 'RS256' | 'ES256', keyFile | keyEnv | key }`;
  }
  return undefined;
}

/**
 * The jwt-bearer grant's further claims: an object of string values, or
 * [name, value] pairs of strings. Registered claims are the component's to
 * refuse (its check says which).
 */
export function claimsOf(claims) {
  if (claims === undefined || claims === null) return [];
  const entries = Array.isArray(claims) ? claims
    : typeof claims === 'object' ? Object.entries(claims) : null;
  const ok = entries?.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'string');
  if (!ok) throw new InvalidSettings("claims must map claim names to string values, e.g. { scope: 'api.read' }");
  return entries.map(([k, v]) => [k, v]);
}

/** The client authentication as the settings column spells it: 'basic' (the default), 'post' or 'private_key_jwt'. */
export function clientAuthOf(clientAuth) {
  const spelled = spelling(clientAuth ?? 'basic');
  const short = spelled !== undefined && Object.hasOwn(CLIENT_AUTH, spelled) ? CLIENT_AUTH[spelled] : undefined;
  if (!short) {
    throw new InvalidSettings(`clientAuth ${JSON.stringify(String(clientAuth))} is unknown: use 'client-secret-basic' (or 'basic'), 'client-secret-post' (or 'post') or 'private_key_jwt'`);
  }
  return short;
}

/** When the refresh token is exchanged: one of STRATEGIES (default 'on-auth-failure'). */
export function strategyOf(strategy) {
  const name = spelling(strategy ?? 'on-auth-failure');
  if (name === undefined || !STRATEGIES.includes(name)) {
    throw new InvalidSettings(`strategy ${JSON.stringify(String(strategy))} is unknown: use one of ${STRATEGIES.join(', ')}`);
  }
  return name;
}

/** An enum value as every host reads it: trimmed, lower-case, '_' as '-' ('Every_Request' is 'every-request'). */
function spelling(value) {
  return typeof value === 'string' ? value.trim().toLowerCase().replaceAll('_', '-') : undefined;
}

/**
 * How new tokens are obtained: `'refresh-token'` (the default),
 * `'client-credentials'` or `'jwt-bearer'`, read in any host's spelling
 * ('jwt_bearer', any case).
 */
export function grantOf(grant) {
  const g = spelling(grant ?? 'refresh-token');
  if (g === undefined || !GRANTS.includes(g)) throw new InvalidSettings(`grant ${JSON.stringify(String(grant))} is unknown: use one of ${GRANTS.join(', ')}`);
  return g;
}

/** A client secret: a string, a Secret, or `{ env: 'VAR' }` read at each call. */
function clientSecretOf(v) {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'object' && !(v instanceof Secret) && typeof v.env === 'string') {
    // Own variables only: 'constructor' or '__proto__' is not set, not Object's.
    const value = Object.hasOwn(process.env, v.env) ? process.env[v.env] : undefined;
    if (typeof value !== 'string') throw new InvalidSettings(`the client secret's environment variable ${v.env} is not set`);
    return value;
  }
  return String(reveal(v));
}

/**
 * @param {import('../index.js').RequestInit} r
 * @returns the WIT `request` record
 */
export function toWitRequest(r) {
  if (r === null || typeof r !== 'object') throw new InvalidRequest('request must be an object');
  if (typeof r.url !== 'string' && !(r.url instanceof URL)) throw new InvalidRequest('url must be a string or URL');
  const method = r.method ?? 'GET';
  if (typeof method !== 'string') throw new InvalidRequest('method must be a string');
  return {
    method: method.toUpperCase(),
    url: String(r.url),
    headers: pairs(r.headers ?? [], (m) => new InvalidRequest(`headers ${m}`)),
    body: toBytes(r.body),
  };
}

/**
 * The request body as bytes of its own, as `fetch` snapshots it: the retry
 * after a refresh sends it again later, and must send what the caller
 * passed even if the caller reuses its buffer once `send()` has it.
 */
function toBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (typeof body === 'string') return new TextEncoder().encode(body); // new bytes already
  // `new Uint8Array(view)` copies (Buffer's own `slice` would not).
  if (body instanceof ArrayBuffer) return new Uint8Array(new Uint8Array(body));
  if (ArrayBuffer.isView(body)) return new Uint8Array(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
  throw new InvalidRequest('body must be a string, Uint8Array, Buffer or ArrayBuffer');
}

/** Header-like input (object, Headers, Map or [name, value] pairs) as string pairs. */
export function pairs(input, error) {
  const entries = Array.isArray(input) ? input
    : typeof input?.entries === 'function' ? [...input.entries()]
      : typeof input === 'object' ? Object.entries(input) : null;
  if (!entries) throw error('must be an object or a list of [name, value] pairs');
  return entries.map((entry) => {
    if (!Array.isArray(entry) || entry.length !== 2) throw error('must be [name, value] pairs');
    return [String(entry[0]), String(entry[1])];
  });
}

/** The keys as the JSON text the component takes. */
export function keysJson(keys) {
  if (keys === undefined || keys === null) return undefined;
  if (typeof keys === 'string') return keys;
  if (typeof keys.toJSONString === 'function') return keys.toJSONString();
  return JSON.stringify(keys);
}

/** A response from the API, with the helpers a caller expects. */
export class RekeyResponse {
  constructor({ status, headers, body }) {
    this.status = status;
    /** [name, value] pairs in order, names lower-case; duplicates kept. */
    this.headers = headers;
    /** @type {Uint8Array} */
    this.body = body;
  }

  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  /** The first value of a header, or undefined. */
  header(name) {
    const lower = name.toLowerCase();
    return this.headers.find(([k]) => k === lower)?.[1];
  }

  text() {
    return new TextDecoder().decode(this.body);
  }

  json() {
    return JSON.parse(this.text());
  }

  /**
   * A standard WHATWG `Response`. Its status must be 200–599 (Node's
   * `Response` refuses others; 1xx never reach here: the HTTP client handles
   * them): any other throws UnrepresentableResponse, which carries this.
   */
  toResponse() {
    if (!(this.status >= 200 && this.status <= 599)) throw new UnrepresentableResponse('its status is outside 200–599', this);
    const nullBody = [204, 205, 304].includes(this.status);
    const headers = new Headers();
    for (const [k, v] of this.headers) headers.append(k, v);
    return new Response(nullBody ? null : /** @type {Uint8Array<ArrayBuffer>} */ (this.body), { status: this.status, headers });
  }
}
