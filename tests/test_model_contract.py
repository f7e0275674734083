"""The contract every model passes, for every config in conf/model/ (no per-model code)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from conftest import fit_briefly, model_names


def _fit(cfg, steps: int = 3):
    return fit_briefly(cfg, steps)


@pytest.fixture(params=model_names())
def fitted(request, make_config):
    cfg = make_config([f"model={request.param}"])
    return (cfg, *_fit(cfg))


def test_scores_have_one_column_per_item(fitted):
    _cfg, dm, model, _, _ = fitted
    batch = dm.eval_batch("test", dm.eval_users["test"][:7])
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (7, dm.info.n_items)
    assert torch.isfinite(scores).all()


def test_seen_items_are_masked_and_targets_rankable(fitted):
    _cfg, dm, _model, _, evaluator = fitted
    users = dm.eval_users["test"][:16]
    batch = dm.eval_batch("test", users)
    with torch.no_grad():
        ranked = evaluator.ranker.scores(batch)
    assert torch.isinf(ranked[batch.seen_rows, batch.seen_cols]).all()
    assert torch.isfinite(ranked[batch.target_rows, batch.target_cols]).all()
    top = torch.topk(ranked, 10).indices
    seen = set(zip(batch.seen_rows.tolist(), batch.seen_cols.tolist()))
    assert not any((row, int(item)) in seen for row in range(len(users)) for item in top[row])


def test_deterministic_under_seed(fitted, make_config):
    cfg, dm, model, _, _ = fitted
    _, model2, _, _ = _fit(cfg)
    batch = dm.eval_batch("test", dm.eval_users["test"][:8])
    with torch.no_grad():
        assert torch.allclose(model.score(batch), model2.score(batch), atol=1e-5)


def test_same_scores_after_checkpoint_save_and_load(fitted, tmp_path):
    _cfg, dm, model, trainer, _ = fitted
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = type(model).load_from_checkpoint(path, info=dm.info, weights_only=True)
    restored.eval()
    batch = dm.eval_batch("test", dm.eval_users["test"][:8])
    with torch.no_grad():
        assert torch.allclose(model.score(batch), restored.score(batch), atol=1e-5)


def test_batch_and_single_user_scores_agree(fitted):
    _cfg, dm, model, _, _ = fitted
    users = dm.eval_users["test"][:5]
    with torch.no_grad():
        together = model.score(dm.eval_batch("test", users))
        alone = torch.cat([model.score(dm.eval_batch("test", users[i:i + 1]))
                           for i in range(len(users))])
    assert torch.allclose(together, alone, atol=1e-4)


class _Recorder(Logger):
    """A logger that keeps what it is handed."""

    def __init__(self):
        super().__init__()
        self.logged: dict[str, float] = {}

    name, version = "recorder", 0

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.logged.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_full_evaluation_logs_every_metric(fitted):
    cfg, dm, model, _trainer, evaluator = fitted
    recorder = _Recorder()
    import lightning as L
    tester = L.Trainer(logger=recorder, enable_progress_bar=False, enable_model_summary=False,
                       accelerator="cpu", callbacks=[evaluator])
    tester.test(model, datamodule=dm, verbose=False)
    result = evaluator.stage_metrics["test"]
    assert recorder.logged.keys() - {"epoch"} == result.keys()
    for k in cfg.eval.ks:
        for name in ("recall", "ndcg", "hit", "mrr", "precision", "map", "f1", "tail_recall",
                     "aplt", "coverage", "gini", "novelty", "arp"):
            value = result[f"test/{name}@{k}"]
            assert math.isfinite(value)
