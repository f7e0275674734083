"""Resume after a kill: rerunning the same command in the same run folder continues from the
last end-of-epoch checkpoint and ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import CONF, ROOT, compose_config
from recozoo.train import train

#: metrics.json fields that measure time (they differ between any two runs)
TIMING = {"train_seconds", "epoch_seconds", "val_seconds", "eval_seconds"}


class KillOnce(L.Callback):
    """Sends ``signal`` to its own process at ``batch`` of ``epoch``, once: a marker file makes
    the rerun of the same command train on."""

    def __init__(self, marker: str, epoch: int = 2, batch: int = 1, signal: str = "SIGKILL",
                 stall: float = 0.0):
        self.marker, self.epoch, self.batch, self.signal = Path(marker), epoch, batch, signal
        self.stall = stall  # seconds the first session idles in its first batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (0, 0) and not self.marker.exists():
            time.sleep(self.stall)
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), getattr(signal, self.signal))


def _overrides(model: str, marker: Path | None, sig: str, stall: float = 0.0) -> list[str]:
    """``model`` is a model's name, or ``name:solver`` for a ``model.solver`` setting."""
    model, _, solver = model.partition(":")
    extra = [f"model={model}", "trainer.max_epochs=4", "trainer.limit_train_batches=3",
             "eval.ks=[5,10]", "data.source.n_users=120", "data.source.n_items=60"]
    if solver:
        extra.append(f"model.solver={solver}")
    if "batch_size" in compose_config([f"model={model}"], Path("/nonexistent")).model:
        extra.append("model.batch_size=32")  # several batches per epoch: order matters
    if marker is not None:
        extra += ["+callbacks.kill._target_=test_resume.KillOnce", f"+callbacks.kill.marker={marker}",
                  f"+callbacks.kill.signal={sig}", f"+callbacks.kill.stall={stall}"]
        if model == "bert_finetune":  # the last of 4 epochs is its second phase: killed in it
            extra.append("+callbacks.kill.epoch=3")
    return extra


def _results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _train_in_child(cfg) -> None:
    train(cfg)


def resume_models() -> list:
    """bpr always, with its per-triple SGD too (no optimizer state to restore); models with extra
    training state once their configs exist."""
    extra = {"multvae": "annealing step", "cfgan": "two optimisers", "sqn": "target network",
             "dqn": "target network", "bert_finetune": "second phase: top layer alone"}
    present = [name for name in extra if (CONF / "model" / f"{name}.yaml").exists()]
    return ["bpr", "bpr:pair_sgd"] + [pytest.param(name, marks=pytest.mark.slow)
                                      for name in present]


