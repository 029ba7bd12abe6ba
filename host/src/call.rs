//! The host side of the WIT for one call: its state and the `host`
//! interface's functions (HTTP, persistence, the refresh lease).

use crate::bindings::rekey::oauth2::host::Host;
use crate::bindings::rekey::oauth2::types::{
    self as wit, Lease, Request, Response, TransportError,
};
use crate::error::{Error, describe_transport};
use crate::http::HttpClient;
use crate::lease::{HeldLease, Leases};
use crate::observe::{Event, Exchange, Observer, loggable_url};
use crate::origins::{self, Pattern};
use crate::secret::Secret;
use crate::store::{Credential, KeyStore, StoreError, call_store};
use crate::token_set::TokenSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Time kept in hand after a token exchange, to persist its result.
const SPEND_MARGIN: Duration = Duration::from_secs(1);
/// Longest pause between attempts to save refreshed keys.
const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(2);
/// How long a call waits for a predecessor's unfinished refresh to land.
const IN_DOUBT_WAIT: Duration = Duration::from_secs(2);

/// Everything one call's imports need. Dropped with the `Store`, which ends
/// any lease the call still holds, whether it returned or trapped.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) credential: String,
    pub(crate) token_url: String,
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) http: HttpClient,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) leases: Leases,
    pub(crate) lease_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease: Option<HeldLease>,
    /// When the epoch deadline traps this call.
    pub(crate) deadline: Instant,
    pub(crate) http_total_timeout: Duration,
    pub(crate) keys_write_retry: Duration,
    /// The refresh token stored when the lease was taken, to tell rotation.
    pub(crate) refresh_token_before: Option<Secret>,
    /// Where this credential's token may go.
    pub(crate) destinations: Destinations,
    /// What this call's token requests may have done to the refresh token.
    pub(crate) refresh_spend: Spend,
    /// Set once a refresh begins: the call then finishes whatever its
    /// caller does.
    pub(crate) must_finish: crate::drive::MustFinish,
}

/// Whether this call's token requests may have spent the refresh token: the
/// store's refresh mark (set before each request) is lifted at the end of a
/// call whose every answer proved it was not (the guest classifies the same
/// answers to decide on retries; the host needs the fact for its store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Spend {
    /// No token request was sent.
    #[default]
    None,
    /// Every answer said the token was not used: no connection, 429, 503,
    /// any other 4xx.
    NotSpent,
    /// An answer may have come after a rotation (2xx, other 5xx, timeout,
    /// reset): only saved keys lift the mark.
    MaybeSpent,
}

impl Spend {
    fn of(result: &Result<Response, TransportError>) -> Spend {
        match result {
            Ok(r) if r.status == 429 || r.status == 503 => Spend::NotSpent,
            Ok(r) if (400..500).contains(&r.status) => Spend::NotSpent,
            Ok(_) => Spend::MaybeSpent,
            Err(TransportError::Connect(_))
            | Err(TransportError::Refused(_))
            | Err(TransportError::InvalidRequest(_)) => Spend::NotSpent,
            Err(_) => Spend::MaybeSpent,
        }
    }
}

/// The API origins a credential's token may be sent to, parsed once per call.
#[derive(Default)]
pub(crate) struct Destinations {
    patterns: Vec<Pattern>,
    instance: Option<url::Url>,
}

impl Destinations {
    /// From the credential's settings and, if allowed, its token set's
    /// `instance_url`.
    pub(crate) fn of(c: &Credential) -> Result<Destinations, Error> {
        let patterns = c
            .settings
            .api_origins
            .iter()
            .map(|o| Pattern::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::InvalidSettings)?;
        let instance = c
            .settings
            .allow_instance_url
            .then(|| c.keys.as_ref().and_then(TokenSet::instance_url))
            .flatten()
            .and_then(|u| url::Url::parse(&u).ok())
            .filter(|u| u.scheme() == "https");
        Ok(Destinations { patterns, instance })
    }

    /// Refuses a URL the token may not go to, naming what is allowed. The
    /// URL is the one parsed for sending (`http::parse_url`).
    pub(crate) fn check(&self, parsed: &url::Url, credential: &str) -> Result<(), Error> {
        if origins::allows(&self.patterns, self.instance.as_ref(), parsed) {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "{} is not an API origin of credential {credential:?}, so its token is not sent there (see `rekey credential show`)",
            parsed.origin().ascii_serialization()
        )))
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for CallState {}

