"""`make bench` plumbing (the ``bench/`` scripts beside the package): where the shared folder
comes from, ratios and targets, the growth fit, the report, and a smoke run on a tiny shop.
Timings are measured, never asserted. RecBole's splits read back are `split=preset`'s tests
(tests/test_preset_split.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench import repo_root
from bench.__main__ import SHARED_VARIABLE, main, shared_folder
from bench.compare import ModelSpec, compare_row, median_figures
from bench.peers import RecBolePeer
from bench.report import render
from bench.scaling import growth
from bench.throughput import achieved, matmul_topk

import recozoo

ROOT = Path(__file__).resolve().parents[1]


def test_bench_lives_beside_the_package_and_finds_the_checkout():
    assert repo_root() == ROOT
    assert not (Path(recozoo.__file__).parent / "bench").exists()  # not in the installed package


def test_shared_folder_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    given, from_env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    from_env.mkdir()
    monkeypatch.delenv(SHARED_VARIABLE, raising=False)
    folder, line = shared_folder(None)
    assert folder is None and "recozoo alone is benchmarked" in line and SHARED_VARIABLE in line
    monkeypatch.setenv(SHARED_VARIABLE, str(from_env))
    assert shared_folder(None) == (from_env, f"shared folder: {from_env} (from {SHARED_VARIABLE})")
    assert shared_folder(str(given))[0] == given  # the argument wins over the environment
    with pytest.raises(SystemExit, match=r"shared=.*nowhere: no such folder"):
        shared_folder(str(tmp_path / "nowhere"))
    monkeypatch.setenv(SHARED_VARIABLE, str(tmp_path / "gone"))
    with pytest.raises(SystemExit, match=rf"{SHARED_VARIABLE}=.*gone: no such folder"):
        shared_folder(None)


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m bench [key=value ...]")
    assert "  shared=null  (str | None)" in text and SHARED_VARIABLE in text
    assert "  threads=2  (int)\n      torch threads of every run, on both sides." in text
    assert "  models=[bpr,ease,itemknn,multvae,gru4rec,caser,sasrec]" in text
    with pytest.raises(SystemExit, match="unknown key 'thread' .did you mean 'threads'"):
        main(["thread=1"])


def test_peer_is_missing_without_the_shared_folder(tmp_path):
    peer, reason = RecBolePeer.find(tmp_path / "nowhere", tmp_path / "scratch")
    assert peer is None and "no RecBole peer scripts" in reason


def test_a_merged_compare_without_recbole_stops_before_running_anything(tmp_path, monkeypatch):
    """Merged into the results, rows measured without the peer would replace rows that hold
    RecBole's figures: the run stops first and says why (peers=false merges on purpose)."""
    from bench import __main__ as bench_main

    shared = tmp_path / "shared"
    (shared / "data" / "ml-100k").mkdir(parents=True)
    (shared / "data" / "ml-100k" / "ml-100k.inter").write_text("")
    (shared / "peers" / "recbole").mkdir(parents=True)
    (shared / "peers" / "recbole" / "run_recbole.py").write_text("")
    monkeypatch.setenv("RECOZOO_RECBOLE_VENV", str(tmp_path / "no-venv"))
    ran = []
    monkeypatch.setattr(bench_main.comparison, "compare", lambda *args, **kw: ran.append(1) or [])
    settings = bench_main.BenchSettings(shared=str(shared), sections=["compare"], merge=True)
    with pytest.raises(SystemExit, match="RecBole cannot run .*virtual environment .*no-venv"):
        bench_main.run_compare(settings, tmp_path / "out", {"notes": []})
    assert not ran
    settings.peers = False  # recozoo alone, asked for
    results = {"notes": []}
    bench_main.run_compare(settings, tmp_path / "out", results)
    assert ran and "RecBole not run (peers=false)" in results["notes"][0]


