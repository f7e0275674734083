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
    rankings_test.parquet  top-N (item, score) per test user
    targets_val.parquet    held-out validation items per user
    targets_test.parquet   held-out test items per user
    items.parquet          item index, external id, title, popularity, tail flag, category (+ index)
    users.parquet          user index, external id
    history.parquet        every known (user, item) interaction in time order (for serving)
    checkpoints/best.ckpt  the best checkpoint
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

METRICS_FILE = "metrics.json"


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


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json as a dict."""
    path = Path(run_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished recozoo run?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def rankings_frame(outputs: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Long-format top-N table (user, rank, item, score) from a stage's gathered outputs;
    entries at -inf (masked items that filled a short list) are dropped."""
    users, items, scores = outputs["user"], outputs["items"], outputs["scores"]
    n = items.shape[1]
    frame = pd.DataFrame({
        "user": users.repeat_interleave(n).numpy(),
        "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), len(users)),
        "item": items.reshape(-1).numpy(),
        "score": scores.reshape(-1).float().numpy(),
    })
    return frame[np.isfinite(frame["score"].to_numpy())].reset_index(drop=True)


def per_user_frame(outputs: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per-user metric values of the test stage (one row per user)."""
    columns = {k: v.numpy() for k, v in outputs.items() if k not in ("items", "scores")}
    return pd.DataFrame(columns).sort_values("user").reset_index(drop=True)
