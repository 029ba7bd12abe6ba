// The `settings` column: a credential's settings as JSON in the Rust host's
// format (host/src/settings.rs, snake_case), written when a store creates a
// credential so the Rust CLI can show it. This host takes settings in code
// and never reads the column back.
//
// A client secret given as a value is NOT written (the column says null):
// the store holds tokens, not the app's client secret. One given as
// `{ env: 'VAR' }` is written as that reference, as the Rust host keeps it.
// A signing key is never written either: `signing` records its file
// (`key_file`, absolute) or variable (`key_env`); a credential whose key is
// only a KeyObject is refused (see signing.js). Nor a DPoP key: `dpop`
// records its algorithm and `key_file` or `key_env` (see dpop.js).

import { publicSuffixWildcard } from '../boundary.js';
import { InvalidSettings } from '../errors.js';
import { storedDpop } from '../dpop.js';
import { storedSigning } from '../signing.js';
import { claimsOf, clientAuthOf, grantOf, needsOf, strategyOf } from '../wit-values.js';

/** @param {import('../../index.js').Settings} s */
export function settingsJson(s) {
  if (s === null || typeof s !== 'object') throw new InvalidSettings('settings must be an object');
  const pairs = (v) => (v === undefined ? [] : (Array.isArray(v) ? v : Object.entries(v)).map(([k, x]) => [String(k), String(x)]));
  const secret = s.clientSecret;
  const envName = secret !== null && typeof secret === 'object' ? /** @type {{env?: unknown}} */ (secret).env : undefined;
  const grant = grantOf(s.grant);
  const clientAuth = clientAuthOf(s.clientAuth);
  const needs = needsOf(s, grant, clientAuth === 'private_key_jwt', secret !== undefined && secret !== null);
  if (needs) throw new InvalidSettings(needs);
  const signing = storedSigning(s.signing);
  const dpop = storedDpop(s.dpop);
  // Not written at all: the Rust host sharing the store refuses such settings.
  const unmeant = publicSuffixWildcard(s);
  if (unmeant) throw new InvalidSettings(unmeant);
  /** @type {Record<string, any>} */
  const json = {
    // Written only when not the default, as the Rust host does: a column
    // without it reads as 'refresh-token' everywhere (0.3 settings too).
    ...(grant === 'refresh-token' ? {} : { grant }),
    token_url: s.tokenUrl,
    client_id: s.clientId,
    client_secret: typeof envName === 'string' ? { env: envName } : null,
    client_auth: clientAuth, // the Rust host's spelling, whichever was given
    scope: s.scope ?? null,
    extra_params: pairs(s.extraParams),
    strategy: strategyOf(s.strategy),
    expiry_margin_secs: s.expiryMarginSecs ?? 60,
    rejected_statuses: s.rejectedStatuses ?? [401],
    api_origins: s.apiOrigins ?? [],
    instance_url_origins: s.instanceUrlOrigins ?? [],
  };
  if (typeof json.token_url !== 'string' || typeof json.client_id !== 'string') {
    throw new InvalidSettings('tokenUrl and clientId must be strings');
  }
  for (const [key, name] of [['authorizationUrl', 'authorization_url'], ['deviceUrl', 'device_url'], ['issuer', 'issuer']]) {
    if (typeof s[key] === 'string') json[name] = s[key];
  }
  if (s.issuerSendsIss === true) json.issuer_sends_iss = true; // written only when set, as the Rust host does
  const authParams = pairs(s.authParams);
  if (authParams.length > 0) json.auth_params = authParams;
  // As the Python host writes them (grant 'jwt-bearer' above).
  if (grant === 'jwt-bearer') {
    json.subject = s.subject;
    json.claims = Object.fromEntries(claimsOf(s.claims));
  }
  if (signing !== undefined) json.signing = signing;
  if (dpop !== undefined) json.dpop = dpop;
  return JSON.stringify(json);
}
