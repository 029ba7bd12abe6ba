// The README's quick starts are what run.sh runs: each code block that
// follows a `<!-- package-test/FILE -->` marker in README.md must appear in
// FILE line by line, in order (indentation aside; FILE may have more lines
// between them). Exits non-zero naming the first line that is not there.
//
//   node readme-check.mjs   (from anywhere)

import { readFileSync } from 'node:fs';

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
const marked = [...readme.matchAll(/<!-- package-test\/([\w.-]+) -->\s*```\w*\n([\s\S]*?)```/g)];
if (marked.length === 0) {
  console.error('readme-check: README.md has no <!-- package-test/FILE --> quick start');
  process.exit(1);
}
let failed = false;
for (const [, file, block] of marked) {
  const program = readFileSync(new URL(file, import.meta.url), 'utf8').split('\n').map((l) => l.trim());
  let at = 0;
  for (const line of block.split('\n').map((l) => l.trim()).filter((l) => l !== '')) {
    const found = program.indexOf(line, at);
    if (found === -1) {
      console.error(`readme-check: README.md's quick start for ${file} has a line ${file} does not run (in this order):\n  ${line}`);
      failed = true;
      break;
    }
    at = found + 1;
  }
}
if (failed) process.exit(1);
console.log(`readme-check: ${marked.map(([, f]) => f).join(', ')}: the README's quick starts are what they run`);
