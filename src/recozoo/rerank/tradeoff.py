"""The accuracy / long-tail trade-off of re-rankers over a λ sweep, from finished runs.

Reads every ``metrics.json`` under the given folders (a Hydra multirun such as
``python train.py -m rerank=xquad,calibrated rerank.weight=0,0.1,0.2,0.3``, or several), groups
runs by (data, model, debias, re-ranker), and

* prints one table per group: λ, validation and test NDCG@K, TailRecall@K and APLT@K, and the
  change against the group's baseline (``rerank=none`` or λ = 0);
* picks λ on validation: the largest validation TailRecall@K whose validation NDCG@K is within
  ``max_ndcg_cost`` of the baseline's, and reports its test figures;
* draws NDCG@K against TailRecall@K and against APLT@K, one curve per re-ranker, into a PNG.

Usage (``--help`` lists every key)::

    python -m recozoo.rerank.tradeoff logs/train/multiruns/<time> out=tradeoff.png

A sweep need not retrain the model for every λ: train once (``rerank=none``), then resume each
job from that run's best checkpoint with no epoch left to train, so only evaluation runs::

    python train.py model=bpr hydra.run.dir=runs/bpr
    python train.py -m model=bpr rerank=xquad,calibrated rerank.weight=0.1,0.2,0.3,0.4 \
        ckpt_path=runs/bpr/checkpoints/best.ckpt trainer.max_epochs=<best epoch + 1> \
        hydra.sweep.dir=runs/bpr_rerank
    python -m recozoo.rerank.tradeoff runs/bpr runs/bpr_rerank out=tradeoff.png
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

BASELINE = "none"


@dataclass
class Run:
    """One finished run's identity and metrics."""

    path: Path
    data: str
    model: str
    debias: str
    rerank: str
    weight: float
    metrics: dict[str, Any]

    def get(self, key: str) -> float:
        value = self.metrics.get(key)
        return float(value) if value is not None else math.nan


def load_runs(folders: list[str | Path]) -> list[Run]:
    """Every successful run (``status == "ok"``) under ``folders``."""
    from recozoo.report.runs import find_runs

    runs = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist")
        for found in find_runs([folder.parent if folder.is_file() else folder]):
            record = found.metrics
            if not record.ok:
                continue
            runs.append(Run(found.path, str(record.data), str(record.model),
                            str(record.debias or "none"), str(record.rerank or BASELINE),
                            float(record.rerank_weight or 0.0), dict(record)))
    if not runs:
        raise ValueError(f"no finished runs (metrics.json with status ok) under {folders}")
    return runs


def groups(runs: list[Run]) -> dict[tuple[str, str, str], dict[str, list[Run]]]:
    """(data, model, debias) -> re-ranker -> runs sorted by λ. λ = 0 runs of any re-ranker
    count as the baseline too (they rank by the model's scores)."""
    out: dict[tuple[str, str, str], dict[str, list[Run]]] = {}
    for run in runs:
        method = BASELINE if run.rerank == BASELINE or run.weight == 0 else run.rerank
        out.setdefault((run.data, run.model, run.debias), {}).setdefault(method, []).append(run)
    for methods in out.values():
        for runs_of in methods.values():
            runs_of.sort(key=lambda r: r.weight)
    return out


def select_weight(baseline: Run, candidates: list[Run], k: int = 10,
                  max_ndcg_cost: float = 0.05) -> Run | None:
    """The run with the largest validation TailRecall@k (ties: larger APLT@k) among those whose
    validation NDCG@k is at least ``(1 - max_ndcg_cost)`` of the baseline's (None when none
    qualifies)."""
    floor = (1 - max_ndcg_cost) * baseline.get(f"val/ndcg@{k}")
    allowed = [r for r in candidates if r.get(f"val/ndcg@{k}") >= floor]
    def rank(run: Run) -> tuple[float, float]:  # no value (NaN) never wins
        values = (run.get(f"val/tail_recall@{k}"), run.get(f"val/aplt@{k}"))
        return tuple(-math.inf if math.isnan(v) else v for v in values)  # type: ignore[return-value]

    return max(allowed, key=rank, default=None)


def _change(value: float, base: float) -> str:
    return f"{100 * (value / base - 1):+.1f}%" if base else "n/a"


