// The WIT `host` interface for one call, acting on that call's credential:
// HTTP (with the boundary checks as a second line behind the component's),
// and the record store (`read-record`, `emit-update-keys` as a conditional
// write); and the `signer` interface: the credential's private key signs the
// JWTs the component builds, each checked first against the settings
// (checkAssertion), the key read only then (synchronous: a small file or
// variable); its DPoP key (0.5.0) gives its public JWK and signs DPoP proofs,
// each checked first (checkProof, dpop.js). Effects only: the component runs the whole fleet protocol on the
// record and classifies every answer. Engine-agnostic: every method is
// async and resolves to {ok, value} or {ok: false, error} with the WIT
// payload, which the JSPI and worker engines turn into the import's result.
// Never throws.

import { loggableTarget, refusal } from './boundary.js';
import { InvalidSettings, StoreError } from './errors.js';
import { fromWit, toWit } from './record.js';
import { NO_DPOP_KEY, checkProof, jwkRefusal } from './dpop.js';
import { NO_KEY, checkAssertion, loadSigningKey } from './signing.js';
import { WriteUnknown } from './stores/base.js';
import { assertionRules, dpopSourceOf, signingSourceOf } from './wit-values.js';

const ALGORITHM_NAMES = { rs256: 'RS256', es256: 'ES256' };

/** Time kept in hand after a token exchange, to store its result. */
const SPEND_MARGIN_MS = 1_000;
const PURPOSES = ['api', 'token-endpoint', 'device-endpoint'];

export class CallHost {
  #instanceUrl; // the https instance_url of the keys last seen, when allowed
  #dpopKey; // the DPoP key once loaded in this call (a proof asks for its public JWK, then its signature)

  /**
   * @param {object} o
   * @param {string} [o.credential]  the credential's name, for events
   * @param {string} [o.record]  the record's name in `store`
   * @param {{read: Function, write: Function}} [o.store]  none: an authorize call (no record)
   * @param {{tokenUrl: string, apiOrigins: string[], instanceUrlOrigins: string[]}} o.settings  the WIT settings
   *   (made by toWitSettings, which keeps where their signing key is aside: see signingSourceOf)
   * @param {string} [o.deviceUrl]  the device authorization URL (an authorize call's; a send has none)
   * @param {import('./http.js').HttpClient} o.http
   * @param {number} o.deadline  epoch ms after which no refresh token is spent
   * @param {(event: import('../index.js').RekeyEvent) => void} [o.onEvent]
   * @param {AbortSignal} [o.stopSending]  once aborted, requests are refused unsent
   *   (authorize calls only: a send is never cut short, see abort.js)
   */
  constructor(o) {
    this.credential = o.credential;
    this.record = o.record;
    this.store = o.store;
    this.settings = o.settings;
    this.deviceUrl = o.deviceUrl;
    this.http = o.http;
    this.deadline = o.deadline;
    this.onEvent = o.onEvent;
    this.stopSending = o.stopSending;
    this.signing = signingSourceOf(o.settings);
    this.dpop = dpopSourceOf(o.settings);
  }

  /**
   * The WIT `signer.sign`, with the credential's key. First the host's own
   * check: `input` must be the assertion these settings describe
   * (checkAssertion: header, iss, sub, aud, iat/exp, jti, claims), else it
   * is refused naming what failed and nothing is signed. Only then is the key
   * loaded (its file or variable read now: a call that signs nothing reads
   * no key). Synchronous and never throws: the import's result, its error
   * naming no key material and quoting no input.
   * @param {string} algorithm  'rs256' | 'es256'
   * @param {Uint8Array} input  the JWT's `header.claims`
   */
  sign(algorithm, input) {
    if (!this.signing) return { ok: false, error: NO_KEY };
    let key;
    try {
      const refusal = checkAssertion(input, algorithm, assertionRules(this.settings));
      if (refusal) return { ok: false, error: refusal };
      key = loadSigningKey(this.signing);
    } catch (err) {
      // InvalidSettings says what is wrong with the key's source (never the key).
      const detail = err instanceof InvalidSettings ? err.message.replace(/^credential settings are unusable: /, '') : `the signing key could not be loaded (${err?.name ?? 'error'})`;
      return { ok: false, error: detail };
    }
    return key.sign(algorithm, input);
  }

