//! Instances kept warm between the calls of one credential.
//!
//! A fresh instance per call costs a pooled slot's reset and an
//! instantiation (mprotect of the linear memory, with TLB shootdowns on
//! every core): most of what separated rekey's warm request from a native
//! one. The guest keeps no state between calls (no globals besides its
//! allocator), so an instance that returned normally can run the next call.
//!
//! What may survive from one call to the next, and what may not:
//! - only the guest's linear memory (its heap, including freed buffers that
//!   held this credential's tokens) survives, and only into a later call of
//!   the same credential in the same store: an instance never serves
//!   another credential, so no call can see another credential's memory;
//! - the host state of a call ([`crate::call::CallState`]: lease, deadline,
//!   allowed destinations, resource table) is built anew for every call;
//! - an instance whose call trapped or failed inside wasmtime (a deadline,
//!   memory exhausted, a guest panic) is dropped, never reused;
//! - an instance is retired after [`MAX_CALLS`] calls, bounding what heap
//!   fragmentation can build up.

use crate::bindings::Refresher;
use crate::call::CallState;
use crate::store::KeyStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wasmtime::Store;

/// Calls one instance serves before it is retired.
pub(crate) const MAX_CALLS: u32 = 1000;

/// An instance and the `Store` it lives in.
pub(crate) struct Warm {
    pub(crate) store: Store<CallState>,
    pub(crate) client: Refresher,
    pub(crate) calls: u32,
}

/// Which calls may share an instance: one credential of one store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    store: usize,
    name: String,
}

impl Key {
    pub(crate) fn new(store: &Arc<dyn KeyStore>, name: &str) -> Key {
        Key {
            store: Arc::as_ptr(store).cast::<()>() as usize,
            name: name.to_owned(),
        }
    }
}

/// Idle instances by credential, at most `cap` in all. They hold pool slots
/// beyond the calls' own (see `runtime::pooling`).
pub(crate) struct WarmInstances {
    cap: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_key: HashMap<Key, Vec<Warm>>,
    count: usize,
}

impl WarmInstances {
    pub(crate) fn new(cap: usize) -> Self {
        WarmInstances {
            cap,
            idle: Mutex::new(Idle::default()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A panic elsewhere leaves the map itself consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle instance of this credential, if one is kept.
    pub(crate) fn take(&self, key: &Key) -> Option<Warm> {
        let mut idle = self.idle();
        let list = idle.by_key.get_mut(key)?;
        let warm = list.pop();
        if list.is_empty() {
            idle.by_key.remove(key);
        }
        if warm.is_some() {
            idle.count -= 1;
        }
        warm
    }

    /// Keeps an instance whose call returned normally, unless it is worn
    /// out or the idle set is full (then it is dropped, freeing its slot).
    pub(crate) fn put(&self, key: Key, mut warm: Warm) {
        warm.calls += 1;
        if warm.calls >= MAX_CALLS {
            return;
        }
        let mut idle = self.idle();
        if idle.count >= self.cap {
            return;
        }
        idle.count += 1;
        idle.by_key.entry(key).or_default().push(warm);
    }
}
