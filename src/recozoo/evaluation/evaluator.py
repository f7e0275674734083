"""`Evaluator`: everything that happens after a model has scored its users.

It is a Lightning callback beside the model, not a part of it: the model (`Recommender`) only
scores, and the evaluator ranks the scores (`Ranker`: masking, re-ranking, top-N), updates the
metric suites, scores cold-start items, keeps per-user values and the ranked lists for the run
folder, gathers them across DDP ranks and reports the values. A callback because that is how
Lightning lets one object follow the validation and test loops of any model without the model
knowing; it also makes an evaluation independent of how a model was trained (a GAN with manual
optimisation is evaluated by the same hooks as BPR).

Reported values: every value of a stage is in ``stage_metrics[stage]`` and goes to the loggers in
one ``log_metrics`` call. Only the keys a callback or a plateau scheduler monitors (checkpointing,
early stopping, ``model.lr_scheduler``) go through ``LightningModule.log`` into
``trainer.callback_metrics``: Lightning's per-key
bookkeeping costs about 2 ms a key and the suite has ~44 keys, more than evaluating a small
catalogue. So ``trainer.validate/test`` return only monitored keys; read ``stage_metrics``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MetricCollection

from recozoo.artifacts import STAGES, RunDir, StageListWriter
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.distributed import gather_objects, gather_tensors, on_any_rank, rank_and_world_size
from recozoo.evaluation.ranking import Ranker
from recozoo.metrics.ranking import PER_USER_METRICS, RankedBatch, inputs_per_group
from recozoo.metrics.suite import (
    RATING_METRICS,
    RankingSuite,
    parse_key,
    ranking_suite,
    rating_suite,
)
from recozoo.runtime import one_thread
from recozoo.training_callbacks import logging_step

#: what metrics.json's ``val_curve`` keeps of each validation inside the fit: these metrics at
#: every K (not per bucket), and the rating errors of models that predict ratings
CURVE_METRICS = ("ndcg", "recall", "tail_recall")


def curve_values(values: dict[str, float]) -> dict[str, float]:
    """The ``val_curve`` entries of a validation's values (``"val/ndcg@10"`` ...)."""
    kept = {}
    for key, value in values.items():
        parts = parse_key(key)
        if parts is None or parts["bucket"] is not None:
            continue
        if parts["name"] in (CURVE_METRICS if parts["k"] else RATING_METRICS):
            kept[key] = value
    return kept


def per_user_values(suite: RankingSuite, ranked: RankedBatch,
                    ks: list[int]) -> dict[str, torch.Tensor]:
    """``{"<name>@<k>": (B,)}`` per-user values of `PER_USER_METRICS`; NaN for a user the
    metric does not apply to (e.g. tail recall of a user without a tail target)."""
    out = {}
    for name in PER_USER_METRICS:
        for k in ks:
            value, weight = suite[f"{name}@{k}"].values(ranked)
            out[f"{name}@{k}"] = torch.where(weight > 0, value, torch.full_like(value, math.nan))
    return out


