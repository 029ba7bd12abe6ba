//! An in-memory store, for embedders that persist elsewhere and for benchmarks.

use super::{
    Credential, DeadGrant, KeyStore, Result, StoreError, check_keys, next_version, now_unix,
};
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

    /// Changes the credential `name` in place; unknown if there is none.
    fn update(&self, name: &str, change: impl FnOnce(&mut Credential)) -> Result<()> {
        self.with(|m| m.get_mut(name).map(change))
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        // Every mutation is a single insert, field store or remove.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyStore for MemoryStore {
    fn load(&self, name: &str) -> Result<Credential> {
        self.with(|m| m.get(name).cloned())
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))
    }

    fn save_keys(&self, name: &str, keys: &TokenSet, expected_version: Option<u64>) -> Result<u64> {
        check_keys(keys)?;
        self.with(|m| {
            let c = m
                .get_mut(name)
                .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
            c.version = next_version(name, c.version, expected_version)?;
            c.keys = Some(keys.clone());
            c.updated_at = now_unix();
            // Saved keys settle any refresh in doubt and revive a dead grant.
            c.refresh_in_doubt = false;
            c.needs_authorization = None;
            Ok(c.version)
        })
    }

    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()> {
        if let Some(keys) = keys {
            check_keys(keys)?;
        }
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

    fn list(&self) -> Result<Vec<Credential>> {
        Ok(self.with(|m| m.values().cloned().collect()))
    }

    fn remove(&self, name: &str) -> Result<bool> {
        Ok(self.with(|m| m.remove(name).is_some()))
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
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

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
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

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut leases = self.leases();
        // Only its own: a late release must not free a successor's lease.
        if leases.get(name).is_some_and(|l| l.holder == holder) {
            leases.remove(name);
        }
        Ok(())
    }

    fn begin_refresh(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
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

    fn clear_refresh_in_doubt(&self, name: &str) -> Result<()> {
        self.update(name, |c| c.refresh_in_doubt = false)
    }

    fn mark_needs_authorization(&self, name: &str, code: &str) -> Result<()> {
        let dead = DeadGrant {
            code: code.into(),
            at: now_unix(),
        };
        self.update(name, |c| c.needs_authorization = Some(dead))
    }

    fn blocking(&self) -> bool {
        false
    }
}
