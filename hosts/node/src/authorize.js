// The first token set: the effects the component's `authorize` interface
// needs from this host (see wit/rekey.wit). The component decides (the
// authorization URL with state and PKCE S256, checking the redirect's state,
// iss and error, the code exchange, device polling with slow_down); this
// module supplies random bytes, the loopback redirect listener (RFC 8252
// §7.3), HTTP for the component's requests, and turns the token response it
// returns into the stored token set exactly as the Rust host does
// (`TokenSet::import`).

import { spawn } from 'node:child_process';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { isLoopback } from './boundary.js';
import {
  AuthorizationTimeout, Category, InvalidSettings, ListenerError, RekeyError, StateMismatch, TokenEndpointError,
} from './errors.js';
import { TokenSet } from './secret.js';
import { sameUser } from './same-user.js';
import { pairs } from './wit-values.js';

/** How long the code grant waits for the redirect unless told otherwise. */
export const DEFAULT_TIMEOUT_MS = 300_000;
/** The redirect URI when none is given: a free port is chosen. */
export const DEFAULT_REDIRECT_URI = 'http://127.0.0.1/callback';
/** Random bytes `begin` takes: 16 make the state, 32 the PKCE verifier. */
const ENTROPY_BYTES = 48;
/** Bound on reading one request at the loopback listener. */
const READ_TIMEOUT_MS = 10_000;
/** Bytes of another user's request discarded before its connection is dropped. */
const MAX_HEAD = 16 * 1024;
/** Random bytes in the start URL's one-use token (256 bits). */
const START_TOKEN_BYTES = 32;
/** Redirects held while one is being checked; more are answered 503. */
const MAX_QUEUED = 32;

/**
 * The start URL was opened a second time: whoever opened it first (maybe
 * another local user who read it from the browser's command line) holds the
 * authorization request, so the flow ends before its redirect can arrive.
 */
export class StartUrlReused extends RekeyError {
  category = Category.NEEDS_AUTHORIZATION;

  constructor() {
    super('the start URL was opened more than once (another process may have read it); nothing was exchanged or stored: authorise again');
  }
}

/** Random bytes from the operating system's CSPRNG, for `begin`. */
export function entropy() {
  return new Uint8Array(randomBytes(ENTROPY_BYTES));
}

/**
 * The component's `authorization` record from a credential's settings: the
 * authorization scope is `authParams`' `scope` when there is one, else the
 * settings' `scope` (as the Rust host does).
 * @param {import('../index.js').Settings} s
 * @param {string} redirectUri
 */
export function witAuthorization(s, redirectUri) {
  const optional = (name) => {
    const v = s[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' || v === '') throw new InvalidSettings(`${name} must be a non-empty string`);
    return v;
  };
  const params = pairs(s.authParams ?? [], (m) => new InvalidSettings(`authParams ${m}`));
  const scope = params.find(([k]) => k === 'scope');
  return {
    authorizationUrl: optional('authorizationUrl'),
    deviceUrl: optional('deviceUrl'),
    redirectUri,
    scope: scope ? scope[1] : optional('scope'),
    authParams: params.filter(([k]) => k !== 'scope'),
    issuer: optional('issuer'),
    issuerSendsIss: issuerSendsIss(s.issuerSendsIss),
  };
}

/**
 * RFC 9207 §3: the issuer advertises `authorization_response_iss_parameter_supported`.
 * This host discovers no metadata, so the caller says it (default false).
 */
function issuerSendsIss(v) {
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new InvalidSettings('issuerSendsIss must be true or false');
  return v;
}

// RFC 6750 §2.1 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** Seconds as providers send them: a whole number, or a numeric string. */
function seconds(v) {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : undefined;
  if (typeof v === 'string' && /^\+?\d+$/.test(v.trim())) return Number(v.trim());
  return undefined;
}

/**
 * A first token set, from the token response an authorization-code or
 * device exchange returned (the Rust host's `TokenSet::import`): a JSON object
 * holding an access or a refresh token; an access token must be an RFC 6750
 * b64token; a sender's `expires_at` and `rekey_refreshed_at` are dropped and
 * `expires_at` is computed from `expires_in` and the clock only. Errors never
 * quote the response.
 * @param {string} json
 * @param {number} [nowMs]
 * @returns {TokenSet}
 */
export function importTokenResponse(json, nowMs = Date.now()) {
  const unusable = (why) => new TokenEndpointError(`the token response is unusable: ${why}`);
  let fields;
  try {
    fields = JSON.parse(json);
  } catch {
    throw unusable('invalid JSON');
  }
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) throw unusable('not a JSON object');
  const nonEmpty = (k) => (typeof fields[k] === 'string' && fields[k] !== '' ? fields[k] : undefined);
  const access = nonEmpty('access_token');
  if (access === undefined && nonEmpty('refresh_token') === undefined) {
    throw unusable('it holds neither access_token nor refresh_token');
  }
  if (access !== undefined && !B64TOKEN.test(access)) {
    throw unusable('access_token has characters a bearer token cannot carry (RFC 6750 b64token)');
  }
  // What the component derives and keeps itself is never taken from a sender
  // (guest/src/keys.rs DERIVED).
  for (const derived of ['expires_at', 'rekey_refreshed_at', 'rekey_rejected', 'rekey_lifetime', 'refresh_expires_at', 'rekey_refused']) {
    delete fields[derived];
  }
  const secs = seconds(fields.expires_in);
  if (secs !== undefined) {
    fields.expires_at = Math.min(Math.floor(nowMs / 1000) + secs, Number.MAX_SAFE_INTEGER);
  }
  return new TokenSet(fields);
}

