// Where a request may go: the host's second line behind the component's own
// check (guest/src/origins.rs), applied at `http-send` to the URL as Node's
// HTTP stack will read it (WHATWG), so a parser difference can only refuse
// more, never send a token elsewhere.
//  - any plain http:// must be on a loopback address;
//  - purpose `token-endpoint`: exactly the settings' token URL;
//  - purpose `device-endpoint`: exactly the device authorization URL of an
//    authorize call (a send has none: it makes no such request);
//  - purpose `api`: within the credential's API origins
//    (`https://api.example.com[:port]`, `https://*.example.com` for any
//    subdomain, never the bare domain; `*` alone: any origin, said
//    explicitly), or the token set's `instance_url` origin when it matches one
//    of the credential's instance patterns.
// A wildcard over a public suffix (`https://*.co.uk`) is refused here too:
// the component has no public suffix list (see public-suffix.js).

import { isPublicSuffix } from './public-suffix.js';

/** Whether a WHATWG hostname is a loopback address (127.0.0.0/8, ::1) or `localhost`. */
export function isLoopback(hostname) {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** {https, host, port} of an http(s) URL as Node would connect to it, or undefined. */
export function originOf(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return undefined;
  const https = u.protocol === 'https:';
  return {
    https,
    host: u.hostname.replace(/^\[|\]$/g, '').toLowerCase(),
    port: u.port === '' ? (https ? 443 : 80) : Number(u.port),
  };
}

/** One API origin pattern, parsed as guest/src/origins.rs does; undefined when malformed. */
function parseStructure(text) {
  const m = /^([a-z]+):\/\/(\*\.)?([^/?#@]+)\/?$/i.exec(text);
  if (!m) return undefined;
  const origin = originOf(`${m[1]}://${m[3]}/`);
  if (!origin) return undefined;
  const wildcard = m[2] !== undefined;
  if (!origin.https && (wildcard || !isLoopback(origin.host))) return undefined;
  if (origin.host.split('.').some((label) => label === '')) return undefined;
  if (wildcard && (!origin.host.includes('.') || origin.host.includes(':') || /^[\d.]+$/.test(origin.host))) return undefined;
  return { origin, wildcard };
}

/** A pattern that may match: well formed, and no wildcard over a public suffix. */
function parsePattern(text) {
  const p = parseStructure(text);
  return p && !(p.wildcard && isPublicSuffix(p.origin.host)) ? p : undefined;
}

/**
 * Why the settings' origin patterns must be refused for a wildcard over a
 * public suffix (`https://*.co.uk`, `https://*.github.io`), or undefined.
 * Other malformed patterns are left to the component, which names them.
 * @param {{apiOrigins?: unknown, instanceUrlOrigins?: unknown}} s
 */
export function publicSuffixWildcard({ apiOrigins, instanceUrlOrigins }) {
  for (const [field, patterns] of [['apiOrigins', apiOrigins], ['instanceUrlOrigins', instanceUrlOrigins]]) {
    for (const text of Array.isArray(patterns) ? patterns : []) {
      const p = typeof text === 'string' ? parseStructure(text) : undefined;
      if (p?.wildcard && isPublicSuffix(p.origin.host)) {
        return `${field}: ${JSON.stringify(text)} is a wildcard over a public suffix (${p.origin.host}): `
          + "a wildcard over a public suffix matches other people's sites; "
          + `name the registrable domain below it, e.g. https://*.example.${p.origin.host}`;
      }
    }
  }
  return undefined;
}

function matches({ origin, wildcard }, target) {
  if (target.https !== origin.https || target.port !== origin.port) return false;
  if (!wildcard) return target.host === origin.host;
  if (!target.host.endsWith(`.${origin.host}`)) return false;
  const sub = target.host.slice(0, -(origin.host.length + 1));
  return sub !== '' && sub.split('.').every((label) => label !== '');
}

/** Whether a WHATWG hostname is a loopback address written as one (a name such as `localhost` is not). */
export function isLiteralLoopback(hostname) {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The origin of the token set's `instance_url` when it may receive the token:
 * https (or http on a literal loopback address), no user information, and
 * matching one of `patterns`. Otherwise undefined: it never unbinds or widens.
 */
export function adoptedInstance(instanceUrl, patterns = []) {
  if (typeof instanceUrl !== 'string' || patterns.length === 0) return undefined;
  let u;
  try {
    u = new URL(instanceUrl);
  } catch {
    return undefined;
  }
  if (u.username !== '' || u.password !== '') return undefined;
  const origin = originOf(instanceUrl);
  if (!origin || (!origin.https && !isLiteralLoopback(origin.host))) return undefined;
  return patterns.map(parsePattern).some((p) => p && matches(p, origin)) ? origin : undefined;
}

/**
 * Why `http-send` must refuse this request, or undefined when it may go.
 * @param {'api'|'token-endpoint'|'device-endpoint'} purpose
 * @param {string} url
 * @param {{tokenUrl: string, deviceUrl?: string, apiOrigins?: string[], instanceUrlOrigins?: string[], instanceUrl?: string}} rules
 */
export function refusal(purpose, url, { tokenUrl, deviceUrl, apiOrigins = [], instanceUrlOrigins = [], instanceUrl }) {
  const target = originOf(url);
  if (!target) return undefined; // http.send reports the invalid URL; nothing is sent
  if (!target.https && !isLoopback(target.host)) {
    return 'plain http:// is allowed on loopback addresses only';
  }
  if (purpose === 'token-endpoint' && url !== tokenUrl) {
    return "a token-endpoint request goes to the settings' token URL only";
  }
  if (purpose === 'device-endpoint') {
    if (deviceUrl === undefined) return 'this call makes no device authorization request';
    return url === deviceUrl ? undefined : "a device request goes to the settings' device authorization URL only";
  }
  if (purpose !== 'api') return undefined;
  // As in the Rust host, such a pattern anywhere in the settings (an instance
  // pattern beside `*` too) refuses every API request, not only its matches.
  const unmeant = publicSuffixWildcard({ apiOrigins, instanceUrlOrigins });
  if (unmeant) return unmeant;
  if (apiOrigins.length === 1 && apiOrigins[0] === '*') return undefined;
  const instance = adoptedInstance(instanceUrl, instanceUrlOrigins);
  const allowed = apiOrigins.map(parsePattern).some((p) => p && matches(p, target))
    || (instance !== undefined && instance.https === target.https && instance.host === target.host && instance.port === target.port);
  return allowed ? undefined : "the URL is not one of the credential's API origins";
}

/** Scheme, host and path only: a query may carry secrets. */
export function loggableTarget(url) {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}
