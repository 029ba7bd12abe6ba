// wasi:config/store@0.2.0-draft for `jco serve` (mapped with --jco-map):
// jco's shim has no wasi:config. Values come from the JSON object in the
// file REKEY_JCO_CONFIG names (a file, so no value is on a command line).
import { readFileSync } from "node:fs";

let values;
function all() {
  if (values === undefined) {
    const file = process.env.REKEY_JCO_CONFIG;
    values = file ? JSON.parse(readFileSync(file, "utf8")) : {};
  }
  return values;
}

export function get(key) {
  const v = all()[key];
  return typeof v === "string" ? v : undefined;
}

export function getAll() {
  return Object.entries(all()).filter(([, v]) => typeof v === "string");
}
