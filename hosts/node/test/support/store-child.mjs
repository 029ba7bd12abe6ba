// One process of a store test: opens a store (a SQLite path or a
// postgres:// URL, argv[2]) and answers line commands on stdin, so tests can
// make several processes write at once.
//   READY                  printed once the store is open
//   WRITE <expected> <json> -> `OK <version>` | `CONFLICT` | `FAILED <message>`
//   READ                   -> `RECORD <json>` | `MISSING`
// The credential is argv[3].

import { createInterface } from 'node:readline';
import { PostgresStore, SqliteStore } from '../../src/index.js';

const [location, name] = process.argv.slice(2);
const store = location.startsWith('postgres://') ? await PostgresStore.connect(location) : await SqliteStore.open(location);
const say = (line) => process.stdout.write(`${line}\n`);
say('READY');
for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, expected, ...rest] = line.split(' ');
  if (cmd === 'WRITE') {
    try {
      const v = await store.write(name, Number(expected), JSON.parse(rest.join(' ')));
      say(v === false ? 'CONFLICT' : `OK ${v}`);
    } catch (err) {
      say(`FAILED ${err.message}`);
    }
  } else if (cmd === 'READ') {
    const r = await store.read(name);
    say(r ? `RECORD ${JSON.stringify(r)}` : 'MISSING');
  }
}
await store.close();
