// The public suffix list (tldts, pinned and bundled in the package): the
// component cannot carry it (too large), so the host refuses a wildcard over
// a public suffix itself, as the Rust host does with the `psl` crate
// (host/src/origins.rs). Both sections count: `co.uk` (ICANN) and
// `github.io` (private) each have many unrelated owners below them.
// tldts 7.5.3 is the version whose list the Rust host's psl 2.1.247 refuses
// nothing beyond; a later one drops entries psl still has. It also counts
// the parent of a wildcard rule (`kobe.jp` for `*.kobe.jp`), as the list's
// own linter does and psl does not: stricter, never looser, than Rust.

import { parse } from 'tldts';

const OPTIONS = { allowPrivateDomains: true, extractHostname: false, validateHostname: false, detectIp: false };

/**
 * Whether `host` (lower case, IDN as punycode, as WHATWG URL gives it) is
 * itself a public suffix named by a rule of the list; the list's implicit
 * `*` rule for unknown top-level domains does not count, as in the Rust host.
 * @param {string} host
 */
export function isPublicSuffix(host) {
  const { publicSuffix, isIcann, isPrivate } = parse(host, OPTIONS);
  return publicSuffix === host && (isIcann === true || isPrivate === true);
}