impl CallState {
    /// A refresh token goes out only while this call still holds the lease
    /// and can outlive the exchange: a trap after the provider rotated the
    /// token but before it was persisted would lose the new one.
    async fn may_spend_refresh_token(&mut self) -> Result<(), TransportError> {
        if Instant::now() + self.http_total_timeout + SPEND_MARGIN > self.deadline {
            return Err(TransportError::Refused(
                "too little of the call's time is left to exchange and persist a refresh token"
                    .into(),
            ));
        }
        let Some(lease) = &self.lease else {
            return Err(TransportError::Refused(
                "no refresh lease is held: a refresh token is never sent without one".into(),
            ));
        };
        let marked = lease
            .begin_refresh(&self.store, &self.credential, self.lease_ttl)
            .await;
        if !matches!(marked, Ok(true)) {
            // Nothing leaves: a mark that may have been stored anyway (the
            // store failed after its commit) is this call's to lift.
            self.refresh_spend = self.refresh_spend.max(Spend::NotSpent);
        }
        match marked {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Refused(
                "the refresh lease ran out and another worker may have refreshed; not spending the refresh token".into(),
            )),
            Err(e) => Err(TransportError::Refused(format!("cannot renew the refresh lease: {e}"))),
        }
    }

    /// Saves the merged keys: the provider has already rotated, so a failed
    /// write is retried (with backoff, the lease renewed) for as long as the
    /// call's deadline allows. A conflict is final: newer keys are stored.
    async fn save_with_retries(&mut self, keys: &TokenSet) -> Result<u64, StoreError> {
        let expected = self.lease.as_ref().map(|l| l.version);
        let give_up = (Instant::now() + self.keys_write_retry).min(self.deadline - SPEND_MARGIN);
        let mut backoff = Duration::from_millis(100);
        let mut retried = false;
        loop {
            let (name, k) = (self.credential.clone(), keys.clone());
            let saved = call_store(&self.store, move |s| s.save_keys(&name, &k, expected)).await;
            let err = match saved {
                Ok(version) => return Ok(version),
                Err(e @ (StoreError::Write(_) | StoreError::Unusable { .. })) => e,
                // An earlier attempt that reported failure may have landed
                // after all (a stalled connection): our keys are stored.
                Err(e @ StoreError::Conflict(_)) if retried => {
                    let name = self.credential.clone();
                    let now = call_store(&self.store, move |s| s.load(&name)).await;
                    return match now {
                        Ok(c) if c.keys.as_ref() == Some(keys) => Ok(c.version),
                        _ => Err(e),
                    };
                }
                Err(e) => return Err(e),
            };
            retried = true;
            if Instant::now() + backoff > give_up {
                return Err(err);
            }
            tracing::warn!(credential = %self.credential, error = %err, "keys write failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_WRITE_BACKOFF);
            if let Some(lease) = &self.lease {
                // Keeping the lease keeps others waiting rather than finding
                // the refresh in doubt; losing it is no reason to stop: the
                // compare-and-set and the refresh mark protect the keys.
                let _ = lease
                    .renew(&self.store, &self.credential, self.lease_ttl)
                    .await;
            }
        }
    }

    /// A predecessor began a refresh and never saved its keys: it may still
    /// (a stalled write). Waits a little for that, then reports what is
    /// stored; the guest adopts newer keys or reports the refresh in doubt.
    async fn wait_for_unfinished_refresh(
        &mut self,
        mut current: Credential,
    ) -> Result<Credential, String> {
        let until = Instant::now() + IN_DOUBT_WAIT;
        while current.refresh_in_doubt && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let name = self.credential.clone();
            current = call_store(&self.store, move |s| s.load(&name))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(current)
    }

    /// Lifts the refresh mark this call set, if no answer of its token
    /// requests could have come after a rotation.
    async fn settle_refresh_mark(&mut self) {
        if std::mem::take(&mut self.refresh_spend) != Spend::NotSpent {
            return;
        }
        // Only while the lease is still this call's: a successor that took
        // an expired lease may have set a mark of its own.
        let Some(lease) = &self.lease else { return };
        if !matches!(
            lease
                .renew(&self.store, &self.credential, self.lease_ttl)
                .await,
            Ok(true)
        ) {
            return;
        }
        let name = self.credential.clone();
        if let Err(e) = call_store(&self.store, move |s| s.clear_refresh_in_doubt(&name)).await {
            tracing::warn!(credential = %self.credential, error = %e, "could not lift the refresh mark");
        }
    }

    pub(crate) async fn end_lease(&mut self) {
        self.settle_refresh_mark().await;
        if let Some(lease) = self.lease.take() {
            lease.release(&self.store, &self.credential).await;
        }
    }
}

