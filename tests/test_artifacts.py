"""The run folder's contract: RunDir names each file once; RunRecord reads and writes metrics.json
(typed facts, flat metrics, old folders readable)."""

from __future__ import annotations

import json
import math

import pytest

from recozoo.artifacts import RunDir, RunRecord


def test_record_round_trips_through_the_flat_json(tmp_path):
    run = RunDir(tmp_path / "run")
    record = RunRecord(model="bpr", data="shop", split="loo", seed=3, n_users=10, n_items=5,
                       epoch_seconds=[0.5, 0.4],
                       metrics={"val/ndcg@10": 0.25, "test/tail_recall@10": math.nan})
    run.write_record(record)
    flat = json.loads(run.metrics.read_text())
    assert flat["status"] == "ok" and flat["model"] == "bpr" and flat["seed"] == 3
    assert flat["rerank_weight"] is None  # every contract fact is written, unknown ones as null
    assert flat["test/tail_recall@10"] is None  # no value is null, never 0
    again = run.read_record()
    assert again.model == "bpr" and again.epoch_seconds == [0.5, 0.4]
    assert again.metrics == {"val/ndcg@10": 0.25, "test/tail_recall@10": None}
    assert again["val/ndcg@10"] == 0.25 and again.get("missing", "-") == "-"


def test_failed_record_has_only_what_is_known(tmp_path):
    run = RunDir(tmp_path)
    run.write_record(RunRecord(status="failed", error="ValueError: bad", model="ease", seed=1))
    flat = json.loads(run.metrics.read_text())
    assert flat == {"status": "failed", "error": "ValueError: bad", "model": "ease", "seed": 1}
    assert not run.read_record().ok


def test_old_run_folders_stay_readable(tmp_path):
    # written before the bottom-half bucket was renamed "distant", with a key this version
    # does not know
    (tmp_path / "metrics.json").write_text(json.dumps({
        "status": "ok", "model": "pop", "test/recall@10/tail": 0.0, "test/recall@10": 0.1,
        "test/exposure@10/tail": 0.5, "custom_note": "kept"}))
    record = RunDir(tmp_path).read_record()
    assert record.metrics == {"test/recall@10/distant": 0.0, "test/recall@10": 0.1,
                              "test/exposure@10/distant": 0.5}
    assert record.extra == {"custom_note": "kept"} and record.head_share is None


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"),
                                              ("[1, 2]", "expected a JSON object")])
def test_bad_metrics_file_is_named(tmp_path, content, message):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        RunDir(tmp_path).read_record()
    assert "metrics.json" in str(error.value)


def test_missing_metrics_file_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="finished recozoo run"):
        RunDir(tmp_path).read_record()


def test_run_dir_names_every_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.rankings("test").name == "rankings_test.parquet"
    assert run.targets("val").name == "targets_val.parquet"
    assert [p.name for p in run.protocol_files] == [
        "targets_val.parquet", "targets_test.parquet", "items.parquet", "users.parquet",
        "history.parquet"]
    with pytest.raises(ValueError, match="stage must be"):
        run.rankings("train")
