// One worker thread of the worker path: it owns one component instance whose
// imports are synchronous. Each import posts its arguments to the main
// thread and parks this thread on Atomics.wait until the main thread (which
// does the HTTP and the record store, and runs the user's async callbacks)
// has posted the answer on `replies` and flipped `signal`.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { mapResponseBodies } from './bodies.js';
import { exportsOf, importResult, moduleLookup, sendErrorOf } from './core-modules.js';
import { wasiImports } from './wasi.js';

const { genModuleUrl, modules, replies, signal } = workerData;
const flag = new Int32Array(signal);
const { instantiate } = await import(genModuleUrl);

function hostCall(op, args) {
  Atomics.store(flag, 0, 0);
  parentPort.postMessage({ type: 'host', op, args });
  while (Atomics.load(flag, 0) === 0) Atomics.wait(flag, 0, 0);
  return importResult(receiveMessageOnPort(replies).message);
}

/**
 * The WIT resource `types.body` on this thread: either bytes the component
 * made (a token form: they cross when it is sent), or the id of a body the
 * main thread keeps (read only when the component reads it).
 */
class Body {
  #bytes;
  #id;

  /** The component's constructor passes bytes; `Body.kept` passes an id. */
  constructor(bytes, id) {
    this.#bytes = bytes;
    this.#id = id;
  }

  static kept({ id }) {
    return new Body(undefined, id);
  }

  /** What the main thread resolves: `{bytes}` or `{id}`. */
  static ref(body) {
    return body.#id === undefined ? { bytes: body.#bytes } : { id: body.#id };
  }

  read(limit) {
    return this.#id === undefined ? this.#bytes.subarray(0, Number(limit)) : hostCall('readBody', [this.#id, limit]);
  }
}

async function newInstance() {
  const root = await instantiate(moduleLookup(modules), {
    'rekey:oauth2/types': { Body },
    'rekey:oauth2/host': {
      httpSend: (purpose, head, body) => {
        const response = hostCall('httpSend', [purpose, head, Body.ref(body)]);
        return { ...response, body: Body.kept(response.body) };
      },
      readRecord: () => hostCall('readRecord', []),
      emitUpdateKeys: (expectedVersion, data) => hostCall('emitUpdateKeys', [expectedVersion, data]),
    },
    // The key stays on the main thread: only the input and the signature cross.
    'rekey:oauth2/signer': {
      sign: (algorithm, input) => hostCall('sign', [algorithm, input]),
      dpopPublicKey: (algorithm) => hostCall('dpopPublicKey', [algorithm]),
      dpopSign: (algorithm, input) => hostCall('dpopSign', [algorithm, input]),
    },
    ...wasiImports('sync'),
  });
  return exportsOf(root);
}

let component = await newInstance();

parentPort.on('message', async ({ type, op, args }) => {
  if (type !== 'call') return;
  // `send` takes the request's body as a kept id, and answers with refs.
  const bodies = op === 'send';
  if (bodies) args[1] = { ...args[1], body: Body.kept(args[1].body) };
  let outcome;
  try {
    outcome = { ok: true, value: component[op](...args) };
  } catch (thrown) {
    const sendError = sendErrorOf(thrown);
    if (sendError) {
      outcome = { ok: false, error: sendError };
    } else {
      // A trapped instance is never reused (answered once the next is ready).
      const trap = thrown?.message ?? String(thrown);
      component = await newInstance();
      parentPort.postMessage({ type: 'done', trap });
      return;
    }
  }
  parentPort.postMessage({ type: 'done', ...(bodies ? mapResponseBodies(outcome, Body.ref) : outcome) });
});

parentPort.postMessage({ type: 'ready' });
