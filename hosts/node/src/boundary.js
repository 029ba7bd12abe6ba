// Where a request may go: the host's second line behind the component's own
// check (guest/src/origins.rs), applied at `http-send` to the URL as Node's
// HTTP stack will read it (WHATWG), so a parser difference can only refuse
// more, never send a token elsewhere.
//  - any plain http:// must be on a loopback address;
//  - purpose `token-endpoint`: exactly the settings' token URL;
//  - purpose `api`: within the credential's API origins when it has any
//    (`https://api.example.com[:port]`, `https://*.example.com` for any
//    subdomain, never the bare domain), or the token set's `instance_url`
//    origin when the settings allow it.

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
function parsePattern(text) {
  const m = /^([a-z]+):\/\/(\*\.)?([^/?#@]+)\/?$/i.exec(text);
  if (!m) return undefined;
  const origin = originOf(`${m[1]}://${m[3]}/`);
  if (!origin) return undefined;
  const wildcard = m[2] !== undefined;
  if (!origin.https && (wildcard || !isLoopback(origin.host))) return undefined;
  if (wildcard && !origin.host.includes('.')) return undefined;
  return { origin, wildcard };
}

function matches({ origin, wildcard }, target) {
  if (target.https !== origin.https || target.port !== origin.port) return false;
  if (!wildcard) return target.host === origin.host;
  if (!target.host.endsWith(`.${origin.host}`)) return false;
  const sub = target.host.slice(0, -(origin.host.length + 1));
  return sub !== '' && sub.split('.').every((label) => label !== '');
}

/**
 * Why `http-send` must refuse this request, or undefined when it may go.
 * @param {'api'|'token-endpoint'|'device-endpoint'} purpose
 * @param {string} url
 * @param {{tokenUrl: string, apiOrigins?: string[], instanceUrl?: string}} rules
 */
export function refusal(purpose, url, { tokenUrl, apiOrigins = [], instanceUrl }) {
  const target = originOf(url);
  if (!target) return undefined; // http.send reports the invalid URL; nothing is sent
  if (!target.https && !isLoopback(target.host)) {
    return 'plain http:// is allowed on loopback addresses only';
  }
  if (purpose === 'token-endpoint' && url !== tokenUrl) {
    return "a token-endpoint request goes to the settings' token URL only";
  }
  if (purpose !== 'api') return undefined;
  const instance = instanceUrl === undefined ? undefined : originOf(instanceUrl);
  const patterns = apiOrigins.map(parsePattern).filter(Boolean);
  if (apiOrigins.length === 0 && !instance?.https) return undefined;
  const allowed = patterns.some((p) => matches(p, target))
    || (instance?.https === true && instance.host === target.host && instance.port === target.port && target.https);
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
