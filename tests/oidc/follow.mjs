// A browser for `rekey authorize` scenarios: follows the authorization URL
// rekey printed through oidc-provider's development login and consent pages
// (forms read from the HTML, as authorize.mjs does), and when the provider
// redirects elsewhere (rekey's loopback listener) makes that request too, as
// a browser would. Prints one JSON line on stdout and nothing else:
//   {"redirect": "<origin+path it went to>", "status": N, "body": "<listener's answer>", "code": "<the code>"}
// or, when the flow ends on a page of the provider (the device flow):
//   {"page": "<title>"}
//
//   node follow.mjs --url URL [--login NAME] [--deny] [--user-code CODE]
//
// --deny cancels at the consent page (the device flow: aborts at the
// confirmation page), so the provider answers access_denied.
// --user-code fills the device flow's code form.

import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    login: { type: 'string', default: 'rekey-user' },
    deny: { type: 'boolean', default: false },
    'user-code': { type: 'string' },
  },
});

function fail(message) {
  process.stderr.write(`follow.mjs: ${message}\n`);
  process.exit(1);
}

const start = new URL(args.url ?? fail('--url is required'));
const TIMEOUT_MS = 15_000;
const MAX_STEPS = 20;

const jar = new Map();
function keepCookies(res) {
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

async function request(url, { method = 'GET', form } = {}) {
  const cookie = cookieHeader(url);
  const res = await fetch(url, {
    method,
    redirect: 'manual',
    signal: AbortSignal.timeout(TIMEOUT_MS),
    headers: {
      accept: 'text/html',
      ...(cookie ? { cookie } : {}),
      ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
    },
    body: form ? new URLSearchParams(form).toString() : undefined,
  });
  keepCookies(res);
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

// The page's POST form, filled as a person would.
function fillForm(html, pageUrl) {
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const form = attributes(m[1]);
    if ((form.method ?? 'get').toLowerCase() !== 'post') continue;
    const fields = [];
    for (const input of m[2].matchAll(/<input\b([^>]*)>/gi)) {
      const a = attributes(input[1]);
      if (!a.name) continue;
      let value = a.value;
      if (a.name === 'user_code' && args['user-code']) value = args['user-code'];
      if (value === undefined || value === '') {
        value = (a.type ?? 'text').toLowerCase() === 'password' ? 'any-password' : args.login;
      }
      fields.push([a.name, value]);
    }
    return { action: new URL(form.action ?? pageUrl, pageUrl).href, fields, html: m[2] };
  }
  return undefined;
}

async function main() {
  let url = start.href;
  let next = { method: 'GET' };
  let loggedIn = false;
  let aborted = false;
  const seen = [];
  for (let step = 0; step < MAX_STEPS; step += 1) {
    const res = await request(url, next);
    seen.push(`${next.method} ${new URL(url).pathname} -> ${res.status}`);
    if ([301, 302, 303, 307, 308].includes(res.status)) {
      const location = new URL(res.headers.get('location'), url);
      await res.arrayBuffer();
      if (location.origin !== start.origin) {
        // The browser follows the redirect to the app: rekey's listener.
        let status = 0;
        let body = '';
        try {
          const app = await fetch(location.href, { redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) });
          status = app.status;
          body = await app.text();
        } catch (err) {
          body = `unreachable: ${err?.cause?.code ?? err}`;
        }
        // The code too, so the scenario can check rekey never prints it.
        const code = location.searchParams.get('code') ?? undefined;
        process.stdout.write(`${JSON.stringify({ redirect: `${location.origin}${location.pathname}`, status, body, code })}\n`);
        return;
      }
      url = location.href;
      next = { method: 'GET' };
      continue;
    }
    const text = await res.text();
    const abort = /<a\b[^>]*href="([^"]*\/abort)"/i.exec(text)?.[1];
    if (args.deny && loggedIn && abort) {
      url = new URL(unescapeHtml(abort), url).href;
      next = { method: 'GET' };
      continue;
    }
    const form = res.status === 200 && !aborted ? fillForm(text, url) : undefined;
    if (!form) {
      const title = /<title>([^<]*)<\/title>/i.exec(text)?.[1] ?? '';
      if (res.status === 200) {
        process.stdout.write(`${JSON.stringify({ page: title })}\n`);
        return;
      }
      fail(`no way forward at step ${step}: ${seen.join(', ')} (${title})`);
    }
    if (form.fields.some(([name]) => name === 'password')) loggedIn = true;
    // The device flow's confirmation page: its abort button.
    if (args.deny && /name="abort"/.test(text) && form.fields.some(([n]) => n === 'user_code')) {
      form.fields.push(['abort', 'yes']);
      aborted = true;
    }
    url = form.action;
    next = { method: 'POST', form: form.fields };
  }
  fail(`no end after ${MAX_STEPS} steps: ${seen.join(', ')}`);
}

main().catch((err) => fail(err?.stack ?? String(err)));