def report(runs: list[Run], k: int = 10, max_ndcg_cost: float = 0.05) -> str:
    """The tables and the λ chosen on validation, as Markdown."""
    lines = []
    for (data, model, debias), methods in sorted(groups(runs).items()):
        base = methods.get(BASELINE, [None])[0]
        lines.append(f"\n### {model} on {data} (debias={debias})\n")
        lines.append(f"| rerank | λ | val NDCG@{k} | val TailRecall@{k} | test NDCG@{k} | "
                     f"test TailRecall@{k} | test APLT@{k} | NDCG change | TailRecall change |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for method, runs_of in sorted(methods.items(), key=lambda kv: kv[0] != BASELINE):
            for run in runs_of[:1] if method == BASELINE else runs_of:
                lines.append(
                    f"| {method} | {run.weight:g} | {run.get(f'val/ndcg@{k}'):.4f} | "
                    f"{run.get(f'val/tail_recall@{k}'):.4f} | {run.get(f'test/ndcg@{k}'):.4f} | "
                    f"{run.get(f'test/tail_recall@{k}'):.4f} | {run.get(f'test/aplt@{k}'):.4f} | "
                    + (f"{_change(run.get(f'test/ndcg@{k}'), base.get(f'test/ndcg@{k}'))} | "
                       f"{_change(run.get(f'test/tail_recall@{k}'), base.get(f'test/tail_recall@{k}'))} |"
                       if base else "| |"))
        if base is None:
            continue
        for method, runs_of in sorted(methods.items()):
            if method == BASELINE:
                continue
            chosen = select_weight(base, runs_of, k, max_ndcg_cost)
            if chosen is None:
                lines.append(f"\n{method}: no λ keeps validation NDCG@{k} within "
                             f"{100 * max_ndcg_cost:.0f}% of the baseline")
                continue
            lines.append(
                f"\n{method}: λ = {chosen.weight:g} chosen on validation -> test NDCG@{k} "
                f"{_change(chosen.get(f'test/ndcg@{k}'), base.get(f'test/ndcg@{k}'))}, "
                f"TailRecall@{k} "
                f"{_change(chosen.get(f'test/tail_recall@{k}'), base.get(f'test/tail_recall@{k}'))}"
                f", APLT@{k} {_change(chosen.get(f'test/aplt@{k}'), base.get(f'test/aplt@{k}'))}")
    return "\n".join(lines)


def plot(runs: list[Run], out: str | Path, k: int = 10, stage: str = "test") -> Path:
    """NDCG@k against TailRecall@k and APLT@k, one row of panels per (data, model, debias)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = sorted(groups(runs).items())
    fig, axes = plt.subplots(len(grouped), 2, figsize=(10, 3.8 * len(grouped)), squeeze=False)
    for row, ((data, model, debias), methods) in enumerate(grouped):
        for col, x_name in enumerate((f"tail_recall@{k}", f"aplt@{k}")):
            ax = axes[row][col]
            base = methods.get(BASELINE, [None])[0]
            for method, runs_of in sorted(methods.items()):
                if method == BASELINE:
                    continue
                curve = ([base] if base else []) + runs_of
                ax.plot([r.get(f"{stage}/{x_name}") for r in curve],
                        [r.get(f"{stage}/ndcg@{k}") for r in curve], marker="o", label=method)
                for r in runs_of:
                    ax.annotate(f"{r.weight:g}", (r.get(f"{stage}/{x_name}"),
                                                  r.get(f"{stage}/ndcg@{k}")),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
            if base:
                ax.scatter([base.get(f"{stage}/{x_name}")], [base.get(f"{stage}/ndcg@{k}")],
                           marker="*", s=160, color="black", zorder=5, label="no re-ranking")
            ax.set_xlabel(f"{stage} {x_name.replace('tail_recall', 'TailRecall').replace('aplt', 'APLT')}")
            ax.set_ylabel(f"{stage} NDCG@{k}")
            ax.set_title(f"{model} on {data}" + (f", debias={debias}" if debias != "none" else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@dataclass
class TradeoffSettings:
    """The accuracy / long-tail trade-off of re-rankers over a λ sweep, from finished runs:
    tables, the λ chosen on validation, and a plot.

    Args:
        folders: multirun folders (or run folders) of a re-ranking sweep and its baseline.
        out: the PNG to write.
        k: the cut-off of NDCG, TailRecall and APLT.
        max_ndcg_cost: the largest share of validation NDCG@k accepted to lose against the
            baseline when choosing λ.
    """

    folders: list[str] = field(default=MISSING, metadata={"positional": True})
    out: str = "tradeoff.png"
    k: int = 10
    max_ndcg_cost: float = 0.05


def main(argv: list[str] | None = None) -> None:
    import sys

    from recozoo.cli import parse_settings

    settings = parse_settings(TradeoffSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m recozoo.rerank.tradeoff")
    try:
        runs = load_runs(settings.folders)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"python -m recozoo.rerank.tradeoff: {error}") from None
    print(report(runs, settings.k, settings.max_ndcg_cost))
    print(f"\nwrote {plot(runs, settings.out, settings.k)}")


if __name__ == "__main__":
    from recozoo.runtime import configure_process

    configure_process()  # warning filters (torch is already imported by recozoo.rerank)
    main()
