"""Sampled softmax with the log-Q correction for the sequential models: exact where the sample
is the whole catalogue, closer to the full softmax's gradient than without the correction, the
sampler draws from Q, and every sequential model scores a subset as it scores the catalogue."""

from __future__ import annotations

import pytest
import torch

from conftest import fit_briefly
from recozoo.data.contracts import DatasetInfo
from recozoo.models.base import Recommender
from recozoo.models.components.sequence import NegativeSampler
from recozoo.models.sequential import SAMPLED_SOFTMAX_ABOVE, SequentialRecommender

N_ITEMS = 30


def _recommender(popularity: torch.Tensor | None = None) -> Recommender:
    popularity = torch.arange(N_ITEMS, dtype=torch.float) if popularity is None else popularity
    info = DatasetInfo.from_popularity(name="t", n_users=4, item_popularity=popularity,
                                       head_share=0.2)
    return Recommender(info)


def test_sampled_loss_over_the_whole_catalogue_uniformly_is_the_full_softmax():
    torch.manual_seed(0)
    model = _recommender()
    logits = torch.randn(5, N_ITEMS)
    target = torch.tensor([0, 3, 3, 17, 29])
    negatives = torch.arange(N_ITEMS)  # each item once; a row's target is left out of its row
    log_q = torch.full((N_ITEMS,), -torch.log(torch.tensor(float(N_ITEMS))))
    sampled = model.sampled_cross_entropy_loss(logits.gather(1, target[:, None])[:, 0], logits,
                                               target, negatives, log_q)
    full = model.cross_entropy_loss(logits, target)
    torch.testing.assert_close(sampled, full)


def _mean_sampled_gradient(logits: torch.Tensor, target: torch.Tensor, sampler: NegativeSampler,
                           k: int, log_q: torch.Tensor, draws: int) -> torch.Tensor:
    model = _recommender()
    total = torch.zeros_like(logits)
    for _ in range(draws):
        x = logits.clone().requires_grad_(True)
        negatives = sampler(k)
        model.sampled_cross_entropy_loss(x.gather(1, target[:, None])[:, 0], x[:, negatives],
                                         target, negatives, log_q).backward()
        total += x.grad
    return total / draws


def test_log_q_correction_brings_the_gradient_to_the_full_softmax():
    """Popular items are drawn far more often; without the correction the sampled gradient
    pushes them down too hard (Bengio & Senecal; Yi et al.)."""
    torch.manual_seed(0)
    popularity = torch.linspace(0, 200, N_ITEMS) ** 2
    sampler = NegativeSampler(popularity, "popularity")
    logits, target = torch.randn(4, N_ITEMS), torch.tensor([1, 5, 20, 29])
    full = torch.softmax(logits, 1) - torch.nn.functional.one_hot(target, N_ITEMS)
    full = full / len(target)  # the mean over rows
    corrected = _mean_sampled_gradient(logits, target, sampler, 8, sampler.log_q, 400)
    uncorrected = _mean_sampled_gradient(logits, target, sampler, 8,
                                         torch.zeros(N_ITEMS), 400)
    error = (corrected - full).norm() / full.norm()
    assert error < 0.25
    assert error < 0.5 * (uncorrected - full).norm() / full.norm()


def test_the_sampler_draws_from_q():
    torch.manual_seed(0)
    popularity = torch.tensor([0.0, 1.0, 4.0, 9.0])
    sampler = NegativeSampler(popularity, "popularity")
    q = (popularity + 1) / (popularity + 1).sum()
    torch.testing.assert_close(sampler.log_q.exp(), q)
    counts = torch.bincount(sampler(100_000), minlength=4).float() / 100_000
    torch.testing.assert_close(counts, q, atol=0.01, rtol=0)
    uniform = NegativeSampler(popularity, "uniform")
    torch.testing.assert_close(uniform.log_q.exp(), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="got 'zipf'"):
        NegativeSampler(popularity, "zipf")


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_sequential_models_train_sampled_and_score_a_subset_as_the_catalogue(name, make_config):
    _, full, _, _ = fit_briefly(make_config([f"model={name}"]))
    assert not full.sampled_softmax  # a tiny catalogue: the full softmax by default
    assert full.n_items <= SAMPLED_SOFTMAX_ABOVE
    _, model, trainer, _ = fit_briefly(make_config([f"model={name}", "model.sampled_softmax=true",
                                                    "model.n_sampled=16"]))
    assert isinstance(model, SequentialRecommender) and model.sampled_softmax
    assert torch.isfinite(trainer.callback_metrics.get("train/loss", torch.tensor(0.0)))
    states = torch.randn(3, model.output_layer()[0].shape[1])
    items = torch.tensor([4, 0, 9, 4])
    with torch.no_grad():
        torch.testing.assert_close(model.item_logits(states, items),
                                   model.item_logits(states)[:, items])
        batch = {k: v for k, v in next(iter(trainer.datamodule.train_dataloader())).items()}
        model.train()
        assert torch.isfinite(model.loss(batch))
