"""Score fusion over the saved top-N lists of finished runs (no model is loaded or re-run).

Every member contributes, per user, its top-N (item, score) list. Scores are normalised per user
and member (min-max or z-score; an item a member did not list gets the member's floor: 0 after
min-max, the lowest listed value after z-score), then summed with one weight per member
(CombSUM with weights; Fox and Shaw, TREC-2 1994). A re-ranked member (``rerank=``) saved its
model's scores in its re-ranked order; it is valued by its positions instead (``-rank`` in
place of the scores), or the sum would restore the model's order and undo the re-ranking. The
weights are tuned on the validation users only, by coordinate ascent over a grid, started from
the best single member and from equal weights, so the tuned fusion is never worse than that
member on validation. Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009) is the
option without weights: ``sum_m 1 / (60 + rank_m(item))`` over its members, all alike. Its members
are chosen on validation by default (forward selection from the best member, as in Caruana et
al., "Ensemble Selection from Libraries of Models", ICML 2004): over a whole zoo, the textbook
rule's equal say for every run lets the weak ones (pop, rating models) outvote the strong, and
the fusion falls far below its best member (``rrf_members="all"`` keeps that rule).

The fused lists are built from the members the choice gave a weight (a member at weight 0 adds
no items to the candidates), and ``fusion.json`` names those members alone, so serving loads
only them; its ``weights`` keep every run's, 0 for the runs left out.

The tuning objective is NDCG@K on validation, or, long-tail aware, NDCG@K + lambda *
TailRecall@K. Test lists are then scored by the same metric code as every model
(`RankedBatch.from_lists` + `ranking_suite`).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recozoo import artifacts
from recozoo.artifacts import STAGES, RunDir, RunRecord
from recozoo.ensemble.normalise import FusionRule, normalise_lists
from recozoo.evaluation.saved_lists import saved_facts, score_lists
from recozoo.metrics import functional as F
from recozoo.provenance import code_version
from recozoo.report.runs import Run, RunGroup, find_runs, group_runs
from recozoo.top_k import top_k

log = logging.getLogger(__name__)

OBJECTIVES = ("ndcg", "tail")
#: which runs reciprocal rank fusion sums (`FusionSpec.rrf_members`)
RRF_MEMBERS = ("selected", "all")
#: relative member weights tried by the coordinate ascent (the start member has weight 1).
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)


@dataclass
class FusionSpec:
    """How to fuse.

    Args:
        method: ``weighted`` (normalised scores, tuned weights) or ``rrf`` (reciprocal rank
            fusion, no parameters).
        normalization: ``minmax`` or ``zscore`` per user and member (weighted only).
        objective: ``ndcg`` (NDCG@k on validation) or ``tail`` (NDCG@k + tail_weight *
            TailRecall@k on validation).
        tail_weight: lambda of the ``tail`` objective.
        k: cut-off of the objective.
        rrf_k: the constant of reciprocal rank fusion.
        rrf_members: ``selected`` (reciprocal rank fusion over the members chosen on
            validation, `select_members`) or ``all`` (every run alike, the textbook rule).
        max_passes: coordinate-ascent passes over the members.
        max_members: at most this many runs get a weight (None: no limit), so that serving the
            fusion loads no more models than that: forward selection from the best run alone,
            stopped there (weighted: `_forward_weights`, the weights tuned again each round;
            rrf with ``rrf_members="selected"``: `select_members`). Never below the best run
            alone on validation.
    """

    method: str = "weighted"
    normalization: str = "minmax"
    objective: str = "ndcg"
    tail_weight: float = 1.0
    k: int = 10
    rrf_k: int = 60
    rrf_members: str = "selected"
    max_passes: int = 4
    max_members: int | None = None

    def __post_init__(self) -> None:
        self.rule  # noqa: B018 (checks method, normalization and rrf_k)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"fusion objective must be one of {OBJECTIVES}, got "
                             f"{self.objective!r}")
        if self.rrf_members not in RRF_MEMBERS:
            raise ValueError(f"fusion rrf_members must be one of {RRF_MEMBERS}, got "
                             f"{self.rrf_members!r}")
        if self.max_members is not None and self.max_members < 1:
            raise ValueError(f"fusion max_members must be at least 1 (or None: no limit), got "
                             f"{self.max_members}")
        if self.max_members is not None and self.method == "rrf" and self.rrf_members == "all":
            raise ValueError("fusion max_members limits the runs rrf chooses; with "
                             "rrf_members='all' every run is used: set rrf_members='selected'")
        if self.tail_weight < 0 or self.k < 1:
            raise ValueError(f"fusion needs tail_weight >= 0 and k >= 1; got "
                             f"{self.tail_weight}, {self.k}")

    @property
    def rule(self) -> FusionRule:
        """How each member's list is normalised (what serving needs to fuse the same way)."""
        return FusionRule(self.method, self.normalization, self.rrf_k)

    @property
    def name(self) -> str:
        """Model name of the fused run (and its folder): fusion, fusion_rrf, fusion_tail."""
        if self.method == "rrf":
            return "fusion_rrf"
        return "fusion_tail" if self.objective == "tail" else "fusion"


