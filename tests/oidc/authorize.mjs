// The OAuth 2.0 authorization-code flow against server.mjs, driven over plain
// HTTP the way a browser would: the authorization request, oidc-provider's
// development login and consent pages (forms read from the HTML it renders),
// the redirect back with ?code=, then the code exchange at the token endpoint.
// Prints the token response (JSON, one line) on stdout and nothing else.
//
//   node authorize.mjs --issuer URL --client-id ID [--client-secret S]
//                      [--auth basic|post] [--redirect-uri URI]
//                      [--login NAME] [--scope SCOPE]
//
// The secret may come from OIDC_CLIENT_SECRET instead (kept out of argv).
// Uses PKCE (S256), state, and checks the RFC 9207 iss parameter.

import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    auth: { type: 'string', default: 'basic' },
    'redirect-uri': { type: 'string', default: 'http://127.0.0.1/rekey-callback' },
    login: { type: 'string', default: 'rekey-user' },
    scope: { type: 'string', default: 'openid offline_access' },
  },
});

function fail(message) {
  process.stderr.write(`authorize.mjs: ${message}\n`);
  process.exit(1);
}

const issuer = args.issuer ?? fail('--issuer is required');
const clientId = args['client-id'] ?? fail('--client-id is required');
const clientSecret = args['client-secret'] ?? process.env.OIDC_CLIENT_SECRET ?? fail('--client-secret or OIDC_CLIENT_SECRET is required');
const redirectUri = args['redirect-uri'];
if (!['basic', 'post'].includes(args.auth)) fail('--auth must be basic or post');

const TIMEOUT_MS = 15_000;
const MAX_STEPS = 20;

// A cookie jar good enough for one provider: name + path, path-prefix match.
const jar = new Map();
function keepCookies(url, res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let path = '/';
    let expired = value === '';
    for (const attr of attrs) {
      const [k, v = ''] = attr.split('=');
      const key = k.toLowerCase();
      if (key === 'path') path = v;
      if (key === 'max-age' && Number(v) <= 0) expired = true;
      if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
    }
    const id = `${name};${path}`;
    if (expired) jar.delete(id);
    else jar.set(id, { name, value, path });
  }
}
function cookieHeader(url) {
  const { pathname } = new URL(url);
  return [...jar.values()]
    .filter((c) => pathname === c.path || pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
    .map((c) => `${c.name}=${c.value}`)
    .join('; ');
}

async function request(url, { method = 'GET', form, headers = {} } = {}) {
  const cookie = cookieHeader(url);
  const res = await fetch(url, {
    method,
    redirect: 'manual',
    signal: AbortSignal.timeout(TIMEOUT_MS),
    headers: {
      accept: 'text/html,application/json',
      ...(cookie ? { cookie } : {}),
      ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      ...headers,
    },
    body: form ? new URLSearchParams(form).toString() : undefined,
  });
  keepCookies(url, res);
  return res;
}

const unescapeHtml = (s) => s
  .replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&#x27;', "'")
  .replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&');

function attributes(tag) {
  const attrs = {};
  for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    attrs[m[1].toLowerCase()] = unescapeHtml(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attrs;
}

// The page's POST form, filled as a person would: hidden inputs keep their
// values, a password field gets a password, any other empty field the login.
function fillForm(html, pageUrl) {
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const form = attributes(m[1]);
    if ((form.method ?? 'get').toLowerCase() !== 'post') continue;
    const fields = [];
    for (const input of m[2].matchAll(/<input\b([^>]*)>/gi)) {
      const a = attributes(input[1]);
      if (!a.name) continue;
      let value = a.value;
      if (value === undefined || value === '') {
        value = (a.type ?? 'text').toLowerCase() === 'password' ? 'any-password' : args.login;
      }
      fields.push([a.name, value]);
    }
    return { action: new URL(form.action ?? pageUrl, pageUrl).href, fields };
  }
  return undefined;
}

const base64url = (buf) => buf.toString('base64url');
const formEncode = (s) => new URLSearchParams([['', s]]).toString().slice(1);

function clientAuth(form) {
  if (args.auth === 'post') {
    return { form: { ...form, client_id: clientId, client_secret: clientSecret }, headers: {} };
  }
  // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
  const basic = Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64');
  return { form, headers: { authorization: `Basic ${basic}` } };
}

async function main() {
  const discoveryRes = await request(new URL('/.well-known/openid-configuration', issuer).href);
  if (discoveryRes.status !== 200) fail(`discovery answered ${discoveryRes.status}`);
  const discovery = await discoveryRes.json();
  if (discovery.issuer !== issuer) fail(`discovery names issuer ${discovery.issuer}, expected ${issuer}`);

  const state = base64url(randomBytes(16));
  const verifier = base64url(randomBytes(32));
  const challenge = base64url(createHash('sha256').update(verifier).digest());
  const authUrl = new URL(discovery.authorization_endpoint);
  authUrl.search = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    scope: args.scope,
    redirect_uri: redirectUri,
    prompt: 'consent',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();

  let url = authUrl.href;
  let next = { method: 'GET' };
  let callback;
  const seen = [];
  for (let step = 0; step < MAX_STEPS && !callback; step += 1) {
    const res = await request(url, next);
    seen.push(`${next.method} ${new URL(url).pathname} -> ${res.status}`);
    if ([301, 302, 303, 307, 308].includes(res.status)) {
      const location = new URL(res.headers.get('location'), url);
      await res.arrayBuffer();
      if (location.href.startsWith(redirectUri)) {
        callback = location;
      } else {
        url = location.href;
        next = { method: 'GET' };
      }
      continue;
    }
    const text = await res.text();
    const form = res.status === 200 ? fillForm(text, url) : undefined;
    if (!form) {
      // oidc-provider's error page (or JSON) names the error; nothing else is shown.
      const field = (name) => new RegExp(`${name}</strong>: ([^<]*)`).exec(text)?.[1]
        ?? (() => { try { return JSON.parse(text)[name]; } catch { return undefined; } })();
      const why = field('error') ? ` (${field('error')}: ${field('error_description') ?? ''})` : '';
      fail(`no way forward at step ${step}: ${seen.join(', ')}${why}`);
    }
    url = form.action;
    next = { method: 'POST', form: form.fields };
  }
  if (!callback) fail(`no redirect back after ${MAX_STEPS} steps: ${seen.join(', ')}`);

  const q = callback.searchParams;
  if (q.get('error')) fail(`authorization failed: ${q.get('error')} (${q.get('error_description') ?? ''})`);
  if (q.get('state') !== state) fail('state mismatch in the redirect');
  if (q.has('iss') && q.get('iss') !== issuer) fail(`iss ${q.get('iss')} in the redirect is not ${issuer}`);
  const code = q.get('code') ?? fail('no code in the redirect');

  const auth = clientAuth({
    grant_type: 'authorization_code',
    code,
    redirect_uri: redirectUri,
    code_verifier: verifier,
  });
  const tokenRes = await request(discovery.token_endpoint, {
    method: 'POST',
    form: auth.form,
    headers: { ...auth.headers, accept: 'application/json' },
  });
  const body = await tokenRes.text();
  if (tokenRes.status !== 200) {
    let error = 'unparsable body';
    try {
      error = JSON.parse(body).error;
    } catch { /* keep the default */ }
    fail(`code exchange answered ${tokenRes.status} (${error})`);
  }
  process.stdout.write(`${body.trim()}\n`);
}

main().catch((err) => fail(err?.stack ?? String(err)));
