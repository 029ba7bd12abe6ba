// HTTP bodies as the component sees them: handles of the WIT resource
// `types.body`, which this host implements. The bytes stay where they are
// (the caller's Uint8Array, the Buffer a response arrived in); the component
// reads only the bodies it decides on (token and device endpoint answers)
// and passes API bodies through as handles, uncopied.
//
// jco (1.35) takes an imported resource as a JS class in the import object
// (`'rekey:oauth2/types': { Body }`): the guest's `[constructor]body` calls
// `new Body(bytes)`, `[method]body.read` calls `body.read(limit)` (a bigint).
// A Body the host hands over as `own` is kept in jco's capture table, so the
// same object comes back from a borrow (`http-send`) or in an export's result.

/** The JSPI path's body: the bytes, on the calling thread. */
export class Body {
  // Private: a token form carries the client secret or refresh token, and
  // util.inspect never shows private fields.
  #bytes;

  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    this.#bytes = bytes;
  }

  /** @param {bigint} limit  the first `limit` bytes (subarray clamps to the length) */
  read(limit) {
    return this.#bytes.subarray(0, Number(limit));
  }

  /** The bytes of a body (a static, so `Body.prototype` has only the WIT methods). */
  static bytesOf(body) {
    return body.#bytes;
  }
}

/**
 * Bytes for the caller that are their whole ArrayBuffer: a view into a
 * larger one (Node's pool slab) would expose what else lives there through
 * `.buffer`. The HTTP client already makes them so; this keeps it true for
 * any body a response may carry, at no cost when it is.
 */
export function callersBytes(bytes) {
  return bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength ? bytes : new Uint8Array(bytes);
}

/**
 * A result that may carry responses (`http-send`'s, or a `send` outcome with
 * the WIT send-error) with the body of each response mapped by `fn`: the ok
 * response, and those inside `rejected-after-refresh` and
 * `insufficient-scope`. Other results are returned as they are.
 */
export function mapResponseBodies(outcome, fn) {
  const mapped = (response) => ({ ...response, body: fn(response.body) });
  if (outcome.ok) return { ok: true, value: mapped(outcome.value) };
  const e = outcome.error;
  if (e?.tag === 'rejected-after-refresh') return { ok: false, error: { tag: e.tag, val: mapped(e.val) } };
  if (e?.tag === 'insufficient-scope') {
    return { ok: false, error: { tag: e.tag, val: { ...e.val, response: mapped(e.val.response) } } };
  }
  return outcome;
}
