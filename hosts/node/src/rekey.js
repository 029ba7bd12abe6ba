// `Rekey`: the loaded component plus everything a call needs around it.

import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_REDIRECT_URI, DEFAULT_TIMEOUT_MS, DeviceAuthorization, PendingAuthorization,
  RedirectListener, entropy, hiddenParts, importTokenResponse, runCodeFlow, witAuthorization,
} from './authorize.js';
import { checkSignal, throwIfAborted, unlessAborted } from './abort.js';
import { CallHost, describeFailure } from './call-host.js';
import { createJspiEngine, jspiAvailable } from './engine-jspi.js';
import { createWorkerEngine } from './engine-worker.js';
import {
  ComponentError, InvalidRequest, InvalidSettings, StoreError, fromAuthorizeError, fromSendError,
} from './errors.js';
import { makeFetcher } from './fetcher.js';
import { HttpClient } from './http.js';
import { CallbackStore } from './stores/memory.js';
import { RecordStoreBase } from './stores/base.js';
import { settingsJson } from './stores/settings-json.js';
import { loadSigningKey } from './signing.js';
import { RekeyResponse, dpopSourceOf, grantOf, keysJson, signingSourceOf, toWitRequest, toWitSettings } from './wit-values.js';

const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

const DEFAULTS = Object.freeze({
  mode: 'auto',
  /**
   * Wall-clock bound on one call (worker path: the call is stopped there);
   * no refresh token is spent too close to it. Above the component's lease
   * wait (60 s by default) plus a token exchange.
   */
  callTimeoutMs: 120_000,
});

/** The record name of a callback-style call without a credential name. */
const PRIVATE = 'this call';

export class Rekey {
  #engine;
  #http;
  /** The callback style's records (one process only), by credential name. */
  #callbackRecords = new CallbackStore();
  #options;
  /** Every call under way, awaited or not (a caller may have stopped waiting): for drain(). */
  #running = new Set();

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
   * persisting as its settings say. With `signal`: an abort rejects at once
   * with its reason; a call that has started runs to its end underneath (a
   * refresh is never cut between the provider's rotation and the durable
   * write of the new keys) and its result is discarded (see drain()).
   * @param {import('../index.js').SendOptions} o
   * @returns {Promise<RekeyResponse>}
   */
  async send(o) {
    return this.#send(o, undefined);
  }

  /** `send`; `own`: the records of a fetcher's calls without a credential name (see fetcher()). */
  async #send(o, own) {
    if (o === null || typeof o !== 'object') throw new InvalidRequest('send takes an object: { credential, store, settings, request }');
    const signal = checkSignal(o.signal);
    throwIfAborted(signal);
    const settings = toWitSettings(o.settings);
    const request = toWitRequest(o.request);
    const { store, record } = await this.#recordOf(o, own);
    const host = this.#callHost(o, settings, store, record);
    const outcome = await unlessAborted(signal, () => this.#track(this.#engine.call(settings, request, host, { signal })));
    if (!outcome.ok) throw fromSendError(outcome.error, (r) => new RekeyResponse(r));
    return new RekeyResponse(outcome.value);
  }

  /**
   * Keeps the credential's refresh token from dying of disuse (Microsoft:
   * 90 days idle, Xero: 60, Google's testing mode: 7): the component's
   * `keepalive`. It refreshes when the stored set was obtained at least
   * `olderThanSecs` ago (or when is unknown: an imported set), or when the
   * provider said its refresh token expires within that time; otherwise it
   * sends nothing. The refresh is send's own (the fleet's lease and mark,
   * adopting a set another worker stored meanwhile), so any number of
   * processes may run it at once and one refresh happens. No API request.
   * Errors are send's (e.g. ReauthorizationRequired for a revoked grant).
   * `signal` as for send.
   * @param {import('../index.js').KeepaliveOptions} o
   * @returns {Promise<import('../index.js').KeepaliveOutcome>}
   *   'refreshed', 'fresh' (nothing was due, or another worker renewed it
   *   meanwhile) or 'nothing-to-keep' (the grant keeps no refresh token)
   */
  async keepalive(o) {
    if (o === null || typeof o !== 'object') {
      throw new InvalidRequest('keepalive takes an object: { credential, store, settings, olderThanSecs }');
    }
    const signal = checkSignal(o.signal);
    throwIfAborted(signal);
    const olderThanSecs = wholeSeconds(o.olderThanSecs);
    const settings = toWitSettings(o.settings);
    const { store, record } = await this.#recordOf(o, undefined);
    const host = this.#callHost(o, settings, store, record);
    const outcome = await unlessAborted(signal, () => this.#track(this.#engine.invoke('keepalive', [settings, olderThanSecs], host, { signal })));
    // Its errors are send's (none carries a response: keepalive sends no API request).
    if (!outcome.ok) throw fromSendError(outcome.error, (r) => new RekeyResponse(r));
    return outcome.value;
  }

  /** The host side of a call on a credential's record (send, keepalive). */
  #callHost(o, settings, store, record) {
    return new CallHost({
      credential: typeof o.credential === 'string' ? o.credential : undefined,
      record,
      store,
      settings,
      http: this.#http,
      deadline: Date.now() + this.#options.callTimeoutMs,
      onEvent: o.onEvent ?? this.#options.onEvent,
    });
  }

