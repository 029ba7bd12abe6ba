// rekey's conformance peer: npm oidc-provider (OpenID Certified) on loopback,
// configured for refresh-token and client-credentials tests.
// tests/all/oidc_provider.rs starts it.
//
//   node server.mjs [--port N] [--access-token-ttl SECONDS] [--clients JSON]
//
// Each option may come from the environment instead: OIDC_PORT (default 0, an
// ephemeral port), OIDC_ACCESS_TOKEN_TTL (default 2), OIDC_CLIENTS (a JSON
// array of {client_id, client_secret?, token_endpoint_auth_method?,
// redirect_uris?, grant_types?, application_type?, jwks?, dpop_bound_access_tokens?}; default: one client_secret_basic and one
// client_secret_post client, and rekey-m2m (client_secret_basic, grant_types
// ['client_credentials'] only). A client whose grant types are client_credentials
// without authorization_code gets no response types and no redirect URIs.
// A client with token_endpoint_auth_method 'private_key_jwt' registers its
// public keys as `jwks` ({keys: [JWK]}) and needs no client_secret: it
// authenticates with a signed client_assertion (RFC 7523 §2.2), which
// oidc-provider checks (signature, iss = sub = client_id, aud its issuer or
// token endpoint, exp, and a jti never used before).
// A public client is {client_id, token_endpoint_auth_method: 'none'} (no
// secret; oidc-provider wants PKCE from it in the code flow).
//
// DPoP (RFC 9449) is enabled for every client (features.dPoP): a token
// request with a valid `DPoP` proof (ES256, RS256, PS256 or EdDSA) gets a
// DPoP-bound access token (token_type "DPoP"); a public client's refresh
// tokens are bound to the same key, so refreshing them needs a proof of it.
// dpop_bound_access_tokens: true in a registration makes a proof mandatory
// for that client. OIDC_DPOP_NONCE (default 1; 0 turns it off): server nonces
// are required in every proof, at /token (400 {"error":"use_dpop_nonce"}),
// at /me and at /_api/whoami (401 `WWW-Authenticate: DPoP
// error="use_dpop_nonce"`), each with a `DPoP-Nonce` header to retry with.
// Nonces rotate every minute and stay valid about five; /token, /me and
// /_api/whoami share them. Proof jtis are never accepted twice.
// OIDC_VERBOSE=1 lets oidc-provider's own development notices through to stderr.
//
// The client-credentials grant (RFC 6749 §4.4) is enabled; its access tokens
// (oidc-provider's ClientCredentials model, opaque, no resource indicators)
// live --access-token-ttl seconds like the others.
//
// The JWT bearer grant (RFC 7523 §2.1), which oidc-provider lacks, is added
// here: grant_type urn:ietf:params:oauth:grant-type:jwt-bearer with an
// `assertion` (and an optional `scope`), for a client that lists that URN in
// its grant_types (with no authorization_code, like a client-credentials
// one, it gets no response types or redirect URIs). The client authenticates
// at /token as registered: token_endpoint_auth_method 'none' (just its
// client_id in the form), a secret, or 'private_key_jwt'. The assertion is
// verified with the client's registered `jwks` ({keys: [JWK]}): a JWS signed
// ES256 or RS256 by one of those keys (a `kid` in its header picks one),
// `iss` = client_id, `sub` a non-empty string, `aud` the issuer or the token
// endpoint URL (one of them, or an array holding one), `exp` in the future
// and at most 10 minutes ahead, `iat` a number not in the future, and a `jti`
// this client never used before (any failure: 400 invalid_grant; a replayed
// jti too). It then issues a ClientCredentials access token (opaque, ttl
// --access-token-ttl, DPoP-bound when the request carries a proof; the
// subject kept in the token) and answers {access_token, token_type,
// expires_in, scope?}; never a refresh token. /_api/whoami accepts these
// tokens and adds "sub" (the assertion's subject) to its answer.
//
// Listens on 127.0.0.1 only. Once listening it prints one JSON line on stdout,
// {"port": N, "issuer": "http://127.0.0.1:N"}, and nothing else ever goes to
// stdout. It exits when its stdin closes, on SIGTERM/SIGINT, or after
// OIDC_MAX_LIFETIME seconds (default 600), so it never outlives its test.
// OIDC_DEVICE_CODE_TTL sets the device codes' lifetime (default 600 s).
//
// Besides the provider's routes (/auth, /token, /me, /interaction/...):
//
// GET /_api/whoami is a protected API for client-credentials tokens: 200 with
// {"client_id", "scope", "token_type"} for `Authorization: Bearer T` when T is
// a live client-credentials token issued here (found through the
// ClientCredentials model, not expired, not sender-constrained); else 401 with
// `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1). A
// DPoP-bound client-credentials token is accepted only as
// `Authorization: DPoP T` with a `DPoP` proof checked as RFC 9449 §4.3 and
// §7.1 say (typ dpop+jwt, signature by its embedded jwk, whose thumbprint is
// the token's jkt; htm GET; htu this URL; ath = SHA-256 of T; a fresh jti; the
// server's nonce when OIDC_DPOP_NONCE is on, else iat within 5 minutes);
// a missing or stale nonce is answered 401 `WWW-Authenticate: DPoP
// error="use_dpop_nonce"` with a `DPoP-Nonce` header, any other failure 401
// `WWW-Authenticate: DPoP error="invalid_token"` (or "invalid_dpop_proof").
//
// GET /_stats answers counters the test checks, per client_id:
//   code_exchanges, refreshes      successful token endpoint grants
//   client_credentials             successful client_credentials grants
//   jwt_bearer                     successful jwt-bearer grants
//   jwt_bearer_refused             jwt-bearer assertions refused (invalid_grant;
//                                  a request refused for its DPoP proof, checked
//                                  first, is only in grant_errors and leaves the
//                                  assertion's jti unspent),
//   jwt_bearer_refused_reasons {reason: n}
//                                  and why: malformed, signature (no registered
//                                  key verifies it, or an alg not ES256/RS256),
//                                  iss, sub, aud, exp, nbf, exp_too_far, iat,
//                                  jti (none), jti_replay, no_jwks
//   last_jwt_bearer_subject        the `sub` of the last granted assertion (or null)
//   jwt_bearer_aud {issuer, token_endpoint}
//                                  which `aud` the granted assertions named
//   auth_seen {basic, post, private_key_jwt, none}
//                                  how the client authenticated at /token on those
//                                  (every successful grant, jwt-bearer included)
//   grant_errors {code: n}         token endpoint errors (e.g. invalid_grant)
//   grants_revoked                 grants revoked (e.g. for a reused refresh token)
//   userinfo_ok, userinfo_rejected /me answers 200 and 401 (by the bearer token's client)
//   api_ok, api_rejected           /_api/whoami answers 200 and 401 (likewise)
//   dpop_proofs                    token endpoint requests carrying a DPoP header
//   dpop_nonce_challenges          use_dpop_nonce answers at /token, /me and
//                                  /_api/whoami (these are not counted in
//                                  userinfo_rejected / api_rejected; at /token
//                                  they also show in grant_errors.use_dpop_nonce)
//   dpop_tokens                    DPoP-bound access tokens issued (user and
//                                  client-credentials tokens alike)
// and globally server_errors, userinfo_rejected_unknown and api_rejected_unknown
// (401 for a token never issued here, or no token). A client that failed to
// authenticate with HTTP Basic is counted under the client_id it presented.

