// The JSPI path (Node >= 24): the component runs on the calling thread; its
// host imports are async functions, and JSPI suspends the wasm stack while
// they await, so the event loop (other calls, the user's callbacks) keeps
// running. Each call takes an instance from a pool.

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Body, callersBytes, mapResponseBodies } from './bodies.js';
import { compileCoreModules, exportsOf, importResult, moduleLookup, sendErrorOf } from './core-modules.js';
import { abortReason } from './abort.js';
import { ComponentError } from './errors.js';
import { InstancePool } from './instance-pool.js';
import { wasiImports } from './wasi.js';

export function jspiAvailable() {
  // Not in TypeScript's lib yet: JSPI is newer than its WebAssembly types.
  const wasm = /** @type {any} */ (WebAssembly);
  return typeof wasm.Suspending === 'function' && typeof wasm.promising === 'function';
}

export async function createJspiEngine({ genDir, poolSize }) {
  if (!jspiAvailable()) {
    throw new Error(`this Node.js (${process.version}) has no JSPI (WebAssembly.Suspending): use mode 'worker'`);
  }
  const dir = join(genDir, 'jspi');
  const { instantiate } = await import(pathToFileURL(join(dir, 'rekey.js')).href);
  const getCoreModule = moduleLookup(await compileCoreModules(dir));

  const pool = new InstancePool(poolSize, async () => {
    // The imports act on whichever call the instance serves now.
    const slot = { host: null };
    const through = (name) => async (...args) => importResult(await slot.host[name](...args));
    const root = await instantiate(getCoreModule, {
      'rekey:oauth2/types': { Body },
      'rekey:oauth2/host': {
        // The borrowed body's bytes go out as they are; the response's
        // bytes become a new body the component owns.
        httpSend: async (purpose, head, body) => {
          const result = await slot.host.httpSend(purpose, head, Body.bytesOf(body));
          return importResult(mapResponseBodies(result, (bytes) => new Body(bytes)));
        },
        readRecord: through('readRecord'),
        emitUpdateKeys: through('emitUpdateKeys'),
      },
      // Synchronous (not a JSPI import): the key is in memory by now.
      'rekey:oauth2/signer': {
        sign: (algorithm, input) => importResult(slot.host.sign(algorithm, input)),
        dpopPublicKey: (algorithm) => importResult(slot.host.dpopPublicKey(algorithm)),
        dpopSign: (algorithm, input) => importResult(slot.host.dpopSign(algorithm, input)),
      },
      ...wasiImports('async'),
    });
    return { slot, exports: exportsOf(root) };
  });

  const engine = {
    mode: 'jspi',
    /** `send`: the request's bytes in as a body the component owns, the responses' bodies back as bytes. */
    async call(settings, request, host, { signal = undefined } = {}) {
      const outcome = await engine.invoke('send', [settings, { ...request, body: new Body(request.body) }], host, { signal });
      return mapResponseBodies(outcome, (body) => callersBytes(Body.bytesOf(body)));
    },
    /**
     * Runs one export (see exportsOf) with `host` serving its imports (no
     * time bound here); not at all if `signal` aborted while it waited for
     * an instance.
     */
    async invoke(op, args, host, { signal = undefined } = {}) {
      const instance = await pool.take();
      if (signal?.aborted) {
        pool.put(instance);
        throw abortReason(signal);
      }
      instance.slot.host = host;
      let outcome;
      try {
        outcome = { ok: true, value: await instance.exports[op](...args) };
      } catch (thrown) {
        const sendError = sendErrorOf(thrown);
        outcome = sendError ? { ok: false, error: sendError } : { trap: thrown };
      }
      instance.slot.host = null;
      if (!('trap' in outcome)) {
        pool.put(instance);
        return outcome;
      }
      pool.discard(instance);
      throw new ComponentError(`trapped (${outcome.trap?.message ?? String(outcome.trap)})`);
    },
    close() {
      pool.drain();
    },
  };
  return engine;
}
