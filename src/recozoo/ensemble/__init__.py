"""Fusion ensembles over the saved outputs of finished runs (`recozoo.ensemble.fusion`).

``python -m recozoo.ensemble <sweep folder> [--method weighted|rrf] [--objective ndcg|tail]``
fuses the top-N lists of every finished run of the sweep (one fusion per protocol and seed) and
writes a fusion folder that is itself a run folder, so leaderboards and serving read it as one:

    <sweep>/fusion/            (fusion_rrf/, fusion_tail/ for the other variants; with several
                                protocols or seeds one sub-folder each: <data>_<split>_s<seed>/)
      metrics.json             as any run's ("model": "fusion", val/... and test/... metrics,
                               "n_params" and "train_seconds" summed over the members
                               with a weight,
                               "fusion_seconds" the fusion's own time)
      fusion.json              how to rebuild it: "spec" (method, normalization, objective,
                               tail_weight, k, rrf_k, rrf_members), "weights" {run label:
                               weight, sum 1; 0 for a run left out}, "members" (the runs with
                               a weight, whose lists are fused) [{label, model, run (path
                               relative to the sweep folder), weight, val_objective_alone,
                               valued_by}], "left_out" [{label, model, run,
                               val_objective_alone}], "val_objective",
                               "best_single", "best_single_val_objective", "top_n", "ks"
      rankings_val.parquet     fused top-N (user, rank, item, score) per validation user
      rankings_test.parquet    fused top-N per test user
      per_user_test.parquet    per-user test metrics (paired tests in the leaderboard)
      targets_*.parquet, items.parquet, users.parquet, history.parquet   copied from a member

To serve a fused model for a new user, score the user with every member run (each one's best
checkpoint), normalise each member's top-N per `fusion.json` "spec"
(`recozoo.ensemble.normalise.normalise_lists`, the one implementation both use), and sum with
"weights".
"""

from recozoo.ensemble.fusion import (
    FusionSpec,
    Members,
    candidates,
    fuse,
    fuse_sweep,
    member_sets,
    normalise,
)
from recozoo.ensemble.normalise import FusionRule, normalise_lists

__all__ = ["FusionRule", "FusionSpec", "Members", "candidates", "fuse", "fuse_sweep",
           "member_sets", "normalise", "normalise_lists"]
