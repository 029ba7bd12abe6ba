//! An in-memory store, for embedders that persist elsewhere, for one
//! process, and for benchmarks.

use super::{Credential, KeyStore, Record, Result, StoreError, check_keys, next_version, now_unix};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Credentials in this process only: lost when it exits.
#[derive(Default)]
pub struct MemoryStore {
    credentials: Mutex<BTreeMap<String, Credential>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Credential>) -> R) -> R {
        // A panic elsewhere cannot leave a half-written credential: every
        // mutation below is a single insert or a set of field stores made
        // after every check.
        let mut map = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }
}

impl KeyStore for MemoryStore {
    fn load(&self, name: &str) -> Result<Credential> {
        self.with(|m| m.get(name).cloned())
            .ok_or_else(|| StoreError::UnknownCredential(name.into()))
    }

    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64> {
        if let Some(keys) = &record.keys {
            check_keys(keys)?;
        }
        self.with(|m| {
            let c = m
                .get_mut(name)
                .ok_or_else(|| StoreError::UnknownCredential(name.into()))?;
            c.version = next_version(name, c.version, expected)?;
            c.keys = record.keys.clone();
            c.lease = record.lease.clone();
            c.refresh_mark = record.refresh_mark.clone();
            c.needs_authorization = record.dead_grant.clone();
            c.updated_at = now_unix();
            Ok(c.version)
        })
    }

    fn put(&self, name: &str, settings: &Settings, keys: Option<&TokenSet>) -> Result<()> {
        if let Some(keys) = keys {
            check_keys(keys)?;
        }
        self.with(|m| {
            let credential = match (m.remove(name), keys) {
                // A settings edit keeps the record as it is.
                (Some(old), None) => Credential {
                    settings: settings.clone(),
                    updated_at: now_unix(),
                    ..old
                },
                // New keys start afresh.
                (old, keys) => Credential {
                    name: name.into(),
                    settings: settings.clone(),
                    keys: keys.cloned(),
                    version: old.map_or(0, |c| c.version + 1),
                    updated_at: now_unix(),
                    needs_authorization: None,
                    lease: None,
                    refresh_mark: None,
                },
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

    fn blocking(&self) -> bool {
        false
    }
}
