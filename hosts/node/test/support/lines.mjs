// A child process spoken to in lines: `send(line)` writes one to its stdin,
// `next()` resolves with its next stdout line (rejects if it exits first).

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

export function spawnLines(command, args, options = {}) {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options });
  const queued = [];
  const waiting = [];
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  createInterface({ input: child.stdout }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w.resolve(line);
    else queued.push(line);
  });
  exited.then(({ code, signal }) => {
    for (const w of waiting.splice(0)) {
      w.reject(new Error(`${args[0] ?? command} exited (${code ?? signal}) before answering; stderr:\n${stderr.slice(-2000)}`));
    }
  });
  return {
    child,
    exited,
    get stderr() { return stderr; },
    send(line) { child.stdin.write(`${line}\n`); },
    next() {
      if (queued.length) return Promise.resolve(queued.shift());
      if (child.exitCode !== null || child.signalCode !== null) {
        return Promise.reject(new Error(`${args[0] ?? command} has exited; stderr:\n${stderr.slice(-2000)}`));
      }
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    async expect(prefix) {
      const line = await this.next();
      if (!line.startsWith(prefix)) throw new Error(`expected ${prefix}…, got ${JSON.stringify(line)}; stderr:\n${stderr.slice(-2000)}`);
      return line;
    },
    end() { child.stdin.end(); return exited; },
    kill() { child.kill('SIGKILL'); return exited; },
  };
}
