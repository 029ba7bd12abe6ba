// One worker thread of the worker path: it owns one component instance whose
// imports are synchronous. Each import posts its arguments to the main
// thread and parks this thread on Atomics.wait until the main thread (which
// does the HTTP and the record store, and runs the user's async callbacks) has posted the answer on `replies` and flipped `signal`.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
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

async function newInstance() {
  const root = await instantiate(moduleLookup(modules), {
    'rekey:oauth2/types': {},
    'rekey:oauth2/host': {
      httpSend: (purpose, req) => hostCall('httpSend', [purpose, req]),
      readRecord: () => hostCall('readRecord', []),
      emitUpdateKeys: (expectedVersion, data) => hostCall('emitUpdateKeys', [expectedVersion, data]),
    },
    ...wasiImports('sync'),
  });
  return exportsOf(root);
}

let component = await newInstance();

parentPort.on('message', async ({ type, op, args }) => {
  if (type !== 'call') return;
  let answer;
  try {
    answer = { type: 'done', ok: true, value: component[op](...args) };
  } catch (thrown) {
    const sendError = sendErrorOf(thrown);
    if (sendError) {
      answer = { type: 'done', ok: false, error: sendError };
    } else {
      answer = { type: 'done', trap: thrown?.message ?? String(thrown) };
      // A trapped instance is never reused.
      component = await newInstance();
    }
  }
  parentPort.postMessage(answer);
});

parentPort.postMessage({ type: 'ready' });