import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints development notices with console.info (stdout, which
// carries our one JSON line) and console.warn, some at import time: silence
// them before importing it. Errors we report ourselves go to stderr.
const verbose = Boolean(process.env.OIDC_VERBOSE);
const toStderr = (...args) => console.error(...args);
console.info = verbose ? toStderr : () => {};
console.warn = verbose ? toStderr : () => {};
console.log = toStderr;

const { default: Provider } = await import('oidc-provider');
// The provider's own nonce scheme (HKDF of a secret and the minute): the same
// secret gives /_api/whoami the nonces /token and /me hand out.
const { default: ServerChallenge } = await import('oidc-provider/lib/helpers/challenge.js');
// oidc-provider's own JOSE library (a dependency of it), for /_api/whoami's proofs.
const { jwtVerify, EmbeddedJWK, calculateJwkThumbprint, createLocalJWKSet, decodeJwt } = await import('jose');
const { errors: oidcErrors } = await import('oidc-provider');
// The helpers oidc-provider's own grants use (provider-bound there; here the
// provider is passed first): DPoP proof checks and the token response.
const grantHelpers = await import('oidc-provider/lib/helpers/grants.js');
const { applyDpopBinding } = await import('oidc-provider/lib/helpers/grant_common.js');

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    'access-token-ttl': { type: 'string' },
    clients: { type: 'string' },
  },
});

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

