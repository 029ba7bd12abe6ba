// Shrinks the rekey component: runs binaryen's size optimiser (`wasm-opt -Oz`)
// over the guest's core module and puts it back into the component, every
// other section byte for byte. The core module's imports and exports are
// unchanged, so the component's types and wiring still hold.
//
//   node optimize.mjs IN.wasm OUT.wasm
import { readFile, writeFile } from 'node:fs/promises';
import binaryen from 'binaryen';

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error('usage: node optimize.mjs IN.wasm OUT.wasm');
  process.exit(2);
}

const CORE_MODULE = 1; // component section id of an embedded core module
const COMPONENT_PREAMBLE = Uint8Array.of(0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00);

function readLeb(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [value, at];
  }
}

function leb(value) {
  const out = [];
  do {
    let b = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) b |= 0x80;
    out.push(b);
  } while (value > 0);
  return Uint8Array.from(out);
}

/** The component's top-level sections, as slices of `bytes`. */
function sections(bytes) {
  for (let i = 0; i < COMPONENT_PREAMBLE.length; i++) {
    if (bytes[i] !== COMPONENT_PREAMBLE[i]) throw new Error(`${input} is not a component`);
  }
  const out = [];
  let at = COMPONENT_PREAMBLE.length;
  while (at < bytes.length) {
    const id = bytes[at];
    const [size, body] = readLeb(bytes, at + 1);
    out.push({ id, raw: bytes.subarray(at, body + size), body: bytes.subarray(body, body + size) });
    at = body + size;
  }
  return out;
}

// The features rustc's wasm32-wasip2 target enables; nothing newer may be
// introduced, so every runtime that ran the unoptimised component runs this one.
const F = binaryen.Features;
const FEATURES = F.MVP | F.MutableGlobals | F.SignExt | F.NontrappingFPToInt | F.BulkMemory
  | F.BulkMemoryOpt | F.Multivalue | F.ReferenceTypes | F.CallIndirectOverlong;

function optimize(core) {
  const module = binaryen.readBinary(core);
  try {
    module.setFeatures(FEATURES);
    if (!module.validate()) throw new Error('the guest core module does not validate');
    binaryen.setOptimizeLevel(2);
    binaryen.setShrinkLevel(2); // -Oz
    binaryen.setDebugInfo(false);
    module.optimize();
    if (!module.validate()) throw new Error('the optimised core module does not validate');
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

const bytes = new Uint8Array(await readFile(input));
const all = sections(bytes);
const cores = all.filter((s) => s.id === CORE_MODULE);
if (cores.length === 0) throw new Error(`${input} holds no core module`);
// The guest itself; the others are wit-component's few-byte shims.
const guest = cores.reduce((a, b) => (b.body.length > a.body.length ? b : a));
const smaller = optimize(guest.body);

/** A custom section's name (id 0: a name, then its bytes). */
function customName(s) {
  const [length, at] = readLeb(s.body, 0);
  return Buffer.from(s.body.subarray(at, at + length)).toString('utf8');
}
// The component-name section names the component's internal instances and
// functions for debuggers only (no runtime reads it), as the core module's
// names are dropped above: about 3 KB of the budget.
const DEBUG_ONLY = new Set(['component-name']);

const parts = [COMPONENT_PREAMBLE];
for (const s of all) {
  if (s.id === 0 && DEBUG_ONLY.has(customName(s))) continue;
  parts.push(...(s === guest ? [Uint8Array.of(CORE_MODULE), leb(smaller.length), smaller] : [s.raw]));
}
const out = Buffer.concat(parts);
await writeFile(output, out);
console.log(`optimize: ${bytes.length} -> ${out.length} bytes (core module ${guest.body.length} -> ${smaller.length})`);
