// Transpiles the rekey component into gen/ with the pinned jco, twice:
//   gen/sync  synchronous imports, for the worker-thread path (Node >= 22)
//   gen/jspi  the host's functions and pollable.block as async imports and
//             `send`, `keepalive` and the `authorize` functions (every
//             export that reaches an async import) as async exports, for
//             JSPI (Node >= 24)
// and records the component's SHA-256 in gen/build-info.json and
// gen/component.js (COMPONENT_SHA256), so a test can check it is
// byte-identical to the one the Rust host embeds. Into the package's own
// gen/ (the default) it also puts what `npm pack` ships besides: the
// component itself (component/rekey_guest.wasm) and the CommonJS copy of the
// types (gen/index.d.cts). `npm pack` runs this first (prepack), so a
// tarball always holds a fresh build and installs with no build step.
//
//   node scripts/build.mjs [path/to/rekey_guest.wasm [out-dir]]   (default component: the committed
//   host/component/rekey_guest.wasm, or $REKEY_WASM for an out-dir other than gen/; out-dir: gen/)

import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// The committed component every host runs (guest/build.sh writes it).
const COMMITTED = join(root, '..', '..', 'host', 'component', 'rekey_guest.wasm');
const gen = resolve(process.argv[3] ?? join(root, 'gen'));
const packageBuild = gen === join(root, 'gen');
// What `npm pack` ships (the package's own gen/) is built from the committed
// component unless a path is named: an exported $REKEY_WASM (the test
// scripts set one) must never decide what a tarball carries.
const wasmPath = resolve(process.argv[2] ?? (packageBuild ? COMMITTED : process.env.REKEY_WASM ?? COMMITTED));
// jco's package.json is not in its exports map: find it where npm puts it.
const jcoPackage = join(root, 'node_modules', '@bytecodealliance', 'jco', 'package.json');
const jcoVersion = await readFile(jcoPackage, 'utf8').then((text) => JSON.parse(text).version, (err) => {
  console.error(`build: jco is not installed (${err.code}): run \`npm ci\` in ${root} first`);
  process.exit(2);
});
const jcoBin = join(dirname(jcoPackage), 'dist', 'jco.js');

let wasm;
try {
  wasm = await readFile(wasmPath);
} catch (err) {
  console.error(`build: cannot read the component at ${wasmPath} (${err.code}); set REKEY_WASM or pass its path`);
  process.exit(2);
}
const sha256 = createHash('sha256').update(wasm).digest('hex');

const HOST = 'rekey:oauth2/host@0.5.0';
const AUTHORIZE = 'rekey:oauth2/authorize@0.5.0';
const common = ['--instantiation', 'async', '--name', 'rekey', '--no-wasi-shim', '--quiet'];
const variants = {
  sync: [],
  jspi: [
    '--async-mode', 'jspi',
    '--async-imports',
    `${HOST}#http-send`, `${HOST}#read-record`, `${HOST}#emit-update-keys`,
    'wasi:io/poll@0.2.0#[method]pollable.block',
    '--async-exports', 'rekey:oauth2/client@0.5.0#send', 'rekey:oauth2/client@0.5.0#keepalive',
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
// No path in it: it ships in the package.
const info = { wasmSha256: sha256, wasmBytes: wasm.length, jco: jcoVersion };
await writeFile(join(gen, 'build-info.json'), `${JSON.stringify(info, null, 2)}\n`);
await writeFile(join(gen, 'component.js'), [
  '// Written by scripts/build.mjs: the component gen/ was transpiled from.',
  `export const COMPONENT_SHA256 = '${sha256}';`,
  '',
].join('\n'));
if (packageBuild) {
  // The bytes gen/ was made from, shipped beside it (the bin checks they agree).
  await mkdir(join(root, 'component'), { recursive: true });
  await copyFile(wasmPath, join(root, 'component', 'rekey_guest.wasm'));
  // The same declarations for `require` (TypeScript reads a .d.ts in a
  // "type": "module" package as ESM; CommonJS consumers need a .d.cts).
  const types = await readFile(join(root, 'index.d.ts'), 'utf8');
  await writeFile(join(gen, 'index.d.cts'), `// Written by scripts/build.mjs: a copy of index.d.ts for CommonJS consumers.\n${types}`);
}
console.log(`build: ${gen}/{sync,jspi} from ${wasmPath} (${wasm.length} bytes, sha256 ${sha256}) with jco ${jcoVersion}`);