const port = Number(argv.port ?? process.env.OIDC_PORT ?? 0);
const accessTokenTtl = Number(argv['access-token-ttl'] ?? process.env.OIDC_ACCESS_TOKEN_TTL ?? 2);
const maxLifetime = Number(process.env.OIDC_MAX_LIFETIME ?? 600);
// Lifetime of device codes (RFC 8628), for the expiry scenario.
const deviceCodeTtl = Number(process.env.OIDC_DEVICE_CODE_TTL ?? 600);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port must be 0..65535');
if (!Number.isInteger(accessTokenTtl) || accessTokenTtl < 1) fail('--access-token-ttl must be a whole number of seconds >= 1');
const dpopNonceSetting = process.env.OIDC_DPOP_NONCE ?? '1';
if (!['0', '1'].includes(dpopNonceSetting)) fail('OIDC_DPOP_NONCE must be 0 or 1');
const dpopRequireNonce = dpopNonceSetting === '1';
const dpopNonceSecret = randomBytes(32);
const dpopNonces = new ServerChallenge(dpopNonceSecret, 'DPoP');
const DPOP_ALGS = ['ES256', 'RS256', 'PS256', 'Ed25519', 'EdDSA'];

const DEFAULT_REDIRECT_URI = 'http://127.0.0.1/rekey-callback';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const JWT_BEARER_ALGS = ['ES256', 'RS256'];
// An assertion's exp may be at most this far ahead (seconds).
const JWT_BEARER_MAX_LIFETIME = 600;
const clientsJson = argv.clients ?? process.env.OIDC_CLIENTS;
let clients = [
  { client_id: 'rekey-basic', client_secret: 'rekey-basic-secret', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'rekey-post', client_secret: 'rekey-post-secret', token_endpoint_auth_method: 'client_secret_post' },
  {
    client_id: 'rekey-m2m',
    client_secret: 'rekey-m2m-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
  },
];
if (clientsJson) {
  try {
    clients = JSON.parse(clientsJson);
  } catch {
    fail('--clients / OIDC_CLIENTS is not valid JSON');
  }
  if (!Array.isArray(clients) || clients.length === 0) fail('--clients must be a non-empty JSON array');
}
clients = clients.map((c) => {
  const grantTypes = c.grant_types ?? ['authorization_code', 'refresh_token'];
  // A machine-to-machine client never sees the authorization endpoint: a
  // 'code' response type would add authorization_code to its grant types.
  // Likewise a jwt-bearer client.
  const m2m = (grantTypes.includes('client_credentials') || grantTypes.includes(JWT_BEARER))
    && !grantTypes.includes('authorization_code');
  return {
    client_id: c.client_id,
    ...(c.client_secret !== undefined ? { client_secret: c.client_secret } : {}),
    ...(c.jwks !== undefined ? { jwks: c.jwks } : {}),
    ...(c.dpop_bound_access_tokens !== undefined ? { dpop_bound_access_tokens: c.dpop_bound_access_tokens } : {}),
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: grantTypes,
    response_types: m2m ? [] : ['code'],
    redirect_uris: c.redirect_uris ?? (m2m ? [] : [DEFAULT_REDIRECT_URI]),
    // 'native': a loopback redirect URI matches on any port (RFC 8252 §7.3).
    ...(c.application_type ? { application_type: c.application_type } : {}),
  };
});

