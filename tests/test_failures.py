"""Failure isolation: a crashed job is recorded and a sweep goes on; NaN losses stop a run with
the step and the loss; unwritable or full disks give clear errors and no half-written files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import lightning as L
import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY
from recozoo import artifacts
from recozoo.artifacts import RunDir
from recozoo.models.base import Recommender
from recozoo.train import build_datamodule, run, train
from recozoo.training_callbacks import AtomicCheckpointIO

#: a bpr that diverges within a few steps (Adam moves each weight by ~lr per step)
DIVERGING = ["model=bpr", "model.batch_size=64", "model.optimizer.lr=1e30"]


@pytest.mark.slow
def test_multirun_records_a_crashed_job_and_the_sweep_goes_on(tmp_path):
    """A real `train.py -m` sweep (two jobs at once with the joblib launcher): the job whose
    loss becomes NaN is recorded as failed, the other finishes."""
    command = [sys.executable, "train.py", "-m", "hydra/launcher=joblib", *TINY,
               "model=bpr", "model.batch_size=64", "model.optimizer.lr=1e30,0.001",
               f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep",
               "hydra.callbacks={}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed"
    assert "FloatingPointError" in failed["error"] and "step" in failed["error"]
    finished = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())
    assert finished["status"] == "ok" and finished["test/ndcg@10"] >= 0


def test_impossible_hyperparameter_is_recorded(make_config):
    cfg = make_config(["model=ease", "model.reg_weight=-1"])
    with pytest.raises(ValueError, match="reg_weight"):
        run(cfg)  # a single run re-raises; a multirun job would return None
    record = RunDir(cfg.paths.output_dir).read_record()
    assert record["status"] == "failed" and "reg_weight" in record["error"]


def test_nan_loss_names_the_step_and_the_loss(make_config):
    cfg = make_config(DIVERGING + ["trainer.max_epochs=3"])
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf).*step \d+"):
        train(cfg)


class _ManualDiverging(Recommender):
    """Manual optimisation whose second loss is NaN (stands for a GAN or a Q-learner)."""

    def __init__(self, info, **kwargs):
        super().__init__(info, **kwargs)
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = self.weight.sum() * (math_nan if batch_idx == 1 else 1.0)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def score(self, batch):
        return self.weight.expand(len(batch), self.n_items)


math_nan = float("nan")


def test_nan_loss_is_caught_under_manual_optimisation(make_config):
    cfg = make_config()
    dm = build_datamodule(cfg)
    dm.setup()
    model = _ManualDiverging(dm.info)
    dm.use_view(model.train_view())
    dm.view.batch_size = 32
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with pytest.raises(FloatingPointError, match=r"_ManualDiverging: training loss is nan.*step 1"):
        trainer.fit(model, datamodule=dm)


def test_unwritable_run_folder_names_the_folder(make_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = make_config(["model=pop"])
    cfg.paths.output_dir = str(blocker / "run")
    with pytest.raises(OSError, match=r"cannot write to the run folder .*a_file/run"):
        train(cfg)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_leaves_no_half_written_artifact(tmp_path, monkeypatch):
    target = tmp_path / "rankings_test.parquet"
    artifacts.write_parquet(target, pd.DataFrame({"user": [1]}))

    def write_half(frame, path, **kwargs):  # a writer that dies half-way
        with open(path, "wb") as handle:
            handle.write(b"PAR1 half")
        _disk_full()

    monkeypatch.setattr(pd.DataFrame, "to_parquet", write_half)
    with pytest.raises(OSError, match="No space left"):
        artifacts.write_parquet(target, pd.DataFrame({"user": [2]}))
    monkeypatch.undo()
    assert pd.read_parquet(target)["user"].tolist() == [1]  # the previous complete file
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def save_half(checkpoint, filepath):
        with open(filepath, "wb") as handle:
            handle.write(b"half a checkpoint")
        _disk_full()

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", save_half)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2}, path)
    assert io.load_checkpoint(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
