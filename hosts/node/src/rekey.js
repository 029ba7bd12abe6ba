// `Rekey`: the loaded component plus everything a call needs around it.

import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CallHost, tokenSetOf } from './call-host.js';
import { createJspiEngine, jspiAvailable } from './engine-jspi.js';
import { createWorkerEngine } from './engine-worker.js';
import { ComponentError, InvalidRequest, RekeyError, StoreError, fromSendError } from './errors.js';
import { HttpClient } from './http.js';
import { Leases } from './leases.js';
import { RekeyResponse, keysJson, toWitRequest, toWitSettings } from './wit-values.js';

const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

const DEFAULTS = Object.freeze({
  mode: 'auto',
  /** Wall-clock bound on one call; no refresh token is spent too close to it. */
  callTimeoutMs: 120_000,
  /** How long a call waits for another call's refresh to finish. */
  leaseTimeoutMs: 60_000,
});

export class Rekey {
  #engine;
  #http;
  #leases = new Leases();
  /** credential -> the keys this process persisted last (callback mode) */
  #lastPersisted = new Map();
  #options;

  constructor(engine, http, options, buildInfo) {
    this.#engine = engine;
    this.#http = http;
    this.#options = options;
    /** 'jspi' or 'worker': how this instance runs the component. */
    this.mode = engine.mode;
    /** SHA-256 of the component this package was built from. */
    this.wasmSha256 = buildInfo.wasmSha256;
  }

  /**
   * Loads the component built into gen/ (`npm run build`).
   * @param {import('../index.js').RekeyOptions} [options]
   */
  static async load(options = {}) {
    const o = { ...DEFAULTS, ...options };
    const genDir = o.genDir ?? join(PACKAGE_ROOT, 'gen');
    let buildInfo;
    try {
      buildInfo = JSON.parse(await readFile(join(genDir, 'build-info.json'), 'utf8'));
    } catch {
      throw new ComponentError(`no transpiled component in ${genDir}: run \`npm run build\` (with REKEY_WASM set)`);
    }
    const mode = o.mode === 'auto' ? (jspiAvailable() ? 'jspi' : 'worker') : o.mode;
    const http = new HttpClient(o.http);
    // The JSPI pool is cheap (instances on this thread); each worker is a thread.
    const poolSize = o.poolSize ?? (mode === 'jspi' ? 64 : 8);
    let engine;
    if (mode === 'jspi') engine = await createJspiEngine({ genDir, poolSize });
    else if (mode === 'worker') engine = await createWorkerEngine({ genDir, poolSize, callTimeoutMs: o.callTimeoutMs });
    else throw new TypeError("mode must be 'auto', 'jspi' or 'worker'");
    return new Rekey(engine, http, o, buildInfo);
  }

  /**
   * Sends one request with the credential's access token, refreshing and
   * persisting as its settings say.
   * @param {import('../index.js').SendOptions} o
   * @returns {Promise<RekeyResponse>}
   */
  async send(o) {
    const settings = toWitSettings(o.settings);
    const request = toWitRequest(o.request);
    const credential = o.credential ?? Symbol('private to this call');
    if (o.store && typeof credential !== 'string') throw new InvalidRequest('a store needs a credential name');
    if (!o.store && typeof o.onUpdateKeys !== 'function') {
      throw new InvalidRequest('pass a store, or keys with an onUpdateKeys callback (refreshed keys must go somewhere durable)');
    }
    const persistence = o.store ? this.#storePersistence(o.store, credential, o.onUpdateKeys) : this.#callbackPersistence(o, credential);
    const keys = o.store ? await loadFromStore(o.store, credential) : keysJson(o.keys);

    const host = new CallHost({
      credential,
      tokenUrl: settings.tokenUrl,
      http: this.#http,
      leases: this.#leases,
      leaseTimeoutMs: this.#options.leaseTimeoutMs,
      deadline: Date.now() + this.#options.callTimeoutMs,
      onEvent: o.onEvent ?? this.#options.onEvent,
      ...persistence,
    });
    let outcome;
    try {
      outcome = await this.#engine.call(settings, keys, request, host);
    } finally {
      host.end();
    }
    if (!outcome.ok) throw fromSendError(outcome.error, (r) => new RekeyResponse(r));
    return new RekeyResponse(outcome.value);
  }

  /**
   * A `fetch`-shaped function for one credential: it takes fetch's arguments
   * and resolves to a standard `Response`; failures reject with RekeyError.
   * @param {Omit<import('../index.js').SendOptions, 'request'>} credentialOptions
   */
  fetcher(credentialOptions) {
    return async (input, init) => {
      const req = new Request(input, init);
      if (req.redirect !== 'follow' && req.redirect !== 'manual') {
        throw new InvalidRequest("rekey never follows redirects: redirect 'error' is not supported");
      }
      const body = req.body ? new Uint8Array(await req.arrayBuffer()) : undefined;
      const res = await this.send({
        ...credentialOptions,
        request: { method: req.method, url: req.url, headers: [...req.headers], body },
      });
      return res.toResponse();
    };
  }

  /** Stops the worker threads and closes idle connections. */
  close() {
    this.#engine.close();
    this.#http.close();
  }

  #storePersistence(store, credential, onUpdateKeys) {
    return {
      loadKeys: () => loadFromStore(store, credential),
      saveKeys: async (json) => {
        await store.save(credential, json);
        await onUpdateKeys?.(tokenSetOf(json));
      },
      acquireStoreLease: typeof store.acquireLease === 'function' ? (c) => store.acquireLease(c) : undefined,
    };
  }

  #callbackPersistence(o, credential) {
    return {
      // Without a store to re-read, the lease hands over what this process
      // persisted last for the credential: a call that lost the race adopts
      // the winner's tokens instead of spending a rotated refresh token.
      loadKeys: async () => (o.loadKeys ? keysJson(await o.loadKeys()) : this.#lastPersisted.get(credential)),
      saveKeys: async (json) => {
        await o.onUpdateKeys(tokenSetOf(json));
        if (typeof credential === 'string') this.#lastPersisted.set(credential, json);
      },
    };
  }
}

async function loadFromStore(store, credential) {
  try {
    return keysJson(await store.load(credential));
  } catch (err) {
    if (err instanceof RekeyError) throw err;
    throw new StoreError(`cannot load the keys of ${JSON.stringify(credential)} (${err?.code ?? err?.name ?? 'error'})`);
  }
}
