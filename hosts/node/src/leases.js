// The in-process half of the refresh lease: one holder per credential at a
// time (single-flight), the others queue. A refresh is rare, so a FIFO of
// waiters per credential is all it needs. A store may add the cross-process
// half (`store.acquireLease`), taken after this one so waiting here costs the
// store nothing.

export class LeaseTimeout extends Error {}

export class Leases {
  /** credential -> array of waiting resolvers; present while held */
  #queues = new Map();

  /**
   * Resolves with a release function once this caller holds the lease for
   * `credential`; rejects with LeaseTimeout after `timeoutMs`.
   */
  acquire(credential, timeoutMs) {
    const queue = this.#queues.get(credential);
    if (!queue) {
      this.#queues.set(credential, []);
      return Promise.resolve(this.#releaser(credential));
    }
    return new Promise((resolve, reject) => {
      const waiter = () => {
        clearTimeout(timer);
        resolve(this.#releaser(credential));
      };
      const timer = setTimeout(() => {
        const i = queue.indexOf(waiter);
        if (i >= 0) queue.splice(i, 1);
        reject(new LeaseTimeout(`another call held the refresh lease for more than ${timeoutMs} ms`));
      }, timeoutMs);
      queue.push(waiter);
    });
  }

  #releaser(credential) {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const queue = this.#queues.get(credential);
      const next = queue.shift();
      if (next) next();
      else this.#queues.delete(credential);
    };
  }
}
