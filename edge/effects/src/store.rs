//! The record store the guest runs its fleet protocol on: `read-record` and
//! `emit-update-keys` over any backend with compare-and-swap on one value
//! per credential (`Cas`). The files in a preopened directory implement it
//! today (`fs_cas.rs`); a durable key-value store whose swap fails when the
//! value changed since it was read (e.g. `wasi:keyvalue/atomics`' `cas`)
//! implements the same two functions.

use crate::exports::rekey::oauth2::types::{
    CredentialRecord, RefreshMark, StoredRecord, WriteError,
};
use crate::record::{self, Decoded};
use alloc::string::String;
use alloc::vec::Vec;

/// Why an update stored nothing, or may have.
pub enum CasError {
    /// The version moved on (`next` refused the current value, or another
    /// update landed first): nothing written.
    Refused,
    /// Nothing was written.
    Failed(String),
    /// The value may or may not have been replaced.
    Unknown(String),
}

/// Computes the value to store from the current one; none stores nothing.
pub type Next<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// One credential's value in a backend with compare-and-swap.
pub trait Cas {
    /// The stored bytes, none when nothing is stored.
    fn get(&self) -> Result<Option<Vec<u8>>, String>;
    /// Replaces the value with `next(current)`, atomically: no other update
    /// lands between reading `current` and storing; durable when it returns
    /// ok. `next` returning none stores nothing (`Refused`).
    fn update(&self, next: &mut Next<'_>) -> Result<(), CasError>;
    /// A 0.2 refresh-in-doubt marker that names these 0.2 keys (file stores).
    fn legacy_mark(&self, _keys: &str) -> Option<RefreshMark> {
        None
    }
}

/// The record as stored now. Nothing stored reads as version 0, empty: the
/// guest answers "not authenticated".
pub fn read(cas: &impl Cas) -> Result<StoredRecord, String> {
    let Some(bytes) = cas.get()? else {
        return Ok(StoredRecord {
            version: 0,
            data: CredentialRecord {
                keys: None,
                lease: None,
                refresh_mark: None,
                dead_grant: None,
            },
        });
    };
    Ok(match record::decode(&bytes)? {
        Decoded::Record(r) => r,
        Decoded::Keys02(keys) => StoredRecord {
            version: 0,
            data: CredentialRecord {
                refresh_mark: cas.legacy_mark(&keys),
                keys: Some(keys),
                lease: None,
                dead_grant: None,
            },
        },
    })
}

/// Stores `data` as version `expected + 1` if the stored version is `expected`.
pub fn write(
    cas: &impl Cas,
    expected: u64,
    data: &CredentialRecord,
    now_unix: u64,
) -> Result<u64, WriteError> {
    let next_version = expected
        .checked_add(1)
        .ok_or_else(|| WriteError::Failed("the record's version is at its maximum".into()))?;
    let mut unreadable = None;
    let mut next = |current: Option<&[u8]>| match record::version_of(current) {
        Ok(v) if v == expected => Some(record::encode(next_version, data, now_unix).into_bytes()),
        Ok(_) => None,
        Err(e) => {
            unreadable = Some(e);
            None
        }
    };
    match cas.update(&mut next) {
        Ok(()) => Ok(next_version),
        Err(CasError::Refused) => match unreadable {
            // A record this proxy cannot read is not overwritten.
            Some(e) => Err(WriteError::Failed(e)),
            None => Err(WriteError::Conflict),
        },
        Err(CasError::Failed(m)) => Err(WriteError::Failed(m)),
        Err(CasError::Unknown(m)) => Err(WriteError::Unknown(m)),
    }
}
