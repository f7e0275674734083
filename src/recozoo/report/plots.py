"""PNG plots of a leaderboard table (matplotlib, no display needed).

Per table: ``ndcg_by_model.png`` (the primary metric with its bootstrap 95% interval, or the
std over seeds), ``accuracy_vs_tail.png`` (the primary metric against APLT@K and TailRecall@K,
Pareto front marked) and ``recall_by_popularity.png`` (recall of head, mid and distant targets).
The plots read a table's frame only (one row per variant, columns named as in metrics.json), so
this module knows nothing of the leaderboard that builds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.popularity import BUCKETS
from recozoo.metrics.buckets import bucket_key
from recozoo.metrics.suite import higher_is_better


def bucket_columns(k: int | str) -> list[str]:
    """Leaderboard columns of recall@k per item-popularity bucket (`recozoo.metrics.buckets`)."""
    return [f"test/{bucket_key('recall', k, bucket)}" for bucket in BUCKETS]


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats on both x and y (both maximised)."""
    front = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def plot_table(frame: pd.DataFrame, title: str, primary: str, out_dir: Path, suffix: str = "",
               head_share: float | None = None) -> list[Path]:
    """Write the plots of one leaderboard table; returns the files.

    Args:
        frame: the table, one row per variant: ``model``, ``status`` and metric columns.
        title: the table's title (data, split, seeds), shown on every plot.
        primary: the metric that ranks the rows, e.g. ``test/ndcg@10``.
        suffix: appended to each file name (several tables in one folder).
        head_share: the head's share of items, named in the popularity plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    ok = frame[frame["status"] == "ok"]
    if ok.empty or primary not in ok:
        return written
    written.append(_primary_bars(ok, title, primary, out_dir / f"ndcg_by_model{suffix}.png"))
    k = primary.split("@")[1] if "@" in primary else "10"
    tail_keys = [f"test/aplt@{k}", f"test/tail_recall@{k}"]
    if all(key in ok for key in tail_keys):
        written.append(_tail_tradeoff(ok, title, primary, tail_keys,
                                      out_dir / f"accuracy_vs_tail{suffix}.png"))
    buckets = bucket_columns(k)
    if all(key in ok for key in buckets):
        written.append(_bucket_bars(ok, title, buckets, head_share,
                                    out_dir / f"recall_by_popularity{suffix}.png"))
    return written


def _primary_bars(ok: pd.DataFrame, title: str, primary: str, path: Path) -> Path:
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
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _tail_tradeoff(ok: pd.DataFrame, title: str, primary: str, tail_keys: list[str],
                   path: Path) -> Path:
    import matplotlib.pyplot as plt

    # tall enough for a column of every model's label (`label_points`)
    fig, axes = plt.subplots(1, len(tail_keys), figsize=(6.5 * len(tail_keys),
                                                        max(4.8, 0.16 * len(ok) + 1.2)))
    for ax, key in zip(np.atleast_1d(axes), tail_keys):
        shown = ok.dropna(subset=[key, primary])  # a metric with no value has no point
        x, y = shown[key].to_numpy(float), shown[primary].to_numpy(float)
        # the front maximises both axes, each in its metric's direction
        front = pareto_front(x if higher_is_better(key) else -x,
                             y if higher_is_better(primary) else -y)
        ax.scatter(x[~front], y[~front], color="#999999", label="dominated")
        ax.scatter(x[front], y[front], color="#c44e52", label="Pareto front", zorder=3)
        order = np.argsort(x[front])
        ax.plot(x[front][order], y[front][order], color="#c44e52", linestyle="--", zorder=2)
        label_points(ax, x, y, list(shown["model"]))
        ax.set_xlabel(f"{key} (higher: more long tail)")
        ax.set_ylabel(primary)
        ax.legend(fontsize=8)
    fig.suptitle(f"Accuracy against the long tail: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the label column lies right of the axes
    plt.close(fig)
    return path


def label_column(targets: np.ndarray, gap: float) -> np.ndarray:
    """Heights for labels stacked in one column, each as near its target height (0..1) as a
    distance of at least ``gap`` between neighbours allows, all within [0, 1]: labels that
    would collide form a block spaced by ``gap`` and centred on their targets' mean.

    Args:
        targets: the wanted heights, any order.
        gap: the least distance between two labels (shrunk to fit when too many labels).

    Returns:
        the heights, in the order of ``targets``.
    """
    targets = np.clip(np.asarray(targets, dtype=float), 0.0, 1.0)
    n = len(targets)
    if n == 0:
        return targets
    gap = min(gap, 1.0 / max(n - 1, 1))
    order = np.argsort(targets, kind="stable")
    blocks = [[targets[i]] for i in order]  # the wanted heights of each block's labels

    def start(block: list[float]) -> float:
        span = (len(block) - 1) * gap
        return min(max(float(np.mean(block)) - span / 2, 0.0), 1.0 - span)

    merged = True
    while merged:  # merge neighbouring blocks that collide, until none does
        merged = False
        for i in range(len(blocks) - 1):
            end = start(blocks[i]) + (len(blocks[i]) - 1) * gap
            if start(blocks[i + 1]) < end + gap - 1e-12:
                blocks[i:i + 2] = [blocks[i] + blocks[i + 1]]
                merged = True
                break
    placed = np.concatenate([start(b) + gap * np.arange(len(b)) for b in blocks])
    heights = np.empty(n)
    heights[order] = placed
    return heights


def label_points(ax, x: np.ndarray, y: np.ndarray, names: list[str], fontsize: int = 7) -> list:
    """Name each point in a column of labels right of the axes, each joined to its point by a
    thin line: labels never overlap, also for points that coincide.

    Returns:
        the label artists (matplotlib ``Annotation``).
    """
    if len(names) == 0:
        return []
    ax.figure.canvas.draw()  # the axes' final limits, to know each point's height
    low, high = ax.get_ylim()
    wanted = (np.asarray(y, dtype=float) - low) / ((high - low) or 1.0)
    height_in_axes = ax.get_window_extent().height / ax.figure.dpi * 72  # points
    gap = 1.35 * fontsize / max(height_in_axes, 1.0)
    heights = label_column(wanted, gap)
    return [ax.annotate(name, xy=(xi, yi), xycoords="data", xytext=(1.03, hi),
                        textcoords="axes fraction", va="center", ha="left", fontsize=fontsize,
                        arrowprops={"arrowstyle": "-", "color": "#888888", "lw": 0.5,
                                    "shrinkA": 0, "shrinkB": 2})
            for xi, yi, hi, name in zip(x, y, heights, names)]


def _bucket_bars(ok: pd.DataFrame, title: str, buckets: list[str], head_share: float | None,
                 path: Path) -> Path:
    import matplotlib.pyplot as plt

    ok = ok.dropna(subset=buckets, how="all")  # runs from before the bucket metrics
    width = 0.8 / len(buckets)
    positions = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(ok) + 2), 4.5))
    for i, (key, color) in enumerate(zip(buckets, ("#4c72b0", "#dd8452", "#55a868"))):
        # a bucket without a qualifying user has no value: no bar, not a bar at 0
        ax.bar(positions + (i - (len(buckets) - 1) / 2) * width, ok[key].to_numpy(float), width,
               label=key.rsplit("/", 1)[1], color=color)
    ax.set_xticks(positions, ok["model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{buckets[0].rsplit('/', 1)[0]} of the bucket's test targets")
    ax.set_title(f"Recall by item popularity (head: top {head_share} of items by training count, "
                 f"distant: bottom 50%)\n{title}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
