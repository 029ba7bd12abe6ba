// The declarations (index.d.ts) checked against the code (src/, types
// inferred from it and its JSDoc): tsc fails naming the export at fault.
// Run by `npm run typecheck` (ci.sh).

import * as impl from '../src/index.js';
import type * as api from '@rekey/node';

type Api = typeof api;
type Impl = typeof impl;
type None<T extends never> = T;

/** Declared exports the code lacks, or whose type the code's does not satisfy. */
export type Mismatched = None<{ [K in keyof Api]: K extends keyof Impl ? (Impl[K] extends Api[K] ? never : K) : K }[keyof Api]>;
/** Exports of the code that index.d.ts does not declare. */
export type Undeclared = None<Exclude<keyof Impl, keyof Api>>;
/** Public members of the main classes that index.d.ts does not declare. */
export type UndeclaredRekey = None<Exclude<keyof InstanceType<Impl['Rekey']>, keyof api.Rekey>>;
export type UndeclaredRekeyStatics = None<Exclude<keyof Impl['Rekey'], keyof Api['Rekey']>>;
export type UndeclaredResponse = None<Exclude<keyof InstanceType<Impl['RekeyResponse']>, keyof api.RekeyResponse>>;
