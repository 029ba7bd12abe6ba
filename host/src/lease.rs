//! The refresh lease: at most one refresh per credential at a time, so a
//! rotating refresh token is never spent twice.
//!
//! Two layers: an in-process async mutex per credential (single-flight among
//! the concurrent calls of one `Rekey`, no store traffic while waiting), then
//! the store's lease (exclusive across processes and machines, with a TTL so
//! a worker that dies holding it cannot wedge the credential).

use crate::store::{KeyStore, StoreError, call_store};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Between polls of a lease another process holds.
const POLL: Duration = Duration::from_millis(40);

#[derive(Clone, Default)]
pub struct Leases {
    by_credential: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// A lease one call holds.
pub struct HeldLease {
    _in_process: OwnedMutexGuard<()>,
    holder: String,
    /// The credential's version when the lease was taken: the write that ends
    /// the lease is a compare-and-set against it.
    pub version: u64,
}

impl Leases {
    /// Waits up to `wait` for the lease of `credential`, taking it for `ttl`.
    pub async fn acquire(
        &self,
        store: &Arc<dyn KeyStore>,
        credential: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<HeldLease, String> {
        let started = Instant::now();
        let lock = {
            let mut map = self.by_credential.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(credential.to_owned()).or_default().clone()
        };
        let in_process = tokio::time::timeout(wait, lock.lock_owned())
            .await
            .map_err(|_| format!("another call in this process held it for more than {wait:?}"))?;
        let holder = format!("{}-{:016x}", std::process::id(), random());
        loop {
            let (name, who) = (credential.to_owned(), holder.clone());
            let taken = call_store(store, move |s| s.try_lease(&name, &who, ttl))
                .await
                .map_err(|e| e.to_string())?;
            if taken {
                return Ok(HeldLease {
                    _in_process: in_process,
                    holder,
                    version: 0,
                });
            }
            if started.elapsed() >= wait {
                return Err(format!("another worker held it for more than {wait:?}"));
            }
            // Jitter so that waiting processes do not poll in lockstep.
            tokio::time::sleep(POLL + Duration::from_millis(random() % 40)).await;
        }
    }
}

/// A holder's calls that extend its lease by `ttl` (false if it ran out):
/// one signature and body, each through its own store method.
macro_rules! extending_calls {
    ($($(#[$doc:meta])* fn $method:ident => KeyStore::$store_method:ident;)+) => {$(
        $(#[$doc])*
        pub async fn $method(
            &self,
            store: &Arc<dyn KeyStore>,
            credential: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            let (name, who) = (credential.to_owned(), self.holder.clone());
            call_store(store, move |s| s.$store_method(&name, &who, ttl)).await
        }
    )+};
}

impl HeldLease {
    extending_calls! {
        /// Extends the lease by `ttl` and marks a refresh request as leaving
        /// (durably, before it leaves); false if the lease ran out.
        fn begin_refresh => KeyStore::begin_refresh;
        /// Extends the lease by `ttl`; false if it ran out.
        fn renew => KeyStore::renew_lease;
    }

    pub async fn release(self, store: &Arc<dyn KeyStore>, credential: &str) {
        let (name, who) = (credential.to_owned(), self.holder.clone());
        if let Err(e) = call_store(store, move |s| s.release_lease(&name, &who)).await {
            // Harmless: the lease runs out by itself.
            tracing::warn!(credential, error = %e, "could not release the refresh lease");
        }
    }

    /// For a call that ends without `release` (trap, cancellation): release
    /// in the background; the TTL covers a failure.
    pub fn release_detached(self, store: Arc<dyn KeyStore>, credential: String) {
        let holder = self.holder.clone();
        let instant = !store.blocking();
        let release = move || {
            let _ = store.release_lease(&credential, &holder);
        };
        // An instant store releases at once, before the in-process lock this
        // lease holds is dropped: the next call then finds the lease free.
        if instant {
            return release();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
