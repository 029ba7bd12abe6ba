// A bounded pool of component instances: one instance serves one call at a
// time, idle ones are reused (instantiating costs milliseconds), and at most
// `max` exist; further calls queue. An instance that trapped is discarded,
// never reused.

export class InstancePool {
  #idle = [];
  #waiters = [];
  #count = 0;

  /**
   * @param {number} max
   * @param {() => Promise<any>} create
   * @param {(instance: any) => void} [destroy]
   */
  constructor(max, create, destroy = () => {}) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError('the pool size must be a whole number >= 1');
    this.max = max;
    this.create = create;
    this.destroy = destroy;
  }

  async take() {
    const idle = this.#idle.pop();
    if (idle) return idle;
    if (this.#count < this.max) {
      this.#count += 1;
      try {
        return await this.create();
      } catch (err) {
        this.#count -= 1;
        this.#wakeOne();
        throw err;
      }
    }
    await new Promise((resolve) => this.#waiters.push(resolve));
    return this.take();
  }

  put(instance) {
    this.#idle.push(instance);
    this.#wakeOne();
  }

  discard(instance) {
    this.#count -= 1;
    this.destroy(instance);
    this.#wakeOne();
  }

  /** Destroys the idle instances (busy ones are the callers' to finish). */
  drain() {
    for (const instance of this.#idle.splice(0)) {
      this.#count -= 1;
      this.destroy(instance);
    }
  }

  #wakeOne() {
    this.#waiters.shift()?.();
  }
}
