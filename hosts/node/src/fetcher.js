// `rk.fetcher(...)`: a function with `fetch`'s signature for one credential,
// so code written against `fetch` gains rekey by swapping the function. The
// request is read with the WHATWG `Request` (Node's undici), which gives
// fetch's own handling of `input`/`init`: a URL, string or `Request`, every
// body type fetch takes (string, ArrayBuffer, typed arrays, URLSearchParams,
// Blob, FormData, a stream with `duplex: 'half'`, with the same default
// Content-Type), headers, method, `signal`. The whole body is read first
// (a retry after a refresh sends the same bytes again); an abort while it is
// read rejects at once and cancels the body: nothing is sent.
//
// Answers: as fetch, a body with Content-Encoding gzip, deflate or br is
// decoded (the Response then has no Content-Encoding or Content-Length, which
// described the encoded bytes; fetch keeps them); an unknown coding is left
// as it came. An answer a `Response` cannot carry (a status outside 200–599,
// such as LinkedIn's 999, or a body that does not decode) rejects with
// UnrepresentableResponse, which holds the answer whole in `.response`.
//
// Redirects: rekey never follows one (a followed redirect would carry the
// access token, or make rekey choose where it may go). With `redirect:
// 'follow'` (fetch's default) or 'manual', a 3xx comes back as it is, as
// Node's fetch gives it for 'manual'; with 'error' a redirect status rejects
// with a TypeError, as fetch does.

import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from 'node:zlib';
import { abortReason } from './abort.js';
import { InvalidRequest, UnrepresentableResponse } from './errors.js';
import { RekeyResponse } from './wit-values.js';

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/**
 * @param {(o: object) => Promise<import('./wit-values.js').RekeyResponse>} send  `rk.send`
 * @param {object} credentialOptions  what `send` takes, without `request`
 * @returns {(input: string | URL | Request, init?: RequestInit) => Promise<Response>}
 */
export function makeFetcher(send, credentialOptions) {
  if (credentialOptions === null || typeof credentialOptions !== 'object') {
    throw new InvalidRequest('fetcher takes the options of send without request: { credential, store, settings } (or keys and onUpdateKeys)');
  }
  if ('request' in credentialOptions) {
    throw new InvalidRequest('fetcher takes no request: each call of the function it returns gives one, as fetch(input, init)');
  }
  const { signal: everyCall, ...options } = credentialOptions;
  return async function rekeyFetch(input, init) {
    const req = new Request(input, init); // fetch's own TypeErrors for bad input
    // A signal given to fetcher() (e.g. a shutdown) and the call's own.
    const signal = everyCall ? AbortSignal.any([everyCall, req.signal]) : req.signal;
    signal.throwIfAborted();
    const body = req.body === null ? undefined : await readBody(req.body, signal);
    const res = await send({
      ...options,
      signal,
      request: { method: req.method, url: req.url, headers: [...req.headers], body },
    });
    if (req.redirect === 'error' && REDIRECT_STATUSES.has(res.status)) {
      throw new TypeError(`fetch failed: the API answered a redirect (HTTP ${res.status}) and redirect is 'error'`);
    }
    const response = decoded(res, req.method).toResponse();
    // fetch's Response says where it came from; a constructed one cannot
    // (its url is ''), so the request's URL is set on this one (rekey never
    // follows a redirect: it is the URL answered). `clone()` does not keep it.
    Object.defineProperty(response, 'url', { value: req.url, enumerable: true });
    return response;
  };
}

/**
 * The whole request body, or a rejection with the signal's reason as soon as
 * it aborts (`Request.arrayBuffer()` would wait for a stream that may never
 * end); the stream is then cancelled with that reason.
 * @param {ReadableStream<Uint8Array>} stream
 * @param {AbortSignal} signal
 */
async function readBody(stream, signal) {
  const reader = stream.getReader();
  let onAbort;
  const aborted = new Promise((_, reject) => {
    onAbort = () => {
      reject(abortReason(signal));
      reader.cancel(abortReason(signal)).catch(() => {}); // its own failure changes nothing: nothing is sent
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
  aborted.catch(() => {}); // rejected once the read has ended too: not unhandled
  try {
    const chunks = [];
    for (;;) {
      const { done, value } = await Promise.race([reader.read(), aborted]);
      if (done) break;
      if (!(value instanceof Uint8Array)) throw new TypeError('fetch failed: a request body stream must give Uint8Array chunks');
      chunks.push(value);
    }
    return new Uint8Array(Buffer.concat(chunks));
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

const DECODERS = { gzip: gunzipSync, 'x-gzip': gunzipSync, deflate: inflate, br: brotliDecompressSync };

/** Deflate as servers send it: zlib-wrapped (RFC 9110) or, as some do, raw. */
function inflate(bytes) {
  try {
    return inflateSync(bytes);
  } catch {
    return inflateRawSync(bytes);
  }
}

/**
 * The answer with its body decoded as fetch decodes it (Content-Encoding
 * gzip, deflate, br, applied in order), or as it came when it has no body or
 * a coding fetch does not decode either.
 * @param {RekeyResponse} res
 * @param {string} method
 */
function decoded(res, method) {
  const codings = res.headers.filter(([k]) => k === 'content-encoding').flatMap(([, v]) => v.split(','))
    .map((c) => c.trim().toLowerCase()).filter((c) => c !== '' && c !== 'identity');
  if (codings.length === 0 || res.body.length === 0 || method === 'HEAD') return res;
  if (!codings.every((c) => Object.hasOwn(DECODERS, c))) return res;
  let body = res.body;
  try {
    for (const c of [...codings].reverse()) body = DECODERS[c](body); // the last applied first
  } catch (err) {
    throw new UnrepresentableResponse(`its body does not decode as its Content-Encoding (${codings.join(', ')}) says (${err instanceof Error ? err.message : String(err)})`, res);
  }
  const headers = res.headers.filter(([k]) => k !== 'content-encoding' && k !== 'content-length');
  return new RekeyResponse({ status: res.status, headers, body: new Uint8Array(body) });
}
