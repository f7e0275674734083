"""``model.lr_scheduler``: a learning-rate scheduler stepped after every validation, reading the
validation value it monitors even when no callback monitors it; refused for models that step
their own optimizers."""

from __future__ import annotations

import lightning as L
import pytest
from omegaconf import open_dict

from recozoo.train import build_experiment

PLATEAU = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True,
           "mode": "max", "factor": 0.5, "patience": 0,
           # no validation value is ever 10 better than the best: every epoch after the first
           # is a plateau
           "threshold": 10.0, "threshold_mode": "abs"}


def _fit(cfg, epochs: int) -> L.Trainer:
    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    # the evaluator alone: no early stopping or checkpoint callback monitors val/ndcg@10
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[experiment.evaluator])
    trainer.fit(experiment.model, datamodule=experiment.datamodule)
    return trainer


def _with_scheduler(cfg, scheduler: dict) -> None:
    with open_dict(cfg):
        cfg.model.lr_scheduler = scheduler


def test_plateau_scheduler_lowers_the_learning_rate_after_each_flat_validation(make_config):
    cfg = make_config(["model=bpr", "model.optimizer.lr=0.002"])
    _with_scheduler(cfg, PLATEAU)
    trainer = _fit(cfg, epochs=3)
    # epoch 1 sets the best; epochs 2 and 3 are flat: two halvings
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.002 * 0.25)
    assert "val/ndcg@10" in trainer.callback_metrics


def test_without_a_scheduler_the_learning_rate_stays(make_config):
    trainer = _fit(make_config(["model=bpr", "model.optimizer.lr=0.002"]), epochs=2)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.002)
    assert trainer.lr_scheduler_configs == []


def test_a_model_with_manual_optimisation_refuses_a_scheduler(make_config):
    cfg = make_config(["model=cfgan"])
    _with_scheduler(cfg, PLATEAU)
    with pytest.raises(ValueError, match="model.lr_scheduler: CFGAN steps its own optimizers"):
        _fit(cfg, epochs=1)
