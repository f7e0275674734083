"""Leaderboards over finished runs: tables, paired significance tests, plots.

``python -m recozoo.report <run or sweep folders...> [--out DIR]`` reads only the run artifacts
(`recozoo.artifacts`) and writes into the first folder (or ``--out``):

    leaderboard.md, leaderboard.csv, leaderboard.html   one table per protocol (data, split, seeds)
    significance.csv                                    every paired test (metric, model vs best)
    ndcg_by_model.png, accuracy_vs_tail.png, recall_by_popularity.png

A multirun writes the same files into its sweep folder when it ends (`recozoo.callbacks`).
"""

from recozoo.report.leaderboard import Leaderboard, build_leaderboard, write_leaderboard
from recozoo.report.runs import Run, RunGroup, find_runs, group_runs

__all__ = [
    "Leaderboard",
    "Run",
    "RunGroup",
    "build_leaderboard",
    "find_runs",
    "group_runs",
    "report",
    "write_leaderboard",
]


def report(folders: list, out_dir=None, plots: bool = True) -> Leaderboard:
    """Build the leaderboard of the runs under ``folders`` and write it into ``out_dir`` (the
    first folder by default)."""
    from pathlib import Path

    board = build_leaderboard(folders)
    write_leaderboard(board, Path(out_dir or folders[0]), plots=plots)
    return board
