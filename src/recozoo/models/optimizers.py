"""Optimizers of the zoo's gradient models: one configurable ``optimizer`` for dense weights and a
``sparse_optimizer`` for the tables of ``nn.Embedding(sparse=True)`` modules, stepped as one
(`CombinedOptimizer`), so a step costs what a batch touches rather than the size of the tables."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


#: table rows (users + items) above which the tables get sparse gradients. A dense step's update
#: costs the tables' size, a sparse one's the batch's rows, so the crossover in speed was a number
#: of rows: bpr (batch 2048, training on one thread, fused Adam against `LazyAdam`'s tensor
#: operations), median epoch seconds of two alternating runs, sparse against dense: ml-100k
#: (2.6k rows) 0.13 / 0.10, Scientific (12.8k) 0.11 / 0.08, shops of 12.6k rows 0.21 / 0.16,
#: 34k 0.68 / 0.67, 65k 1.72 / 2.06 and 104k 2.68 / 4.57. Since bpr's sparse step is one compiled
#: pass (`recozoo.models.components.bpr_lazy_adam`) it is the faster at every size measured
#: (2026-12-06, 8 epochs each: ml-100k 0.043 / 0.066 s, the 10^5 shop's 12.6k rows 0.044 /
#: 0.078), and the threshold stays for quality: dense Adam also moves untouched rows by their
#: momentum, which validated better where both were run (Scientific, seeds 1-3: val NDCG@10
#: .0623 against .0611, test .0434 against .0430, best epoch sooner), at a cost of hundredths of a
#: second an epoch on tables this small. Checked again after the fused step (val NDCG@10 sparse
#: against dense): level on ml-100k (seeds 1-2 .2348/.2422 against .2349/.2424) and the shop
#: (.0858/.0909 against .0867/.0890); dense ahead on Scientific (.0610/.0610 against .0627/.0616)
#: and Online Retail (seed 1 .0525 against .0562).
SPARSE_ABOVE_ROWS = 40_000


def use_sparse(setting: bool | str, n_rows: int) -> bool:
    """Whether embedding tables of ``n_rows`` rows in all get sparse gradients: ``setting`` if
    it is a bool, else (``"auto"``) above `SPARSE_ABOVE_ROWS`."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"sparse must be true, false or 'auto', got {setting!r}")
    return n_rows > SPARSE_ABOVE_ROWS


#: optimizers with a fused implementation: the same update in one kernel per step instead of
#: several per parameter (a BPR step on ml-100k's tables: 0.20 ms against 0.40 ms, 1 thread)
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


#: the optimizer of a model whose config names none
DEFAULT_OPTIMIZER: OptimizerFactory = functools.partial(torch.optim.Adam, lr=1e-3)


def dense_optimizer(factory: OptimizerFactory | None, params: Any) -> torch.optim.Optimizer:
    """``factory(params)``, fused where that is the same update done faster.

    Adam and AdamW get ``fused=True`` when the config sets neither ``fused`` nor ``foreach`` and
    every parameter is a floating-point tensor on a CPU or CUDA device (``fused: false`` in the
    optimizer's config keeps PyTorch's default loop). Any other factory is called unchanged.

    Args:
        factory: partial optimizer (Hydra's ``_partial_: true``) or any callable on ``params``;
            None: `DEFAULT_OPTIMIZER`.
        params: parameters or parameter groups (dicts with ``"params"``).
    """
    factory = factory or DEFAULT_OPTIMIZER
    params = list(params)
    keywords = getattr(factory, "keywords", None)
    if getattr(factory, "func", None) in FUSABLE and keywords is not None and not (
            {"fused", "foreach"} & keywords.keys()):
        tensors = [t for p in params
                   for t in (p["params"] if isinstance(p, dict) else [p])]
        if tensors and all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                           for t in tensors):
            return factory(params, fused=True)
    return factory(params)


def grouped_optimizer(factory: OptimizerFactory | None, module: torch.nn.Module,
                      groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """`dense_optimizer` over ``module``'s trainable parameters, some of them in groups of
    their own.

    Args:
        factory: as for `dense_optimizer`.
        module: the model; every trainable parameter not in ``groups`` goes in the first group,
            at ``factory``'s settings.
        groups: parameter groups (dicts with ``"params"``) with their own settings: any the
            optimizer takes (``lr``, a ``name`` to find the group by), or ``lr_scale``, a learning
            rate that is a multiple of the first group's. Groups without parameters are dropped.

    Example:
        >>> grouped_optimizer(factory, model, [{"params": [users.weight], "lr_scale": 10.0}])
    """
    groups = [dict(group) for group in groups if group["params"]]
    own = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in own]
    scales = [group.pop("lr_scale", None) for group in groups]
    optimizer = dense_optimizer(factory, [{"params": rest}, *groups])
    base_lr = optimizer.param_groups[0]["lr"]
    for group, scale in zip(optimizer.param_groups[1:], scales):
        if scale is not None:
            group["lr"] = base_lr * scale
    return optimizer