impl Drop for CallState {
    fn drop(&mut self) {
        // Only after a trap or cancellation: `send` ends leases itself.
        if let Some(lease) = self.lease.take() {
            lease.release_detached(self.store.clone(), std::mem::take(&mut self.credential));
        }
    }
}

impl Host for CallState {
    async fn http_send(&mut self, req: Request) -> Result<Response, TransportError> {
        let exchange = if req.url == self.token_url {
            Exchange::TokenEndpoint
        } else {
            Exchange::Api
        };
        let url = crate::http::parse_url(&req.url)?;
        match exchange {
            Exchange::TokenEndpoint => self.may_spend_refresh_token().await?,
            // The host's own check, whatever the guest sends.
            Exchange::Api => self
                .destinations
                .check(&url, &self.credential)
                .map_err(|e| TransportError::Refused(e.to_string()))?,
        }
        let method = req.method.clone();
        let target = loggable_url(&url);
        let started = Instant::now();
        let result = self.http.send_to(url, req).await;
        if exchange == Exchange::TokenEndpoint {
            self.refresh_spend = self.refresh_spend.max(Spend::of(&result));
        }
        let failure = result.as_ref().err().map(describe_transport);
        self.observer.event(&Event::Http {
            credential: &self.credential,
            exchange,
            method: &method,
            target: &target,
            outcome: result
                .as_ref()
                .map(|r| r.status)
                .map_err(|_| failure.as_deref().unwrap_or("")),
            elapsed: started.elapsed(),
        });
        result
    }

    async fn emit_update_keys(&mut self, keys: String) -> Result<(), String> {
        let keys = TokenSet::stored(keys);
        match self.save_with_retries(&keys).await {
            Ok(version) => {
                let rotated = keys.refresh_token().is_some_and(|new| {
                    self.refresh_token_before
                        .as_ref()
                        .is_none_or(|old| old.expose() != new.expose())
                });
                self.observer.event(&Event::KeysPersisted {
                    credential: &self.credential,
                    version,
                    refresh_token_rotated: rotated,
                });
                // Durable: others may now refresh from what we stored.
                self.end_lease().await;
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "{e}; the provider may have rotated the refresh token, so the stored one may be spent: the credential is marked refresh-in-doubt"
                );
                self.observer.event(&Event::KeysNotPersisted {
                    credential: &self.credential,
                    reason: &reason,
                });
                Err(reason)
            }
        }
    }

    async fn acquire_refresh_lease(&mut self) -> Result<Lease, String> {
        self.must_finish.set();
        if self.lease.is_none() {
            let started = Instant::now();
            let lease = self
                .leases
                .acquire(
                    &self.store,
                    &self.credential,
                    self.lease_ttl,
                    self.lease_timeout,
                )
                .await?;
            self.lease = Some(lease);
            self.observer.event(&Event::LeaseAcquired {
                credential: &self.credential,
                waited: started.elapsed(),
            });
        }
        let name = self.credential.clone();
        let current = call_store(&self.store, move |s| s.load(&name))
            .await
            .map_err(|e| e.to_string())?;
        let current = if current.refresh_in_doubt {
            self.wait_for_unfinished_refresh(current).await?
        } else {
            current
        };
        if let Some(lease) = &mut self.lease {
            lease.version = current.version;
        }
        self.refresh_token_before = current.keys.as_ref().and_then(TokenSet::refresh_token);
        Ok(Lease {
            keys: current.keys.map(|k| k.expose().to_owned()),
            in_doubt: current.refresh_in_doubt,
        })
    }

    async fn release_refresh_lease(&mut self) {
        self.end_lease().await;
    }
}
