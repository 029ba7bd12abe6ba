// The component this package runs: its SHA-256 (the same hex as
// `sha256sum host/component/rekey_guest.wasm` in the rekey repository, and as
// the Rust and Python packages print) and the packaged .wasm itself.

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

// gen/component.js is written by scripts/build.mjs with gen/ (a checkout
// needs `npm run build`; a package ships it).
export { COMPONENT_SHA256 } from '../gen/component.js';

/** The component gen/ was transpiled from, as shipped in the package. */
export const COMPONENT_PATH = fileURLToPath(new URL('../component/rekey_guest.wasm', import.meta.url));

/**
 * The SHA-256 of the .wasm at COMPONENT_PATH, read now (hex). Equal to
 * COMPONENT_SHA256 unless the package was altered after it was built.
 * @returns {Promise<string>}
 */
export async function componentFileSha256() {
  return createHash('sha256').update(await readFile(COMPONENT_PATH)).digest('hex');
}
