"""Debiased training: IPS weights in the shared losses, popularity-aware negatives, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recozoo.debias import IPS, PopularityNegatives
from recozoo.train import build_datamodule, build_model

POPULARITY = torch.tensor([100.0, 25.0, 4.0, 1.0, 0.0])


def test_ips_weights_inverse_popularity_clipped_and_mean_one():
    ips = IPS(alpha=0.5, clip=0.15)
    propensity = ips.propensity(POPULARITY)
    assert propensity.tolist() == pytest.approx([1.0, 0.5, 0.2, 0.15, 0.15])
    weights = ips.loss_weights(POPULARITY)
    assert (weights[:-1] / weights[0]).tolist() == pytest.approx([1, 2, 5, 1 / 0.15])
    mean_over_interactions = (weights * POPULARITY).sum() / POPULARITY.sum()
    assert mean_over_interactions.item() == pytest.approx(1.0)
    assert torch.allclose(IPS(alpha=0.0).loss_weights(POPULARITY), torch.ones(5))
    with pytest.raises(ValueError, match="clip"):
        IPS(clip=0.0)


@pytest.fixture
def model(make_config):
    """A tiny BPR built from the real config, levers set by each test."""
    cfg = make_config(["model=bpr"])
    dm = build_datamodule(cfg)
    dm.setup()
    return build_model(cfg, dm.info)


def test_pairwise_loss_weights_each_positive(model):
    pos_item = torch.tensor([0, 1])
    pos_score = torch.tensor([2.0, 0.5])
    neg_item = torch.tensor([[2, 3], [3, 4]])
    neg_score = torch.tensor([[1.0, 0.0], [1.0, 0.5]])
    plain = model.pairwise_loss(pos_item, pos_score, neg_item, neg_score)
    per_pair = -torch.nn.functional.logsigmoid(pos_score[:, None] - neg_score)
    assert plain.item() == pytest.approx(per_pair.mean().item())
    ips = IPS()
    model.configure_debias(ips)
    weights = ips.loss_weights(model.item_popularity)
    weighted = model.pairwise_loss(pos_item, pos_score, neg_item, neg_score)
    expected = (per_pair.mean(1) * weights[pos_item]).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cross_entropy_loss_ips_and_logit_adjustment(model):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, model.n_items, generator=generator)
    target = torch.tensor([0, 5, -100, 7])
    keep = target != -100
    per_row = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
    assert model.cross_entropy_loss(logits, target).item() == pytest.approx(
        per_row.mean().item(), rel=1e-5)

    ips = IPS(alpha=1.0, clip=0.01)
    model.configure_debias(ips)
    weights = ips.loss_weights(model.item_popularity)[target[keep]]
    assert model.cross_entropy_loss(logits, target).item() == pytest.approx(
        (per_row * weights).sum().item() / 3, rel=1e-5)

    pop_neg = PopularityNegatives(exponent=0.75, tau=1.0)
    model.configure_debias(pop_neg)
    prior = (model.item_popularity + 1) / (model.item_popularity + 1).sum()
    adjusted = torch.nn.functional.cross_entropy(logits[keep] + prior.log(), target[keep])
    assert model.cross_entropy_loss(logits, target).item() == pytest.approx(
        adjusted.item(), rel=1e-5)
    # evaluation is untouched by debiasing
    model.configure_debias()
    assert model.positive_weight is None and model.logit_offset is None

    # a model's own weights per target give the weighted mean; ignored targets weigh nothing,
    # and inverse propensities multiply them
    own = torch.tensor([1.0, 0.0, 5.0, 3.0])
    assert model.cross_entropy_loss(logits, target, weight=own).item() == pytest.approx(
        (per_row * own[keep]).sum().item() / 4.0, rel=1e-5)
    model.configure_debias(ips)
    assert model.cross_entropy_loss(logits, target, weight=own).item() == pytest.approx(
        (per_row * own[keep] * weights).sum().item() / 4.0, rel=1e-5)
    model.configure_debias()


@pytest.mark.parametrize("debias", [None, IPS(alpha=1.0, clip=0.01),
                                    PopularityNegatives(exponent=0.75, tau=1.0)])
def test_cross_entropy_over_some_columns_is_the_full_one_with_the_rest_at_minus_inf(
        model, debias):
    """``columns``: the softmax over a subset of items, as the full loss with every other
    item's logit at -inf, debiasing and weights alike."""
    model.configure_debias(debias)
    generator = torch.Generator().manual_seed(1)
    columns = torch.tensor([0, 2, 5, 7, 9])
    logits = torch.randn(4, len(columns), generator=generator)
    target = torch.tensor([5, 0, -100, 9])
    full = torch.full((4, model.n_items), float("-inf"))
    full[:, columns] = logits
    own = torch.tensor([1.0, 2.0, 5.0, 0.5])
    for weight in (None, own):
        expected = model.cross_entropy_loss(full, target, weight=weight)
        got = model.cross_entropy_loss(logits, target, weight=weight, columns=columns)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    model.configure_debias()


def test_popularity_negatives_follow_popularity_and_skip_positives(make_config):
    cfg = make_config(["model=bpr", "debias=pop_neg", "debias.exponent=1.0"])
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(cfg, dm.info)
    assert isinstance(model.debias, PopularityNegatives) and model.logit_offset is not None
    users = np.repeat(dm.train.user[:50], 200)
    negatives = dm.sample_negatives(users, 1, np.random.default_rng(0))[:, 0]
    keys = set(zip(dm.train.user.tolist(), dm.train.item.tolist()))
    assert not any((u, i) in keys for u, i in zip(users.tolist(), negatives.tolist()))
    tail = dm.info.tail_mask.numpy()
    drawn_head = float((~tail[negatives]).mean())
    uniform = build_datamodule(make_config(["model=bpr"]))
    uniform.setup()
    drawn = uniform.sample_negatives(users, 1, np.random.default_rng(0))[:, 0]
    # exponent 1: the head's share of draws approaches its share of interactions (about 40% on
    # this tiny shop), against about its 20% share of items when uniform
    assert drawn_head > 1.5 * float((~tail[drawn]).mean())

def test_debias_ips_from_config(make_config):
    cfg = make_config(["model=bpr", "debias=ips", "debias.alpha=1.0"])
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(cfg, dm.info)
    assert isinstance(model.debias, IPS) and model.debias.alpha == 1.0
    assert model.positive_weight is not None and dm._negative_cdf is None
    popular = int(dm.info.item_popularity.argmax())
    rare = int(dm.info.item_popularity.argmin())
    assert model.positive_weight[rare] > model.positive_weight[popular]