  /**
   * The WIT `signer.dpop-public-key`: the public JWK of the credential's DPoP
   * key as JSON text, only its public members (`kty`, `crv`, `x`, `y` or
   * `kty`, `n`, `e`). The key is loaded now (its file or variable read) and
   * kept for the rest of this call. Never throws; errors name no key material.
   * @param {string} algorithm  'rs256' | 'es256'
   */
  dpopPublicKey(algorithm) {
    if (!this.dpop) return { ok: false, error: NO_DPOP_KEY };
    if (algorithm !== this.dpop.algorithm) {
      return { ok: false, error: `the credential's DPoP key is for ${ALGORITHM_NAMES[this.dpop.algorithm]}, not ${ALGORITHM_NAMES[algorithm] ?? 'an unknown algorithm'}` };
    }
    const loaded = this.#loadDpopKey();
    if (!loaded.ok) return loaded;
    try {
      return { ok: true, value: JSON.stringify(loaded.value.publicJwk()) };
    } catch (err) {
      return { ok: false, error: `the public half of ${loaded.value.where} could not be exported (${err?.code ?? err?.name ?? 'error'})` };
    }
  }

  /**
   * The WIT `signer.dpop-sign`: the signature of a DPoP proof with the
   * credential's DPoP key. First the host's own check of everything it can
   * check without the key (checkProof: typ, alg, htm, htu, iat, jti, nonce,
   * ath, nothing else); then the key, and the proof's `jwk` must be its public
   * JWK. A refusal names what failed; nothing is signed. Never throws.
   * @param {string} algorithm  'rs256' | 'es256'
   * @param {Uint8Array} input  the proof's `header.claims`
   */
  dpopSign(algorithm, input) {
    if (!this.dpop) return { ok: false, error: NO_DPOP_KEY };
    let checked;
    try {
      checked = checkProof(input, algorithm, {
        algorithm: this.dpop.algorithm,
        tokenUrl: this.settings.tokenUrl,
        // An authorisation (no record) makes no API request: its proofs are for the token URL only.
        apiRefusal: this.store ? (url) => refusal('api', url, this.#rules()) : undefined,
      });
    } catch (err) {
      return { ok: false, error: `the DPoP proof could not be checked (${err?.name ?? 'error'})` };
    }
    if ('refusal' in checked) return { ok: false, error: checked.refusal };
    const loaded = this.#loadDpopKey();
    if (!loaded.ok) return loaded;
    const key = loaded.value;
    let wrong;
    try {
      wrong = jwkRefusal(checked.jwk, key.publicJwk());
    } catch (err) {
      return { ok: false, error: `the public half of ${key.where} could not be exported (${err?.code ?? err?.name ?? 'error'})` };
    }
    if (wrong) return { ok: false, error: wrong };
    return key.sign(algorithm, input);
  }

  /** The DPoP key, loaded at its first use in this call. */
  #loadDpopKey() {
    if (this.#dpopKey) return { ok: true, value: this.#dpopKey };
    try {
      this.#dpopKey = loadSigningKey(this.dpop, 'dpop');
    } catch (err) {
      const detail = err instanceof InvalidSettings ? err.message.replace(/^credential settings are unusable: /, '') : `the DPoP key could not be loaded (${err?.name ?? 'error'})`;
      return { ok: false, error: detail };
    }
    return { ok: true, value: this.#dpopKey };
  }

  /** Where this call's requests may go (boundary.js `refusal`). */
  #rules() {
    return {
      tokenUrl: this.settings.tokenUrl,
      deviceUrl: this.deviceUrl,
      apiOrigins: this.settings.apiOrigins ?? [],
      instanceUrlOrigins: this.settings.instanceUrlOrigins ?? [],
      instanceUrl: this.#instanceUrl,
    };
  }

  /**
   * @param {string|number} purpose
   * @param {{method: string, url: string, headers: [string, string][]}} head
   * @param {Uint8Array} body  the bytes of the borrowed body (the engines resolve the handle)
   * @returns the WIT result, the response's body as bytes (the engines make it a handle)
   */
  async httpSend(purpose, head, body) {
    const req = { ...head, body };
    const kind = /** @type {'api'|'token-endpoint'|'device-endpoint'} */ (typeof purpose === 'string' ? purpose : PURPOSES[purpose]);
    const why = refusal(kind, req.url, this.#rules()) ?? (kind === 'token-endpoint' ? this.#tooLate() : undefined)
      ?? (this.stopSending?.aborted ? 'the caller stopped waiting (its signal aborted)' : undefined);
    if (why) {
      this.#event({ type: 'http', exchange: kind, method: req.method, target: loggableTarget(req.url), error: 'refused' });
      return { ok: false, error: { tag: 'refused', val: why } };
    }
    const started = performance.now();
    // A token request goes over a fresh connection: a kept-alive socket the
    // server closed meanwhile would make a refresh look "maybe arrived" (in
    // doubt) when it never left.
    const result = await this.http.send(req, { freshConnection: kind !== 'api' });
    this.#event({
      type: 'http',
      exchange: kind,
      method: req.method,
      target: loggableTarget(req.url),
      ...(result.ok ? { status: result.value.status } : { error: result.error.tag }),
      elapsedMs: performance.now() - started,
    });
    return result;
  }

