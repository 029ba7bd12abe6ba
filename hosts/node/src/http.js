// `http-send`: one real HTTP exchange with Node's own http/https modules.
// No redirects are followed, the exchange is bounded in time and size, and
// failures map onto the WIT `transport-error` cases. Error texts name the
// failure, never the URL (its query may carry secrets).

import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

export const DEFAULT_HTTP = Object.freeze({
  connectTimeoutMs: 10_000,
  /** The whole exchange, body included. */
  totalTimeoutMs: 30_000,
  maxResponseBytes: 4 * 1024 * 1024,
});

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, space, tab and obs-text; never CR, LF or NUL.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;


const fail = (tag, val) => ({ tag, ...(val === undefined ? {} : { val }) });

// "Loopback" is an address, not a name. `localhost` is trusted only when
// every address it resolves to is loopback (checked in the `lookup` every
// connection resolves through), and a plain http:// connection is handed to
// the request only once its peer address is loopback: nothing is written
// before that check.

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** Whether an address as Node reports it is loopback: 127.0.0.0/8, ::1 or ::ffff:127.x.x.x. */
export function isLoopbackAddress(address) {
  const a = String(address ?? '').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
  const family = net.isIP(a);
  return family !== 0 && LOOPBACK.check(a, family === 4 ? 'ipv4' : 'ipv6');
}

const isLocalhost = (hostname) => /^localhost\.?$/i.test(hostname);

/** A refusal: `localhost` or an http:// peer that is not loopback. Nothing was sent. */
function notLoopback(what, address) {
  const err = new Error(`${what} ${address}, which is not a loopback address: nothing is sent to it `
    + '(plain http:// and localhost only ever go to 127.0.0.0/8 or ::1)');
  return Object.assign(err, { code: 'REKEY_NOT_LOOPBACK' });
}

/**
 * `dns.lookup` as every connection uses it, but `localhost` only when all its
 * answers are loopback. `resolve` has dns.lookup's signature (tests give one).
 * @param {(hostname: string, options: object,
 *   callback: (err: Error | null, addresses: import('node:dns').LookupAddress[]) => void) => void} [resolve]
 */
export function guardedLookup(resolve = dns.lookup) {
  return (hostname, options, callback) => {
    if (typeof options === 'function') [callback, options] = [options, {}];
    if (typeof options === 'number') options = { family: options };
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err);
      if (isLocalhost(hostname)) {
        const bad = addresses.find((a) => !isLoopbackAddress(a.address));
        if (bad) return callback(notLoopback('localhost resolves to', bad.address));
      }
      if (addresses.length === 0) {
        return callback(Object.assign(new Error(`${hostname} resolved to no address`), { code: 'ENOTFOUND' }));
      }
      if (options.all) return callback(null, addresses);
      return callback(null, addresses[0].address, addresses[0].family);
    });
  };
}

/**
 * `createConnection` for plain http (a request's own, or its agent's): the
 * socket reaches the request only after it connected to a loopback peer, so
 * the request's bytes are written after the check, never before.
 */
function connectLoopbackOnly(connectTimeoutMs) {
  return (options, callback) => {
    const socket = net.connect(options);
    const failed = (err) => { socket.destroy(); callback(err); };
    socket.setTimeout(connectTimeoutMs, () => failed(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })));
    socket.once('error', failed);
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.off('error', failed);
      if (!isLoopbackAddress(socket.remoteAddress)) failed(notLoopback('the http:// peer is', socket.remoteAddress));
      else callback(null, socket);
    });
    return undefined; // the callback hands the socket over
  };
}

/** A keep-alive agent whose plain-http sockets are checked as above. */
class LoopbackAgent extends http.Agent {
  constructor(options, connectTimeoutMs) {
    super(options);
    this.createConnection = connectLoopbackOnly(connectTimeoutMs);
  }
}

export class HttpClient {
  /**
   * @param {{connectTimeoutMs?: number, totalTimeoutMs?: number, maxResponseBytes?: number,
   *   resolve?: Parameters<typeof guardedLookup>[0]}} options  `resolve`: for tests
   */
  constructor(options = {}) {
    const { resolve, ...bounds } = options;
    this.options = { ...DEFAULT_HTTP, ...bounds };
    this.lookup = guardedLookup(resolve);
    this.connectHttp = connectLoopbackOnly(this.options.connectTimeoutMs);
    // Kept-alive sockets for API requests (the warm path)...
    this.agents = {
      'http:': new LoopbackAgent({ keepAlive: true }, this.options.connectTimeoutMs),
      'https:': new https.Agent({ keepAlive: true }),
    };
  }

  close() {
    for (const agent of Object.values(this.agents)) agent.destroy();
  }

