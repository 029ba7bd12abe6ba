// AbortSignal for rekey's calls. A caller that aborts stops WAITING: the
// promise it holds rejects at once with the signal's reason (an AbortError
// DOMException, as `fetch` rejects), but a call that has started is never cut
// short. A refresh may be between the provider's rotation of the refresh
// token and the durable write of the new one; stopping there would lose the
// only live token. So the call runs to its end underneath (its result is
// discarded) and `Rekey.drain()` waits for it. What has not started yet
// (an already-aborted signal, a call still queued for a free instance) never
// starts: nothing is sent.

import { InvalidRequest } from './errors.js';

/** Throws unless `signal` is undefined or an AbortSignal. */
export function checkSignal(signal) {
  if (signal === undefined || signal === null) return undefined;
  if (typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function') {
    throw new InvalidRequest('signal must be an AbortSignal (e.g. AbortSignal.timeout(ms) or an AbortController\'s)');
  }
  return /** @type {AbortSignal} */ (signal);
}

/** What an aborted call rejects with: the signal's reason, as `fetch` does. */
export function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** Throws the signal's reason when it has aborted: nothing has started. */
export function throwIfAborted(signal) {
  if (signal?.aborted) throw abortReason(signal);
}

/**
 * Runs `start()` (which begins the call) unless `signal` has aborted, and
 * settles as the call does, or rejects with the signal's reason as soon as it
 * aborts; the call then goes on to its end, its outcome discarded.
 * @template T
 * @param {AbortSignal | undefined} signal
 * @param {() => Promise<T>} start
 * @returns {Promise<T>}
 */
export function unlessAborted(signal, start) {
  if (!signal) return start();
  if (signal.aborted) return Promise.reject(abortReason(signal));
  const call = start();
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    // Handled here either way: an abandoned call's failure is not an unhandled rejection.
    call.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
