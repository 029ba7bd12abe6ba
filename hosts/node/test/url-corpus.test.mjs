// One URL policy (issue 20): every URL of tests/url-corpus.txt, as a token
// URL, gets one answer from the component's checkSettings (what credential
// creation runs), from the component at send, and from this host's own check
// at http-send: refused by the component, nothing reaches the provider;
// accepted, the host's second line accepts it too.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { refusal } from '../src/boundary.js';
import { InvalidSettings, MemoryStore } from '../src/index.js';
import { imported, rekey } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

const CORPUS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'tests', 'url-corpus.txt');

function corpus() {
  return readFileSync(CORPUS, 'utf8').split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.replaceAll('\\t', '\t'));
}

test('the URL corpus: checkSettings, send and http-send agree on every token URL', async () => {
  const p = await startTestkit([]);
  try {
    const rk = await rekey();
    const keys = imported(await p.authorize());
    let accepted = 0;
    let refused = 0;
    for (const url of corpus()) {
      const settings = p.settings({ tokenUrl: url, apiOrigins: ['*'] });
      const checked = await rk.checkSettings(settings).then(() => undefined, (e) => e);
      const store = new MemoryStore();
      await store.create('c', { settings, keys });
      const before = await p.stats();
      const sent = await rk.send({ credential: 'c', store, settings, request: { url: p.api('me') } })
        .then((r) => r, (e) => e);
      const after = await p.stats();
      const reached = (after.api_calls + after.token_calls) - (before.api_calls + before.token_calls);
      if (checked === undefined) {
        accepted += 1;
        assert.equal(sent.status, 200, `${JSON.stringify(url)}: accepted by checkSettings, refused at send: ${sent}`);
        assert.equal(refusal('token-endpoint', url, { tokenUrl: url }), undefined, `${JSON.stringify(url)}: the host would refuse it`);
      } else {
        refused += 1;
        assert.ok(checked instanceof InvalidSettings, `${JSON.stringify(url)}: ${checked}`);
        assert.ok(sent instanceof InvalidSettings, `${JSON.stringify(url)}: refused by checkSettings, at send: ${sent}`);
        assert.equal(sent.message, checked.message, JSON.stringify(url));
        assert.equal(reached, 0, `${JSON.stringify(url)}: refused, yet the provider saw a request`);
      }
    }
    assert.ok(accepted >= 5 && refused >= 20, `${accepted} accepted, ${refused} refused`);
  } finally {
    await p.stop();
  }
});

test('bound by default: settings without apiOrigins fail before anything starts, naming the fix', async () => {
  const rk = await rekey();
  const unbound = { tokenUrl: 'https://idp.example/token', clientId: 'c' };
  await assert.rejects(rk.checkSettings(unbound), (e) => e instanceof InvalidSettings && /apiOrigins/.test(e.message));
  await assert.rejects(rk.checkSettings({ ...unbound, apiOrigins: ['https://*.com'] }), InvalidSettings);
  await assert.rejects(rk.checkSettings({ ...unbound, apiOrigins: ['https://*..example.com'] }), InvalidSettings);
  await rk.checkSettings({ ...unbound, apiOrigins: ['*'] });
  await rk.checkSettings({ ...unbound, instanceUrlOrigins: ['https://*.my.salesforce.com'] });
});
