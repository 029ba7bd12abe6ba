// The only WASI the component imports: wall-clock `now`, monotonic-clock
// `subscribe-duration` and the pollable it returns (the guest sleeps between
// token-endpoint retries and while another worker holds the refresh lease,
// with `block`), and `get-random-u64` (lease holder ids, from the OS's
// CSPRNG). Nothing else — no files, sockets, environment or stdio — so the
// sandbox stays as narrow as the Rust host's.

import { randomBytes } from 'node:crypto';

const NS_PER_MS = 1_000_000n;

function wallClock() {
  return {
    now() {
      const ms = Date.now();
      return { seconds: BigInt(Math.floor(ms / 1000)), nanoseconds: (ms % 1000) * 1_000_000 };
    },
  };
}

/**
 * @param {'sync'|'async'} blocking  `sync` parks the thread (worker path,
 *   where blocking is the point); `async` returns a promise (JSPI path, where
 *   the import suspends the wasm stack and the event loop keeps running).
 */
export function wasiImports(blocking) {
  const sleeper = blocking === 'sync' ? new Int32Array(new SharedArrayBuffer(4)) : null;

  class Pollable {
    constructor(deadlineMs) {
      this.deadlineMs = deadlineMs;
    }

    ready() {
      return performance.now() >= this.deadlineMs;
    }

    block() {
      const waitMs = Math.max(0, this.deadlineMs - performance.now());
      if (sleeper) {
        if (waitMs > 0) Atomics.wait(sleeper, 0, 0, waitMs);
        return undefined;
      }
      return new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }

  const monotonicClock = {
    now: () => BigInt(Math.round(performance.now() * 1e6)),
    resolution: () => 1_000n,
    subscribeDuration: (ns) => new Pollable(performance.now() + Number(ns / NS_PER_MS)),
    subscribeInstant: (ns) => new Pollable(Number(ns / NS_PER_MS)),
  };

  return {
    'wasi:clocks/wall-clock': wallClock(),
    'wasi:clocks/monotonic-clock': monotonicClock,
    'wasi:io/poll': { Pollable },
    'wasi:random/random': {
      getRandomU64: () => randomBytes(8).readBigUInt64LE(0),
      getRandomBytes: (len) => new Uint8Array(randomBytes(Number(len))),
    },
  };
}