def test_a_run_of_some_sections_does_not_drop_the_others_results(tmp_path):
    folder = tmp_path / "published"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"without merge=true would rewrite .*results.md "
                                         r"without its sections \['implicit'"):
        main(["sections=[compare]", f"results={folder}", f"out={tmp_path / 'out'}"])
    assert (folder / "results.json").read_text() == "{}" and not (tmp_path / "out").exists()


def figures(epoch, evaluation, ndcg, recall=0.1, epochs=5, validation=None):
    return {"sec_per_epoch": epoch, "eval_seconds": evaluation, "val_seconds": validation,
            "ndcg@10": ndcg, "recall@10": recall, "epochs": epochs}


def test_ratios_and_targets_per_kind():
    general = compare_row(ModelSpec("bpr", "BPR", "general"), figures(0.2, 0.3, 0.30),
                          figures(0.5, 0.5, 0.29))
    assert general["ratios"]["sec_per_epoch"] == pytest.approx(0.4)
    assert general["targets"] == {"sec_per_epoch": True, "eval_seconds": False, "ndcg@10": True}
    # sequence models: 0.1x per epoch, and quality read from the equal-epoch run
    seq = compare_row(ModelSpec("sasrec", "SASRec", "sequence"), figures(20.0, 0.1, 0.30),
                      figures(100.0, 1.0, 0.05), same_epochs=figures(21.0, 0.1, 0.04))
    assert seq["targets"] == {"sec_per_epoch": False, "eval_seconds": True, "ndcg@10": False}
    assert seq["ratios"]["ndcg@10_converged"] == pytest.approx(6.0)
    alone = compare_row(ModelSpec("bpr", None, "general"), figures(0.2, 0.3, 0.3), None)
    assert "ratios" not in alone


def test_growth_exponents_of_known_curves():
    points = [{"interactions": n, "stage": "train", "model": "bpr", "seconds": 2e-5 * n,
               "peak_rss_mb": 500 + 1e-3 * n ** 2 / 1e3, "baseline_rss_mb": 500}
              for n in (10_000, 100_000, 1_000_000)]
    (fit,) = growth(points)
    assert fit["time_exponent"] == pytest.approx(1.0)
    assert fit["memory_exponent"] == pytest.approx(2.0)


def test_matmul_topk_counts_the_scoring_flops():
    bare = matmul_topk(64, 200, 8, batch_size=16, k=10, repeats=1)
    assert bare["gflops"] > 0 and bare["k"] == 10
    assert achieved(1000, 1000, 50, 1.0) == pytest.approx(0.1)


def test_report_marks_missed_targets():
    row = compare_row(ModelSpec("ease", "EASE", "general"), figures(2.0, 0.6, 0.33),
                      figures(1.0, 0.6, 0.32))
    text = render({"date": "today", "commit": "abc", "notes": [], "comparison": [row],
                   "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "x",
                               "python": "3", "load_start": [0], "load_end": [0]}})
    line = next(line for line in text.splitlines() if line.startswith("| ease"))
    assert "2.000 **miss**" in line and "0.3300" in line
    assert "same work on both sides" not in text  # no validation seconds: no such table


def test_validation_seconds_are_compared_beside_the_test_stage():
    row = compare_row(ModelSpec("bpr", "BPR", "general"), figures(0.1, 0.03, 0.3, validation=0.02),
                      figures(0.3, 0.07, 0.3, validation=0.08))
    assert row["ratios"]["val_seconds"] == pytest.approx(0.25)
    assert "val_seconds" not in row["targets"]  # informative: the targets read the test stage
    text = render({"date": "today", "commit": "abc", "notes": [], "comparison": [row],
                   "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "x",
                               "python": "3", "load_start": [0], "load_end": [0]}})
    table = text.split("same work on both sides", 1)[1]
    assert "| bpr | 0.020 | 0.080 | 0.250 |" in table


