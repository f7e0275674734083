"""Scoring ranked lists saved in run folders (a fusion's, another tool's) with the shared metric
suite, exactly as the `Evaluator` scores a model's lists: the one home of that computation for
`recozoo.ensemble` and `recozoo.report.external`.

What a run folder tells about its users: the test inputs (for PopRSP) are ``history.parquet``
minus the held-out targets (and, for validation, minus the validation targets too); training
activity (light/heavy users) is ``users.parquet``'s ``activity`` column, or the same recount.
The recount is exact when every data row is in one part of the split; it is not for
``split=global_temporal`` (which leaves rows out) nor with ``eval.cold_items``, and there those
metrics have no value and the log says why.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from recozoo import artifacts
from recozoo.artifacts import RunDir, RunRecord, read_table
from recozoo.data.contracts import DEFAULT_HEAVY_USER_SHARE, DatasetInfo, heavy_user_mask
from recozoo.evaluation.evaluator import per_user_values
from recozoo.metrics.ranking import RankedBatch, inputs_per_group
from recozoo.metrics.suite import ranking_suite

log = logging.getLogger(__name__)


def _pair_counts(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby(["user", "item"]).size()


def _less(counts: pd.Series, taken: pd.Series) -> pd.Series:
    """(user, item) counts less ``taken``, as multisets."""
    left = counts - taken.reindex(counts.index, fill_value=0)
    return left[left > 0]


def recorded_inputs(run: RunDir, record: RunRecord, n_users: int
                    ) -> tuple[dict[str, pd.DataFrame] | None, np.ndarray | None]:
    """The (user, item) inputs of each stage (``{"val": ..., "test": ...}``) and the per-user
    training counts of the run, each None where the run folder cannot tell it exactly (see the
    module docstring); the folder's files are read once."""
    users = pd.read_parquet(run.users) if run.users.exists() else pd.DataFrame()
    activity = users["activity"].to_numpy(np.float64) if "activity" in users else None
    if not run.history.exists():
        log.warning("%s has no %s: the users' inputs and activity cannot be told, so poprsp "
                    "and the light/heavy user NDCG have no value", run.path, run.history.name)
        return None, activity
    if record.split == "global_temporal":
        why = "split=global_temporal leaves data rows out of every part"
    elif any(key.startswith("test_cold/") for key in record.metrics):
        why = "the cold items' (eval.cold_items) rows are nobody's inputs"
    else:
        why = None
    if why is not None:
        log.warning("%s: %s, so the users' inputs cannot be recounted from history.parquet: "
                    "poprsp has no value%s", run.path, why,
                    "" if activity is not None else ", nor the light/heavy user NDCG")
        return None, activity
    history = _pair_counts(read_table(run.history, ("user", "item")))
    test_inputs = _less(history, _pair_counts(read_table(run.targets("test"), ("user", "item"))))
    train = _less(test_inputs, _pair_counts(read_table(run.targets("val"), ("user", "item"))))
    if activity is None:
        activity = np.bincount(train.index.get_level_values("user"),
                               weights=train.to_numpy(np.float64), minlength=n_users)
    return ({"val": train.index.to_frame(index=False),
             "test": test_inputs.index.to_frame(index=False)}, activity)


def saved_facts(run: RunDir, record: RunRecord, n_users: int, name: str = ""
                ) -> tuple[DatasetInfo, dict[str, pd.DataFrame | None]]:
    """The dataset facts of a saved run (items, and users' activity where it can be told) and
    the (user, item) inputs of each stage (None where they cannot be told)."""
    inputs, activity = recorded_inputs(run, record, n_users)
    info = artifacts.read_item_facts(run, n_users, record.head_share, name)
    if activity is not None:
        info.user_activity = torch.as_tensor(activity)
        info.heavy_users = heavy_user_mask(
            activity, record.heavy_user_share if record.heavy_user_share is not None
            else DEFAULT_HEAVY_USER_SHARE)
    return info, inputs if inputs is not None else {"val": None, "test": None}


def score_lists(lists: torch.Tensor, users: np.ndarray, targets: pd.DataFrame, ks: list[int],
                info: DatasetInfo, inputs: pd.DataFrame | None = None,
                batch_size: int = 1024) -> tuple[dict[str, float], pd.DataFrame]:
    """The shared metric suite on given ranked lists.

    Args:
        lists: (n_users, K) ranked item indices, best first, `NO_ITEM` in empty slots.
        users: (n_users,) the user index of each list.
        targets: the held-out (user, item) rows; those of other users are ignored.
        ks: cut-offs, each at most K.
        info: the item facts (tail, buckets, popularity) and ``heavy_users`` (or None).
        inputs: every (user, item) input of these users (for PopRSP), or None: unknown.

    Returns:
        ``{"<name>@<k>": value}`` and the per-user values (one row per user).
    """
    suite = ranking_suite(ks, info.n_items, info.n_users, info.item_popularity, info.tail_mask,
                          item_bucket=info.item_bucket, heavy_users=info.heavy_users)
    row_of = pd.Series(np.arange(len(users)), index=users)
    known = targets[targets["user"].isin(row_of.index)]
    target_row, target_item = row_of[known["user"]].to_numpy(), known["item"].to_numpy()
    if inputs is not None:
        inputs = inputs[inputs["user"].isin(row_of.index)]
        input_row, input_item = row_of[inputs["user"]].to_numpy(), inputs["item"].to_numpy()
    per_user: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(users), batch_size):
        stop = min(start + batch_size, len(users))
        block = (target_row >= start) & (target_row < stop)
        n_inputs = None
        if inputs is not None:
            mine = (input_row >= start) & (input_row < stop)
            n_inputs = inputs_per_group(torch.as_tensor(input_row[mine] - start),
                                        torch.as_tensor(input_item[mine]), stop - start,
                                        info.tail_mask)
        ranked = RankedBatch.from_pairs(lists[start:stop],
                                        torch.as_tensor(target_row[block] - start),
                                        torch.as_tensor(target_item[block]), info.tail_mask,
                                        info.item_bucket, users=torch.as_tensor(users[start:stop]),
                                        n_inputs=n_inputs)
        suite.update(ranked)
        for key, value in per_user_values(suite, ranked, ks).items():
            per_user.setdefault(key, []).append(value)
    values = {k: float(v) for k, v in suite.compute().items()}
    frame = pd.DataFrame({"user": users,
                          **{k: torch.cat(v).numpy() for k, v in per_user.items()}})
    return values, frame
