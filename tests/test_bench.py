"""`make bench` plumbing: RecBole's splits read back exactly, ratios and targets, the growth fit,
the report, and a smoke run on a tiny shop. Timings are measured, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recozoo.bench.compare import ModelSpec, compare_row
from recozoo.bench.peers import PresetSplit, RecBolePeer
from recozoo.bench.report import render
from recozoo.bench.scaling import growth
from recozoo.bench.throughput import achieved, matmul_topk
from recozoo.data import Interactions

ROOT = Path(__file__).resolve().parents[1]


def interactions() -> Interactions:
    # user a: items x, y, z, w; user b: items x, y, z (external ids are strings and ints mixed)
    return Interactions(user=np.array([0, 0, 0, 0, 1, 1, 1]),
                        item=np.array([0, 1, 2, 3, 0, 1, 2]),
                        timestamp=np.arange(7, dtype=float),
                        user_ids=np.array(["a", "b"]), item_ids=np.array([10, 11, 12, 13]))


def write_split(folder: Path, train, valid, test) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        lines = ["user_id\titem_id\ttimestamp"] + [f"{u}\t{i}\t0" for u, i in rows]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")


def test_preset_split_reads_the_listed_rows_and_trains_on_the_rest(tmp_path):
    # train.tsv leaves out user a's first item (RecBole's sequential file lists targets only)
    write_split(tmp_path, train=[("a", 11), ("b", 10)], valid=[("a", 12), ("b", 11)],
                test=[("a", 13), ("b", 12)])
    split = PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    assert split.valid.tolist() == [2, 5]
    assert split.test.tolist() == [3, 6]
    assert split.train.tolist() == [0, 1, 4]


def test_preset_split_names_the_file_and_row_it_cannot_find(tmp_path):
    write_split(tmp_path, train=[("a", 10)], valid=[("a", 11)], test=[("b", 13)])
    with pytest.raises(ValueError, match=r"test\.tsv.*user b item 13"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    write_split(tmp_path, train=[("a", 11)], valid=[("a", 11)], test=[("a", 12)])
    with pytest.raises(ValueError, match=r"train\.tsv"):  # a training row also held out
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)


def test_peer_is_missing_without_the_shared_folder(tmp_path):
    peer, reason = RecBolePeer.find(tmp_path / "nowhere", tmp_path / "scratch")
    assert peer is None and "no RecBole peer scripts" in reason


def figures(epoch, evaluation, ndcg, recall=0.1, epochs=5):
    return {"sec_per_epoch": epoch, "eval_seconds": evaluation, "ndcg@10": ndcg,
            "recall@10": recall, "epochs": epochs}


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


def test_quick_bench_runs_alone_and_writes_results(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "recozoo.bench", "quick=true", "threads=1",
                    "sections=[compare]", "models=[ease]", f"out={out}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    results = json.loads((out / "quick" / "results.json").read_text())
    (row,) = results["comparison"]
    assert row["model"] == "ease" and row["recbole"] is None
    assert 0 < row["recozoo"]["ndcg@10"] <= 1
    assert "| ease" in (out / "quick" / "results.md").read_text()


@pytest.mark.slow
def test_quick_scaling_and_throughput_sections(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "recozoo.bench", "quick=true", "threads=1",
                    "sections=[scale,throughput]", f"out={out}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    results = json.loads((out / "quick" / "results.json").read_text())
    stages = {(p["stage"], p["model"]) for p in results["scaling"]["points"]}
    assert {("data", None), ("train", "bpr"), ("eval", "sasrec")} <= stages
    assert results["throughput"] and results["throughput"][0]["bare"]["gflops"] > 0


def test_repeated_runs_report_median_seconds_and_keep_every_run():
    from recozoo.bench.compare import median_figures

    runs = [{"sec_per_epoch": s, "eval_seconds": e, "ndcg@10": 0.3, "recall@10": 0.2, "epochs": 9}
            for s, e in ((0.30, 0.10), (0.20, 0.30), (0.25, 0.20))]
    combined = median_figures([runs[0], None, runs[1], runs[2]])
    assert combined["sec_per_epoch"] == 0.25 and combined["eval_seconds"] == 0.20
    assert combined["ndcg@10"] == 0.3 and combined["epochs"] == 9
    assert [run["sec_per_epoch"] for run in combined["runs"]] == [0.30, 0.20, 0.25]
    assert median_figures([runs[0]]) is runs[0] and median_figures([None]) is None
