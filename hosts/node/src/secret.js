// A value that must never be printed: tokens, client secrets, token sets.
// String conversion, JSON and util.inspect all show `[redacted]`; only
// `expose()` gives the value back.

import { inspect } from 'node:util';

const REDACTED = '[redacted]';

export class Secret {
  #value;

  constructor(value) {
    this.#value = value;
    Object.freeze(this);
  }

  /** The value itself: call it only where the value must go (never a log). */
  expose() {
    return this.#value;
  }

  toString() {
    return REDACTED;
  }

  toJSON() {
    return REDACTED;
  }

  [Symbol.toPrimitive]() {
    return REDACTED;
  }

  [inspect.custom]() {
    return `Secret(${REDACTED})`;
  }
}

/** The plain value of a string-or-Secret. */
export function reveal(value) {
  return value instanceof Secret ? value.expose() : value;
}

/**
 * A token set (the stored keys) whose printing hides every value that may
 * grant access; the field names stay visible, which helps debugging.
 */
export class TokenSet {
  #fields;

  constructor(fields) {
    this.#fields = fields;
    Object.freeze(this);
  }

  /** The token set as a plain object, e.g. to persist it. */
  expose() {
    return this.#fields;
  }

  /** The JSON to persist (what the guest emitted, re-serialised). */
  toJSONString() {
    return JSON.stringify(this.#fields);
  }

  get(name) {
    return this.#fields[name];
  }

  toString() {
    return `TokenSet(${Object.keys(this.#fields).join(', ')}: ${REDACTED})`;
  }

  toJSON() {
    return REDACTED;
  }

  [inspect.custom]() {
    return this.toString();
  }
}
