"""Sparse row updates: BPR's tables get sparse gradients and a step moves only the rows of the
batch's users and items; `CombinedOptimizer` steps a sparse and a dense optimizer as one and
round-trips through a checkpoint; dense Adam is fused where that is the same update; BPR's
loss and gradients are its formula written out, through either lookup and in closed form."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from conftest import fit_briefly
from recozoo.models.optimizers import (
    CombinedOptimizer,
    LazyAdam,
    build_optimizer,
    dense_optimizer,
    sparse_parameters,
)


class _Mixed(torch.nn.Module):
    """A sparse table and a dense layer."""

    def __init__(self, sparse: bool = True):
        super().__init__()
        self.table = torch.nn.Embedding(50, 4, sparse=sparse)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.linear(self.table(rows)).pow(2).mean()


def _step(model: _Mixed, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
    optimizer.zero_grad()
    optimizer.step(lambda: model(rows).backward())


def test_a_step_moves_only_the_rows_in_the_batch_and_every_dense_parameter():
    torch.manual_seed(0)
    model = _Mixed()
    optimizer = build_optimizer(model, functools.partial(torch.optim.Adam, lr=0.1))
    assert isinstance(optimizer, CombinedOptimizer)
    assert [type(o) for o in optimizer.optimizers] == [LazyAdam, torch.optim.Adam]
    assert optimizer.param_groups[0]["lr"] == 0.1  # the sparse optimizer takes Adam's rate
    table, linear = model.table.weight.detach().clone(), model.linear.weight.detach().clone()
    rows = torch.tensor([3, 7, 7, 20])
    _step(model, optimizer, rows)
    moved = (model.table.weight != table).any(1)
    assert moved.nonzero().flatten().tolist() == [3, 7, 20]
    assert (model.linear.weight != linear).all()


def test_sparse_adam_matches_dense_adam_on_rows_every_batch_touches():
    """On rows present in every batch lazy Adam is Adam: the same trajectory."""
    torch.manual_seed(0)
    sparse, dense = _Mixed(sparse=True), _Mixed(sparse=False)
    dense.load_state_dict(sparse.state_dict())
    adam = functools.partial(torch.optim.Adam, lr=0.05)
    opt_sparse, opt_dense = build_optimizer(sparse, adam), build_optimizer(dense, adam)
    assert isinstance(opt_dense, torch.optim.Adam)  # no sparse table: the plain optimizer
    for _ in range(5):
        rows = torch.tensor([1, 2, 5])
        _step(sparse, opt_sparse, rows)
        _step(dense, opt_dense, rows)
    torch.testing.assert_close(sparse.table.weight[[1, 2, 5]], dense.table.weight[[1, 2, 5]])
    torch.testing.assert_close(sparse.linear.weight, dense.linear.weight)
    # rows never in a batch: dense Adam leaves them too (zero gradient, zero moments)
    torch.testing.assert_close(sparse.table.weight, dense.table.weight)


def test_lazy_adam_is_sparse_adams_update_and_shares_its_state():
    """`LazyAdam` computes torch.optim.SparseAdam's update on gathered rows: the same
    parameters and moments after steps with repeated rows, rows left out, a changed learning
    rate and ``maximize``; either loads the other's state and goes on alike."""
    torch.manual_seed(0)
    tables = {kind: torch.nn.Embedding(30, 6, sparse=True) for kind in ("torch", "lazy")}
    tables["lazy"].load_state_dict(tables["torch"].state_dict())
    optimizers = {"torch": torch.optim.SparseAdam(tables["torch"].parameters(), lr=0.05),
                  "lazy": LazyAdam(tables["lazy"].parameters(), lr=0.05)}
    batches = [torch.tensor([1, 4, 4, 9]), torch.tensor([4, 20, 1, 1, 29]), torch.tensor([0])]
    weights = torch.randn(6)

    def step(kind, rows):
        optimizers[kind].zero_grad()
        (tables[kind](rows) @ weights).pow(2).sum().backward()
        optimizers[kind].step()

    for i in range(7):
        if i == 4:
            for optimizer in optimizers.values():
                optimizer.param_groups[0].update(lr=0.2, maximize=True)
        for kind in tables:
            step(kind, batches[i % 3])
    torch.testing.assert_close(tables["lazy"].weight, tables["torch"].weight)
    state = {kind: optimizers[kind].state[tables[kind].weight] for kind in tables}
    assert state["lazy"]["step"] == state["torch"]["step"] == 7
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state["lazy"][key], state["torch"][key])
    # the state moves across: each continues from the other's
    swapped = {"torch": optimizers["lazy"].state_dict(), "lazy": optimizers["torch"].state_dict()}
    for kind in tables:
        optimizers[kind].load_state_dict(swapped[kind])
        step(kind, batches[1])
    torch.testing.assert_close(tables["lazy"].weight, tables["torch"].weight)
    with pytest.raises(RuntimeError, match="sparse gradients of 2-D tables"):
        dense = torch.nn.Linear(3, 1)
        dense(torch.ones(1, 3)).sum().backward()
        LazyAdam([dense.weight]).step()


