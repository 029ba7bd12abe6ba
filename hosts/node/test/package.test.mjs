// The package's own surface (package-test/run.sh installs the real tarball
// in a clean project): the component's hash and the bin that prints it, the
// CommonJS entry, and what `npm pack` puts in the tarball.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as esm from '../src/index.js';
import { rekey } from './support/harness.mjs';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'rekey-node-component.js');
const dirs = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

test('COMPONENT_SHA256 is the packaged .wasm, the one loaded and the one the Rust host embeds', async (t) => {
  assert.match(esm.COMPONENT_SHA256, /^[0-9a-f]{64}$/);
  assert.equal(sha256(await readFile(esm.COMPONENT_PATH)), esm.COMPONENT_SHA256);
  assert.equal((await rekey()).wasmSha256, esm.COMPONENT_SHA256, 'Rekey.load() runs the packaged component');
  if (!process.env.REKEY_WASM_SHA256) {
    t.skip('REKEY_WASM_SHA256 is not set (CI sets it)');
    return;
  }
  assert.equal(esm.COMPONENT_SHA256, process.env.REKEY_WASM_SHA256);
});

test('the bin prints the hash and the path, and refuses bad arguments', async () => {
  assert.equal((await run(process.execPath, [BIN, '--sha256'])).stdout, `${esm.COMPONENT_SHA256}\n`);
  assert.equal((await run(process.execPath, [BIN, '--path'])).stdout, `${esm.COMPONENT_PATH}\n`);
  assert.match((await run(process.execPath, [BIN])).stdout, new RegExp(`sha256 ${esm.COMPONENT_SHA256}`));
  await assert.rejects(run(process.execPath, [BIN, '--md5']), (err) => err.code === 2 && /usage/.test(err.stderr));
});

test('the bin refuses a packaged .wasm that is not the one gen/ was built from', async () => {
  // A copy of the files the bin reads, with one byte of the .wasm changed.
  const dir = await mkdtemp(join(tmpdir(), 'rekey-node-bin-'));
  dirs.push(dir);
  for (const sub of ['bin', 'src', 'gen', 'component']) await mkdir(join(dir, sub));
  await writeFile(join(dir, 'package.json'), JSON.stringify({ type: 'module', version: '0.0.0' }));
  for (const f of ['bin/rekey-node-component.js', 'src/component.js', 'gen/component.js']) await copyFile(join(ROOT, f), join(dir, f));
  const wasm = await readFile(esm.COMPONENT_PATH);
  wasm[wasm.length - 1] ^= 1;
  await writeFile(join(dir, 'component', 'rekey_guest.wasm'), wasm);
  await assert.rejects(run(process.execPath, [join(dir, BIN.slice(ROOT.length)), '--sha256']), (err) => {
    assert.equal(err.code, 1);
    assert.equal(err.stdout, '', 'no hash printed');
    assert.match(err.stderr, new RegExp(`has sha256 ${sha256(wasm)}, but gen/ was built from ${esm.COMPONENT_SHA256}`));
    return true;
  });
});

test('require() gets the very same API as import', () => {
  const cjs = createRequire(import.meta.url)('../src/index.cjs');
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  for (const name of Object.keys(esm)) assert.equal(cjs[name], esm[name], name);
});

test('npm pack ships the component, the transpiled code, both entries and the types; no tests or build scripts', async () => {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.private, undefined);
  // One runtime dependency, the public suffix list, pinned and shipped inside
  // the tarball: an install resolves nothing, and refuses what was tested.
  assert.deepEqual(pkg.dependencies, { tldts: '7.5.3' }, 'the one runtime dependency, an exact version');
  assert.deepEqual(pkg.bundleDependencies, ['tldts']);
  assert.equal(pkg.peerDependenciesMeta.pg.optional, true);
  const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
  const files = new Set(JSON.parse(stdout)[0].files.map((f) => f.path));
  for (const f of ['component/rekey_guest.wasm', 'gen/build-info.json', 'gen/component.js', 'gen/index.d.cts',
    'gen/sync/rekey.js', 'gen/jspi/rekey.js', 'gen/sync/rekey.core.wasm', 'gen/jspi/rekey.core.wasm',
    'src/index.js', 'src/index.cjs', 'src/worker.js', 'index.d.ts', 'bin/rekey-node-component.js', 'README.md']) {
    assert.ok(files.has(f), `the tarball has ${f}`);
  }
  for (const dep of ['tldts', 'tldts-core']) assert.ok(files.has(`node_modules/${dep}/package.json`), `${dep} is bundled`);
  for (const dep of ['tldts', 'tldts-core']) {
    const bundled = JSON.parse(await readFile(join(ROOT, 'node_modules', dep, 'package.json'), 'utf8'));
    assert.equal(bundled.version, pkg.dependencies.tldts, `the bundled ${dep} is the pinned version (overrides holds tldts-core to it)`);
  }
  // The bundled packages aside: no other node_modules, no tests or build scripts.
  const own = [...files].filter((f) => !/^node_modules\/tldts(-core)?\//.test(f));
  for (const f of own) assert.doesNotMatch(f, /^(test|scripts|types|package-test|node_modules|node2\d)\//, f);
  const targets = [pkg.main, pkg.types, ...Object.values(pkg.exports['.']).flatMap((c) => Object.values(c)), ...Object.values(pkg.bin)];
  for (const target of targets) assert.ok(files.has(target.replace(/^\.\//, '')), `${target} (package.json) is in the tarball`);
});
