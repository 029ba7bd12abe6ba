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
use std::sync::{Arc, Mutex, Weak};
use wasmtime::Store;

/// Calls one instance serves before it is retired.
pub(crate) const MAX_CALLS: u32 = 1000;

/// An instance and the `Store` it lives in.
pub(crate) struct Warm {
    pub(crate) store: Store<CallState>,
    pub(crate) client: Refresher,
    pub(crate) calls: u32,
    /// When it was last put back, for evicting the least recently used.
    last_used: u64,
}

impl Warm {
    pub(crate) fn new(store: Store<CallState>, client: Refresher) -> Warm {
        Warm {
            store,
            client,
            calls: 0,
            last_used: 0,
        }
    }
}

/// Which calls may share an instance: one credential of one store. The
/// store is held weakly: an idle instance does not keep a store the
/// application dropped (its connections) alive, yet the allocation stays, so
/// no later store can take its address and inherit its instances.
#[derive(Clone)]
pub(crate) struct Key {
    address: usize,
    store: Weak<dyn KeyStore>,
    name: String,
}

impl Key {
    pub(crate) fn new(store: &Arc<dyn KeyStore>, name: &str) -> Key {
        Key {
            address: Arc::as_ptr(store).cast::<()>() as usize,
            store: Arc::downgrade(store),
            name: name.to_owned(),
        }
    }

    fn store_dropped(&self) -> bool {
        self.store.strong_count() == 0
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.address == other.address && self.name == other.name
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.address.hash(h);
        self.name.hash(h);
    }
}

/// Idle instances by credential, at most `cap` in all; when full, the least
/// recently used goes. They hold pool slots (and each its last fiber stack)
/// beyond the calls' own (see `runtime::pooling`).
pub(crate) struct WarmInstances {
    cap: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_key: HashMap<Key, Vec<Warm>>,
    count: usize,
    clock: u64,
}

impl Idle {
    /// Drops the instances of stores the application dropped, else the
    /// least recently used one; false if there is nothing to drop.
    fn evict(&mut self) -> bool {
        let before = self.count;
        self.by_key.retain(|key, _| !key.store_dropped());
        self.count = self.by_key.values().map(Vec::len).sum();
        if self.count < before {
            return true;
        }
        let oldest = self
            .by_key
            .iter()
            .flat_map(|(key, list)| {
                list.iter()
                    .enumerate()
                    .map(move |(i, w)| (w.last_used, key, i))
            })
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, key, i)| (key.clone(), i));
        let Some((key, i)) = oldest else { return false };
        if let Some(list) = self.by_key.get_mut(&key) {
            drop(list.swap_remove(i));
            if list.is_empty() {
                self.by_key.remove(&key);
            }
        }
        self.count -= 1;
        true
    }
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

    /// Keeps an instance whose call returned normally (its `Store` holding
    /// `parked`, a host state with no store and no secrets), unless it is
    /// worn out; a full idle set makes room by eviction.
    pub(crate) fn put(&self, key: Key, mut warm: Warm, parked: CallState) {
        *warm.store.data_mut() = parked;
        warm.calls += 1;
        if warm.calls >= MAX_CALLS || self.cap == 0 {
            return;
        }
        let mut idle = self.idle();
        if idle.count >= self.cap && !idle.evict() {
            return;
        }
        idle.clock += 1;
        warm.last_used = idle.clock;
        idle.count += 1;
        idle.by_key.entry(key).or_default().push(warm);
    }
}
