"""Cold-start evaluation (`eval.cold_items`): held-out items never reach training, their test
rows are scored through the shared metric code as ``test_cold/<name>@<k>``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recozoo.data.interactions import Interactions
from recozoo.data.split import LeaveOneOut, hold_out_cold_items
from recozoo.evaluation import Evaluator, Ranker
from recozoo.models.base import ClosedFormRecommender
from recozoo.train import build_datamodule, train


def _interactions(n_users: int = 40, n_items: int = 20, per_user: int = 6) -> Interactions:
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    time = np.tile(np.arange(per_user), n_users).astype(float)
    return Interactions(user=user, item=item, timestamp=time, user_ids=np.arange(n_users),
                        item_ids=np.arange(n_items))


def test_cold_items_leave_training_and_validation_but_stay_in_test():
    data = _interactions()
    split = LeaveOneOut()(data, seed=3)
    held, cold = hold_out_cold_items(data, split, 0.25, seed=3)
    assert cold.sum() == 5
    assert not cold[data.item[held.train]].any()
    assert not cold[data.item[held.valid]].any()
    np.testing.assert_array_equal(held.test, split.test)
    # only cold rows were dropped
    assert len(held.train) == len(split.train) - cold[data.item[split.train]].sum()
    _, cold_again = hold_out_cold_items(data, split, 0.25, seed=3)
    np.testing.assert_array_equal(cold, cold_again)
    _, other = hold_out_cold_items(data, split, 0.25, seed=4)
    assert not np.array_equal(cold, other)


def test_cold_share_is_checked():
    data = _interactions()
    with pytest.raises(ValueError, match="eval.cold_items"):
        hold_out_cold_items(data, LeaveOneOut()(data, 0), 1.5, seed=0)


def test_datamodule_marks_cold_items_and_hides_them_from_inputs(make_config):
    dm = build_datamodule(make_config(["eval.cold_items=0.2"]))
    dm.setup()
    cold = dm.info.cold_items.numpy()
    assert cold.sum() == round(0.2 * dm.info.n_items)
    assert (dm.info.item_popularity.numpy()[cold] == 0).all()
    for stage in ("val", "test"):
        assert not cold[dm.eval_inputs[stage].items].any()
    assert not cold[dm.eval_targets["val"].items].any()
    assert cold[dm.eval_targets["test"].items].any()


def test_without_the_option_nothing_is_cold(make_config):
    dm = build_datamodule(make_config([]))
    dm.setup()
    assert dm.info.cold_items is None


class _ColdFirst(ClosedFormRecommender):
    """Ranks cold items above every warm item (a known answer for the cold metrics)."""

    def score(self, batch):
        return self.info.cold_items.float().expand(len(batch), -1) + 0.0


def test_cold_metrics_go_through_the_shared_evaluation(make_config):
    import lightning as L

    dm = build_datamodule(make_config(["eval.cold_items=0.05", "eval.ks=[20]"]))
    dm.setup()
    model = _ColdFirst(dm.info)
    evaluator = Evaluator(Ranker(model, dm.info, top_n=20), ks=[20])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, callbacks=[evaluator])
    trainer.test(model, datamodule=dm, verbose=False)
    result = evaluator.stage_metrics["test"]
    # 4 cold items, all in every top 20: every cold target is found
    assert result["test_cold/recall@20"] == pytest.approx(1.0)
    assert result["test_cold/hit@20"] == pytest.approx(1.0)
    assert result["test/recall@20"] < 1.0


def test_run_writes_cold_metrics_and_popularity_never_finds_cold_items(make_config):
    cfg = make_config(["model=pop", "eval.cold_items=0.2"])
    train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    for k in cfg.eval.ks:
        assert f"test_cold/ndcg@{k}" in metrics and f"test_cold/tail_recall@{k}" in metrics
    assert metrics["test_cold/recall@10"] == 0.0
    assert "test/ndcg@10" in metrics