def test_combined_optimizer_state_round_trips_and_refuses_another_layout():
    torch.manual_seed(0)
    model = _Mixed()
    optimizer = build_optimizer(model)
    _step(model, optimizer, torch.tensor([0, 1]))
    saved = optimizer.state_dict()
    again = build_optimizer(model)
    again.load_state_dict(saved)
    assert again.optimizers[0].state[model.table.weight]["step"] == 1
    assert set(again.state) == {model.table.weight, model.linear.weight, model.linear.bias}
    with pytest.raises(ValueError, match="expected 2"):
        again.load_state_dict({"optimizers": [saved["optimizers"][0]]})


def test_bpr_trains_with_sparse_tables_and_its_config_can_turn_them_off(make_config):
    _, model, trainer, _ = fit_briefly(make_config(["model=bpr", "model.batch_size=64",
                                                    "model.sparse=true",
                                                    "model.steps_per_load=2"]))
    assert len(sparse_parameters(model)) == 2
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, LazyAdam)  # BPR has no dense parameter
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    # three loaded batches of two steps each
    assert max(s["step"] for s in optimizer.state.values()) == 6 == trainer.global_step
    users_seen = (optimizer.state[model.user_embedding.weight]["exp_avg"] != 0).any(1)
    assert 0 < users_seen.sum() < model.n_users  # only the batches' users have moments
    _, dense, trainer, _ = fit_briefly(make_config(["model=bpr", "model.sparse=false"]))
    assert sparse_parameters(dense) == [] and isinstance(trainer.optimizers[0], torch.optim.Adam)


def test_sparse_auto_chooses_by_table_size(make_config):
    """``sparse: auto`` (bpr's default): dense below `SPARSE_ABOVE_ROWS` users + items, where a
    dense step is cheaper, sparse above; anything but true/false/auto is refused by name."""
    from recozoo.models.optimizers import SPARSE_ABOVE_ROWS, use_sparse

    assert not use_sparse("auto", SPARSE_ABOVE_ROWS) and use_sparse("auto", SPARSE_ABOVE_ROWS + 1)
    assert use_sparse(True, 10) and not use_sparse(False, 10**6)
    with pytest.raises(ValueError, match="sparse must be"):
        use_sparse("yes", 10)
    _, small, trainer, _ = fit_briefly(make_config(["model=bpr"]))  # the tiny test shop
    assert sparse_parameters(small) == [] and isinstance(trainer.optimizers[0], torch.optim.Adam)


@pytest.mark.parametrize("factory, fused", [
    (functools.partial(torch.optim.Adam, lr=0.01), True),
    (functools.partial(torch.optim.AdamW, lr=0.01), True),
    (None, True),  # the default optimizer
    (functools.partial(torch.optim.Adam, lr=0.01, fused=False), False),  # the config's choice
    (functools.partial(torch.optim.Adam, lr=0.01, foreach=True), None),
    (functools.partial(torch.optim.SGD, lr=0.01), None),  # no fused form: called unchanged
])
def test_dense_optimizer_fuses_adam_unless_the_config_chose(factory, fused):
    weights = [torch.nn.Parameter(torch.randn(5, 3))]
    optimizer = dense_optimizer(factory, weights)
    assert optimizer.param_groups[0].get("fused") is fused


