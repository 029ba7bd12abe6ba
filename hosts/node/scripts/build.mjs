// Transpiles the rekey component into gen/ with the pinned jco, twice:
//   gen/sync  synchronous imports, for the worker-thread path (Node >= 22)
//   gen/jspi  the host's functions and pollable.block as async imports and
//             `send` and the `authorize` functions as async exports, for
//             JSPI (Node >= 24)
// and records the component's SHA-256 in gen/build-info.json, so a test can
// check it is byte-identical to the one the Rust host embeds.
//
//   node scripts/build.mjs [path/to/rekey_guest.wasm [out-dir]]   (or $REKEY_WASM; default: the committed
//   host/component/rekey_guest.wasm; out-dir: gen/)

import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// The committed component every host runs (guest/build.sh writes it).
const COMMITTED = join(root, '..', '..', 'host', 'component', 'rekey_guest.wasm');
const wasmPath = resolve(process.argv[2] ?? process.env.REKEY_WASM ?? COMMITTED);
const gen = resolve(process.argv[3] ?? join(root, 'gen'));
// jco's package.json is not in its exports map: find it where npm puts it.
const jcoPackage = join(root, 'node_modules', '@bytecodealliance', 'jco', 'package.json');
const jcoVersion = JSON.parse(await readFile(jcoPackage, 'utf8')).version;
const jcoBin = join(dirname(jcoPackage), 'dist', 'jco.js');

let wasm;
try {
  wasm = await readFile(wasmPath);
} catch (err) {
  console.error(`build: cannot read the component at ${wasmPath} (${err.code}); set REKEY_WASM or pass its path`);
  process.exit(2);
}
const sha256 = createHash('sha256').update(wasm).digest('hex');

const HOST = 'rekey:oauth2/host@0.3.0';
const AUTHORIZE = 'rekey:oauth2/authorize@0.3.0';
const common = ['--instantiation', 'async', '--name', 'rekey', '--no-wasi-shim', '--quiet'];
const variants = {
  sync: [],
  jspi: [
    '--async-mode', 'jspi',
    '--async-imports',
    `${HOST}#http-send`, `${HOST}#read-record`, `${HOST}#emit-update-keys`,
    'wasi:io/poll@0.2.0#[method]pollable.block',
    '--async-exports', 'rekey:oauth2/client@0.3.0#send',
    `${AUTHORIZE}#begin`, `${AUTHORIZE}#finish`, `${AUTHORIZE}#device-start`, `${AUTHORIZE}#device-poll`,
  ],
};

await rm(gen, { recursive: true, force: true });
for (const [name, extra] of Object.entries(variants)) {
  const out = join(gen, name);
  await mkdir(out, { recursive: true });
  execFileSync(process.execPath, [jcoBin, 'transpile', wasmPath, '-o', out, ...common, ...extra], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}
const info = { wasmSha256: sha256, wasmBytes: wasm.length, jco: jcoVersion, builtFrom: wasmPath };
await writeFile(join(gen, 'build-info.json'), `${JSON.stringify(info, null, 2)}\n`);
console.log(`build: ${gen}/{sync,jspi} from ${wasmPath} (${wasm.length} bytes, sha256 ${sha256}) with jco ${jcoVersion}`);
