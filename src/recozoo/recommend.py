"""Batch export: the top-K of every known user of a run (or a fusion) into one Parquet file.

``python -m recozoo.recommend run=<run folder | checkpoint | fusion folder> out=recs.parquet
[k=10] [batch_size=1024] [exclude_seen=true] [tail_boost=0.0] [tail_slots=0.0] [device=auto]``

The file is long format, one row per (user, rank): ``user_id``, ``rank`` (1 = best),
``item_id``, ``score``. Users are scored in batches through the same `Engine` as the HTTP
service (so an export and the service agree), written batch by batch, and the file appears
under its name only once complete.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a program: thread settings before torch is imported
    from recozoo.runtime import configure_process

    configure_process()

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import MISSING
from tqdm.auto import tqdm

from recozoo.cli import parse_settings
from recozoo.serve.engine import Engine, tail_reranker
from recozoo.serve.loading import RunLoadError

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32())])


@dataclass
class RecommendSettings:
    """Write every known user's top-k of a run (or a fusion) into one Parquet file.

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        out: the Parquet file to write.
        k: items per user.
        batch_size: users scored together.
        exclude_seen: leave out each user's known items.
        tail_boost: personalised xQuAD weight (the engine's ``tail_boost``; 0 keeps the model's order).
        tail_slots: share of each list's places for the best tail items below the model's top
            (the engine's ``tail_slots``, `recozoo.rerank.TailSlots`; not with ``tail_boost``).
        device: ``auto`` (CUDA where present), ``cpu`` or ``cuda``.
        progress: show a progress bar.
    """

    run: str = MISSING
    out: str = MISSING
    k: int = 10
    batch_size: int = 1024
    exclude_seen: bool = True
    tail_boost: float = 0.0
    tail_slots: float = 0.0
    device: str = "auto"
    progress: bool = True


def export_recommendations(engine: Engine, out: str | Path, k: int = 10,
                           batch_size: int = 1024, exclude_seen: bool = True,
                           tail_boost: float = 0.0, progress: bool = True,
                           tail_slots: float = 0.0) -> dict[str, float]:
    """Write every user's top-``k`` to ``out``; returns counts and timing.

    Raises:
        ValueError: ``k`` outside 1..n_items, ``batch_size`` < 1, ``tail_boost`` or
            ``tail_slots`` outside [0, 1], or both above 0.
    """
    catalog = engine.catalog
    if not 1 <= k <= catalog.n_items:
        raise ValueError(f"k must be within 1..{catalog.n_items} (the number of items), got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, value in (("tail_boost", tail_boost), ("tail_slots", tail_slots)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    tail_reranker(tail_boost, tail_slots, k)  # both above 0: the error, before any file
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    start, rows = time.perf_counter(), 0
    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer, \
                tqdm(total=catalog.n_users, unit="user", desc="recommend",
                     disable=not progress) as bar:
            for first in range(0, catalog.n_users, batch_size):
                users = range(first, min(first + batch_size, catalog.n_users))
                queries = [engine.query_for_user(u, k, exclude_seen, tail_boost, tail_slots)
                           for u in users]
                ranked = engine.rank(queries)
                lengths = np.array([len(items) for items, _ in ranked])
                items = np.concatenate([items for items, _ in ranked])
                scores = np.concatenate([scores for _, scores in ranked])
                table = pa.table({
                    "user_id": np.repeat(catalog.user_ids[first:first + len(queries)], lengths),
                    "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32),
                    "item_id": catalog.item_ids[items],
                    "score": scores.astype(np.float32),
                }, schema=SCHEMA)
                writer.write_table(table)
                rows += len(items)
                bar.update(len(queries))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    return {"users": catalog.n_users, "rows": rows, "seconds": round(seconds, 3),
            "users_per_second": round(catalog.n_users / max(seconds, 1e-9), 1)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    settings = parse_settings(RecommendSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m recozoo.recommend")
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        engine = Engine.load(settings.run, device)
        stats = export_recommendations(engine, settings.out, k=settings.k,
                                       batch_size=settings.batch_size,
                                       exclude_seen=settings.exclude_seen,
                                       tail_boost=settings.tail_boost,
                                       tail_slots=settings.tail_slots,
                                       progress=settings.progress)
    except (RunLoadError, ValueError) as error:
        raise SystemExit(f"recozoo.recommend: {error}") from None
    print(f"recozoo.recommend: {stats['rows']} rows for {stats['users']} users -> "
          f"{settings.out} in {stats['seconds']}s ({stats['users_per_second']} users/s)")
    return stats


if __name__ == "__main__":
    main()
