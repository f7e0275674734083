"""``python -m recozoo.ensemble <sweep folder> [more folders]``: fuse the runs, then refresh
the leaderboard of the (first) folder (see `recozoo.ensemble` for the folder it writes)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recozoo.artifacts import RunDir
from recozoo.ensemble.fusion import OBJECTIVES, FusionSpec, fuse_sweep
from recozoo.ensemble.normalise import METHODS, NORMALISATIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recozoo.ensemble",
        description="Fuse the saved top-N scores of a sweep's runs into a fusion run folder.")
    parser.add_argument("folders", nargs="+", type=Path,
                        help="sweep folder (or several folders of runs, fused together)")
    parser.add_argument("--method", choices=METHODS, default="weighted")
    parser.add_argument("--normalization", choices=NORMALISATIONS, default="minmax")
    parser.add_argument("--objective", choices=OBJECTIVES, default="ndcg",
                        help="validation objective of the weights: ndcg = NDCG@k, tail = "
                             "NDCG@k + tail-weight * TailRecall@k")
    parser.add_argument("--tail-weight", type=float, default=1.0)
    parser.add_argument("--k", type=int, default=10, help="cut-off of the objective")
    parser.add_argument("--out", type=Path, default=None,
                        help="fusion folder (default: <sweep>/fusion, fusion_rrf, fusion_tail)")
    parser.add_argument("--no-report", action="store_true",
                        help="do not rewrite the sweep's leaderboard afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = FusionSpec(method=args.method, normalization=args.normalization,
                          objective=args.objective, tail_weight=args.tail_weight, k=args.k)
        fused = fuse_sweep(args.folders, spec, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in fused:
        values = RunDir(folder).read_record().metrics
        shown = {key: values.get(key) for key in ("test/ndcg@10", "test/tail_recall@10")}
        print(f"{folder}: " + ", ".join(
            f"{key} {'–' if value is None else f'{value:.4f}'}" for key, value in shown.items()))
    if not args.no_report:
        from recozoo.report import report

        report([*args.folders, *(f for f in fused if not f.is_relative_to(args.folders[0]))])
        print(f"leaderboard refreshed: {args.folders[0]}/leaderboard.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
