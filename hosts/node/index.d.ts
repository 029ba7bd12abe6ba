// Types for @rekey/node (src/index.js). Checked against the code, not trusted:
// `npm run typecheck` (ci.sh) runs tsc with checkJs over src/, whose JSDoc
// uses these types, and types/api.mts requires every export here to match
// the code's and every export of the code to be declared here.

/**
 * client_secret_basic or client_secret_post (RFC 6749 §2.3.1). The WIT names
 * ('client-secret-basic', Python's) and the short ones (the Rust host's
 * settings column and CLI) are both accepted; the settings column records the short one.
 */
/**
 * Also read: the RFC's 'client_secret_basic'/'client_secret_post', any case ('_' as '-'), as every host reads them.
 * 'private_key_jwt' (RFC 7523 §2.2): a JWT signed with the client's key (needs `signing`); no secret is sent.
 */
export type ClientAuth = 'client-secret-basic' | 'client-secret-post' | 'basic' | 'post' | 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'private-key-jwt' | (string & {});
/** Also read with '_' for '-' and in any case ('every_request'), as every host reads them. */
export type Strategy = 'on-auth-failure' | 'every-request' | 'before-expiry' | 'on_auth_failure' | 'every_request' | 'before_expiry' | (string & {});
/** Also read with '_' for '-' and in any case ('jwt_bearer'), as every host reads them. */
export type Grant = 'refresh-token' | 'client-credentials' | 'jwt-bearer' | 'refresh_token' | 'client_credentials' | 'jwt_bearer' | (string & {});

/**
 * How the JWTs of `private_key_jwt` and the `jwt-bearer` grant are signed
 * (RFC 7523), and with which private key: exactly one of `keyFile`, `keyEnv`
 * and `key`. A file or variable is read only when the component asks for a
 * signature, at each one (a call whose stored token is valid reads no key; a
 * key replaced by an atomic rename is used at the next); `keyFile` must be a
 * regular file (a symbolic link to one is followed) of 64 KiB at most. The
 * host signs only the assertion these settings describe (its `alg`, `kid`,
 * `iss`, `sub`, `aud`, a lifetime of 300 s at most, the configured claims).
 * PEM, unencrypted:
 * PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA or SEC1 EC. RS256 needs RSA of
 * 2048 bits or more, ES256 a P-256 key. The key signs on this host; it never
 * enters the component, and errors name the file or variable, never the key.
 */
export interface Signing {
  /** 'RS256' (RSASSA-PKCS1-v1_5 SHA-256) or 'ES256' (ECDSA P-256 SHA-256); any case. */
  algorithm: 'RS256' | 'ES256' | (string & {});
  /** `kid` in the JWT header, when the server needs it to pick the key. */
  keyId?: string;
  /** `aud`: the authorization server's issuer identifier. Unset: the settings' `issuer` when set, else the token URL. */
  audience?: string;
  /** A PEM file holding the private key (a store's settings column records its absolute path). */
  keyFile?: string;
  /** An environment variable holding the PEM (a store's settings column records its name). */
  keyEnv?: string;
  /**
   * The private key in memory (`crypto.createPrivateKey(pem)`), for settings
   * passed with each call: a store's `create` refuses it (the store never holds a key).
   */
  key?: import('node:crypto').KeyObject;
}

/**
 * DPoP (RFC 9449): the credential's proof-of-possession key. Every token
 * request carries a proof signed with it, so the server binds the tokens it
 * issues to the key; an API request with a DPoP-bound token (`token_type`
 * `DPoP`) is sent as `Authorization: DPoP <token>` with a proof naming the
 * token. A server's `use_dpop_nonce` challenge is answered once per request.
 * Exactly one of `keyFile`, `keyEnv` and `key`, read as `Signing`'s key is
 * (the same PEM formats; it may be the signing key's file or another). The
 * host signs only a DPoP proof with this key's public JWK, for the token URL
 * or a URL within the API origins, dated now.
 */
export interface Dpop {
  /** 'ES256' (ECDSA P-256 SHA-256) or 'RS256' (RSASSA-PKCS1-v1_5 SHA-256, RSA of 2048 bits or more); any case. */
  algorithm: 'ES256' | 'RS256' | (string & {});
  /** A PEM file holding the private key (a store's settings column records its absolute path). */
  keyFile?: string;
  /** An environment variable holding the PEM (a store's settings column records its name). */
  keyEnv?: string;
  /**
   * The private key in memory (`crypto.createPrivateKey(pem)`), for settings
   * passed with each call: a store's `create` refuses it (the store never holds a key).
   */
  key?: import('node:crypto').KeyObject;
}

