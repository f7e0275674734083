"""The training bar shows the run's time left at most, next to Lightning's own fields."""

from __future__ import annotations

import io
import math

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from recozoo.train import train
from recozoo.training_callbacks import RunProgressBar, run_time_left


def test_time_left_is_the_pace_so_far_times_the_epochs_left():
    assert run_time_left(elapsed=10.0, epochs_run=2.0, epochs_left=3.0) == 15.0
    assert run_time_left(elapsed=4.0, epochs_run=0.5, epochs_left=9.5) == 76.0
    assert run_time_left(elapsed=1.0, epochs_run=0.0, epochs_left=5.0) is None  # nothing ran
    assert run_time_left(elapsed=1.0, epochs_run=1.0, epochs_left=math.inf) is None  # no cap


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_bar_shows_the_time_left_to_the_cap():
    screen = io.StringIO()
    bar = RunProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 200})
    data = DataLoader(TensorDataset(torch.randn(32, 2), torch.randn(32, 1)), batch_size=8)
    trainer = L.Trainer(max_epochs=3, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Regression(), data)
    shown = screen.getvalue()
    assert "run left≤" in shown and "train/loss" in shown and "v_num" not in shown


def test_a_run_with_the_bar_on_finishes(make_config):
    cfg = make_config(["model=bpr", "trainer.max_epochs=2", "trainer.enable_progress_bar=true"])
    assert train(cfg)["status"] == "ok"


class _CountingBar(RunProgressBar):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reads = 0

    def _current_metrics(self, trainer, module):
        self.reads += 1
        return super()._current_metrics(trainer, module)


def test_the_bar_reads_its_values_at_most_once_a_refresh_not_every_batch():
    """Reading the shown values after every batch cost a small model's steps ~10% of an epoch
    (bpr on ml-100k); the bar reads them at most ``refresh_rate`` times a second, and afresh at
    the end of an epoch so that the last values shown are the epoch's."""
    screen = io.StringIO()
    bar = _CountingBar(console_kwargs={"file": screen, "force_terminal": True, "width": 200})
    assert bar.refresh_rate == 4
    n_batches = 400
    data = DataLoader(TensorDataset(torch.randn(n_batches, 2), torch.randn(n_batches, 1)),
                      batch_size=1)
    trainer = L.Trainer(max_epochs=1, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Regression(), data)
    assert 1 <= bar.reads < n_batches / 4
    assert "train/loss" in screen.getvalue()