@dataclass
class Candidates:
    """Every (user, item) some member listed, with each member's normalised score, padded per
    user to the longest union: ``values`` (U, C, M), ``items`` (U, C) with -1 as padding."""

    users: np.ndarray
    items: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.valid = self.items >= 0

    def fused(self, weights: torch.Tensor) -> torch.Tensor:
        """(U, C) weighted sums; padding at -inf."""
        scores = self.values @ weights  # (U, C)
        return scores.masked_fill(~self.valid, -math.inf)

    def flags(self, targets: pd.DataFrame, tail: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(U, C) target and tail-target flags and (U,) target counts for these users."""
        index = pd.Series(np.arange(len(self.users)), index=self.users)
        known = targets[targets["user"].isin(index.index)]
        rows = torch.tensor(index[known["user"]].to_numpy())
        is_target = torch.zeros(len(self.users), int(tail.shape[0]) + 1, dtype=torch.bool)
        is_target[rows, torch.tensor(known["item"].to_numpy())] = True  # (U, n_items + 1)
        column = self.items.clone()
        column[~self.valid] = tail.shape[0]  # padding points at the extra, never-target column
        hit = is_target.gather(1, column)
        tail_t = torch.as_tensor(np.append(tail, False))
        tail_hit = hit & tail_t[column]
        n_targets = is_target.sum(1).float()
        n_tail = (is_target & tail_t[None, :]).sum(1).float()
        return hit, tail_hit, n_targets, n_tail


def normalise(frame: pd.DataFrame, rule: FusionRule, by_position: bool = False
              ) -> tuple[np.ndarray, pd.Series]:
    """Per-row normalised scores of one member's rankings (`normalise_lists` over each user's
    list; ``by_position`` for a re-ranked member) and each user's floor (the value of an item
    the member did not list)."""
    users, row_user = np.unique(frame["user"].to_numpy(), return_inverse=True)
    order = np.lexsort((frame["rank"].to_numpy(), row_user))
    position = np.empty(len(frame), dtype=np.int64)
    position[order] = pd.Series(row_user[order]).groupby(row_user[order]).cumcount().to_numpy()
    width = int(position.max()) + 1 if len(frame) else 1
    rows, cols = torch.as_tensor(row_user), torch.as_tensor(position)
    scores = torch.zeros(len(users), width, dtype=torch.float64)
    valid = torch.zeros(len(users), width, dtype=torch.bool)
    scores[rows, cols] = torch.as_tensor(frame["score"].to_numpy(np.float64, copy=True))
    valid[rows, cols] = True
    values, floor = normalise_lists(scores, valid, rule, by_position)
    return values[rows, cols].numpy(), pd.Series(floor[:, 0].numpy(), index=users)


def candidates(frames: list[pd.DataFrame], spec: FusionSpec,
               by_position: list[bool] | None = None) -> Candidates:
    """The padded candidate tensor of a stage from the members' rankings frames;
    ``by_position[m]``: member m's lists were re-ranked (valued by position, `normalise_lists`)."""
    parts, floors = [], []
    for member, frame in enumerate(frames):
        value, floor = normalise(frame, spec.rule, bool(by_position and by_position[member]))
        parts.append(pd.DataFrame({"user": frame["user"].to_numpy(),
                                   "item": frame["item"].to_numpy(), "member": member,
                                   "value": np.asarray(value, dtype=np.float32)}))
        floors.append(floor.rename(member))
    long = pd.concat(parts, ignore_index=True)
    wide = long.pivot_table(index=["user", "item"], columns="member", values="value",
                            aggfunc="max").reindex(columns=range(len(frames)))
    users_of_rows = wide.index.get_level_values("user").to_numpy()
    floor = pd.concat(floors, axis=1).reindex(columns=range(len(frames))).fillna(0.0)
    fill = floor.reindex(users_of_rows).fillna(0.0).to_numpy(dtype=np.float32)
    values = wide.to_numpy(dtype=np.float32)
    values = np.where(np.isnan(values), fill, values)
    users, row_user = np.unique(users_of_rows, return_inverse=True)
    position = pd.Series(row_user).groupby(row_user).cumcount().to_numpy()
    width = int(position.max()) + 1
    rows, cols = torch.tensor(row_user), torch.tensor(position)
    items = torch.full((len(users), width), -1, dtype=torch.long)
    items[rows, cols] = torch.tensor(np.asarray(wide.index.get_level_values("item"),
                                                dtype=np.int64))
    padded = torch.zeros(len(users), width, len(frames))  # (U, C, M)
    padded[rows, cols] = torch.tensor(values)
    return Candidates(users, items, padded)


