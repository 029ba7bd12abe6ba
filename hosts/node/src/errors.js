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
  /** @type {import('../index.js').CategoryName} */
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
    return /** @type {string[]} */ ([Category.TOKEN_ENDPOINT, Category.TRANSPORT]).includes(this.category);
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

/**
 * The API answered, but not in a form a WHATWG `Response` can carry: a status
 * outside 200–599 (e.g. LinkedIn's 999), or a body its Content-Encoding does
 * not decode. The answer is kept whole in `response`; the request was sent.
 */
export class UnrepresentableResponse extends withCategory(Category.REJECTED_BY_API) {
  constructor(detail, response) {
    super(`the API's answer (HTTP ${response.status}) cannot be given as a fetch Response: ${detail}; it is in error.response`);
    /** The API's answer as it came (a RekeyResponse). */
    this.response = response;
  }
}

export class TransportError extends withCategory(Category.TRANSPORT) {
  /** @param {{tag: import('../index.js').TransportError['kind'], val?: unknown}} cause the WIT transport-error */
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

  /** Never: the provider may have rotated the refresh token, and a retry would spend the old one again. */
  get retryable() {
    return false;
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

/** The record store failed (an operator function, opening a store, or a read or write). */
export class StoreError extends withCategory(Category.STORE) {
  constructor(detail) {
    super(`the record store failed: ${detail}`);
    /** What failed, without the prefix; never a value. */
    this.detail = detail;
  }
}

/** The component could not read or write the credential's record; nothing was spent. */
export class StoreUnavailable extends withCategory(Category.STORE) {
  constructor(detail) {
    super(`the credential's record store is unavailable: ${detail}`);
  }

  get retryable() {
    return true;
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

/**
 * The typed error for a WIT `send-error`; `toResponse` wraps carried
 * responses. `sendErrorCase` keeps the WIT case name (e.g. `refresh-in-doubt`).
 */
export function fromSendError(e, toResponse) {
  const err = /** @type {RekeyError & {sendErrorCase?: string}} */ (sendErrorOf(e, toResponse));
  err.sendErrorCase = e.tag;
  return err;
}

function sendErrorOf(e, toResponse) {
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
    case 'store-unavailable': return new StoreUnavailable(e.val);
    case 'invalid-settings': return new InvalidSettings(e.val);
    case 'invalid-keys': return new InvalidKeys(e.val);
    default: return new ComponentError(`unknown send-error case ${JSON.stringify(e.tag)}`);
  }
}

// The first token set (`authorizeCode`, `authorizeDevice`): one class per
// WIT `authorize-error` case that is not a send-error's, plus the host's own
// (the redirect timeout, the loopback listener). Messages say what happened
// and that nothing was stored; never a code, verifier, token or provider text.

/** The person (or the provider for them) refused: `access_denied`. */
export class AccessDenied extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor() {
    super('authorisation was refused (access_denied); nothing was stored');
  }
}

/** The redirect's `state` was missing or not this request's (CSRF, a stale tab). */
export class StateMismatch extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor() {
    super("the redirect's state does not match this authorisation request (a stale or forged redirect); nothing was exchanged or stored");
  }
}

/** The redirect's `iss` named another issuer (RFC 9207 mix-up). */
export class IssuerMismatch extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor() {
    super("the redirect's iss names another issuer than the credential's (RFC 9207 mix-up); nothing was exchanged or stored");
  }
}

/** The provider answered the authorisation request with another OAuth error (`code`), or with no code (`no_code`). */
export class AuthorizationProviderError extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor(code) {
    super(`the provider answered the authorisation request with error ${code}; nothing was stored`);
    this.code = code;
    // The scope asked for comes from the settings: approving again cannot fix it.
    if (code === 'invalid_scope') this.category = Category.SETTINGS_WRONG;
  }
}

/** The device code expired before anyone approved it. */
export class DeviceCodeExpired extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor() {
    super('the device code expired before it was approved; nothing was stored');
  }
}

/** No redirect arrived at the loopback listener in time. */
export class AuthorizationTimeout extends withCategory(Category.NEEDS_AUTHORIZATION) {
  constructor(timeoutMs) {
    super(`no redirect arrived within ${timeoutMs / 1000} s; nothing was stored (authorise again)`);
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The token or device endpoint refused the request (RFC 6749 §5.2):
 * `invalid_grant` (a code expired or used: authorise again) or the client's
 * settings (`invalid_client`, ...).
 */
export class AuthorizationRejected extends RekeyError {
  constructor({ status, code }) {
    super(`the token endpoint refused the request with ${code} (HTTP ${status}); nothing was stored`);
    this.status = status;
    this.code = code;
    this.category = code === 'invalid_grant' ? Category.NEEDS_AUTHORIZATION : Category.SETTINGS_WRONG;
  }
}

/** The loopback redirect listener could not be set up. */
export class ListenerError extends withCategory(Category.TRANSPORT) {
  constructor(detail) {
    super(`the loopback redirect listener failed: ${detail}`);
  }
}

/** The typed error for a WIT `authorize-error`. */
export function fromAuthorizeError(e) {
  switch (e.tag) {
    case 'invalid-settings': return new InvalidSettings(e.val);
    case 'access-denied': return new AccessDenied();
    case 'state-mismatch': return new StateMismatch();
    case 'issuer-mismatch': return new IssuerMismatch();
    case 'provider-error': return new AuthorizationProviderError(e.val);
    case 'expired': return new DeviceCodeExpired();
    case 'rejected': return new AuthorizationRejected(e.val);
    case 'endpoint': return new TokenEndpointError(e.val);
    case 'transport': return new TransportError(e.val);
    default: return new ComponentError(`unknown authorize-error case ${JSON.stringify(e.tag)}`);
  }
}
