//! The fleet protocol on one versioned record per credential: at most one
//! worker spends a refresh token, and its result is either stored or the
//! credential is marked "in doubt" — never silently lost.
//!
//! 1. A worker whose token was rejected reads the record: newer keys than the
//!    ones it used are adopted, spending nothing.
//! 2. Otherwise, if no live lease and no refresh mark is stored, a
//!    conditional write takes the lease (holder id from `wasi:random`, TTL
//!    from the clock). A live lease is waited for, with jittered backoff,
//!    bounded.
//! 3. Right before every token request, the holder renews the lease and sets
//!    the refresh mark in one conditional write on the version it holds: from
//!    then on the stored refresh token may be spent, and a holder that lost
//!    the record (its lease ran out and was taken, an operator's edit) never
//!    spends. A worker that dies between 2 and 3 leaves only a lease, which
//!    runs out: nothing is in doubt.
//! 4. The merged keys, the cleared lease and the cleared mark are one
//!    conditional write on the holder's version (fencing: nobody else can
//!    have written while the mark stood, so a late holder still lands, and a
//!    holder whose record was changed never overwrites it).
//! 5. A worker that finds a mark without a live lease never spends the
//!    maybe-used token: "refresh in doubt". A grant the token endpoint
//!    declared dead is recorded, and later calls fail fast without a request.

use crate::effects::Effects;
use crate::keys::Keys;
use crate::rekey::oauth2::types::{
    CredentialRecord, DeadGrant, FleetTiming, Lease, OauthError, RefreshMark, SendError,
    StoredRecord, WriteError,
};
use alloc::format;
use alloc::string::String;
use core::time::Duration;

/// Defaults for a zero in [`FleetTiming`].
pub const DEFAULT_LEASE_TTL_MS: u64 = 40_000;
pub const DEFAULT_LEASE_WAIT_MS: u64 = 60_000;
/// First pause while another worker holds the lease; doubles up to [`MAX_POLL`].
pub const FIRST_POLL: Duration = Duration::from_millis(25);
pub const MAX_POLL: Duration = Duration::from_millis(800);
/// Pauses between attempts at a keys write that fails outright start here
/// and double up to [`MAX_KEYS_WRITE_PAUSE`]; the attempts go on for one
/// lease TTL (the provider has rotated: giving up loses the new refresh
/// token, while the mark keeps everyone else from spending meanwhile).
pub const FIRST_KEYS_WRITE_PAUSE: Duration = Duration::from_millis(100);
pub const MAX_KEYS_WRITE_PAUSE: Duration = Duration::from_secs(2);
/// Conditional writes lost to other workers in a row before a call gives up
/// on taking the lease (each loss means the record moved on; re-read).
const MAX_CONFLICTS: u32 = 64;

/// The timing with defaults in place of zeros.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl_ms: u64,
    pub wait_ms: u64,
}

impl Timing {
    /// Zeros become the defaults, and a wait shorter than the TTL is
    /// lengthened to outlast it: a worker that dies holding the lease must
    /// not make every other call give up before its lease runs out (the
    /// simulator's liveness check finds exactly that).
    pub fn of(t: &FleetTiming) -> Timing {
        let or = |v: u32, d: u64| if v == 0 { d } else { u64::from(v) };
        let ttl_ms = or(t.lease_ttl_ms, DEFAULT_LEASE_TTL_MS).min(MAX_LEASE_TTL_MS);
        let wait_ms = or(t.lease_wait_ms, DEFAULT_LEASE_WAIT_MS);
        Timing {
            ttl_ms,
            wait_ms: wait_ms.max(ttl_ms + 2 * MAX_POLL.as_millis() as u64),
        }
    }
}

/// The longest lease any worker takes, whatever its settings say: a bound
/// every worker knows, so that workers with different TTLs agree on which
/// leases are believable.
pub const MAX_LEASE_TTL_MS: u64 = 10 * 60 * 1000;
/// How far beyond [`MAX_LEASE_TTL_MS`] from now a lease may end and still be
/// honoured: more is a holder whose clock runs that far ahead, or a damaged
/// record, and waiting for it would stop every refresh until then. Taking
/// such a lease over is safe: fencing makes its holder's next write fail
/// before it spends anything, and a mark it already set still says "in doubt".
pub const MAX_LEASE_SKEW_MS: u64 = 10 * 60 * 1000;

