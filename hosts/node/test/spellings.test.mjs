// One set of spellings of the settings' enum values across the hosts: the
// client authentication as the WIT and Python name it ('client-secret-post'),
// as the Rust host's settings column and CLI do ('post') and as the RFC does
// ('client_secret_post'), any case; strategies with '_' too. The settings
// column always records the Rust host's spelling.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidSettings, MemoryStore, SettingsRejected } from '../src/index.js';
import { REJECTED_ACCESS_TOKEN, imported, rekey } from './support/harness.mjs';
import { startTestkit } from './support/testkit.mjs';

/** Refreshes once with `clientAuth` against a provider that accepts `accepts` only. */
async function refreshWith(accepts, clientAuth) {
  const provider = await startTestkit(['--client-auth', accepts]);
  try {
    const rk = await rekey();
    const store = new MemoryStore();
    const settings = provider.settings({ clientAuth });
    await store.create('crm', { settings, keys: imported(await provider.authorize(), { access_token: REJECTED_ACCESS_TOKEN }) });
    const outcome = await rk.send({ credential: 'crm', store, settings, request: { url: provider.api('v1/me') } }).then((r) => r.status, (e) => e);
    const column = (await store.show('crm')).settings.client_auth;
    return { outcome, column, stats: await provider.stats() };
  } finally {
    await provider.stop();
  }
}

test('clientAuth: client-secret-post, post and the RFC\'s client_secret_post (any case) authenticate in the form; the column records post', async () => {
  for (const spelling of ['client-secret-post', 'post', 'client_secret_post', 'POST']) {
    const { outcome, column, stats } = await refreshWith('post', spelling);
    assert.equal(outcome, 200, spelling);
    assert.equal(stats.refreshes_granted, 1, spelling);
    assert.equal(column, 'post', spelling);
  }
});

test('clientAuth: client-secret-basic, basic and the default use HTTP Basic; the column records basic', async () => {
  for (const spelling of ['client-secret-basic', 'basic', 'Client_Secret_Basic', undefined]) {
    const { outcome, column, stats } = await refreshWith('basic', spelling);
    assert.equal(outcome, 200, String(spelling));
    assert.equal(stats.refreshes_granted, 1, String(spelling));
    assert.equal(column, 'basic', String(spelling));
  }
});

test('clientAuth: the spelling reaches the token endpoint (post against a basic-only provider is refused)', async () => {
  const { outcome } = await refreshWith('basic', 'client-secret-post');
  assert.ok(outcome instanceof SettingsRejected, String(outcome));
});

test('unknown spellings are InvalidSettings naming the accepted ones, from send and from store.create', async () => {
  const rk = await rekey();
  const base = { tokenUrl: 'https://login.example.com/token', clientId: 'c', clientSecret: 's', apiOrigins: ['https://api.example.com'] };
  const cases = [
    [{ clientAuth: 'client_secret_jwt' }, /clientAuth "client_secret_jwt" is unknown: use 'client-secret-basic' \(or 'basic'\), 'client-secret-post' \(or 'post'\) or 'private_key_jwt'/],
    [{ clientAuth: 'Bearer' }, /clientAuth "Bearer" is unknown/],
    [{ clientAuth: 7 }, /clientAuth "7" is unknown/],
    [{ strategy: 'on_auth_fail' }, /strategy "on_auth_fail" is unknown: use one of on-auth-failure, every-request, before-expiry/],
    [{ grant: 'client_credential' }, /grant "client_credential" is unknown: use one of refresh-token, client-credentials, jwt-bearer/],
  ];
  for (const [change, message] of cases) {
    const settings = { ...base, ...change };
    await assert.rejects(rk.send({ credential: 'x', keys: undefined, onUpdateKeys() {}, settings, request: { url: 'https://api.example.com/' } }), (e) => e instanceof InvalidSettings && message.test(e.message));
    await assert.rejects(new MemoryStore().create('x', { settings }), (e) => e instanceof InvalidSettings && message.test(e.message));
  }
  // The strategies as every host spells them, '_' for '-' and any case included (as Python and Rust read them).
  for (const strategy of ['on-auth-failure', 'every-request', 'before-expiry', 'on_auth_failure', 'every_request', 'Before_Expiry']) {
    await rk.checkSettings({ ...base, strategy });
    const store = new MemoryStore();
    await store.create('x', { settings: { ...base, strategy } });
    assert.equal((await store.show('x')).settings.strategy, strategy.toLowerCase().replaceAll('_', '-'), 'the column records the hosts\' spelling');
  }
  for (const clientAuth of ['client_secret_basic', 'CLIENT-SECRET-POST', 'Basic']) await rk.checkSettings({ ...base, clientAuth });
  // Grants too ('jwt_bearer', as Python and Rust read it); the column records the hosts' spelling.
  for (const grant of ['refresh-token', 'client-credentials', 'Refresh_Token', 'client_credentials', 'CLIENT-CREDENTIALS']) {
    await rk.checkSettings({ ...base, grant });
    const store = new MemoryStore();
    await store.create('x', { settings: { ...base, grant } });
    assert.equal((await store.show('x')).settings.grant, grant.toLowerCase().replaceAll('_', '-'));
  }
  for (const clientAuth of ['private_key_jwt', 'Private-Key-JWT']) {
    const store = new MemoryStore();
    await store.create('x', { settings: { ...base, clientAuth, signing: { algorithm: 'ES256', keyEnv: 'SOME_KEY_VARIABLE' } } });
    assert.equal((await store.show('x')).settings.client_auth, 'private_key_jwt', 'the column records the RFC spelling, as Rust and Python do');
  }
});
