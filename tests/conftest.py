"""Shared fixtures: compose the real Hydra config, shrunk to a tiny shop and a short run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
#: real datasets beside the checkout (tests using them skip when absent)
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: overrides that make any run tiny and quiet
TINY = [
    "data=shop", "data.source.n_users=150", "data.source.n_items=80",
    "data.source.sessions_per_user=3", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
]


def model_names() -> list[str]:
    """Every model config: the registry is conf/model/*.yaml."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def ranking_model_names() -> list[str]:
    """The model configs whose class ranks items (rating-only models, which predict ratings and
    are evaluated under the rating protocol, left out); composed, so inherited configs count."""
    from hydra.utils import get_class

    GlobalHydra.instance().clear()
    names = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in model_names():
            target = compose("train", overrides=[f"model={name}"]).model._target_
            if not getattr(get_class(target), "predicts_ratings", False):
                names.append(name)
    GlobalHydra.instance().clear()
    return names


def compose_config(overrides: list[str], output_dir: Path, tiny: bool = True) -> DictConfig:
    """The config `python train.py <overrides>` would run, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=(TINY if tiny else []) + overrides,
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(output_dir.parent / "cache")
        cfg.paths.log_dir = str(output_dir / "logs")
        del cfg.hydra
    return cfg


def fit_briefly(cfg: DictConfig, steps: int = 3, epochs: int = 1, validate: bool = False):
    """Build the data, model and evaluator of ``cfg`` and train ``steps`` batches a epoch (no
    validation unless ``validate``: then the trainer validates after each epoch and in
    ``trainer.validate``; no files); returns (datamodule, model in eval mode, trainer,
    evaluator)."""
    import lightning as L

    from recozoo.train import build_experiment

    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=steps,
                        limit_val_batches=None if validate else 0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[experiment.evaluator])
    trainer.fit(experiment.model, datamodule=experiment.datamodule)
    experiment.model.eval()
    return experiment.datamodule, experiment.model, trainer, experiment.evaluator


#: a generated shop small enough to train every model in seconds, large enough to learn from
LEARNING_SHOP = ["data.source.n_users=400", "data.source.n_items=150",
                 "data.source.sessions_per_user=4"]


def train_and_test(overrides: list[str], output_dir: Path, epochs: int, prepare=None):
    """Train ``overrides`` on `LEARNING_SHOP` for ``epochs`` epochs (no validation, no files)
    and test it; ``prepare(experiment)`` runs before the fit. Returns the experiment (test values
    in ``experiment.evaluator.stage_metrics["test"]``)."""
    import lightning as L

    from recozoo.train import build_experiment

    cfg = compose_config([*overrides, f"trainer.max_epochs={epochs}", *LEARNING_SHOP],
                         output_dir)
    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    if prepare is not None:
        prepare(experiment)
    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[experiment.evaluator])
    trainer.fit(experiment.model, datamodule=experiment.datamodule)
    trainer.test(experiment.model, datamodule=experiment.datamodule, verbose=False)
    return experiment


def train_and_read_choice(cfg: DictConfig, setting: str, validation: str):
    """``python train.py`` with ``cfg`` for a model that chooses a scoring-time ``setting`` on
    validation after training (``chosen_on_validation[setting]``, the value of each tried in
    ``chosen_on_validation[validation]``). Checks what every such run must hold: its reported
    val/ndcg@10 is the chosen setting's and metrics.json on disk keeps the choice. Returns
    ``(record, {setting tried: validation value}, the best checkpoint's state_dict, the model
    serving rebuilds from the run folder)``."""
    import torch

    from recozoo.artifacts import RunDir
    from recozoo.serve.loading import load_model
    from recozoo.train import train

    record = train(cfg)
    chosen = record.chosen_on_validation
    values = {float(w): v for w, v in chosen[validation].items()}
    assert record["val/ndcg@10"] == pytest.approx(values[chosen[setting]])
    run = RunDir(cfg.paths.output_dir)
    assert run.read_record().chosen_on_validation == chosen
    state = torch.load(run.path / record.best_checkpoint, map_location="cpu",
                       weights_only=False)["state_dict"]
    served, _ = load_model(run.path)
    return record, values, state, served.model


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(["model=ease"])`` -> a tiny composed config writing under tmp_path."""
    counter = iter(range(1000))

    def factory(overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
        return compose_config(overrides or [], tmp_path / f"run{next(counter)}", tiny=tiny)

    return factory


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