  /**
   * Resolves once every call started on this instance has ended, those whose
   * callers stopped waiting (an aborted `signal`) included: e.g. before the
   * process exits, so a refresh under way is stored. Their outcomes are not
   * reported (each has done what the component decided). Never rejects.
   * @returns {Promise<void>}
   */
  async drain() {
    while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
  }

  /** Counts `call` as under way until it settles. */
  #track(call) {
    this.#running.add(call);
    const done = () => this.#running.delete(call);
    call.then(done, done);
    return call;
  }

  /** The record a call runs on: the store's, or the callback style's (`own`'s when given). */
  async #recordOf(o, own) {
    if (o.store) {
      if (typeof o.credential !== 'string' || o.credential === '') throw new InvalidRequest('a store needs a credential name');
      if (typeof o.store.read !== 'function' || typeof o.store.write !== 'function') {
        throw new InvalidRequest('a store has read(name) and write(name, expectedVersion, data): see README');
      }
      if (o.keys !== undefined || o.onUpdateKeys !== undefined) {
        throw new InvalidRequest('pass a store, or keys with onUpdateKeys, not both: the store holds the keys');
      }
      return { store: o.store, record: o.credential };
    }
    if (typeof o.onUpdateKeys !== 'function') {
      throw new InvalidRequest('pass a store, or keys with an onUpdateKeys callback (refreshed keys must go somewhere durable)');
    }
    const keys = keysJson(o.keys) ?? null;
    if (typeof o.credential === 'string' && o.credential !== '') {
      await this.#callbackRecords.seed(o.credential, keys);
      return { store: this.#callbackRecords.forCall(o.onUpdateKeys), record: o.credential };
    }
    // Without a name, the call's own record; a fetcher's calls share one
    // (seeding it with the keys it was made with never replaces newer ones).
    const records = own ?? new CallbackStore();
    await records.seed(PRIVATE, keys);
    return { store: records.forCall(o.onUpdateKeys), record: PRIVATE };
  }

  /**
   * A `fetch`-compatible function for one credential (see src/fetcher.js):
   * `(input, init) => Promise<Response>`, a standard `Response`; rekey's
   * failures reject with RekeyError, bad input with fetch's TypeError, an
   * abort with the signal's reason. Redirects are never followed.
   * @param {import('../index.js').FetcherOptions} credentialOptions
   */
  fetcher(credentialOptions) {
    // Keys with onUpdateKeys and no credential name: one private record for
    // this fetcher's lifetime, so each call continues from the newest keys
    // (the keys given are passed again on every call; alone, each call would
    // start from them and spend a refresh token already rotated).
    const own = new CallbackStore();
    return makeFetcher((o) => this.#send(o, own), credentialOptions);
  }

  // The first token set: the component's `authorize` interface, with this
  // host's effects (random bytes, the loopback listener, HTTP, the store).

  /**
   * The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636 S256)
   * through a loopback redirect (RFC 8252 §7.3): listens on
   * `http://127.0.0.1:<free port>/callback` (or `redirectUri`), hands
   * `onUrl` the listener's one-use start URL (no state or PKCE challenge in
   * it: it answers with a redirect to the authorization URL, which `onUrl`
   * also gets as `details.authorizationUrl`), lets the component check each
   * redirect (state, iss, error): one whose state is not this request's is
   * answered 400 and the wait goes on; the accepted one's code is exchanged,
   * the token response stored as the credential's keys, and only then is
   * the browser told.
   * @param {string} credential
   * @param {import('../index.js').AuthorizeCodeOptions} o
   * @returns {Promise<import('./secret.js').TokenSet>} the keys stored
   */
  async authorizeCode(credential, o = /** @type {import('../index.js').AuthorizeCodeOptions} */ ({})) {
    const persist = this.#authorizePersistence(credential, o);
    const signal = checkSignal(o.signal);
    throwIfAborted(signal);
    // The abort ends the wait for the redirect (runCodeFlow); once a
    // redirect was taken, its exchange and storing finish underneath.
    return unlessAborted(signal, () => this.#track(this.#codeFlow(credential, o, persist, signal)));
  }

  async #codeFlow(credential, o, persist, signal) {
    await this.checkSettings(o.settings);
    if (typeof o.onUrl !== 'function') {
      throw new InvalidRequest('onUrl(url) must be a function that shows the authorization URL (print it, or openBrowser)');
    }
    const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new InvalidRequest('timeoutMs must be a positive number');
    const listener = await RedirectListener.bind(o.redirectUri ?? DEFAULT_REDIRECT_URI);
    try {
      const pending = await this.#begin(o.settings, listener.redirectUri, credential, o.onEvent);
      return await runCodeFlow(listener, pending.url, {
        onUrl: o.onUrl,
        exchange: (query) => this.#finish(o.settings, pending, query, credential, o.onEvent),
        persist,
        timeoutMs,
        signal,
      });
    } finally {
      listener.close();
    }
  }

  /**
   * The device authorization grant (RFC 8628): starts it, hands the user code
   * and verification URI to `onUserCode` (awaited), polls at the server's
   * interval (5 s more after each `slow_down`) until a person approves,
   * refuses or the code expires, and stores the token response as the
   * credential's keys.
   * @param {string} credential
   * @param {import('../index.js').AuthorizeDeviceOptions} o
   * @returns {Promise<import('./secret.js').TokenSet>} the keys stored
   */
  async authorizeDevice(credential, o = /** @type {import('../index.js').AuthorizeDeviceOptions} */ ({})) {
    const persist = this.#authorizePersistence(credential, o);
    const signal = checkSignal(o.signal);
    throwIfAborted(signal);
    return unlessAborted(signal, () => this.#track(this.#deviceFlow(credential, o, persist, signal)));
  }

  async #deviceFlow(credential, o, persist, signal) {
    await this.checkSettings(o.settings);
    if (typeof o.onUserCode !== 'function') {
      throw new InvalidRequest('onUserCode(device) must be a function that shows the user code and verification URI');
    }
    const device = await this.#startDevice(o.settings, credential, o.onEvent, signal);
    throwIfAborted(signal);
    await o.onUserCode(device);
    // After an abort, polling stops at its next request (nothing more is
    // sent); keys a poll already under way brings back are still stored.
    const keys = await this.#pollDevice(o.settings, device, credential, o.onEvent, signal);
    await persist(keys);
    return keys;
  }

  /**
   * Checks `settings` by exactly the rules the component's `send` applies to
   * them (its `check-settings`): call it when a credential is created or
   * changed, so what is accepted then is not refused at `send`. The
   * authorisation flows call it before anything starts. With `signing` (or
   * `dpop`), the key is loaded too (its file or variable read) and checked
   * against the algorithm, as a send does when it signs.
   * @param {import('../index.js').Settings} settings
   * @throws {InvalidSettings} saying what is wrong and how to fix it
   */
  async checkSettings(settings) {
    const wsettings = toWitSettings(settings);
    const host = new CallHost({ settings: wsettings, http: this.#http, deadline: Date.now() + this.#options.callTimeoutMs });
    const outcome = await this.#engine.invoke('checkSettings', [wsettings], host, { timeoutMs: this.#options.callTimeoutMs });
    if ('trap' in outcome) throw new ComponentError(`the component trapped checking the settings: ${outcome.trap?.message ?? outcome.trap}`);
    if (!outcome.ok) throw new InvalidSettings(String(outcome.error));
    // A send reads the key only when it signs; a credential being created or
    // changed finds out now whether its key is there and fits.
    const signing = signingSourceOf(wsettings);
    if (signing !== undefined) loadSigningKey(signing);
    const dpop = dpopSourceOf(wsettings);
    if (dpop !== undefined) loadSigningKey(dpop, 'dpop');
  }

  /**
   * The code grant's first step alone, for a caller with its own redirect
   * listener: the authorization URL (state, PKCE S256) for `redirectUri`.
   * @param {import('../index.js').Settings} settings
   * @param {{redirectUri?: string, onEvent?: (event: import('../index.js').RekeyEvent) => void, signal?: AbortSignal}} [o]
   */
  async beginAuthorization(settings, { redirectUri, onEvent, signal } = {}) {
    if (typeof redirectUri !== 'string') {
      throw new InvalidRequest('redirectUri must be the loopback URI your listener has, e.g. http://127.0.0.1:8765/callback');
    }
    return this.#step(signal, (s) => this.#begin(settings, redirectUri, undefined, onEvent, s));
  }

  /**
   * The code grant's second step alone: checks the redirect's query (state,
   * iss, error) and exchanges the code. Stores nothing: returns the keys to
   * store (the token response with `expires_at`).
   * @param {import('../index.js').Settings} settings
   * @param {PendingAuthorization} pending
   * @param {string|URL|URLSearchParams} query  the redirect's query (or the whole URL)
   * @param {{onEvent?: (event: import('../index.js').RekeyEvent) => void, signal?: AbortSignal}} [o]
   */
  async finishAuthorization(settings, pending, query, { onEvent, signal } = {}) {
    return this.#step(signal, (s) => this.#finish(settings, pending, query, undefined, onEvent, s));
  }

  /**
   * The device grant's first step alone (RFC 8628 §3.1).
   * @param {import('../index.js').Settings} settings
   * @param {{onEvent?: (event: import('../index.js').RekeyEvent) => void, signal?: AbortSignal}} [o]
   */
  async startDeviceAuthorization(settings, { onEvent, signal } = {}) {
    return this.#step(signal, (s) => this.#startDevice(settings, undefined, onEvent, s));
  }

  /**
   * The device grant's polling alone; returns the keys to store.
   * @param {import('../index.js').Settings} settings
   * @param {DeviceAuthorization} device
   * @param {{onEvent?: (event: import('../index.js').RekeyEvent) => void, signal?: AbortSignal}} [o]
   */
  async pollDeviceAuthorization(settings, device, { onEvent, signal } = {}) {
    return this.#step(signal, (s) => this.#pollDevice(settings, device, undefined, onEvent, s));
  }

  /** A low-level authorisation step with the caller's `signal` (see abort.js). */
  #step(signal, run) {
    const s = checkSignal(signal);
    return unlessAborted(s, () => this.#track(run(s)));
  }

  async #begin(settings, redirectUri, credential, onEvent, signal = undefined) {
    const wsettings = toWitSettings(settings);
    const auth = witAuthorization(settings, redirectUri);
    const pending = await this.#authorizeCall('begin', [wsettings, auth, entropy()], { settings: wsettings, credential, onEvent, signal });
    return new PendingAuthorization(pending, auth);
  }

  async #finish(settings, pendingAuthorization, query, credential, onEvent, signal = undefined) {
    const wsettings = toWitSettings(settings);
    const { pending, authorization } = hiddenParts(pendingAuthorization, PendingAuthorization);
    const body = await this.#authorizeCall('finish', [wsettings, authorization, pending, rawQuery(query)], { settings: wsettings, credential, onEvent, signal });
    return importTokenResponse(body);
  }

  async #startDevice(settings, credential, onEvent, signal = undefined) {
    const wsettings = toWitSettings(settings);
    const auth = witAuthorization(settings, '');
    const grant = await this.#authorizeCall('deviceStart', [wsettings, auth], { settings: wsettings, deviceUrl: auth.deviceUrl, credential, onEvent, signal });
    return new DeviceAuthorization(grant, auth);
  }

  async #pollDevice(settings, device, credential, onEvent, signal = undefined) {
    const wsettings = toWitSettings(settings);
    const { grant } = hiddenParts(device, DeviceAuthorization);
    // Polling lasts as long as the code lives.
    const timeoutMs = grant.expiresIn * 1000 + this.#options.callTimeoutMs;
    const body = await this.#authorizeCall('devicePoll', [wsettings, grant], { settings: wsettings, credential, onEvent, timeoutMs, signal });
    return importTokenResponse(body);
  }

  /**
   * An authorize export. After `signal` aborts, its HTTP requests are refused
   * unsent (an authorize call touches no record: stopping it loses nothing
   * stored), so a device poll ends at its next request.
   * @param {string} op
   * @param {unknown[]} args
   * @param {{settings: object, deviceUrl?: string, credential?: string, onEvent?: Function, timeoutMs?: number, signal?: AbortSignal}} call
   */
  async #authorizeCall(op, args, { settings, deviceUrl, credential, onEvent, timeoutMs, signal }) {
    const bound = timeoutMs ?? this.#options.callTimeoutMs;
    // No record: the component stores nothing and spends no refresh token here.
    const host = new CallHost({
      credential,
      settings,
      deviceUrl,
      http: this.#http,
      deadline: Date.now() + bound,
      onEvent: onEvent ?? this.#options.onEvent,
      stopSending: signal,
    });
    const outcome = await this.#engine.invoke(op, args, host, { timeoutMs: bound, signal });
    if (!outcome.ok) throw fromAuthorizeError(outcome.error);
    return outcome.value;
  }

  /** Where the first token set goes: the store, then onUpdateKeys (both durable before the flow ends). */
  #authorizePersistence(credential, o) {
    if (typeof credential !== 'string' || credential === '') throw new InvalidRequest('a credential name must be a non-empty string');
    if (o === null || typeof o !== 'object') throw new InvalidRequest('options must be an object');
    const grant = o.settings !== null && typeof o.settings === 'object' ? grantOf(o.settings.grant) : undefined;
    if (grant === 'client-credentials' || grant === 'jwt-bearer') {
      throw new InvalidRequest(`a ${grant} credential is never authorised: send fetches its token`);
    }
    if (!o.store && typeof o.onUpdateKeys !== 'function') {
      throw new InvalidRequest('pass a store, or an onUpdateKeys callback (the new keys must go somewhere durable)');
    }
    if (o.store && (typeof o.store.create !== 'function' || typeof o.store.putKeys !== 'function')) {
      throw new InvalidRequest('the store must have create(name, {settings, keys}) and putKeys(name, keys) (the built-in stores do)');
    }
    toWitSettings(o.settings); // settings that cannot work fail before anything starts
    // Nor settings a built-in store's column cannot hold (a signing key only in memory).
    if (o.store instanceof RecordStoreBase) settingsJson(o.settings);
    return async (keys) => {
      const json = keys.toJSONString();
      try {
        // A new credential gets its settings column; an existing one new keys
        // (any lease, refresh mark or dead grant of the old grant ends).
        if (o.store && !(await o.store.create(credential, { settings: o.settings, keys: json }))) {
          await o.store.putKeys(credential, json);
        }
        await o.onUpdateKeys?.(keys);
      } catch (err) {
        // The callback's own message may quote what it was given: name it only.
        throw new StoreError(`the keys of ${JSON.stringify(credential)} could not be saved (${describeFailure(err)}); nothing else was changed`);
      }
      // Without a store, later sends of this credential in this process start from this set.
      if (!o.store) await this.#callbackRecords.seed(credential, json, { replace: true });
      const onEvent = o.onEvent ?? this.#options.onEvent;
      try {
        onEvent?.({ credential, type: 'keys-persisted' });
      } catch {
        // An observer must not change the outcome.
      }
    };
  }

  /** Stops the worker threads and closes idle connections. */
  close() {
    this.#engine.close();
    this.#http.close();
  }
}

/** keepalive's `olderThanSecs` as the WIT u64: a whole number of seconds >= 0 (a number or a bigint). */
function wholeSeconds(value) {
  const fits = typeof value === 'bigint'
    ? value >= 0n && value <= 0xffff_ffff_ffff_ffffn
    : Number.isSafeInteger(value) && value >= 0;
  if (!fits) {
    throw new InvalidRequest('olderThanSecs must be a whole number of seconds >= 0 (e.g. 7 * 24 * 3600: refresh what is a week old)');
  }
  return BigInt(value);
}

/** The redirect's raw query (without `?`), from a string, URL or URLSearchParams. */
function rawQuery(query) {
  if (query instanceof URL) return query.search.slice(1);
  if (query instanceof URLSearchParams) return query.toString();
  if (typeof query !== 'string') throw new InvalidRequest('the redirect query must be a string, URL or URLSearchParams');
  if (/^https?:\/\//i.test(query)) return new URL(query).search.slice(1);
  return query.startsWith('?') ? query.slice(1) : query;
}