// What a started grant keeps out of sight (util.inspect, JSON, logs): the
// PKCE verifier and the device code.
const hidden = new WeakMap();

/** A started authorization code grant (`beginAuthorization`). */
export class PendingAuthorization {
  constructor(pending, authorization) {
    /** The authorization request: open it in a browser. */
    this.url = pending.url;
    /** Where the provider sends the browser back (the listener's address). */
    this.redirectUri = authorization.redirectUri;
    hidden.set(this, { pending, authorization });
    Object.freeze(this);
  }
}

/** A started device grant (`startDeviceAuthorization`): what a person needs. */
export class DeviceAuthorization {
  constructor(grant, authorization) {
    /** Show it: the code the person types in. */
    this.userCode = grant.userCode;
    /** Show it: where the person types it in. */
    this.verificationUri = grant.verificationUri;
    /** The same with the code filled in, when the server gives one. */
    this.verificationUriComplete = grant.verificationUriComplete;
    /** Seconds the code stays valid. */
    this.expiresIn = grant.expiresIn;
    /** Seconds between polls the server asks for. */
    this.interval = grant.interval;
    hidden.set(this, { grant, authorization });
    Object.freeze(this);
  }
}

/** The component's records behind a PendingAuthorization or DeviceAuthorization. */
export function hiddenParts(started, Kind) {
  const parts = started instanceof Kind ? hidden.get(started) : undefined;
  if (!parts) throw new TypeError(`expected a ${Kind.name} from this package`);
  return parts;
}

/**
 * The loopback listener the redirect arrives at (RFC 8252 §7.3): bound to
 * the redirect URI's loopback address (`localhost` as 127.0.0.1), on its port
 * or a free one. It also serves the start URL, `/start/<one-use token>`: the
 * secret-free URL a browser is given (on its command line, which every local
 * user can read), answered once with a 302 to the authorization URL (which
 * carries the state and PKCE challenge); a wrong token is 404. Every GET of
 * the redirect path is queued for `next()`, to be answered after its check;
 * other paths are answered 404, other methods 405. On Linux it serves only
 * programs of this user (`sameUser`): another user's connection is answered
 * 403 before a byte of it is read and never reaches the HTTP server, so it
 * holds nothing there.
 */
export class RedirectListener {
  #server;
  #http;
  #sockets = new Set();
  #path;
  #token = randomBytes(START_TOKEN_BYTES).toString('base64url');
  #target;
  #opened = false;
  #reused = false;
  #queue = [];
  #waiting = [];
  #failed;
  #fail;
  #closed = false;

