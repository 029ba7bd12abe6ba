//! The refresh-and-retry routine. At most one token exchange per call, and a
//! bounded number of resends: no path loops.
//!
//! A call that loses a race to another worker adopts that worker's stored
//! token instead of spending its own refresh token (the fleet protocol in
//! [`crate::fleet`]). An adopted token may itself have expired while the call
//! waited for the lease, so a rejection after adopting leads to another
//! renewal (adopt again, or exchange), at most [`RENEWALS`] in all; a
//! rejection after the call's own exchange is final, and is remembered with
//! the keys: a later call whose token is rejected again refreshes only once
//! that evidence has run out ([`REJECTION_MEMORY`], or the token's expiry), so
//! a URL that always answers 401 does not turn every call into a refresh,
//! while a token that is rejected for any other reason (expired early,
//! revoked by an administrator) is refreshed at once.

use crate::challenge;
use crate::dpop;
pub use crate::effects::Effects;
use crate::fleet::{self, Held, Renewal, Timing};
use crate::http::{Request, Response};
use crate::keys::Keys;
use crate::origins;
use crate::rekey::oauth2::types::{
    ClientAuth, Grant, Purpose, SendError, Settings, Strategy, TransportError,
};
use crate::token::{self, Outcome};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

/// Attempts at the token endpoint for failures that provably spent nothing
/// (no connection, 429, 503).
pub const TOKEN_ATTEMPTS: u32 = 3;
/// First backoff; doubles per attempt unless the server sends `Retry-After`.
pub const BACKOFF: Duration = Duration::from_millis(200);
/// Newer token sets (adopted or exchanged) one call may try: one resend each.
pub const RENEWALS: u32 = 3;
pub use crate::keys::REJECTION_MEMORY;
/// How far ahead of this worker's clock another's evidence may be dated.
pub(crate) const EVIDENCE_SKEW: u64 = 60;

/// Why `send` gave the caller no response of its own: an error, or the API's
/// answer with a reason (`send-error`'s cases that carry a response).
#[derive(Debug)]
pub enum Refusal<B = alloc::vec::Vec<u8>> {
    Error(SendError),
    /// `rejected-after-refresh`.
    RejectedAfterRefresh(Response<B>),
    /// `insufficient-scope`: the scope the challenge named, and the answer.
    InsufficientScope(Option<String>, Response<B>),
}

#[cfg(test)]
impl<B> Refusal<B> {
    /// The `send-error` case's WIT name.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::RejectedAfterRefresh(_) => "rejected-after-refresh",
            Refusal::InsufficientScope(..) => "insufficient-scope",
            Refusal::Error(e) => match e {
                SendError::NotAuthenticated(_) => "not-authenticated",
                SendError::ReauthorizationRequired(_) => "reauthorization-required",
                SendError::SettingsRejected(_) => "settings-rejected",
                SendError::TokenEndpoint(_) => "token-endpoint",
                SendError::RefreshInDoubt(_) => "refresh-in-doubt",
                SendError::RejectedAfterRefresh(_) => "rejected-after-refresh",
                SendError::InsufficientScope(_) => "insufficient-scope",
                SendError::Transport(_) => "transport",
                SendError::KeysNotPersisted(_) => "keys-not-persisted",
                SendError::LeaseUnavailable(_) => "lease-unavailable",
                SendError::StoreUnavailable(_) => "store-unavailable",
                SendError::InvalidSettings(_) => "invalid-settings",
                SendError::InvalidKeys(_) => "invalid-keys",
            },
        }
    }
}

impl<B> From<SendError> for Refusal<B> {
    fn from(e: SendError) -> Self {
        Refusal::Error(e)
    }
}

pub fn send<F: Effects>(
    fx: &mut F,
    settings: &Settings,
    req: &Request<F::Body>,
) -> Result<Response<F::Body>, Refusal<F::Body>> {
    validate(settings)?;
    let spends = spends(settings);
    let stored = fleet::read(fx)?;
    fleet::check_alive(&stored.data)?;
    let keys = match stored.data.keys.as_deref().map(Keys::parse).transpose() {
        Err(e) => return Err(SendError::InvalidKeys(e).into()),
        // The client's own grant needs nothing stored: it fetches a token.
        Ok(None) if !spends => Keys::none(),
        Ok(None) => return Err(not_authenticated("no keys are stored for this credential").into()),
        Ok(Some(k)) if k.is_empty() && spends => {
            return Err(not_authenticated("no keys are stored for this credential").into());
        }
        Ok(Some(k)) => k,
    };
    fleet::check_grant(&stored.data, &keys, spends)?;
    let timing = Timing::of(&settings.fleet);

    let refresh_first = keys.access_token().is_none()
        || match settings.strategy {
            Strategy::OnAuthFailure => false,
            Strategy::EveryRequest => true,
            Strategy::BeforeExpiry(margin) => keys.expires_within(fx.now_unix(), margin.into()),
        };
    // The set the last renewal replaced: its evidence carries over only if
    // the renewal proves nothing (its own resend is rejected too).
    let mut replaced = None;
    let (mut keys, mut origin, mut renewals) = if refresh_first {
        let (renewed, origin) = refresh(fx, settings, timing, &keys)?;
        replaced = Some(keys);
        (renewed, Some(origin), 1)
    } else {
        (keys, None, 0)
    };
    loop {
        let resp = send_with_token(fx, settings, req, &keys)?;
        // A DPoP nonce challenge left after its one resend is the API's
        // answer, not a verdict on the token: a refresh cannot help.
        let nonce_again = settings.dpop.is_some() && challenge::dpop_nonce_wanted(&resp);
        if !is_rejected(settings, resp.status) || nonce_again {
            return Ok(resp);
        }
        if let Some(scope) = challenge::insufficient_scope(&resp) {
            return Err(Refusal::InsufficientScope(scope, resp));
        }
        let request = crate::keys::request_key(&req.method, &req.url);
        if origin == Some(Origin::Exchanged) {
            fleet::remember_rejection(fx, &keys, &request, replaced.as_ref());
            return Err(Refusal::RejectedAfterRefresh(resp));
        }
        let known = origin.is_none() && rejected_before(&keys, fx.now_unix(), &request);
        if renewals == RENEWALS || known {
            return Err(Refusal::RejectedAfterRefresh(resp));
        }
        let (renewed, from) = refresh(fx, settings, timing, &keys)?;
        replaced = Some(core::mem::replace(&mut keys, renewed));
        origin = Some(from);
        renewals += 1;
    }
}

/// What [`keepalive`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kept {
    /// Young enough, or renewed by another worker meanwhile: nothing spent.
    Fresh,
    /// The refresh token was exchanged and the result stored.
    Refreshed,
    /// The grant keeps no refresh token.
    NothingToKeep,
}

/// Exercises a refresh token that would die from disuse: refreshes when the
/// stored set was obtained `older_than` seconds ago or more (or when is
/// unknown), or when its refresh token expires within that time. The refresh
/// is `send`'s own (lease, mark, adoption), so a fleet running this at once
/// spends the token once.
pub fn keepalive<F: Effects>(
    fx: &mut F,
    settings: &Settings,
    older_than: u64,
) -> Result<Kept, SendError> {
    validate(settings)?;
    let spends = spends(settings);
    let stored = fleet::read(fx)?;
    fleet::check_alive(&stored.data)?;
    let keys = match stored.data.keys.as_deref().map(Keys::parse).transpose() {
        Err(e) => return Err(SendError::InvalidKeys(e)),
        Ok(Some(k)) if !k.is_empty() => k,
        Ok(_) if !spends => Keys::none(),
        Ok(_) => return Err(not_authenticated("no keys are stored for this credential")),
    };
    // A record the settings disagree with is reported, as `send` would,
    // rather than called "nothing to keep" while its refresh token dies.
    fleet::check_grant(&stored.data, &keys, spends)?;
    if !spends || keys.refresh_token().is_none() {
        return Ok(Kept::NothingToKeep);
    }
    if !due(&keys, fx.now_unix(), older_than) {
        return Ok(Kept::Fresh);
    }
    match refresh(fx, settings, Timing::of(&settings.fleet), &keys)? {
        (_, Origin::Adopted) => Ok(Kept::Fresh),
        (_, Origin::Exchanged) => Ok(Kept::Refreshed),
    }
}

/// Whether keepalive should refresh this set: obtained `older_than` ago or
/// more (or when is unknown, or dated ahead of this clock beyond a fleet's
/// skew), or its refresh token's stated end within `older_than` and half of
/// its stated life gone (so a life shorter than the window is not refreshed
/// again by every machine whose cron comes a minute after another's).
fn due(keys: &Keys, now: u64, older_than: u64) -> bool {
    let Some(at) = keys
        .refreshed_at()
        .filter(|at| *at <= now.saturating_add(EVIDENCE_SKEW))
    else {
        return true;
    };
    let age = now.saturating_sub(at);
    let dying = keys.refresh_expires_at().is_some_and(|end| {
        end <= now.saturating_add(older_than) && age >= end.saturating_sub(at) / 2
    });
    age >= older_than || dying
}

/// Whether a renewal spends a stored refresh token (else it is the client's
/// own grant, which spends nothing and so needs no mark).
fn spends(settings: &Settings) -> bool {
    matches!(settings.grant, Grant::RefreshToken)
}

