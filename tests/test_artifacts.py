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


def _batch_outputs(users: list[int], per_user: bool) -> dict:
    import torch
    user = torch.tensor(users)
    items = torch.stack([torch.tensor([u % 5, u % 5 + 1, u % 5 + 2]) for u in users])
    scores = torch.tensor([[3.0, 2.0, -math.inf]] * len(users))  # the last slot: a masked item
    out = {"user": user, "items": items, "scores": scores}
    if per_user:
        out["ndcg@10"] = user.float() / 10
    return out


def test_streamed_lists_are_what_the_whole_stage_would_write(tmp_path):
    """`StageListWriter` writes batch by batch what `rankings_table` / `per_user_table` of the
    whole stage would: in one process directly, under DDP as rank parts merged in rank order.
    No temporary file is left behind."""
    import pandas as pd
    import torch

    from recozoo.artifacts import StageListWriter, per_user_table, rankings_table

    def rankings_frame(outputs):
        return rankings_table(outputs).to_pandas()

    def per_user_frame(outputs):
        return per_user_table(outputs).to_pandas()

    batches = [[0, 1, 2], [3, 4], [5]]
    whole = {k: torch.cat([_batch_outputs(b, True)[k] for b in batches])
             for k in ("user", "items", "scores", "ndcg@10")}
    one = RunDir(tmp_path / "one")
    writer = StageListWriter(one, "test")
    for users in batches[:2]:
        writer.write(_batch_outputs(users, True))
    last = _batch_outputs(batches[2], True)  # as the Evaluator streams: lists, then values
    writer.write({k: last[k] for k in ("user", "items", "scores")})
    writer.write({k: last[k] for k in ("user", "ndcg@10")})
    writer.close()
    assert writer.batches == 3
    pd.testing.assert_frame_equal(pd.read_parquet(one.rankings("test")), rankings_frame(whole))
    pd.testing.assert_frame_equal(pd.read_parquet(one.per_user_test), per_user_frame(whole))
    assert len(pd.read_parquet(one.rankings("test"))) == 6 * 2  # -inf slots dropped

    ddp = RunDir(tmp_path / "ddp")
    ranks = [StageListWriter(ddp, "test", part=r) for r in range(3)]
    for rank, users in ((1, batches[1]), (0, batches[0]), (1, batches[2])):  # rank 2: no users
        ranks[rank].write(_batch_outputs(users, True))
    for writer in ranks:
        writer.close()
    ranks[0].merge_parts([w.batches for w in ranks])
    pd.testing.assert_frame_equal(pd.read_parquet(ddp.rankings("test")), rankings_frame(whole))
    pd.testing.assert_frame_equal(pd.read_parquet(ddp.per_user_test), per_user_frame(whole))
    for folder in (one.path, ddp.path):
        assert sorted(p.name for p in folder.iterdir()) == ["per_user_test.parquet",
                                                            "rankings_test.parquet"]


def test_a_failed_background_write_is_raised_and_leaves_no_file(tmp_path, monkeypatch):
    """The writes run on a thread: an error there is raised by the next call or by close, and
    the run folder gets no half-written file under the artifact's name."""
    import pyarrow.parquet as pq

    from recozoo.artifacts import StageListWriter

    def full_disk(self, table, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    run = RunDir(tmp_path)
    writer = StageListWriter(run, "val")
    writer.write(_batch_outputs([0, 1], per_user=False))  # returns: the write is on the thread
    with pytest.raises(OSError, match="No space left"):
        writer.write(_batch_outputs([2], per_user=False))
    writer.write(_batch_outputs([3], per_user=False))
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert not run.rankings("val").exists()


def test_streamed_validation_lists_have_no_per_user_file(tmp_path):
    from recozoo.artifacts import StageListWriter

    run = RunDir(tmp_path)
    writer = StageListWriter(run, "val")
    writer.write(_batch_outputs([0, 1], per_user=False))
    writer.close()
    assert run.rankings("val").exists() and not run.per_user_test.exists()


def test_a_missing_rank_part_is_an_error_not_a_short_file(tmp_path):
    """Ranks that do not share the run folder: rank 0 finds no part of rank 1, which wrote
    one, and says so instead of writing the lists of half the users."""
    from recozoo.artifacts import RunFileError, StageListWriter

    run = RunDir(tmp_path)
    writer = StageListWriter(run, "val", part=0)
    writer.write(_batch_outputs([0, 1], per_user=False))
    writer.close()
    with pytest.raises(RunFileError, match="rankings_val.parquet.part1"):
        writer.merge_parts([1, 2])
    assert not run.rankings("val").exists()
