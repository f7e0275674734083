"""Run artifacts: the files a run leaves behind, and the only thing leaderboards, fusion and
serving read. Every file is written to a temporary name and renamed, so a reader never sees a
half-written artifact.

A run directory holds::

    config.yaml            the resolved config
    metrics.json           flat metrics and facts (see DESIGN.md, "Run artifacts"); with
                           eval.cold_items > 0 also test_cold/<name>@<k>: the test metrics over
                           the users whose target is a held-out cold item, cold targets only
    per_user_test.parquet  per-user test values of the main metrics
    rankings_val.parquet   top-N (item, score) per validation user
    rankings_test.parquet  top-N (item, score) per test user (these three are streamed batch by
                           batch as evaluation runs: `StageListWriter`)
    targets_val.parquet    held-out validation items per user
    targets_test.parquet   held-out test items per user
    items.parquet          item index, external id, title, popularity, tail flag, popularity
                           bucket, category (+ index)
    users.parquet          user index, external id
    history.parquet        every known (user, item) interaction in time order (for serving)
    checkpoints/best.ckpt  the best checkpoint
    fusion.json            (fusion folders only) how the fusion was built

`RunDir` names these files (nothing else spells them) and `RunRecord` reads and writes
metrics.json.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

if TYPE_CHECKING:
    from recozoo.data.datamodule import DatasetInfo

@dataclass(frozen=True)
class RunDir:
    """A run folder: the one place that names its files.

    Example:
        >>> run = RunDir("logs/runs/ease")
        >>> pd.read_parquet(run.rankings("test"))
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        """The resolved config (``config.yaml``)."""
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        """The flat metrics and facts (``metrics.json``, a `RunRecord`)."""
        return self.path / "metrics.json"

    @property
    def per_user_test(self) -> Path:
        return self.path / "per_user_test.parquet"

    def rankings(self, stage: str) -> Path:
        """The top-N (user, rank, item, score) of every ``stage`` ("val"/"test") user."""
        return self.path / f"rankings_{_stage(stage)}.parquet"

    def targets(self, stage: str) -> Path:
        """The held-out (user, item) rows of ``stage``."""
        return self.path / f"targets_{_stage(stage)}.parquet"

    @property
    def items(self) -> Path:
        return self.path / "items.parquet"

    @property
    def users(self) -> Path:
        return self.path / "users.parquet"

    @property
    def history(self) -> Path:
        return self.path / "history.parquet"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def fusion(self) -> Path:
        """A fusion folder's description (``fusion.json``, `recozoo.ensemble`)."""
        return self.path / "fusion.json"

    @property
    def hydra_overrides(self) -> Path:
        """The command-line overrides of a Hydra job."""
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def catalogue_files(self) -> tuple[Path, ...]:
        """What serving needs besides the model: item and user tables and the history."""
        return (self.items, self.users, self.history)

    @property
    def protocol_files(self) -> tuple[Path, ...]:
        """The files that are the same for every run of one protocol (a fusion copies them)."""
        return (self.targets("val"), self.targets("test"), *self.catalogue_files)

    @property
    def is_fusion(self) -> bool:
        return self.fusion.exists()

    def read_record(self) -> RunRecord:
        return RunRecord.read(self.metrics)

    def write_record(self, record: RunRecord) -> None:
        record.write(self.metrics)


#: the evaluated stages, each with its lists and targets in a run folder
STAGES = ("val", "test")


def _stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
    return stage


#: metrics.json facts in the order they are written (DESIGN.md, "Run artifacts")
FACTS: tuple[str, ...] = (
    "status", "error", "traceback", "model", "data", "split", "seed", "n_users", "n_items",
    "n_interactions", "n_params", "head_share", "heavy_user_share", "rerank", "rerank_weight", "debias", "epochs",
    "train_seconds", "epoch_seconds", "val_seconds", "eval_seconds", "torch_threads",
    "code", "fusion_seconds",
    "best_checkpoint",
    "chosen_on_validation", "val_curve")
_FACT_NAMES = frozenset(FACTS)
#: facts written (as null) even when unknown, in a successful run
_ALWAYS = _FACT_NAMES - {"error", "traceback", "fusion_seconds", "chosen_on_validation",
                         "torch_threads", "val_curve", "val_seconds", "code"}
