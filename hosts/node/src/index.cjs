// @rekey/node for CommonJS: `const { Rekey, MemoryStore } = require('@rekey/node')`.
// Node >= 22.12 loads the ES module synchronously (require of ESM), so
// CommonJS code gets the very same classes and functions as `import` (one
// module instance: `instanceof RekeyError` holds across both). The module
// graph has no top-level await, which that needs.

'use strict';

try {
  module.exports = require('./index.js');
} catch (err) {
  if (err && (err.code === 'ERR_REQUIRE_ESM' || err.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
    throw new Error(`@rekey/node: this Node.js (${process.version}) cannot require an ES module; `
      + "use Node >= 22.13, or `await import('@rekey/node')`", { cause: err });
  }
  throw err;
}
