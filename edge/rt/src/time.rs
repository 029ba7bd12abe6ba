//! Clocks and sleeps.

use crate::wasi::clocks::{monotonic_clock, wall_clock};

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    let now = wall_clock::now();
    now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
}

/// Monotonic milliseconds, for deadlines.
pub fn mono_ms() -> u64 {
    monotonic_clock::now() / 1_000_000
}

pub fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}
