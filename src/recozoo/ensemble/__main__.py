"""``python -m recozoo.ensemble <sweep folder> [more folders] [key=value ...]``: fuse the runs,
then refresh the leaderboard of the (first) folder (see `recozoo.ensemble` for the folder it
writes; ``--help`` lists every key)."""

from __future__ import annotations

from recozoo.runtime import configure_process

configure_process()  # thread settings, before anything imports torch

import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from recozoo.cli import parse_settings
from recozoo.runtime import setup_command_logging

PROG = "python -m recozoo.ensemble"


@dataclass
class EnsembleSettings:
    """Fuse the saved top-N scores of a sweep's runs into a fusion run folder.

    Args:
        folders: the sweep folder (or several folders of runs, fused together).
        method: weighted (score fusion, weights tuned on validation users) or rrf
            (reciprocal rank fusion).
        normalization: how each run's scores are made comparable before fusing
            (`recozoo.ensemble.normalise`).
        objective: validation objective of the weights: ndcg = NDCG@k, tail = NDCG@k +
            tail_weight * TailRecall@k.
        tail_weight: weight of TailRecall@k in the tail objective.
        k: cut-off of the objective.
        rrf_members: selected (rrf over the runs chosen on validation, forward from the
            best) or all (every run alike, the textbook rule).
        max_members: at most this many runs get a weight (null: no limit): serving the
            fusion then loads at most that many models (`recozoo.ensemble.FusionSpec`).
        out: the fusion folder (null: <sweep>/fusion, fusion_rrf or fusion_tail).
        report: rewrite the sweep's leaderboard afterwards.
    """

    folders: list[str] = field(default=MISSING, metadata={"positional": True})
    method: str = "weighted"
    normalization: str = "minmax"
    objective: str = "ndcg"
    tail_weight: float = 1.0
    k: int = 10
    rrf_members: str = "selected"
    max_members: int | None = None
    out: str | None = None
    report: bool = True


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(EnsembleSettings, sys.argv[1:] if argv is None else argv,
                              prog=PROG)
    setup_command_logging()
    from recozoo.artifacts import RunDir
    from recozoo.ensemble.fusion import FusionSpec, fuse_sweep

    folders = [Path(f) for f in settings.folders]
    try:
        spec = FusionSpec(method=settings.method, normalization=settings.normalization,
                          objective=settings.objective, tail_weight=settings.tail_weight,
                          k=settings.k, rrf_members=settings.rrf_members,
                          max_members=settings.max_members)
        fused = fuse_sweep(folders, spec, Path(settings.out) if settings.out else None)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in fused:
        values = RunDir(folder).read_record().metrics
        shown = {key: values.get(key) for key in ("test/ndcg@10", "test/tail_recall@10")}
        print(f"{folder}: " + ", ".join(
            f"{key} {'–' if value is None else f'{value:.4f}'}" for key, value in shown.items()))
    if settings.report:
        from recozoo.report import report

        report([*folders, *(f for f in fused if not f.is_relative_to(folders[0]))])
        print(f"leaderboard refreshed: {folders[0]}/leaderboard.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
