//! Everything the routine needs from outside: the WIT imports, as traits so
//! the protocol runs natively in unit tests and in the fleet simulator.

pub use crate::http::Http;
use crate::rekey::oauth2::types::{CredentialRecord, SigningAlgorithm, StoredRecord, WriteError};
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

/// What a signed assertion needs (`assertion.rs`): randomness for its `jti`
/// and the host's signature, so the key never enters the component.
pub trait Signing {
    /// A random number (`wasi:random`), for holder ids, jitter and `jti`s.
    fn random_u64(&mut self) -> u64;
    /// The JWS signature of `input` with the credential's key (`signer.sign`).
    fn sign(&mut self, alg: SigningAlgorithm, input: &[u8]) -> Result<Vec<u8>, String>;
}

pub trait Effects: Http + Signing {
    /// The credential's record and version (`host.read-record`).
    fn read_record(&mut self) -> Result<StoredRecord, String>;
    /// The conditional, durable write (`host.emit-update-keys`).
    fn write_record(&mut self, expected: u64, record: &CredentialRecord)
    -> Result<u64, WriteError>;
    /// Wall-clock Unix milliseconds (`wasi:clocks/wall-clock`).
    fn now_ms(&self) -> u64;
    /// Waits (`wasi:clocks/monotonic-clock` + `wasi:io/poll`).
    fn sleep(&mut self, d: Duration);

    /// Wall-clock Unix seconds.
    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}
