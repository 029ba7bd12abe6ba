// Typed errors: one class per WIT `send-error` case, plus what can fail
// around the component. Each has a `category` saying who can fix it (the
// same categories as the Rust host's `rekey::Category`). Messages never hold
// a token, a secret, a token-response body or a URL.

export const Category = Object.freeze({
  BAD_INPUT: 'bad-input',
  NEEDS_AUTHORIZATION: 'needs-authorization',
  SETTINGS_WRONG: 'settings-wrong',
  TOKEN_ENDPOINT: 'token-endpoint',
  REFRESH_IN_DOUBT: 'refresh-in-doubt',
  REJECTED_BY_API: 'rejected-by-api',
  TRANSPORT: 'transport',
  STORE: 'store',
  COMPONENT: 'component',
});

export class RekeyError extends Error {
  /** @type {string} */
  category = Category.COMPONENT;

  constructor(message) {
    super(message);
    this.name = new.target.name;
  }

  /** True when only a person running the authorisation flow can fix it. */
  get needsAuthorization() {
    return this.category === Category.NEEDS_AUTHORIZATION;
  }

  /** True when the same call may succeed later unchanged. */
  get retryable() {
    return [Category.TOKEN_ENDPOINT, Category.TRANSPORT].includes(this.category);
  }
}

function withCategory(category, Base = RekeyError) {
  return class extends Base {
    category = category;
  };
}

export class NotAuthenticated extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor(detail) {
    super(`not authenticated: ${detail}`);
  }
}

export class ReauthorizationRequired extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor({ status, code }) {
    super(`re-authorisation needed: the token endpoint refused the refresh with ${code} (HTTP ${status}); the stored keys were left as they were`);
    this.status = status;
    this.code = code;
  }
}

export class SettingsRejected extends withCategory(Category.SETTINGS_WRONG) {
  constructor({ status, code }) {
    super(`the token endpoint refused the credential's settings with ${code} (HTTP ${status}): check the client id, secret, client authentication, scope and extra parameters; the stored keys were left as they were`);
    this.status = status;
    this.code = code;
  }
}

export class TokenEndpointError extends withCategory(Category.TOKEN_ENDPOINT) {
  constructor(detail) {
    super(`token endpoint failed: ${detail}`);
  }
}

export class RefreshInDoubt extends withCategory(Category.REFRESH_IN_DOUBT) {
  constructor(detail) {
    super(`refresh in doubt: ${detail}; if the provider rotated the refresh token, a person must authorise again`);
  }
}

export class RejectedAfterRefresh extends withCategory(Category.REJECTED_BY_API) {
  constructor(response) {
    super(`the API rejected the request (HTTP ${response.status}) again with a freshly refreshed token`);
    /** The API's second answer. */
    this.response = response;
  }
}

export class InsufficientScope extends withCategory(Category.REJECTED_BY_API) {
  constructor({ scope, response }) {
    super(`the API refused the token for lacking scope${scope === undefined ? '' : ` (it asks for ${JSON.stringify(scope)})`}`);
    this.scope = scope;
    this.response = response;
  }
}

export class TransportError extends withCategory(Category.TRANSPORT) {
  /** @param {{tag: string, val?: unknown}} cause the WIT transport-error */
  constructor(cause) {
    super(`request failed: ${describeTransport(cause)}`);
    /** `timeout` | `connect` | `too-large` | `invalid-request` | `refused` | `other` */
    this.kind = cause.tag;
    if (cause.tag === 'invalid-request') this.category = Category.BAD_INPUT;
  }
}

export class KeysNotPersisted extends withCategory(Category.STORE) {
  constructor(detail) {
    super(`refreshed keys could not be persisted, so the request was not retried: ${detail}`);
  }

  get retryable() {
    return true;
  }
}

export class LeaseUnavailable extends withCategory(Category.TOKEN_ENDPOINT) {
  constructor(detail) {
    super(`refresh lease unavailable: ${detail}`);
  }
}

export class InvalidSettings extends withCategory(Category.SETTINGS_WRONG) {
  constructor(detail) {
    super(`credential settings are unusable: ${detail}`);
  }
}

export class InvalidKeys extends withCategory(Category.BAD_INPUT) {
  constructor(detail) {
    super(`stored keys are unusable: ${detail}`);
  }
}

/** The request itself cannot be sent (checked before the component runs). */
export class InvalidRequest extends withCategory(Category.BAD_INPUT) {
  constructor(detail) {
    super(`invalid request: ${detail}`);
  }
}

/** The store could not load the credential's keys. */
export class StoreError extends withCategory(Category.STORE) {
  constructor(detail) {
    super(`the key store failed: ${detail}`);
  }
}

/** A trap, the call timeout, or an instantiation failure: a bug or a limit. */
export class ComponentError extends withCategory(Category.COMPONENT) {
  constructor(detail) {
    super(`the rekey component failed: ${detail}`);
  }
}

export function describeTransport(e) {
  switch (e.tag) {
    case 'timeout': return 'timed out';
    case 'connect': return `could not connect: ${e.val}`;
    case 'too-large': return `response body exceeds the cap of ${e.val} bytes`;
    case 'invalid-request': return `invalid request: ${e.val}`;
    case 'refused': return `not sent: ${e.val}`;
    default: return String(e.val);
  }
}

/** The typed error for a WIT `send-error`; `toResponse` wraps carried responses. */
export function fromSendError(e, toResponse) {
  switch (e.tag) {
    case 'not-authenticated': return new NotAuthenticated(e.val);
    case 'reauthorization-required': return new ReauthorizationRequired(e.val);
    case 'settings-rejected': return new SettingsRejected(e.val);
    case 'token-endpoint': return new TokenEndpointError(e.val);
    case 'refresh-in-doubt': return new RefreshInDoubt(e.val);
    case 'rejected-after-refresh': return new RejectedAfterRefresh(toResponse(e.val));
    case 'insufficient-scope': return new InsufficientScope({ scope: e.val.scope, response: toResponse(e.val.response) });
    case 'transport': return new TransportError(e.val);
    case 'keys-not-persisted': return new KeysNotPersisted(e.val);
    case 'lease-unavailable': return new LeaseUnavailable(e.val);
    case 'invalid-settings': return new InvalidSettings(e.val);
    case 'invalid-keys': return new InvalidKeys(e.val);
    default: return new ComponentError(`unknown send-error case ${JSON.stringify(e.tag)}`);
  }
}