/// A short fingerprint of what the token endpoint judges (endpoint, client,
/// its authentication, grant, scope, parameters, signing), for the memory of
/// a refusal: settings that differ in any of these ask again at once. The
/// host's signing key is not among them (the guest never sees it): a fixed
/// key under the same key id waits out the minute. 24 bits of SHA-256, so
/// the stored record names no secret and cannot confirm a guessed one.
fn settings_fingerprint(settings: &Settings) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(settings.token_url.as_bytes());
    part(settings.client_id.as_bytes());
    part(
        settings
            .client_secret
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    part(&[settings.client_auth as u8]);
    part(settings.scope.as_deref().unwrap_or("\0none").as_bytes());
    for (k, v) in &settings.extra_params {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    part(&[match settings.grant {
        Grant::RefreshToken => 0,
        Grant::ClientCredentials => 1,
        Grant::JwtBearer(_) => 2,
    }]);
    if let Grant::JwtBearer(b) = &settings.grant {
        part(b.subject.as_bytes());
        for (k, v) in &b.claims {
            part(k.as_bytes());
            part(v.as_bytes());
        }
    }
    if let Some(s) = &settings.signing {
        part(&[s.algorithm as u8]);
        part(s.key_id.as_deref().unwrap_or("\0none").as_bytes());
        part(s.audience.as_deref().unwrap_or("\0none").as_bytes());
    }
    // Turning DPoP on or off may be the fix for `invalid_dpop_proof`.
    part(&[settings.dpop.map_or(0xff, |a| a as u8)]);
    let digest = h.finalize();
    let hex = b"0123456789abcdef";
    // 24 bits: two settings sharing one (1 in 16 million) cost a minute; a
    // reader of the record cannot confirm a guessed secret with it.
    digest[..3]
        .iter()
        .flat_map(|b| [hex[usize::from(b >> 4)], hex[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

pub(crate) fn not_authenticated(why: &str) -> SendError {
    SendError::NotAuthenticated(format!("{why}: please authenticate"))
}

/// Whether the API already rejected this very token set right after it was
/// obtained, recently enough (and before its expiry) that another refresh
/// cannot be expected to help.
fn rejected_before(keys: &Keys, now: u64, request: &str) -> bool {
    // Evidence dated ahead of this clock (beyond the skew a fleet may have)
    // is not believed: it would stop refreshes for as long as it is ahead.
    let Some(at) = keys
        .rejected_at(request)
        .filter(|at| *at <= now.saturating_add(EVIDENCE_SKEW))
    else {
        return false;
    };
    let until = at.saturating_add(REJECTION_MEMORY);
    let until = keys.expires_at().map_or(until, |expiry| expiry.min(until));
    now < until
}

fn validate(settings: &Settings) -> Result<(), SendError> {
    check_settings(settings).map_err(SendError::InvalidSettings)
}

/// The rules `send` applies to the settings before anything is sent; the
/// `check-settings` export runs exactly these, so hosts that check a
/// credential when it is created never accept what `send` refuses.
pub fn check_settings(settings: &Settings) -> Result<(), String> {
    // RFC 6749 §3.2: the refresh token and client secret need TLS.
    origins::check_transport(&settings.token_url, "the token URL")?;
    if settings.client_id.is_empty() {
        return Err("the client id is empty".into());
    }
    check_signing(settings)?;
    let binding = binding(settings);
    binding.check()?;
    binding.require_bound()
}

/// The signed assertions: signing settings wherever a JWT is built, the
/// client's own grant with a way to prove the client, the JWT bearer grant's
/// claims its own.
pub(crate) fn check_signing(settings: &Settings) -> Result<(), String> {
    let signs = settings.client_auth == ClientAuth::PrivateKeyJwt;
    let bearer = match &settings.grant {
        Grant::ClientCredentials if !signs && settings.client_secret.is_none() => {
            return Err(
                "the client-credentials grant needs a client secret or private-key-jwt client authentication"
                    .into(),
            );
        }
        Grant::JwtBearer(b) => Some(b),
        _ => None,
    };
    if (signs || bearer.is_some()) && settings.signing.is_none() {
        return Err(if signs {
            "private-key-jwt client authentication needs signing settings (the key's algorithm)"
                .into()
        } else {
            "the jwt-bearer grant needs signing settings (the key's algorithm)".into()
        });
    }
    if let Some(signing) = &settings.signing {
        if signing.audience.as_deref().is_some_and(str::is_empty) {
            return Err(
                "the assertion audience is empty (leave it unset for the token URL)".into(),
            );
        }
        if signing.key_id.as_deref().is_some_and(str::is_empty) {
            return Err("the signing key id is empty (leave it unset to send none)".into());
        }
    }
    if let Some(b) = bearer {
        if b.subject.is_empty() {
            return Err("the jwt-bearer grant's subject is empty".into());
        }
        for (name, _) in &b.claims {
            if name.is_empty() || crate::assertion::REGISTERED.contains(&name.as_str()) {
                return Err(format!(
                    "the assertion claim {} cannot be configured: rekey sets iss, sub, aud, exp, iat, nbf and jti itself",
                    crate::origins::quoted(name)
                ));
            }
        }
    }
    Ok(())
}

/// Where the settings let the access token go.
fn binding(settings: &Settings) -> origins::Binding<'_> {
    origins::Binding {
        api: &settings.api_origins,
        instance: &settings.instance_url_origins,
    }
}

pub(crate) use crate::origins::is_loopback_authority;

fn is_rejected(settings: &Settings, status: u16) -> bool {
    if settings.rejected_statuses.is_empty() {
        status == 401
    } else {
        settings.rejected_statuses.contains(&status)
    }
}

/// The caller's request with our bearer token in place of any `Authorization`,
/// only to where the token may go.
fn send_with_token<F: Effects>(
    fx: &mut F,
    settings: &Settings,
    req: &Request<F::Body>,
    keys: &Keys,
) -> Result<Response<F::Body>, SendError> {
    binding(settings)
        .check_api_url(&req.url, keys.str_field("instance_url"))
        .map_err(SendError::InvalidSettings)?;
    // The token goes to the URL's origin; a `Host` naming another site would
    // hand it to that site on a shared front end (domain fronting).
    origins::check_host_header(&req.url, &req.headers)
        .map_err(|m| SendError::Transport(TransportError::InvalidRequest(m)))?;
    let token = keys
        .access_token()
        .ok_or_else(|| SendError::TokenEndpoint("token set has no access_token".into()))?;
    // A DPoP-bound token is useless (and refused) without its proof.
    let dpop = match (dpop::is_bound(keys.str_field("token_type")), settings.dpop) {
        (false, _) => None,
        (true, Some(alg)) => Some(alg),
        (true, None) => return Err(SendError::InvalidSettings(dpop::NEEDS_KEY.into())),
    };
    let scheme = if dpop.is_some() { "DPoP" } else { "Bearer" };
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| {
            let ours = k.eq_ignore_ascii_case("authorization")
                || (dpop.is_some() && k.eq_ignore_ascii_case("dpop"));
            !ours
        })
        .cloned()
        .collect();
    headers.push(("authorization".into(), format!("{scheme} {token}")));
    let mut authed = Request {
        method: req.method.clone(),
        url: req.url.clone(),
        headers,
        body: &req.body,
    };
    // Sent once more, with its nonce, when the API asks for one (RFC 9449 §9).
    let mut nonce: Option<String> = None;
    loop {
        if let Some(alg) = dpop {
            let target = dpop::Target {
                method: &req.method,
                url: &req.url,
                nonce: nonce.as_deref(),
                access_token: Some(token),
                now: fx.now_unix(),
            };
            let proof = dpop::proof(fx, alg, &target).map_err(SendError::InvalidSettings)?;
            authed.headers.retain(|(k, _)| k != "dpop");
            authed.headers.push(("dpop".into(), proof));
        }
        let resp = fx
            .http_send(Purpose::Api, &authed)
            .map_err(SendError::Transport)?;
        if dpop.is_some()
            && nonce.is_none()
            && resp.status == 401
            && challenge::dpop_nonce_wanted(&resp)
            && let Some(n) = dpop::nonce_of(&resp)
        {
            nonce = Some(n.into());
            continue;
        }
        return Ok(resp);
    }
}

/// Where a newer token set came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// Another worker stored it meanwhile.
    Adopted,
    /// This call exchanged the refresh token and persisted the result.
    Exchanged,
}

/// Gets a token set newer than `stale`: adopts one another worker stored
/// meanwhile, or, holding the lease, spends the refresh token and persists
/// the merged result before anyone may use it.
#[inline(never)]
fn refresh(
    fx: &mut impl Effects,
    settings: &Settings,
    timing: Timing,
    stale: &Keys,
) -> Result<(Keys, Origin), SendError> {
    let spends = spends(settings);
    let fingerprint = settings_fingerprint(settings);
    let (mut held, base) = match fleet::acquire(fx, timing, stale, spends, &fingerprint)? {
        Renewal::Adopt(keys) => return Ok((keys, Origin::Adopted)),
        Renewal::Exchange(held, base) => (held, base),
    };
    // A refresh token bound to a DPoP key is refused without its proof, and
    // the refusal (`invalid_grant`) would be recorded as a dead grant.
    if spends && settings.dpop.is_none() && dpop::is_bound(base.str_field("token_type")) {
        held.release(fx, false);
        return Err(SendError::InvalidSettings(dpop::NEEDS_KEY.into()));
    }
    // `acquire` takes the lease only for keys with a refresh token.
    if spends && base.refresh_token().is_none() {
        held.release(fx, false);
        return Err(not_authenticated(
            "no refresh token is stored for this credential",
        ));
    }
    let form = token::grant_request(settings, base.refresh_token());
    let exchanged = exchange(fx, settings, &form, &mut held, spends);
    match exchanged.result {
        Ok((mut response, sent)) => {
            if !spends {
                // Some servers send one with the client's own grant (RFC 6749
                // §4.4.3 says they should not). This grant never spends it,
                // and stored it would say the record is the refresh-token
                // grant's (`fleet::check_grant`), refusing every later call.
                response.remove("refresh_token");
            }
            let merged = base.merged(response, sent);
            if let Err(e) = held.store_keys(fx, &merged) {
                // The mark stays: successors find the refresh in doubt at
                // once rather than after the lease runs out.
                held.release(fx, true);
                return Err(e);
            }
            Ok((merged, Origin::Exchanged))
        }
        Err(SendError::ReauthorizationRequired(e)) if spends && !exchanged.maybe_spent => {
            held.record_dead(fx, &e.code);
            Err(SendError::ReauthorizationRequired(e))
        }
        // The settings were refused (the client's own grant has no grant to
        // lose: its refusal is the client's settings): remembered for a
        // minute, so a fleet does not ask again on every call.
        Err(SendError::ReauthorizationRequired(e) | SendError::SettingsRejected(e))
            if !exchanged.maybe_spent =>
        {
            let remembered = base.with_refusal(&e, fx.now_unix(), &fingerprint);
            held.release_with_keys(fx, &remembered);
            Err(SendError::SettingsRejected(e))
        }
        Err(e) => {
            held.release(fx, exchanged.maybe_spent);
            Err(if exchanged.maybe_spent {
                in_doubt(e)
            } else {
                e
            })
        }
    }
}

/// A failed exchange one of whose answers may have come after the provider
/// used the refresh token: whatever the last answer was, the call reports
/// what the record now says (the mark stays), so that no caller retries a
/// credential that is in doubt as if the failure were passing.
fn in_doubt(e: SendError) -> SendError {
    let last = match e {
        SendError::RefreshInDoubt(_) => return e,
        SendError::ReauthorizationRequired(o) | SendError::SettingsRejected(o) => {
            format!("the token endpoint answered {} ({})", o.code, o.status)
        }
        SendError::TokenEndpoint(m)
        | SendError::LeaseUnavailable(m)
        | SendError::InvalidSettings(m)
        | SendError::StoreUnavailable(m) => m,
        _ => "the token exchange failed".into(),
    };
    SendError::RefreshInDoubt(format!(
        "{last}, after an answer that may have come after the provider used the refresh token: \
         it may be spent"
    ))
}

/// One failed token-endpoint attempt.
struct Failure {
    reason: String,
    /// The request may have been processed (timeout, reset, a 5xx other than
    /// 503): the refresh token may be spent.
    maybe_processed: bool,
    retry_after: Option<Duration>,
}

/// What the exchange gave, and whether any of its answers may have come
/// after the provider used the refresh token.
struct Exchanged {
    result: Result<Tokens, SendError>,
    maybe_spent: bool,
}

/// A token response, and when the request that got it was sent (Unix
/// seconds): `expires_in` counts from when the provider answered, so
/// counting from the sending never overestimates the token's life, however
/// long the answer took (the simulator's seed 2888).
type Tokens = (serde_json::Map<String, serde_json::Value>, u64);

/// Whether an answer leaves the refresh token possibly spent: everything
/// but no connection, a refusal to send, 429, 503 and other 4xx.
fn may_have_spent(answer: &Result<Response, TransportError>) -> bool {
    match answer {
        Ok(r) => !(r.status == 429 || r.status == 503 || (400..500).contains(&r.status)),
        Err(TransportError::Connect(_))
        | Err(TransportError::Refused(_))
        | Err(TransportError::InvalidRequest(_)) => false,
        Err(_) => true,
    }
}

/// POSTs the refresh request, retrying only what may succeed on a second try,
/// renewing the lease and the mark before every retry.
///
/// Failures that provably spent nothing are retried with backoff. After one
/// that may have been processed, exactly one prompt retry follows (a provider
/// with a grace period for the just-rotated token then answers again); if
/// that fails too, or answers `invalid_grant`, the refresh is in doubt.
fn exchange(
    fx: &mut impl Effects,
    settings: &Settings,
    form: &token::Form,
    held: &mut Held,
    spends: bool,
) -> Exchanged {
    let mut maybe_spent = false;
    let result = exchange_attempts(fx, settings, form, held, &mut maybe_spent, spends);
    Exchanged {
        result,
        maybe_spent,
    }
}

fn exchange_attempts(
    fx: &mut impl Effects,
    settings: &Settings,
    form: &token::Form,
    held: &mut Held,
    maybe_spent: &mut bool,
    spends: bool,
) -> Result<Tokens, SendError> {
    let mut attempts_left = TOKEN_ATTEMPTS;
    let mut attempts = 0;
    let mut in_doubt = false;
    let mut delay = BACKOFF;
    loop {
        if attempts > 0 {
            fx.sleep(delay);
            delay = (delay * 2).min(token::MAX_RETRY_AFTER);
        }
        if let Err(lost) = held.mark(fx) {
            let why = match lost {
                fleet::Lost::Conflict => "the credential's record changed under this call".into(),
                fleet::Lost::Store(m) => format!("cannot renew the refresh lease: {m}"),
            };
            return Err(if in_doubt {
                SendError::RefreshInDoubt(format!(
                    "the retry after an unanswered attempt was not sent ({why}): \
                     the refresh token may be spent"
                ))
            } else {
                SendError::LeaseUnavailable(why)
            });
        }
        attempts += 1;
        attempts_left -= 1;
        let sent = fx.now_unix();
        // Built for this attempt (and a DPoP nonce's resend): a signed
        // assertion or proof in it is used once.
        let answer = dpop::token_exchange(fx, settings, Purpose::TokenEndpoint, sent, form, |fx| {
            fx.now_unix()
        })
        .map_err(SendError::InvalidSettings)?;
        let failure = match attempt(answer, maybe_spent, spends) {
            Ok(tokens) => return Ok((tokens, sent)),
            Err(Ok(final_error)) => {
                return Err(match final_error {
                    SendError::ReauthorizationRequired(e) if in_doubt => {
                        SendError::RefreshInDoubt(format!(
                            "the token endpoint answered {} after an earlier attempt went unanswered: \
                             that attempt most likely rotated the refresh token and its answer was lost",
                            e.code
                        ))
                    }
                    SendError::LeaseUnavailable(m) if in_doubt => {
                        SendError::RefreshInDoubt(format!(
                            "the retry after an unanswered attempt was not sent ({m}): \
                         the refresh token may be spent"
                        ))
                    }
                    other => other,
                });
            }
            Err(Err(failure)) => failure,
        };
        if in_doubt {
            return Err(SendError::RefreshInDoubt(format!(
                "{} on the retry after an unanswered attempt ({attempts} attempts): \
                 the refresh token may be spent",
                failure.reason
            )));
        }
        if failure.maybe_processed {
            in_doubt = true;
            attempts_left = 1;
            delay = BACKOFF;
        } else if let Some(after) = failure.retry_after {
            delay = after.min(token::MAX_RETRY_AFTER);
        }
        if attempts_left == 0 {
            return Err(SendError::TokenEndpoint(format!(
                "{} ({attempts} attempts)",
                failure.reason
            )));
        }
    }
}

/// One attempt: the tokens, a final error (`Err(Ok)`), or a failure worth
/// another attempt (`Err(Err)`).
///
/// Without a refresh token to spend (`spends` false), nothing an answer says
/// can leave anything spent: every failure worth another attempt is one.
fn attempt(
    answer: Result<Response, TransportError>,
    maybe_spent: &mut bool,
    spends: bool,
) -> Result<serde_json::Map<String, serde_json::Value>, Result<SendError, Failure>> {
    let failure = |reason: String, maybe_processed: bool| Failure {
        reason,
        maybe_processed: maybe_processed && spends,
        retry_after: None,
    };
    *maybe_spent |= spends && may_have_spent(&answer);
    Err(Err(match answer {
        Ok(resp) => match token::classify(&resp) {
            Outcome::Tokens(map) => return Ok(map),
            Outcome::Fail(e) => return Err(Ok(e)),
            Outcome::Retry {
                reason,
                retry_after,
                maybe_processed,
            } => Failure {
                reason,
                maybe_processed: maybe_processed && spends,
                retry_after,
            },
        },
        Err(TransportError::Connect(m)) => {
            failure(format!("token endpoint unreachable: {m}"), false)
        }
        Err(TransportError::Timeout) => failure("token endpoint timed out".into(), true),
        Err(TransportError::Other(m)) => failure(format!("token exchange failed: {m}"), true),
        Err(TransportError::TooLarge(n)) => {
            return Err(Ok(SendError::TokenEndpoint(format!(
                "token response exceeded the host's cap of {n} bytes"
            ))));
        }
        Err(TransportError::InvalidRequest(m)) => {
            return Err(Ok(SendError::InvalidSettings(format!(
                "token request: {m}"
            ))));
        }
        Err(TransportError::Refused(m)) => return Err(Ok(SendError::LeaseUnavailable(m))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{REFUSAL_MEMORY, REFUSED};
    use crate::testing::{self, Script, ok, script};
    use std::string::ToString;

    fn settings(strategy: Strategy) -> Settings {
        Settings {
            strategy,
            ..testing::settings()
        }
    }

    fn api() -> Request {
        Request {
            method: "POST".into(),
            url: "http://127.0.0.1:9/api".into(),
            headers: vec![("Authorization".into(), "Bearer caller".into())],
            body: b"payload".to_vec(),
        }
    }

    /// The API request with the stored `KEYS`.
    fn run(fx: &mut Script, strategy: Strategy) -> Result<Response, Refusal> {
        fx.record.data.keys = Some(KEYS.into());
        send(fx, &settings(strategy), &api())
    }

    /// The API request with these stored keys, refreshed on rejection.
    fn run_stored(fx: &mut Script, stored: Option<&str>) -> Result<Response, Refusal> {
        fx.record.data.keys = stored.map(Into::into);
        send(fx, &settings(Strategy::OnAuthFailure), &api())
    }

    const KEYS: &str = r#"{"access_token":"a1","refresh_token":"r1","expires_at":1500}"#;
    /// A token response: a new access token, the refresh token kept.
    const A2: &str = r#"{"access_token":"a2"}"#;
    /// Keys another worker stored meanwhile.
    const A9: &str = r#"{"access_token":"a9","refresh_token":"r9"}"#;

    /// The API rejects the token, the exchange mints a2, the resend is answered.
    fn refreshed_and_answered() -> [Result<Response, TransportError>; 3] {
        [ok(401, ""), ok(200, A2), ok(200, "hi")]
    }

    fn bearer(req: &Request) -> &str {
        let auth: Vec<_> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .collect();
        assert_eq!(auth.len(), 1, "exactly one authorization header");
        &auth[0].1
    }

    /// Bodies as handles into a table, as the hosts hold them: what the
    /// routine reads, and which body each request carried.
    struct Handles {
        script: Script,
        bodies: Vec<Vec<u8>>,
        read: Vec<usize>,
        carried: Vec<usize>,
    }

    impl crate::http::Http for Handles {
        type Body = usize;
        fn http_send(
            &mut self,
            purpose: Purpose,
            req: &Request<&usize>,
        ) -> Result<Response<usize>, TransportError> {
            self.carried.push(*req.body);
            let whole = Request {
                method: req.method.clone(),
                url: req.url.clone(),
                headers: req.headers.clone(),
                body: self.bodies[*req.body].clone(),
            };
            let resp = testing::BytesHttp::send_bytes(&mut self.script, purpose, &whole)?;
            let body = self.new_body(resp.body);
            Ok(Response {
                status: resp.status,
                headers: resp.headers,
                body,
            })
        }
        fn new_body(&mut self, bytes: Vec<u8>) -> usize {
            self.bodies.push(bytes);
            self.bodies.len() - 1
        }
        fn read_body(&mut self, body: &usize, limit: u64) -> Vec<u8> {
            self.read.push(*body);
            let bytes = &self.bodies[*body];
            bytes[..bytes.len().min(limit as usize)].to_vec()
        }
    }

    impl Effects for Handles {
        fn read_record(&mut self) -> Result<crate::rekey::oauth2::types::StoredRecord, String> {
            self.script.read_record()
        }
        fn write_record(
            &mut self,
            expected: u64,
            record: &crate::rekey::oauth2::types::CredentialRecord,
        ) -> Result<u64, crate::rekey::oauth2::types::WriteError> {
            self.script.write_record(expected, record)
        }
        fn now_ms(&self) -> u64 {
            self.script.now_ms()
        }
        fn sleep(&mut self, d: Duration) {
            self.script.sleep(d)
        }
    }
    impl crate::effects::Signing for Handles {
        fn random_u64(&mut self) -> u64 {
            crate::effects::Signing::random_u64(&mut self.script)
        }
        fn sign(
            &mut self,
            alg: crate::rekey::oauth2::types::SigningAlgorithm,
            input: &[u8],
        ) -> Result<Vec<u8>, String> {
            crate::effects::Signing::sign(&mut self.script, alg, input)
        }
    }

    #[test]
    fn api_bodies_pass_through_unread_and_the_retry_carries_the_same_body() {
        let big = "x".repeat(1 << 20);
        let mut fx = Handles {
            script: script([ok(401, &big), ok(200, A2), ok(200, &big)]),
            bodies: vec![vec![7; 1 << 20]],
            read: vec![],
            carried: vec![],
        };
        fx.script.record.data.keys = Some(KEYS.into());
        let api = api();
        let req = Request {
            method: api.method,
            url: api.url,
            headers: api.headers,
            body: 0,
        };
        let resp = send(&mut fx, &settings(Strategy::OnAuthFailure), &req).unwrap();
        // Bodies: 0 the request, 1 the 401's, 2 the token form, 3 the token
        // answer, 4 the final answer.
        assert_eq!(
            fx.carried,
            [0, 2, 0],
            "the resend carries the caller's body"
        );
        assert_eq!(fx.read, [3], "only the token answer is read");
        assert_eq!(resp.body, 4);
        assert_eq!(fx.bodies[4].len(), 1 << 20);
    }

    #[test]
    fn refresh_on_401_then_retry_once() {
        let mut fx = script([
            ok(401, ""),
            ok(200, r#"{"access_token":"a2","expires_in":60}"#),
            ok(200, "hi"),
        ]);
        let resp = run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(resp.body, b"hi");
        assert_eq!(bearer(&fx.sent[0]), "Bearer a1");
        assert_eq!(bearer(&fx.sent[2]), "Bearer a2");
        assert_eq!(fx.sent[2].body, b"payload");
        let stored = Keys::parse(&fx.emitted[0]).unwrap();
        assert_eq!(stored.refresh_token(), Some("r1"));
        assert_eq!(stored.expires_at(), Some(1060));
        assert_eq!((fx.leases, fx.releases), (1, 0));
    }

    #[test]
    fn rejected_after_refresh_is_final() {
        let mut fx = script([ok(401, ""), ok(200, A2), ok(401, "no")]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(matches!(
            err,
            Refusal::RejectedAfterRefresh(Response { status: 401, .. })
        ));
        assert_eq!(fx.sent.len(), 3);
    }

    #[test]
    fn emit_failure_stops_before_the_retry() {
        let mut fx = script([ok(401, ""), ok(200, A2)]).failing_emits();
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(matches!(
            err,
            Refusal::Error(SendError::KeysNotPersisted(_))
        ));
        assert_eq!(fx.sent.len(), 2);
        assert_eq!(fx.releases, 1);
    }

    #[test]
    fn adopts_keys_another_worker_stored() {
        let mut fx = script([ok(401, ""), ok(200, "hi")]).lease_shows(A9);
        run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(bearer(&fx.sent[1]), "Bearer a9");
        assert!(fx.emitted.is_empty());
        // Adopting takes no lease: nothing is written.
        assert_eq!((fx.leases, fx.releases, fx.record.version), (0, 0, 2));
    }

    #[test]
    fn an_adopted_token_that_expired_meanwhile_is_renewed_not_fatal() {
        // stale a1 → 401; adopt a9 (another worker's) → 401 (expired while
        // waiting); the store still holds a9, so exchange → a2 → 200.
        let mut fx = script([ok(401, ""), ok(401, ""), ok(200, A2), ok(200, "hi")]).lease_shows(A9);
        run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(bearer(&fx.sent[1]), "Bearer a9");
        let form = String::from_utf8(fx.sent[2].body.clone()).unwrap();
        assert!(
            form.contains("refresh_token=r9"),
            "spends the newest refresh token"
        );
        assert_eq!(bearer(&fx.sent[3]), "Bearer a2");
        assert_eq!(fx.emitted.len(), 1);
    }

    #[test]
    fn renewals_are_bounded_even_when_every_adopted_token_fails() {
        // Another worker keeps storing tokens the API rejects: adopt, adopt, adopt, stop.
        let mut fx = AdoptEachTime(
            script([ok(401, ""), ok(401, ""), ok(401, ""), ok(401, "")]),
            0,
        );
        fx.0.record.data.keys = Some(r#"{"access_token":"a0","refresh_token":"r0"}"#.into());
        let err = send(&mut fx, &settings(Strategy::OnAuthFailure), &api()).unwrap_err();
        assert!(matches!(err, Refusal::RejectedAfterRefresh(_)));
        assert_eq!(fx.0.sent.len(), 1 + RENEWALS as usize);
        assert!(fx.0.emitted.is_empty(), "nothing spent");
    }

    /// Each read at a renewal shows a token set newer than the last.
    struct AdoptEachTime(Script, u32);

    impl testing::BytesHttp for AdoptEachTime {
        fn send_bytes(
            &mut self,
            purpose: Purpose,
            req: &Request,
        ) -> Result<Response, TransportError> {
            self.0.send_bytes(purpose, req)
        }
    }

    impl Effects for AdoptEachTime {
        fn read_record(&mut self) -> Result<crate::rekey::oauth2::types::StoredRecord, String> {
            self.1 += 1;
            if self.1 > 1 {
                self.0.record.version += 1;
                self.0.record.data.keys = Some(format!(
                    r#"{{"access_token":"a{}","refresh_token":"r"}}"#,
                    self.1
                ));
            }
            self.0.read_record()
        }
        fn write_record(
            &mut self,
            expected: u64,
            record: &crate::rekey::oauth2::types::CredentialRecord,
        ) -> Result<u64, crate::rekey::oauth2::types::WriteError> {
            self.0.write_record(expected, record)
        }
        fn now_ms(&self) -> u64 {
            self.0.now_ms()
        }
        fn sleep(&mut self, d: Duration) {
            self.0.sleep(d)
        }
    }
    impl crate::effects::Signing for AdoptEachTime {
        fn random_u64(&mut self) -> u64 {
            crate::effects::Signing::random_u64(&mut self.0)
        }
        fn sign(
            &mut self,
            alg: crate::rekey::oauth2::types::SigningAlgorithm,
            input: &[u8],
        ) -> Result<Vec<u8>, String> {
            crate::effects::Signing::sign(&mut self.0, alg, input)
        }
    }

    #[test]
    fn strategies_decide_the_first_refresh() {
        let token = r#"{"access_token":"a2","expires_in":600}"#;
        for (strategy, refreshes) in [
            (Strategy::EveryRequest, true),
            (Strategy::BeforeExpiry(600), true),
            (Strategy::BeforeExpiry(60), false),
            (Strategy::OnAuthFailure, false),
        ] {
            let mut fx = script([ok(200, token), ok(200, "hi")]);
            run(&mut fx, strategy).unwrap();
            assert_eq!(fx.emitted.len(), usize::from(refreshes));
        }
    }

    #[test]
    fn token_endpoint_retries_5xx_not_4xx() {
        // 503 spent nothing: backoff; a timeout may have: one prompt retry.
        let refused = || Err(TransportError::Connect("refused".into()));
        for (first, second, slept) in [
            (
                ok(503, ""),
                Err(TransportError::Timeout),
                [BACKOFF, BACKOFF],
            ),
            (refused(), ok(503, ""), [BACKOFF, BACKOFF * 2]),
        ] {
            let mut fx = script([ok(401, ""), first, second, ok(200, A2), ok(200, "")]);
            run(&mut fx, Strategy::OnAuthFailure).unwrap();
            assert_eq!(fx.slept, slept);
            assert_eq!(fx.emitted.len(), 1);
        }

        let mut fx = script([ok(401, ""), ok(400, r#"{"error":"invalid_grant"}"#)]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(matches!(
            err,
            Refusal::Error(SendError::ReauthorizationRequired(_))
        ));
        assert_eq!(fx.sent.len(), 2);

        let mut fx = script([ok(401, ""), ok(503, ""), refused(), ok(429, "")]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::TokenEndpoint(m)) if m.contains("3 attempts"))
        );
    }

    /// A token request that may have been processed (and so rotated the
    /// refresh token) gets exactly one prompt retry.
    #[test]
    fn an_unanswered_refresh_is_retried_once_then_in_doubt() {
        let lost = [
            ok(502, ""),
            ok(500, ""),
            ok(504, ""),
            Err(TransportError::Timeout),
            Err(TransportError::Other("connection reset".into())),
        ];
        for first in lost {
            // A provider with a grace period answers the prompt retry.
            let mut fx = script([ok(401, ""), first.clone(), ok(200, A2), ok(200, "hi")]);
            run(&mut fx, Strategy::OnAuthFailure).unwrap();
            assert_eq!(fx.slept, [BACKOFF]);
            assert_eq!(fx.emitted.len(), 1);

            // A strict provider: the retry meets a spent token.
            let mut fx = script([
                ok(401, ""),
                first.clone(),
                ok(400, r#"{"error":"invalid_grant"}"#),
            ]);
            let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
            assert!(
                matches!(&err, Refusal::Error(SendError::RefreshInDoubt(m)) if m.contains("invalid_grant")),
                "{err:?}"
            );

            // Unanswered twice: stop, in doubt, after two token requests.
            let mut fx = script([ok(401, ""), first.clone(), ok(503, "")]);
            let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
            assert!(
                matches!(err, Refusal::Error(SendError::RefreshInDoubt(_))),
                "{err:?}"
            );
            assert_eq!(fx.sent.len(), 3);
            assert!(fx.emitted.is_empty());
        }
    }

    #[test]
    fn an_unanswered_refresh_on_the_last_attempt_still_gets_its_retry() {
        let mut fx = script([
            ok(401, ""),
            ok(503, ""),
            ok(429, ""),
            Err(TransportError::Timeout),
            ok(200, A2),
            ok(200, "hi"),
        ]);
        run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(fx.sent.len(), 6);
    }

    #[test]
    fn a_lease_inherited_in_doubt_spends_nothing() {
        let mut fx = script([ok(401, "")]).lease_shows(KEYS).in_doubt();
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::RefreshInDoubt(_))),
            "{err:?}"
        );
        assert_eq!(fx.sent.len(), 1, "no token request");
        assert_eq!((fx.leases, fx.releases), (0, 0), "nothing written");
        assert!(fx.record.data.refresh_mark.is_some(), "the mark stays");

        // The vanished holder's keys did arrive after all: use them.
        let mut fx = script([ok(401, ""), ok(200, "hi")])
            .lease_shows(A9)
            .in_doubt();
        run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(bearer(&fx.sent[1]), "Bearer a9");
    }

    #[test]
    fn insufficient_scope_is_not_expiry() {
        let mut challenge = Response {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                r#"Bearer error="insufficient_scope", scope="orders:write""#.into(),
            )],
            body: vec![],
        };
        let mut fx = script([Ok(challenge.clone())]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(&err, Refusal::InsufficientScope(scope, _) if scope.as_deref() == Some("orders:write")),
            "{err:?}"
        );
        assert_eq!((fx.sent.len(), fx.leases), (1, 0));

        challenge.headers[0].1 = r#"Bearer error="invalid_token""#.into();
        let mut fx = script([Ok(challenge), ok(200, A2), ok(200, "hi")]);
        run(&mut fx, Strategy::OnAuthFailure).unwrap();
        assert_eq!(fx.emitted.len(), 1);
    }

    #[test]
    fn a_token_refreshed_moments_ago_is_refreshed_again_when_rejected() {
        // A provider that sends no expires_in and ends sessions early (or an
        // administrator who revoked the token): refreshed at 999, rejected at
        // 1000 with no evidence that a refresh cannot help, so refresh.
        let fresh = r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":999}"#;
        let mut fx = script(refreshed_and_answered());
        run_stored(&mut fx, Some(fresh)).unwrap();
        assert_eq!((fx.leases, fx.emitted.len()), (1, 1));
    }

    #[test]
    fn a_rejection_right_after_a_refresh_is_remembered_and_not_refreshed_again() {
        // The API rejects the stale token, then the brand-new one.
        let mut fx = script([ok(401, ""), ok(200, A2), ok(401, "no")]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(matches!(err, Refusal::RejectedAfterRefresh(_)), "{err:?}");
        let stored = Keys::parse(fx.record.data.keys.as_deref().unwrap()).unwrap();
        assert_eq!(stored.access_token(), Some("a2"));
        let request = crate::keys::request_key("POST", "http://127.0.0.1:9/api");
        assert_eq!(
            stored.rejected_at(&request),
            Some(1_000),
            "the evidence is stored"
        );
        assert!(fx.record.data.lease.is_none() && fx.record.data.refresh_mark.is_none());

        // The next call's rejection of the same token costs no refresh.
        let version = fx.record.version;
        let mut next = script([ok(401, "still no")]);
        next.record = fx.record.clone();
        let err = send(&mut next, &settings(Strategy::OnAuthFailure), &api()).unwrap_err();
        assert!(matches!(err, Refusal::RejectedAfterRefresh(_)), "{err:?}");
        assert_eq!(
            (next.sent.len(), next.leases, next.record.version),
            (1, 0, version)
        );

        // A merge drops it: it was about that set (a renewal whose own
        // resend is rejected carries it over instead).
        let merged = stored.clone().merged(serde_json::Map::new(), 1_001);
        assert_eq!(merged.rejected_at(&request), None);
        let carried = merged.with_rejection(1_002, "other", Some(&stored));
        assert_eq!(carried.rejected_at(&request), Some(1_000));
    }

    #[test]
    fn the_evidence_holds_for_the_rejected_request_only() {
        // Rejected right after its refresh at 990 for another URL: this
        // request's rejection is news, so it refreshes.
        let other = crate::keys::request_key("GET", "http://127.0.0.1:9/admin");
        let keys = serde_json::json!({
            "access_token": "a1", "refresh_token": "r1",
            "rekey_refreshed_at": 990, "rekey_rejected": { other: 990 },
        });
        let mut fx = script(refreshed_and_answered()).at(1_000);
        run_stored(&mut fx, Some(&keys.to_string())).unwrap();
        assert_eq!((fx.leases, fx.emitted.len()), (1, 1));
        // The query and fragment do not make another request.
        let key = |url| crate::keys::request_key("GET", url);
        assert_eq!(key("https://a/x?page=2"), key("https://a/x#f"));
        assert_ne!(key("https://a/x"), key("https://a/y"));
        assert_ne!(
            key("https://a/x"),
            crate::keys::request_key("POST", "https://a/x")
        );
        // Sixteen requests are remembered, the oldest forgotten first.
        let mut k = Keys::parse(A2).unwrap();
        for i in 0..17 {
            k = k.with_rejection(1_000 + i, &format!("r{i}"), None);
        }
        let seen = |r: &str| k.rejected_at(r).is_some();
        assert!(!seen("r0") && seen("r1") && seen("r16"));
    }

    #[test]
    fn two_requests_that_always_answer_401_cost_one_refresh_each_not_one_per_call() {
        let (get, post) = (
            Request {
                method: "GET".into(),
                ..api()
            },
            api(),
        );
        let mut record = script([]).record;
        record.data.keys = Some(KEYS.into());
        let mut refreshes = 0;
        for call in 0..10 {
            let mut fx = script([
                ok(401, ""),
                ok(200, &format!(r#"{{"access_token":"a{call}"}}"#)),
                ok(401, ""),
            ]);
            fx.record = record.clone();
            let req = if call % 2 == 0 { &get } else { &post };
            let err = send(&mut fx, &settings(Strategy::OnAuthFailure), req).unwrap_err();
            assert!(matches!(err, Refusal::RejectedAfterRefresh(_)), "{err:?}");
            refreshes += fx
                .purposes
                .iter()
                .filter(|p| matches!(p, Purpose::TokenEndpoint))
                .count();
            record = fx.record;
        }
        assert_eq!(refreshes, 2);
    }

    fn client_credentials() -> Settings {
        Settings {
            grant: Grant::ClientCredentials,
            scope: Some("api.read".into()),
            ..settings(Strategy::OnAuthFailure)
        }
    }

    #[test]
    fn the_clients_own_grant_fetches_a_token_when_none_is_stored() {
        let mut fx = script([
            ok(200, r#"{"access_token":"c1","expires_in":60}"#),
            ok(200, "hi"),
        ]);
        assert!(fx.record.data.keys.is_none());
        let resp = send(&mut fx, &client_credentials(), &api()).unwrap();
        assert_eq!(resp.body, b"hi");
        let form = String::from_utf8(fx.sent[0].body.clone()).unwrap();
        assert!(
            form.starts_with("grant_type=client_credentials&scope=api.read&"),
            "{form}"
        );
        assert!(form.contains("client_secret=secret") && !form.contains("refresh_token"));
        assert_eq!(bearer(&fx.sent[1]), "Bearer c1");
        let stored = Keys::parse(fx.record.data.keys.as_deref().unwrap()).unwrap();
        assert_eq!(
            (stored.access_token(), stored.expires_at()),
            (Some("c1"), Some(1_060))
        );
        assert!(fx.record.data.lease.is_none() && fx.record.data.refresh_mark.is_none());
    }

    #[test]
    fn the_clients_own_grant_survives_a_refresh_token_in_its_answer() {
        let mut fx = script([
            ok(200, r#"{"access_token":"c1","refresh_token":"unasked"}"#),
            ok(200, "hi"),
            ok(200, "again"),
        ]);
        send(&mut fx, &client_credentials(), &api()).unwrap();
        let again = send(&mut fx, &client_credentials(), &api());
        assert_eq!(again.map(|r| r.body).ok(), Some(b"again".to_vec()));
        let stored = Keys::parse(fx.record.data.keys.as_deref().unwrap()).unwrap();
        assert_eq!(stored.refresh_token(), None);
    }

    #[test]
    fn the_clients_own_grant_renews_on_401_and_nothing_is_ever_in_doubt() {
        // A lost answer cannot have spent anything: plain retries, no mark.
        let mut fx = script([
            ok(401, ""),
            Err(TransportError::Timeout),
            ok(502, ""),
            ok(200, r#"{"access_token":"c2"}"#),
            ok(200, "hi"),
        ]);
        fx.record.data.keys = Some(r#"{"access_token":"c1"}"#.into());
        assert_eq!(
            send(&mut fx, &client_credentials(), &api()).unwrap().status,
            200
        );
        assert_eq!(bearer(&fx.sent[4]), "Bearer c2");
        // Every attempt failing: a passing failure, and no mark left.
        let mut fx = script([
            ok(401, ""),
            Err(TransportError::Timeout),
            ok(502, ""),
            ok(500, ""),
        ]);
        fx.record.data.keys = Some(r#"{"access_token":"c1"}"#.into());
        let err = send(&mut fx, &client_credentials(), &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::TokenEndpoint(_))),
            "{err:?}"
        );
        assert!(fx.record.data.refresh_mark.is_none() && fx.record.data.lease.is_none());
    }

    #[test]
    fn the_clients_own_grant_needs_a_secret_and_a_refusal_is_its_settings() {
        let public = Settings {
            client_secret: None,
            ..client_credentials()
        };
        let err = send(&mut script([]), &public, &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::InvalidSettings(_))),
            "{err:?}"
        );
        for code in ["invalid_grant", "invalid_client"] {
            let mut fx = script([ok(400, &format!(r#"{{"error":"{code}"}}"#))]);
            let err = send(&mut fx, &client_credentials(), &api()).unwrap_err();
            assert!(
                matches!(err, Refusal::Error(SendError::SettingsRejected(_))),
                "{err:?}"
            );
            assert!(fx.record.data.dead_grant.is_none(), "no grant to be dead");
        }
    }

    #[test]
    fn a_refusal_of_the_settings_is_remembered_a_minute_for_those_settings_only() {
        let refused = || ok(401, r#"{"error":"invalid_client"}"#);
        for settings in [client_credentials(), settings(Strategy::EveryRequest)] {
            let own = settings.grant == Grant::ClientCredentials;
            let mut fx = script([refused()]);
            fx.record.data.keys = (!own).then(|| KEYS.into());
            let first = send(&mut fx, &settings, &api()).unwrap_err();
            assert!(
                matches!(&first, Refusal::Error(SendError::SettingsRejected(e)) if e.code == "invalid_client")
            );
            assert_eq!(fx.sent.len(), 1);
            let stored = fx.record.data.keys.clone().unwrap();
            assert!(
                !stored.contains("secret"),
                "the memory names no secret: {stored}"
            );
            assert!(fx.record.data.refresh_mark.is_none() && fx.record.data.dead_grant.is_none());
            if !own {
                let kept = Keys::parse(&stored).unwrap();
                assert_eq!(
                    kept.refresh_token(),
                    Some("r1"),
                    "the refresh token is kept"
                );
            }

            // The same settings within the minute: refused without a request.
            fx.sleep(Duration::from_secs(REFUSAL_MEMORY - 1));
            let again = send(&mut fx, &settings, &api()).unwrap_err();
            assert!(
                matches!(&again, Refusal::Error(SendError::SettingsRejected(e)) if e.code == "invalid_client" && e.status == 401)
            );
            assert_eq!(
                fx.sent.len(),
                1,
                "nothing sent for a settings refusal just seen"
            );

            // A fixed secret asks at once; its token set drops the memory.
            let fixed = Settings {
                client_secret: Some("the right one".into()),
                ..settings.clone()
            };
            fx.answer([ok(200, r#"{"access_token":"a2"}"#), ok(200, "hi")]);
            assert_eq!(send(&mut fx, &fixed, &api()).unwrap().status, 200);
            assert!(!fx.record.data.keys.clone().unwrap().contains(REFUSED));

            // After the minute, the old settings ask again (once).
            let mut fx = script([refused(), refused()]);
            fx.record.data.keys = Some(stored);
            fx.sleep(Duration::from_secs(REFUSAL_MEMORY));
            send(&mut fx, &settings, &api()).unwrap_err();
            assert_eq!(fx.sent.len(), 1, "asked again after the minute");
        }
    }

    fn signing() -> Option<crate::rekey::oauth2::types::Signing> {
        Some(crate::rekey::oauth2::types::Signing {
            algorithm: crate::rekey::oauth2::types::SigningAlgorithm::Es256,
            key_id: None,
            audience: Some("https://issuer.example".into()),
        })
    }

    fn jwt_bearer() -> Settings {
        Settings {
            grant: Grant::JwtBearer(crate::rekey::oauth2::types::JwtBearer {
                subject: "svc@example".into(),
                claims: vec![("scope".into(), "api.read".into())],
            }),
            client_secret: None,
            signing: signing(),
            ..settings(Strategy::OnAuthFailure)
        }
    }

    /// A form field of a sent request, exactly once.
    fn field(req: &Request, name: &str) -> String {
        let found: Vec<String> = form_urlencoded::parse(&req.body)
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(found.len(), 1, "{name} once");
        found[0].clone()
    }

    fn jti(jwt: &str) -> String {
        use base64::Engine as _;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        claims["jti"].as_str().unwrap().into()
    }

    #[test]
    fn the_jwt_bearer_grant_is_fetched_like_the_clients_own_with_a_new_assertion_per_attempt() {
        // 503 then a token: two attempts, each its own assertion; an unasked
        // refresh token is dropped; nothing is in doubt or marked.
        let mut fx = script([
            ok(503, ""),
            ok(
                200,
                r#"{"access_token":"j1","refresh_token":"unasked","expires_in":60}"#,
            ),
            ok(200, "hi"),
        ]);
        let resp = send(&mut fx, &jwt_bearer(), &api()).unwrap();
        assert_eq!(resp.body, b"hi");
        assert_eq!(
            field(&fx.sent[0], "grant_type"),
            crate::assertion::JWT_BEARER_GRANT
        );
        let (first, second) = (
            field(&fx.sent[0], "assertion"),
            field(&fx.sent[1], "assertion"),
        );
        assert_ne!(jti(&first), jti(&second), "a retry signs a new assertion");
        assert_eq!(fx.signed.len(), 2);
        assert_eq!(bearer(&fx.sent[2]), "Bearer j1");
        let stored = Keys::parse(fx.record.data.keys.as_deref().unwrap()).unwrap();
        assert_eq!(
            (stored.access_token(), stored.refresh_token()),
            (Some("j1"), None)
        );
        assert!(fx.record.data.refresh_mark.is_none() && fx.record.data.lease.is_none());
    }

    #[test]
    fn a_signer_that_fails_sends_nothing_and_leaves_no_lease() {
        let mut fx = script([]);
        fx.sign_error = Some("no signing key is configured".into());
        let err = send(&mut fx, &jwt_bearer(), &api()).unwrap_err();
        assert!(
            matches!(&err, Refusal::Error(SendError::InvalidSettings(m)) if m.contains("no signing key")),
            "{err:?}"
        );
        assert!(fx.sent.is_empty());
        assert!(fx.record.data.lease.is_none() && fx.record.data.refresh_mark.is_none());
        // The refresh grant with private_key_jwt: nothing sent, nothing spent.
        let mut fx = script([ok(401, "")]);
        fx.record.data.keys = Some(KEYS.into());
        fx.sign_error = Some("no signing key is configured".into());
        let s = Settings {
            client_auth: ClientAuth::PrivateKeyJwt,
            signing: signing(),
            ..settings(Strategy::OnAuthFailure)
        };
        let err = send(&mut fx, &s, &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::InvalidSettings(_))),
            "{err:?}"
        );
        assert_eq!(fx.sent.len(), 1, "only the API request");
        assert!(fx.record.data.refresh_mark.is_none() && fx.record.data.lease.is_none());
    }

    #[test]
    fn a_refresh_with_private_key_jwt_signs_each_attempt_and_the_prompt_retry() {
        // A timeout may have spent the refresh token: the one prompt retry
        // goes out with its own assertion (a server that saw the first jti
        // would refuse it again).
        let mut fx = script([
            ok(401, ""),
            Err(TransportError::Timeout),
            ok(200, A2),
            ok(200, "hi"),
        ]);
        fx.record.data.keys = Some(KEYS.into());
        let s = Settings {
            client_auth: ClientAuth::PrivateKeyJwt,
            signing: signing(),
            ..settings(Strategy::OnAuthFailure)
        };
        assert_eq!(send(&mut fx, &s, &api()).unwrap().status, 200);
        let (a, b) = (
            field(&fx.sent[1], "client_assertion"),
            field(&fx.sent[2], "client_assertion"),
        );
        assert_ne!(jti(&a), jti(&b));
        for req in &fx.sent[1..3] {
            let body = String::from_utf8(req.body.clone()).unwrap();
            assert!(!body.contains("client_secret"), "{body}");
            assert_eq!(field(req, "refresh_token"), "r1");
        }
    }

    #[test]
    fn signed_assertions_need_their_settings() {
        let cases: [(Settings, &str); 6] = [
            (
                Settings {
                    signing: None,
                    ..jwt_bearer()
                },
                "jwt-bearer grant needs signing",
            ),
            (
                Settings {
                    client_auth: ClientAuth::PrivateKeyJwt,
                    ..settings(Strategy::OnAuthFailure)
                },
                "private-key-jwt client authentication needs signing",
            ),
            (
                Settings {
                    grant: Grant::JwtBearer(crate::rekey::oauth2::types::JwtBearer {
                        subject: String::new(),
                        claims: vec![],
                    }),
                    ..jwt_bearer()
                },
                "subject is empty",
            ),
            (
                Settings {
                    grant: Grant::JwtBearer(crate::rekey::oauth2::types::JwtBearer {
                        subject: "s".into(),
                        claims: vec![("aud".into(), "elsewhere".into())],
                    }),
                    ..jwt_bearer()
                },
                "\"aud\" cannot be configured",
            ),
            (
                Settings {
                    signing: signing().map(|mut s| {
                        s.audience = Some(String::new());
                        s
                    }),
                    ..jwt_bearer()
                },
                "audience is empty",
            ),
            (
                Settings {
                    client_secret: None,
                    ..client_credentials()
                },
                "client secret or private-key-jwt",
            ),
        ];
        for (s, expected) in cases {
            let err = check_settings(&s).unwrap_err();
            assert!(err.contains(expected), "{err} / {expected}");
        }
        // The client's own grant proven by its key: no secret needed.
        let signed = Settings {
            client_secret: None,
            client_auth: ClientAuth::PrivateKeyJwt,
            signing: signing(),
            ..client_credentials()
        };
        assert_eq!(check_settings(&signed), Ok(()));
        assert_eq!(check_settings(&jwt_bearer()), Ok(()));
    }

    #[test]
    fn workers_that_disagree_on_the_grant_leave_a_refresh_tokens_record_alone() {
        // A refresh-token worker died mid-refresh: its mark stands.
        let mut fx = script([ok(401, "")]);
        fx.record.data.keys = Some(KEYS.into());
        let before = fx.record.clone();
        fx.record.data.refresh_mark = Some(crate::rekey::oauth2::types::RefreshMark {
            holder: "vanished".into(),
            at_ms: 1,
        });
        let err = send(&mut fx, &client_credentials(), &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::InvalidSettings(_))),
            "{err:?}"
        );
        assert!(fx.sent.is_empty() && fx.record.data.refresh_mark.is_some());
        // Without a mark, a stored refresh token says the same.
        let mut fx = script([]);
        fx.record = before;
        let err = send(&mut fx, &client_credentials(), &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::InvalidSettings(_))),
            "{err:?}"
        );
        assert!(fx.sent.is_empty() && fx.emitted.is_empty());
    }

    #[test]
    fn evidence_dated_ahead_or_crowded_is_handled_without_blocking() {
        let request = crate::keys::request_key("POST", "http://127.0.0.1:9/api");
        // Dated an hour ahead of this clock: not believed, so it refreshes.
        let keys = serde_json::json!({
            "access_token": "a1", "refresh_token": "r1",
            "rekey_rejected": { request.clone(): 1_000 + 3_600 },
        });
        let mut fx = script(refreshed_and_answered()).at(1_000);
        run_stored(&mut fx, Some(&keys.to_string())).unwrap();
        assert_eq!(fx.leases, 1);
        // Sixteen entries of the same second: the one added stays.
        let mut k = Keys::parse(A2).unwrap();
        for i in 0..16 {
            k = k.with_rejection(1_000, &format!("r{i}"), None);
        }
        let k = k.with_rejection(1_000, "new", None);
        assert!(k.rejected_at("new").is_some());
    }

    #[test]
    fn a_zero_lifetime_is_not_remembered() {
        let merged = Keys::parse(KEYS).unwrap().merged(
            serde_json::Map::from_iter([("expires_in".into(), 0.into())]),
            100,
        );
        assert_eq!(merged.expires_at(), Some(100));
        let next = merged.merged(serde_json::Map::new(), 200);
        assert_eq!(next.expires_at(), None, "0 is no lifetime to carry on");
    }

    #[test]
    fn a_lease_ending_implausibly_far_ahead_is_taken_over() {
        for (ahead, honoured) in [
            (fleet::MAX_LEASE_TTL_MS + fleet::MAX_LEASE_SKEW_MS, true),
            (
                fleet::MAX_LEASE_TTL_MS + fleet::MAX_LEASE_SKEW_MS + 1,
                false,
            ),
            (u64::MAX - 1_000_000, false),
        ] {
            let mut fx = script(refreshed_and_answered());
            fx.record.data.lease = Some(crate::rekey::oauth2::types::Lease {
                holder: "far-ahead".into(),
                until_ms: 1_000_000 + ahead,
            });
            let result = run(&mut fx, Strategy::OnAuthFailure);
            if honoured {
                assert!(
                    matches!(result, Err(Refusal::Error(SendError::LeaseUnavailable(_)))),
                    "{result:?}"
                );
                assert_eq!(fx.leases, 0);
            } else {
                assert_eq!(result.unwrap().status, 200);
                assert_eq!((fx.leases, fx.emitted.len()), (1, 1));
            }
        }
    }

    #[test]
    fn the_evidence_is_not_written_under_another_workers_lease() {
        let mut other = script([]).record;
        // Another worker takes the lease the moment the retry is rejected.
        other.version += 10;
        let keys = Keys::parse(A2)
            .unwrap()
            .merged(serde_json::Map::new(), 1_000);
        other.data.keys = Some(keys.to_json());
        other.data.lease = Some(crate::rekey::oauth2::types::Lease {
            holder: "other".into(),
            until_ms: u64::MAX,
        });
        let before = other.clone();
        let mut fx2 = script([]);
        fx2.record = other;
        fleet::remember_rejection(&mut fx2, &keys, "request", None);
        assert!(
            fx2.record == before,
            "nothing written under someone's lease"
        );
    }

    #[test]
    fn settings_errors_are_not_reauthorization() {
        let mut fx = script([ok(401, ""), ok(401, r#"{"error":"invalid_client"}"#)]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::SettingsRejected(e)) if e.code == "invalid_client")
        );
    }

    #[test]
    fn a_host_header_naming_another_site_is_refused_before_anything_is_sent() {
        for host in [
            "evil.example",
            "127.0.0.1:10",
            "127.0.0.2:9",
            "",
            "127.0.0.1:9@x",
        ] {
            let mut fx = script([]);
            fx.record.data.keys = Some(KEYS.into());
            let mut req = api();
            req.headers.push(("HOST".into(), host.into()));
            let err = send(&mut fx, &settings(Strategy::OnAuthFailure), &req).unwrap_err();
            assert!(
                matches!(
                    &err,
                    Refusal::Error(SendError::Transport(TransportError::InvalidRequest(_)))
                ),
                "{host}: {err:?}"
            );
            assert!(fx.sent.is_empty(), "{host}");
        }
        // Its own origin, however written, is fine.
        for host in ["127.0.0.1:9", " 127.0.0.1:9 "] {
            let mut fx = script([ok(200, "ok")]);
            fx.record.data.keys = Some(KEYS.into());
            let mut req = api();
            req.headers.push(("host".into(), host.into()));
            assert!(
                send(&mut fx, &settings(Strategy::OnAuthFailure), &req).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn a_refused_token_request_is_final() {
        // The host refuses to spend (lease lost, deadline near): no retry.
        let refused = Err(TransportError::Refused("lease lost".into()));
        let mut fx = script([ok(401, ""), refused]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(matches!(err, Refusal::Error(SendError::LeaseUnavailable(m)) if m == "lease lost"));
        assert_eq!(fx.sent.len(), 2);
        assert!(fx.slept.is_empty());
    }

    /// The API's rejection, at `now`, of a stored set that was rejected right
    /// after its refresh at 990 (and expires at `expires_at`, when known):
    /// refreshed again, or final.
    fn refreshes_a_token_rejected_before(now: u64, expires_at: Option<u64>) -> bool {
        let api = api();
        let mut keys = serde_json::json!({
            "access_token": "a1", "refresh_token": "r1",
            "rekey_refreshed_at": 990,
            "rekey_rejected": { crate::keys::request_key(&api.method, &api.url): 990 },
        });
        if let Some(at) = expires_at {
            keys["expires_at"] = at.into();
        }
        let mut fx = script(refreshed_and_answered()).at(now);
        match run_stored(&mut fx, Some(&keys.to_string())) {
            Ok(_) => {
                assert_eq!((fx.leases, fx.emitted.len()), (1, 1));
                true
            }
            Err(Refusal::RejectedAfterRefresh(_)) => {
                assert_eq!((fx.sent.len(), fx.leases), (1, 0));
                false
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_evidence_of_a_rejection_ends_at_its_bound_or_with_the_token() {
        let memory = REJECTION_MEMORY;
        // Unknown or late expiry: REJECTION_MEMORY after the rejection.
        for expiry in [None, Some(990 + memory + 100)] {
            assert!(
                !refreshes_a_token_rejected_before(990, expiry),
                "{expiry:?}"
            );
            assert!(
                !refreshes_a_token_rejected_before(989 + memory, expiry),
                "{expiry:?}"
            );
            assert!(
                refreshes_a_token_rejected_before(990 + memory, expiry),
                "{expiry:?}"
            );
        }
        // A token that expires sooner is refreshed once it has expired.
        assert!(!refreshes_a_token_rejected_before(1_009, Some(1_010)));
        assert!(refreshes_a_token_rejected_before(1_010, Some(1_010)));
        // A clock behind the evidence keeps it.
        assert!(!refreshes_a_token_rejected_before(950, None));
    }

    #[test]
    fn an_unsent_retry_after_an_unanswered_attempt_is_in_doubt() {
        // The host refuses the prompt retry (lease lost): the first attempt
        // may still have spent the refresh token.
        let mut fx = script([
            ok(401, ""),
            Err(TransportError::Timeout),
            Err(TransportError::Refused("lease lost".into())),
        ]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(&err, Refusal::Error(SendError::RefreshInDoubt(m)) if m.contains("lease lost")),
            "{err:?}"
        );
        // Whatever comes last, a call that leaves the mark says the refresh
        // is in doubt (and names the last answer).
        let mut fx = script([
            ok(401, ""),
            ok(502, ""),
            ok(400, r#"{"error":"invalid_client"}"#),
        ]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(&err, Refusal::Error(SendError::RefreshInDoubt(m)) if m.contains("invalid_client")),
            "{err:?}"
        );
        assert!(fx.record.data.refresh_mark.is_some());
        // Unspent, a settings error stays one.
        let mut fx = script([ok(401, ""), ok(400, r#"{"error":"invalid_client"}"#)]);
        let err = run(&mut fx, Strategy::OnAuthFailure).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::SettingsRejected(_))),
            "{err:?}"
        );
        assert!(fx.record.data.refresh_mark.is_none());
    }

    #[test]
    fn plain_http_token_urls_only_on_loopback() {
        for (url, ok) in [
            ("https://idp.example/token", true),
            ("http://127.0.0.1:8080/token", true),
            // A name is not an address: what `localhost` resolves to is
            // the machine's configuration (issue 20).
            ("http://localhost/token", false),
            ("http://LOCALHOST:8080/token", false),
            ("http://[::1]:9/token", true),
            ("https://user@idp.example/token", false),
            ("http://x@127.0.0.1/token", false),
            ("https://idp.example\t/token", false),
            ("http://idp.example/token", false),
            ("http://127.0.0.1.evil.example/token", false),
            ("http://user@idp.example/token?x=127.0.0.1", false),
            ("ftp://127.0.0.1/token", false),
        ] {
            let mut s = settings(Strategy::OnAuthFailure);
            s.token_url = url.into();
            assert_eq!(validate(&s).is_ok(), ok, "{url}");
        }
    }

    /// Whether the host (the `url` crate, WHATWG rules) would send this URL
    /// to another machine: it parses, and its host is not loopback. (A URL
    /// that does not parse is never sent.) The guest may refuse more, never
    /// accept such a URL.
    fn host_sends_elsewhere(rest: &str) -> bool {
        let Ok(u) = url::Url::parse(&format!("http://{rest}")) else {
            return false;
        };
        !match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        }
    }

    #[test]
    fn the_loopback_check_never_accepts_what_the_host_parser_does_not() {
        for rest in [
            "192.0.2.2:18081\\@127.0.0.1/token",
            "127.0.0.1\\@192.0.2.2/",
            "192.0.2.2\t@127.0.0.1/",
            "192.0.2.2\n@127.0.0.1/",
            "127.0.0.1:80@192.0.2.2/",
            "%31%32%37.0.0.1/",
            "[::ffff:192.0.2.2]/",
            "localhost.example/",
            "127.0.0.1./",
            "user:pw@127.0.0.1:9/token",
            "[::1]:9/",
            "localhost:8080/",
        ] {
            assert!(
                !(is_loopback_authority(rest) && host_sends_elsewhere(rest)),
                "guest accepts {rest:?}, which the host would send elsewhere"
            );
        }
    }

    #[test]
    fn loopback_check_differential() {
        use proptest::prelude::*;
        // Hosts, and pieces of hosts, that parsers read differently.
        let head = proptest::option::of(proptest::sample::select(vec![
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "[::1]",
            "[::1",
            "[0:0:0:0:0:0:0:1]",
            "[::ffff:127.0.0.1]",
            "192.0.2.2",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "127.0.0.01",
            "user:pw@",
            "192.0.2.2@",
            "\u{ff4c}ocalhost",
        ]));
        let tail = prop_oneof![
            "[0-9a-z.:@\\\\/\\[\\]%\t\n#?]{0,24}",
            "[0-9A-Za-z.:@\\\\/\\[\\]%;=&!$'()*+,~_^|<>\"` \u{0}\u{7f}\u{ad}\u{3002}-]{0,16}",
        ];
        crate::proptests::check(
            "loopback_check_differential",
            12_000,
            (head, tail),
            |(head, tail)| {
                let rest = format!("{}{tail}", head.unwrap_or(""));
                prop_assert!(
                    !(is_loopback_authority(&rest) && host_sends_elsewhere(&rest)),
                    "guest accepts {:?}, which the host would send elsewhere",
                    rest
                );
                Ok(())
            },
        );
    }

    #[test]
    fn the_loopback_check_reads_each_part_of_the_authority() {
        for (rest, loopback) in [
            ("127.0.0.1/token", true),
            ("127.255.0.9:8080/", true),
            ("127.0.0.255", true),
            ("u!$&'()*+,;=~-._:pw@127.0.0.1/", true),
            ("evil.example@127.0.0.1/", true),
            ("localhost?q", true),
            ("localhost#f", true),
            ("[::1]", true),
            // Not four octets, not 127, not short decimal octets.
            ("127.0.0.1.5/", false),
            ("127.0.1/", false),
            ("127/", false),
            ("10.0.0.1/", false),
            ("128.0.0.1/", false),
            ("127.0.0.1234/", false),
            // Leading zeros: WHATWG parsers read octal (010 is 8).
            ("127.000.000.001/", false),
            ("127.0.0.010/", false),
            ("127.0.0.999/", false),
            ("127.0.0.abc/", false),
            ("127.0.0./", false),
            ("127..0.1/", false),
            ("127.0.0.1x/", false),
            ("1127.0.0.1/", false),
            ("localhost.example/", false),
            ("[::2]/", false),
            ("127.0.0.1@evil.example/", false),
            // Characters parsers disagree on are refused wherever they are.
            ("x\\@localhost/", false),
            ("x%41@localhost/", false),
            ("x @localhost/", false),
            ("x\t@localhost/", false),
            ("x\u{1}@localhost/", false),
            ("x\u{7f}@localhost/", false),
            ("localhost:80\u{0}/", false),
            ("localhost: /", false),
        ] {
            assert_eq!(is_loopback_authority(rest), loopback, "{rest:?}");
        }
    }

    #[test]
    fn nothing_stored_means_please_authenticate() {
        for (stored, why, leases) in [
            (None, "no keys are stored", 0),
            (Some("{}"), "no keys are stored", 0),
            (
                Some(r#"{"access_token":"","refresh_token":""}"#),
                "no refresh token is stored",
                0,
            ),
        ] {
            let mut fx = script([]);
            let err = run_stored(&mut fx, stored).unwrap_err();
            let expected = format!("{why} for this credential: please authenticate");
            assert!(
                matches!(&err, Refusal::Error(SendError::NotAuthenticated(m)) if *m == expected),
                "{err:?}"
            );
            assert!(fx.sent.is_empty());
            assert_eq!((fx.leases, fx.releases), (leases, leases));
        }
    }

    /// Keepalive on these stored keys, asking for sets older than an hour
    /// to be refreshed.
    fn keepalive_on(fx: &mut Script, keys: &str) -> Result<Kept, SendError> {
        fx.record.data.keys = Some(keys.into());
        keepalive(fx, &settings(Strategy::OnAuthFailure), 3600)
    }

    fn body_of(req: &Request) -> String {
        String::from_utf8(req.body.clone()).unwrap()
    }

    #[test]
    fn keepalive_leaves_a_young_set_alone_and_sends_nothing() {
        let mut fx = script([]);
        let young = r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":900}"#;
        assert_eq!(keepalive_on(&mut fx, young).unwrap(), Kept::Fresh);
        assert!(fx.sent.is_empty() && fx.emitted.is_empty());
        assert_eq!(fx.leases, 0);
    }

    #[test]
    fn keepalive_refreshes_an_idle_an_undated_or_a_dying_set_without_an_api_request() {
        for keys in [
            // Obtained 2 hours ago.
            r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":2800}"#,
            // Imported: when it was obtained is unknown.
            r#"{"access_token":"a1","refresh_token":"r1"}"#,
            // Younger than asked, but the provider said the refresh token
            // dies in 100 s, and half its stated life is gone.
            r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":9900,"refresh_expires_at":10100}"#,
        ] {
            let mut fx =
                script([ok(200, r#"{"access_token":"a2","refresh_token":"r2"}"#)]).at(10_000);
            assert_eq!(
                keepalive_on(&mut fx, keys).unwrap(),
                Kept::Refreshed,
                "{keys}"
            );
            assert_eq!(
                fx.purposes,
                [Purpose::TokenEndpoint],
                "one token request, no API request"
            );
            let form = body_of(&fx.sent[0]);
            assert!(
                form.contains("grant_type=refresh_token") && form.contains("refresh_token=r1"),
                "{form}"
            );
            let stored = Keys::parse(fx.record.data.keys.as_deref().unwrap()).unwrap();
            assert_eq!(
                stored.refresh_token(),
                Some("r2"),
                "the rotated token is stored"
            );
            assert_eq!(stored.refreshed_at(), Some(10_000));
            assert!(fx.record.data.refresh_mark.is_none() && fx.record.data.lease.is_none());
        }
    }

    #[test]
    fn keepalive_adopts_a_set_another_worker_stored_and_spends_nothing() {
        /// A fleet: another machine's keepalive stores r9 between this
        /// one's first read and its lease.
        struct Raced(Script, u32);
        impl crate::http::Http for Raced {
            type Body = Vec<u8>;
            fn http_send(
                &mut self,
                p: Purpose,
                r: &Request<&Vec<u8>>,
            ) -> Result<Response, TransportError> {
                self.0.http_send(p, r)
            }
            fn new_body(&mut self, b: Vec<u8>) -> Vec<u8> {
                b
            }
            fn read_body(&mut self, b: &Vec<u8>, limit: u64) -> Vec<u8> {
                b[..b.len().min(limit as usize)].to_vec()
            }
        }
        impl Effects for Raced {
            fn read_record(&mut self) -> Result<crate::rekey::oauth2::types::StoredRecord, String> {
                self.1 += 1;
                if self.1 == 2 {
                    self.0.record.data.keys = Some(A9.into());
                    self.0.record.version += 1;
                }
                self.0.read_record()
            }
            fn write_record(
                &mut self,
                expected: u64,
                record: &crate::rekey::oauth2::types::CredentialRecord,
            ) -> Result<u64, crate::rekey::oauth2::types::WriteError> {
                self.0.write_record(expected, record)
            }
            fn now_ms(&self) -> u64 {
                self.0.now_ms()
            }
            fn sleep(&mut self, d: Duration) {
                self.0.sleep(d)
            }
        }
        impl crate::effects::Signing for Raced {
            fn random_u64(&mut self) -> u64 {
                crate::effects::Signing::random_u64(&mut self.0)
            }
            fn sign(
                &mut self,
                alg: crate::rekey::oauth2::types::SigningAlgorithm,
                input: &[u8],
            ) -> Result<Vec<u8>, String> {
                crate::effects::Signing::sign(&mut self.0, alg, input)
            }
        }
        let mut fx = Raced(script([]), 0);
        fx.0.record.data.keys = Some(KEYS.into());
        let kept = keepalive(&mut fx, &settings(Strategy::OnAuthFailure), 3600).unwrap();
        assert_eq!(kept, Kept::Fresh);
        assert!(
            fx.0.sent.is_empty(),
            "nothing spent: the other machine refreshed"
        );
        assert_eq!(fx.0.leases, 0);
    }

    #[test]
    fn keepalive_has_nothing_to_keep_without_a_refresh_token_and_fails_clearly_otherwise() {
        let mut fx = script([]);
        let own = Settings {
            grant: Grant::ClientCredentials,
            ..settings(Strategy::OnAuthFailure)
        };
        assert_eq!(keepalive(&mut fx, &own, 3600).unwrap(), Kept::NothingToKeep);
        assert_eq!(
            keepalive_on(&mut fx, r#"{"access_token":"a1"}"#).unwrap(),
            Kept::NothingToKeep
        );

        fx.record.data.keys = None;
        let none = keepalive(&mut fx, &settings(Strategy::OnAuthFailure), 3600).unwrap_err();
        assert!(matches!(none, SendError::NotAuthenticated(_)), "{none:?}");

        fx.record.data.dead_grant = Some(crate::rekey::oauth2::types::DeadGrant {
            code: "invalid_grant".into(),
            at: 0,
        });
        let dead = keepalive_on(&mut fx, KEYS).unwrap_err();
        assert!(
            matches!(dead, SendError::ReauthorizationRequired(_)),
            "{dead:?}"
        );
        assert!(fx.sent.is_empty(), "no request for a missing or dead grant");
    }

    #[test]
    fn keepalive_on_a_revoked_grant_records_it_dead() {
        let mut fx = script([ok(400, r#"{"error":"invalid_grant"}"#)]);
        let err = keepalive_on(&mut fx, KEYS).unwrap_err();
        assert!(
            matches!(err, SendError::ReauthorizationRequired(_)),
            "{err:?}"
        );
        assert_eq!(
            fx.record.data.dead_grant.as_ref().map(|d| d.code.as_str()),
            Some("invalid_grant")
        );
        assert_eq!(
            fx.record.data.keys.as_deref(),
            Some(KEYS),
            "the keys are kept"
        );
    }
}

#[cfg(test)]
mod fleet_review_tests {
    use super::*;
    use crate::rekey::oauth2::types::{
        CredentialRecord, Lease, SigningAlgorithm, StoredRecord, WriteError,
    };
    use crate::testing::{self, BytesHttp, Script, ok, script};

    /// Script whose record is replaced by `hook` at the n-th read (1-based):
    /// another worker's doing between two reads of this call.
    struct OnRead {
        s: Script,
        reads: u32,
        hooks: std::vec::Vec<(u32, CredentialRecord)>,
    }
    impl BytesHttp for OnRead {
        fn send_bytes(
            &mut self,
            p: Purpose,
            r: &crate::http::Request,
        ) -> Result<crate::http::Response, TransportError> {
            self.s.send_bytes(p, r)
        }
    }
    impl crate::effects::Signing for OnRead {
        fn random_u64(&mut self) -> u64 {
            crate::effects::Signing::random_u64(&mut self.s)
        }
        fn sign(&mut self, a: SigningAlgorithm, i: &[u8]) -> Result<std::vec::Vec<u8>, String> {
            crate::effects::Signing::sign(&mut self.s, a, i)
        }
    }
    impl Effects for OnRead {
        fn read_record(&mut self) -> Result<StoredRecord, String> {
            self.reads += 1;
            if let Some((_, rec)) = self.hooks.iter().find(|(n, _)| *n == self.reads) {
                self.s.record.data = rec.clone();
                self.s.record.version += 1;
            }
            self.s.read_record()
        }
        fn write_record(&mut self, e: u64, r: &CredentialRecord) -> Result<u64, WriteError> {
            self.s.write_record(e, r)
        }
        fn now_ms(&self) -> u64 {
            self.s.now_ms()
        }
        fn sleep(&mut self, d: Duration) {
            self.s.sleep(d)
        }
    }
    fn rec(keys: Option<&str>, lease_until_ms: Option<u64>) -> CredentialRecord {
        CredentialRecord {
            keys: keys.map(Into::into),
            lease: lease_until_ms.map(|until_ms| Lease {
                holder: "other".into(),
                until_ms,
            }),
            refresh_mark: None,
            dead_grant: None,
        }
    }
    fn api() -> crate::http::Request {
        crate::http::Request {
            method: "GET".into(),
            url: "http://127.0.0.1:9/x".into(),
            headers: vec![],
            body: vec![],
        }
    }

    /// A fleet of client-credentials workers with a wrong secret: worker A
    /// holds the lease while this one arrives (no memory yet), A is refused
    /// and stores the memory; this worker, waiting in acquire, then takes the
    /// lease and asks the token endpoint again.
    #[test]
    fn a_worker_waiting_for_the_lease_heeds_the_refusal_stored_meanwhile() {
        let s = Settings {
            grant: Grant::ClientCredentials,
            ..testing::settings()
        };
        let fp = settings_fingerprint(&s);
        let memory = Keys::none()
            .with_refusal(
                &crate::rekey::oauth2::types::OauthError {
                    status: 401,
                    code: "invalid_client".into(),
                },
                1000,
                &fp,
            )
            .to_json();
        let mut fx = OnRead {
            s: script([ok(401, r#"{"error":"invalid_client"}"#)]),
            reads: 0,
            // read 1: send's (empty); read 2: acquire sees A's live lease;
            // read 3: A released with the memory.
            hooks: vec![
                (2, rec(None, Some(1_030_000))),
                (3, rec(Some(&memory), None)),
            ],
        };
        let err = send(&mut fx, &s, &api()).unwrap_err();
        assert!(
            matches!(err, Refusal::Error(SendError::SettingsRejected(_))),
            "{err:?}"
        );
        assert_eq!(
            fx.s.sent.len(),
            0,
            "asked again although the refusal was stored meanwhile"
        );
    }

    /// keepalive on N machines against a provider that answers a refresh with
    /// the still-valid access token: the second machine does not adopt (same
    /// access token) and refreshes again although the set was refreshed a
    /// moment ago.
    #[test]
    fn keepalive_does_not_refresh_a_set_another_machine_just_refreshed() {
        let s = testing::settings();
        let just = r#"{"access_token":"a1","refresh_token":"r9","rekey_refreshed_at":10000}"#;
        let mut fx = OnRead {
            s: script([ok(200, r#"{"access_token":"a1","refresh_token":"r10"}"#)]).at(10_000),
            reads: 0,
            hooks: vec![(2, rec(Some(just), None))],
        };
        fx.s.record.data.keys =
            Some(r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":1}"#.into());
        let kept = keepalive(&mut fx, &s, 3600).unwrap();
        assert_eq!(
            (kept, fx.s.sent.len()),
            (Kept::Fresh, 0),
            "refreshed twice in one cron run"
        );
    }

    /// A set whose rekey_refreshed_at a clock far ahead wrote: keepalive on
    /// correct clocks says fresh until that date, and the refresh token dies
    /// from disuse meanwhile.
    #[test]
    fn keepalive_does_not_trust_a_refresh_dated_in_the_future() {
        let s = testing::settings();
        let mut fx = script([ok(200, r#"{"access_token":"a2","refresh_token":"r2"}"#)]).at(10_000);
        fx.record.data.keys = Some(
            r#"{"access_token":"a1","refresh_token":"r1","rekey_refreshed_at":99999999}"#.into(),
        );
        assert_eq!(keepalive(&mut fx, &s, 3600).unwrap(), Kept::Refreshed);
    }

    /// The fingerprint ignores the grant kind and includes nothing of the key.
    #[test]
    fn fingerprint_grant_kind() {
        let a = testing::settings();
        let b = Settings {
            grant: Grant::ClientCredentials,
            ..testing::settings()
        };
        assert_ne!(settings_fingerprint(&a), settings_fingerprint(&b));
    }

    /// settings-rejected after an unanswered first attempt: in doubt, no memory.
    #[test]
    fn settings_rejected_after_a_lost_attempt_is_in_doubt_without_memory() {
        let mut fx = script([
            Err(TransportError::Timeout),
            ok(401, r#"{"error":"invalid_client"}"#),
        ]);
        fx.record.data.keys = Some(r#"{"access_token":"a1","refresh_token":"r1"}"#.into());
        let err = keepalive(&mut fx, &testing::settings(), 0).unwrap_err();
        assert!(matches!(err, SendError::RefreshInDoubt(_)), "{err:?}");
        assert!(
            !fx.record
                .data
                .keys
                .clone()
                .unwrap()
                .contains("rekey_refused")
        );
        assert!(fx.record.data.refresh_mark.is_some());
    }
}

#[cfg(test)]
mod keepalive_life_tests {
    use super::*;
    use crate::testing::{self, ok, script};

    /// A provider whose refresh tokens live a day (shorter than the 7-day
    /// window): machine A's cron refreshes; machine B's cron, a minute later
    /// on the same record, refreshes again (and so on, every machine, every run).
    #[test]
    fn a_second_machine_a_minute_later_does_not_refresh_again() {
        let s = testing::settings();
        let week = 7 * 86_400;
        let answer =
            r#"{"access_token":"a2","refresh_token":"r2","refresh_token_expires_in":86400}"#;
        let mut a = script([ok(200, answer)]).at(1_000_000);
        a.record.data.keys = Some(r#"{"access_token":"a1","refresh_token":"r1"}"#.into());
        assert_eq!(keepalive(&mut a, &s, week).unwrap(), Kept::Refreshed);
        let mut b = script([ok(
            200,
            r#"{"access_token":"a3","refresh_token":"r3","refresh_token_expires_in":86400}"#,
        )])
        .at(1_000_060);
        b.record = a.record.clone();
        assert_eq!(
            keepalive(&mut b, &s, week).unwrap(),
            Kept::Fresh,
            "refreshed again a minute later"
        );
    }
}

#[cfg(test)]
mod refusal_memory_tests {
    use super::*;
    use crate::rekey::oauth2::types::{JwtBearer, OauthError, Signing, SigningAlgorithm};
    use crate::testing::{self, ok, script};

    /// Every field the token endpoint judges changes the fingerprint.
    #[test]
    fn every_judged_field_changes_the_fingerprint() {
        let base = testing::settings();
        let fp = settings_fingerprint(&base);
        let changed = [
            Settings {
                token_url: "http://127.0.0.1:9/other".into(),
                ..base.clone()
            },
            Settings {
                client_id: "other".into(),
                ..base.clone()
            },
            Settings {
                client_secret: Some("other".into()),
                ..base.clone()
            },
            Settings {
                client_secret: None,
                ..base.clone()
            },
            Settings {
                client_auth: ClientAuth::ClientSecretBasic,
                ..base.clone()
            },
            Settings {
                scope: Some("s".into()),
                ..base.clone()
            },
            Settings {
                extra_params: vec![("a".into(), "b".into())],
                ..base.clone()
            },
            Settings {
                grant: Grant::ClientCredentials,
                ..base.clone()
            },
            Settings {
                grant: Grant::JwtBearer(JwtBearer {
                    subject: "s".into(),
                    claims: vec![],
                }),
                ..base.clone()
            },
            Settings {
                signing: Some(Signing {
                    algorithm: SigningAlgorithm::Es256,
                    key_id: None,
                    audience: None,
                }),
                ..base.clone()
            },
        ];
        for other in &changed {
            assert_ne!(settings_fingerprint(other), fp);
        }
        // What the token endpoint does not judge leaves it alone.
        let same = Settings {
            api_origins: vec!["*".into()],
            ..base.clone()
        };
        assert_eq!(settings_fingerprint(&same), fp);
        assert_eq!(fp.len(), 6);
    }

    /// A memory dated far ahead (a clock far ahead, a damaged record) is not
    /// believed: it would block the credential until then.
    #[test]
    fn a_refusal_dated_ahead_of_the_clock_is_not_believed() {
        let s = Settings {
            grant: Grant::ClientCredentials,
            ..testing::settings()
        };
        let refused = OauthError {
            status: 401,
            code: "invalid_client".into(),
        };
        let mut fx = script([ok(200, r#"{"access_token":"c1"}"#), ok(200, "hi")]);
        let ahead = Keys::none().with_refusal(&refused, 1_000 + 3_600, &settings_fingerprint(&s));
        fx.record.data.keys = Some(ahead.to_json());
        assert_eq!(send(&mut fx, &s, &api()).unwrap().status, 200);
    }

    /// Keepalive with client-credentials settings on a record that holds a
    /// refresh token reports the disagreement, as send does.
    #[test]
    fn keepalive_reports_a_record_its_settings_disagree_with() {
        let s = Settings {
            grant: Grant::ClientCredentials,
            ..testing::settings()
        };
        let mut fx = script([]);
        fx.record.data.keys = Some(r#"{"access_token":"a1","refresh_token":"r1"}"#.into());
        let err = keepalive(&mut fx, &s, 0).unwrap_err();
        assert!(matches!(err, SendError::InvalidSettings(_)), "{err:?}");
        assert!(fx.sent.is_empty());
    }

    fn api() -> crate::http::Request {
        crate::http::Request {
            method: "GET".into(),
            url: "http://127.0.0.1:9/x".into(),
            headers: vec![],
            body: vec![],
        }
    }
}

#[cfg(test)]
mod dpop_tests {
    use super::*;
    use crate::rekey::oauth2::types::SigningAlgorithm;
    use crate::testing::{self, Script, ok, script};
    use serde_json::Value;

    const JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"BBBB"}"#;

    fn settings() -> Settings {
        Settings {
            dpop: Some(SigningAlgorithm::Es256),
            ..testing::settings()
        }
    }

    fn api() -> Request {
        Request {
            method: "GET".into(),
            url: "http://127.0.0.1:9/me?x=1".into(),
            headers: vec![("DPoP".into(), "caller's".into())],
            body: vec![],
        }
    }

    fn with(status: u16, body: &str, headers: &[(&str, &str)]) -> Result<Response, TransportError> {
        let mut r = ok(status, body)?;
        r.headers = headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Ok(r)
    }

    fn header<'a>(req: &'a Request, name: &str) -> Vec<&'a str> {
        req.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn claims(proof: &str) -> Value {
        testing::jwt_part(proof.split('.').nth(1).unwrap())
    }

    fn bound(answers: Vec<Result<Response, TransportError>>) -> Script {
        let mut fx = script(answers);
        fx.dpop_key = Some(JWK.into());
        fx.record.data.keys =
            Some(r#"{"access_token":"a1","token_type":"DPoP","refresh_token":"r1"}"#.into());
        fx
    }

    /// The API rejects the old token; the token endpoint asks for a nonce
    /// once, then rotates; the API asks for its own nonce once, then answers.
    #[test]
    fn refresh_and_api_each_answer_one_nonce_challenge_with_a_fresh_proof() {
        let mut fx = bound(vec![
            with(
                401,
                "",
                &[("WWW-Authenticate", r#"DPoP error="invalid_token""#)],
            ),
            with(
                400,
                r#"{"error":"use_dpop_nonce"}"#,
                &[("DPoP-Nonce", "as-nonce-1")],
            ),
            ok(
                200,
                r#"{"access_token":"a2","token_type":"DPoP","refresh_token":"r2"}"#,
            ),
            with(
                401,
                "",
                &[
                    ("WWW-Authenticate", r#"DPoP error="use_dpop_nonce""#),
                    ("DPoP-Nonce", "rs-nonce-1"),
                ],
            ),
            ok(200, "hi"),
        ]);
        let resp = send(&mut fx, &settings(), &api()).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(fx.sent.len(), 5);
        let [first, token1, token2, api1, api2] = &fx.sent[..] else {
            unreachable!()
        };
        // The API requests: the DPoP scheme, one proof naming the token.
        for (req, token, nonce) in [
            (first, "a1", None),
            (api1, "a2", None),
            (api2, "a2", Some("rs-nonce-1")),
        ] {
            assert_eq!(header(req, "authorization"), [format!("DPoP {token}")]);
            let proofs = header(req, "dpop");
            assert_eq!(proofs.len(), 1, "the caller's DPoP header is replaced");
            let c = claims(proofs[0]);
            assert_eq!(c["htm"], "GET");
            assert_eq!(c["htu"], "http://127.0.0.1:9/me");
            assert_eq!(
                c["ath"],
                crate::basic_auth::base64url(&<sha2::Sha256 as sha2::Digest>::digest(
                    token.as_bytes()
                ))
            );
            assert_eq!(c.get("nonce").and_then(Value::as_str), nonce);
        }
        // The token requests: a proof each, the second with the nonce, no
        // `ath`; the same refresh token both times (the 400 spent nothing).
        for (req, nonce) in [(token1, None), (token2, Some("as-nonce-1"))] {
            let c = claims(header(req, "dpop")[0]);
            assert_eq!(c["htm"], "POST");
            assert_eq!(c["htu"], "http://127.0.0.1:9/token");
            assert_eq!(c.get("nonce").and_then(Value::as_str), nonce);
            assert!(c.get("ath").is_none());
            assert!(String::from_utf8_lossy(&req.body).contains("refresh_token=r1"));
        }
        let jtis: Vec<Value> = fx.sent[..]
            .iter()
            .map(|r| claims(header(r, "dpop")[0])["jti"].clone())
            .collect();
        for (i, a) in jtis.iter().enumerate() {
            assert!(
                jtis[i + 1..].iter().all(|b| b != a),
                "every proof has its own jti"
            );
        }
        assert!(
            fx.emitted
                .last()
                .unwrap()
                .contains(r#""refresh_token":"r2""#)
        );
    }

    /// A nonce challenge is answered once: a second is the server's answer.
    #[test]
    fn a_second_nonce_challenge_is_not_answered_again() {
        let challenge = || {
            with(
                401,
                "",
                &[
                    ("WWW-Authenticate", r#"DPoP error="use_dpop_nonce""#),
                    ("DPoP-Nonce", "n"),
                ],
            )
        };
        let mut fx = bound(vec![challenge(), challenge()]);
        fx.record.data.keys = Some(r#"{"access_token":"a1","token_type":"DPoP"}"#.into());
        let mut s = settings();
        s.grant = crate::rekey::oauth2::types::Grant::ClientCredentials;
        s.rejected_statuses = vec![403];
        let resp = send(&mut fx, &s, &api()).unwrap();
        assert_eq!(resp.status, 401);
        assert_eq!(fx.sent.len(), 2);

        let nonce_400 = || with(400, r#"{"error":"use_dpop_nonce"}"#, &[("DPoP-Nonce", "n")]);
        let mut fx = fx_cc(vec![ok(401, ""), nonce_400(), nonce_400()]);
        let e = send(&mut fx, &s_cc(), &api()).unwrap_err();
        assert_eq!(fx.sent.len(), 3, "{e:?}");
    }

    fn s_cc() -> Settings {
        let mut s = settings();
        s.grant = crate::rekey::oauth2::types::Grant::ClientCredentials;
        s
    }

    fn fx_cc(answers: Vec<Result<Response, TransportError>>) -> Script {
        let mut fx = bound(answers);
        fx.record.data.keys = Some(r#"{"access_token":"a1","token_type":"DPoP"}"#.into());
        fx
    }

    #[test]
    fn a_bound_token_without_a_dpop_key_in_the_settings_is_refused_unsent() {
        let mut fx = bound(vec![]);
        let e = send(&mut fx, &testing::settings(), &api()).unwrap_err();
        assert!(
            matches!(&e, Refusal::Error(SendError::InvalidSettings(m)) if m.contains("DPoP-bound")),
            "{e:?}"
        );
        assert!(fx.sent.is_empty());
        // A Bearer set is sent as before, with no proof, even with a DPoP key.
        let mut fx = bound(vec![ok(200, "hi")]);
        fx.record.data.keys = Some(r#"{"access_token":"a1","token_type":"Bearer"}"#.into());
        send(&mut fx, &settings(), &api()).unwrap();
        assert_eq!(header(&fx.sent[0], "authorization"), ["Bearer a1"]);
        assert_eq!(header(&fx.sent[0], "dpop"), ["caller's"]);
        // No key at the host: not even the API request can carry a proof.
        let mut fx = fx_cc(vec![]);
        fx.dpop_key = None;
        let e = send(&mut fx, &s_cc(), &api()).unwrap_err();
        assert!(
            matches!(&e, Refusal::Error(SendError::InvalidSettings(m)) if m.contains("DPoP key")),
            "{e:?}"
        );
        assert!(fx.sent.is_empty());
        // Nor a token request (the client's own grant, nothing stored yet).
        let mut fx = fx_cc(vec![]);
        fx.record.data.keys = None;
        fx.dpop_key = None;
        let e = send(&mut fx, &s_cc(), &api()).unwrap_err();
        assert!(
            matches!(&e, Refusal::Error(SendError::InvalidSettings(m)) if m.contains("DPoP key")),
            "{e:?}"
        );
        assert!(fx.sent.is_empty());
    }
    /// A refresh token bound to a DPoP key is never presented without its
    /// proof (the server's `invalid_grant` would be recorded as a dead
    /// grant): not by keepalive, not by a refresh before the first call.
    #[test]
    fn a_bound_refresh_token_is_not_spent_without_the_dpop_key() {
        let stored = r#"{"access_token":"a1","token_type":"DPoP","refresh_token":"r1","rekey_refreshed_at":1}"#;
        let mut fx = script(vec![ok(400, r#"{"error":"invalid_grant"}"#)]);
        fx.record.data.keys = Some(stored.into());
        let e = keepalive(&mut fx, &testing::settings(), 0).unwrap_err();
        assert!(
            matches!(&e, SendError::InvalidSettings(m) if m.contains("DPoP-bound")),
            "{e:?}"
        );
        assert!(fx.sent.is_empty());
        assert!(fx.record.data.dead_grant.is_none());
        assert!(fx.record.data.lease.is_none(), "the lease is given back");

        let mut fx = script(vec![ok(400, r#"{"error":"invalid_grant"}"#)]);
        fx.record.data.keys = Some(r#"{"token_type":"DPoP","refresh_token":"r1"}"#.into());
        let e = send(&mut fx, &testing::settings(), &api()).unwrap_err();
        assert!(
            matches!(&e, Refusal::Error(SendError::InvalidSettings(m)) if m.contains("DPoP-bound")),
            "{e:?}"
        );
        assert!(fx.sent.is_empty());
        assert!(fx.record.data.dead_grant.is_none());
    }

    /// A second nonce challenge from the API (its nonce changed between
    /// challenge and resend) is its answer: no refresh, nothing remembered.
    #[test]
    fn a_second_api_nonce_challenge_is_returned_not_refreshed_over() {
        let challenge = |n: &str| {
            with(
                401,
                "",
                &[
                    ("WWW-Authenticate", r#"DPoP error="use_dpop_nonce""#),
                    ("DPoP-Nonce", n),
                ],
            )
        };
        let mut fx = bound(vec![challenge("n1"), challenge("n2")]);
        let before = fx.record.clone();
        let resp = send(&mut fx, &settings(), &api()).unwrap();
        assert_eq!(resp.status, 401);
        assert_eq!(fx.sent.len(), 2);
        assert!(fx.purposes.iter().all(|p| *p == Purpose::Api));
        assert_eq!(fx.record, before, "no refresh, no evidence stored");
    }

    /// The token type is the new token's: a response without one does not
    /// inherit the old set's.
    #[test]
    fn a_refresh_without_token_type_drops_the_old_one() {
        let mut fx = bound(vec![
            with(401, "", &[]),
            ok(200, r#"{"access_token":"a2","refresh_token":"r2"}"#),
            ok(200, "hi"),
        ]);
        send(&mut fx, &settings(), &api()).unwrap();
        assert!(!fx.emitted.last().unwrap().contains("token_type"));
        assert_eq!(
            header(fx.sent.last().unwrap(), "authorization"),
            ["Bearer a2"]
        );
    }
    /// The nonce resend's proof is dated when it is sent, not when the first
    /// request was: a slow first answer must not leave it stale.
    #[test]
    fn the_token_endpoint_nonce_resend_is_dated_anew() {
        let mut fx = fx_cc(vec![
            with(400, r#"{"error":"use_dpop_nonce"}"#, &[("DPoP-Nonce", "n")]),
            ok(200, r#"{"access_token":"a2","token_type":"DPoP"}"#),
            ok(200, "hi"),
        ]);
        fx.record.data.keys = None;
        fx.answer_takes_ms = 90_000;
        send(&mut fx, &s_cc(), &api()).unwrap();
        let iat = |i: usize| {
            claims(header(&fx.sent[i], "dpop")[0])["iat"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(iat(1), iat(0) + 90, "the resend's proof is 90 s younger");
    }
}
