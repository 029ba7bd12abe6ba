// The worker path (Node 22, or forced: no JSPI): the component's imports are
// synchronous, so each instance runs in its own worker thread and blocks
// there, while this (the calling) thread serves its imports asynchronously:
// real HTTP, the record store and the user's async callbacks all stay on the
// caller's event loop, which never blocks. One worker serves one call at
// a time; a pool of them serves concurrent calls.
//
// Bodies stay on this thread too: the worker gets ids, and bytes cross only
// when the component reads a body (a token answer) or sends one it made (a
// token form). An API request or response never crosses.

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MessageChannel, Worker } from 'node:worker_threads';
import { callersBytes, mapResponseBodies } from './bodies.js';
import { compileCoreModules } from './core-modules.js';
import { abortReason } from './abort.js';
import { ComponentError } from './errors.js';
import { InstancePool } from './instance-pool.js';

const WORKER_URL = new URL('./worker.js', import.meta.url);

export async function createWorkerEngine({ genDir, poolSize, callTimeoutMs }) {
  const dir = join(genDir, 'sync');
  const genModuleUrl = pathToFileURL(join(dir, 'rekey.js')).href;
  const modules = await compileCoreModules(dir);

  const pool = new InstancePool(poolSize, () => startWorker(genModuleUrl, modules), (w) => w.terminate());

  /**
   * Runs one export with `served` answering the worker's imports, bounded by
   * `timeoutMs`; not at all if `signal` aborted while it waited for a worker.
   */
  async function run(op, args, served, timeoutMs, signal) {
    const worker = await pool.take();
    if (signal?.aborted) {
      pool.put(worker);
      throw abortReason(signal);
    }
    let answer;
    try {
      answer = await worker.run({ type: 'call', op, args }, served, timeoutMs);
    } catch (err) {
      pool.discard(worker);
      throw err;
    }
    pool.put(worker);
    if (answer.trap !== undefined) throw new ComponentError(`trapped (${answer.trap})`);
    return answer.ok ? { ok: true, value: answer.value } : { ok: false, error: answer.error };
  }

  const engine = {
    mode: 'worker',
    /** `send`: the request's bytes stay here (the worker gets an id), the responses' bodies come back as bytes. */
    async call(settings, request, host, { signal = undefined } = {}) {
      const served = serving(host);
      const body = { id: served.keep(request.body) };
      const outcome = await run('send', [settings, { ...request, body }], served, callTimeoutMs, signal);
      return mapResponseBodies(outcome, (ref) => callersBytes(served.bytesOf(ref)));
    },
    /**
     * Runs one export (`checkSettings`, `keepalive`, `begin`, `finish`,
     * `deviceStart`, `devicePoll`; `send` goes through `call`) with `host`
     * serving its imports, bounded by `timeoutMs` (default: the call
     * timeout). Its arguments cross to the worker as they are (keepalive's
     * bigint included).
     */
    invoke(op, args, host, { timeoutMs = callTimeoutMs, signal = undefined } = {}) {
      return run(op, args, serving(host), timeoutMs, signal);
    },
    close() {
      pool.drain();
    },
  };
  return engine;
}

/**
 * The imports of one call as the worker asks for them (each resolves to the
 * import's WIT result). The call's bodies are kept here by id until it ends;
 * a body the worker made arrives as `{bytes}`, one kept here as `{id}`.
 */
function serving(host) {
  const bodies = [];
  const keep = (bytes) => bodies.push(bytes) - 1;
  const bytesOf = (ref) => (ref.id === undefined ? ref.bytes : bodies[ref.id]);
  return {
    keep,
    bytesOf,
    async httpSend(purpose, head, ref) {
      const result = await host.httpSend(purpose, head, bytesOf(ref));
      return mapResponseBodies(result, (bytes) => ({ id: keep(bytes) }));
    },
    // A copy of exactly the bytes read: posting a view would copy its whole
    // ArrayBuffer. Not `bytes.slice`: on a Buffer that is a view.
    async readBody(id, limit) {
      return { ok: true, value: Uint8Array.prototype.slice.call(bodies[id], 0, Number(limit)) };
    },
    readRecord: () => host.readRecord(),
    emitUpdateKeys: (expectedVersion, data) => host.emitUpdateKeys(expectedVersion, data),
    sign: async (algorithm, input) => host.sign(algorithm, input),
    dpopPublicKey: async (algorithm) => host.dpopPublicKey(algorithm),
    dpopSign: async (algorithm, input) => host.dpopSign(algorithm, input),
  };
}

function startWorker(genModuleUrl, modules) {
  const signal = new SharedArrayBuffer(4);
  const flag = new Int32Array(signal);
  const { port1: replies, port2: workerReplies } = new MessageChannel();
  const worker = new Worker(WORKER_URL, {
    workerData: { genModuleUrl, modules, replies: workerReplies, signal },
    transferList: [workerReplies],
  });
  worker.unref(); // an idle pool must not keep the process alive
  replies.unref();

  let current = null; // {served, resolve, reject} of the call in progress

  const answerImport = (result) => {
    replies.postMessage(result);
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
  };

  const fail = (err) => {
    const call = current;
    current = null;
    call?.reject(err);
  };

  return new Promise((resolveStart, rejectStart) => {
    worker.on('message', (msg) => {
      if (msg.type === 'ready') {
        resolveStart(handle);
      } else if (msg.type === 'host') {
        const served = current?.served;
        if (!served) return;
        // These never throw: each resolves to the import's result.
        served[msg.op](...msg.args).then(answerImport);
      } else if (msg.type === 'done') {
        const call = current;
        current = null;
        call?.resolve(msg);
      }
    });
    worker.on('error', (err) => {
      rejectStart(err);
      fail(new ComponentError(`the worker thread failed (${err?.name ?? 'error'})`));
    });
    worker.on('exit', () => fail(new ComponentError('the worker thread exited')));

    const handle = {
      run(message, served, timeoutMs) {
        return new Promise((resolve, reject) => {
          worker.ref();
          const timer = setTimeout(() => {
            // Past its deadline a call is stopped where it stands; a lease it
            // holds in the record runs out (the component refuses to begin
            // a token exchange this close to the deadline).
            fail(new ComponentError(`the call ran past its ${timeoutMs} ms limit`));
          }, timeoutMs);
          const settle = (fn) => (value) => {
            clearTimeout(timer);
            worker.unref();
            fn(value);
          };
          current = { served, resolve: settle(resolve), reject: settle(reject) };
          worker.postMessage(message);
        });
      },
      terminate() {
        worker.terminate();
      },
    };
  });
}