#: metric keys start with one of these stages
METRIC_STAGES: tuple[str, ...] = ("val/", "test/", "test_cold/")


@dataclass
class RunRecord(Mapping[str, Any]):
    """``metrics.json``: a run's facts and metric values, typed.

    Facts are attributes (``record.model``, ``record.seed``); metric values are in ``metrics``
    keyed ``"<stage>/<name>@<k>"`` (null/None where no user qualified). It reads as the flat
    mapping written to disk too (``record["test/ndcg@10"]``, ``record.get("n_params")``).
    Keys it does not know are kept in ``extra`` and written back unchanged.

    Old run folders stay readable: missing facts are None, and the popularity bucket formerly
    named ``tail`` (the bottom half of the catalogue) is read as ``distant``.
    """

    status: str = "ok"
    model: str | None = None
    data: str | None = None
    split: str | None = None
    seed: int | None = None
    n_users: int | None = None
    n_items: int | None = None
    n_interactions: int | None = None
    n_params: int | None = None
    head_share: float | None = None
    heavy_user_share: float | None = None
    rerank: str | None = None
    rerank_weight: float | None = None
    debias: str | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    epoch_seconds: list[float] | None = None
    #: seconds of each validation inside the fit (`recozoo.training_callbacks.RunTimer`): the
    #: evaluation alone, as RecBole times its validations; None in folders made before it was
    #: recorded
    val_seconds: list[float] | None = None
    eval_seconds: float | None = None
    #: torch intra-op threads of the run's process, which its seconds depend on (a model's
    #: ``train_threads`` may train on fewer); None in folders made before it was recorded
    torch_threads: int | None = None
    #: the code that made the run (`recozoo.provenance.code_version`: recozoo's version, the
    #: checkout's commit and whether its code had uncommitted changes, library versions); None
    #: in folders made before it was recorded
    code: dict[str, Any] | None = None
    fusion_seconds: float | None = None
    best_checkpoint: str | None = None
    #: scoring-time settings the model chose on validation (`Recommender.choose_on_validation`)
    chosen_on_validation: dict[str, Any] | None = None
    #: the validations inside the fit, in order: ``epoch`` (epochs trained when it ran, 1-based
    #: like ``epoch_seconds``), ``step`` (optimiser steps before it) and its values that
    #: `recozoo.evaluation.evaluator.curve_values` keeps; None in folders made before it was
    #: recorded
    val_curve: list[dict[str, float]] | None = None
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object: facts first, then the metrics in key order."""
        flat: dict[str, Any] = {}
        for name in FACTS:
            value = getattr(self, name)
            if value is not None or (self.ok and name in _ALWAYS):
                flat[name] = value
        flat.update(self.extra)
        flat.update(sorted(self.metrics.items()))
        return flat

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> RunRecord:
        facts: dict[str, Any] = {}
        metrics: dict[str, float | None] = {}
        extra: dict[str, Any] = {}
        for key, value in flat.items():
            if key in FACTS:
                facts[key] = value
            elif key.startswith(METRIC_STAGES):
                metrics[_current_metric_key(key)] = None if value is None else float(value)
            else:
                extra[key] = value
        return cls(**facts, metrics=metrics, extra=extra)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """Read a ``metrics.json``; the error names the file."""
        path = Path(path)
        try:
            flat = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: is {path.parent} a finished recozoo "
                                    "run?") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(flat, dict):
            raise ValueError(f"{path}: expected a JSON object, found {type(flat).__name__}")
        return cls.from_dict(flat)

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    # the flat mapping, as written to disk (a key lookup does not build the whole mapping:
    # leaderboards read many keys of many runs)
    def __getitem__(self, key: str) -> Any:
        if key in self.metrics:
            return self.metrics[key]
        if key in _FACT_NAMES:
            value = getattr(self, key)
            if value is not None or (self.ok and key in _ALWAYS):
                return value
            raise KeyError(key)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _current_metric_key(key: str) -> str:
    """A metric key in today's names: ``test/recall@10/tail`` (the bucket renamed ``distant``)
    -> ``test/recall@10/distant``."""
    parts = key.split("/")
    if len(parts) == 3 and parts[2] == "tail":
        return f"{parts[0]}/{parts[1]}/distant"
    return key




def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically; NaN and inf become null so any JSON reader accepts the file."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            return clean(value.item())
        return value
    atomic_write_bytes(path, json.dumps(clean(payload), indent=2, sort_keys=False).encode())


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rankings_table(outputs: Mapping[str, torch.Tensor]) -> pa.Table:
    """Long-format top-N table (user, rank, item, score) of one batch of a stage's outputs;
    entries at -inf (masked items that filled a short list) are dropped."""
    users, items, scores = outputs["user"], outputs["items"], outputs["scores"]
    n = items.shape[1]
    score = scores.reshape(-1).float().numpy()
    keep = np.isfinite(score)
    return pa.table({"user": users.repeat_interleave(n).numpy()[keep],
                     "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), len(users))[keep],
                     "item": items.reshape(-1).numpy()[keep],
                     "score": score[keep]})


def per_user_table(outputs: Mapping[str, torch.Tensor]) -> pa.Table:
    """Per-user metric values of one test batch (one row per user, in user order)."""
    order = np.argsort(outputs["user"].numpy(), kind="stable")
    return pa.table({k: v.numpy()[order] for k, v in outputs.items()
                     if k not in ("items", "scores")})


#: Parquet dictionary encoding per streamed file: only for the columns that repeat (a
#: dictionary of item ids and scores cost more than the rest of the write: 943 users' top 100,
#: 14.6 -> 7.1 ms, and the file is smaller, 704 -> 671 KB)
DICTIONARY_COLUMNS = {"rankings": ["user", "rank"], "per_user": False}


class StageListWriter:
    """Streams one evaluation stage's ranked lists, and for the test stage its per-user values,
    into a run folder: one Parquet row group per batch, so memory stays one batch however many
    users are evaluated (the lists of 10^7 interactions' users, held and gathered, were ~600 MB
    per stage on every rank).

    In one process the files are written under temporary names and renamed by `close`. Under
    DDP each rank writes a part (``part=rank``) and, once every rank has closed its own, rank 0
    joins them with `merge_parts`: in rank order, which is user order, because ranks evaluate
    contiguous blocks of the sorted users (`recozoo.distributed.UserShardSampler`).

    Args:
        run: the run folder.
        stage: "val" or "test".
        part: this rank's part number under DDP; None in one process.
    """

    def __init__(self, run: RunDir, stage: str, part: int | None = None):
        self.paths = {"rankings": run.rankings(stage), "per_user": run.per_user_test}
        self.part = part
        self.batches = 0  # batches whose lists were written
        self._writers: dict[str, Any] = {}
        self._worker: ThreadPoolExecutor | None = None  # the file writes, one at a time
        self._pending: Future | None = None

    def _temporary(self, kind: str, part: int | None) -> Path:
        path = self.paths[kind]
        return path.with_name(f".{path.name}.{'writing' if part is None else f'part{part}'}")

    def write(self, outputs: Mapping[str, torch.Tensor]) -> None:
        """Append one batch: its lists (``user``, ``items``, ``scores``) and/or its per-user
        values (``user`` and the values), the layout of `Evaluator.outputs`; a batch may come in
        two calls, its lists first. The tables are built and written on a background thread, one
        batch after another, so the write runs beside the caller's next work (the metrics of the
        batch whose lists were just ranked); at most one write is pending, so memory stays two
        batches. A failed write is raised by the next call or by `close`."""
        self._wait()
        if "items" in outputs:
            self.batches += 1
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recozoo-lists")
        self._pending = self._worker.submit(self._write_now, dict(outputs))

    def _write_now(self, outputs: Mapping[str, torch.Tensor]) -> None:
        tables = {}
        if "items" in outputs:
            tables["rankings"] = rankings_table(outputs)
        if any(k not in ("user", "items", "scores") for k in outputs):
            tables["per_user"] = per_user_table(outputs)
        for kind, table in tables.items():
            if kind not in self._writers:
                self.paths[kind].parent.mkdir(parents=True, exist_ok=True)
                self._writers[kind] = pq.ParquetWriter(self._temporary(kind, self.part),
                                                       table.schema,
                                                       use_dictionary=DICTIONARY_COLUMNS[kind])
            self._writers[kind].write_table(table)

    def _wait(self) -> None:
        """Wait for the pending write; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the files (in one process: rename them into place; under DDP: leave the part
        for `merge_parts`)."""
        try:
            self._wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
        for kind, writer in self._writers.items():
            writer.close()
            if self.part is None:
                os.replace(self._temporary(kind, None), self.paths[kind])
        self._writers = {}

    def merge_parts(self, batches: list[int]) -> None:
        """Join the ranks' parts, in rank order, into the run folder's files and remove them.

        Args:
            batches: the batches each rank wrote (`batches` of every rank's writer); a rank
                that wrote none has no part. A part that should be there and is not (ranks on
                machines that do not share the run folder) is an error naming it.
        """
        for kind, path in self.paths.items():
            present = [self._temporary(kind, r) for r, n in enumerate(batches) if n]
            if kind == "per_user" and not any(p.exists() for p in present):
                continue  # a validation stage: lists only
            missing = [str(p) for p in present if not p.exists()]
            if missing:
                raise RunFileError(f"evaluation lists of other ranks not found: {missing}; "
                                   "under DDP every rank must write to the same run folder "
                                   "(a file system shared by the nodes)")
            if not present:
                continue
            target = self._temporary(kind, None)
            writer = None
            for part in present:
                source = pq.ParquetFile(part)
                writer = writer or pq.ParquetWriter(target, source.schema_arrow,
                                                    use_dictionary=DICTIONARY_COLUMNS[kind])
                for group in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(group))
            writer.close()
            os.replace(target, path)
            for part in present:
                part.unlink()


class RunFileError(ValueError):
    """A run folder's file that is missing or not what a run writes (the message says why)."""


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A Parquet file of a run folder with at least ``columns``; the error names the file."""
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise RunFileError(f"{path} not found: is {Path(path).parent} a finished recozoo "
                           "run?") from None
    missing = [c for c in columns if c not in frame]
    if missing:
        raise RunFileError(f"{path}: missing columns {missing} (found {list(frame.columns)})")
    return frame


def read_items(run: RunDir) -> pd.DataFrame:
    """``items.parquet``, checked: one row per item index 0..n_items-1, in order."""
    items = read_table(run.items, ("item", "item_id", "popularity", "is_tail"))
    if not np.array_equal(items["item"].to_numpy(), np.arange(len(items))):
        raise RunFileError(f"{run.items}: column 'item' must be 0..n_items-1 in order")
    return items


def item_facts(items: pd.DataFrame, name: str, n_users: int,
               head_share: float | None) -> DatasetInfo:
    """The `DatasetInfo` a run's model was built with, from its ``items.parquet`` alone.

    The tail mask and popularity buckets are read from the table; runs written before the
    ``bucket`` column existed get them from the popularity, as training decided them.
    """
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.data.popularity import DEFAULT_HEAD_SHARE

    share = DEFAULT_HEAD_SHARE if head_share is None else float(head_share)
    category = None
    if "category_index" in items:
        category = torch.tensor(items["category_index"].to_numpy(np.int64))
    elif "category" in items:
        # runs written before category_index existed: first-appearance order, as the sources
        # factorize it (exact unless preprocessing dropped items)
        category = torch.as_tensor(pd.factorize(items["category"], sort=False)[0])
    facts: dict[str, Any] = {
        "item_text": items["text"].astype(str).tolist() if "text" in items else None,
        "item_category": category}
    popularity = items["popularity"].to_numpy(np.float64)
    if "bucket" not in items:
        return DatasetInfo.from_popularity(name, n_users, popularity, share, **facts)
    return DatasetInfo(name=name, n_users=n_users, n_items=len(items),
                       item_popularity=torch.as_tensor(popularity, dtype=torch.float32),
                       tail_mask=torch.as_tensor(items["is_tail"].to_numpy(bool, copy=True)),
                       head_share=share, item_bucket=torch.as_tensor(
                           items["bucket"].to_numpy(np.int64, copy=True)), **facts)


def read_item_facts(run: RunDir, n_users: int, head_share: float | None,
                    name: str = "") -> DatasetInfo:
    """`item_facts` of a run folder's ``items.parquet``."""
    return item_facts(read_items(run), name or run.path.name, n_users, head_share)
