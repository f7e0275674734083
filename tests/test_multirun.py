"""Real multiruns through `train.py -m` in a subprocess: leaderboard, fusion, a failed job, W&B
offline runs, and an Optuna search that resumes from its sqlite storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CONF, ROOT, TINY, model_names

PYTHON = ROOT / ".venv" / "bin" / "python"


def multirun(tmp_path: Path, *overrides: str, sweep: str = "sweep") -> Path:
    """Run ``train.py -m`` on the tiny shop; returns the sweep folder."""
    extra = tmp_path / "extra_conf" / "model"
    extra.mkdir(parents=True, exist_ok=True)
    # a model config that cannot work: its job must fail without ending the sweep
    (extra / "ease_broken.yaml").write_text("_target_: recozoo.models.ease.EASE\nreg_weight: -1\n")
    sweep_dir = tmp_path / sweep
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    command = [str(PYTHON if PYTHON.exists() else sys.executable), "train.py", "-m",
               "--config-dir", str(extra.parent),
               *[o for o in TINY if not o.startswith("logger=")], *overrides,
               f"hydra.sweep.dir={sweep_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sweep_dir


def test_multirun_ends_with_leaderboard_fusion_and_wandb_runs(tmp_path):
    sweep = multirun(tmp_path, "model=pop,ease,bpr,ease_broken", "logger=wandb")
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "significance.csv",
                 "ndcg_by_model.png", "accuracy_vs_tail.png", "recall_by_popularity.png"):
        assert (sweep / name).stat().st_size > 0, name
    board = pd.read_csv(sweep / "leaderboard.csv").set_index("model")
    assert board.loc["ease_broken", "status"] == "failed"
    assert "reg_weight" in board.loc["ease_broken", "error"]
    assert board.loc["fusion", "status"] == "ok"
    assert board.loc["fusion", "test/ndcg@10"] > 0
    assert set(board.index) == {"pop", "ease", "bpr", "ease_broken", "fusion"}
    assert (sweep / "fusion" / "fusion.json").exists()
    # W&B: one offline run per job that trained, each its own run; one leaderboard run
    run_ids = set()
    for job in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        if "ease_broken" in (job / ".hydra" / "overrides.yaml").read_text():
            continue  # failed while building the model, before any logger existed
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, job
        run_ids.add(runs[0].name.rsplit("-", 1)[1])
    assert len(run_ids) == 3
    assert list((sweep / "wandb").glob("offline-run-*")), "no W&B leaderboard run"


def test_zoo_sweeps_over_existing_model_configs():
    zoo = yaml.safe_load((CONF / "experiment" / "zoo.yaml").read_text())
    models = zoo["hydra"]["sweeper"]["params"]["model"].split(",")
    assert set(models) <= set(model_names())
    assert {"pop", "itemknn", "ease", "bpr"} <= set(models)


@pytest.mark.slow
def test_optuna_search_records_failed_trials_and_resumes(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna' / 'ease.db'}"
    search = ["hparams_search=ease_optuna", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.sampler.n_startup_trials=3", f"hydra.sweeper.storage={storage}",
              "hydra.sweeper.study_name=test_ease",
              "model.reg_weight=choice(-1.0,50.0,500.0)"]
    first = multirun(tmp_path, *search, sweep="first")
    assert (first / "leaderboard.md").exists()
    study = optuna.load_study(study_name="test_ease", storage=storage)
    assert len(study.trials) == 3
    # the same command again continues the stored study
    multirun(tmp_path, *search, sweep="second")
    study = optuna.load_study(study_name="test_ease", storage=storage)
    assert len(study.trials) == 6
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.COMPLETE in states
    failed = [t for t in study.trials if t.params["model.reg_weight"] < 0]
    assert failed, "the seeded sampler is expected to try the impossible value"
    assert all(t.state == optuna.trial.TrialState.FAIL for t in failed)


SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*_optuna.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_space_names_its_models_settings(search):
    """Each conf/hparams_search/<model>_optuna.yaml composes with the shared search, selects
    its model, stores its study under the model's name and searches only keys the model's
    config has (a misspelt key would train every trial with the default)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    model = search.removesuffix("_optuna")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert model in model_names() and cfg.hydra.runtime.choices.model == model
    sweeper = cfg.hydra.sweeper
    assert cfg.optimized_metric == "val/ndcg@10" and sweeper.direction == "maximize"
    assert sweeper.storage.endswith(f"/optuna/{model}.db") and sweeper.study_name.endswith(model)
    assert sweeper.params, "no search space"
    model_keys = OmegaConf.to_container(cfg.model, resolve=False)
    for key in sweeper.params:
        node = model_keys
        for part in key.removeprefix("model.").split("."):
            assert key.startswith("model.") and part in node, f"{search}: {key} is not a setting"
            node = node[part]
