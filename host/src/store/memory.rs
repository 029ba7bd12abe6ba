//! An in-memory store, for embedders that persist elsewhere and for benchmarks.

use super::{Credential, DeadGrant, KeyStore, StoreError, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Credentials and leases in this process only: lost when it exits.
#[derive(Default)]
pub struct MemoryStore {
    credentials: Mutex<BTreeMap<String, Credential>>,
    leases: Mutex<HashMap<String, Lease>>,
}

/// A refresh lease, with the same semantics as SQLite's `leases` row.
struct Lease {
    holder: String,
    /// None: a ttl too long for `Instant` to express, i.e. never.
    expires: Option<Instant>,
}

impl Lease {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Credential>) -> R) -> R {
        // A panic elsewhere cannot leave a half-written credential: every
        // mutation below is a single insert or field store.
        let mut map = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        // Every mutation is a single insert, field store or remove.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyStore for MemoryStore {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        self.with(|m| m.get(name).cloned())
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))
    }

    fn save_keys(
        &self,
        name: &str,
        keys: &TokenSet,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_keys(Some(keys))?;
        self.with(|m| {
            let c = m
                .get_mut(name)
                .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
            if expected_version.is_some_and(|v| v != c.version) {
                return Err(StoreError::Conflict(name.into()));
            }
            c.keys = Some(keys.clone());
            c.version += 1;
            c.updated_at = now_unix();
            // Saved keys settle any refresh in doubt and revive a dead grant.
            c.refresh_in_doubt = false;
            c.needs_authorization = None;
            Ok(c.version)
        })
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        validate_keys(keys)?;
        self.with(|m| {
            let old = m.get(name);
            let version = old.map_or(0, |c| c.version + u64::from(keys.is_some()));
            // New keys start afresh; a settings edit keeps the marks.
            let (needs_authorization, refresh_in_doubt) = match (keys, old) {
                (None, Some(c)) => (c.needs_authorization.clone(), c.refresh_in_doubt),
                _ => (None, false),
            };
            let keys = keys.cloned().or_else(|| old.and_then(|c| c.keys.clone()));
            let credential = Credential {
                name: name.into(),
                settings: settings.clone(),
                keys,
                version,
                updated_at: now_unix(),
                needs_authorization,
                refresh_in_doubt,
            };
            m.insert(name.into(), credential);
        });
        Ok(())
    }

    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        Ok(self.with(|m| m.values().cloned().collect()))
    }

    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.with(|m| m.remove(name).is_some()))
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut leases = self.leases();
        if leases
            .get(name)
            .is_some_and(|l| l.holder != holder && l.live(now))
        {
            return Ok(false);
        }
        let lease = Lease {
            holder: holder.into(),
            expires: now.checked_add(ttl),
        };
        leases.insert(name.into(), lease);
        Ok(true)
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        match self.leases().get_mut(name) {
            // An expired lease is not renewed even if nobody took it, as in
            // SQLite and PostgreSQL: the host sees one behaviour on every store.
            Some(l) if l.holder == holder && l.live(now) => {
                l.expires = now.checked_add(ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut leases = self.leases();
        // Only its own: a late release must not free a successor's lease.
        if leases.get(name).is_some_and(|l| l.holder == holder) {
            leases.remove(name);
        }
        Ok(())
    }

    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // The lease map stays locked while the mark is set, so no takeover
        // slips between the renewal and the mark (lock order: leases, then
        // credentials; nothing takes them the other way round).
        let now = Instant::now();
        let mut leases = self.leases();
        match leases.get_mut(name) {
            Some(l) if l.holder == holder && l.live(now) => {
                l.expires = now.checked_add(ttl);
                self.with(|m| {
                    if let Some(c) = m.get_mut(name) {
                        c.refresh_in_doubt = true;
                    }
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), StoreError> {
        self.with(|m| match m.get_mut(name) {
            Some(c) => {
                c.refresh_in_doubt = false;
                Ok(())
            }
            None => Err(StoreError::UnknownCredential(name.into())),
        })
    }

    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<(), StoreError> {
        self.with(|m| match m.get_mut(name) {
            Some(c) => {
                c.needs_authorization = Some(DeadGrant {
                    code: code.into(),
                    at: now_unix(),
                });
                Ok(())
            }
            None => Err(StoreError::UnknownCredential(name.into())),
        })
    }

    fn blocking(&self) -> bool {
        false
    }
}