  /** @param {string} configured  e.g. http://127.0.0.1/callback (no port: a free one) */
  static async bind(configured) {
    const bad = (m) => new InvalidSettings(`redirect URI: ${m}`);
    let url;
    try {
      url = new URL(configured);
    } catch {
      throw bad('not a URL');
    }
    if (url.protocol !== 'http:' || !isLoopback(url.hostname)) {
      throw bad('must be http:// on loopback (127.0.0.1, [::1] or localhost)');
    }
    if (configured.includes('?') || configured.includes('#')) throw bad('must have no query or fragment');
    const literal = url.hostname.replace(/^\[|\]$/g, '');
    const host = literal === '::1' || /^127\.\d+\.\d+\.\d+$/.test(literal) ? literal : '127.0.0.1';
    if (url.pathname.startsWith('/start/') || url.pathname === '/start') throw bad('/start is the listener\'s own path');
    // Connections arrive paused (nothing read) at a plain TCP server, which
    // hands only this user's to the HTTP server (never listening itself);
    // half-open as the HTTP server's own are, so a client that shuts its
    // writing side after the request still gets the answer.
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
    await new Promise((resolve, reject) => {
      server.once('error', (/** @type {NodeJS.ErrnoException} */ err) => reject(new ListenerError(`cannot listen on ${host}:${url.port || 0} (${err.code ?? err.name})`)));
      server.listen(Number(url.port || 0), host, () => resolve(undefined));
    });
    url.port = String(/** @type {import('node:net').AddressInfo} */ (server.address()).port);
    const origin = `http://${host.includes(':') ? `[${host}]` : host}:${url.port}`;
    return new RedirectListener(server, url.pathname, url.href, origin);
  }

  constructor(server, path, redirectUri, origin) {
    this.#server = server;
    this.#http = http.createServer();
    this.#path = path;
    /** As sent in the authorization request, with the bound port. */
    this.redirectUri = redirectUri;
    /** What to open: serves one 302 to the authorization URL (`serve`). */
    this.startUrl = `${origin}/start/${this.#token}`;
    this.#failed = new Promise((_, reject) => { this.#fail = reject; });
    this.#failed.catch(() => {});
    server.on('connection', (socket) => this.#connection(socket));
    this.#http.on('request', (req, res) => {
      clearTimeout(this.#reading.get(req.socket));
      this.#request(req, res);
    });
  }

  // The read bound of each connection handed on, until its request head is in.
  #reading = new WeakMap();

