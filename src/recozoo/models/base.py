"""`Recommender`: the contract every model of the zoo fulfils (its shared losses are the
`recozoo.models.losses.SharedLosses` mixin, its optimizers `recozoo.models.optimizers`).

A model differs from another only in

* ``train_view()``: what the DataModule serves it for training (pairs, user rows, sequences,
  or the whole interaction matrix for closed-form models);
* ``loss(batch)``, or its own ``training_step`` where it needs manual optimisation;
* ``score(batch) -> (B, n_items)``: a score for every item for every user of an `EvalBatch`.

Everything after ``score`` (masking the inputs, re-ranking, top-N, metrics, per-user values, the
distributed gather, what is logged) belongs to `recozoo.evaluation.Evaluator`, a callback beside
the model. Non-gradient models (pop, ItemKNN, EASE) are `ClosedFormRecommender`s.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.debias import Debias
from recozoo.models.components.sequence import ItemEmbedding
from recozoo.models.losses import SharedLosses
from recozoo.models.optimizers import OptimizerFactory, SchedulerFactory, build_optimizer
from recozoo.training_callbacks import TrainThreads, logging_step

T = TypeVar("T")


class Recommender(SharedLosses, L.LightningModule):
    """Base LightningModule of every recommender.

    Args:
        info: dataset facts (sizes, popularity, tail mask, item text).
        optimizer: a partial optimizer (``_partial_: true`` in config) taking the parameters;
            Adam(lr=1e-3) when None.
        sparse_optimizer: a partial optimizer for the tables with sparse gradients
            (``nn.Embedding(sparse=True)``: only the rows a batch touches are updated); None:
            `recozoo.models.optimizers.LazyAdam` at ``optimizer``'s learning rate. See
            `configure_optimizers`.
        lr_scheduler: a partial learning-rate scheduler taking the optimizer, stepped after
            every validation (e.g. ``ReduceLROnPlateau``); None: a constant learning rate.
        lr_scheduler_monitor: the validation value a plateau scheduler reads.
        ema_decay: decay of an exponential moving average of the weights that validation,
            checkpoints, test and serving use instead of the trained weights (Lightning's
            ``WeightAveraging``, updated after every optimiser step; see
            `configure_callbacks`); None: the trained weights. An update costs one pass over
            every parameter, whatever the batch touched.
        train_threads: torch threads of the training epochs (`TrainThreads`); validation,
            test and serving keep the process's. For models whose steps are many small
            operations, which one thread runs faster than several that sleep between them;
            None: the process's setting throughout.
    """

    #: models that predict explicit ratings implement ``predict_rating`` and set this.
    predicts_ratings: ClassVar[bool] = False
    #: True when ``score`` reads only the batch's history and seen items, never ``batch.user``:
    #: such a model can score a user unknown at training time from a given history (serving's
    #: cold-start path). Models with user embeddings leave it False.
    scores_new_users: ClassVar[bool] = False

    def __init__(self, info: DatasetInfo, optimizer: OptimizerFactory | None = None,
                 sparse_optimizer: OptimizerFactory | None = None,
                 lr_scheduler: SchedulerFactory | None = None,
                 lr_scheduler_monitor: str = "val/ndcg@10", ema_decay: float | None = None,
                 train_threads: int | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["info", "optimizer", "sparse_optimizer",
                                          "lr_scheduler"])
        self.info = info
        self.n_users, self.n_items = info.n_users, info.n_items
        self.optimizer_factory = optimizer
        self.sparse_optimizer_factory = sparse_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_monitor = lr_scheduler_monitor
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must lie in [0, 1) or be null, got {ema_decay}")
        self.ema_decay = ema_decay
        self.train_threads = None if train_threads is None else TrainThreads(train_threads).threads
        self.register_buffer("item_popularity", info.item_popularity.float(), persistent=False)
        # popularity debiasing of the shared losses, off unless `configure_debias` sets it
        self.debias: Debias | None = None
        self.register_buffer("positive_weight", None, persistent=False)  # (n_items,) IPS
        self.register_buffer("logit_offset", None, persistent=False)  # (n_items,) adjustment

    # ------------------------------------------------------------------ to implement
    def train_view(self) -> TrainView:
        """The training data this model needs."""
        return TrainView("pairs")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch (models with automatic optimisation)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss() or training_step()")

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_items) scores, higher is better; seen items are masked by the caller. A factor
        model returns ``batch.dot_scores(user_vectors, item_table)``, which writes into memory
        the caller reuses batch after batch (`EvalBatch.dot_scores`)."""
        raise NotImplementedError

    def hold_weights(self) -> None:
        """Told that the weights will not change again (a loaded run being served): a model
        may keep what it derives from them instead of deriving it at every call (bert_finetune
        its catalogue's item vectors). Nothing by default."""

    def predict_rating(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Predicted ratings for (user, item) pairs (models with ``predicts_ratings``)."""
        raise NotImplementedError

    def choose_on_validation(self, validate: Callable[[], float]) -> dict[str, Any]:
        """Scoring-time settings chosen after training, with the best weights loaded.

        A model with such settings (e.g. `BertFinetune`'s ``posthoc_adjustment: auto``) tries
        each, calling ``validate()`` for the monitored validation value (higher is better) of
        the model as it then is, keeps its choice in its persistent state (train.py writes it
        into the best checkpoint, so the test, the run folder and serving score with it) and
        returns it for ``metrics.json``. Default: none ({})."""
        return {}

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        """Refuse a learning-rate scheduler that nothing would step: Lightning steps schedulers
        for automatic optimisation only."""
        if self.lr_scheduler_factory is not None and not self.automatic_optimization:
            raise ValueError(f"model.lr_scheduler: {type(self).__name__} steps its own "
                             "optimizers (manual optimisation) and takes no scheduler; set "
                             "model.lr_scheduler=null")

    def configure_callbacks(self) -> list[L.Callback]:
        """With ``ema_decay``, Lightning's ``WeightAveraging`` as an EMA: while fitting, validations
        score the average and checkpoints hold it as their ``state_dict`` (the trained weights
        beside it, for resuming), so the best checkpoint holds the average that validated best.

        Lightning calls this at every fit, validate and test and replaces the previous stage's
        callback: the instance of a test has no average of its own, so it neither swaps weights
        nor loads the trained ones back, and ``trainer.test(ckpt_path=best)`` scores the
        checkpoint's average (tests/test_weight_ema.py).

        With ``train_threads``, `TrainThreads` sets the torch threads of the training epochs."""
        callbacks: list[L.Callback] = []
        if self.train_threads is not None:
            callbacks.append(TrainThreads(self.train_threads))
        if self.ema_decay is not None:
            # Lightning's EMAWeightAveraging, updated every step, with torch's foreach EMA: its
            # own per-tensor update took 8.2 ms a step for multvae on ml-100k (2.4M
            # parameters), this 0.38
            callbacks.append(WeightAveraging(
                multi_avg_fn=ema_of_changing_tensors(self, self.ema_decay)))
        return callbacks

    def constant_tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers that training never changes (a frozen pretrained encoder):
        the weight average (``ema_decay``) leaves them as they are instead of averaging equal
        values every step. Default: none."""
        return []

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
            if (logging_step(trainer) + 1) % every:
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
        if not isinstance(loss, torch.Tensor):
            return
        # a scalar is read as a float: ~1 us a step where a tensor test and .all() cost ~20 us
        finite = math.isfinite(loss.item()) if loss.numel() == 1 else torch.isfinite(loss).all()
        if not finite:
            value = loss.item() if loss.numel() == 1 else loss.detach().flatten()[:5].tolist()
            raise FloatingPointError(
                f"{type(self).__name__}: training loss is {value} at epoch "
                f"{self.current_epoch}, step {self.global_step} ({where}); lower the "
                "learning rate or check the data")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any] | None:
        """``optimizer`` over the trainable parameters; the tables of ``nn.Embedding(sparse=True)``
        modules go to ``sparse_optimizer`` instead (both in one `CombinedOptimizer`), so a step
        costs what the batch touches rather than the size of the tables."""
        return self.with_lr_scheduler(
            build_optimizer(self, self.optimizer_factory, self.sparse_optimizer_factory))

    def with_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> (
            torch.optim.Optimizer | dict[str, Any]):
        """What ``configure_optimizers`` returns for ``optimizer``: the optimizer alone, or with
        ``lr_scheduler`` stepped after every validation on ``lr_scheduler_monitor``. Every model
        with automatic optimisation returns through here."""
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer),
                                 "monitor": self.lr_scheduler_monitor, "interval": "epoch"}}

    # ------------------------------------------------------------------ evaluation
    # Lightning runs its validation and test loops only for modules with these steps; the work
    # is done by the `recozoo.evaluation.Evaluator` callback.
    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """Nothing: the `Evaluator` callback ranks and measures every batch."""

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """Nothing: the `Evaluator` callback ranks and measures every batch."""

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

    @property
    def n_params(self) -> int:
        """Trainable and fitted numbers: everything a checkpoint saves (parameters and persistent
        buffers, such as a closed-form model's fitted matrix; dataset facts are not saved)."""
        return sum(t.numel() for t in self.state_dict().values())


