"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking.

Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
User and item embeddings; for each observed (user, item) and a sampled unobserved item the loss
is ``-log sigmoid(s(u, i) - s(u, j))`` with ``s(u, i) = <p_u, q_i>``. Full-catalogue scores are
one matrix product.

The tables have sparse gradients above `SPARSE_ABOVE_ROWS` users + items (``sparse="auto"``, the
default; below it a dense update is cheaper): a step updates only the rows of the batch's users
and items (`recozoo.models.optimizers.LazyAdam`, SparseAdam's update; see
`recozoo.models.optimizers.build_optimizer`), so an epoch costs O(interactions) rather than
O(interactions x (users + items)) as with dense Adam over whole tables.

A training step's gradients are written in closed form, not by autograd (`BPR.pair_gradients`,
equal to autograd's up to rounding). With sparse tables and `LazyAdam` (the default
``sparse_optimizer``) in one process on the CPU, the gradients and the update of the rows they
touch run in one compiled pass instead (`recozoo.models.components.bpr_lazy_adam`; the same
values up to rounding): an epoch of the 10^6 shop 0.8 s against 2.0, of the 10^7 shop 10.5 s
against 23.7. The loader serves ``steps_per_load`` batches at once,
which the model takes in slices of ``batch_size``, one optimizer step each: Lightning's work per
batch and the collation's per-call costs are paid once for all of them. Under DDP the slices'
gradients come from autograd, whose backward averages them across processes. With a
``lr_scheduler`` (which Lightning steps for automatic optimisation only) the model trains with
automatic optimisation, one batch per step.

``solver="pair_sgd"`` trains instead as Rendle et al. and implicit do: one plain SGD step per
(user, positive, negative) triple, in order, in a loop compiled by Numba
(`recozoo.models.components.pair_sgd`), with no optimizer state. An epoch of the 10^6 shop takes
0.45 s against implicit's 0.16 and the default solver's 1.9 (the loop itself ~0.28), and the model
reaches its best validation in a tenth of the time, at a lower best on some data
(docs/benchmarks.md); ``pair_lr: auto`` scales the rate to the data's density
(`pair_learning_rate`).
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.distributed import per_rank_batch_size
from recozoo.models.base import Recommender
from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep, lazy_adam_kernel
from recozoo.models.components.lookup import embedding_rows
from recozoo.models.components.pair_sgd import LoopStep, bpr_pair_sgd, pair_sgd_kernel
from recozoo.models.optimizers import use_sparse

SOLVERS = ("optimizer", "pair_sgd")
#: Lightning precisions (as `Trainer.precision` names them: "16" and "bf16" become mixed, "64"
#: "64-true") that make the tables something else than float32 (mixed precisions keep float32
#: weights): pair_sgd refuses them before training rather than at its first batch
PAIR_SGD_REFUSED_PRECISIONS = frozenset({"16-true", "bf16-true", "64-true"})
#: ``pair_lr: auto``'s rate times the mean training pairs of a user or of an item, the larger:
#: the rows of the denser table then take about the same total step in an epoch whatever the
#: data (see `pair_learning_rate`)
PAIR_LR_PER_ROW_PAIRS = 3.0


def pair_learning_rate(setting: float | str, info: DatasetInfo) -> float:
    """``model.pair_lr``: a positive number, or "auto": `PAIR_LR_PER_ROW_PAIRS` over the mean
    training pairs per row of the denser table (users or items that have any)."""
    if setting == "auto":
        pairs = float(info.item_popularity.sum())
        items = int((info.item_popularity > 0).sum())
        users = (int((info.user_activity > 0).sum()) if info.user_activity is not None
                 else info.n_users)
        return PAIR_LR_PER_ROW_PAIRS * min(max(users, 1), max(items, 1)) / max(pairs, 1.0)
    if isinstance(setting, str) or not setting > 0:
        raise ValueError(f"model.pair_lr must be a positive number or 'auto', got {setting!r}")
    return float(setting)