@pytest.mark.parametrize("model", resume_models())
@pytest.mark.parametrize("sig", ["SIGKILL", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_uninterrupted_result(model, sig, tmp_path):
    reference = train(compose_config(_overrides(model, None, sig), tmp_path / "reference"))

    run_dir, marker = tmp_path / "killed", tmp_path / "killed.marker"
    # the first session idles 3 s before its first checkpoint: the resumed run's train_seconds
    # must count them
    cfg = compose_config(_overrides(model, marker, sig, stall=3.0), run_dir)
    # a child process stands for a run killed mid-epoch; spawned, not forked: a fork after
    # torch has started its OpenMP threads (earlier tests in the session) can deadlock the child
    child = multiprocessing.get_context("spawn").Process(target=_train_in_child, args=(cfg,))
    child.start()
    child.join(timeout=300)
    assert marker.exists(), "the run was not interrupted"
    assert child.exitcode != 0 or sig == "SIGTERM"
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    before = saved["callbacks"]["RunTimer"]

    # the same command again, in the same folder: resumes instead of starting over
    resumed = train(compose_config(_overrides(model, marker, sig, stall=3.0), run_dir))
    assert _results(resumed) == _results(reference)
    assert len(resumed["epoch_seconds"]) == resumed["epochs"] == 4
    # the whole run's seconds: the first session's up to its checkpoint, then this one's epochs
    assert resumed["epoch_seconds"][:len(before["epoch_seconds"])] == before["epoch_seconds"]
    this_session = sum(resumed["epoch_seconds"][len(before["epoch_seconds"]):])
    assert before["fit_seconds"] >= 3.0
    assert resumed["train_seconds"] >= before["fit_seconds"] + this_session
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))  # no half-written checkpoint
    if model == "bert_finetune":  # killed after the first phase ended, resumed into the second
        def phases(checkpoint):
            return next(v for k, v in checkpoint["callbacks"].items() if "FinetuneOnPlateau" in k)
        assert phases(saved)["due"] and phases(saved)["unfrozen_step"] is None
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert phases(last)["unfrozen_step"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_train_py_command_resumes_after_a_kill(sig, tmp_path):
    """The real command line: `python train.py ...` killed, then the same command again."""
    marker = tmp_path / "marker"
    tiny = ["data=shop", "data.source.sessions_per_user=3", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "logger=csv", f"paths.cache_dir={tmp_path}/cache"]
    command = [sys.executable, "train.py", *tiny, *_overrides("bpr", marker, sig),
               f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert marker.exists(), first.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the interrupted run" in (tmp_path / "run" / "train.log").read_text()
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    reference = train(compose_config(_overrides("bpr", None, sig) + tiny, tmp_path / "reference"))
    for key, value in _results(reference).items():
        if key.startswith(("val/", "test/")):
            assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_a_finished_runs_last_checkpoint_is_where_it_stopped(tmp_path):
    """last.ckpt is written at every epoch, not only at a new best (Lightning 2.6's save_last):
    a run whose validation never improves after its first epoch keeps best.ckpt there, and
    last.ckpt at the epoch early stopping ended it; the same command again trains nothing."""
    overrides = _overrides("bpr", None, "SIGKILL") + [
        "trainer.max_epochs=8", "callbacks.early_stopping.patience=2",
        "model.optimizer.lr=0.0"]  # the weights never move: validation never improves
    cfg = compose_config(overrides, tmp_path / "run")
    first = train(cfg)
    assert first["epochs"] == 3  # epoch 0, then 2 epochs without a better value
    folder = tmp_path / "run" / "checkpoints"
    best = torch.load(folder / "best.ckpt", weights_only=False)
    last = torch.load(folder / "last.ckpt", weights_only=False)
    assert best["epoch"] == 0 and last["epoch"] == 2
    stopping = [state for key, state in last["callbacks"].items() if key.startswith("EarlyStop")]
    assert stopping and stopping[0]["stopped_epoch"] == 2
    again = train(compose_config(overrides, tmp_path / "run"))
    assert again["epoch_seconds"] == first["epoch_seconds"]  # no epoch trained again
    assert _results(again) == _results(first)


def test_at_a_new_best_last_checkpoint_is_the_best_file_again_not_a_second_write(
        tmp_path, monkeypatch):
    """An epoch that is a new best writes its state once: last.ckpt is the best checkpoint's file
    under a second name (a hard link), except at the first epoch, whose best checkpoint was
    written before last.ckpt existed. The run resumes from it to the same result, and a later
    save of either name leaves the other's file as it was."""
    from recozoo import training_callbacks

    writes = []
    original = training_callbacks.AtomicCheckpointIO.save_checkpoint

    def counting(self, checkpoint, path, storage_options=None):
        writes.append(Path(path).name)
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(training_callbacks.AtomicCheckpointIO, "save_checkpoint", counting)
    overrides = _overrides("bpr", None, "SIGKILL") + [
        "trainer.max_epochs=3", "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=step"]  # a step count: every epoch is a new best
    first = train(compose_config(overrides, tmp_path / "run"))
    folder = tmp_path / "run" / "checkpoints"
    assert writes == ["best.ckpt", "last.ckpt", "best.ckpt", "best.ckpt"]
    assert os.path.samefile(folder / "best.ckpt", folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == 2
    again = train(compose_config(overrides, tmp_path / "run"))  # resumes from it: nothing to do
    assert again["epoch_seconds"] == first["epoch_seconds"] and _results(again) == _results(first)
    # a later save of either name replaces that name's file alone
    io = training_callbacks.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3}, folder / "last.ckpt")
    assert torch.load(folder / "best.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == 3


def test_checkpoints_of_lightnings_model_checkpoint_resume_with_their_best():
    """RunCheckpoint keeps ModelCheckpoint's state key: a run checkpointed by Lightning's own
    callback (before RunCheckpoint) resumes with its best score and path."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from recozoo.training_callbacks import RunCheckpoint

    settings = {"monitor": "val/ndcg@10", "mode": "max", "save_last": True, "save_top_k": 1}
    assert RunCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key
    assert RunCheckpoint(**settings).state_key != RunCheckpoint(monitor="val/loss").state_key
