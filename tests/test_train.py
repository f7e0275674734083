"""`train.py` end to end: the run artifacts and metrics.json contract, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, fit_briefly
from recozoo.train import run

CONTRACT_KEYS = ("status", "model", "data", "split", "seed", "n_users", "n_items", "n_params",
                 "train_seconds", "epoch_seconds", "eval_seconds")
METRIC_NAMES = ("recall", "ndcg", "hit", "mrr", "precision", "map", "f1", "tail_recall", "aplt",
                "coverage", "gini", "novelty", "arp")


def test_run_writes_every_artifact_with_contract_keys(make_config):
    cfg = make_config(["model=bpr", "eval.ks=[5,10]", "eval.top_n=20"])
    value = run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in CONTRACT_KEYS:
        assert key in metrics, key
    assert metrics["status"] == "ok" and metrics["model"] == "bpr" and metrics["split"] == "loo"
    for stage in ("val", "test"):
        for name in METRIC_NAMES:
            for k in (5, 10):
                assert f"{stage}/{name}@{k}" in metrics
    assert value == pytest.approx(metrics["val/ndcg@10"])
    assert len(metrics["epoch_seconds"]) == metrics["epochs"] == 1
    # one validation inside the fit (the sanity check is not one), as the curve has
    assert len(metrics["val_seconds"]) == len(metrics["val_curve"]) == 1
    assert metrics["torch_threads"] == torch.get_num_threads()  # what the seconds depend on
    # the code that made it: this checkout's commit where it is one, the library versions
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or None
    assert metrics["code"]["commit"] == head and metrics["code"]["torch"] == torch.__version__
    rankings = pd.read_parquet(out / "rankings_test.parquet")
    assert rankings.groupby("user").size().max() == 20
    assert set(rankings["user"]) == set(pd.read_parquet(out / "targets_test.parquet")["user"])
    per_user = pd.read_parquet(out / "per_user_test.parquet")
    assert per_user["ndcg@10"].mean() == pytest.approx(metrics["test/ndcg@10"], abs=1e-5)
    # seen items never appear in a user's ranked list
    history = pd.read_parquet(out / "history.parquet")
    targets = pd.read_parquet(out / "targets_test.parquet")
    seen = set(map(tuple, history.merge(targets, how="left", indicator=True)
                   .query("_merge == 'left_only'")[["user", "item"]].to_numpy()))
    assert not seen & set(map(tuple, rankings[["user", "item"]].to_numpy()))
    for name in ("config.yaml", "rankings_val.parquet", "targets_val.parquet", "items.parquet",
                 "users.parquet", "checkpoints/best.ckpt"):
        assert (out / name).exists(), name


def test_each_validation_reaches_the_csv_log_once(make_config):
    """The monitored key goes to the callbacks only; the loggers get each stage's values in one
    call (a key logged twice per epoch made a curve of duplicated points)."""
    cfg = make_config(["model=bpr", "trainer.max_epochs=2"])
    run(cfg)
    rows = pd.read_csv(next(Path(cfg.paths.output_dir).rglob("metrics.csv")))
    validations = rows.dropna(subset=["val/ndcg@10"])
    assert len(validations) == 3  # two epochs, then the best checkpoint validated once more
    assert validations["epoch"].tolist() == [0, 1, 2]
    # the test stage's row too (its file is saved by Lightning when trainer.test ends)
    tests = rows.dropna(subset=["test/ndcg@10"])
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert len(tests) == 1
    assert tests["test/ndcg@10"].item() == pytest.approx(metrics["test/ndcg@10"], rel=1e-6)


def test_metrics_json_keeps_every_validation_of_the_fit(make_config):
    """``val_curve``: one entry per validation inside the fit (not the best checkpoint's one
    after it), the values the loggers got; the best checkpoint's validation is its best entry."""
    cfg = make_config(["model=bpr", "trainer.max_epochs=3", "eval.ks=[5,10]"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    curve = metrics["val_curve"]
    assert [entry["epoch"] for entry in curve] == [1, 2, 3] == list(range(1, metrics["epochs"] + 1))
    assert [entry["step"] for entry in curve] == sorted({entry["step"] for entry in curve})
    assert set(curve[0]) == {"epoch", "step"} | {f"val/{name}@{k}" for k in (5, 10)
                                                 for name in ("ndcg", "recall", "tail_recall")}
    logged = pd.read_csv(next(out.rglob("metrics.csv"))).dropna(subset=["val/ndcg@10"])
    assert [entry["val/ndcg@10"] for entry in curve] == pytest.approx(
        logged["val/ndcg@10"].tolist()[:3])
    assert max(entry["val/ndcg@10"] for entry in curve) == pytest.approx(metrics["val/ndcg@10"])


def test_the_curve_keeps_accuracy_tail_recall_and_rating_errors():
    from recozoo.evaluation.evaluator import curve_values
    values = {"val/ndcg@10": 0.3, "val/recall@20": 0.4, "val/tail_recall@10": 0.1,
              "val/ndcg@10/head": 0.5, "val/gini@10": 0.7, "val/rmse": 0.9, "val/mae": 0.7}
    assert curve_values(values) == {"val/ndcg@10": 0.3, "val/recall@20": 0.4,
                                    "val/tail_recall@10": 0.1, "val/rmse": 0.9, "val/mae": 0.7}


def test_unknown_model_lists_the_choices():
    result = subprocess.run([sys.executable, "train.py", "model=nosuchmodel"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "nosuchmodel" in result.stderr and "Available options" in result.stderr
    assert "ease" in result.stderr


def test_k_larger_than_catalogue_is_a_clear_error(make_config):
    cfg = make_config(["model=pop", "eval.ks=[10,100000]"])
    with pytest.raises(ValueError, match="K=100000 is larger than the catalogue"):
        run(cfg)
    failed = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert failed["status"] == "failed" and "K=100000" in failed["error"]


def test_monitors_at_a_cut_off_eval_does_not_compute_are_refused_with_both_fixes(make_config):
    """eval.ks=[5] leaves the default monitors' val/ndcg@10 uncomputed: refused before the data
    is read, naming every such setting; either fix runs."""
    with pytest.raises(ValueError, match=r"callbacks.model_checkpoint.monitor=val/ndcg@10, "
                                         r"callbacks.early_stopping.monitor=val/ndcg@10, "
                                         r"optimized_metric=val/ndcg@10: eval.ks=\[5\] computes "
                                         r"no such cut-off; compute it too \(eval.ks=\[5,10\]\) "
                                         r"or monitor one it computes \(callbacks.model_checkpoint"
                                         r".monitor=val/ndcg@5 "):
        run(make_config(["model=pop", "eval.ks=[5]"]))
    moved = ["callbacks.model_checkpoint.monitor=val/ndcg@5",
             "callbacks.early_stopping.monitor=val/ndcg@5", "optimized_metric=val/ndcg@5"]
    assert run(make_config(["model=pop", "eval.ks=[5]", *moved])) is not None


@pytest.mark.parametrize("ks", ["[0]", "[10,-5]", "[2.5]"])
def test_cut_offs_that_are_not_positive_integers_are_refused_by_name(make_config, ks):
    """eval.ks=[0] was refused as a monitor at an uncomputed cut-off, with eval.ks=[0,10] as
    the fix: the setting itself is named first."""
    with pytest.raises(ValueError, match=r"eval.ks=\[.*\]: a cut-off K is a positive integer"):
        run(make_config(["model=pop", f"eval.ks={ks}"]))


def test_filtering_everything_away_names_the_setting(make_config):
    cfg = make_config(["model=pop", "data.preprocess.kcore=1000"])
    with pytest.raises(ValueError, match="empty after preprocessing.*kcore"):
        run(cfg)


def test_missing_atomic_folder_is_named(make_config, tmp_path):
    cfg = make_config(["model=pop", "data=atomic", f"data.path={tmp_path}/nothing", "data.name=x",
                       "trainer.enable_progress_bar=false"], tiny=False)
    with pytest.raises(FileNotFoundError, match="nothing"):
        run(cfg)


def test_split_without_validation(make_config):
    """A split with no validation share: a clear error while callbacks monitor a validation
    metric; without them the run trains its epochs and tests the last weights."""
    overrides = ["model=pop", "split=random", "split.ratios=[0.8,0.0,0.2]"]
    with pytest.raises(ValueError, match="left no validation users.*callbacks=none"):
        run(make_config(overrides))
    cfg = make_config(overrides + ["callbacks=none", "model=bpr"])
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["test/ndcg@10"] >= 0
    assert not any(key.startswith("val/") for key in metrics)


def test_epoch_seconds_leave_out_validation_and_the_checkpointing_after_it(monkeypatch):
    """An epoch is charged its training batches only: a validation and what Lightning runs after
    it (ModelCheckpoint, last of the callbacks) are excluded, as RecBole counts its epochs. A
    validation is charged its evaluation only, and the sanity check is none of them."""
    from types import SimpleNamespace

    from recozoo import training_callbacks

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(training_callbacks.time, "perf_counter", lambda: clock.now)
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=True)
    timer = training_callbacks.RunTimer()

    def hook(name: str, seconds_after: float, *args) -> None:
        getattr(timer, name)(trainer, None, *args)
        clock.now += seconds_after

    hook("on_validation_start", 5.0)  # the sanity check before the first epoch
    hook("on_validation_end", 1.0)
    trainer.sanity_checking = False
    hook("on_train_epoch_start", 0.0)
    hook("on_train_batch_start", 2.0, None, 0)  # two seconds of training
    hook("on_validation_start", 3.0)  # a validation in the middle (val_check_interval < 1)
    hook("on_validation_end", 4.0)  # the checkpoint saved after it
    hook("on_train_batch_start", 0.5, None, 1)
    hook("on_validation_start", 2.0)  # the validation at the end of the epoch
    hook("on_validation_end", 4.0)
    hook("on_train_epoch_end", 0.0)
    assert timer.epoch_seconds == [2.5]
    assert timer.val_seconds == [3.0, 2.0]


def test_validations_inside_fit_score_as_the_final_validation(make_config):
    """Inside fit a validation ranks only the top max(ks) items (no lists are kept); the final
    validation of the best checkpoint ranks the top-N lists it writes. Every metric is at a
    cut-off in ks, so the one-epoch run's two validations agree on every value."""
    cfg = make_config(["model=bpr", "trainer.max_epochs=1", "eval.ks=[5,10]"])
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    rows = pd.read_csv(next(Path(cfg.paths.output_dir).rglob("metrics.csv")))
    inside_fit, final = rows.dropna(subset=["val/ndcg@10"]).to_dict("records")
    keys = [k for k in metrics if k.startswith("val/")]
    lists = pd.read_parquet(Path(cfg.paths.output_dir) / "rankings_val.parquet")
    assert len(keys) > 10 and lists.groupby("user").size().max() > 10  # deeper than max(ks)
    for key in keys:
        assert inside_fit[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key
        assert final[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("model, split, warned", [
    ("gru4rec", "random split.sequence_order=time", True), ("gru4rec", "random", False),
    ("gru4rec", "loo", False), ("bpr", "random split.sequence_order=time", False)])
def test_a_sequence_model_on_a_random_split_in_time_order_is_warned(make_config, caplog, model,
                                                                     split, warned):
    """A random split shuffles each user's items for sequence models by default; one that
    keeps time order there learns the next item where random ones are held out: warned."""
    from recozoo.train import build_experiment

    build_experiment(make_config([f"model={model}", *f"split={split}".split()]))
    assert ("split=random holds out random ratings" in caplog.text) is warned


def test_train_threads_hold_for_training_steps_only(make_config, monkeypatch):
    """``model.train_threads`` sets torch's threads while training batches run; validations
    inside the fit, the final validation and the test run on the process's threads, which are
    back after the run."""
    import torch

    from recozoo.evaluation.evaluator import Evaluator
    from recozoo.models.bpr import BPR

    seen: dict[str, set[int]] = {"train": set(), "eval": set()}
    step, evaluate = BPR.training_step, Evaluator.evaluate_batch

    def recorded_step(self, batch, batch_idx):
        seen["train"].add(torch.get_num_threads())
        return step(self, batch, batch_idx)

    def recorded_evaluate(self, model, batch, stage):
        seen["eval"].add(torch.get_num_threads())
        return evaluate(self, model, batch, stage)

    monkeypatch.setattr(BPR, "training_step", recorded_step)
    monkeypatch.setattr(Evaluator, "evaluate_batch", recorded_evaluate)
    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(make_config(["model=bpr", "model.train_threads=1", "trainer.max_epochs=2"]))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(outer)
    assert seen == {"train": {1}, "eval": {2}} and after == 2


def test_train_threads_must_be_positive(make_config):
    with pytest.raises(ValueError, match="model.train_threads"):
        run(make_config(["model=bpr", "model.train_threads=0"]))


def test_the_long_lived_heap_is_frozen_within_and_handed_back_after():
    """`long_lived_heap` (which `run` trains inside): the collector's full collections skip
    what was alive on entry, and afterwards it sees those objects again, so a multirun in one
    process frees the cycles of its earlier jobs."""
    import gc
    import weakref

    from recozoo.runtime import (
        PYTHON_GC_THRESHOLD,
        STARTUP_FULL_COLLECTION_EVERY,
        long_lived_heap,
    )

    class Node:
        pass

    # importing recozoo raised the full-collection threshold for the libraries' imports
    assert gc.get_threshold()[2] == STARTUP_FULL_COLLECTION_EVERY
    cycle = Node()
    cycle.itself = cycle
    alive = weakref.ref(cycle)
    with long_lived_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == PYTHON_GC_THRESHOLD  # Python's own over the job's objects
        del cycle
        gc.collect()
        assert alive() is not None  # frozen with everything alive on entry
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[2] == STARTUP_FULL_COLLECTION_EVERY
    gc.collect()
    assert alive() is None  # handed back, and collected


def test_a_validation_sample_selects_and_every_user_is_reported(make_config, caplog):
    """With eval.val_users below the validation users, the validation inside the fit ranks the
    sample, and metrics.json's val values and rankings_val.parquet come from every user: one
    epoch (one checkpoint) reports what a run without a sample reports."""
    runs = {}
    for val_users in (15, "null"):
        cfg = make_config(["model=bpr", "trainer.max_epochs=1", f"eval.val_users={val_users}"])
        with caplog.at_level("INFO", logger="recozoo.data.datamodule"):
            run(cfg)
        out = Path(cfg.paths.output_dir)
        runs[val_users] = (out, json.loads((out / "metrics.json").read_text()))
    assert sum("rank 15 of the" in r.getMessage() for r in caplog.records) == 1
    out, metrics = runs[15]
    targets = pd.read_parquet(out / "targets_val.parquet")
    lists = pd.read_parquet(out / "rankings_val.parquet")
    assert targets["user"].nunique() > 15
    assert set(lists["user"]) == set(targets["user"])  # the final validation: every user
    every = runs["null"][1]
    assert metrics["val/ndcg@10"] == pytest.approx(every["val/ndcg@10"], rel=1e-6)
    assert metrics["test/ndcg@10"] == pytest.approx(every["test/ndcg@10"], rel=1e-6)
    # inside the fit: the sample's value, not every user's
    assert metrics["val_curve"][0]["val/ndcg@10"] != pytest.approx(
        every["val_curve"][0]["val/ndcg@10"], rel=1e-6)
    assert every["val_curve"][0]["val/ndcg@10"] == pytest.approx(every["val/ndcg@10"], rel=1e-6)


def test_a_metrics_only_validation_scores_as_a_kept_one_and_keeps_no_lists(make_config):
    """Evaluator.metrics_only (a model's choice of settings on validation): the same values as
    a validation that keeps its top-N lists, from the top max(ks) items, and no lists kept
    (bpr: pop's tied scores could order differently in a top-10 and a top-30)."""
    dm, model, trainer, evaluator = fit_briefly(
        make_config(["model=bpr", "eval.ks=[5,10]", "eval.top_n=30"]), validate=True)
    trainer.validate(model, datamodule=dm, verbose=False)
    kept = dict(evaluator.stage_metrics["val"])
    assert evaluator.outputs["val"]["items"].shape[1] == 30
    depths = []
    top = evaluator.ranker.top
    evaluator.ranker.top = lambda scores, history, k=None, reranker=None: (
        depths.append(k) or top(scores, history, k, reranker))
    with evaluator.metrics_only():
        trainer.validate(model, datamodule=dm, verbose=False)
    assert set(depths) == {10} and "val" not in evaluator.outputs
    assert evaluator.stage_metrics["val"] == pytest.approx(kept, rel=1e-6, abs=1e-9)
    trainer.validate(model, datamodule=dm, verbose=False)  # after the block: lists again
    assert evaluator.outputs["val"]["items"].shape[1] == 30
