// What an ES module consumer writes type-checks against the declarations
// `import` resolves to (package.json exports: import.types).

import { COMPONENT_SHA256, MemoryStore, Rekey, RekeyError, keysFromTokenResponse } from '@rekey/node';
import type { Settings } from '@rekey/node';

export async function quickStart(settings: Settings, tokenResponse: string, url: string): Promise<number> {
  const rk = await Rekey.load();
  const store = new MemoryStore();
  await store.create('crm', { settings, keys: keysFromTokenResponse(tokenResponse) });
  try {
    const res = await rk.send({ credential: 'crm', store, settings, request: { url } });
    return res.status;
  } catch (err) {
    if (err instanceof RekeyError) return err.category.length;
    throw err;
  } finally {
    rk.close();
  }
}

/** fetch's signature with an AbortSignal, and send with one. */
export async function fetchShaped(settings: Settings, url: string): Promise<Response> {
  const rk = await Rekey.load();
  const store = new MemoryStore();
  const crmFetch: (input: string | URL | Request, init?: RequestInit) => Promise<Response> = rk.fetcher({ credential: 'crm', store, settings });
  await rk.send({ credential: 'crm', store, settings: { ...settings, clientAuth: 'client-secret-post' }, signal: AbortSignal.timeout(1000), request: { url } });
  const res = await crmFetch(new Request(url), { method: 'POST', body: new URLSearchParams({ a: '1' }), signal: AbortSignal.timeout(1000), redirect: 'manual' });
  await rk.drain();
  return res;
}

export const hash: string = COMPONENT_SHA256;