def test_fused_adam_makes_the_same_update():
    torch.manual_seed(0)
    start = [torch.randn(40, 8), torch.randn(8)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(5)]
    results = []
    for factory in (functools.partial(torch.optim.Adam, lr=0.01, fused=False),
                    functools.partial(torch.optim.Adam, lr=0.01)):  # fused by dense_optimizer
        weights = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = dense_optimizer(factory, [{"params": weights[:1]},
                                              {"params": weights[1:], "lr": 0.1}])
        for step in grads:
            for w, g in zip(weights, step):
                w.grad = g.clone()
            optimizer.step()
        results.append([w.detach() for w in weights])
    for plain, fused, before in zip(*results, start):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(fused, before)  # the steps moved the weights


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n_negatives", [1, 3])
@pytest.mark.parametrize("ips", [False, True])
@pytest.mark.parametrize("closed_form", [False, True])
def test_bpr_loss_and_gradients_are_the_bpr_formula_written_out(sparse, n_negatives, ips,
                                                                closed_form):
    """``-mean log sigmoid(<p_u, q_i> - <p_u, q_j>)`` over every (positive, negative) pair
    (each positive's pairs weighted by its inverse propensity under IPS), plus the L2 term on
    the rows used, through the dense and the sparse lookup alike: by autograd (``loss``) and
    in closed form (``pair_gradients``, the training steps' path), repeated rows summed."""
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.bpr import BPR

    torch.manual_seed(0)
    info = DatasetInfo(name="tiny", n_users=6, n_items=9, item_popularity=torch.ones(9),
                       tail_mask=torch.zeros(9, dtype=torch.bool), head_share=0.2)
    model = BPR(info, embedding_dim=4, n_negatives=n_negatives, weight_decay=0.1, sparse=sparse)
    weight = torch.linspace(0.5, 2.0, 9)
    if ips:
        model.positive_weight = weight
    negatives = torch.tensor([[0, 2, 4], [5, 6, 7], [0, 1, 2], [4, 4, 0]])[:, :n_negatives]
    batch = {"user": torch.tensor([0, 2, 2, 5]), "item": torch.tensor([1, 3, 3, 8]),
             "negative": negatives}
    users = model.user_embedding.weight.detach().double().requires_grad_()
    items = model.item_embedding.weight.detach().double().requires_grad_()
    p, q_pos, q_neg = users[batch["user"]], items[batch["item"]], items[batch["negative"]]
    margin = (p * q_pos).sum(1, keepdim=True) - torch.einsum("bd,bnd->bn", p, q_neg)
    pair_loss = -torch.nn.functional.logsigmoid(margin).mean(1)  # (B,)
    if ips:
        pair_loss = pair_loss * weight[batch["item"]].double()
    expected = (pair_loss.mean()
                + 0.1 * (p.pow(2).sum() + q_pos.pow(2).sum() + q_neg.pow(2).sum()) / 4)
    expected.backward()
    if closed_form:
        loss = model.pair_gradients(batch)
    else:
        loss = model.loss(batch)
        loss.backward()
    torch.testing.assert_close(loss.detach().double(), expected.detach())
    for table, reference in ((model.user_embedding, users), (model.item_embedding, items)):
        assert table.weight.grad.is_sparse == sparse
        grad = table.weight.grad.to_dense() if sparse else table.weight.grad
        torch.testing.assert_close(grad.double(), reference.grad, rtol=1e-5, atol=1e-7)


