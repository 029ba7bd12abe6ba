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
    /// The public JWK of the credential's DPoP key (`signer.dpop-public-key`).
    /// Effects without DPoP keys (most test doubles) have none.
    fn dpop_public_key(&mut self, _alg: SigningAlgorithm) -> Result<String, String> {
        Err("no DPoP key".into())
    }
    /// A DPoP proof's signature with that key (`signer.dpop-sign`).
    fn dpop_sign(&mut self, _alg: SigningAlgorithm, _input: &[u8]) -> Result<Vec<u8>, String> {
        Err("no DPoP key".into())
    }
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