def objective(scores: torch.Tensor, flags: tuple[torch.Tensor, ...], spec: FusionSpec) -> float:
    """NDCG@k (+ tail_weight * TailRecall@k) of the lists ranked by ``scores`` (U, C)."""
    hit, tail_hit, n_targets, n_tail = flags
    k = min(spec.k, scores.shape[1])
    top = top_k(scores, k).indices  # equal scores in item order (a user's candidates ascend)
    users = n_targets > 0
    value = F.ndcg(hit.gather(1, top).float(), n_targets, k)[users].mean().item()
    if spec.objective == "tail" and (n_tail > 0).any():
        tails = n_tail > 0
        value += spec.tail_weight * F.recall(tail_hit.gather(1, top).float(), n_tail,
                                             k)[tails].mean().item()
    return float(value)


def objectives_alone(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec
                     ) -> list[float]:
    """Each member's validation objective on its own (its weight 1, the others' 0)."""
    n = cands.values.shape[2]
    return [objective(cands.fused(torch.eye(n)[m]), flags, spec) for m in range(n)]


def tune_weights(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec
                 ) -> tuple[torch.Tensor, list[float]]:
    """Coordinate ascent over `WEIGHT_GRID` from two starts, the best single member and equal
    weights (CombSUM); the better end point on validation wins. A greedy ascent from one member
    alone can stall where no single other member helps, although a mix of them would. With
    ``spec.max_members`` below the number of members, `_forward_weights` instead.

    Returns:
        the weights (summing to 1) and each member's objective alone.
    """
    n = cands.values.shape[2]
    alone = objectives_alone(cands, flags, spec)
    best = int(np.argmax(alone))
    if spec.max_members is not None and spec.max_members < n:
        return _forward_weights(cands, flags, spec, best), alone
    starts = [torch.eye(n)[best], torch.ones(n)]
    ends = [_coordinate_ascent(cands, flags, spec, start, list(range(n))) for start in starts]
    weights, _ = max(ends, key=lambda end: end[1])  # ties: the first start, the best member
    return weights / weights.sum(), alone


