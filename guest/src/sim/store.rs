//! The record store, as docs/record-store.md specifies it: one record with
//! a version; a conditional write replaces it whole only on the expected
//! version and bumps the version. Faults are the world's to inject: this is
//! the store's truth.

use crate::rekey::oauth2::types::{CredentialRecord, StoredRecord, WriteError};

pub struct Store {
    pub version: u64,
    pub data: CredentialRecord,
}

impl Store {
    pub fn new(keys: Option<String>) -> Store {
        Store {
            version: 1,
            data: CredentialRecord {
                keys,
                lease: None,
                refresh_mark: None,
                dead_grant: None,
            },
        }
    }

    pub fn read(&self) -> StoredRecord {
        StoredRecord {
            version: self.version,
            data: self.data.clone(),
        }
    }

    /// The conditional write: the new version, or `conflict` and nothing changed.
    pub fn cas(&mut self, expected: u64, data: &CredentialRecord) -> Result<u64, WriteError> {
        if expected != self.version {
            return Err(WriteError::Conflict);
        }
        self.version += 1;
        self.data = data.clone();
        Ok(self.version)
    }
}