def ema_of_changing_tensors(module: Recommender, decay: float) -> Callable[..., None]:
    """torch's foreach EMA (a ``multi_avg_fn`` of `torch.optim.swa_utils.AveragedModel`) that
    skips ``module.constant_tensors()``: their average stays the copy made at the first update,
    which is their value. For bert_finetune's frozen encoder (22.7M parameters) an update took
    25 ms a step on one loaded CPU thread, 8 ms with the skip (medians of 15).

    Tensors are matched by storage: the averaged model receives each live tensor detached, which
    shares its storage. Where it receives copies instead (an average kept on another device),
    nothing matches and every tensor is averaged, as without the skip."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
        constant = {tensor.data_ptr() for tensor in module.constant_tensors()}
        if constant:
            keep = [i for i, tensor in enumerate(current) if tensor.data_ptr() not in constant]
            averaged, current = [averaged[i] for i in keep], [current[i] for i in keep]
        if averaged:
            ema(averaged, current, num_averaged)

    return update


class ClosedFormRecommender(Recommender):
    """A model that fits in one step on the whole interaction matrix (pop, ItemKNN, EASE).

    It trains for one epoch on the ``matrix`` view, in full precision (counts and inverses need
    fp32), with no optimiser; subclasses fit in ``fit(matrix)`` and keep the result in buffers.
    """

    #: trainer settings every one-step fit runs with (`recozoo.train` applies them)
    trainer_overrides: ClassVar[dict[str, Any]] = {"max_epochs": 1, "precision": "32-true"}

    def __init__(self, info: DatasetInfo, **kwargs: Any):
        super().__init__(info, **kwargs)
        if self.ema_decay is not None:
            raise ValueError(f"model.ema_decay: {type(self).__name__} fits in one step, with "
                             "no optimiser steps to average over; set model.ema_decay=null")
        self.automatic_optimization = False
        self._derived: dict[str, tuple[tuple[tuple[weakref.ref, int], ...], Any]] = {}  # `derived`

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_derived": {}}  # weak references do not pickle; built again

    def train_view(self) -> TrainView:
        return TrainView("matrix")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.fit(batch)

    def fit(self, batch: dict[str, torch.Tensor]) -> None:
        """Fit from the ``matrix`` view's batch (the whole training interaction matrix)."""

    def configure_optimizers(self) -> None:
        return None

    def derived(self, name: str, sources: Sequence[torch.Tensor], build: Callable[[], T]) -> T:
        """``build()``, a value computed from the fitted ``sources`` (the weights in the form
        scoring reads them), kept under ``name`` and built again only once a source has changed:
        another tensor in its place or an in-place change (a refit, a state-dict load, a device
        move), so not once per evaluation batch. The sources are held by weak references, so a
        replaced tensor is freed and never mistaken for a new one at its address. Not saved in
        checkpoints."""
        kept = self._derived.get(name)
        if (kept is None or len(kept[0]) != len(sources)
                or any(ref() is not t or version != t._version
                       for (ref, version), t in zip(kept[0], sources))):
            key = tuple((weakref.ref(t), t._version) for t in sources)
            self._derived[name] = kept = (key, build())
        return kept[1]
