//! The refresh lease: at most one refresh per credential at a time, so a
//! rotating refresh token is never spent twice. This is the in-process part
//! (single-flight between concurrent calls of one `Rekey`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

pub type LeaseGuard = OwnedMutexGuard<()>;

#[derive(Clone, Default)]
pub struct Leases {
    by_credential: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

impl Leases {
    pub async fn acquire(&self, credential: &str) -> LeaseGuard {
        let lock = {
            let mut map = self.by_credential.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(credential.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