const stats = {
  clients: {},
  server_errors: 0,
  userinfo_rejected_unknown: 0,
  api_rejected_unknown: 0,
};
function statsFor(clientId) {
  const id = clientId ?? '(unknown client)';
  stats.clients[id] ??= {
    code_exchanges: 0,
    refreshes: 0,
    client_credentials: 0,
    jwt_bearer: 0,
    jwt_bearer_refused: 0,
    jwt_bearer_refused_reasons: {},
    last_jwt_bearer_subject: null,
    jwt_bearer_aud: { issuer: 0, token_endpoint: 0 },
    auth_seen: { basic: 0, post: 0, private_key_jwt: 0, none: 0 },
    grant_errors: {},
    grants_revoked: 0,
    userinfo_ok: 0,
    userinfo_rejected: 0,
    api_ok: 0,
    api_rejected: 0,
    dpop_proofs: 0,
    dpop_nonce_challenges: 0,
    dpop_tokens: 0,
  };
  return stats.clients[id];
}
// Access token value (opaque: its jti) -> client, to attribute /me rejections.
const accessTokenClient = new Map();
// Client-credentials token value (opaque: its jti) -> client, likewise for /_api.
const clientCredentialsClient = new Map();

// The access token in `Authorization: Bearer T` or `Authorization: DPoP T`.
function bearerToken(ctx) {
  const m = /^(?:bearer|dpop)\s+(\S+)$/i.exec(ctx.get('authorization') ?? '');
  return m?.[1];
}