  async readRecord() {
    if (!this.store) return { ok: false, error: 'this call has no credential record' };
    let stored;
    try {
      stored = await this.store.read(this.record);
    } catch (err) {
      return { ok: false, error: `the store failed (${describeFailure(err)})` };
    }
    if (!stored) return { ok: false, error: `no credential named ${JSON.stringify(this.record)} in the store` };
    this.#saw(stored.data.keys);
    return { ok: true, value: toWit(stored) };
  }

  async emitUpdateKeys(expectedVersion, witData) {
    if (!this.store) return { ok: false, error: { tag: 'failed', val: 'this call has no credential record' } };
    let data;
    try {
      data = fromWit(witData);
    } catch (err) {
      return { ok: false, error: { tag: 'failed', val: `the record cannot be stored (${err.message})` } };
    }
    let version;
    try {
      version = await this.store.write(this.record, Number(expectedVersion), data);
    } catch (err) {
      const reason = `the store failed (${describeFailure(err)})`;
      this.#event({ type: 'write-failed', reason });
      return { ok: false, error: { tag: err instanceof WriteUnknown ? 'unknown' : 'failed', val: reason } };
    }
    if (version === false) {
      this.#event({ type: 'write-conflict' });
      return { ok: false, error: { tag: 'conflict' } };
    }
    this.#saw(data.keys);
    this.#event({ type: 'record-written', version, keysChanged: data.keys !== null });
    return { ok: true, value: BigInt(version) };
  }

  // Not while too little of the call's time is left to exchange the refresh
  // token and store the answer: stopped mid-exchange, the call would leave
  // the credential in doubt.
  #tooLate() {
    if (Date.now() + this.http.options.totalTimeoutMs + SPEND_MARGIN_MS > this.deadline) {
      return "too little of the call's time is left to exchange a refresh token and store the answer";
    }
    return undefined;
  }

  #saw(keys) {
    if (!(this.settings.instanceUrlOrigins?.length > 0) || !keys) return;
    try {
      const url = JSON.parse(keys).instance_url;
      this.#instanceUrl = typeof url === 'string' ? url : undefined;
    } catch {
      this.#instanceUrl = undefined;
    }
  }

  #event(event) {
    if (!this.onEvent) return;
    try {
      this.onEvent({ credential: this.credential, ...event });
    } catch {
      // An observer must not change the outcome of a call.
    }
  }
}

/**
 * What failed: this package's store errors by their message (written to
 * hold no value), anything else by name and code only (a foreign message,
 * e.g. a custom store's or a callback's, may quote what it was given).
 */
export function describeFailure(err) {
  if (err instanceof StoreError) return err.detail ?? err.message;
  if (err instanceof WriteUnknown) return err.message;
  if (err instanceof Error) {
    const { code } = /** @type {NodeJS.ErrnoException} */ (err);
    return code ? `${err.name} ${code}` : err.name;
  }
  return typeof err;
}