def test_bpr_trains_alike_however_many_batches_are_loaded_at_once(make_config):
    """``steps_per_load`` changes how batches are served, not the training: an epoch makes one
    optimizer step per ``batch_size`` pairs either way, on the same pairs and negatives, to the
    same weights."""
    weights = {}
    for per_load in (1, 3):
        cfg = make_config(["model=bpr", "model.batch_size=64",
                           f"model.steps_per_load={per_load}"])
        datamodule, model, trainer, _ = fit_briefly(cfg, steps=1000, epochs=2)
        assert trainer.global_step == 2 * -(-len(datamodule.train) // 64)
        assert trainer.num_training_batches == -(-len(datamodule.train) // (64 * per_load))
        weights[per_load] = model.state_dict()
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[3][name], value, rtol=0, atol=0, msg=name)


def _tiny_bpr(n_negatives: int = 1, weight_decay: float = 0.0, ips: bool = False):
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.bpr import BPR

    info = DatasetInfo(name="tiny", n_users=40, n_items=60, item_popularity=torch.ones(60),
                       tail_mask=torch.zeros(60, dtype=torch.bool), head_share=0.2)
    model = BPR(info, embedding_dim=8, n_negatives=n_negatives, weight_decay=weight_decay,
                sparse=True)
    if ips:
        model.positive_weight = torch.linspace(0.5, 2.0, 60)
    return model


def _tables(model) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return model.user_embedding.weight, model.item_embedding.weight


@pytest.mark.parametrize("n_negatives,weight_decay,ips", [(1, 0.0, False), (3, 0.1, True)])
def test_the_fused_sparse_step_is_pair_gradients_then_lazy_adam(n_negatives, weight_decay, ips):
    """bpr's fused step (closed-form gradients and LazyAdam's row update in one compiled pass)
    leaves the tables, the moments and the step count where ``pair_gradients`` and
    ``LazyAdam.step`` leave them, over steps with repeated users and items, and returns the same
    loss; the unfused step then carries on from its state alike."""
    from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep

    torch.manual_seed(0)
    plain, fused = _tiny_bpr(n_negatives, weight_decay, ips), _tiny_bpr(n_negatives,
                                                                         weight_decay, ips)
    fused.load_state_dict(plain.state_dict())
    optimizers = {"plain": LazyAdam(_tables(plain), lr=0.05),
                  "fused": LazyAdam(_tables(fused), lr=0.05)}
    step = BprLazyAdamStep()
    assert step.applies(optimizers["fused"], *_tables(fused))
    before = fused.item_embedding.weight.detach().clone()
    for _ in range(6):
        batch = {"user": torch.randint(0, 40, (32,)), "item": torch.randint(0, 60, (32,)),
                 "negative": torch.randint(0, 60, (32, n_negatives))}
        expected = plain.pair_gradients(batch)
        optimizers["plain"].step()
        loss = step(optimizers["fused"], *_tables(fused), batch["user"], batch["item"],
                    batch["negative"], weight_decay, fused.positive_weight)
        assert loss == pytest.approx(float(expected), rel=1e-5)
        assert all(t.grad is None for t in _tables(fused))  # no sparse gradient was built
    assert not torch.equal(fused.item_embedding.weight, before)
    for table, reference in zip(_tables(fused), _tables(plain)):
        torch.testing.assert_close(table, reference, rtol=1e-5, atol=1e-6)
        state = optimizers["fused"].state[table]
        expected_state = optimizers["plain"].state[reference]
        assert state["step"] == expected_state["step"] == 6
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], expected_state[key], rtol=1e-5, atol=1e-9)
    batch = {"user": torch.tensor([0, 0, 5]), "item": torch.tensor([1, 2, 1]),
             "negative": torch.tensor([[3] * n_negatives, [4] * n_negatives, [3] * n_negatives])}
    for model, optimizer in ((plain, optimizers["plain"]), (fused, optimizers["fused"])):
        model.pair_gradients(batch)
        optimizer.step()
    for table, reference in zip(_tables(fused), _tables(plain)):
        torch.testing.assert_close(table, reference, rtol=1e-5, atol=1e-6)


