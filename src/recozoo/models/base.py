"""`Recommender`: the contract every model of the zoo fulfils.

A model differs from another only in

* ``train_view()``: what the DataModule serves it for training (pairs, user rows, sequences,
  or the whole interaction matrix for closed-form models);
* ``loss(batch)``, or its own ``training_step`` where it needs manual optimisation;
* ``score(batch) -> (B, n_items)``: a score for every item for every user of an `EvalBatch`.

The base class owns evaluation: it masks the user's input items, takes top-K per batch, updates
the shared metric suite, logs ``val/...`` and ``test/...``, and keeps what the run artifacts need
(top-N lists and per-user metrics).

Logged metrics: every value of a stage is in ``stage_metrics[stage]`` and goes to the loggers in
one ``log_metrics`` call. Only the keys a callback monitors (checkpointing, early stopping) go
through ``self.log`` into ``trainer.callback_metrics``: Lightning's per-key bookkeeping costs about
2 ms a key, and the suite has ~44 keys, which was more than the whole evaluation of a small
catalogue. So ``trainer.validate/test`` return only monitored keys; read ``stage_metrics``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import lightning as L
import torch
import torch.distributed as dist

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.data.popularity import popularity_buckets
from recozoo.debias import Debias
from recozoo.metrics.ranking import PER_USER_METRICS, RankedBatch
from recozoo.metrics.suite import ranking_suite, rating_suite
from recozoo.models.components.sequence import ItemEmbedding
from recozoo.rerank import ItemFacts, Reranker

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
    #: True when ``score`` reads only the batch's history and seen items, never ``batch.user``:
    #: such a model can score a user unknown at training time from a given history (serving's
    #: cold-start path). Models with user embeddings leave it False.
    scores_new_users: ClassVar[bool] = False

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
        bucket = torch.as_tensor(popularity_buckets(info.item_popularity.cpu().numpy(),
                                                    info.head_share))
        self.register_buffer("item_bucket", bucket, persistent=False)
        self.register_buffer("item_category", None if info.item_category is None else
                             info.item_category.long(), persistent=False)
        # long-tail levers, off unless `configure_long_tail` sets them (rerank=, debias=)
        self.reranker: Reranker | None = None
        self.debias: Debias | None = None
        self.register_buffer("positive_weight", None, persistent=False)  # (n_items,) IPS
        self.register_buffer("logit_offset", None, persistent=False)  # (n_items,) adjustment
        suite = ranking_suite(self.eval_ks, info.n_items, info.n_users, info.item_popularity,
                              info.tail_mask, item_bucket=bucket)
        self.val_metrics = suite.clone(prefix="val/")
        self.test_metrics = suite.clone(prefix="test/")
        self.test_rating_metrics = rating_suite().clone(prefix="test/")
        # cold-start evaluation (eval.cold_items): the test metrics over targets that are cold
        # items, for the users who have one, logged as test_cold/<name>@<k>
        self.register_buffer("cold_items", None if info.cold_items is None else
                             info.cold_items.bool(), persistent=False)
        self.test_cold_metrics = (suite.clone(prefix="test_cold/")
                                  if info.cold_items is not None else None)
        #: per stage: users, top-N items and scores, per-user metrics (filled during eval)
        self.eval_outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
        #: the last computed value of every metric, per stage ("val", "test")
        self.stage_metrics: dict[str, dict[str, float]] = {}

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
        """BPR loss ``-log sigmoid(s_pos - s_neg)`` averaged over pairs; under ``debias=ips``
        each positive's pairs are weighted by its inverse propensity (`recozoo.debias.IPS`).

        Args:
            pos_item: (B,) positive items; pos_score: (B,) their scores.
            neg_item: (B, n_neg) sampled negatives; neg_score: (B, n_neg) their scores.
        """
        loss = -torch.nn.functional.logsigmoid(pos_score[:, None] - neg_score)  # (B, n_neg)
        if self.positive_weight is None:
            return loss.mean()
        return (loss.mean(1) * self.positive_weight[pos_item]).mean()

    def cross_entropy_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy over items; ``target`` entries of -100 are ignored. Under
        ``debias=ips`` each target is weighted by its inverse propensity; under
        ``debias=pop_neg`` the logits get the popularity logit adjustment
        (`recozoo.debias.PopularityNegatives`).

        Args:
            logits: (N, n_items) scores; target: (N,) item indices.
        """
        if self.logit_offset is not None:
            logits = logits + self.logit_offset  # (N, n_items)
        if self.positive_weight is None:
            return torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100,
                                                 reduction="none")  # (N,)
        keep = target != -100
        weight = self.positive_weight[target.clamp(min=0)] * keep
        return (loss * weight).sum() / keep.sum().clamp(min=1)

    def multinomial_loss(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Multinomial negative log-likelihood of each user's row of items (Mult-VAE/DAE),
        summed over the user's items and averaged over users: the softmax cross-entropy of
        ``cross_entropy_loss`` for every (user, item) pair, with the same debiasing, computed
        in one (B, n_items) pass instead of one row per pair.

        Args:
            logits: (B, n_items) scores; rows: (B, n_items) 0/1 interaction rows.
        """
        if self.logit_offset is not None:
            logits = logits + self.logit_offset  # (B, n_items)
        log_prob = torch.log_softmax(logits, dim=1)  # (B, n_items)
        weights = rows if self.positive_weight is None else rows * self.positive_weight
        return -(log_prob * weights).sum() / len(rows)

    def configure_long_tail(self, reranker: Reranker | None = None,
                            debias: Debias | None = None) -> None:
        """Set the long-tail levers: a re-ranker applied to the top-N of every evaluation
        list (``rerank=``) and a popularity debiasing of the shared losses (``debias=``; the
        negative sampler is set on the DataModule). None turns a lever off."""
        self.reranker, self.debias = reranker, debias
        popularity = self.item_popularity
        weight = debias.loss_weights(popularity) if debias is not None else None
        offset = debias.logit_adjustment(popularity) if debias is not None else None
        self.positive_weight = None if weight is None else weight.to(popularity.device)
        self.logit_offset = None if offset is None else offset.to(popularity.device)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_train({"train/loss": loss}, prog_bar=True, batch_size=len(batch["user"]))
        return loss

    def log_train(self, values: dict[str, Any], **kwargs: Any) -> None:
        """``self.log_dict`` of per-step training values, skipped on steps whose logs no logger
        would record (``trainer.log_every_n_steps``): each call costs Lightning ~1-2 ms, a
        sizeable share of a small model's step."""
        trainer = self._trainer
        if trainer is not None:
            every = max(int(trainer.log_every_n_steps), 1)
            if (_logging_step(trainer) + 1) % every:
                return
        self.log_dict(values, **kwargs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._check_finite_loss(loss, f"batch {batch_idx}")

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``manual_backward``, refusing a NaN or infinite loss (manual-optimisation
        models such as GANs and Q-learners call this for each of their losses)."""
        self._check_finite_loss(loss, "manual optimisation")
        super().manual_backward(loss, *args, **kwargs)

    def _check_finite_loss(self, loss: Any, where: str) -> None:
        """Stop the run with a message naming the epoch, step and loss when it is not finite."""
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            value = loss.item() if loss.numel() == 1 else loss.detach().flatten()[:5].tolist()
            raise FloatingPointError(
                f"{type(self).__name__}: training loss is {value} at epoch "
                f"{self.current_epoch}, step {self.global_step} ({where}); lower the "
                "learning rate or check the data")

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        if self.fits_in_one_step:
            return None
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        return factory(self.parameters())

    # ------------------------------------------------------------------ evaluation
    def ranking_scores(self, batch: EvalBatch) -> torch.Tensor:
        """Scores with the user's input items set to -inf (what is ranked).

        Scoring runs outside mixed-precision autocast: in bf16 many of a catalogue's scores tie,
        and the metrics would depend on the training precision."""
        with torch.autocast(self.device.type, enabled=False):
            scores = self.score(batch).float()
        if scores.shape != (len(batch), self.n_items):
            raise RuntimeError(f"{type(self).__name__}.score returned {tuple(scores.shape)}, "
                               f"expected ({len(batch)}, {self.n_items})")
        scores = scores.clone()
        scores[batch.seen_rows, batch.seen_cols] = -math.inf
        return scores

    def item_embeddings(self) -> torch.Tensor | None:
        """(n_items, d) item vectors for similarity-based re-ranking (``rerank=mmr``), or None.

        Found by convention: the first `ItemEmbedding` module, or an ``nn.Embedding`` named
        ``item_embedding`` with n_items (or n_items + 1, padding last) rows. Models whose item
        vectors live elsewhere override this.
        """
        for name, module in self.named_modules():
            if isinstance(module, ItemEmbedding):
                return module.items
            if (isinstance(module, torch.nn.Embedding) and name.split(".")[-1] == "item_embedding"
                    and module.num_embeddings in (self.n_items, self.n_items + 1)):
                return module.weight[:self.n_items]
        return None

    def item_facts(self) -> ItemFacts:
        """What re-rankers know about items: tail mask, buckets, categories, embeddings."""
        return ItemFacts(tail_mask=self.tail_mask, bucket=self.item_bucket,
                         category=self.item_category, embeddings=self.item_embeddings())

    def ranked_lists(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, top_n) items and their scores, best first: the top of ``ranking_scores``, or,
        with a re-ranker, its re-ordering of the top ``candidates`` (the one path every
        evaluation takes)."""
        scores = self.ranking_scores(batch)  # (B, n_items)
        if self.reranker is None:
            top = torch.topk(scores, self.top_n, dim=1)  # (B, top_n)
            return top.indices, top.values
        n = min(max(self.reranker.candidates, self.top_n), self.n_items)
        top = torch.topk(scores, n, dim=1)  # (B, N)
        return self.reranker(top.indices, top.values, self.top_n, batch.history,
                             self.item_facts())

    def _evaluate(self, batch: EvalBatch, stage: str) -> None:
        items, values = self.ranked_lists(batch)  # (B, top_n)
        targets = torch.zeros(len(batch), self.n_items, device=items.device)
        targets[batch.target_rows, batch.target_cols] = 1.0
        ranked = RankedBatch.from_lists(items, targets, self.tail_mask, self.item_bucket)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(ranked)
        out = self.eval_outputs.setdefault(stage, {"user": [], "items": [], "scores": []})
        out["user"].append(batch.user.cpu())
        out["items"].append(items.cpu())
        out["scores"].append(values.cpu())
        if stage == "test" and self.test_cold_metrics is not None:
            cold_targets = targets * self.cold_items.to(targets.dtype)  # (B, n_items)
            rows = cold_targets.sum(1) > 0
            if rows.any():
                self.test_cold_metrics.update(RankedBatch.from_lists(
                    items[rows], cold_targets[rows], self.tail_mask, self.item_bucket))
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
        # compute() synchronises across DDP ranks, so every rank must take the same branch
        if stage == "test" and self.predicts_ratings and _on_any_rank(
                any(m.update_called for m in self.test_rating_metrics.values())):
            values.update(self.test_rating_metrics.compute())
            self.test_rating_metrics.reset()
        if stage == "test" and self.test_cold_metrics is not None:
            if _on_any_rank(any(m.update_called for m in self.test_cold_metrics.values())):
                values.update(self.test_cold_metrics.compute())
            self.test_cold_metrics.reset()
        self._publish(stage, {k: float(v) for k, v in values.items()})
        metrics.reset()
        self._gather_outputs(stage)

    def _publish(self, stage: str, values: dict[str, float]) -> None:
        """Keep a stage's metric values, hand them to the loggers in one call, and put the keys
        that callbacks monitor into ``trainer.callback_metrics`` (see the module docstring)."""
        self.stage_metrics[stage] = values
        trainer = self._trainer
        if trainer is None:
            return
        monitored = {getattr(c, "monitor", None) for c in trainer.callbacks}
        for key in sorted(monitored.intersection(values)):
            self.log(key, values[key], sync_dist=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({**values, "epoch": self.current_epoch},
                                   step=_logging_step(trainer))
                logger.save()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _gather_outputs(self, stage: str) -> None:
        """Concatenate the stage's outputs; under DDP every rank gets all users."""
        out = self.eval_outputs.get(stage)
        local = {k: torch.cat(v) for k, v in out.items()} if out else {}
        if _distributed():  # every rank joins, also one whose shard of users was empty
            parts: list[dict[str, torch.Tensor]] = [{}] * dist.get_world_size()
            dist.all_gather_object(parts, local)
            keys = next((p.keys() for p in parts if p), ())
            local = {k: torch.cat([p[k] for p in parts if p]) for k in keys}
        if local:
            self.eval_outputs[stage] = local  # type: ignore[assignment]

    # ------------------------------------------------------------------ helpers
    @property
    def n_params(self) -> int:
        """Trainable and fitted parameters (buffers of closed-form models count too)."""
        params = sum(p.numel() for p in self.parameters())
        fitted = sum(b.numel() for name, b in self.named_buffers(recurse=False)
                     if name not in ("item_popularity", "tail_mask", "item_bucket",
                                     "item_category", "positive_weight", "logit_offset"))
        return params + fitted


def _logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs at: batches that stepped an optimiser (the x-axis of every
    logger, for training and evaluation values alike)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _on_any_rank(flag: bool) -> bool:
    """True if ``flag`` holds on any DDP rank (plain ``flag`` in one process)."""
    if not _distributed():
        return flag
    gathered: list[bool] = [False] * dist.get_world_size()
    dist.all_gather_object(gathered, bool(flag))
    return any(gathered)
