"""``python -m rekey component [--sha256 | --path]``: the component packaged
with rekey. Without a flag it prints ``<sha256>  <path>``, as ``sha256sum``
does; ``--sha256`` prints the hex alone, ``--path`` the path alone."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .component import PACKAGED_COMPONENT, packaged_component_sha256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rekey", description="rekey: OAuth2 refresh-and-retry")
    parser.add_argument("--version", action="version", version=f"rekey {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    component = commands.add_parser("component", help="the packaged component: its SHA-256 and path")
    which = component.add_mutually_exclusive_group()
    which.add_argument("--sha256", action="store_true", help="print its SHA-256 (hex) only")
    which.add_argument("--path", action="store_true", help="print its path only")
    args = parser.parse_args(argv)

    try:
        digest = packaged_component_sha256()
    except FileNotFoundError as e:
        print(f"rekey: {e}", file=sys.stderr)
        return 1
    if args.sha256:
        print(digest)
    elif args.path:
        print(PACKAGED_COMPONENT)
    else:
        print(f"{digest}  {PACKAGED_COMPONENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
