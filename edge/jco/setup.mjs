// Imported by `jco serve --jco-import` before the component starts: gives
// it what `wasmtime serve --dir/--env` would and nothing more. jco serve
// 1.35 has no flag for either; by default the component would see the whole
// filesystem and the whole environment. Uses the preview2-shim's `_set*`
// functions (the ones jco's own `run --sandbox` uses), from the shim jco
// links (REKEY_JCO_SHIM: its package directory).
//
//   REKEY_JCO_PREOPEN   HOST::GUEST, the one directory the component sees
//   REKEY_JCO_ENV       NAME,NAME: variables passed on from this process
//                       (e.g. REKEY_CLIENT_SECRET: never on a command line)
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const shim = process.env.REKEY_JCO_SHIM;
if (!shim) throw new Error("REKEY_JCO_SHIM is not set");
const load = (name) => import(pathToFileURL(join(shim, "dist/nodejs", name)).href);
const { _setEnv, _setCwd } = await load("cli.js");
const { _setPreopens, _addPreopen } = await load("filesystem.js");

const env = {};
for (const name of (process.env.REKEY_JCO_ENV || "").split(",").filter(Boolean)) {
  if (process.env[name] !== undefined) env[name] = process.env[name];
}
_setEnv(env);
_setCwd(undefined);
_setPreopens({});
const preopen = process.env.REKEY_JCO_PREOPEN;
if (preopen) {
  const at = preopen.indexOf("::");
  if (at < 1) throw new Error("REKEY_JCO_PREOPEN must be HOST::GUEST");
  _addPreopen(preopen.slice(at + 2), preopen.slice(0, at));
}
