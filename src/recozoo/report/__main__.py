"""``python -m recozoo.report <run or sweep folders...> [--out DIR]``: write the leaderboard."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recozoo.report import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recozoo.report",
        description="Leaderboard (md, csv, html), significance tests and plots of finished runs.")
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the first folder)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        board = report(args.folders, args.out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.folders[0]
    rows = sum(len(t.frame) for t in board.tables)
    print(f"leaderboard of {rows} rows in {len(board.tables)} table(s) written to "
          f"{out}/leaderboard.md, .csv, .html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