def test_the_fused_step_moves_nothing_on_a_loss_that_is_not_finite():
    """A batch whose loss is not finite leaves the tables, the moments and the step count as
    they were (the model then reports it), and the next batch steps as if it had not come."""
    from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep

    torch.manual_seed(0)
    model, reference = _tiny_bpr(), _tiny_bpr()
    reference.load_state_dict(model.state_dict())
    optimizer, reference_optimizer = LazyAdam(_tables(model)), LazyAdam(_tables(reference))
    step = BprLazyAdamStep()
    good = [torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5], [6]])]
    step(optimizer, *_tables(model), *good)
    step(reference_optimizer, *_tables(reference), *good)
    with torch.no_grad():
        model.user_embedding.weight[9] = float("nan")
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    moments = optimizer.state[model.user_embedding.weight]["exp_avg"].clone()
    loss = step(optimizer, *_tables(model), torch.tensor([1, 9]), torch.tensor([7, 4]),
                torch.tensor([[5], [6]]))
    assert not math.isfinite(loss)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(optimizer.state[model.user_embedding.weight]["exp_avg"], moments)
    assert optimizer.state[model.item_embedding.weight]["step"] == 1
    with torch.no_grad():
        model.user_embedding.weight[9] = reference.user_embedding.weight[9]
    step(optimizer, *_tables(model), *good)
    step(reference_optimizer, *_tables(reference), *good)
    for table, expected in zip(_tables(model), _tables(reference)):
        torch.testing.assert_close(table, expected, rtol=0, atol=0)


def test_the_fused_step_refuses_rows_outside_the_tables_before_it_runs():
    """The compiled loops read memory unchecked: an index outside a table, or IPS weights of
    another catalogue, is refused with the tables and the optimizer's state untouched."""
    from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep

    model = _tiny_bpr()
    optimizer, step = LazyAdam(_tables(model)), BprLazyAdamStep()
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    users, positives, negatives = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4], [5]])
    with pytest.raises(IndexError, match="users: index 40 is out of range for a table of 40"):
        step(optimizer, *_tables(model), torch.tensor([0, 40]), positives, negatives)
    with pytest.raises(IndexError, match="positives: index -2 is out of range"):
        step(optimizer, *_tables(model), users, torch.tensor([-2, 3]), negatives)
    with pytest.raises(IndexError, match="negatives: index 60 is out of range"):
        step(optimizer, *_tables(model), users, positives, torch.tensor([[4], [60]]))
    with pytest.raises(ValueError, match=r"must be \(B,\), \(B,\) and \(B, n\)"):
        step(optimizer, *_tables(model), users, positives, negatives[:1])
    with pytest.raises(ValueError, match="59 positive weights for 60 items"):
        step(optimizer, *_tables(model), users, positives, negatives,
             positive_weight=torch.ones(59))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert not optimizer.state  # no step was counted


def test_the_fused_step_applies_only_where_it_is_lazy_adams_update():
    from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep

    model = _tiny_bpr()
    users, items = _tables(model)
    assert BprLazyAdamStep.applies(LazyAdam([users, items]), users, items)
    assert not BprLazyAdamStep.applies(torch.optim.SparseAdam([users, items]), users, items)
    assert not BprLazyAdamStep.applies(LazyAdam([users, items], maximize=True), users, items)
    assert not BprLazyAdamStep.applies(LazyAdam([users]), users, items)  # items not its own
    doubles = torch.nn.Parameter(items.detach().double())
    assert not BprLazyAdamStep.applies(LazyAdam([users, doubles]), users, doubles)


def test_bpr_trains_its_sparse_tables_with_the_fused_step_as_with_the_unfused_one(
        make_config, monkeypatch):
    """A fit with sparse tables steps them through the fused step (no sparse gradient is
    built), to the weights the unfused step reaches, up to rounding."""
    from recozoo.models.components.bpr_lazy_adam import BprLazyAdamStep

    cfg = make_config(["model=bpr", "model.batch_size=64", "model.sparse=true",
                       "model.steps_per_load=2"])
    _, fused, trainer, _ = fit_briefly(cfg, steps=4, epochs=2)
    assert all(t.grad is None for t in _tables(fused))
    assert trainer.global_step == 16 == trainer.optimizers[0].state[
        fused.item_embedding.weight]["step"]
    monkeypatch.setattr(BprLazyAdamStep, "applies", staticmethod(lambda *args: False))
    _, plain, _, _ = fit_briefly(cfg, steps=4, epochs=2)
    assert all(t.grad is not None and t.grad.is_sparse for t in _tables(plain))
    for table, reference in zip(_tables(fused), _tables(plain)):
        torch.testing.assert_close(table, reference, rtol=1e-4, atol=1e-6)
