// A key store in a directory: one JSON file per credential, mode 0600, in a
// directory of mode 0700. A write is atomic and durable before it resolves:
// temp file, fsync, rename over the old file, fsync the directory — so a
// crash leaves either the old token set or the new one, never half of one,
// and a rotated refresh token that was reported saved survives power loss.

import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

export class FileStore {
  /** @param {string} dir  created (0700) on the first write */
  constructor(dir) {
    this.dir = dir;
  }

  /** Where a credential's keys live. */
  path(credential) {
    if (typeof credential !== 'string' || credential === '') throw new TypeError('a credential name must be a non-empty string');
    return join(this.dir, `${encodeURIComponent(credential)}.json`);
  }

  /** The stored keys (JSON text), or undefined when none are stored. */
  async load(credential) {
    try {
      return await readFile(this.path(credential), 'utf8');
    } catch (err) {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /**
   * Replaces the credential's keys; resolves once durable.
   * @param {string|object} keys  JSON text or an object (e.g. a token response to import)
   */
  async save(credential, keys) {
    const file = this.path(credential);
    const json = typeof keys === 'string' ? keys
      : typeof keys?.toJSONString === 'function' ? keys.toJSONString() : JSON.stringify(keys);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    let handle = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(json);
      await handle.sync();
      await handle.close();
      handle = null;
      await rename(temp, file);
    } catch (err) {
      await handle?.close().catch(() => {});
      await rm(temp, { force: true });
      throw err;
    }
    // The rename is durable only once the directory entry is.
    const dir = await open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  /** Forgets the credential's keys. */
  async remove(credential) {
    await rm(this.path(credential), { force: true });
  }
}