class Evaluator(L.Callback):
    """Evaluates a model in Lightning's validation and test loops.

    Args:
        ranker: how the model's scores become ranked lists (`Ranker`, with the run's re-ranker).
        ks: metric cut-offs (``eval.ks``).

    ``curve`` lists the validations inside ``trainer.fit``: the epoch each ran in (1-based), the
    optimiser steps before it and `curve_values` of its values (metrics.json's ``val_curve``). It
    is in the checkpoints, so a resumed run keeps the validations of its earlier sessions;
    loading a checkpoint restores the curve saved in it, so read it before loading the best one.

    After ``trainer.validate`` / ``trainer.test``: ``stage_metrics[stage]`` holds the values
    (``"val/ndcg@10"`` ...) and ``outputs[stage]`` the users, their top-N ``items`` and
    ``scores`` and, for the test stage, per-user metric values; under DDP every rank holds all
    users, in one-process order. With ``list_folder`` set, the lists and per-user values are
    streamed into that run folder's ``rankings_<stage>.parquet`` and ``per_user_test.parquet``
    batch by batch instead (bounded memory; ``outputs`` stays empty). The validations inside
    ``trainer.fit`` compute the metrics only, from the top ``max(ks)`` items (every metric is
    at a cut-off in ``ks``): no top-N lists are ranked, kept, gathered or written for them; so
    do the stages run inside `metrics_only` (a model's choice of settings on validation).
    """

    def __init__(self, ranker: Ranker, ks: list[int] | tuple[int, ...] = (10, 20)):
        self.ranker = ranker
        self.info: DatasetInfo = ranker.info
        self.ks = [int(k) for k in ks]
        info = self.info
        suite = ranking_suite(self.ks, info.n_items, info.n_users, info.item_popularity,
                              info.tail_mask, item_bucket=info.item_bucket,
                              heavy_users=info.heavy_users)
        if max(self.ks) > ranker.top_n:
            raise ValueError(f"metric cut-off K={max(self.ks)} is longer than the ranked lists "
                             f"(eval.top_n={ranker.top_n}); raise eval.top_n or lower eval.ks")
        self.suites: dict[str, RankingSuite] = {stage: suite.clone(prefix=f"{stage}/")
                                                    for stage in STAGES}
        # cold-start evaluation (eval.cold_items): the test metrics over the targets that are cold
        # items, for the users who have one, reported as test_cold/<name>@<k>
        self.cold_suite = (suite.clone(prefix="test_cold/") if info.cold_items is not None
                           else None)
        # rating errors of models that predict ratings, on both stages (val/rmse can stop
        # early and pick the checkpoint)
        self.rating_suites: dict[str, MetricCollection] = {
            stage: rating_suite().clone(prefix=f"{stage}/") for stage in STAGES}
        self.outputs: dict[str, dict[str, Any]] = {}
        #: a run folder to stream the lists of trainer.validate/test into (`StageListWriter`)
        #: instead of keeping them in ``outputs``
        self.list_folder: RunDir | None = None
        self._kept: dict[str, dict[str, list[torch.Tensor]] | StageListWriter] = {}
        self.stage_metrics: dict[str, dict[str, float]] = {}
        self.curve: list[dict[str, float]] = []
        self._facts: dict[str, torch.Tensor] = {}
        self._metrics_only = False  # `metrics_only`

    def state_dict(self) -> dict[str, Any]:
        return {"curve": [dict(entry) for entry in self.curve]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [dict(entry) for entry in state_dict.get("curve", [])]

    # ------------------------------------------------------------------ per batch
    def _item_facts(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor | None]:
        """(tail mask, bucket, cold items) on ``device``, moved once."""
        if self._facts.get("device") != device:
            info = self.info
            self._facts = {"device": device, "tail": info.tail_mask.to(device),
                           "bucket": info.item_bucket.to(device),
                           "cold": None if info.cold_items is None else
                           info.cold_items.bool().to(device)}
        return self._facts["tail"], self._facts["bucket"], self._facts["cold"]

    def evaluate_batch(self, model: torch.nn.Module, batch: EvalBatch, stage: str) -> None:
        """Rank one batch, update the stage's metrics and keep its outputs."""
        # the metrics read the top max(ks) items; the top-N lists are kept outside fit only
        depth = None if stage in self._kept else max(self.ks)
        items, values = self.ranker.rank(batch, depth)  # (B, top_n or max(ks))
        streamed = isinstance(self._kept.get(stage), StageListWriter)
        if streamed:  # the lists' file write runs beside this batch's metrics (a thread)
            self._keep(stage, {"user": batch.user.cpu(), "items": items.cpu(),
                               "scores": values.cpu()})
        with one_thread():  # the metrics are small operations (see `one_thread`)
            self._score_lists(model, batch, stage, items, values, streamed)

    def _score_lists(self, model: torch.nn.Module, batch: EvalBatch, stage: str,
                     items: torch.Tensor, values: torch.Tensor, streamed: bool) -> None:
        """Update the stage's metrics with a batch's ranked ``items`` (and their ``values``) and
        keep what the stage keeps (`evaluate_batch`'s second half)."""
        # every metric reads the top K of ks at most: scoring the rest of a kept top-N list
        # (100 deep by default) is wasted (ml-100k's test batch: the metric work 20 -> 16 ms)
        metric_items = items[:, :max(self.ks)]  # (B, max(ks))
        tail, bucket, cold = self._item_facts(items.device)
        target_rows, target_cols = batch.target_rows, batch.target_cols  # (T,) each
        n_inputs = batch.input_counts  # (B, 2)
        if n_inputs is None:
            n_inputs = inputs_per_group(batch.seen_rows, batch.seen_cols, len(batch), tail)
        n_inputs = n_inputs.to(items.device)
        ranked = RankedBatch.from_pairs(metric_items, target_rows, target_cols, tail, bucket,
                                        users=batch.user, n_inputs=n_inputs)
        suite = self.suites[stage]
        suite.update(ranked)
        if getattr(model, "predicts_ratings", False) and batch.target_rating is not None:
            users = batch.user[batch.target_rows]
            predicted = model.predict_rating(users, batch.target_cols)
            self.rating_suites[stage].update(predicted.float(), batch.target_rating.float())
        if stage in self._kept:  # not in a validation inside fit: nothing reads those lists
            # the lists, unless streamed above, and in a test the per-user values
            kept = {} if streamed else {"items": items, "scores": values}
            if stage == "test":
                kept.update(per_user_values(suite, ranked, self.ks))
            if kept:
                self._keep(stage, {"user": batch.user.cpu(),
                                   **{k: v.cpu() for k, v in kept.items()}})
        if stage == "test" and self.cold_suite is not None:
            is_cold = cold[target_cols]  # (T,)
            if is_cold.any():
                rows = torch.unique(target_rows[is_cold])  # users with a cold target
                row_of = torch.full((len(batch),), -1, dtype=torch.long, device=items.device)
                row_of[rows] = torch.arange(len(rows), device=items.device)
                self.cold_suite.update(RankedBatch.from_pairs(
                    metric_items[rows], row_of[target_rows[is_cold]], target_cols[is_cold], tail,
                    bucket, users=batch.user[rows], n_inputs=n_inputs[rows]))

    def _keep(self, stage: str, batch_outputs: dict[str, torch.Tensor]) -> None:
        """One batch's lists (and per-user values): streamed into ``list_folder`` or kept."""
        kept = self._kept[stage]
        if isinstance(kept, StageListWriter):
            kept.write(batch_outputs)
        else:
            for key, value in batch_outputs.items():
                kept.setdefault(key, []).append(value)

    # ------------------------------------------------------------------ per stage
    @contextlib.contextmanager
    def metrics_only(self) -> Iterator[None]:
        """Stages run inside compute the metrics only, as the validations inside fit do: for
        the validations that only compare (`recozoo.train.choose_on_validation`'s grid), whose
        top-100 lists nothing reads. EASE's choice of its L2 weight on ml-100k (its grid's
        validations, a top-100 8 ms of each 28 ms batch, a top-20 3 ms): 490-519 ms against
        537-564 (3 alternating runs)."""
        self._metrics_only, before = True, self._metrics_only
        try:
            yield
        finally:
            self._metrics_only = before

    def _start(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.outputs.pop(stage, None)
        self._kept.pop(stage, None)
        # a validation inside fit (or in `metrics_only`) keeps no lists
        if trainer.state.fn != TrainerFn.FITTING and not self._metrics_only:
            rank, world = rank_and_world_size()
            self._kept[stage] = ({} if self.list_folder is None else StageListWriter(
                self.list_folder, stage, part=rank if world > 1 else None))
        for metrics in (self.suites[stage], self.cold_suite, self.rating_suites[stage]):
            # moving a suite walks every state of every member (~1.5 ms) even when they are on
            # the device already, at every validation
            if metrics is None:
                continue
            parts = [metrics] if isinstance(metrics, RankingSuite) else metrics.values()
            if any(part.device != module.device for part in parts):
                metrics.to(module.device)

    def compute(self, stage: str) -> dict[str, float]:
        """The stage's metric values (synchronised across ranks); resets the suites and gathers
        the outputs. Every DDP rank must call it."""
        values = dict(self.suites[stage].compute())
        self.suites[stage].reset()
        # the ranker's score memory is reused batch after batch within a stage; between stages
        # (a training epoch) it would add its size to the training's peak
        self.ranker.free_scores_memory()
        # compute() synchronises across ranks, so every rank must take the same branch
        ratings = self.rating_suites[stage]
        if on_any_rank(any(m.update_called for m in ratings.values())):
            values.update(ratings.compute())
        ratings.reset()
        if stage == "test" and self.cold_suite is not None:
            if on_any_rank(self.cold_suite.update_called):
                values.update(self.cold_suite.compute())
            self.cold_suite.reset()
        kept = self._kept.pop(stage, None)
        if isinstance(kept, StageListWriter):
            kept.close()
            rank, world = rank_and_world_size()
            if world > 1:
                batches = gather_objects(kept.batches)  # also: every rank's part is complete
                if rank == 0:
                    kept.merge_parts(batches)
        elif kept is not None:
            gathered = gather_tensors({k: torch.cat(v) for k, v in kept.items()})
            if gathered:  # else no rank had users
                self.outputs[stage] = gathered
        return {k: float(v) for k, v in values.items()}

    def _publish(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        """Keep a stage's values, hand them to the loggers in one call, and put the keys that
        callbacks monitor into ``trainer.callback_metrics`` (see the module docstring)."""
        values = self.compute(stage)
        self.stage_metrics[stage] = values
        if (stage == "val" and trainer.state.fn == TrainerFn.FITTING
                and not trainer.sanity_checking):
            self.curve.append({"epoch": trainer.current_epoch + 1,
                               "step": logging_step(trainer), **curve_values(values)})
        monitored = {getattr(c, "monitor", None)
                     for c in [*trainer.callbacks, *trainer.lr_scheduler_configs]}
        for key in sorted(monitored.intersection(values)):
            module.log(key, values[key], sync_dist=False, logger=False)  # loggers: below
        if trainer.is_global_zero:
            fitting = trainer.state.fn == TrainerFn.FITTING
            for logger in trainer.loggers:
                logger.log_metrics({**values, "epoch": trainer.current_epoch},
                                   step=logging_step(trainer))
                if fitting:  # a log on disk after every epoch's validation
                    # trainer.validate/test: Lightning's finalize saves at the end of the call.
                    # Saved here, the CSV logger's rewrite of its file (the test keys are new
                    # columns) was timed as evaluation: ~10 ms of ml-100k's test stage
                    logger.save()

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start(trainer, module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start(trainer, module, "test")

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule,
                                outputs: Any, batch: EvalBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.evaluate_batch(module, batch, "val")

    def on_test_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                          batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate_batch(module, batch, "test")

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._publish(trainer, module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._publish(trainer, module, "test")
