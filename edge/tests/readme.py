"""Replaces a generated block of edge/README.md with stdin:
the lines between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`.
Used by build.sh (sizes) and bench.sh (latency) under EDGE_README=1, so
the README's figures come from a build or a run, never typed. With
`--check`, fails when the block is not stdin (test.sh checks the sizes)."""

import re
import sys
from pathlib import Path

name = sys.argv[1]
check = sys.argv[2:] == ["--check"]
readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
pattern = re.compile(rf"(<!-- {name}:begin[^>]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)
found = pattern.search(text)
if not found:
    sys.exit(f"edge/README.md has no generated block {name!r}")
body = sys.stdin.read()
if check:
    # The README states what this build is, or the build fails.
    if found.group(2) != body:
        sys.exit(
            f"edge/README.md: the {name} table is not this build's; run `EDGE_README=1 edge/build.sh` "
            f"and commit edge/README.md.\nThis build:\n{body}"
        )
    print(f"edge/README.md: {name} is this build's")
else:
    readme.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1))
    print(f"edge/README.md: {name} updated")
