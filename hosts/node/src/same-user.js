// Whether a loopback connection comes from a program of this process's user,
// as the Rust host's listener checks (host/src/authorize.rs `same_user`):
// another local user may have read the start URL on the browser opener's
// command line, and must get neither the authorization URL nor a say in the
// redirect. Linux tells: /proc/net/tcp and tcp6 list every socket with its
// owner's uid. Elsewhere every connection is allowed (the one-use start URL
// and the component's state check are what protect there).

import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { endianness } from 'node:os';

/**
 * True when the socket at the other end of `socket` is owned by this
 * process's (effective) uid. A peer socket missing from a readable table (it
 * reset, or its program closed it: a row without an inode has no owner left
 * and shows uid 0) is refused: failing open there would serve whoever made
 * its socket unfindable. Where the table cannot be read at all, allowed.
 * Any state counts: a peer that half-closed after its request is FIN_WAIT2
 * and still reads the answer.
 * @param {import('node:net').Socket} socket
 */
export function sameUser(socket) {
  if (process.platform !== 'linux') return true;
  const { remoteAddress, remotePort, localAddress, localPort } = socket;
  if (!remoteAddress || !localAddress || remotePort === undefined || localPort === undefined) return false;
  let table;
  try {
    table = readFileSync(isIPv4(localAddress) ? '/proc/net/tcp' : '/proc/net/tcp6', 'latin1');
  } catch {
    return true;
  }
  return socketUid(table, procAddress(remoteAddress, remotePort), procAddress(localAddress, localPort)) === process.geteuid();
}

/**
 * The uid of the live socket `local` → `remote` in a /proc/net/tcp* table,
 * or undefined. Rows: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
 */
export function socketUid(table, local, remote) {
  const key = ` ${local} ${remote} `;
  for (let at = table.indexOf(key); at >= 0; at = table.indexOf(key, at + 1)) {
    const start = table.lastIndexOf('\n', at) + 1;
    const end = table.indexOf('\n', at);
    const f = table.slice(start, end < 0 ? undefined : end).trim().split(/\s+/);
    if (f.length > 9 && f[1] === local && f[2] === remote && f[9] !== '0') return Number(f[7]);
  }
  return undefined;
}

/**
 * An address as /proc/net/tcp* prints it: each 32-bit word of the address in
 * host byte order, in hex, then `:` and the port (4 hex digits).
 */
export function procAddress(ip, port) {
  const bytes = isIPv4(ip) ? Buffer.from(ip.split('.').map(Number)) : ipv6Bytes(ip);
  let words = '';
  for (let i = 0; i < bytes.length; i += 4) {
    const word = endianness() === 'LE' ? bytes.readUInt32LE(i) : bytes.readUInt32BE(i);
    words += word.toString(16).toUpperCase().padStart(8, '0');
  }
  return `${words}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** The 16 bytes of an IPv6 address as Node prints one (`::1`, `::ffff:127.0.0.1`). */
function ipv6Bytes(ip) {
  let text = ip.replace(/%.*$/, '');
  const v4 = text.match(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const groups = (s) => (s ? s.split(':') : []);
  const h = groups(head);
  const t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
