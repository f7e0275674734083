"""The leaderboard: one table per protocol, every test metric at every K, paired significance
tests against the best model, bootstrap intervals, and mean ± std over seeds.

Each table ranks the variants of one `RunGroup` by the primary metric (``test/ndcg@10``); every
metric is read in the direction its metric class states (`recozoo.metrics.suite.higher_is_better`):
the best value of each column is bold (none for a metric without a direction), and a value marked
``*`` differs from that column's best with a Holm-adjusted Wilcoxon p < 0.05 on the per-user test
values (per_user_test.parquet; metrics without per-user values are not tested). A metric with no
value (NaN in compute, null in metrics.json: no qualifying user) is shown as missing, never marked
best, ranked or tested. Failed runs are listed under their table with the error.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from recozoo.artifacts import RunDir
from recozoo.data.popularity import BUCKETS
from recozoo.metrics.suite import (
    RANKING_METRICS,
    RATING_METRICS,
    higher_is_better,
    whole_test_metric,
)
from recozoo.report import stats
from recozoo.report.plots import bucket_columns, plot_table
from recozoo.report.published import published_lines, read_published
from recozoo.report.runs import Run, RunGroup, find_runs, group_runs

log = logging.getLogger(__name__)

PRIMARY = "test/ndcg@10"
#: column order of the metrics (then by K).
METRIC_ORDER: tuple[str, ...] = (*RANKING_METRICS, *RATING_METRICS)
#: what a metric cell shows when the metric has no value (no qualifying user).
MISSING = "–"
#: facts shown after the metrics.
FACTS: tuple[str, ...] = ("train_seconds", "n_params", "epochs")
#: columns of text, left-aligned
TEXT_COLUMNS: tuple[str, ...] = ("model", "code", "error")


def _metric_sort_key(key: str) -> tuple:
    name, k = whole_test_metric(key)
    order = METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER)
    return (k if k is not None else 10**6, order, name)


@dataclass
class Table:
    """One ranked table: the numbers (``frame``, one row per variant) and what marks them."""

    group: RunGroup
    frame: pd.DataFrame
    metrics: list[str]
    #: (metric, label) pairs significantly different from the metric's best
    significant: set[tuple[str, str]] = field(default_factory=set)
    best: dict[str, str] = field(default_factory=dict)
    #: published results on this table's data (`recozoo.report.published`), one line each
    published: list[str] = field(default_factory=list)


@dataclass
class Leaderboard:
    """Every table of a set of runs, the paired tests (long format) and the grouping notes."""

    tables: list[Table]
    significance: pd.DataFrame
    notes: list[str]
    primary: str = PRIMARY

    def to_frame(self) -> pd.DataFrame:
        """All tables in one frame, with a ``table`` column (what leaderboard.csv holds)."""
        frames = [t.frame.assign(table=t.group.title) for t in self.tables]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build_leaderboard(folders: list[Path | str] | list[Run], primary: str = PRIMARY,
                      bootstrap_resamples: int = 2000) -> Leaderboard:
    """Collect the runs under ``folders`` and build their tables.

    Args:
        folders: run or sweep folders (or runs already found by `find_runs`).
        primary: the metric that orders the rows and whose bootstrap interval is shown.
    """
    runs = folders if folders and isinstance(folders[0], Run) else find_runs(folders)
    groups, notes = group_runs(runs)
    tables, tests = [], []
    for group in groups:
        table, group_tests = _build_table(group, primary, bootstrap_resamples)
        tables.append(table)
        tests.append(group_tests)
    for note in notes:
        log.warning(note)
    significance = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()
    return Leaderboard(tables, significance, notes, primary)


def _per_user(runs: list[Run]) -> pd.DataFrame | None:
    """Per-user test values, averaged over the runs (seeds) of one variant."""
    frames = []
    for run in runs:
        path = RunDir(run.path).per_user_test
        if path.exists():
            frames.append(pd.read_parquet(path).set_index("user"))
    if not frames:
        return None
    return pd.concat(frames).groupby(level=0).mean()


@functools.cache  # warn once per unknown key
def _direction(key: str) -> bool | None:
    """`higher_is_better` of a column; None (no best, no order) for a metric this version of
    recozoo does not compute, e.g. one from an older or newer run."""
    try:
        return higher_is_better(key)
    except ValueError as error:
        log.warning("%s: shown without a best value", error)
        return None


def _number(value: Any) -> float | None:
    """A metrics.json value as a float, or None when it is missing, null or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _build_table(group: RunGroup, primary: str, n_resamples: int) -> tuple[Table, pd.DataFrame]:
    runs_of_group = [r for runs in group.variants.values() for r in runs]
    # a metric null in every run (no qualifying user) keeps its column, shown as missing
    metrics = sorted({k for r in runs_of_group for k in r.metrics
                      if whole_test_metric(k) and (r.metrics[k] is None
                                                   or _number(r.metrics[k]) is not None)},
                     key=_metric_sort_key)
    primary_k = int(primary.split("@")[1]) if "@" in primary else 10
    buckets = [k for k in bucket_columns(primary_k) if any(k in r.metrics for r in runs_of_group)]
    rows: list[dict[str, Any]] = []
    per_user: dict[str, pd.DataFrame] = {}
    for label, runs in group.variants.items():
        row: dict[str, Any] = {"model": label, "status": "ok", "runs": len(runs),
                               "folder": ", ".join(str(r.path) for r in runs),
                               "code": ", ".join(sorted({r.code for r in runs}))}
        for key in (*metrics, *buckets, *FACTS):
            values = [_number(r.metrics.get(key)) for r in runs]
            values = [v for v in values if v is not None]
            row[key] = float(np.mean(values)) if values else math.nan
            if len(runs) > 1 and key in metrics:
                row[f"{key} std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        users = _per_user(runs)
        if users is not None:
            per_user[label] = users
            column = primary.split("/", 1)[1]
            if column in users:
                row["ci_low"], row["ci_high"] = stats.bootstrap_ci(users[column],
                                                                   n_resamples=n_resamples)
        rows.append(row)
    frame = pd.DataFrame(rows)
    # empty facts go; metric columns stay, even with no value
    frame = frame.drop(columns=[c for c in frame if c not in (*metrics, *buckets)
                                and frame[c].isna().all()])
    best: dict[str, str] = {}
    for key in metrics:
        direction = _direction(key)
        if direction is not None and frame[key].notna().any():  # idxmax skips NaN
            column = frame[key] if direction else -frame[key]
            best[key] = frame.loc[column.idxmax(), "model"]
    tests, significant = _significance(group, per_user, best, metrics)
    rank = pd.array([pd.NA] * len(frame), dtype="Int64")
    if primary in frame:
        main = tests[tests["metric"] == primary].set_index("model") if len(tests) else None
        for name in ("p_wilcoxon", "p_ttest"):
            frame[name] = (frame["model"].map(main[f"{name}_holm"]) if main is not None
                           else math.nan)
        direction = _direction(primary)
        if direction is not None:
            frame = frame.sort_values(primary, ascending=not direction, na_position="last",
                                      kind="stable").reset_index(drop=True)
            # rows without a value of the primary metric stay last, without a rank
            ranked = frame[primary].notna().to_numpy()
            rank[ranked] = np.arange(1, ranked.sum() + 1)
    frame.insert(0, "rank", rank)
    failed = [{"model": r.label or r.model, "status": "failed", "runs": 1, "folder": str(r.path),
               "error": r.metrics.get("error", "no error recorded")} for r in group.failed]
    if failed:
        frame = pd.concat([frame, pd.DataFrame(failed)], ignore_index=True)
    published = _published(group, frame, primary)
    return Table(group, frame, metrics, significant, best, published), tests


def _published(group: RunGroup, frame: pd.DataFrame, primary: str) -> list[str]:
    """The published results on the table's data (``data.published`` of its first run: the
    runs of a table share their data), each beside the values of the best row by ``primary``."""
    ranked = frame[frame["status"] == "ok"] if "status" in frame else frame
    if primary not in ranked or ranked[primary].isna().all():
        return []
    first = next(iter(group.variants.values()))[0]
    try:
        results = read_published(first.path)
    except (ValueError, OSError, yaml.YAMLError) as error:
        log.warning("published results of %s left out: %s", first.path, error)
        return []
    top = ranked.iloc[0]  # sorted by the primary metric
    ours = {key: top[key] for key in ranked.columns if str(key).startswith("test/")}
    return published_lines(results, group.protocol, ours, label=f"best here, {top['model']}")


def _significance(group: RunGroup, per_user: dict[str, pd.DataFrame], best: dict[str, str],
                  metrics: list[str]) -> tuple[pd.DataFrame, set[tuple[str, str]]]:
    """Every variant against the best one, for every metric with per-user values."""
    records: list[dict[str, Any]] = []
    significant: set[tuple[str, str]] = set()
    for key in metrics:
        column = key.split("/", 1)[1]
        reference = best.get(key)
        if reference not in per_user or column not in per_user[reference]:
            continue
        others = [label for label, users in per_user.items()  # no value: nothing to test
                  if label != reference and column in users and users[column].notna().any()]
        results = [stats.paired_test(per_user[reference][column], per_user[label][column])
                   for label in others]
        p_w = stats.holm([r.p_wilcoxon for r in results])
        p_t = stats.holm([r.p_ttest for r in results])
        for label, result, pw, pt in zip(others, results, p_w, p_t):
            records.append({"table": group.title, "metric": key, "model": label,
                            "best": reference, "n_users": result.n_users,
                            "mean_difference": result.mean_difference,
                            "p_wilcoxon": result.p_wilcoxon, "p_wilcoxon_holm": pw,
                            "p_ttest": result.p_ttest, "p_ttest_holm": pt,
                            "significant": bool(pw < stats.ALPHA)})
            if pw < stats.ALPHA:
                significant.add((key, label))
    return pd.DataFrame(records), significant


# ---------------------------------------------------------------------- rendering
def _cell(table: Table, row: pd.Series, key: str) -> str:
    value = row.get(key)
    if _missing(value):
        return ""
    if key in FACTS:
        return f"{value:.1f}" if key == "train_seconds" else f"{value:,.0f}"
    text = f"{value:.4f}"
    std = row.get(f"{key} std")
    if isinstance(std, float) and not math.isnan(std):
        text += f" ± {std:.4f}"
    if (key, row["model"]) in table.significant:
        text += "*"
    return text


def _headers(table: Table, primary: str, compact: bool = False) -> list[str]:
    """The columns shown: every one (html, csv), or with ``compact`` the `compact_metrics`
    and the primary metric's interval and p-value (leaderboard.md)."""
    if compact:  # in this order: the primary metric and its interval first
        order = ["rank", "model", "runs", primary, "95% CI", *compact_metrics(primary)[1:],
                 "p_wilcoxon", "error"]
        full = set(_headers(table, primary))
        return [c for c in order if c in full]
    columns = ["rank", "model", "runs", *table.metrics]
    if "ci_low" in table.frame:
        columns.insert(columns.index(primary) + 1 if primary in columns else 3, "95% CI")
    if "p_wilcoxon" in table.frame:
        columns += ["p_wilcoxon", "p_ttest"]
    columns += [c for c in table.frame.columns if c.count("/") == 2]  # recall@k/<bucket>
    return columns + [*FACTS, "code", "error"]


def compact_metrics(primary: str) -> list[str]:
    """The metrics of the compact table (leaderboard.md), at the primary metric's cut-off: the
    primary metric, recall, tail recall, APLT and coverage, and the rating errors where a model
    predicts ratings."""
    k = primary.split("@")[1] if "@" in primary else "10"
    return [primary, *(f"test/{name}@{k}" for name in ("recall", "tail_recall", "aplt",
                                                        "coverage")),
            *(f"test/{name}" for name in RATING_METRICS)]


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _text(table: Table, row: pd.Series, column: str) -> str:
    """The cell of ``column`` in ``row`` as shown in markdown and HTML."""
    value = row.get("ci_low" if column == "95% CI" else column)
    if _missing(value):
        # a metric of a finished run without a value (no qualifying user) is shown as missing
        return MISSING if column.startswith("test/") and row["status"] == "ok" else ""
    if column == "95% CI":
        return f"[{value:.4f}, {row['ci_high']:.4f}]"
    if column in ("p_wilcoxon", "p_ttest"):
        return f"{value:.3g}"
    if column in ("rank", "runs"):
        return str(int(value))
    if column in TEXT_COLUMNS:
        return str(value)
    return _cell(table, row, column)


def _metric_name(key: str) -> str:
    """``test/recall@10/distant`` -> ``recall``."""
    return key.split("/")[1].split("@")[0]


def _legend(board: Leaderboard) -> str:
    """The legend, with each shown metric's direction as its metric class states it."""
    keys = [c for t in board.tables for c in _headers(t, board.primary) if c.startswith("test/")]
    by_direction: dict[bool | None, list[str]] = {True: [], False: [], None: []}
    for key in keys:
        names = by_direction[_direction(key)]
        if _metric_name(key) not in names:
            names.append(_metric_name(key))
    clauses = []
    if by_direction[False]:
        clauses.append(f"lower is better for {', '.join(by_direction[False])}")
    if by_direction[None]:
        clauses.append(f"no better direction, so never bold: {', '.join(by_direction[None])}")
    if by_direction[True]:
        clauses.append("higher is better for the others" if clauses else "higher is better")
    directions = "; ".join(clauses)
    primary = board.primary
    buckets = ", ".join(f"/{b}" for b in BUCKETS)
    return (f"Rows are ordered by {primary}. Bold: the best value of a column, in that metric's "
            f"direction ({directions or 'no metrics'}). {MISSING}: no value (no test user "
            "qualified, e.g. none had a tail target); never bold, ranked or tested. *: differs "
            "from the column's best (paired Wilcoxon signed-rank test over test users, "
            f"Holm-adjusted p < {stats.ALPHA}). 95% CI: percentile bootstrap of {primary}. "
            f"p_wilcoxon / p_ttest: Holm-adjusted p-values of {primary} against the best row. "
            f"recall@k{buckets}: recall of the test targets in each item-popularity bucket (head "
            "= the top head-share of items by training count; distant = the bottom 50% of "
            "items; mid = the rest). The tail (tail_recall, aplt) is every item outside the "
            "head: mid and distant together. With several seeds: mean ± std.")


def to_markdown(board: Leaderboard, compact: bool = True) -> str:
    """leaderboard.md: the notes, then one section per table; ``compact`` (default) shows the
    columns of `compact_metrics` only (leaderboard.csv and .html hold every column)."""
    lines = ["# Leaderboard", "", _legend(board), ""]
    if compact:
        lines += [("Every metric at every cut-off, per-bucket recall, p_ttest and the training "
                   "facts: leaderboard.html (click a header to sort) and leaderboard.csv."), ""]
    for note in board.notes:
        lines += [f"> {note}", ""]
    for table in board.tables:
        columns = _headers(table, board.primary, compact)
        lines += [f"## {table.group.title}", "", "| " + " | ".join(columns) + " |",
                  "|" + "|".join("---:" if c not in TEXT_COLUMNS else "---"
                                 for c in columns) + "|"]
        for _, row in table.frame.iterrows():
            cells = []
            for column in columns:
                text = _text(table, row, column).replace("|", "\\|").replace("\n", " ")
                if table.best.get(column) == row["model"] and row["status"] == "ok" and text:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if table.published:
            lines += [f"Published on this data: {line}" for line in table.published] + [""]
    return "\n".join(lines)


_HTML_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;
margin-bottom:2em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}td.t,th.t{text-align:left}
td.best{font-weight:bold;background:#e8f5e9}tr.failed td{color:#a00;background:#fff5f5}
td.err{white-space:normal;max-width:40em;text-align:left}.note{color:#555}"""
_HTML_SCRIPT = """document.querySelectorAll('table.lb th').forEach(function(th){
th.addEventListener('click',function(){var t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex;
var asc=th.dataset.asc?th.dataset.asc!=='1':!(th.dataset.higher==='1');
th.dataset.asc=asc?'1':'0';var rows=Array.from(b.rows);rows.sort(function(x,y){
var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;if(a===undefined||a==='')return 1;
if(c===undefined||c==='')return -1;var fa=parseFloat(a),fc=parseFloat(c);
if(!isNaN(fa)&&!isNaN(fc))return asc?fa-fc:fc-fa;return asc?a.localeCompare(c):c.localeCompare(a);
});rows.forEach(function(r){b.appendChild(r);});});});"""


def to_html(board: Leaderboard) -> str:
    """leaderboard.html: self-contained (inline CSS and JS); click a header to sort by it,
    best first in that metric's direction."""
    from html import escape

    head = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>recozoo leaderboard"
            f"</title><style>{_HTML_STYLE}</style></head><body><h1>Leaderboard</h1>")
    parts = [head, f"<p class='note'>{escape(_legend(board))}</p>"]
    parts += [f"<p class='note'>{escape(n)}</p>" for n in board.notes]
    for table in board.tables:
        columns = _headers(table, board.primary)
        parts.append(f"<h2>{escape(table.group.title)}</h2><table class='lb'><thead><tr>")
        for column in columns:
            higher = "1" if column.startswith("test/") and _direction(column) else "0"
            cls = " class='t'" if column in TEXT_COLUMNS else ""
            parts.append(f"<th data-higher='{higher}'{cls}>{escape(column)}</th>")
        parts.append("</tr></thead><tbody>")
        for _, row in table.frame.iterrows():
            parts.append(f"<tr class='{escape(str(row['status']))}'>")
            for column in columns:
                text = _text(table, row, column)
                raw = row.get("ci_low" if column == "95% CI" else column)
                value = "" if _missing(raw) else escape(str(raw), quote=True)
                classes = []
                if column in ("model", "code"):
                    classes.append("t")
                if column == "error":
                    classes.append("err")
                if table.best.get(column) == row["model"] and row["status"] == "ok" and text:
                    classes.append("best")
                cls = f" class='{' '.join(classes)}'" if classes else ""
                parts.append(f"<td data-v='{value}'{cls}>{escape(text)}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts += [f"<p class='note'>Published on this data: {escape(line)}</p>"
                  for line in table.published]
    parts.append(f"<script>{_HTML_SCRIPT}</script></body></html>")
    return "".join(parts)


def write_leaderboard(board: Leaderboard, out_dir: Path | str, plots: bool = True) -> list[Path]:
    """Write leaderboard.md/.csv/.html, significance.csv and the PNG plots into ``out_dir``.

    Returns:
        the files written.
    """
    from recozoo import artifacts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.html",
               out / "significance.csv"]
    artifacts.atomic_write_bytes(written[0], to_markdown(board).encode())
    artifacts.atomic_write_bytes(written[1], board.to_frame().to_csv(index=False).encode())
    artifacts.atomic_write_bytes(written[2], to_html(board).encode())
    artifacts.atomic_write_bytes(written[3], board.significance.to_csv(index=False).encode())
    if plots:
        for table in board.tables:
            suffix = "" if len(board.tables) == 1 else f"_{table.group.slug}"
            written += plot_table(table.frame, table.group.title, board.primary, out, suffix,
                                  table.group.protocol.get("head_share"))
    return written
