#!/usr/bin/env node
// Prints the SHA-256 of the component this package runs (the same hex as
// `sha256sum rekey_guest.wasm`), after checking that the packaged .wasm is
// the one gen/ was transpiled from.
//
//   npx rekey-node-component --sha256   the hex digest
//   npx rekey-node-component --path     where the packaged .wasm is
//   npx rekey-node-component            both, and the version

import { readFile } from 'node:fs/promises';
import { COMPONENT_PATH, COMPONENT_SHA256, componentFileSha256 } from '../src/component.js';

const USAGE = 'usage: rekey-node-component [--sha256 | --path]';
const arg = process.argv[2];
if (process.argv.length > 3 || (arg !== undefined && !['--sha256', '--path', '--help', '-h'].includes(arg))) {
  console.error(USAGE);
  process.exit(2);
}
if (arg === '--help' || arg === '-h') {
  console.log(USAGE);
  process.exit(0);
}
const actual = await componentFileSha256();
if (actual !== COMPONENT_SHA256) {
  console.error(`rekey-node-component: ${COMPONENT_PATH} has sha256 ${actual}, but gen/ was built from ${COMPONENT_SHA256}: the package is inconsistent, reinstall it`);
  process.exit(1);
}
if (arg === '--sha256') console.log(COMPONENT_SHA256);
else if (arg === '--path') console.log(COMPONENT_PATH);
else {
  const { version } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
  console.log(`@rekey/node ${version}\ncomponent ${COMPONENT_PATH}\nsha256 ${COMPONENT_SHA256}`);
}
