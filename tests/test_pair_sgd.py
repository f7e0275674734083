"""BPR's per-triple SGD (`recozoo.models.components.pair_sgd`, ``model.solver=pair_sgd``): each
triple's step is SGD on that triple's loss at the rows as the earlier triples left them; it
trains, repeatably, and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch

from conftest import fit_briefly, train_and_test
from recozoo.data.datamodule import DatasetInfo
from recozoo.models.bpr import BPR
from recozoo.models.components.pair_sgd import LoopStep, bpr_pair_sgd


def _tiny_bpr(**kwargs) -> BPR:
    torch.manual_seed(0)
    info = DatasetInfo(name="tiny", n_users=5, n_items=7, item_popularity=torch.ones(7),
                       tail_mask=torch.zeros(7, dtype=torch.bool), head_share=0.2)
    model = BPR(info, embedding_dim=4, sparse=False, **kwargs)
    for table in (model.user_embedding.weight, model.item_embedding.weight):
        table.data.normal_(0, 0.5)  # margins far from 0, so the slopes differ between triples
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("ips", [False, True])
@pytest.mark.parametrize("n_negatives", [1, 2])
def test_each_triple_steps_sgd_on_its_own_closed_form_gradient_in_order(weight_decay, ips,
                                                                        n_negatives):
    """The loop equals, triple after triple, ``table -= lr * gradient`` with the gradient of
    `BPR.pair_gradients` on that one triple (a batch of one row and one negative) at the
    tables as the triples before it left them; repeated users and items (an item the positive
    of one triple and the negative of another) see each other's steps."""
    model = _tiny_bpr(weight_decay=weight_decay)
    if ips:
        model.positive_weight = torch.linspace(0.5, 2.0, 7)
    users = torch.tensor([0, 2, 2, 4, 0])
    positives = torch.tensor([1, 3, 3, 6, 5])
    negatives = torch.tensor([[5, 0], [1, 2], [6, 6], [3, 1], [1, 3]])[:, :n_negatives]
    lr = 0.3
    reference = _tiny_bpr(weight_decay=weight_decay)
    reference.positive_weight = model.positive_weight
    losses = []
    for row in range(len(users)):
        for column in range(n_negatives):
            one = {"user": users[row:row + 1], "item": positives[row:row + 1],
                   "negative": negatives[row:row + 1, column:column + 1]}
            decay_term = weight_decay * (
                reference.user_embedding.weight[one["user"]].pow(2).sum()
                + reference.item_embedding.weight[one["item"]].pow(2).sum()
                + reference.item_embedding.weight[one["negative"][0]].pow(2).sum())
            loss = reference.pair_gradients(one) - decay_term
            if ips:
                loss = loss / model.positive_weight[one["item"]]
            losses.append(loss.item())
            for table in (reference.user_embedding.weight, reference.item_embedding.weight):
                table.data.sub_(lr * table.grad)
    mean_loss = bpr_pair_sgd(model.user_embedding.weight, model.item_embedding.weight, users,
                             positives, negatives, lr, weight_decay, model.positive_weight)
    assert mean_loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    for ours, theirs in ((model.user_embedding, reference.user_embedding),
                         (model.item_embedding, reference.item_embedding)):
        torch.testing.assert_close(ours.weight.data, theirs.weight.data, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.item_embedding.weight, _tiny_bpr().item_embedding.weight)


def test_pair_sgd_refuses_tables_and_triples_it_cannot_step():
    model = _tiny_bpr()
    users, positives, negatives = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4], [5]])
    with pytest.raises(ValueError, match="user table must be a contiguous float32 CPU tensor"):
        bpr_pair_sgd(model.user_embedding.weight.double(), model.item_embedding.weight, users,
                     positives, negatives, 0.1)
    with pytest.raises(ValueError, match="item table must be"):
        bpr_pair_sgd(model.user_embedding.weight, model.item_embedding.weight.t(), users,
                     positives, negatives, 0.1)
    with pytest.raises(ValueError, match=r"must be \(B,\), \(B,\) and \(B, n\)"):
        bpr_pair_sgd(model.user_embedding.weight, model.item_embedding.weight, users,
                     positives, negatives[:1], 0.1)
    before = model.user_embedding.weight.clone()
    assert bpr_pair_sgd(model.user_embedding.weight, model.item_embedding.weight, users[:0],
                        positives[:0], negatives[:0], 0.1) == 0.0
    assert torch.equal(model.user_embedding.weight, before)
    # the loop reads memory unchecked: a row outside a table is refused before it runs
    tables = model.user_embedding.weight, model.item_embedding.weight
    n_items = len(tables[1])
    with pytest.raises(IndexError, match=f"negatives: index {n_items} is out of range"):
        bpr_pair_sgd(*tables, users, positives, torch.tensor([[4], [n_items]]), 0.1)
    with pytest.raises(IndexError, match="users: index -1 is out of range"):
        bpr_pair_sgd(*tables, torch.tensor([0, -1]), positives, negatives, 0.1)
    with pytest.raises(ValueError, match="positive weights for"):
        bpr_pair_sgd(*tables, users, positives, negatives, 0.1, positive_weight=torch.ones(2))
    assert torch.equal(model.user_embedding.weight, before)
    with pytest.raises(ValueError, match="model.solver must be one of"):
        _tiny_bpr(solver="hogwild")
    with pytest.raises(ValueError, match="model.pair_lr must be a positive number"):
        _tiny_bpr(solver="pair_sgd", pair_lr=0.0)


