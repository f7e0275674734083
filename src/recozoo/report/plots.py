"""PNG plots of a leaderboard (matplotlib, no display needed).

Per table: ``ndcg_by_model.png`` (the primary metric with its bootstrap 95% interval, or the
std over seeds), ``accuracy_vs_tail.png`` (the primary metric against APLT@K and TailRecall@K,
Pareto front marked) and ``recall_by_popularity.png`` (recall of head, mid and tail targets).
With several tables the names get the table's slug as a suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recozoo.report.leaderboard import bucket_columns

if TYPE_CHECKING:
    from recozoo.report.leaderboard import Leaderboard, Table


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats on both x and y (both maximised)."""
    front = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def plot_leaderboard(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Write the plots of every table; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    for table in board.tables:
        ok = table.frame[table.frame["status"] == "ok"]
        if ok.empty or board.primary not in ok:
            continue
        suffix = "" if len(board.tables) == 1 else f"_{table.group.slug}"
        written.append(_primary_bars(table, ok, board.primary, out_dir / f"ndcg_by_model{suffix}.png"))
        k = board.primary.split("@")[1] if "@" in board.primary else "10"
        tail_keys = [f"test/aplt@{k}", f"test/tail_recall@{k}"]
        if all(key in ok for key in tail_keys):
            written.append(_tail_tradeoff(table, ok, board.primary, tail_keys,
                                          out_dir / f"accuracy_vs_tail{suffix}.png"))
        buckets = bucket_columns(k)
        if all(key in ok for key in buckets):
            written.append(_bucket_bars(table, ok, buckets,
                                        out_dir / f"recall_by_popularity{suffix}.png"))
    return written


def _primary_bars(table: Table, ok: pd.DataFrame, primary: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ok = ok.iloc[::-1]  # best at the top
    values = ok[primary].to_numpy(dtype=float)
    if "ci_low" in ok and ok["ci_low"].notna().all():
        err = np.vstack([values - ok["ci_low"].to_numpy(float), ok["ci_high"].to_numpy(float)
                         - values])
        what = "bootstrap 95% CI"
    elif f"{primary} std" in ok:
        err, what = ok[f"{primary} std"].fillna(0).to_numpy(float), "std over seeds"
    else:
        err, what = None, ""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(ok) + 1.5))
    ax.barh(ok["model"], values, xerr=err, color="#4c72b0", capsize=3)
    ax.set_xlabel(f"{primary}" + (f" ({what})" if what else ""))
    ax.set_title(table.group.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _tail_tradeoff(table: Table, ok: pd.DataFrame, primary: str, tail_keys: list[str],
                   path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tail_keys), figsize=(6 * len(tail_keys), 4.8))
    y = ok[primary].to_numpy(float)
    for ax, key in zip(np.atleast_1d(axes), tail_keys):
        x = ok[key].to_numpy(float)
        front = pareto_front(x, y)
        ax.scatter(x[~front], y[~front], color="#999999", label="dominated")
        ax.scatter(x[front], y[front], color="#c44e52", label="Pareto front", zorder=3)
        order = np.argsort(x[front])
        ax.plot(x[front][order], y[front][order], color="#c44e52", linestyle="--", zorder=2)
        for xi, yi, name in zip(x, y, ok["model"]):
            ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{key} (higher: more long tail)")
        ax.set_ylabel(primary)
        ax.legend(fontsize=8)
    fig.suptitle(f"Accuracy against the long tail: {table.group.title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bucket_bars(table: Table, ok: pd.DataFrame, buckets: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    ok = ok.dropna(subset=buckets, how="all")  # runs from before the bucket metrics
    width = 0.8 / len(buckets)
    positions = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(ok) + 2), 4.5))
    for i, (key, color) in enumerate(zip(buckets, ("#4c72b0", "#dd8452", "#55a868"))):
        ax.bar(positions + (i - (len(buckets) - 1) / 2) * width, ok[key].fillna(0), width,
               label=key.rsplit("/", 1)[1], color=color)
    ax.set_xticks(positions, ok["model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{buckets[0].rsplit('/', 1)[0]} of the bucket's test targets")
    head = table.group.protocol.get("head_share")
    ax.set_title(f"Recall by item popularity (head: top {head} of items by training count, "
                 f"tail: bottom 50%)\n{table.group.title}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
