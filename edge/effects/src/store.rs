//! The seam between the call's logic (lease.rs) and where keys live. The
//! filesystem implements it today (fs_store.rs); a durable `wasi:keyvalue`
//! with compare-and-swap could implement the same five operations.

use alloc::string::String;

/// A store failure; the message names files or operations, never contents.
#[derive(Debug)]
pub struct StoreError(pub String);

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One credential's keys, refresh lease and in-flight marker.
pub trait Store {
    /// The stored keys, none when nothing is stored.
    fn load(&self) -> Result<Option<String>, StoreError>;
    /// Replaces the keys; durable when it returns ok.
    fn save(&self, keys: &str) -> Result<(), StoreError>;
    /// Takes the lease for `owner` until `now_ms + ttl_ms` if it is free or
    /// expired; false while another owner holds an unexpired one.
    fn try_lease(&self, owner: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Extends `owner`'s lease; false if `owner` no longer holds it.
    fn renew_lease(&self, owner: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Ends `owner`'s lease (nothing if another owner holds it now).
    fn release_lease(&self, owner: &str) -> Result<(), StoreError>;
    /// The in-flight marker: the fingerprint of the keys a token request was
    /// sent for, written before it left and cleared once its result is stored.
    fn in_flight(&self) -> Result<Option<String>, StoreError>;
    fn mark_in_flight(&self, fingerprint: &str) -> Result<(), StoreError>;
    fn clear_in_flight(&self) -> Result<(), StoreError>;
}