  /**
   * @param {{method: string, url: string, headers: [string, string][], body: Uint8Array}} req
   * @param {{freshConnection?: boolean}} how  ...but a fresh connection for a
   *   token request: a kept-alive socket the server closed meanwhile would make
   *   a refresh look "maybe arrived" (in doubt) when it never left.
   * @returns {Promise<{ok: boolean, value?: any, error?: any}>} the WIT result: `value` when ok, else `error`
   */
  send(req, { freshConnection = false } = {}) {
    const built = buildRequest(req);
    if (built.error) return Promise.resolve({ ok: false, error: built.error });
    const { url, headers } = built;
    const { connectTimeoutMs, totalTimeoutMs, maxResponseBytes } = this.options;
    const module = url.protocol === 'https:' ? https : http;

    return new Promise((resolve) => {
      let settled = false;
      let connected = false;
      const timers = [];
      const finish = (result) => {
        if (settled) return;
        settled = true;
        for (const t of timers) clearTimeout(t);
        resolve(result);
      };
      const abort = (error) => {
        finish({ ok: false, error });
        request.destroy();
      };

      let request;
      try {
        // A fresh plain-http connection: no agent, our checked createConnection
        // (`agent: false` would make a default agent, which ignores it).
        const fresh = !freshConnection ? { agent: this.agents[url.protocol] }
          : url.protocol === 'http:' ? { createConnection: this.connectHttp } : { agent: false };
        request = module.request(url, { method: req.method, headers, lookup: this.lookup, ...fresh });
      } catch (err) {
        finish({ ok: false, error: fail('invalid-request', `cannot build the request (${err.code ?? err.name})`) });
        return;
      }

      timers.push(setTimeout(() => abort(fail('timeout')), totalTimeoutMs));
      const connectTimer = setTimeout(() => { if (!connected) abort(fail('timeout')); }, connectTimeoutMs);
      timers.push(connectTimer);
      request.on('socket', (socket) => {
        const ready = () => { connected = true; clearTimeout(connectTimer); };
        // A kept-alive socket arrives connected; a new one is ready after
        // connect (http) or after the TLS handshake (https).
        if (!socket.connecting) ready();
        else socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', ready);
      });

      request.on('error', (/** @type {NodeJS.ErrnoException} */ err) => {
        // Before the TCP connection (and for https the TLS handshake)
        // completed, nothing of the request was sent.
        if (err.code === 'REKEY_NOT_LOOPBACK') finish({ ok: false, error: fail('refused', err.message) });
        else if (!connected) finish({ ok: false, error: fail('connect', connectMessage(err)) });
        else finish({ ok: false, error: fail('other', `connection failed mid-exchange (${err.code ?? err.name})`) });
      });

      request.on('response', (res) => {
        const declared = Number(res.headers['content-length']);
        if (Number.isFinite(declared) && declared > maxResponseBytes) {
          abort(fail('too-large', BigInt(maxResponseBytes)));
          return;
        }
        const chunks = [];
        let size = 0;
        res.on('data', (chunk) => {
          size += chunk.length;
          if (size > maxResponseBytes) abort(fail('too-large', BigInt(maxResponseBytes)));
          else chunks.push(chunk);
        });
        res.on('error', (/** @type {NodeJS.ErrnoException} */ err) => {
          finish({ ok: false, error: fail('other', `response failed mid-body (${err.code ?? err.name})`) });
        });
        res.on('aborted', () => {
          finish({ ok: false, error: fail('other', 'the connection closed mid-body') });
        });
        res.on('end', () => {
          const headerPairs = [];
          for (let i = 0; i < res.rawHeaders.length; i += 2) {
            headerPairs.push([res.rawHeaders[i].toLowerCase(), res.rawHeaders[i + 1]]);
          }
          finish({ ok: true, value: { status: res.statusCode, headers: headerPairs, body: ownBytes(chunks, size) } });
        });
      });

      request.end(req.body.byteLength > 0 ? req.body : undefined);
    });
  }
}

/**
 * The chunks joined into a Uint8Array that is its whole ArrayBuffer. Not
 * `Buffer.concat`: a small result of it is a view into Node's shared pool
 * slab, and this body reaches the caller as it is, so its `.buffer` would
 * show whatever else is there (a token answer this call just received).
 * `allocUnsafeSlow` never pools, and the copy below fills every byte.
 */
function ownBytes(chunks, size) {
  const bytes = Buffer.allocUnsafeSlow(size);
  let at = 0;
  for (const chunk of chunks) at += chunk.copy(bytes, at);
  return new Uint8Array(bytes.buffer, 0, size);
}

/** Validates the request and adds `Host` and `Content-Length`, which the guest never sets. */
function buildRequest(req) {
  let url;
  try {
    url = new URL(req.url);
  } catch {
    return { error: fail('invalid-request', 'invalid URL') };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return { error: fail('invalid-request', 'URL scheme must be http or https') };
  }
  if (!TOKEN.test(req.method)) return { error: fail('invalid-request', 'invalid HTTP method') };
  // A flat [name, value, name, value, ...] list keeps order and duplicates.
  // The Host sent is always the URL's own: the component refuses a caller's
  // that names another site, and this is the second line (no domain fronting).
  const headers = ['Host', url.host];
  for (const [name, value] of req.headers) {
    if (!TOKEN.test(name)) return { error: fail('invalid-request', 'invalid header name') };
    // Never echo a value: this may be the Authorization header.
    if (!FIELD_VALUE.test(value)) return { error: fail('invalid-request', `invalid value for header ${name}`) };
    const lower = name.toLowerCase();
    // The body's length is ours to state; a caller's could only disagree.
    if (lower === 'content-length' || lower === 'transfer-encoding' || lower === 'host') continue;
    headers.push(name, value);
  }
  headers.push('Content-Length', String(req.body.byteLength));
  return { url, headers };
}

function connectMessage(err) {
  switch (err.code) {
    case 'ENOTFOUND': case 'EAI_NONAME': case 'EAI_FAIL': return 'the host name did not resolve (ENOTFOUND)';
    case 'EAI_AGAIN': return 'name resolution failed temporarily (EAI_AGAIN)';
    case 'ECONNREFUSED': return 'connection refused (ECONNREFUSED)';
    default: return `${err.code?.startsWith('ERR_TLS') || /SSL|TLS|CERT/.test(err.code ?? '') ? 'TLS handshake failed' : 'connection failed'} (${err.code ?? err.name})`;
  }
}
