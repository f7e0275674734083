"""``python -m recozoo.report <run or sweep folders...> [out=DIR] [plots=false]``: write the
leaderboard; ``external=<ranked list> run=<run folder>`` scores a list made elsewhere against
that run's test targets and adds it as a row (``--help`` lists every key)."""

from __future__ import annotations

from recozoo.runtime import configure_process

configure_process()  # thread settings, before anything imports torch

import sys
from dataclasses import dataclass, field
from pathlib import Path

from recozoo.cli import parse_settings
from recozoo.runtime import setup_command_logging

PROG = "python -m recozoo.report"


@dataclass
class ReportSettings:
    """Leaderboard (md, csv, html), significance tests and plots of finished runs.

    Args:
        folders: run or sweep folders; every metrics.json under them is a row.
        out: the folder the leaderboard is written to (null: the first folder).
        plots: draw the PNG plots (accuracy_vs_tail.png, ndcg_by_model.png, ...).
        external: a ranked list made by another tool, a (user, item, rank) file, scored with
            recozoo's metrics against the test targets of ``run`` and added as a row.
        run: the run folder whose data and test targets score ``external`` (needed with it).
    """

    folders: list[str] = field(default_factory=list, metadata={"positional": True})
    out: str | None = None
    plots: bool = True
    external: str | None = None
    run: str | None = None


def score_external_list(settings: ReportSettings) -> Path:
    """The run folder written for ``settings.external`` scored against ``settings.run``."""
    if settings.run is None:
        raise SystemExit(f"{PROG}: external={settings.external} needs run=<run folder> (the run "
                         "whose test targets score it)")
    try:  # imported here: only this option needs it
        from recozoo.report.external import score_external
    except ImportError as error:
        raise SystemExit(f"{PROG}: scoring external lists is not available ({error})") from None
    return score_external(Path(settings.external), Path(settings.run))


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(ReportSettings, sys.argv[1:] if argv is None else argv, prog=PROG)
    setup_command_logging()
    folders = [Path(f) for f in settings.folders]
    try:
        if settings.external is not None:
            scored = score_external_list(settings)
            folders = folders or [Path(settings.run)]
            if not any(scored.resolve().is_relative_to(f.resolve()) for f in folders):
                folders.append(scored)
        elif settings.run is not None:
            raise SystemExit(f"{PROG}: run= is read with external=<ranked list>; to report "
                             f"a run, name its folder: {PROG} {settings.run}")
        if not folders:
            raise SystemExit(f"{PROG}: name at least one run or sweep folder "
                             f"({PROG} --help describes every key)")
        from recozoo.report import report  # after the argument checks: pandas, scipy

        out = Path(settings.out) if settings.out else folders[0]
        board = report(folders, out, plots=settings.plots)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = sum(len(t.frame) for t in board.tables)
    print(f"leaderboard of {rows} rows in {len(board.tables)} table(s) written to "
          f"{out}/leaderboard.md (compact), .csv and .html (every column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
