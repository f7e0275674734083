"""The training bar counts epochs against the cap and shows the run's time left at most."""

from __future__ import annotations

import math

from recozoo.train import train
from recozoo.training_callbacks import run_time_left


def test_time_left_is_the_pace_so_far_times_the_epochs_left():
    assert run_time_left(elapsed=10.0, epochs_run=2.0, epochs_left=3.0) == 15.0
    assert run_time_left(elapsed=4.0, epochs_run=0.5, epochs_left=9.5) == 76.0
    assert run_time_left(elapsed=1.0, epochs_run=0.0, epochs_left=5.0) is None  # nothing ran
    assert run_time_left(elapsed=1.0, epochs_run=1.0, epochs_left=math.inf) is None  # no cap


def test_a_run_shows_the_epoch_against_the_cap_and_the_time_left(make_config, capsys):
    cfg = make_config(["model=bpr", "trainer.max_epochs=2", "trainer.enable_progress_bar=true"])
    assert train(cfg)["status"] == "ok"
    captured = capsys.readouterr()
    bar = (captured.out + captured.err).replace("\r", "\n")
    assert "Epoch 1/2" in bar and "Epoch 2/2" in bar
    assert "run left≤=" in bar and "v_num" not in bar
