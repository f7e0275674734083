"""Rating models (biased MF, SVD++): they recover known ratings, the ratings view serves them,
and the evaluator reports val/test RMSE and MAE that early stopping can follow."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recozoo.data.contracts import TrainView
from recozoo.data.datamodule import RecDataModule
from recozoo.data.interactions import Interactions
from recozoo.data.split import RandomRatioSplit
from recozoo.metrics.suite import higher_is_better
from recozoo.models.svd import BiasedMF
from recozoo.models.svdpp import SVDpp

N_USERS, N_ITEMS = 60, 40


class LowRankRatings:
    """Every rating of a rank-2 taste model plus user/item biases, on a 1-5 scale, for 70% of
    the (user, item) cells: a pattern a rating model must learn far better than the mean."""

    name = "low-rank"

    def load(self) -> Interactions:
        rng = np.random.default_rng(0)
        users, items = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij")
        users, items = users.ravel(), items.ravel()
        taste_u, taste_i = rng.normal(size=(N_USERS, 2)), rng.normal(size=(N_ITEMS, 2))
        bias_u, bias_i = rng.normal(0, 0.5, N_USERS), rng.normal(0, 0.5, N_ITEMS)
        rating = 3.0 + bias_u[users] + bias_i[items] + (taste_u[users] * taste_i[items]).sum(1)
        keep = rng.random(len(users)) < 0.7
        frame = pd.DataFrame({"user": users[keep], "item": items[keep],
                              "timestamp": rng.permutation(int(keep.sum())),
                              "rating": np.clip(rating[keep], 1, 5).astype(np.float32)})
        return Interactions.from_frame(frame, user_col="user", item_col="item",
                                       rating_col="rating", name=self.name)


@pytest.fixture(scope="module")
def ratings_data() -> RecDataModule:
    dm = RecDataModule(LowRankRatings(), split=RandomRatioSplit((0.8, 0.1, 0.1)), seed=0)
    dm.setup()
    return dm


def _fit(model: BiasedMF, dm: RecDataModule, epochs: int) -> None:
    torch.manual_seed(0)
    dm.use_view(model.train_view())
    optimizer = model.configure_optimizers()
    model.train()
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            model.loss(batch).backward()
            optimizer.step()
    model.eval()


def _test_rmse(model: BiasedMF, dm: RecDataModule) -> tuple[float, float]:
    """(model RMSE, RMSE of the global training mean) on the test ratings."""
    batch = dm.eval_batch("test", dm.eval_users["test"])
    with torch.no_grad():
        predicted = model.predict_rating(batch.user[batch.target_rows], batch.target_cols)
    truth = batch.target_rating
    baseline = dm.info.rating_mean
    return (float((predicted - truth).pow(2).mean().sqrt()),
            float((baseline - truth).pow(2).mean().sqrt()))


def test_ratings_view_serves_the_training_ratings(ratings_data):
    dm = ratings_data
    dm.use_view(TrainView("ratings", batch_size=10_000))
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["user"]) == len(dm.train)
    served = {(u, i): r for u, i, r in zip(batch["user"].tolist(), batch["item"].tolist(),
                                          batch["rating"].tolist())}
    expected = {(u, i): r for u, i, r in zip(dm.train.user.tolist(), dm.train.item.tolist(),
                                            dm.train.rating.tolist())}
    assert served == pytest.approx(expected)
    assert dm.info.rating_mean == pytest.approx(float(dm.train.rating.mean()))
    assert dm.info.rating_range == (float(dm.train.rating.min()), float(dm.train.rating.max()))


def test_ratings_view_without_ratings_rates_observed_1_and_negatives_0(make_config):
    from recozoo.train import build_datamodule
    dm = build_datamodule(make_config())  # the shop: implicit feedback
    dm.setup()
    dm.use_view(TrainView("ratings", batch_size=64, n_negatives=2))
    batch = next(iter(dm.train_dataloader()))
    positives, negatives = batch["rating"] == 1, batch["rating"] == 0
    assert positives.sum() == 64 and negatives.sum() == 128
    train_pairs = set(zip(dm.train.user.tolist(), dm.train.item.tolist()))
    assert all((u, i) in train_pairs for u, i in zip(batch["user"][positives].tolist(),
                                                     batch["item"][positives].tolist()))
    assert not any((u, i) in train_pairs for u, i in zip(batch["user"][negatives].tolist(),
                                                         batch["item"][negatives].tolist()))


@pytest.mark.parametrize("model_class", [BiasedMF, SVDpp])
def test_rating_model_recovers_known_ratings(model_class, ratings_data):
    dm = ratings_data
    model = model_class(dm.info, embedding_dim=8, batch_size=256, factor_decay=0.002,
                        optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    _fit(model, dm, epochs=60)
    rmse, baseline = _test_rmse(model, dm)
    assert baseline > 1.0  # the pattern is far from constant
    assert rmse < 0.5 * baseline


def test_predictions_are_clipped_to_the_training_range_and_scores_rank_them(ratings_data):
    dm = ratings_data
    model = BiasedMF(dm.info, embedding_dim=4)
    with torch.no_grad():
        model.global_bias.fill_(10.0)
        model.item_bias.weight[3] = -20.0
    model.eval()
    users = torch.tensor([0, 0])
    predicted = model.predict_rating(users, torch.tensor([0, 3]))
    low, high = dm.info.rating_range
    assert predicted.tolist() == pytest.approx([high, low])
    scores = model.score(dm.eval_batch("test", np.array([0])))  # (1, n_items)
    assert scores.shape == (1, dm.info.n_items)
    assert int(scores.argmin()) == 3



@pytest.mark.parametrize("model_class", [BiasedMF, SVDpp])
def test_scores_in_the_memory_a_batch_offers_are_the_biased_products(ratings_data, model_class):
    """Scores written into the memory an evaluation batch offers (the `Ranker`'s, reused) equal
    ``<p_u, q_i> + b_i + b_u + mu`` exactly, as in fresh memory."""
    dm = ratings_data
    torch.manual_seed(0)
    model = model_class(dm.info, embedding_dim=4).eval()
    with torch.no_grad():
        for bias in (model.item_bias.weight, model.user_bias.weight):
            bias.normal_()
        model.global_bias.fill_(3.5)
        batch = dm.eval_batch("test", np.array([0, 1, 2]))
        vectors = model.user_vectors(batch.user)
        expected = (vectors @ model.item_embedding.weight.T + model.item_bias.weight.T
                    + model.user_bias(batch.user) + model.global_bias)
        assert torch.equal(model.score(batch), expected)
        batch.scores_out = torch.full_like(expected, math.nan)
        scores = model.score(batch)
        assert scores.data_ptr() == batch.scores_out.data_ptr()
        assert torch.equal(scores, expected)

def test_svdpp_implicit_term_is_the_normalised_sum_over_training_items(ratings_data):
    dm = ratings_data
    model = SVDpp(dm.info, embedding_dim=3).eval()
    y = model.implicit_embedding.weight
    user = 5
    rated = np.unique(dm.train.item[dm.train.user == user])
    expected = y[torch.as_tensor(rated)].sum(0) / math.sqrt(len(rated))
    assert torch.allclose(model.implicit_term()[user], expected, atol=1e-6)


def test_evaluator_reports_rating_errors_on_val_and_test(make_config, shared_data):
    from conftest import fit_briefly
    cfg = make_config(["experiment=ratings", "model=svd", f"data.path={shared_data / 'ml-100k'}",
                       "trainer.max_epochs=1"], tiny=False)
    dm, model, _trainer, evaluator = fit_briefly(cfg, steps=5)
    import lightning as L
    for stage, run in (("val", L.Trainer.validate), ("test", L.Trainer.test)):
        tester = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                           accelerator="cpu", callbacks=[evaluator])
        run(tester, model, datamodule=dm, verbose=False)
        values = evaluator.stage_metrics[stage]
        batch = dm.eval_batch(stage, dm.eval_users[stage])
        with torch.no_grad():
            error = model.predict_rating(batch.user[batch.target_rows], batch.target_cols) \
                - batch.target_rating
        assert values[f"{stage}/rmse"] == pytest.approx(float(error.pow(2).mean().sqrt()), rel=1e-5)
        assert values[f"{stage}/mae"] == pytest.approx(float(error.abs().mean()), rel=1e-5)


def test_ratings_experiment_follows_val_rmse_in_its_direction(make_config):
    cfg = make_config(["experiment=ratings"], tiny=False)
    assert cfg.data.min_rating is None
    assert list(cfg.split.ratios) == [0.8, 0.1, 0.1]
    assert cfg.model._target_ == "recozoo.models.svdpp.SVDpp"
    for name in ("model_checkpoint", "early_stopping"):
        callback = cfg.callbacks[name]
        assert callback.monitor == "val/rmse"
        assert callback.mode == ("max" if higher_is_better(callback.monitor) else "min")
    assert make_config(["experiment=ratings", "model=svd"], tiny=False).model._target_ \
        == "recozoo.models.svd.BiasedMF"


def test_bench_ratings_summary_and_report():
    """The bench's ratings section: means and spreads per model over seeds, best RMSE first,
    and the report line that says whether the target is met."""
    from bench.ratings import summarise
    from bench.report import ratings_lines
    runs = [{"side": "recozoo", "model": "svdpp", "seed": s, "rmse": r, "mae": 0.7,
             "fit_seconds": 2.0, "test_seconds": 0.1} for s, r in ((0, 0.90), (1, 0.91))]
    runs += [{"side": "surprise", "model": "SVD", "seed": 0, "rmse": 0.93, "mae": 0.73,
              "fit_seconds": 1.0, "test_seconds": 0.2},
             {"side": "recozoo", "model": "svd", "seed": 0, "error": "failed"}]
    summary = summarise(runs)
    assert [(r["side"], r["model"]) for r in summary] == [("recozoo", "svdpp"),
                                                          ("surprise", "SVD")]
    assert summary[0]["rmse"] == pytest.approx(0.905)
    assert summary[0]["rmse_std"] == pytest.approx(0.00707, abs=1e-5)
    assert summary[1]["rmse_std"] is None
    text = "\n".join(ratings_lines({"protocol": "p", "seeds": [0, 1], "runs": runs,
                                    "summary": summary}))
    assert "svdpp, mean test RMSE 0.9050" in text and "met" in text


def test_svdpp_training_after_validation_ignores_the_eval_cache(ratings_data):
    """As Lightning restores training mode (``training`` set directly, no ``train()``), the
    implicit factors still get gradients."""
    model = SVDpp(ratings_data.info, embedding_dim=3).eval()
    model.implicit_term()  # validation fills the cache
    for module in model.modules():
        module.training = True
    batch = {"user": torch.tensor([0, 1]), "item": torch.tensor([0, 1]),
             "rating": torch.tensor([5.0, 1.0])}
    model.loss(batch).backward()
    assert model.implicit_embedding.weight.grad.abs().sum() > 0