/// Reads the record, as the protocol needs it.
pub fn read(fx: &mut impl Effects) -> Result<StoredRecord, SendError> {
    fx.read_record().map_err(|e| {
        SendError::StoreUnavailable(format!("cannot read the credential's record: {e}"))
    })
}

/// Refuses a record set up for the refresh-token grant when this worker's
/// settings say client-credentials (workers that disagree on the grant):
/// acting on it would clear a refresh mark it did not set and store its own
/// token beside a refresh token that may be spent.
pub fn check_grant(record: &CredentialRecord, keys: &Keys, spends: bool) -> Result<(), SendError> {
    if !spends && (keys.refresh_token().is_some() || record.refresh_mark.is_some()) {
        return Err(SendError::InvalidSettings(
            "this credential holds a refresh token (it was set up for the refresh-token grant) \
             but these settings say client-credentials: start it over for the new grant"
                .into(),
        ));
    }
    Ok(())
}

/// Fails fast on a grant the token endpoint declared dead.
pub fn check_alive(record: &CredentialRecord) -> Result<(), SendError> {
    match &record.dead_grant {
        Some(dead) => Err(SendError::ReauthorizationRequired(OauthError {
            status: 400,
            code: dead.code.clone(),
        })),
        None => Ok(()),
    }
}

/// What a worker whose token was rejected gets from the record.
pub enum Renewal {
    /// Another worker stored newer keys meanwhile: use them.
    Adopt(Keys),
    /// This call holds the lease and the mark: spend `keys`' refresh token.
    Exchange(Held, Keys),
}

