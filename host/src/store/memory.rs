//! An in-memory store, for embedders that persist elsewhere and for benchmarks.

use super::{Credential, KeyStore, StoreError, now_unix, validate_keys};
use crate::settings::Settings;
use crate::token_set::TokenSet;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    credentials: Mutex<BTreeMap<String, Credential>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Credential>) -> R) -> R {
        // A panic elsewhere cannot leave a half-written credential: every
        // mutation below is a single insert or field store.
        let mut map = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
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
        validate_keys(keys)?;
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
            Ok(c.version)
        })
    }

    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        if let Some(k) = keys {
            validate_keys(k)?;
        }
        self.with(|m| {
            let old = m.get(name);
            let version = old.map_or(0, |c| c.version + u64::from(keys.is_some()));
            let keys = keys.cloned().or_else(|| old.and_then(|c| c.keys.clone()));
            let credential = Credential {
                name: name.into(),
                settings: settings.clone(),
                keys,
                version,
                updated_at: now_unix(),
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

    fn blocking(&self) -> bool {
        false
    }
}
