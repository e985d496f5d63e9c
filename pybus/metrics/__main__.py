"""``python -m pybus.metrics --markdown``: print the metrics reference generated from the table."""

from __future__ import annotations

import argparse
import sys

from .families import markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pybus.metrics",
                                description="pybus metrics reference tools")
    p.add_argument("--markdown", action="store_true",
                   help="print docs/metrics.md (generated from the family table)")
    args = p.parse_args(argv)
    if not args.markdown:
        p.print_help()
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
