// `rk.fetcher(...)`: a function with `fetch`'s signature for one credential,
// so code written against `fetch` gains rekey by swapping the function. The
// request is read with the WHATWG `Request` (Node's undici), which gives
// fetch's own handling of `input`/`init`: a URL, string or `Request`, every
// body type fetch takes (string, ArrayBuffer, typed arrays, URLSearchParams,
// Blob, FormData, a stream with `duplex: 'half'`, with the same default
// Content-Type), headers, method, `signal`. The whole body is read first:
// a retry after a refresh sends the same bytes again.
//
// Redirects: rekey never follows one (a followed redirect would carry the
// access token, or make rekey choose where it may go). With `redirect:
// 'follow'` (fetch's default) or 'manual', a 3xx comes back as it is, as
// Node's fetch gives it for 'manual'; with 'error' a redirect status rejects
// with a TypeError, as fetch does.

import { InvalidRequest } from './errors.js';

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
    const body = req.body === null ? undefined : new Uint8Array(await req.arrayBuffer());
    const res = await send({
      ...options,
      signal,
      request: { method: req.method, url: req.url, headers: [...req.headers], body },
    });
    if (req.redirect === 'error' && REDIRECT_STATUSES.has(res.status)) {
      throw new TypeError(`fetch failed: the API answered a redirect (HTTP ${res.status}) and redirect is 'error'`);
    }
    const response = res.toResponse();
    // fetch's Response says where it came from; a constructed one cannot
    // (its url is ''), so the request's URL is set on this one (rekey never
    // follows a redirect: it is the URL answered). `clone()` does not keep it.
    Object.defineProperty(response, 'url', { value: req.url, enumerable: true });
    return response;
  };
}