def _forward_weights(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec,
                     best: int) -> torch.Tensor:
    """At most ``spec.max_members`` weighted members, by `forward_selection` from the best
    alone: a member joins at the weight of `WEIGHT_GRID` that serves the objective most, and the
    chosen members' weights are tuned again by coordinate ascent after each round."""
    def joined(weights: torch.Tensor, member: int) -> list[torch.Tensor]:
        trials = [weights.clone() for _ in WEIGHT_GRID[1:]]
        for trial, grid_value in zip(trials, WEIGHT_GRID[1:]):
            trial[member] = grid_value
        return trials

    weights = forward_selection(cands, flags, spec, best, joined, lambda trial, chosen:
                                _coordinate_ascent(cands, flags, spec, trial, chosen))
    return weights / weights.sum()


def forward_selection(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec,
                      best: int, joined: Callable[[torch.Tensor, int], list[torch.Tensor]],
                      tune: Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, float]]
                      | None = None) -> torch.Tensor:
    """Members chosen forward on validation from ``best`` alone: each round tries every other
    member's ``joined(weights, member)`` weight vectors, keeps the one that raises the objective
    most (ties: the earlier member, then the earlier vector), and ``tune(weights, chosen)``
    refines it (new weights and objective; none: kept as tried); it stops where no member raises
    the objective or at ``spec.max_members``, so never below ``best`` alone. Returns the
    weights."""
    n = cands.values.shape[2]
    chosen, weights = [best], torch.eye(n)[best]
    value = objective(cands.fused(weights), flags, spec)
    while len(chosen) < min(n, spec.max_members or n):
        trials = [(objective(cands.fused(trial), flags, spec), member, trial)
                  for member in range(n) if member not in chosen
                  for trial in joined(weights, member)]
        top, member, trial = max(trials, key=lambda t: t[0])  # the first of equal values
        if top <= value + 1e-9:
            break
        chosen.append(member)
        weights, value = tune(trial, sorted(chosen)) if tune else (trial, top)
    return weights


def select_members(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec
                   ) -> tuple[torch.Tensor, list[float]]:
    """Reciprocal rank fusion's members (equal weights): with ``spec.rrf_members="selected"``,
    `forward_selection` from the best member alone, each member joining at the chosen ones'
    weight, so the fusion is never worse than its best member on validation; with ``"all"``,
    every member.

    Returns:
        the weights (1 / the number chosen for a chosen member, 0 otherwise) and each member's
        objective alone.
    """
    n = cands.values.shape[2]
    alone = objectives_alone(cands, flags, spec)
    if spec.rrf_members == "all":
        return torch.full((n,), 1.0 / n), alone

    def alike(weights: torch.Tensor, member: int) -> list[torch.Tensor]:
        joined = (weights > 0).float()
        joined[member] = 1.0
        return [joined / joined.sum()]

    return forward_selection(cands, flags, spec, int(np.argmax(alone)), alike), alone


def _coordinate_ascent(cands: Candidates, flags: tuple[torch.Tensor, ...], spec: FusionSpec,
                       weights: torch.Tensor, members: list[int]) -> tuple[torch.Tensor, float]:
    best = objective(cands.fused(weights), flags, spec)
    for _ in range(spec.max_passes):
        improved = False
        for member in members:
            for value in WEIGHT_GRID:
                trial = weights.clone()
                trial[member] = value
                if trial.sum() <= 0 or torch.equal(trial, weights):
                    continue
                score = objective(cands.fused(trial), flags, spec)
                if score > best + 1e-9:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best