def test_quick_bench_runs_alone_and_writes_results(tmp_path):
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k != SHARED_VARIABLE}
    done = subprocess.run([sys.executable, "-m", "bench", "quick=true", "threads=1",
                           "sections=[compare]", "models=[ease]", f"out={out}"],
                          cwd=ROOT, env=env, check=True, capture_output=True, text=True,
                          timeout=600)
    assert "shared folder: none" in done.stdout  # said at once, and kept in the report
    results = json.loads((out / "quick" / "results.json").read_text())
    assert any("recozoo alone is benchmarked" in note for note in results["notes"])
    (row,) = results["comparison"]
    assert row["model"] == "ease" and row["recbole"] is None
    assert 0 < row["recozoo"]["ndcg@10"] <= 1
    assert "| ease" in (out / "quick" / "results.md").read_text()


@pytest.mark.slow
def test_quick_scaling_and_throughput_sections(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "bench", "quick=true", "threads=1",
                    "sections=[scale,throughput]", f"out={out}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    results = json.loads((out / "quick" / "results.json").read_text())
    stages = {(p["stage"], p["model"]) for p in results["scaling"]["points"]}
    assert {("data", None), ("train", "bpr"), ("eval", "sasrec")} <= stages
    assert results["throughput"] and results["throughput"][0]["bare"]["gflops"] > 0


def test_repeated_runs_report_median_seconds_and_keep_every_run():
    runs = [{"sec_per_epoch": s, "eval_seconds": e, "val_seconds": e / 2, "ndcg@10": 0.3,
             "recall@10": 0.2, "epochs": 9} for s, e in ((0.30, 0.10), (0.20, 0.30), (0.25, 0.20))]
    combined = median_figures([runs[0], None, runs[1], runs[2]])
    assert combined["sec_per_epoch"] == 0.25 and combined["eval_seconds"] == 0.20
    assert combined["val_seconds"] == 0.10
    assert combined["ndcg@10"] == 0.3 and combined["epochs"] == 9
    assert [run["sec_per_epoch"] for run in combined["runs"]] == [0.30, 0.20, 0.25]
    assert median_figures([runs[0]]) is runs[0] and median_figures([None]) is None


def test_implicit_runner_ndcg_by_hand():
    from bench.implicit_runner import ndcg_at_k
    lists = np.array([[1, 5, 2, 9], [3, 4, 6, 8], [0, 1, 2, 3]])
    users = np.array([10, 11, 12])  # user 12 has no target: not averaged
    target_user, target_item = np.array([10, 10, 11, 13]), np.array([1, 2, 7, 1])
    # user 10: hits at ranks 1 and 3 of 2 targets; user 11: no hit
    first = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert ndcg_at_k(lists, users, target_user, target_item, k=3) == pytest.approx(first / 2)
    assert ndcg_at_k(lists, users, target_user, target_item, k=2) == pytest.approx(
        1 / (1 + 1 / np.log2(3)) / 2)


def test_seconds_to_best_reads_the_first_best_validation_of_the_fit():
    from bench.implicit_peer import seconds_to_best, validation_curve
    # metrics.json's val_curve: four epochs (the third validated twice, val_check_interval
    # 0.5), the best first at epoch 2; the best checkpoint's validation after the fit is not in it
    metrics = {"val/ndcg@10": 0.3, "val_curve": [
        {"epoch": 1, "step": 10, "val/ndcg@10": 0.1}, {"epoch": 2, "step": 20, "val/ndcg@10": 0.3},
        {"epoch": 3, "step": 25, "val/ndcg@10": 0.3}, {"epoch": 3, "step": 30, "val/ndcg@10": 0.31},
        {"epoch": 4, "step": 40, "val/ndcg@10": 0.2}]}
    curve = validation_curve(metrics)
    assert curve == [0.1, 0.3, 0.3, 0.2]  # an epoch's first validation
    assert seconds_to_best(curve, [1.0, 2.0, 3.0, 4.0]) == (2, 3.0)
    assert validation_curve({}) == [] and seconds_to_best([], [1.0]) == (None, None)


def test_time_to_match_the_peers_best_validation():
    """The verdict's second view: recozoo's training seconds until its validation first reaches
    implicit BPR's best, against implicit's seconds to that best."""
    from bench.implicit_peer import seconds_to_reach, verdict

    curve, seconds = [0.10, 0.25, 0.30, 0.28], [1.0, 2.0, 3.0, 4.0]
    assert seconds_to_reach(curve, seconds, 0.25) == 3.0
    assert seconds_to_reach(curve, seconds, 0.31) is None
    ours = {"side": "recozoo", "model": "bpr", "seconds_to_best": 6.0, "sec_per_epoch": 2.0,
            "ndcg@10": 0.3, "val_curve": curve, "epoch_seconds": seconds}
    theirs = {"side": "implicit", "model": "bpr", "seconds_to_best": 1.5, "sec_per_epoch": 0.1,
              "best_val_ndcg@10": 0.25, "ndcg@10": 0.2}
    sgd = {**ours, "model": "bpr (pair_sgd)", "seconds_to_best": 3.0, "ndcg@10": 0.1}
    result = verdict([sgd, ours, theirs])  # the default solver's row, wherever it stands
    assert result["time_to_best_ratio"] == 4.0 and result["seconds_to_match"] == 3.0
    assert result["time_to_match_ratio"] == 2.0 and result["ndcg_met"]
    result = verdict([sgd, ours, theirs], "bpr (pair_sgd)")
    assert result["time_to_best_ratio"] == 2.0 and result["time_to_best_met"]
    assert not result["ndcg_met"]


def test_merge_replaces_only_the_sections_run(tmp_path):
    from bench.__main__ import merged
    path = tmp_path / "results.json"
    fresh = {"date": "now", "commit": "new", "settings": {}, "machine": {"threads": 2,
             "load_start": [1.0]}, "notes": [], "implicit": {"datasets": ["new"]}}
    assert merged(path, fresh, ["implicit"]) is fresh  # nothing to merge with
    path.write_text(json.dumps({"date": "then", "notes": ["old"], "comparison": [1],
                                "implicit": {"datasets": ["old"]}, "scaling": {"x": 1}}))
    out = merged(path, fresh, ["implicit"])
    assert out["date"] == "then" and out["comparison"] == [1] and out["scaling"] == {"x": 1}
    assert "implicit" not in out  # left to this run's section
    assert out["notes"][0] == "old" and "implicit section(s) were run on their own" in \
        out["notes"][1] and out["merged"][0]["commit"] == "new"


def test_merging_the_compare_section_keeps_the_rows_of_models_not_rerun(tmp_path):
    from bench.__main__ import merged, with_earlier_rows
    from bench.report import comparison_lines
    path = tmp_path / "results.json"
    fresh = {"date": "now", "commit": "new", "settings": {}, "machine": {"threads": 2,
             "load_start": [1.0]}, "notes": []}
    row = {"split": "random", "recozoo": {"sec_per_epoch": 0.1, "eval_seconds": 0.1}}
    path.write_text(json.dumps({"date": "then", "commit": "old", "notes": [], "comparison": [
        {**row, "model": "bpr"}, {**row, "model": "sasrec"}]}))
    out = merged(path, fresh, ["compare"])
    assert "comparison" not in out
    assert out["earlier_comparison"]["from"] == {"date": "then", "commit": "old"}
    rows = with_earlier_rows([{**row, "model": "bpr"}], out["earlier_comparison"])
    assert [r["model"] for r in rows] == ["bpr", "sasrec"]
    assert "kept_from" not in rows[0] and rows[1]["kept_from"]["commit"] == "old"
    text = "\n".join(comparison_lines(rows))
    assert "- sasrec: kept from the run of then (recozoo old)" in text and "- bpr:" not in text


def test_implicit_report_marks_a_missed_target():
    section = {"protocol": "p", "threads": 2, "datasets": [{
        "dataset": "ml-100k", "split": "s", "implicit_version": "0.7.3",
        "rows": [{"side": "recozoo", "model": "bpr", "sec_per_epoch": 0.3,
                  "seconds_to_best": 30.0, "ndcg@10": 0.29, "epochs": 100, "best_epoch": 90},
                 {"side": "recozoo", "model": "bpr (pair_sgd)", "sec_per_epoch": 0.02,
                  "seconds_to_best": 2.0, "ndcg@10": 0.29, "epochs": 40, "best_epoch": 30},
                 {"side": "implicit", "model": "bpr", "sec_per_epoch": 0.01,
                  "seconds_to_best": 1.0, "ndcg@10": 0.28, "stopped_by": "max_epochs"},
                 {"side": "implicit", "model": "als", "error": "boom\nlast line"}],
        "verdicts": {"bpr": {"time_to_best_ratio": 30.0, "sec_per_epoch_ratio": 30.0,
                             "time_to_best_met": False, "ndcg_met": True},
                     "bpr (pair_sgd)": {"time_to_best_ratio": 2.0, "sec_per_epoch_ratio": 2.0,
                                        "time_to_best_met": True, "ndcg_met": True}}}]}
    text = render({"date": "today", "commit": "abc", "notes": [], "implicit": section,
                   "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "x",
                               "python": "3", "load_start": [0], "load_end": [0]}})
    assert "implicit 0.7.3" in text
    assert "- ml-100k, recozoo bpr: recozoo/implicit BPR seconds per epoch 30.0x, seconds to " \
        "best 30.000 **miss**" in text
    assert "- ml-100k, recozoo bpr (pair_sgd): recozoo/implicit BPR seconds per epoch 2.0x, " \
        "seconds to best 2.000 ok" in text
    assert "| ml-100k | s | recozoo | bpr (pair_sgd) | 0.0200 | 30 / 40 | 2.00 |" in text
    assert "reach implicit BPR's best validation -;" in text  # not measured: a dash
    assert "| ml-100k | s | implicit | bpr | 0.0100 | - / - (cap) | 1.00 |" in text
    assert "failed: ml-100k implicit als: last line" in text


