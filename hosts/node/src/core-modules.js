// Compiling the transpiled component's core modules once per process; the
// compiled modules are shared by every instance (and sent to worker threads,
// which then need not compile them again).

import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** @returns {Promise<Record<string, WebAssembly.Module>>} file name -> module */
export async function compileCoreModules(dir) {
  const names = (await readdir(dir)).filter((n) => n.endsWith('.wasm'));
  /** @type {Record<string, WebAssembly.Module>} */
  const modules = {};
  await Promise.all(names.map(async (name) => {
    modules[name] = await WebAssembly.compile(await readFile(join(dir, name)));
  }));
  return modules;
}

/** The `getCoreModule` callback jco's instantiation mode asks for. */
export function moduleLookup(modules) {
  return (name) => {
    const module = modules[name];
    if (!module) throw new Error(`the transpiled component has no core module ${name}`);
    return module;
  };
}

/** jco signals an import's `err` by a thrown value carrying `payload`. */
export function importResult(result) {
  if (!result.ok) throw { payload: result.error };
  return result.value;
}

/** A send-error from the export (jco's ComponentError), or undefined for a trap. */
export function sendErrorOf(thrown) {
  return thrown !== null && typeof thrown === 'object' && Object.hasOwn(thrown, 'payload')
    ? thrown.payload
    : undefined;
}

/**
 * The component's exports by the name the engines call them: `send`,
 * `checkSettings` and `keepalive` (the `client` interface) and the
 * `authorize` interface's four functions.
 */
export function exportsOf(root) {
  return {
    send: root.client.send,
    checkSettings: root.client.checkSettings,
    keepalive: root.client.keepalive,
    begin: root.authorize.begin,
    finish: root.authorize.finish,
    deviceStart: root.authorize.deviceStart,
    devicePoll: root.authorize.devicePoll,
  };
}
