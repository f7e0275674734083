"""`Recommender`: the contract every model of the zoo fulfils.

A model differs from another only in

* ``train_view()``: what the DataModule serves it for training (pairs, user rows, sequences,
  or the whole interaction matrix for closed-form models);
* ``loss(batch)``, or its own ``training_step`` where it needs manual optimisation;
* ``score(batch) -> (B, n_items)``: a score for every item for every user of an `EvalBatch`.

The base class owns evaluation: it masks the user's input items, takes top-K per batch, updates
the shared metric suite, logs ``val/...`` and ``test/...``, and keeps what the run artifacts need
(top-N lists and per-user metrics).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import lightning as L
import torch
import torch.distributed as dist

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.metrics.ranking import PER_USER_METRICS, RankedBatch
from recozoo.metrics.suite import ranking_suite, rating_suite

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class Recommender(L.LightningModule):
    """Base LightningModule of every recommender.

    Args:
        info: dataset facts (sizes, popularity, tail mask, item text).
        optimizer: a partial optimizer (``_partial_: true`` in config) taking the parameters;
            Adam(lr=1e-3) when None. Ignored by models that fit in one step.
        eval_ks: metric cut-offs.
        top_n: length of the ranked lists kept per user for fusion and serving.
    """

    #: closed-form / counting models fit on one batch in one epoch (pop, itemknn, ease).
    fits_in_one_step: ClassVar[bool] = False
    #: models that predict explicit ratings implement ``predict_rating`` and set this.
    predicts_ratings: ClassVar[bool] = False

    def __init__(self, info: DatasetInfo, optimizer: OptimizerFactory | None = None,
                 eval_ks: tuple[int, ...] | list[int] = (10, 20), top_n: int = 100):
        super().__init__()
        self.save_hyperparameters(ignore=["info", "optimizer"])
        self.info = info
        self.n_users, self.n_items = info.n_users, info.n_items
        self.optimizer_factory = optimizer
        self.eval_ks = [int(k) for k in eval_ks]
        self.top_n = min(max(int(top_n), max(self.eval_ks)), info.n_items)
        self.register_buffer("item_popularity", info.item_popularity.float(), persistent=False)
        self.register_buffer("tail_mask", info.tail_mask.bool(), persistent=False)
        suite = ranking_suite(self.eval_ks, info.n_items, info.n_users, info.item_popularity,
                              info.tail_mask)
        self.val_metrics = suite.clone(prefix="val/")
        self.test_metrics = suite.clone(prefix="test/")
        self.test_rating_metrics = rating_suite().clone(prefix="test/")
        #: per stage: users, top-N items and scores, per-user metrics (filled during eval)
        self.eval_outputs: dict[str, dict[str, list[torch.Tensor]]] = {}

    # ------------------------------------------------------------------ to implement
    def train_view(self) -> TrainView:
        """The training data this model needs."""
        return TrainView("pairs")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch (models with automatic optimisation)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss() or training_step()")

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_items) scores, higher is better; seen items are masked by the caller."""
        raise NotImplementedError

    def predict_rating(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Predicted ratings for (user, item) pairs (models with ``predicts_ratings``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared losses
    # Every model trains through one of these two, so that loss-level options (e.g. popularity
    # debiasing) are implemented once, here, for all models.
    def pairwise_loss(self, pos_item: torch.Tensor, pos_score: torch.Tensor,
                      neg_item: torch.Tensor, neg_score: torch.Tensor) -> torch.Tensor:
        """BPR loss ``-log sigmoid(s_pos - s_neg)`` averaged over pairs.

        Args:
            pos_item: (B,) positive items; pos_score: (B,) their scores.
            neg_item: (B, n_neg) sampled negatives; neg_score: (B, n_neg) their scores.
        """
        return -torch.nn.functional.logsigmoid(pos_score[:, None] - neg_score).mean()

    def cross_entropy_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy over items; ``target`` entries of -100 are ignored.

        Args:
            logits: (N, n_items) scores; target: (N,) item indices.
        """
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["user"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"{type(self).__name__}: training loss is {loss.item()} at epoch "
                f"{self.current_epoch}, step {self.global_step} (batch {batch_idx}); lower the "
                "learning rate or check the data")

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        if self.fits_in_one_step:
            return None
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        return factory(self.parameters())

    # ------------------------------------------------------------------ evaluation
    def ranking_scores(self, batch: EvalBatch) -> torch.Tensor:
        """Scores with the user's input items set to -inf (what is ranked)."""
        scores = self.score(batch).float()
        if scores.shape != (len(batch), self.n_items):
            raise RuntimeError(f"{type(self).__name__}.score returned {tuple(scores.shape)}, "
                               f"expected ({len(batch)}, {self.n_items})")
        scores = scores.clone()
        scores[batch.seen_rows, batch.seen_cols] = -math.inf
        return scores

    def _evaluate(self, batch: EvalBatch, stage: str) -> None:
        scores = self.ranking_scores(batch)  # (B, n_items)
        targets = torch.zeros_like(scores)
        targets[batch.target_rows, batch.target_cols] = 1.0
        top = torch.topk(scores, self.top_n, dim=1)  # (B, top_n)
        ranked = RankedBatch.from_lists(top.indices, targets, self.tail_mask)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(ranked)
        out = self.eval_outputs.setdefault(stage, {"user": [], "items": [], "scores": []})
        out["user"].append(batch.user.cpu())
        out["items"].append(top.indices.cpu())
        out["scores"].append(top.values.cpu())
        if stage == "test":
            for name in PER_USER_METRICS:
                for k in self.eval_ks:
                    value, weight = metrics[f"{name}@{k}"].values(ranked)
                    value = torch.where(weight > 0, value, torch.full_like(value, math.nan))
                    out.setdefault(f"{name}@{k}", []).append(value.cpu())
            if self.predicts_ratings and batch.target_rating is not None:
                users = batch.user[batch.target_rows]
                predicted = self.predict_rating(users, batch.target_cols)
                self.test_rating_metrics.update(predicted.float(), batch.target_rating.float())

    def on_validation_epoch_start(self) -> None:
        self.eval_outputs.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.eval_outputs.pop("test", None)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        if stage == "test" and self.predicts_ratings and self.test_rating_metrics.update_called:
            values.update(self.test_rating_metrics.compute())
            self.test_rating_metrics.reset()
        self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=False)
        metrics.reset()
        self._gather_outputs(stage)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _gather_outputs(self, stage: str) -> None:
        """Concatenate the stage's outputs; under DDP every rank gets all users."""
        out = self.eval_outputs.get(stage)
        if not out:
            return
        local = {k: torch.cat(v) for k, v in out.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
            local = {k: torch.cat([p[k] for p in parts]) for k in local}
        self.eval_outputs[stage] = local  # type: ignore[assignment]

    # ------------------------------------------------------------------ helpers
    @property
    def n_params(self) -> int:
        """Trainable and fitted parameters (buffers of closed-form models count too)."""
        params = sum(p.numel() for p in self.parameters())
        fitted = sum(b.numel() for name, b in self.named_buffers(recurse=False)
                     if name not in ("item_popularity", "tail_mask"))
        return params + fitted
