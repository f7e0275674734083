"""Published results on a dataset, shown next to recozoo's own.

A data config may list figures a paper reported on the same data under the same protocol
(``data.published``; `conf/data/scientific.yaml` holds Recformer's on Amazon Scientific). A run
prints them under its metrics table, and the leaderboard prints them under the table of runs on
that data, each next to the value of this run (or of the table's best row) and the ratio. A
figure is shown only where the protocol matches: the same split (``split``) and, where the entry
states it, the same number of items (``n_items``, a check that the files are the ones the paper
used); otherwise the reason it is left out is shown instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recozoo.artifacts import RunDir


@dataclass(frozen=True)
class PublishedResult:
    """Figures one paper reported on a dataset.

    Args:
        source: who reported them ("Recformer (Li et al., KDD 2023)").
        metrics: metric name as recozoo names it, without the ``test/`` stage ("ndcg@10") ->
            the published value.
        split: the split it was measured under (recozoo's name: "loo", "random", ...); None:
            shown with any split.
        n_items: the catalogue size of the paper's data; None: not checked.
    """

    source: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    split: str | None = None
    n_items: int | None = None

    def mismatch(self, facts: Mapping[str, Any]) -> str | None:
        """Why this result is not comparable with a run of ``facts`` (its metrics.json: ``split``,
        ``n_items``), or None where it is."""
        if self.split is not None and facts.get("split") != self.split:
            return f"measured with split {self.split}, this run used {facts.get('split')}"
        if self.n_items is not None and facts.get("n_items") != self.n_items:
            return (f"published on {self.n_items:,} items, this data has "
                    f"{facts.get('n_items')} (other files or preprocessing)")
        return None


def parse_published(entries: Iterable[Mapping[str, Any]] | None,
                    where: str = "data.published") -> list[PublishedResult]:
    """`PublishedResult`s from a config list; a malformed entry is an error naming it."""
    results = []
    for index, entry in enumerate(entries or []):
        name = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{name} must be a mapping with source and metrics, got {entry!r}")
        unknown = set(entry) - {"source", "metrics", "split", "n_items"}
        if unknown:
            raise ValueError(f"{name} has unknown keys {sorted(unknown)}; expected source, "
                             "metrics, split, n_items")
        if not entry.get("source"):
            raise ValueError(f"{name}.source is missing: say who published the figures")
        metrics = entry.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
            raise ValueError(f"{name}.metrics must map metric names (e.g. ndcg@10) to numbers, "
                             f"got {metrics!r}")
        values = {}
        for key, value in metrics.items():
            key = str(key).removeprefix("test/")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}.metrics.{key} must be a number, got {value!r}")
            values[key] = float(value)
        n_items = entry.get("n_items")
        if n_items is not None and (isinstance(n_items, bool) or not isinstance(n_items, int)
                                    or n_items < 1):
            raise ValueError(f"{name}.n_items must be a positive integer, got {n_items!r}")
        split = entry.get("split")
        results.append(PublishedResult(str(entry["source"]), values,
                                       None if split is None else str(split), n_items))
    return results


def read_published(run_dir: Path | str) -> list[PublishedResult]:
    """The ``data.published`` of a run folder's resolved config (empty where there is none)."""
    path = RunDir(run_dir).config
    if not path.exists():
        return []
    config = yaml.safe_load(path.read_text()) or {}
    data = config.get("data") or {}
    return parse_published(data.get("published"), f"{path}: data.published")


def published_lines(results: Iterable[PublishedResult], facts: Mapping[str, Any],
                    ours: Mapping[str, Any], label: str = "this run") -> list[str]:
    """One line per published result: its figures, each beside ``ours[test/<metric>]`` and the
    ratio, or why it is not comparable with a run of ``facts``."""
    lines = []
    for result in results:
        reason = result.mismatch(facts)
        if reason:
            lines.append(f"{result.source}: not comparable ({reason})")
            continue
        cells = []
        for metric, value in result.metrics.items():
            mine = ours.get(f"test/{metric}")
            if isinstance(mine, (int, float)) and math.isfinite(mine) and value:
                cells.append(f"{metric} {value:.4f} ({label} {mine:.4f}, {mine / value:.2f}x)")
            else:
                cells.append(f"{metric} {value:.4f} ({label}: not measured)")
        lines.append(f"{result.source}: " + ", ".join(cells))
    return lines