def test_bpr_with_pair_sgd_trains_repeatably_without_an_optimizer(make_config):
    """No optimizer state (the loop steps the tables itself; `LoopStep` only counts its steps
    for Lightning), and the same seed
    gives the same weights to the bit (one sequential loop, no thread races)."""
    overrides = ["model=bpr", "model.solver=pair_sgd", "model.batch_size=64"]
    _, model, trainer, _ = fit_briefly(make_config(overrides), steps=2, epochs=2)
    assert isinstance(trainer.optimizers[0], LoopStep) and not trainer.optimizers[0].state
    assert trainer.global_step == 4  # a step per loaded batch: checkpoints follow the count
    assert model.user_embedding.weight.grad is None  # no gradients: the loop steps the tables
    _, again, _, _ = fit_briefly(make_config(overrides), steps=2, epochs=2)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    _, shorter, _, _ = fit_briefly(make_config(overrides), steps=2, epochs=1)
    assert not torch.equal(shorter.item_embedding.weight, model.item_embedding.weight)
    with pytest.raises(ValueError, match="takes no scheduler"):
        fit_briefly(make_config(overrides + [
            "+model.lr_scheduler._target_=torch.optim.lr_scheduler.StepLR",
            "+model.lr_scheduler._partial_=true", "+model.lr_scheduler.step_size=1"]))


def test_pair_sgd_decays_its_rate_once_per_epoch(make_config, monkeypatch):
    """``model.pair_lr_decay``: every triple of epoch e steps at pair_lr * decay^e; settings
    it cannot honour are refused by name."""
    from recozoo.models import bpr as bpr_module

    rates = []

    def recording(*args):
        rates.append(args[5])  # bpr_pair_sgd's lr
        return bpr_pair_sgd(*args)

    monkeypatch.setattr(bpr_module, "bpr_pair_sgd", recording)
    overrides = ["model=bpr", "model.solver=pair_sgd", "model.batch_size=64",
                 "model.pair_lr=0.2", "model.pair_lr_decay=0.5"]
    fit_briefly(make_config(overrides), steps=2, epochs=3)
    assert rates == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    for decay in (0.0, 1.5):
        with pytest.raises(ValueError, match="model.pair_lr_decay must be in"):
            _tiny_bpr(solver="pair_sgd", pair_lr_decay=decay)
    with pytest.raises(ValueError, match="model.lr_scheduler instead"):
        _tiny_bpr(pair_lr_decay=0.9)  # the optimizer solver


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_pair_sgd_refuses_a_trainer_whose_tables_are_not_float32_before_training(make_config,
                                                                              precision):
    """A precision that casts the tables (or another device than the CPU) is refused when the
    fit sets up, with the setting named, not at the first batch."""
    import lightning as L

    from recozoo.train import build_experiment

    experiment = build_experiment(make_config(["model=bpr", "model.solver=pair_sgd"]))
    trainer = L.Trainer(max_epochs=1, precision=precision, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[experiment.evaluator])
    with pytest.raises(ValueError, match=f"runs on cpu with precision {precision}"):
        trainer.fit(experiment.model, datamodule=experiment.datamodule)
    assert trainer.global_step == 0


def test_bpr_with_pair_sgd_learns_beyond_popularity(tmp_path):
    """On the learning shop (tests/test_models_learn.py), the per-triple SGD ranks held-out
    items above popularity, as the default solver does."""
    def ndcg(overrides, epochs):
        experiment = train_and_test(overrides, tmp_path / overrides[0], epochs)
        return experiment.evaluator.stage_metrics["test"]["test/ndcg@10"]

    pop = ndcg(["model=pop"], 1)
    assert ndcg(["model=bpr", "model.solver=pair_sgd"], 30) > 1.05 * pop


def test_a_pair_sgd_run_tests_its_best_checkpoint(tmp_path):
    """train.py keeps the best validation's weights (Lightning saves checkpoints by its step
    count, which `LoopStep` advances) and tests those, as with any optimizer."""
    from conftest import compose_config
    from recozoo.train import train

    record = train(compose_config(["model=bpr", "model.solver=pair_sgd", "trainer.max_epochs=3",
                                   "model.batch_size=64", "eval.ks=[10]"], tmp_path))
    assert record["best_checkpoint"] is not None
    assert (tmp_path / record["best_checkpoint"]).exists()