// The client_id in HTTP Basic credentials (form-urlencoded, RFC 6749 §2.3.1).
function basicClientId(ctx) {
  const m = /^basic\s+(\S+)$/i.exec(ctx.get('authorization') ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

// Who called the token endpoint: the authenticated client, else (a failed
// authentication) the client_id it presented in the body or the Basic header.
function tokenEndpointClientId(ctx) {
  return ctx.oidc?.client?.clientId ?? ctx.oidc?.body?.client_id ?? basicClientId(ctx);
}

// jtis of accepted assertions, per client (client -> Map(jti -> exp)), kept
// until they expire.
const jwtBearerJtis = new Map();

// An assertion refused: counted with its reason, answered 400 invalid_grant.
function refuseAssertion(ctx, reason, description) {
  const s = statsFor(ctx.oidc.client.clientId);
  s.jwt_bearer_refused += 1;
  s.jwt_bearer_refused_reasons[reason] = (s.jwt_bearer_refused_reasons[reason] ?? 0) + 1;
  throw new oidcErrors.InvalidGrant(`invalid assertion (${description})`);
}

// The JWT bearer grant (RFC 7523 §2.1, §3): see the header comment.
async function jwtBearerGrant(ctx) {
  const { provider: p, client, params } = ctx.oidc;
  // DPoP first: a request refused for its proof leaves the assertion unused.
  const dPoP = await grantHelpers.validateDpop(p, ctx);
  grantHelpers.checkDpopRequired(p, ctx, dPoP);
  const assertion = params.assertion;
  if (typeof assertion !== 'string' || !assertion) {
    throw new oidcErrors.InvalidRequest("missing required parameter 'assertion'");
  }
  try {
    decodeJwt(assertion);
  } catch {
    refuseAssertion(ctx, 'malformed', 'not a JWT');
  }
  const keys = client.jwks?.keys;
  if (!Array.isArray(keys) || keys.length === 0) refuseAssertion(ctx, 'no_jwks', 'the client has no registered keys');
  // Each registered key in turn (jose leaves several matching keys to its
  // caller): the first whose signature holds decides.
  let payload;
  for (const key of keys) {
    try {
      ({ payload } = await jwtVerify(assertion, createLocalJWKSet({ keys: [key] }), { algorithms: JWT_BEARER_ALGS }));
      break;
    } catch (err) {
      // The signature held but jose found exp or nbf wrong (no tolerance).
      if (err?.code === 'ERR_JWT_EXPIRED') refuseAssertion(ctx, 'exp', 'expired');
      if (err?.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') refuseAssertion(ctx, err.claim ?? 'malformed', `bad ${err.claim}`);
      if (err?.code === 'ERR_JWT_INVALID') refuseAssertion(ctx, 'malformed', 'claims are not a JSON object');
    }
  }
  if (!payload) refuseAssertion(ctx, 'signature', 'no registered key verifies it');
  const now = Math.floor(Date.now() / 1000);
  if (payload.iss !== client.clientId) refuseAssertion(ctx, 'iss', 'iss is not the client id');
  if (typeof payload.sub !== 'string' || !payload.sub) refuseAssertion(ctx, 'sub', 'no subject');
  const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  const tokenEndpoint = ctx.oidc.urlFor('token');
  if (aud.includes(tokenEndpoint)) ctx.state.jwtBearerAud = 'token_endpoint';
  else if (aud.includes(p.issuer)) ctx.state.jwtBearerAud = 'issuer';
  else refuseAssertion(ctx, 'aud', 'aud is neither the issuer nor the token endpoint');
  if (typeof payload.exp !== 'number' || payload.exp <= now) refuseAssertion(ctx, 'exp', 'expired or no exp');
  if (payload.exp - now > JWT_BEARER_MAX_LIFETIME) refuseAssertion(ctx, 'exp_too_far', 'exp more than 10 minutes ahead');
  if (typeof payload.iat !== 'number' || payload.iat > now) refuseAssertion(ctx, 'iat', 'no iat, or in the future');
  if (typeof payload.jti !== 'string' || !payload.jti) refuseAssertion(ctx, 'jti', 'no jti');
  let seen = jwtBearerJtis.get(client.clientId);
  if (!seen) jwtBearerJtis.set(client.clientId, (seen = new Map()));
  for (const [jti, exp] of seen) if (exp < now) seen.delete(jti);
  if (seen.has(payload.jti)) refuseAssertion(ctx, 'jti_replay', 'jti already used');

  const scopes = [...grantHelpers.validateClientScope(p, ctx)];
  const token = new p.ClientCredentials({
    client,
    scope: scopes.join(' ') || undefined,
    extra: { sub: payload.sub },
  });
  // Refuses a replayed proof; the assertion's jti is spent only after it.
  await applyDpopBinding(p, ctx, dPoP, token);
  seen.set(payload.jti, payload.exp);
  ctx.oidc.entity('ClientCredentials', token);
  const value = await token.save();
  ctx.body = grantHelpers.buildTokenResponse(p, {
    accessToken: value,
    expiresIn: token.expiration,
    scope: token.scope || undefined,
    tokenType: token.tokenType,
  });
}

function createProvider(issuer) {
  const provider = new Provider(issuer, {
    clients,
    clockTolerance: 0,
    rotateRefreshToken: true,
    // Refresh tokens for every client allowed the refresh_token grant, whatever
    // the scope (the default wants offline_access, which the test asks for too).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: accessTokenTtl,
      ClientCredentials: accessTokenTtl,
      AuthorizationCode: 60,
      DeviceCode: deviceCodeTtl,
      IdToken: 3600,
      RefreshToken: 3600,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
    },
    cookies: { keys: ['rekey-conformance-test-only'] },
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    // Keep what a token was made with (the jwt-bearer grant's { sub }):
    // oidc-provider replaces a token's `extra` with this answer as it saves it.
    extraTokenClaims: async (_ctx, token) => token.extra,
    // deviceFlow: RFC 8628 at /device/auth (user pages at /device); clients
    // that list its grant type may use it. clientCredentials: RFC 6749 §4.4
    // for clients that list client_credentials; without resourceIndicators
    // its tokens are opaque and audience-free, as /_api/whoami expects.
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      dPoP: {
        enabled: true,
        nonceSecret: dpopNonceSecret,
        requireNonce: () => dpopRequireNonce,
        allowReplay: false,
      },
    },
    enabledJWA: { dPoPSigningAlgValues: DPOP_ALGS },
  });
  // Before any request, hence before any client is validated (their
  // grant_types are checked against the registered grant types then).
  provider.registerGrantType(JWT_BEARER, jwtBearerGrant, ['assertion', 'scope']);

  provider.on('grant.success', (ctx) => {
    const s = statsFor(tokenEndpointClientId(ctx));
    const grantType = ctx.oidc.params?.grant_type;
    if (grantType === 'refresh_token') s.refreshes += 1;
    if (grantType === 'authorization_code') s.code_exchanges += 1;
    if (grantType === 'client_credentials') s.client_credentials += 1;
    if (grantType === JWT_BEARER) {
      s.jwt_bearer += 1;
      s.last_jwt_bearer_subject = ctx.oidc.entities?.ClientCredentials?.extra?.sub ?? null;
      if (ctx.state.jwtBearerAud) s.jwt_bearer_aud[ctx.state.jwtBearerAud] += 1;
    }
    if (/^basic\s/i.test(ctx.get('authorization') ?? '')) s.auth_seen.basic += 1;
    else if (ctx.oidc.body?.client_secret !== undefined) s.auth_seen.post += 1;
    else if (ctx.oidc.body?.client_assertion !== undefined && ctx.oidc.client?.tokenEndpointAuthMethod === 'private_key_jwt') {
      s.auth_seen.private_key_jwt += 1;
    }
    else s.auth_seen.none += 1;
  });
  provider.on('grant.error', (ctx, err) => {
    const s = statsFor(tokenEndpointClientId(ctx));
    const code = err.error ?? 'unknown';
    s.grant_errors[code] = (s.grant_errors[code] ?? 0) + 1;
  });
  provider.on('grant.revoked', (ctx) => {
    statsFor(tokenEndpointClientId(ctx)).grants_revoked += 1;
  });
  provider.on('access_token.saved', (token) => {
    accessTokenClient.set(token.jti, token.clientId);
    if (token.jkt) statsFor(token.clientId).dpop_tokens += 1;
  });
  provider.on('client_credentials.saved', (token) => {
    clientCredentialsClient.set(token.jti, token.clientId);
    if (token.jkt) statsFor(token.clientId).dpop_tokens += 1;
  });
  provider.on('server_error', (ctx, err) => {
    stats.server_errors += 1;
    process.stderr.write(`server.mjs: server_error on ${ctx.method} ${ctx.path}: ${err?.message}\n`);
  });
  // Count /token's DPoP requests and nonce challenges, and /me answers by
  // the client the presented token was issued to.
  provider.use(async (ctx, next) => {
    await next();
    const route = ctx.oidc?.route;
    if (route === 'token') {
      const s = statsFor(tokenEndpointClientId(ctx));
      if (ctx.get('DPoP')) s.dpop_proofs += 1;
      if (ctx.status === 400 && ctx.body?.error === 'use_dpop_nonce') s.dpop_nonce_challenges += 1;
      return;
    }
    if (route !== 'userinfo') return;
    if (ctx.status === 200) {
      statsFor(ctx.oidc.client?.clientId).userinfo_ok += 1;
    } else if (ctx.status === 401) {
      const clientId = accessTokenClient.get(bearerToken(ctx));
      const nonceChallenge = /error="use_dpop_nonce"/.test(ctx.response.get('www-authenticate') ?? '');
      if (!clientId) stats.userinfo_rejected_unknown += 1;
      else if (nonceChallenge) statsFor(clientId).dpop_nonce_challenges += 1;
      else statsFor(clientId).userinfo_rejected += 1;
    }
  });
  return provider;
}

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
// Set once listening; /_api/whoami looks tokens up through it.
let provider;

// Proof jtis /_api/whoami has accepted (client -> Set), never accepted twice.
const apiProofJtis = new Map();
// The window oidc-provider gives a proof without a nonce (its CHALLENGE_OK_WINDOW).
const DPOP_IAT_WINDOW = 300;

// Why a DPoP proof for /_api/whoami fails (a WWW-Authenticate error code), or
// undefined when it is good for this token (RFC 9449 §4.3, §7.1).
async function apiDpopProofError(req, token, value) {
  const proof = req.headers.dpop;
  if (typeof proof !== 'string' || !proof) return 'invalid_dpop_proof';
  let payload;
  let protectedHeader;
  try {
    ({ payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { algorithms: DPOP_ALGS, typ: 'dpop+jwt' }));
  } catch {
    return 'invalid_dpop_proof';
  }
  if (typeof payload.jti !== 'string' || !payload.jti) return 'invalid_dpop_proof';
  if (typeof payload.iat !== 'number') return 'invalid_dpop_proof';
  if (payload.htm !== 'GET') return 'invalid_dpop_proof';
  const htu = typeof payload.htu === 'string' ? URL.parse(payload.htu) : null;
  if (!htu) return 'invalid_dpop_proof';
  htu.search = '';
  htu.hash = '';
  if (htu.href !== new URL('/_api/whoami', provider.issuer).href) return 'invalid_dpop_proof';
  if (payload.ath !== createHash('sha256').update(value).digest('base64url')) return 'invalid_dpop_proof';
  if (await calculateJwkThumbprint(protectedHeader.jwk) !== token.jkt) return 'invalid_token';
  if (payload.nonce !== undefined) {
    if (typeof payload.nonce !== 'string' || !dpopNonces.checkChallenge(payload.nonce)) return 'use_dpop_nonce';
  } else if (dpopRequireNonce) {
    return 'use_dpop_nonce';
  } else if (Math.abs(Date.now() / 1000 - payload.iat) > DPOP_IAT_WINDOW) {
    return 'invalid_dpop_proof';
  }
  let seen = apiProofJtis.get(token.clientId);
  if (!seen) apiProofJtis.set(token.clientId, (seen = new Set()));
  if (seen.has(payload.jti)) return 'invalid_dpop_proof';
  seen.add(payload.jti);
  return undefined;
}

// GET /_api/whoami: a resource server that trusts only live client-credentials
// tokens issued by this provider (DPoP-bound ones with a proof of their key).
async function apiWhoami(req, res) {
  const m = /^(bearer|dpop)\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  const scheme = m?.[1].toLowerCase();
  const value = m?.[2];
  // find() checks the stored token's exp itself; isExpired repeats it so the
  // verdict never rests on a clock tolerance.
  const token = value ? await provider.ClientCredentials.find(value) : undefined;
  let error = 'invalid_token';
  if (token && !token.isExpired) {
    if (scheme === 'bearer' && !token.isSenderConstrained()) error = undefined;
    else if (scheme === 'dpop' && token.jkt && !token['x5t#S256']) {
      error = await apiDpopProofError(req, token, value);
    }
  }
  if (!error) {
    statsFor(token.clientId).api_ok += 1;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      client_id: token.clientId,
      scope: token.scope ?? null,
      token_type: token.jkt ? 'DPoP' : 'Bearer',
      ...(typeof token.extra?.sub === 'string' ? { sub: token.extra.sub } : {}),
    }));
    return;
  }
  const clientId = value ? clientCredentialsClient.get(value) : undefined;
  if (!clientId) stats.api_rejected_unknown += 1;
  else if (error === 'use_dpop_nonce') statsFor(clientId).dpop_nonce_challenges += 1;
  else statsFor(clientId).api_rejected += 1;
  res.statusCode = 401;
  if (error === 'use_dpop_nonce') res.setHeader('dpop-nonce', dpopNonces.nextChallenge());
  const dpopScheme = scheme === 'dpop' || token?.jkt;
  res.setHeader('www-authenticate', `${dpopScheme ? 'DPoP' : 'Bearer'} error="${error}"${dpopScheme ? ` algs="${DPOP_ALGS.join(' ')}"` : ''}`);
  res.end();
}

const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/_stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.method === 'GET' && req.url === '/_api/whoami' && provider) {
    apiWhoami(req, res).catch((err) => {
      stats.server_errors += 1;
      process.stderr.write(`server.mjs: server_error on GET /_api/whoami: ${err?.message}\n`);
      res.statusCode = 500;
      res.end();
    });
    return;
  }
  handler(req, res);
});

function shutdown(code = 0) {
  server.close();
  process.exit(code);
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
process.stdin.on('end', () => shutdown(0));
process.stdin.on('close', () => shutdown(0));
process.stdin.on('error', () => shutdown(0));
process.stdin.resume();
setTimeout(() => {
  process.stderr.write(`server.mjs: exiting after OIDC_MAX_LIFETIME=${maxLifetime}s\n`);
  shutdown(1);
}, maxLifetime * 1000).unref();

server.on('error', (err) => fail(`cannot listen: ${err.message}`));
// Loopback only, never any other address.
server.listen(port, '127.0.0.1', () => {
  const { port: chosen } = server.address();
  const issuer = `http://127.0.0.1:${chosen}`;
  provider = createProvider(issuer);
  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ port: chosen, issuer })}\n`);
});
