// @rekey/node: OAuth2 refresh-and-retry for Node.js, run by the rekey
// WebAssembly component (rekey:oauth2@0.5.0).

export { Rekey } from './rekey.js';
export { COMPONENT_PATH, COMPONENT_SHA256 } from './component.js';
export { MemoryStore } from './stores/memory.js';
export { SqliteStore } from './stores/sqlite.js';
export { PostgresStore } from './stores/postgres.js';
export { WriteUnknown } from './stores/base.js';
export { Secret, TokenSet } from './secret.js';
export { RekeyResponse } from './wit-values.js';
export { keysFromTokenResponse } from './token-response.js';
export { DeviceAuthorization, PendingAuthorization, StartUrlReused, importTokenResponse, openBrowser } from './authorize.js';
export { jspiAvailable } from './engine-jspi.js';
export {
  Category,
  RekeyError,
  NotAuthenticated,
  ReauthorizationRequired,
  SettingsRejected,
  TokenEndpointError,
  RefreshInDoubt,
  RejectedAfterRefresh,
  InsufficientScope,
  UnrepresentableResponse,
  TransportError,
  KeysNotPersisted,
  LeaseUnavailable,
  InvalidSettings,
  InvalidKeys,
  InvalidRequest,
  StoreError,
  StoreUnavailable,
  ComponentError,
  AccessDenied,
  StateMismatch,
  IssuerMismatch,
  AuthorizationProviderError,
  DeviceCodeExpired,
  AuthorizationTimeout,
  AuthorizationRejected,
  ListenerError,
} from './errors.js';