def _fill_short_lists(items: torch.Tensor, ok: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Replace padding picks (a user with fewer candidates than the list length) by the most
    popular items not yet in that user's list, so every list has a valid item at every rank."""
    items = items.clone()
    for row in torch.nonzero(~ok.all(1)).flatten().tolist():
        present = set(items[row][ok[row]].tolist())
        extra = [i for i in order.tolist() if i not in present][: int((~ok[row]).sum())]
        items[row][~ok[row]] = torch.as_tensor(extra, dtype=items.dtype)
    return items


@dataclass
class Members:
    """The runs fused together and what they share (one protocol)."""

    runs: list[Run]
    group: RunGroup

    @property
    def first(self) -> Path:
        return self.runs[0].path

    @property
    def ks(self) -> list[int]:
        found = (re.fullmatch(r"test/ndcg@(\d+)", key) for key in self.runs[0].metrics)
        return sorted(int(match.group(1)) for match in found if match)


def member_sets(folders: list[Path | str]) -> list[Members]:
    """The finished runs under ``folders`` that can be fused, one set per protocol and seed.

    The leaderboard's groups also part runs by the seeds their model ran with (a model run with
    seeds 1 and 2 is not ranked beside one run with seed 1 alone); fusion works one seed at a
    time, so the runs of one protocol and seed form one set whichever group they are in."""
    runs = [r for r in find_runs(folders) if r.ok and not r.is_fusion
            and RunDir(r.path).rankings("val").exists()
            and RunDir(r.path).rankings("test").exists()]
    groups, _ = group_runs(runs)
    by_seed: dict[tuple, list[Run]] = {}  # (protocol's items, seed) -> runs
    for group in groups:
        for variant in group.variants.values():
            for run in variant:
                by_seed.setdefault((tuple(group.protocol.items()), run.seed), []).append(run)
    return [Members(members, RunGroup(dict(protocol), (seed,) if seed is not None else ()))
            for (protocol, seed), members in by_seed.items()]


def fuse(members: Members, spec: FusionSpec, out_dir: Path | str) -> RunRecord:
    """Fuse ``members`` into a run folder ``out_dir``; returns its metrics.json content."""
    if len(members.runs) < 2:
        raise ValueError(f"fusion needs at least two finished runs with rankings, found "
                         f"{len(members.runs)} ({[str(r.path) for r in members.runs]})")
    start = time.perf_counter()
    out = RunDir(Path(out_dir))
    first = RunDir(members.first)
    facts = members.runs[0].metrics
    info, stage_inputs = saved_facts(first, facts, int(facts["n_users"]))
    tail = info.tail_mask.numpy()
    labels = [r.label or r.model for r in members.runs]
    by_position = [r.reranked for r in members.runs]
    frames = {stage: [pd.read_parquet(RunDir(r.path).rankings(stage)) for r in members.runs]
              for stage in STAGES}
    targets = {stage: pd.read_parquet(first.targets(stage)) for stage in STAGES}
    every = candidates(frames["val"], spec, by_position)
    every_flags = every.flags(targets["val"], tail)
    choose = select_members if spec.method == "rrf" else tune_weights
    weights, alone = choose(every, every_flags, spec)
    # the lists come from the members with a say: a member at weight 0 adds no candidates
    used = [m for m in range(len(members.runs)) if weights[m] > 0]
    runs, used_weights = [members.runs[m] for m in used], weights[used]
    stages = {stage: every if stage == "val" and len(used) == len(members.runs) else
              candidates([frames[stage][m] for m in used], spec, [by_position[m] for m in used])
              for stage in STAGES}
    val_flags = (every_flags if stages["val"] is every
                 else stages["val"].flags(targets["val"], tail))
    fused_val = objective(stages["val"].fused(used_weights), val_flags, spec)
    log.info("%s of %d runs (%d with a weight): validation objective %.4f (best single %s %.4f)",
             spec.name, len(members.runs), len(used), fused_val, labels[int(np.argmax(alone))],
             max(alone))
    top_n = max(int(frames["test"][m]["rank"].max()) for m in used)
    order = torch.argsort(info.item_popularity, descending=True, stable=True)
    record = RunRecord(
        status="ok", model=spec.name, data=facts.get("data"), split=facts.get("split"),
        seed=facts.get("seed"), n_users=facts.get("n_users"), n_items=facts.get("n_items"),
        n_interactions=facts.get("n_interactions"),
        n_params=int(sum(r.metrics.get("n_params") or 0 for r in runs)),
        head_share=facts.get("head_share"), heavy_user_share=facts.get("heavy_user_share"),
        epochs=None, code=code_version())
    for stage in STAGES:
        cands = stages[stage]
        scores = cands.fused(used_weights)
        top = top_k(scores, min(top_n, scores.shape[1]))  # ties as the served fusion ranks them
        ok = torch.isfinite(top.values)
        ranked_items = cands.items.gather(1, top.indices)
        rankings = pd.DataFrame({
            "user": np.repeat(cands.users, ok.sum(1).numpy()),
            "rank": (torch.cumsum(ok.int(), 1)[ok]).numpy().astype(np.int32),
            "item": ranked_items[ok].numpy(), "score": top.values[ok].numpy()})
        artifacts.write_parquet(out.rankings(stage), rankings)
        lists = _fill_short_lists(ranked_items, ok, order)
        values, per_user = score_lists(lists, cands.users, targets[stage], members.ks, info,
                                       stage_inputs[stage])
        record.metrics.update({f"{stage}/{k}": v for k, v in values.items()})
        if stage == "test":
            artifacts.write_parquet(out.per_user_test, per_user)
    for source, copy in zip(first.protocol_files, out.protocol_files):
        if source.exists():
            shutil.copyfile(source, copy)
    fusion_seconds = time.perf_counter() - start
    record.train_seconds = round(fusion_seconds + sum(r.metrics.get("train_seconds") or 0
                                                      for r in runs), 4)
    record.fusion_seconds = round(fusion_seconds, 4)
    record.epoch_seconds = []

    def member_entry(m: int) -> dict:
        run = members.runs[m]
        return {"label": labels[m], "model": run.model, "run": _relative(run.path, out.path),
                "val_objective_alone": alone[m]}

    description = {
        "spec": asdict(spec), "name": spec.name,
        "weights": {label: float(w) for label, w in zip(labels, weights)},
        "members": [member_entry(m) | {"weight": float(weights[m]),
                                       "valued_by": "position" if by_position[m] else "score"}
                    for m in used],
        "left_out": [member_entry(m) for m in range(len(members.runs)) if m not in used],
        "val_objective": fused_val, "best_single_val_objective": max(alone),
        "best_single": labels[int(np.argmax(alone))], "top_n": top_n,
        "ks": members.ks, "normalization": None if spec.method == "rrf" else spec.normalization,
    }
    artifacts.write_json(out.fusion, description)
    out.write_record(record)
    return record


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve().parent))
    except ValueError:
        return str(path.resolve())


def fuse_sweep(folders: list[Path | str] | Path | str, spec: FusionSpec | None = None,
               out_dir: Path | str | None = None) -> list[Path]:
    """Fuse every protocol/seed set of runs under ``folders`` (a sweep folder, or several);
    returns the fusion folders.

    One set: ``<out_dir>``, by default ``<first folder>/<spec.name>``; several (a sweep over
    data or seeds): ``<out_dir>/<data>_<split>_s<seed>``.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    spec = spec or FusionSpec()
    sets = [s for s in member_sets(folders) if len(s.runs) >= 2]
    if not sets:
        raise ValueError(f"{', '.join(map(str, folders))}: no two finished runs with "
                         "rankings_val/test.parquet under one protocol, nothing to fuse")
    base = Path(out_dir) if out_dir else Path(folders[0]) / spec.name
    written = []
    for members in sets:
        out = base if len(sets) == 1 else base / members.group.slug
        fuse(members, spec, out)
        written.append(out)
    return written