  #connection(socket) {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    if (this.#closed) {
      socket.destroy();
      return;
    }
    if (!sameUser(socket)) {
      refuse(socket);
      return;
    }
    const timer = setTimeout(() => socket.destroy(), READ_TIMEOUT_MS);
    socket.once('close', () => clearTimeout(timer));
    this.#reading.set(socket, timer);
    this.#http.emit('connection', socket);
    socket.resume();
  }

  /** The authorization URL the start URL redirects to. */
  serve(authorizationUrl) {
    if (!/^[\x21-\x7e]+$/.test(authorizationUrl)) throw new InvalidSettings('the authorization URL has characters a redirect cannot carry');
    this.#target = authorizationUrl;
  }

  /**
   * The next redirect: its raw query and `answer(ok, message)` (a promise).
   * Rejects once the start URL has been opened twice.
   */
  next() {
    if (this.#queue.length > 0) return Promise.resolve(this.#queue.shift());
    return Promise.race([new Promise((resolve) => this.#waiting.push(resolve)), this.#failed]);
  }

  /** Throws StartUrlReused once the start URL has been opened twice. */
  check() {
    if (this.#reused) throw new StartUrlReused();
  }

  close() {
    this.#closed = true;
    this.#server.close();
    for (const socket of this.#sockets) socket.destroy();
  }

  #request(req, res) {
    if (req.method !== 'GET') {
      page(res, 405, 'GET only');
      return;
    }
    const target = req.url ?? '';
    const q = target.indexOf('?');
    const path = q < 0 ? target : target.slice(0, q);
    if (path.startsWith('/start/')) {
      this.#start(path.slice('/start/'.length), res);
      return;
    }
    if (path !== this.#path || this.#closed) {
      page(res, 404, 'not found');
      return;
    }
    const redirect = { query: q < 0 ? '' : target.slice(q + 1), answer: (ok, message) => page(res, ok ? 200 : 400, message) };
    const waiter = this.#waiting.shift();
    if (waiter) waiter(redirect);
    else if (this.#queue.length < MAX_QUEUED) this.#queue.push(redirect);
    else page(res, 503, 'busy');
  }

  #start(token, res) {
    const ok = this.#target !== undefined && sameToken(token, this.#token);
    if (!ok) {
      page(res, 404, 'not found');
      return;
    }
    if (this.#opened) {
      page(res, 404, 'not found');
      this.#reused = true;
      this.#fail(new StartUrlReused());
      return;
    }
    this.#opened = true;
    res.writeHead(302, {
      location: this.#target,
      'content-length': 0,
      'cache-control': 'no-store',
      'referrer-policy': 'no-referrer',
      connection: 'close',
    });
    res.end();
  }
}

/**
 * 403 to another user's connection, at once and without looking at what it
 * sent: that is discarded unread (so closing sends FIN, not RST, and its
 * program sees the answer); the connection is dropped when its program
 * closes, after MAX_HEAD bytes, or after READ_TIMEOUT_MS.
 */
function refuse(socket) {
  const timer = setTimeout(() => socket.destroy(), READ_TIMEOUT_MS);
  socket.once('close', () => clearTimeout(timer));
  socket.once('end', () => socket.destroy());
  let discarded = 0;
  socket.on('data', (chunk) => {
    discarded += chunk.length;
    if (discarded > MAX_HEAD) socket.destroy();
  });
  const body = 'not yours\n';
  socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${body.length}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`);
}

/** Compares a presented start token with ours in time independent of where they differ. */
function sameToken(presented, ours) {
  const a = Buffer.from(presented);
  const b = Buffer.from(ours);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Answers with a small HTML page; resolves once it is handed to the OS (or the connection is gone). */
function page(res, status, message) {
  const done = new Promise((resolve) => {
    res.once('finish', resolve);
    res.once('close', resolve);
  });
  const body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>rekey</title></head><body><p>${escapeHtml(message)}</p></body></html>\n`;
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    connection: 'close',
  });
  res.end(body);
  return done;
}

function escapeHtml(s) {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;');
}

/**
 * The code grant's wait at the listener: hands the start URL (and the real
 * authorization URL, in memory) to `onUrl`, then checks each redirect with
 * `exchange(query)` (the component's `finish`) until one is accepted, then
 * stores its keys with `persist(keys)`, unless the start URL was opened twice. A redirect whose state is not this request's is answered
 * 400 and the wait goes on (any local process can reach the listener; the
 * component checks the state before any effect); anything else ends the flow.
 * At most `timeoutMs` in all; rejects early when `signal` aborts or `onUrl`
 * rejects.
 */
export async function runCodeFlow(listener, authorizationUrl, { onUrl, exchange, persist, timeoutMs, signal }) {
  listener.serve(authorizationUrl);
  let timer;
  let onAbort;
  const stops = [
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new AuthorizationTimeout(timeoutMs)), timeoutMs);
    }),
  ];
  if (signal) {
    stops.push(new Promise((_, reject) => {
      onAbort = () => reject(signal.reason ?? new Error('aborted'));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }));
  }
  try {
    // Not awaited: a browser may only come back once the listener answers.
    const shown = onUrl(listener.startUrl, { authorizationUrl });
    if (typeof shown?.then === 'function') stops.push(Promise.resolve(shown).then(() => new Promise(() => {})));
    for (const stop of stops) stop.catch(() => {});
    for (;;) {
      const redirect = await Promise.race([listener.next(), ...stops]);
      let keys;
      try {
        keys = await exchange(redirect.query);
        listener.check();
        await persist(keys);
      } catch (err) {
        if (err instanceof StateMismatch) {
          await redirect.answer(false, 'rekey: this redirect\'s state does not match the authorisation in progress; it was ignored');
          continue;
        }
        await redirect.answer(false, `rekey: authorisation failed: ${err instanceof RekeyError ? err.message : 'an internal error'}`);
        throw err;
      }
      await redirect.answer(true, 'rekey: authorised. You can close this window.');
      return keys;
    }
  } finally {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
}

/**
 * Asks the desktop to open `url` (`xdg-open`, `open` on macOS, `start` on
 * Windows), as `rekey authorize` does. Resolves false when there is no
 * opener; never rejects. For `authorizeCode({ onUrl })`.
 */
export function openBrowser(url) {
  const [cmd, args] = process.platform === 'darwin' ? ['open', [url]]
    : process.platform === 'win32' ? ['cmd', ['/c', 'start', '""', url.replaceAll('&', '^&')]]
      : ['xdg-open', [url]];
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(cmd, args, { stdio: 'ignore', detached: true });
    } catch {
      resolve(false);
      return;
    }
    child.once('error', () => resolve(false));
    child.once('spawn', () => {
      child.unref();
      resolve(true);
    });
  });
}
