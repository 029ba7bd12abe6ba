// The WIT `host` interface for one `send` call: HTTP, persistence and the
// refresh lease, acting on that call's credential. Engine-agnostic: every
// method is async and returns {ok, value} or {ok: false, error} with the WIT
// error payload, which the JSPI and worker engines turn into the import's
// result. Never throws.

import { LeaseTimeout } from './leases.js';
import { TokenSet } from './secret.js';

/** Time kept in hand after a token exchange, to persist its result. */
const SPEND_MARGIN_MS = 1_000;

export class CallHost {
  #lease = null; // release function while this call holds the refresh lease

  /**
   * @param {object} o
   * @param {string|symbol} o.credential  single-flight key (a symbol: private to this call)
   * @param {string} o.tokenUrl
   * @param {import('./http.js').HttpClient} o.http
   * @param {import('./leases.js').Leases} o.leases
   * @param {() => Promise<string|undefined>} o.loadKeys  the keys stored now
   * @param {(json: string) => Promise<void>} o.saveKeys  durable when it resolves
   * @param {(credential: string) => Promise<() => void> | undefined} [o.acquireStoreLease]
   * @param {number} o.leaseTimeoutMs
   * @param {number} o.deadline  epoch ms after which no refresh token is spent
   * @param {(event: object) => void} o.onEvent
   */
  constructor(o) {
    Object.assign(this, o);
  }

  async httpSend(req) {
    const toTokenEndpoint = req.url === this.tokenUrl;
    if (toTokenEndpoint) {
      const refusal = this.#refuseTokenRequest(req.url);
      if (refusal) return { ok: false, error: { tag: 'refused', val: refusal } };
    }
    const started = performance.now();
    const result = await this.http.send(req, { freshConnection: toTokenEndpoint });
    this.#event({
      type: 'http',
      exchange: toTokenEndpoint ? 'token-endpoint' : 'api',
      method: req.method,
      target: loggableTarget(req.url),
      ...(result.ok ? { status: result.value.status } : { error: result.error.tag }),
      elapsedMs: performance.now() - started,
    });
    return result;
  }

  async emitUpdateKeys(json) {
    try {
      await this.saveKeys(json);
    } catch (err) {
      // The callback's own message may quote what it was given: name it only.
      const reason = `the keys could not be saved (${describeFailure(err)})`;
      this.#event({ type: 'keys-not-persisted', reason });
      return { ok: false, error: reason };
    }
    this.#event({ type: 'keys-persisted' });
    // Durable: others may now refresh from what was stored.
    this.#endLease();
    return { ok: true };
  }

  async acquireRefreshLease() {
    if (!this.#lease) {
      const started = performance.now();
      let release;
      try {
        release = await this.leases.acquire(this.credential, this.leaseTimeoutMs);
      } catch (err) {
        return { ok: false, error: err instanceof LeaseTimeout ? err.message : `the lease failed (${describeFailure(err)})` };
      }
      if (this.acquireStoreLease) {
        try {
          const releaseStore = await this.acquireStoreLease(this.credential);
          const releaseLocal = release;
          release = () => { try { releaseStore?.(); } finally { releaseLocal(); } };
        } catch (err) {
          release();
          return { ok: false, error: `the store's lease could not be taken (${describeFailure(err)})` };
        }
      }
      this.#lease = release;
      this.#event({ type: 'lease-acquired', waitedMs: performance.now() - started });
    }
    try {
      const keys = await this.loadKeys();
      return { ok: true, value: { keys, inDoubt: false } };
    } catch (err) {
      return { ok: false, error: `the stored keys could not be re-read (${describeFailure(err)})` };
    }
  }

  async releaseRefreshLease() {
    this.#endLease();
    return { ok: true };
  }

  /** Ends any lease still held: the call returned, failed or trapped. */
  end() {
    this.#endLease();
  }

  #endLease() {
    const release = this.#lease;
    this.#lease = null;
    release?.();
  }

  // A refresh token goes out only where it may (https, or plain http on
  // loopback: RFC 6749 §3.2) and only while the call can still persist the
  // answer: a timeout after the provider rotated the token would lose it.
  #refuseTokenRequest(url) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      return undefined; // http.send reports the invalid URL
    }
    if (parsed.protocol === 'http:' && !isLoopback(parsed.hostname)) {
      return 'the token endpoint is plain http on a host that is not loopback';
    }
    if (Date.now() + this.http.options.totalTimeoutMs + SPEND_MARGIN_MS > this.deadline) {
      return "too little of the call's time is left to exchange and persist a refresh token";
    }
    return undefined;
  }

  #event(event) {
    if (!this.onEvent) return;
    const credential = typeof this.credential === 'string' ? this.credential : undefined;
    try {
      this.onEvent({ credential, ...event });
    } catch {
      // An observer must not change the outcome of a call.
    }
  }
}

export function isLoopback(hostname) {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
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

/** What failed, by name and code only: an error's message may quote what it was given. */
export function describeFailure(err) {
  if (err instanceof Error) return err.code ? `${err.name} ${err.code}` : err.name;
  return typeof err;
}

/** Wraps emitted keys for a user callback: printing it shows no value. */
export function tokenSetOf(json) {
  return new TokenSet(JSON.parse(json));
}
