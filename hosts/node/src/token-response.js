// Importing a credential: the token response the app got from its
// authorization-code exchange becomes the stored token set, with the
// `expires_at` (Unix seconds) the component reads. The component adds it
// itself to every set it emits; a set without it never counts as expiring.

/**
 * @param {string|object} response  the token endpoint's JSON answer
 * @param {number} [nowMs]  when it was received
 */
export function keysFromTokenResponse(response, nowMs = Date.now()) {
  const fields = typeof response === 'string' ? JSON.parse(response) : { ...response };
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) {
    throw new TypeError('a token response is a JSON object');
  }
  if (typeof fields.access_token !== 'string' && typeof fields.refresh_token !== 'string') {
    throw new TypeError('a token response needs an access_token or a refresh_token');
  }
  const expiresIn = Number(fields.expires_in);
  if (fields.expires_at === undefined && Number.isFinite(expiresIn) && expiresIn > 0) {
    fields.expires_at = Math.floor(nowMs / 1000) + Math.floor(expiresIn);
  }
  return fields;
}