class BPR(Recommender):
    """Matrix factorisation with the pairwise BPR loss.

    Args:
        embedding_dim: size of user and item embeddings.
        batch_size: training pairs per batch.
        n_negatives: sampled negatives per positive (the loss averages over them).
        weight_decay: L2 penalty on the embeddings used in a batch.
        sparse: sparse gradients for the tables (updated by ``sparse_optimizer``, only the
            rows a batch touches); False: dense gradients and ``optimizer`` for everything;
            "auto": sparse above `SPARSE_ABOVE_ROWS` users + items.
        steps_per_load: batches the loader serves at once, each an optimizer step of its own
            (the same steps as one batch per load); 1 with a ``lr_scheduler`` or ``ema_decay``.
        solver: "optimizer": batched closed-form gradients stepped by ``optimizer`` (and
            ``sparse_optimizer``); "pair_sgd": one SGD step per (user, positive, negative)
            triple at ``pair_lr``, in a compiled loop (`recozoo.models.components.pair_sgd`), with
            no optimizer; one process on the CPU, no ``lr_scheduler``.
        pair_lr: the learning rate of a triple's step with ``solver="pair_sgd"``.
        pair_lr_decay: with ``solver="pair_sgd"``, the rate of epoch e (from 0) is ``pair_lr
            * pair_lr_decay ** e``; 1 keeps it constant, as implicit does.
    """

    def __init__(self, info: DatasetInfo, embedding_dim: int = 64, batch_size: int = 2048,
                 n_negatives: int = 1, weight_decay: float = 0.0,
                 sparse: bool | str = "auto", steps_per_load: int = 8,
                 solver: str = "optimizer", pair_lr: float | str = "auto",
                 pair_lr_decay: float = 1.0, **kwargs):
        super().__init__(info, **kwargs)
        if steps_per_load < 1:
            raise ValueError(f"model.steps_per_load must be at least 1, got {steps_per_load}")
        if solver not in SOLVERS:
            raise ValueError(f"model.solver must be one of {SOLVERS}, got {solver!r}")
        if not 0.0 < pair_lr_decay <= 1.0:
            raise ValueError(f"model.pair_lr_decay must be in (0, 1] (1: a constant rate), got "
                             f"{pair_lr_decay}")
        if pair_lr_decay != 1.0 and solver != "pair_sgd":
            raise ValueError("model.pair_lr_decay decays model.solver=pair_sgd's rate; the "
                             "optimizer solver's rate follows model.lr_scheduler instead")
        self.solver, self.pair_lr = solver, pair_learning_rate(pair_lr, info)
        self.pair_lr_decay = pair_lr_decay
        sparse = use_sparse(sparse, info.n_users + info.n_items)
        self.batch_size, self.n_negatives, self.weight_decay = batch_size, n_negatives, weight_decay
        # Lightning steps a scheduler for automatic optimisation only: with one, the plain loop
        # (pair_sgd steps no optimizer, and `Recommender.setup` refuses the scheduler)
        self.automatic_optimization = (self.lr_scheduler_factory is not None
                                       and solver == "optimizer")
        # the weight average (ema_decay) is updated once per loaded batch: one step per load
        # keeps it an average over every step
        one_per_load = self.automatic_optimization or self.ema_decay is not None
        self.steps_per_load = 1 if one_per_load else steps_per_load
        self._fused_step = BprLazyAdamStep()
        self.user_embedding = nn.Embedding(info.n_users, embedding_dim, sparse=sparse)
        self.item_embedding = nn.Embedding(info.n_items, embedding_dim, sparse=sparse)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def train_view(self) -> TrainView:
        return TrainView("pairs", batch_size=self.batch_size, n_negatives=self.n_negatives,
                         steps_per_load=self.steps_per_load)

    def setup(self, stage: str) -> None:
        """Refuse pair_sgd where it cannot run (DDP, another device than the CPU, tables that
        are not float32), before any epoch, and compile the loop the solver steps with
        (pair_sgd's, or the fused sparse step's)."""
        super().setup(stage)
        if self.solver == "optimizer":
            if stage == "fit" and self.user_embedding.sparse:
                lazy_adam_kernel()
            return
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            raise ValueError("model.solver=pair_sgd trains in one process (its steps change the "
                             "tables in place, which DDP cannot average); use "
                             "model.solver=optimizer with trainer=ddp")
        if trainer is not None:
            device, precision = trainer.strategy.root_device, str(trainer.precision)
            if device.type != "cpu" or precision in PAIR_SGD_REFUSED_PRECISIONS:
                raise ValueError(
                    f"model.solver=pair_sgd steps float32 tables on the CPU (a compiled loop), "
                    f"but this trainer runs on {device.type} with precision {precision}; use "
                    "trainer=cpu with a 32-bit or mixed precision, or model.solver=optimizer")
        if stage == "fit":
            pair_sgd_kernel()

    def configure_optimizers(self) -> torch.optim.Optimizer | dict | None:
        if self.solver == "pair_sgd":  # the loop steps the tables; Lightning counts its steps
            return LoopStep([self.user_embedding.weight, self.item_embedding.weight])
        return super().configure_optimizers()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Automatic optimisation: the base's step. With ``solver="pair_sgd"``, one SGD step per
        triple of the loaded batch. Otherwise one optimizer step per slice of the loaded batch
        (a training batch each), with closed-form gradients in one process and autograd's under
        DDP; returns the slices' mean loss."""
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        if self.solver == "pair_sgd":
            loss = torch.tensor(bpr_pair_sgd(
                self.user_embedding.weight, self.item_embedding.weight, batch["user"],
                batch["item"], batch["negative"], self.epoch_pair_lr(), self.weight_decay,
                self.positive_weight))
            self.optimizers().step()  # a step for Lightning's count (checkpoints follow it)
            self.log_train({"train/loss": loss}, prog_bar=True, batch_size=len(batch["user"]))
            return loss
        optimizer = self.optimizers()
        world_size = self.trainer.world_size if self._trainer is not None else 1
        size = per_rank_batch_size(self.batch_size, world_size)
        n_rows = len(batch["user"])
        tables = self.user_embedding.weight, self.item_embedding.weight
        fused = (world_size == 1 and self.user_embedding.sparse
                 and BprLazyAdamStep.applies(optimizer.optimizer, *tables))
        losses = []
        for start in range(0, n_rows, size):
            part = {key: value[start:start + size] for key, value in batch.items()}
            if world_size > 1:
                optimizer.zero_grad()
                loss = self.loss(part)
                self.manual_backward(loss)
            elif fused:  # the tables move here; the optimizer's step below has no gradient
                loss = torch.tensor(self._fused_step(optimizer.optimizer, *tables, part["user"],
                                                     part["item"], part["negative"],
                                                     self.weight_decay, self.positive_weight))
                self._check_finite_loss(loss, f"batch {batch_idx}")
            else:
                loss = self.pair_gradients(part)
                self._check_finite_loss(loss, f"batch {batch_idx}")
            optimizer.step()
            losses.append(loss.detach())
        loss = torch.stack(losses).mean()
        self.log_train({"train/loss": loss}, prog_bar=True, batch_size=n_rows)
        return loss

    def epoch_pair_lr(self) -> float:
        """``solver="pair_sgd"``'s rate in the current epoch: ``pair_lr`` decayed by
        ``pair_lr_decay`` once per epoch before it. The epoch is Lightning's, restored with a
        checkpoint, so a resumed run steps at the rates of an uninterrupted one."""
        return self.pair_lr * self.pair_lr_decay ** self.current_epoch  # 0 without a trainer

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = embedding_rows(self.user_embedding, batch["user"])  # (B, d)
        # one lookup for positives and negatives: one table-sized gradient, not two
        items = embedding_rows(self.item_embedding,
                               torch.cat([batch["item"][:, None], batch["negative"]], 1))
        # one product for both, split afterwards: taking items[:, 0] and items[:, 1:] apart
        # costs their backward a zero-filled copy of the whole (B, 1 + n_neg, d) block each
        # (ml-100k, one thread: 53-55 ms per 40-step epoch of loss, backward and Adam against 68)
        scores = (user[:, None, :] * items).sum(-1)  # (B, 1 + n_neg)
        pos_score, neg_score = scores.split([1, scores.shape[1] - 1], dim=1)
        loss = self.pairwise_loss(batch["item"], pos_score.squeeze(1), batch["negative"],
                                  neg_score)
        if self.weight_decay:
            loss = loss + self.weight_decay * (user.pow(2).sum() + items.pow(2).sum()) / len(user)
        return loss

    @torch.no_grad()
    def pair_gradients(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`loss`'s gradients in closed form, written to the tables' ``.grad`` (sparse COO for
        sparse tables, as their lookup's backward makes them; dense sums in a fixed order
        otherwise); returns the loss.

        With ``x = s(u, i) - s(u, j)`` and ``c`` a pair's weight in the mean (its positive's
        inverse propensity under ``debias=ips``), ``dloss/dx = -c sigmoid(-x)``; a score's
        gradient is ``q`` for the user and ``p`` for the item. This skips autograd's graph and
        the lookups' backward: a step with fused Adam on ml-100k's tables (batch 2,048, one
        negative, one thread) took 0.95-1.06 ms against 1.44-1.70 through ``loss`` and
        ``backward`` (3 alternating sets of 40 steps).
        """
        users, positives, negatives = batch["user"], batch["item"], batch["negative"]
        n_rows, n_neg = negatives.shape
        user_table, item_table = self.user_embedding.weight, self.item_embedding.weight
        user = user_table.index_select(0, users)  # (B, d)
        positive = item_table.index_select(0, positives)  # (B, d)
        negative = item_table.index_select(0, negatives.reshape(-1))  # (B n, d)
        # x = <p_u, q_i - q_j>; one negative keeps every product (B, d) and contiguous, which
        # runs 2-4x faster than the broadcast (B, n, d) ones
        if n_neg == 1:
            diff = positive - negative  # (B, d)
            margin = (user * diff).sum(-1, keepdim=True)  # (B, 1)
        else:
            diff = positive[:, None, :] - negative.view(n_rows, n_neg, -1)  # (B, n, d)
            margin = (user[:, None, :] * diff).sum(-1)  # (B, n)
        weight = 1.0 / (n_rows * n_neg)  # a pair's share of the mean
        if self.positive_weight is not None:
            weight = self.positive_weight[positives][:, None] * weight  # (B, 1)
        loss = (torch.nn.functional.softplus(-margin) * weight).sum()  # -log sigmoid(x)
        slope = torch.sigmoid(-margin).mul_(weight)  # -dloss/dx, (B, n)
        if n_neg == 1:
            user_grad = diff.mul_(-slope)  # (B, d)
            positive_grad = user * -slope
            negative_grad = user * slope
        else:
            user_grad = (diff.mul_(-slope[:, :, None])).sum(1)
            positive_grad = user * -slope.sum(1, keepdim=True)
            negative_grad = (slope[:, :, None] * user[:, None, :]).view(n_rows * n_neg, -1)
        if self.weight_decay:
            loss = loss + self.weight_decay * (user.pow(2).sum() + positive.pow(2).sum()
                                               + negative.pow(2).sum()) / n_rows
            decay = 2 * self.weight_decay / n_rows
            user_grad.add_(user, alpha=decay)
            positive_grad.add_(positive, alpha=decay)
            negative_grad.add_(negative, alpha=decay)
        _set_row_gradient(self.user_embedding, [users], [user_grad])
        _set_row_gradient(self.item_embedding, [positives, negatives.reshape(-1)],
                          [positive_grad, negative_grad])
        return loss

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return batch.dot_scores(self.user_embedding(batch.user),
                                self.item_embedding.weight)  # (B, n_items)


def _set_row_gradient(embedding: nn.Embedding, indices: list[torch.Tensor],
                      values: list[torch.Tensor]) -> None:
    """The table's ``.grad`` for rows ``indices`` (repeats summed) with gradients ``values``:
    sparse COO, uncoalesced, for a table with sparse gradients (what its lookup's backward
    makes); else dense sums in index order (what `rows`'s backward makes)."""
    table = embedding.weight
    if embedding.sparse:
        index, value = (indices[0], values[0]) if len(indices) == 1 else (
            torch.cat(indices), torch.cat(values))
        table.grad = torch.sparse_coo_tensor(index[None], value, table.shape,
                                             check_invariants=False)
    else:
        table.grad = torch.zeros_like(table)
        for index, value in zip(indices, values):
            table.grad.index_add_(0, index, value)