def sparse_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable weights of ``module``'s ``nn.Embedding(sparse=True)`` tables (their
    gradients are sparse: the rows a batch looked up)."""
    return [m.weight for m in module.modules()
            if isinstance(m, torch.nn.Embedding) and m.sparse and m.weight.requires_grad]


def build_optimizer(module: torch.nn.Module, factory: OptimizerFactory | None = None,
                    sparse_factory: OptimizerFactory | None = None) -> torch.optim.Optimizer:
    """One optimizer for ``module``'s trainable parameters.

    Dense parameters go to ``factory`` (None: `DEFAULT_OPTIMIZER`), fused where that is the
    same update (`dense_optimizer`). Tables with sparse gradients
    (`sparse_parameters`) go to ``sparse_factory``, by default `LazyAdam` (SparseAdam's update) at the
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
    sparse = sparse_parameters(module)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in module.parameters() if p.requires_grad and id(p) not in sparse_ids]
    if not sparse:
        return dense_optimizer(factory, dense)
    if sparse_factory is None:
        lr = getattr(factory, "keywords", {}).get("lr", 1e-3)
        sparse_factory = functools.partial(LazyAdam, lr=lr)
    optimizers = [sparse_factory(sparse)] + ([dense_optimizer(factory, dense)] if dense else [])
    return optimizers[0] if len(optimizers) == 1 else CombinedOptimizer(optimizers)


def _evaluate(closure: Callable[[], Any] | None) -> Any:
    """An optimizer step's closure run with gradients on (steps run under ``no_grad``), as
    torch's optimizers do; its loss, or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LazyAdam(torch.optim.SparseAdam):
    """`torch.optim.SparseAdam`'s update ("lazy Adam": only the rows in a sparse gradient move,
    their moments decay, the others keep theirs), computed on the gathered rows.

    SparseAdam updates its dense moments and parameter through ``sparse_mask`` and
    dense-plus-sparse additions, generic operations that cost several times the rows they
    touch. This gathers the gradient's rows once (``index_select``), updates their moments
    there, and adds the changes back (``index_add_``). The state is SparseAdam's
    (``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints move between the two; the values
    are equal up to rounding (tests/test_sparse.py). One thread, the 10^6 shop's tables (57k
    users and 47k items of 64) at BPR's batch of 2,048 pairs with one negative: a bare step
    (lookup, loss, backward, update) 8.6-10.1 ms with SparseAdam, 5.0-5.5 with this; a whole
    bpr epoch there (490 steps) 3.9-5.0 s against 3.0-4.1 (two alternating runs of 3 epochs
    each). Only the gradients of 2-D tables (one sparse dimension, as
    ``nn.Embedding(sparse=True)`` makes them) are taken.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _evaluate(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not grad.is_sparse or grad.sparse_dim() != 1 or param.dim() != 2:
                    raise RuntimeError(
                        "LazyAdam takes the sparse gradients of 2-D tables (nn.Embedding with "
                        f"sparse=True); got a {'sparse' if grad.is_sparse else 'dense'} "
                        f"gradient of a {tuple(param.shape)} tensor; use Adam for dense ones")
                exp_avg, exp_avg_sq, step_size = self.next_step(param, group)
                self.count_step(param)
                grad = grad.coalesce()  # one entry per row: the update is not linear
                rows, values = grad.indices()[0], grad.values()
                if values.numel() == 0:
                    continue
                if group.get("maximize", False):
                    values = -values
                mean = exp_avg.index_select(0, rows)
                square = exp_avg_sq.index_select(0, rows)
                # the moments move by their changes, added in place: the rows are distinct, and
                # index_add_ writes a row faster than index_copy_ (4,015 rows of a 100,000 x 64
                # table, one thread: 182 against 269 us)
                mean_change = (values - mean).mul_(1 - beta1)
                square_change = torch.addcmul(square, values, values, value=-1).mul_(
                    beta2 - 1)  # (1 - beta2) (g^2 - v)
                exp_avg.index_add_(0, rows, mean_change)
                exp_avg_sq.index_add_(0, rows, square_change)
                mean.add_(mean_change)
                square.add_(square_change)
                # scaled first: index_add_ with an alpha took 3.5x as long (147 against 42 us)
                param.index_add_(0, rows, mean.div_(square.sqrt_().add_(group["eps"]))
                                 .mul_(-step_size))
        return loss

    def group_of(self, param: torch.Tensor) -> dict[str, Any]:
        """The parameter group that holds ``param``."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(f"LazyAdam: a {tuple(param.shape)} tensor is not one of its parameters")

    def next_step(self, param: torch.Tensor, group: dict[str, Any] | None = None) -> (
            tuple[torch.Tensor, torch.Tensor, float]):
        """``param``'s moments (``exp_avg``, ``exp_avg_sq``; zeros before its first step) and
        the bias-corrected step size of its next step, ``lr sqrt(1 - beta2^t) / (1 - beta1^t)``
        at that step's count t (``group``: ``param``'s, found if not given). `count_step` then
        counts the step: an update done elsewhere
        (`recozoo.models.components.bpr_lazy_adam`) reads and counts the same state as `step`."""
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        group = group or self.group_of(param)
        beta1, beta2 = group["betas"]
        step = state["step"] + 1
        step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        return state["exp_avg"], state["exp_avg_sq"], step_size

    def count_step(self, param: torch.Tensor) -> None:
        """Count a step of ``param`` (after `next_step`)."""
        self.state[param]["step"] += 1


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
        loss = _evaluate(closure)
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