@pytest.mark.slow
def test_quick_implicit_section_scores_both_sides_with_recozoos_metrics(tmp_path):
    from bench.implicit_peer import ImplicitPeer, export_split, score_lists
    out = tmp_path / "bench"
    has_peer = ImplicitPeer.find(out, install=False)[0] is not None
    subprocess.run([sys.executable, "-m", "bench", "quick=true", "threads=1",
                    "sections=[implicit]", f"out={out}", f"peers={str(has_peer).lower()}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    (entry,) = json.loads((out / "quick" / "results.json").read_text())["implicit"]["datasets"]
    sides = {(row["side"], row["model"]): row for row in entry["rows"]}
    assert 0 < sides["recozoo", "bpr"]["ndcg@10"] <= 1
    assert sides["recozoo", "bpr"]["seconds_to_best"] > 0
    assert 0 < sides["recozoo", "bpr (pair_sgd)"]["ndcg@10"] <= 1  # the second solver's row
    assert set(entry.get("verdicts", {})) <= {"bpr", "bpr (pair_sgd)"}
    if has_peer:
        assert 0 < sides["implicit", "bpr"]["ndcg@10"] <= 1 and "als" in {m for _, m in sides}
    # the exported split is the run's, and perfect lists score NDCG@10 = 1 by recozoo's code
    run = out / "runs" / "implicit_recozoo_bpr_quick_shop"
    split = np.load(export_split(run, tmp_path / "split.npz"))
    targets = pd.read_parquet(run / "targets_test.parquet")
    assert len(split["train_user"]) + len(split["val_user"]) == len(split["test_input_user"])
    assert np.array_equal(split["test_user"], np.unique(targets["user"]))
    perfect = targets.groupby("user")["item"].first().loc[split["test_user"]].to_numpy()
    lists = np.full((len(perfect), 20), -1)
    lists[:, 0] = perfect
    scored = score_lists(lists, split["test_user"], run, "perfect", tmp_path / "scored")
    assert scored["test/ndcg@10"] == pytest.approx(1.0)


def test_a_bpr_only_scaling_run_keeps_the_earlier_sasrec_rows():
    from bench.scaling import with_earlier
    point = lambda n, stage, model, seconds: {
        "interactions": n, "stage": stage, "model": model, "seconds": seconds,
        "peak_rss_mb": 600.0, "baseline_rss_mb": 500.0}
    earlier = {"points": [point(n, stage, model, n / 1e4) for n in (1e5, 1e6)
                          for stage, model in (("data", None), ("train", "bpr"),
                                               ("train", "sasrec"))],
               "evaluations": [{"model": "sasrec"}, {"model": "bpr"}]}
    fresh = {"note": "new.", "points": [point(n, "train", "bpr", n / 1e5) for n in (1e5, 1e7)],
             "evaluations": [{"model": "bpr", "size": 1e7}], "growth": []}
    out = with_earlier(fresh, earlier, ["bpr"])
    kept = [(p["stage"], p["model"], p["interactions"]) for p in out["points"]]
    assert kept == [("train", "bpr", 1e5), ("train", "bpr", 1e7), ("train", "sasrec", 1e5),
                    ("train", "sasrec", 1e6)]
    assert [e["model"] for e in out["evaluations"]] == ["bpr", "sasrec"]
    assert {g["model"]: g["time_exponent"] for g in out["growth"]} == pytest.approx(
        {"bpr": 1.0, "sasrec": 1.0})
    assert out["note"].endswith("The sasrec rows are from the earlier run (not re-measured).")
    assert with_earlier(fresh, {"points": earlier["points"][:2]}, ["bpr"]) is fresh


def test_the_implicit_report_reads_per_solver_verdicts_and_an_older_single_one():
    """The implicit section's checks: one line per recozoo solver (`verdicts`), and for results
    written before solvers were raced, the single `verdict` of the default solver's bpr."""
    from bench.report import implicit_lines

    row = {"side": "recozoo", "model": "bpr", "epochs": 5, "best_epoch": 4,
           "sec_per_epoch": 0.05, "seconds_to_best": 0.2, "ndcg@10": 0.25}
    verdict = {"sec_per_epoch_ratio": 5.0, "time_to_best_ratio": 10.8, "time_to_best_met": False,
               "time_to_match_ratio": 2.0, "ndcg_met": True}
    fast = {"sec_per_epoch_ratio": 1.8, "time_to_best_ratio": 1.05, "time_to_best_met": True,
            "time_to_match_ratio": None, "ndcg_met": True}
    entry = {"dataset": "ml-100k", "split": "preset", "rows": [row]}
    section = {"protocol": "p", "threads": 2,
               "datasets": [{**entry, "verdicts": {"bpr": verdict, "bpr (pair_sgd)": fast}}]}
    checks = [line for line in implicit_lines(section) if line.startswith("- ml-100k")]
    assert len(checks) == 2
    assert "recozoo bpr:" in checks[0] and "best 10.800 **miss**" in checks[0]
    assert "recozoo bpr (pair_sgd):" in checks[1] and "best 1.050 ok" in checks[1]
    older = {"protocol": "p", "threads": 2, "datasets": [{**entry, "verdict": verdict}]}
    checks = [line for line in implicit_lines(older) if line.startswith("- ml-100k")]
    assert len(checks) == 1 and "recozoo bpr:" in checks[0] and "best 10.800 **miss**" in checks[0]
