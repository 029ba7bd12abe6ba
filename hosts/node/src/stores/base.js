// What every built-in store shares: the operator functions (create a
// credential, put keys, clear a refresh mark, forget a dead grant, list and
// show), written once on top of each store's primitives. Each operator
// write is a conditional write like the component's (version + 1), so one
// racing a refresh makes that refresh's next write conflict rather than be
// lost silently.
//
// A store's primitives:
//   read(name)                       -> {version, data} | undefined
//   write(name, expectedVersion, data) -> new version | false (conflict);
//                                       throws (failed) or WriteUnknown
//   insert(name, settingsJson, keys) -> true | false (it existed)
//   rows()                           -> [{name, settings, updatedAt, version, data}]

import { StoreError } from '../errors.js';
import { keysText, recordOf } from '../record.js';
import { settingsJson } from './settings-json.js';

/** The store cannot tell whether a write landed (e.g. the connection broke after COMMIT was sent). */
export class WriteUnknown extends Error {
  constructor(message) {
    super(message);
    this.name = 'WriteUnknown';
  }
}

const OPERATOR_ATTEMPTS = 50;

export class RecordStoreBase {
  // The primitives each store implements (see above).
  /** @returns {Promise<import('../../index.js').StoredRecord | undefined>} */
  async read(name) { throw new TypeError(`${this.constructor.name} does not implement read`); }
  /** @returns {Promise<number | false>} */
  async write(name, expectedVersion, data) { throw new TypeError(`${this.constructor.name} does not implement write`); }
  /** @returns {Promise<boolean>} */
  async insert(name, settings, keys) { throw new TypeError(`${this.constructor.name} does not implement insert`); }
  /** @returns {Promise<Array<{name: string, settings: string, updatedAt: number, version: number, data: import('../../index.js').CredentialRecord}>>} */
  async rows(only) { throw new TypeError(`${this.constructor.name} does not implement rows`); }

  /**
   * Creates the credential (version 0, no lease, mark or dead grant), the
   * settings column in the Rust host's JSON format. Resolves false when it
   * exists already (nothing is changed), so many workers may race to it.
   * @param {string} name
   * @param {{settings: import('../../index.js').Settings, keys?: string|object}} o
   */
  async create(name, { settings, keys } = /** @type {any} */ ({})) {
    checkName(name);
    const json = settingsJson(settings);
    return this.insert(name, json, checkedKeys(keys));
  }

  /**
   * Replaces the keys (an import, a new authorisation), and ends any lease,
   * refresh mark and dead grant: the new grant starts clean. A refresh
   * running meanwhile then finds the record changed and never writes over it.
   */
  async putKeys(name, keys) {
    const text = checkedKeys(keys);
    if (text === null) throw new StoreError('putKeys needs keys (a token set)');
    return this.update(name, () => recordOf(text));
  }

  /**
   * Lifts the refresh mark: after checking with the provider that the stored
   * refresh token is still good (or after putKeys). Only while no refresh runs.
   */
  async clearRefreshMark(name) {
    return this.update(name, (d) => ({ ...d, refreshMark: null }));
  }

  /** Forgets that the token endpoint declared the grant dead. */
  async forgetDeadGrant(name) {
    return this.update(name, (d) => ({ ...d, deadGrant: null }));
  }

  /** The stored keys as JSON text, or undefined (no credential, or no keys yet). */
  async loadKeys(name) {
    return (await this.read(name))?.data.keys ?? undefined;
  }

  /** Every credential, as `show` describes it. */
  async list() {
    return (await this.rows()).map(describe);
  }

  /** What an operator may see of one credential (no token or secret), or undefined. */
  async show(name) {
    return (await this.rows(name)).map(describe)[0];
  }

  /** Applies `change` to the record with a conditional write, re-reading on conflict. */
  async update(name, change) {
    checkName(name);
    for (let i = 0; i < OPERATOR_ATTEMPTS; i += 1) {
      const stored = await this.read(name);
      if (!stored) throw new StoreError(`no credential named ${JSON.stringify(name)}`);
      const version = await this.write(name, stored.version, change(stored.data));
      if (version !== false) return version;
    }
    throw new StoreError(`the record of ${JSON.stringify(name)} kept changing; try again`);
  }
}

export function checkName(name) {
  if (typeof name !== 'string' || name === '') throw new TypeError('a credential name must be a non-empty string');
}

function checkedKeys(keys) {
  const text = keysText(keys);
  if (text === null) return null;
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new StoreError('the keys are not JSON');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new StoreError('the keys are not a JSON object');
  return text;
}

function describe({ name, settings, updatedAt, version, data }) {
  let keyFields;
  let expiresAt;
  try {
    const k = data.keys === null ? null : JSON.parse(data.keys);
    keyFields = k ? Object.keys(k) : [];
    expiresAt = typeof k?.expires_at === 'number' ? k.expires_at : undefined;
  } catch {
    keyFields = undefined;
  }
  let shownSettings;
  try {
    shownSettings = JSON.parse(settings);
    if (shownSettings?.client_secret?.literal !== undefined) shownSettings.client_secret = { literal: '[redacted]' };
    // Absent (the default, and every column written before 0.3 had it): the refresh-token grant.
    if (shownSettings && typeof shownSettings === 'object') shownSettings.grant ??= 'refresh-token';
  } catch {
    shownSettings = undefined;
  }
  return {
    name,
    version,
    updatedAt,
    settings: shownSettings,
    hasKeys: data.keys !== null,
    keyFields,
    expiresAt,
    lease: data.lease,
    refreshMark: data.refreshMark,
    deadGrant: data.deadGrant,
  };
}