/** A credential's settings (the WIT `settings`, camelCase, with defaults). */
export interface Settings {
  /**
   * How new tokens are obtained. 'refresh-token' (default): the stored
   * refresh token, after a person authorised once. 'client-credentials'
   * (RFC 6749 §4.4, machine to machine): the client's own id and secret
   * (required) or its `private_key_jwt`; no keys need be stored, the first
   * call fetches a token. 'jwt-bearer' (RFC 7523 §2.1, e.g. a service
   * account): an assertion for `subject` signed with `signing`'s key; like
   * 'client-credentials', nothing stored first and no refresh token.
   */
  grant?: Grant;
  /** The 'jwt-bearer' grant's `sub` (required for it): the service account, or the user the token acts for. */
  subject?: string;
  /**
   * The 'jwt-bearer' assertion's further claims, string values, e.g.
   * `{ scope: 'api.read' }`; iss, sub, aud, exp, iat, nbf and jti are rekey's.
   */
  claims?: Record<string, string> | Array<[string, string]>;
  /** How assertions are signed; required by 'private_key_jwt' and 'jwt-bearer'. */
  signing?: Signing;
  /**
   * DPoP (RFC 9449) with this key: proofs on every token request and with
   * DPoP-bound tokens. Unset: no proofs, and a stored DPoP-bound token set is
   * `InvalidSettings` (nothing sent).
   */
  dpop?: Dpop;
  /** Absolute https URL of the token endpoint (http only on loopback). */
  tokenUrl: string;
  clientId: string;
  /**
   * Omit for public clients. `{ env: 'VAR' }` reads it from the environment
   * at each call (and is the only form a store's settings column records).
   */
  clientSecret?: string | Secret | { env: string };
  /** Default 'client-secret-basic' (= 'basic'). */
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
  /**
   * Where the access token may go: origins like `https://api.example.com`
   * (`:port` when not the default), `https://*.example.com` for any subdomain
   * (never the bare domain; at least two labels under the `*`), `http://` only
   * on a loopback address (`127.0.0.1`, `[::1]`), or `['*']`: any https origin,
   * said explicitly. Required (bound by default) unless `instanceUrlOrigins`
   * is given. Checked by the component, and again by this host before
   * anything is sent.
   */
  apiOrigins?: string[];
  /**
   * Patterns (the syntax of `apiOrigins`) the token set's `instance_url` must
   * match for its origin to receive the token too (Salesforce:
   * `['https://*.my.salesforce.com']`). An `instance_url` matching none is ignored.
   */
  instanceUrlOrigins?: string[];
  /** The fleet protocol's timing; 0 or unset: the defaults. */
  fleet?: {
    /** A lease not renewed for this long is free for others (default 40 000; above the HTTP total timeout). */
    leaseTtlMs?: number;
    /** How long a call waits for another holder's lease (default 60 000). */
    leaseWaitMs?: number;
  };
  /** Authorization endpoint (https; http only on loopback), for `authorizeCode`. */
  authorizationUrl?: string;
  /** Device authorization endpoint (RFC 8628), for `authorizeDevice`. */
  deviceUrl?: string;
  /**
   * The issuer a redirect's `iss` must name (RFC 9207). Unset: a redirect
   * that carries `iss` is refused (InvalidSettings: set the issuer).
   */
  issuer?: string;
  /**
   * The issuer's metadata says `authorization_response_iss_parameter_supported`
   * (RFC 9207 §3): a redirect without `iss` is refused (IssuerMismatch).
   * Default false (this host discovers no metadata).
   */
  issuerSendsIss?: boolean;
  /**
   * Extra authorization request parameters, e.g. [['prompt', 'consent']]; a
   * `scope` here is the scope asked for at authorisation (default: `scope`).
   */
  authParams?: Array<[string, string]> | Record<string, string>;
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

/** The refresh lease: one holder at a time may refresh the credential. */
export interface Lease { holder: string; untilMs: number }
/** A refresh may have left under `holder` and its result is not stored yet. */
export interface RefreshMark { holder: string; atMs: number }
/** The token endpoint declared the grant dead. `at`: Unix seconds. */
export interface DeadGrant { code: string; at: number }
/** Everything the fleet protocol keeps for one credential; the component decides every field. */
export interface CredentialRecord {
  /** The token set as JSON text; null before anyone authenticates. */
  keys: string | null;
  lease: Lease | null;
  refreshMark: RefreshMark | null;
  deadGrant: DeadGrant | null;
}
export interface StoredRecord { version: number; data: CredentialRecord }

/**
 * What `send` needs of a store: the credential's record with its version,
 * and a durable compare-and-swap of the whole record. A store never
 * interprets the record.
 */
export interface RecordStore {
  /** The record as stored now; undefined when there is no such credential. Rejects when it cannot be read. */
  read(name: string): Promise<StoredRecord | undefined>;
  /**
   * Replaces the record only if its version is still `expectedVersion`, and
   * resolves to the new version (expected + 1) once the write is durable;
   * `false` when the version differs (nothing written). Rejects when nothing
   * was written; rejects with `WriteUnknown` when it cannot tell.
   */
  write(name: string, expectedVersion: number, data: CredentialRecord): Promise<number | false>;
}

/** What an operator may see of a credential: no token or secret. */
export interface CredentialSummary {
  name: string;
  version: number;
  /** Unix seconds of the last write. */
  updatedAt: number;
  /** The settings column (the Rust host's JSON format), a literal secret redacted. */
  settings: Record<string, unknown> | undefined;
  hasKeys: boolean;
  keyFields: string[] | undefined;
  expiresAt: number | undefined;
  lease: Lease | null;
  refreshMark: RefreshMark | null;
  deadGrant: DeadGrant | null;
}

/** The built-in stores: the record store plus operator functions (each write a conditional one, version + 1). */
export interface BuiltInStore extends RecordStore {
  /** Creates the credential (version 0) with its settings column; false when it exists (nothing changed). */
  create(name: string, options: { settings: Settings; keys?: string | Keys | TokenSet }): Promise<boolean>;
  /** New keys (an import, a new authorisation); any lease, refresh mark and dead grant end. */
  putKeys(name: string, keys: string | Keys | TokenSet): Promise<number>;
  /** Lifts the refresh mark, after checking with the provider; only while no refresh runs. */
  clearRefreshMark(name: string): Promise<number>;
  /** Forgets a dead grant. */
  forgetDeadGrant(name: string): Promise<number>;
  /** The stored keys as JSON text, or undefined. */
  loadKeys(name: string): Promise<string | undefined>;
  list(): Promise<CredentialSummary[]>;
  show(name: string): Promise<CredentialSummary | undefined>;
  close(): void | Promise<void>;
}

/** In this process only (tests, single-process apps). */
export interface MemoryStore extends BuiltInStore {}
export class MemoryStore {}
/** One SQLite file (node:sqlite, Node >= 22.13): any number of processes on one machine. */
export interface SqliteStore extends BuiltInStore {}
export class SqliteStore {
  static open(path: string, options?: { busyTimeoutMs?: number }): Promise<SqliteStore>;
}
/** PostgreSQL through `pg` (install it): fleets on many machines. */
export interface PostgresStore extends BuiltInStore {}
export class PostgresStore {
  static connect(connection: string | Record<string, unknown>, options?: { max?: number; connectionTimeoutMillis?: number; statementTimeoutMs?: number }): Promise<PostgresStore>;
}
/** A store's write whose outcome is unknown (the component reads the record back to find out). */
export class WriteUnknown extends Error {}

export interface RekeyEvent {
  credential?: string;
  /** A record write: `record-written` (with `version`, `keysChanged`), `write-conflict`, `write-failed`. */
  type: 'http' | 'record-written' | 'write-conflict' | 'write-failed' | 'keys-persisted';
  /** What the request is for (the WIT `purpose`). */
  exchange?: 'api' | 'token-endpoint' | 'device-endpoint';
  method?: string;
  /** Scheme, host and path only. */
  target?: string;
  status?: number;
  /** The transport-error case (`refused`: the host's boundary check). */
  error?: string;
  reason?: string;
  elapsedMs?: number;
  version?: number;
  keysChanged?: boolean;
}

interface SendCommon {
  settings: Settings;
  /**
   * Names the credential (its record in the store). Required with a store;
   * with keys + onUpdateKeys, calls of one name in this process share one
   * refresh.
   */
  credential?: string;
  /** Receives every exchange and record event; never token values. */
  onEvent?: (event: RekeyEvent) => void;
}

export interface SendWithStore extends SendCommon {
  credential: string;
  /** The credential's record store (shared by every worker of the fleet). */
  store: RecordStore;
}

/** The single-process callback style: a memory record seeded with `keys`. ONE process only. */
export interface SendWithKeys extends SendCommon {
  /** The stored token set (JSON text, an object or a TokenSet); undefined when none. */
  keys: string | Keys | TokenSet | undefined;
  /** Persists each new token set; runs inside the record write, which fails if it throws. */
  onUpdateKeys: (keys: TokenSet) => void | Promise<void>;
}

export interface Abortable {
  /**
   * Stops waiting: the promise rejects at once with the signal's reason (an
   * AbortError DOMException for `AbortController.abort()`, a TimeoutError
   * for `AbortSignal.timeout`). A call that has started is not cut short: it
   * runs to its end underneath (a refresh under way is stored) and its
   * result is discarded; `Rekey.drain()` waits for it. Already aborted:
   * rejects before anything is sent.
   */
  signal?: AbortSignal;
}

export type SendOptions = (SendWithStore | SendWithKeys) & Abortable & { request: RequestInit };

/**
 * What `keepalive` takes: `send`'s options without `request`, and how old a
 * stored token set may grow before it is refreshed.
 */
export type KeepaliveOptions = (SendWithStore | SendWithKeys) & Abortable & {
  /**
   * Refresh when the stored set was obtained at least this many seconds ago
   * (or when is unknown: an imported set), or when the provider said its
   * refresh token expires within this time. A whole number >= 0; pick it
   * well inside the provider's idle limit (Microsoft 90 days, Xero 60,
   * Google's testing mode 7), e.g. `7 * 24 * 3600` run daily.
   */
  olderThanSecs: number | bigint;
};

/**
 * What `keepalive` did: `refreshed` (the refresh token was exchanged and the
 * result stored), `fresh` (nothing was due, or another worker renewed it
 * meanwhile: nothing spent), `nothing-to-keep` (the grant keeps no refresh
 * token: client credentials, jwt-bearer, or a set stored without one).
 */
export type KeepaliveOutcome = 'fresh' | 'refreshed' | 'nothing-to-keep';

/** What `fetcher` takes: `send`'s options without `request`; a `signal` here applies to every call, with each call's own. */
export type FetcherOptions = (SendWithStore | SendWithKeys) & Abortable;

/** `fetch`'s signature: a standard `Response`; rekey's failures reject with RekeyError. */
export type RekeyFetch = (input: string | URL | Request, init?: globalThis.RequestInit) => Promise<Response>;

export interface RekeyOptions {
  /** 'auto' (default): JSPI where the runtime has it (Node >= 24), else worker threads. */
  mode?: 'auto' | 'jspi' | 'worker';
  /** Concurrent calls (instances; each a thread on the worker path). Default 64 (JSPI) / 8 (worker). */
  poolSize?: number;
  http?: { connectTimeoutMs?: number; totalTimeoutMs?: number; maxResponseBytes?: number };
  /** Bound on one call (default 120 s); no refresh token is spent too close to it. */
  callTimeoutMs?: number;
  onEvent?: (event: RekeyEvent) => void;
  /** A directory `scripts/build.mjs` transpiled a component into (default: the package's own gen/, built from COMPONENT_PATH). */
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
  /** A WHATWG `Response`; throws UnrepresentableResponse (carrying this) for a status outside 200–599. */
  toResponse(): Response;
}

/** Where the first token set goes: a store, or a callback (or both: the store first). */
interface AuthorizeCommon {
  /** The credential's settings, with `authorizationUrl` (code grant) or `deviceUrl` (device grant). */
  settings: Settings;
  /** Receives the token set (`create`, or `putKeys` when the credential exists). */
  store?: RecordStore & Pick<BuiltInStore, 'create' | 'putKeys'>;
  /** Receives the token set (after the store); durable when it resolves. Required without a store. */
  onUpdateKeys?: (keys: TokenSet) => void | Promise<void>;
  /** Receives each exchange (never token, code or verifier values) and `keys-persisted`. */
  onEvent?: (event: RekeyEvent) => void;
}

export interface AuthorizeCodeOptions extends AuthorizeCommon {
  /**
   * Shows the URL to open: print it, or `openBrowser(url)`. `url` is the
   * listener's one-use start URL (`http://127.0.0.1:PORT/start/<token>`, no
   * state or PKCE challenge in it: safe on a command line), which redirects
   * once to `details.authorizationUrl`, kept for callers who want it (never
   * put that one on a command line or in a file). Opened a second time, the
   * flow ends (StartUrlReused). Not awaited (the browser comes back to the
   * listener meanwhile); a rejection ends the flow.
   */
  onUrl: (url: string, details: { authorizationUrl: string }) => void | Promise<unknown>;
  /**
   * How long to wait for the redirect (default 300 000 ms). Redirects whose
   * state is not this request's are answered 400 and the wait goes on.
   */
  timeoutMs?: number;
  /**
   * The loopback URI to listen on (default http://127.0.0.1/callback on a free
   * port; give a port when the provider wants an exact, registered URI).
   */
  redirectUri?: string;
  /**
   * Stops the flow: rejects at once with the signal's reason and stops
   * waiting for the redirect (the listener closes). A redirect already taken
   * is still exchanged and its keys stored, underneath.
   */
  signal?: AbortSignal;
}

export interface AuthorizeDeviceOptions extends AuthorizeCommon {
  /**
   * Stops the flow: rejects at once with the signal's reason; polling stops
   * at its next request (nothing more is sent). Keys a poll under way brings
   * back are still stored, underneath.
   */
  signal?: AbortSignal;
  /** Shows the user code and where to enter it; awaited before polling starts. */
  onUserCode: (device: DeviceAuthorization) => void | Promise<void>;
}

/**
 * A started code grant (`beginAuthorization`, for a caller with its own
 * listener): the authorization URL itself, which carries the state and PKCE
 * challenge (keep it off command lines and files). The verifier stays inside.
 */
export class PendingAuthorization {
  readonly url: string;
  readonly redirectUri: string;
}

/** A started device grant: what a person needs. The device code stays inside. */
export class DeviceAuthorization {
  readonly userCode: string;
  readonly verificationUri: string;
  readonly verificationUriComplete?: string;
  /** Seconds the code stays valid. */
  readonly expiresIn: number;
  /** Seconds between polls. */
  readonly interval: number;
}

export class Rekey {
  static load(options?: RekeyOptions): Promise<Rekey>;
  readonly mode: 'jspi' | 'worker';
  readonly wasmSha256: string;
  send(options: SendOptions): Promise<RekeyResponse>;
  /**
   * Keeps the credential's refresh token from dying of disuse: refreshes it
   * (send's own refresh: the fleet's lease, one refresh however many
   * processes run it at once) when the stored set is `olderThanSecs` old or
   * older, or undated, or its refresh token expires within that time; sends
   * no API request. Errors are send's (a revoked grant: ReauthorizationRequired).
   */
  keepalive(options: KeepaliveOptions): Promise<KeepaliveOutcome>;
  /**
   * Checks settings by exactly the rules the component applies at `send`
   * (its `check-settings`): call it when a credential is created or changed.
   * @throws InvalidSettings saying what is wrong and how to fix it
   */
  checkSettings(settings: Settings): Promise<void>;
  /**
   * A `fetch`-compatible function for one credential: method, headers, body,
   * `signal` as fetch takes them; a standard `Response`. Redirects are never
   * followed: with `redirect: 'follow'` (the default) or 'manual' a 3xx comes
   * back as it is; with 'error' it rejects with a TypeError.
   */
  fetcher(options: FetcherOptions): RekeyFetch;
  /** Resolves once every call started here has ended, including calls whose callers stopped waiting. */
  drain(): Promise<void>;
  /**
   * The authorization code grant with PKCE through a loopback redirect; stores
   * the token response as the credential's keys (with `expires_at`) and resolves to them.
   */
  authorizeCode(credential: string, options: AuthorizeCodeOptions): Promise<TokenSet>;
  /** The device authorization grant (RFC 8628); stores and resolves to the keys. */
  authorizeDevice(credential: string, options: AuthorizeDeviceOptions): Promise<TokenSet>;
  /** The code grant's first step, for a caller with its own loopback listener at `redirectUri`. */
  beginAuthorization(settings: Settings, options: { redirectUri: string; onEvent?: (event: RekeyEvent) => void } & Abortable): Promise<PendingAuthorization>;
  /** Checks the redirect (its query, or the whole URL) and exchanges the code; returns the keys to store (stores nothing). */
  finishAuthorization(settings: Settings, pending: PendingAuthorization, query: string | URL | URLSearchParams, options?: { onEvent?: (event: RekeyEvent) => void } & Abortable): Promise<TokenSet>;
  /** The device grant's start. */
  startDeviceAuthorization(settings: Settings, options?: { onEvent?: (event: RekeyEvent) => void } & Abortable): Promise<DeviceAuthorization>;
  /** Polls until approval, refusal or expiry; returns the keys to store (stores nothing). */
  pollDeviceAuthorization(settings: Settings, device: DeviceAuthorization, options?: { onEvent?: (event: RekeyEvent) => void } & Abortable): Promise<TokenSet>;
  close(): void;
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
/**
 * A first token set from a token response, as the Rust host imports one: an
 * object with an access or refresh token, a sender's `expires_at` dropped,
 * `expires_at` from `expires_in` and the clock. Throws TokenEndpointError.
 */
export function importTokenResponse(json: string, nowMs?: number): TokenSet;
/** Asks the desktop to open `url` (xdg-open, open, start); false when there is no opener. */
export function openBrowser(url: string): Promise<boolean>;
export function jspiAvailable(): boolean;
/**
 * The SHA-256 (hex) of the component this package runs, the same as
 * `sha256sum rekey_guest.wasm` and as the Rust and Python packages print
 * (`npx rekey-node-component --sha256` prints it too).
 */
export const COMPONENT_SHA256: string;
/** The packaged component (`component/rekey_guest.wasm`), for tools that want the .wasm itself. */
export const COMPONENT_PATH: string;

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
  /** For an error from the component: the WIT send-error case, e.g. 'refresh-in-doubt'. */
  readonly sendErrorCase?: string;
  readonly needsAuthorization: boolean;
  readonly retryable: boolean;
}
export class NotAuthenticated extends RekeyError {}
export class ReauthorizationRequired extends RekeyError { constructor(o: { status: number; code: string }); status: number; code: string }
export class SettingsRejected extends RekeyError { constructor(o: { status: number; code: string }); status: number; code: string }
export class TokenEndpointError extends RekeyError {}
export class RefreshInDoubt extends RekeyError {}
export class RejectedAfterRefresh extends RekeyError { response: RekeyResponse }
export class InsufficientScope extends RekeyError { constructor(o: { scope?: string; response: RekeyResponse }); scope?: string; response: RekeyResponse }
/** The API answered something a fetch `Response` cannot carry (a status outside 200–599, a body that does not decode): the answer is in `response`. */
export class UnrepresentableResponse extends RekeyError { constructor(detail: string, response: RekeyResponse); response: RekeyResponse }
export class TransportError extends RekeyError {
  /** `cause`: the WIT transport-error. */
  constructor(cause: { tag: TransportError['kind']; val?: unknown });
  kind: 'timeout' | 'connect' | 'too-large' | 'invalid-request' | 'refused' | 'other';
}
export class KeysNotPersisted extends RekeyError {}
export class LeaseUnavailable extends RekeyError {}
export class InvalidSettings extends RekeyError {}
export class InvalidKeys extends RekeyError {}
export class InvalidRequest extends RekeyError {}
export class StoreError extends RekeyError {}
/** The component could not read or write the record; nothing was spent. */
export class StoreUnavailable extends RekeyError {}
export class ComponentError extends RekeyError {}

// The first token set's failures (besides InvalidSettings, TokenEndpointError,
// TransportError and StoreError).
export class AccessDenied extends RekeyError {}
export class StateMismatch extends RekeyError {}
export class IssuerMismatch extends RekeyError {}
/** The provider answered the authorisation request with another error (or `no_code`). */
/** The redirect carried an OAuth error; `invalid_scope` is in the settings-wrong category. */
export class AuthorizationProviderError extends RekeyError { code: string }
export class DeviceCodeExpired extends RekeyError {}
export class AuthorizationTimeout extends RekeyError { timeoutMs: number }
/** The start URL was opened more than once: whoever opened it first holds the request; authorise again. */
export class StartUrlReused extends RekeyError {}
/** The token or device endpoint refused: `invalid_grant` needs authorisation, others are settings. */
export class AuthorizationRejected extends RekeyError { constructor(o: { status: number; code: string }); status: number; code: string }
export class ListenerError extends RekeyError {}
