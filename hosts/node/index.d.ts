// Types for @rekey/node (src/index.js).

export type ClientAuth = 'basic' | 'post';
export type Strategy = 'on-auth-failure' | 'every-request' | 'before-expiry';

/** A credential's settings (the WIT `settings`, camelCase, with defaults). */
export interface Settings {
  /** Absolute https URL of the token endpoint (http only on loopback). */
  tokenUrl: string;
  clientId: string;
  /** Omit for public clients. */
  clientSecret?: string | Secret;
  /** Default 'basic' (client_secret_basic). */
  clientAuth?: ClientAuth;
  /** Sent as `scope` on refresh. */
  scope?: string;
  /** Provider extras added to the refresh form, e.g. [['format', 'json']]. */
  extraParams?: Array<[string, string]> | Record<string, string>;
  /** Default 'on-auth-failure'. */
  strategy?: Strategy;
  /** For 'before-expiry': refresh when the token expires within this many seconds (default 60). */
  expiryMarginSecs?: number;
  /** Statuses that mean "token rejected" (default [401]). */
  rejectedStatuses?: number[];
}

export type HeadersInput = Array<[string, string]> | Record<string, string> | Headers | Map<string, string>;

export interface RequestInit {
  /** Default 'GET'. */
  method?: string;
  url: string | URL;
  headers?: HeadersInput;
  body?: string | Uint8Array | ArrayBuffer | ArrayBufferView;
}

/** The stored token set: the provider's token response plus `expires_at` (Unix seconds). */
export type Keys = Record<string, unknown>;

/** Where a credential's keys live. */
export interface KeyStore {
  /** The stored keys (JSON text or an object), undefined when none are stored. */
  load(credential: string): Promise<string | Keys | undefined> | string | Keys | undefined;
  /** Replaces the keys; must be durable when it resolves. */
  save(credential: string, keysJson: string): Promise<void> | void;
  /**
   * Optional cross-process refresh lease, taken after the in-process one;
   * resolves to its release function.
   */
  acquireLease?(credential: string): Promise<() => void> | (() => void);
}

export interface RekeyEvent {
  credential?: string;
  type: 'http' | 'lease-acquired' | 'keys-persisted' | 'keys-not-persisted';
  exchange?: 'api' | 'token-endpoint';
  method?: string;
  /** Scheme, host and path only. */
  target?: string;
  status?: number;
  /** The transport-error case. */
  error?: string;
  reason?: string;
  elapsedMs?: number;
  waitedMs?: number;
}

interface SendCommon {
  settings: Settings;
  /**
   * Names the credential: concurrent calls of one credential share one
   * refresh (single-flight). Required with a store.
   */
  credential?: string;
  /** Called with each refreshed token set; the call continues only after it resolves. */
  onUpdateKeys?: (keys: TokenSet) => void | Promise<void>;
  /** Receives every exchange and persistence event; never token values. */
  onEvent?: (event: RekeyEvent) => void;
}

export interface SendWithStore extends SendCommon {
  credential: string;
  store: KeyStore;
}

export interface SendWithKeys extends SendCommon {
  /** The stored token set (JSON text, an object or a TokenSet); undefined when none. */
  keys: string | Keys | TokenSet | undefined;
  onUpdateKeys: (keys: TokenSet) => void | Promise<void>;
  /** Re-reads the stored keys when a refresh lease is taken (default: what this process persisted last). */
  loadKeys?: () => Promise<string | Keys | undefined> | string | Keys | undefined;
}

export type SendOptions = (SendWithStore | SendWithKeys) & { request: RequestInit };

export interface RekeyOptions {
  /** 'auto' (default): JSPI where the runtime has it (Node >= 24), else worker threads. */
  mode?: 'auto' | 'jspi' | 'worker';
  /** Concurrent calls (instances; each a thread on the worker path). Default 64 (JSPI) / 8 (worker). */
  poolSize?: number;
  http?: { connectTimeoutMs?: number; totalTimeoutMs?: number; maxResponseBytes?: number };
  /** Bound on one call (default 120 s); no refresh token is spent too close to it. */
  callTimeoutMs?: number;
  /** How long a call waits for another call's refresh (default 60 s). */
  leaseTimeoutMs?: number;
  onEvent?: (event: RekeyEvent) => void;
  /** Where `npm run build` put the transpiled component (default: the package's gen/). */
  genDir?: string;
}

export class RekeyResponse {
  status: number;
  /** [name, value] pairs in order, lower-case names, duplicates kept. */
  headers: Array<[string, string]>;
  body: Uint8Array;
  readonly ok: boolean;
  header(name: string): string | undefined;
  text(): string;
  json(): unknown;
  toResponse(): Response;
}

export class Rekey {
  static load(options?: RekeyOptions): Promise<Rekey>;
  readonly mode: 'jspi' | 'worker';
  readonly wasmSha256: string;
  send(options: SendOptions): Promise<RekeyResponse>;
  fetcher(options: SendWithStore | SendWithKeys): (input: string | URL | Request, init?: globalThis.RequestInit) => Promise<Response>;
  close(): void;
}

export class FileStore implements KeyStore {
  constructor(dir: string);
  readonly dir: string;
  path(credential: string): string;
  load(credential: string): Promise<string | undefined>;
  save(credential: string, keys: string | Keys | TokenSet): Promise<void>;
  remove(credential: string): Promise<void>;
}

export class Secret {
  constructor(value: string);
  expose(): string;
}

export class TokenSet {
  constructor(fields: Keys);
  expose(): Keys;
  toJSONString(): string;
  get(name: string): unknown;
}

export function keysFromTokenResponse(response: string | Keys, nowMs?: number): Keys;
export function jspiAvailable(): boolean;

export const Category: {
  readonly BAD_INPUT: 'bad-input';
  readonly NEEDS_AUTHORIZATION: 'needs-authorization';
  readonly SETTINGS_WRONG: 'settings-wrong';
  readonly TOKEN_ENDPOINT: 'token-endpoint';
  readonly REFRESH_IN_DOUBT: 'refresh-in-doubt';
  readonly REJECTED_BY_API: 'rejected-by-api';
  readonly TRANSPORT: 'transport';
  readonly STORE: 'store';
  readonly COMPONENT: 'component';
};
export type CategoryName = (typeof Category)[keyof typeof Category];

export class RekeyError extends Error {
  readonly category: CategoryName;
  readonly needsAuthorization: boolean;
  readonly retryable: boolean;
}
export class NotAuthenticated extends RekeyError {}
export class ReauthorizationRequired extends RekeyError { status: number; code: string }
export class SettingsRejected extends RekeyError { status: number; code: string }
export class TokenEndpointError extends RekeyError {}
export class RefreshInDoubt extends RekeyError {}
export class RejectedAfterRefresh extends RekeyError { response: RekeyResponse }
export class InsufficientScope extends RekeyError { scope?: string; response: RekeyResponse }
export class TransportError extends RekeyError {
  kind: 'timeout' | 'connect' | 'too-large' | 'invalid-request' | 'refused' | 'other';
}
export class KeysNotPersisted extends RekeyError {}
export class LeaseUnavailable extends RekeyError {}
export class InvalidSettings extends RekeyError {}
export class InvalidKeys extends RekeyError {}
export class InvalidRequest extends RekeyError {}
export class StoreError extends RekeyError {}
export class ComponentError extends RekeyError {}