/// Adopts newer keys than `stale`, or takes the lease and the refresh mark.
/// `spends`: the renewal spends the stored refresh token (else it is the
/// client's own grant: nothing stored is needed, and no mark is set or
/// heeded, since nothing can be spent).
pub fn acquire(
    fx: &mut impl Effects,
    timing: Timing,
    stale: &Keys,
    spends: bool,
    settings_fingerprint: &str,
) -> Result<Renewal, SendError> {
    let holder = format!("{:016x}", fx.random_u64());
    let mut waited = Duration::ZERO;
    let mut poll = FIRST_POLL;
    let mut conflicts = 0;
    loop {
        let stored = read(fx)?;
        let record = &stored.data;
        check_alive(record)?;
        let current = match &record.keys {
            Some(json) => Keys::parse(json).map_err(SendError::InvalidKeys)?,
            None if !spends => Keys::none(),
            None => {
                return Err(crate::flow::not_authenticated(
                    "no keys are stored for this credential",
                ));
            }
        };
        check_grant(record, &current, spends)?;
        // Newer keys: a new access token, or a new refresh token (a provider
        // that hands back the same access token still rotated the grant).
        let renewed = current.access_token() != stale.access_token()
            || current.refresh_token() != stale.refresh_token();
        if current.access_token().is_some() && renewed {
            return Ok(Renewal::Adopt(current));
        }
        // The token endpoint refused these very settings a moment ago (this
        // call's first read, or a worker it waited behind): no request.
        if let Some(refusal) = current.refusal(fx.now_unix(), settings_fingerprint) {
            return Err(SendError::SettingsRejected(refusal));
        }
        let now = fx.now_ms();
        let believable = now.saturating_add(MAX_LEASE_TTL_MS + MAX_LEASE_SKEW_MS);
        let lease_live = record
            .lease
            .as_ref()
            .is_some_and(|l| l.until_ms > now && l.until_ms <= believable);
        if !lease_live {
            if let Some(mark) = record.refresh_mark.as_ref().filter(|_| spends) {
                return Err(in_doubt(mark, now));
            }
            if spends && current.refresh_token().is_none() {
                return Err(crate::flow::not_authenticated(
                    "no refresh token is stored for this credential",
                ));
            }
            let mut held = Held {
                holder: holder.clone(),
                marks: spends,
                ttl_ms: timing.ttl_ms,
                version: stored.version,
                record: stored.data.clone(),
            };
            match held.write(fx, held.next(fx.now_ms(), false)) {
                Ok(()) => return Ok(Renewal::Exchange(held, current)),
                Err(Lost::Conflict) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    continue;
                }
                Err(Lost::Conflict) => {
                    return Err(SendError::LeaseUnavailable(
                        "the credential's record kept changing under this call".into(),
                    ));
                }
                Err(Lost::Store(m)) => {
                    return Err(SendError::StoreUnavailable(format!(
                        "cannot take the refresh lease: {m}"
                    )));
                }
            }
        }
        if waited >= Duration::from_millis(timing.wait_ms) {
            return Err(SendError::LeaseUnavailable(format!(
                "another worker held the refresh lease for more than {} ms",
                timing.wait_ms
            )));
        }
        // Jitter, so that waiting workers do not poll in lockstep.
        let jitter = Duration::from_millis(fx.random_u64() % (poll.as_millis() as u64 + 1));
        let pause = poll / 2 + jitter;
        fx.sleep(pause);
        waited += pause;
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Marks the stored keys as rejected right after they were obtained, if the
/// record still holds exactly them and nobody holds the lease or a mark (a
/// write under someone's lease would fail their next write). Best effort:
/// without it, the next call refreshes once more.
/// `replaced`: the set this one replaced, whose evidence carries over (the
/// renewal proved nothing about it).
pub fn remember_rejection(
    fx: &mut impl Effects,
    keys: &Keys,
    request: &str,
    replaced: Option<&Keys>,
) {
    let Ok(stored) = fx.read_record() else {
        return;
    };
    let data = &stored.data;
    let ours = data
        .keys
        .as_deref()
        .and_then(|json| Keys::parse(json).ok())
        .is_some_and(|current| current == *keys);
    if !ours || data.lease.is_some() || data.refresh_mark.is_some() {
        return;
    }
    let next = CredentialRecord {
        keys: Some(
            keys.with_rejection(fx.now_unix(), request, replaced)
                .to_json(),
        ),
        ..data.clone()
    };
    let _ = fx.write_record(stored.version, &next);
}

fn in_doubt(mark: &RefreshMark, now_ms: u64) -> SendError {
    SendError::RefreshInDoubt(format!(
        "a refresh of this credential began {} s ago and its result was never stored; \
         the stored refresh token may be spent, so it is not spent again \
         (check with the provider, then clear the mark or authorise again)",
        now_ms.saturating_sub(mark.at_ms) / 1000
    ))
}

/// The pauses between attempts at a holder's last write: doubling from
/// [`FIRST_KEYS_WRITE_PAUSE`] up to [`MAX_KEYS_WRITE_PAUSE`], for one lease TTL.
struct WriteRetry {
    pause: Duration,
    waited: Duration,
    budget: Duration,
}

impl WriteRetry {
    fn for_ttl(ttl_ms: u64) -> WriteRetry {
        WriteRetry {
            pause: FIRST_KEYS_WRITE_PAUSE,
            waited: Duration::ZERO,
            budget: Duration::from_millis(ttl_ms),
        }
    }

    /// Sleeps before the next attempt; false once the TTL has been waited.
    fn pause(&mut self, fx: &mut impl Effects) -> bool {
        if self.waited >= self.budget {
            return false;
        }
        fx.sleep(self.pause);
        self.waited += self.pause;
        self.pause = (self.pause * 2).min(MAX_KEYS_WRITE_PAUSE);
        true
    }
}

/// Why a holder's conditional write did not land.
pub enum Lost {
    /// Someone else wrote the record: this call no longer holds it.
    Conflict,
    /// The store failed (nothing written, or unknown and not found written).
    Store(String),
}

/// The lease, held: the version this call last wrote and what it wrote.
pub struct Held {
    holder: String,
    /// Whether its token requests spend a refresh token (and so set the mark).
    marks: bool,
    ttl_ms: u64,
    version: u64,
    record: CredentialRecord,
}

impl Held {
    /// Renews the lease and sets the refresh mark, right before a token
    /// request: from now on the stored refresh token may be spent.
    pub fn mark(&mut self, fx: &mut impl Effects) -> Result<(), Lost> {
        let next = self.next(fx.now_ms(), self.marks);
        #[cfg(test)]
        let next = sabotage::unmarked(next);
        self.write(fx, next)
    }

    /// The record with this call's lease renewed from `now`, and its mark
    /// (kept from its first setting) when `marked`.
    fn next(&self, now: u64, marked: bool) -> CredentialRecord {
        let mark_at = match &self.record.refresh_mark {
            Some(m) if m.holder == self.holder => m.at_ms,
            _ => now,
        };
        CredentialRecord {
            keys: self.record.keys.clone(),
            lease: Some(Lease {
                holder: self.holder.clone(),
                until_ms: now.saturating_add(self.ttl_ms),
            }),
            refresh_mark: marked.then(|| RefreshMark {
                holder: self.holder.clone(),
                at_ms: mark_at,
            }),
            dead_grant: None,
        }
    }

    /// Stores the merged keys and ends lease and mark in one write. A write
    /// that fails outright is retried (the provider has rotated: the new
    /// refresh token exists nowhere else); one that conflicts is final.
    pub fn store_keys(&mut self, fx: &mut impl Effects, keys: &Keys) -> Result<(), SendError> {
        let json = keys.to_json();
        let next = CredentialRecord {
            keys: Some(json),
            lease: None,
            refresh_mark: None,
            dead_grant: None,
        };
        let mut retry = WriteRetry::for_ttl(self.ttl_ms);
        let last = loop {
            match self.write(fx, next.clone()) {
                Ok(()) => return Ok(()),
                Err(Lost::Conflict) if !self.marks => {
                    return Err(SendError::KeysNotPersisted(
                        "the credential's record was changed by someone else while this call \
                         fetched a token: it was not written over (nothing was spent)"
                            .into(),
                    ));
                }
                Err(Lost::Conflict) => {
                    return Err(SendError::KeysNotPersisted(
                        "the credential's record was changed by someone else while this call \
                         refreshed (an operator's edit?): the new keys were not written over it, \
                         and the refresh token this call spent is gone"
                            .into(),
                    ));
                }
                Err(Lost::Store(m)) if !retry.pause(fx) => break m,
                Err(Lost::Store(_)) => {}
            }
        };
        Err(SendError::KeysNotPersisted(if self.marks {
            format!(
                "{last}; the provider may have rotated the refresh token, so the stored one may \
                 be spent: the credential stays marked refresh-in-doubt"
            )
        } else {
            format!("{last} (nothing was spent: the next call fetches a token again)")
        }))
    }

    /// Ends the lease. `spent_maybe`: an answer may have come after the
    /// provider used the refresh token, so the mark stays (the credential is
    /// in doubt); otherwise it is lifted too.
    pub fn release(mut self, fx: &mut impl Effects, spent_maybe: bool) {
        let next = CredentialRecord {
            keys: self.record.keys.clone(),
            lease: None,
            refresh_mark: if spent_maybe {
                self.record.refresh_mark.clone()
            } else {
                None
            },
            dead_grant: None,
        };
        self.finish(fx, next);
    }

    /// Ends the holding as `release(false)` does, storing `keys` (the same
    /// token set with a memory the guest keeps, e.g. a refusal): nothing was
    /// spent.
    pub fn release_with_keys(mut self, fx: &mut impl Effects, keys: &Keys) {
        let next = CredentialRecord {
            keys: Some(keys.to_json()),
            lease: None,
            refresh_mark: None,
            dead_grant: None,
        };
        self.finish(fx, next);
    }

    /// Records that the grant is dead and ends lease and mark: the token
    /// endpoint refused the refresh token itself, so nothing was spent.
    pub fn record_dead(mut self, fx: &mut impl Effects, code: &str) {
        let next = CredentialRecord {
            keys: self.record.keys.clone(),
            lease: None,
            refresh_mark: None,
            dead_grant: Some(DeadGrant {
                code: code.into(),
                at: fx.now_unix(),
            }),
        };
        self.finish(fx, next);
    }

    /// The write that ends a holding without new keys, retried like the keys
    /// write for one lease TTL: a mark left behind on a token nobody spent
    /// strands the credential in doubt. A conflict with a record that still
    /// names this holder's lease is this holder's own earlier write whose
    /// answer was lost (nobody else writes under a lease that names us): the
    /// write is made again on that version. Gives up quietly: the lease runs
    /// out, and a mark left says "in doubt", never "spend".
    fn finish(&mut self, fx: &mut impl Effects, next: CredentialRecord) {
        let mut retry = WriteRetry::for_ttl(self.ttl_ms);
        let mut resyncs = 0;
        loop {
            match self.write(fx, next.clone()) {
                Ok(()) => return,
                Err(Lost::Conflict) if resyncs < 3 && self.resync(fx) => {
                    resyncs += 1;
                    continue;
                }
                Err(Lost::Conflict) => return,
                Err(Lost::Store(_)) => {}
            }
            if !retry.pause(fx) {
                return;
            }
        }
    }

    /// Takes up the stored record if its lease is still this holder's (a
    /// write of ours landed although its answer was lost).
    fn resync(&mut self, fx: &mut impl Effects) -> bool {
        match fx.read_record() {
            Ok(now)
                if now.version > self.version
                    && now
                        .data
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.holder == self.holder) =>
            {
                self.version = now.version;
                self.record = now.data;
                true
            }
            _ => false,
        }
    }

    /// One conditional write on the held version. Any failure is resolved
    /// by reading the record back: a store may have committed a write whose
    /// answer was lost (whatever it reported), and the write landed exactly
    /// when the record is what this holder wrote (its holder id is unique).
    fn write(&mut self, fx: &mut impl Effects, next: CredentialRecord) -> Result<(), Lost> {
        #[cfg(test)]
        sabotage::unfenced(fx, &mut self.version);
        let why = match fx.write_record(self.version, &next) {
            Ok(version) => {
                self.version = version;
                self.record = next;
                return Ok(());
            }
            Err(WriteError::Conflict) => None,
            Err(WriteError::Failed(m) | WriteError::Unknown(m)) => Some(m),
        };
        let read = fx.read_record();
        #[cfg(test)]
        let read = sabotage::any_holder(read, self.version, &next);
        match read {
            Ok(now) if now.version > self.version && now.data == next => {
                self.version = now.version;
                self.record = next;
                Ok(())
            }
            Ok(now) if now.version != self.version => Err(Lost::Conflict),
            Ok(_) => Err(Lost::Store(why.unwrap_or_else(|| {
                "the store reported a conflict on an unchanged record".into()
            }))),
            Err(e) => Err(Lost::Store(why.unwrap_or(e))),
        }
    }
}

