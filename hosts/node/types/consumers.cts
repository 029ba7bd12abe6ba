// What a CommonJS consumer writes type-checks against the declarations
// `require` resolves to (package.json exports: require.types, gen/index.d.cts).

import rekey = require('@rekey/node');

export async function quickStart(settings: rekey.Settings, tokenResponse: string, url: string): Promise<number> {
  const rk = await rekey.Rekey.load();
  const store = new rekey.MemoryStore();
  await store.create('crm', { settings, keys: rekey.keysFromTokenResponse(tokenResponse) });
  const res = await rk.send({ credential: 'crm', store, settings, request: { url } });
  rk.close();
  return res.status;
}

export const hash: string = rekey.COMPONENT_SHA256;
