"""`Recommender`: the contract every model of the zoo fulfils, and the losses they share.

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

import functools
import math
from typing import Any, Callable, ClassVar

import lightning as L
import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.debias import Debias
from recozoo.models.components.sequence import ItemEmbedding
from recozoo.training_callbacks import logging_step

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class Recommender(L.LightningModule):
    """Base LightningModule of every recommender.

    Args:
        info: dataset facts (sizes, popularity, tail mask, item text).
        optimizer: a partial optimizer (``_partial_: true`` in config) taking the parameters;
            Adam(lr=1e-3) when None.
        sparse_optimizer: a partial optimizer for the tables with sparse gradients
            (``nn.Embedding(sparse=True)``: only the rows a batch touches are updated); None:
            ``torch.optim.SparseAdam`` at ``optimizer``'s learning rate. See
            `configure_optimizers`.
    """

    #: models that predict explicit ratings implement ``predict_rating`` and set this.
    predicts_ratings: ClassVar[bool] = False
    #: True when ``score`` reads only the batch's history and seen items, never ``batch.user``:
    #: such a model can score a user unknown at training time from a given history (serving's
    #: cold-start path). Models with user embeddings leave it False.
    scores_new_users: ClassVar[bool] = False

    def __init__(self, info: DatasetInfo, optimizer: OptimizerFactory | None = None,
                 sparse_optimizer: OptimizerFactory | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["info", "optimizer", "sparse_optimizer"])
        self.info = info
        self.n_users, self.n_items = info.n_users, info.n_items
        self.optimizer_factory = optimizer
        self.sparse_optimizer_factory = sparse_optimizer
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

    def sampled_cross_entropy_loss(self, pos_logits: torch.Tensor, neg_logits: torch.Tensor,
                                   target: torch.Tensor, negatives: torch.Tensor,
                                   log_q: torch.Tensor) -> torch.Tensor:
        """Sampled softmax cross-entropy with the log-Q correction: the softmax over each target
        and ``k`` negatives drawn from ``Q`` (shared by the batch), each negative's logit lowered
        by ``log(k Q(item))``, so that ``sum_j exp(s_j) / (k Q(j))`` estimates the full
        softmax's normaliser (Bengio & Senecal, IEEE TNN 2008; Yi et al., "Sampling-Bias-
        Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019; the target
        keeps its logit, as in Blanc & Rendle, ICML 2018). A negative equal to the row's target
        is left out of that row. Debiasing acts as in ``cross_entropy_loss``.

        Args:
            pos_logits: (N,) scores of the targets; target: (N,) their items.
            neg_logits: (N, k) scores of the shared negatives; negatives: (k,) their items.
            log_q: (n_items,) log sampling probability of every item.
        """
        pos = pos_logits  # (N,)
        neg = neg_logits - log_q[negatives] - math.log(len(negatives))  # (N, k)
        if self.logit_offset is not None:
            pos, neg = pos + self.logit_offset[target], neg + self.logit_offset[negatives]
        neg = neg.masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        loss = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos  # (N,)
        if self.positive_weight is None:
            return loss.mean()
        return (loss * self.positive_weight[target]).mean()

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

    def configure_debias(self, debias: Debias | None = None) -> None:
        """Set the popularity debiasing of the shared losses (``debias=``; its negative sampler
        is set on the DataModule); None turns it off."""
        self.debias = debias
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

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        """``optimizer`` over the trainable parameters; the tables of ``nn.Embedding(sparse=True)``
        modules go to ``sparse_optimizer`` instead (both in one `CombinedOptimizer`), so a step
        costs what the batch touches rather than the size of the tables."""
        return build_optimizer(self, self.optimizer_factory, self.sparse_optimizer_factory)

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


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam(lr=1e-3): the optimizer of a model whose config names none."""
    return torch.optim.Adam(params, lr=1e-3)


def sparse_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable weights of ``module``'s ``nn.Embedding(sparse=True)`` tables (their
    gradients are sparse: the rows a batch looked up)."""
    return [m.weight for m in module.modules()
            if isinstance(m, torch.nn.Embedding) and m.sparse and m.weight.requires_grad]


def build_optimizer(module: torch.nn.Module, factory: OptimizerFactory | None = None,
                    sparse_factory: OptimizerFactory | None = None) -> torch.optim.Optimizer:
    """One optimizer for ``module``'s trainable parameters.

    Dense parameters go to ``factory`` (default Adam(lr=1e-3)). Tables with sparse gradients
    (`sparse_parameters`) go to ``sparse_factory``, by default ``torch.optim.SparseAdam`` at the
    learning rate of ``factory`` (its ``lr`` keyword): Adam's update restricted to the rows in the
    batch ("lazy Adam": rows not in a batch keep their moments and do not move). Dense Adam
    would touch every row of every table at every step, O(users + items) per step.

    Args:
        module: the model.
        factory: partial optimizer of the dense parameters.
        sparse_factory: partial optimizer of the sparse-gradient tables.

    Returns:
        ``factory``'s optimizer when there are no sparse tables, else a `CombinedOptimizer`.
    """
    factory = factory or default_optimizer
    sparse = sparse_parameters(module)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in module.parameters() if p.requires_grad and id(p) not in sparse_ids]
    if not sparse:
        return factory(dense)
    if sparse_factory is None:
        lr = getattr(factory, "keywords", {}).get("lr", 1e-3)
        sparse_factory = functools.partial(torch.optim.SparseAdam, lr=lr)
    optimizers = [sparse_factory(sparse)] + ([factory(dense)] if dense else [])
    return optimizers[0] if len(optimizers) == 1 else CombinedOptimizer(optimizers)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one (Lightning's automatic
    optimisation takes one optimizer per model): a sparse one for embedding tables with sparse
    gradients and a dense one for the rest.

    ``param_groups`` are the children's own group dicts, so learning-rate schedulers reach
    them; ``state_dict`` holds each child's state.

    Args:
        optimizers: the children, over disjoint parameters.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("CombinedOptimizer: the optimizers share parameters")
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        """Every child's per-parameter state (read-only view; the children own it)."""
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        """Ignored: `torch.optim.Optimizer.__init__` sets it; the children own the state."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (forward and backward), then step every child."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(f"CombinedOptimizer: the checkpoint holds "
                             f"{'no' if saved is None else len(saved)} optimizer state(s), "
                             f"expected {len(self.optimizers)} (was the model's `sparse` "
                             "setting changed since it was saved?)")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)


class ClosedFormRecommender(Recommender):
    """A model that fits in one step on the whole interaction matrix (pop, ItemKNN, EASE).

    It trains for one epoch on the ``matrix`` view, in full precision (counts and inverses need
    fp32), with no optimiser; subclasses fit in ``fit(matrix)`` and keep the result in buffers.
    """

    #: trainer settings every one-step fit runs with (`recozoo.train` applies them)
    trainer_overrides: ClassVar[dict[str, Any]] = {"max_epochs": 1, "precision": "32-true"}

    def __init__(self, info: DatasetInfo, **kwargs: Any):
        super().__init__(info, **kwargs)
        self.automatic_optimization = False

    def train_view(self) -> TrainView:
        return TrainView("matrix")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.fit(batch)

    def fit(self, batch: dict[str, torch.Tensor]) -> None:
        """Fit from the ``matrix`` view's batch (the whole training interaction matrix)."""

    def configure_optimizers(self) -> None:
        return None
