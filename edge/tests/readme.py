"""Replaces a generated block of edge/README.md with stdin:
the lines between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`.
Used by build.sh (sizes) and bench.sh (latency) under EDGE_README=1, so
the README's figures come from a build or a run, never typed."""

import re
import sys
from pathlib import Path

name = sys.argv[1]
readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
pattern = re.compile(rf"(<!-- {name}:begin[^>]*-->\n).*?(<!-- {name}:end -->)", re.S)
if not pattern.search(text):
    sys.exit(f"edge/README.md has no generated block {name!r}")
body = sys.stdin.read()
readme.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(2), text, count=1))
print(f"edge/README.md: {name} updated")