/// Switches that turn off one protective rule each, so that the fleet
/// simulator can show it notices (`crate::sim`). Per thread: each simulated
/// worker runs on a thread of its own and sets its own. Test builds only.
#[cfg(test)]
pub(crate) mod sabotage {
    use super::*;
    use std::cell::Cell;

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Off {
        /// A holder writes on whatever version is stored now, not the one it holds.
        pub fencing: bool,
        /// No refresh mark is set before a token request.
        pub mark: bool,
        /// A failed write counts as landed whenever the record moved on,
        /// whoever's record it now is.
        pub holder_check: bool,
    }

    std::thread_local! {
        static OFF: Cell<Off> = const { Cell::new(Off { fencing: false, mark: false, holder_check: false }) };
    }

    pub fn set(off: Off) {
        OFF.with(|c| c.set(off));
    }

    fn get() -> Off {
        OFF.with(Cell::get)
    }

    pub(super) fn unmarked(mut next: CredentialRecord) -> CredentialRecord {
        if get().mark {
            next.refresh_mark = None;
        }
        next
    }

    pub(super) fn unfenced(fx: &mut impl Effects, version: &mut u64) {
        if get().fencing
            && let Ok(now) = fx.read_record()
        {
            *version = now.version;
        }
    }

    pub(super) fn any_holder(
        read: Result<StoredRecord, String>,
        version: u64,
        next: &CredentialRecord,
    ) -> Result<StoredRecord, String> {
        match read {
            Ok(mut now) if get().holder_check && now.version > version => {
                now.data = next.clone();
                Ok(now)
            }
            other => other,
        }
    }
}
