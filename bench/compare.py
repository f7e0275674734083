"""recozoo against RecBole 1.2.1 on ml-100k: seconds per epoch, evaluation seconds, quality.

Protocols are RecBole's defaults (see ``<shared>/peers/recbole/README.md``):

- general models: every rating is an interaction, per-user random 8:1:1, full ranking with the
  user's earlier items masked, early stopping on validation NDCG@10 (patience 10 on both sides);
- sequence models: per-user leave-one-out by time, full ranking. RecBole trains one sample per
  prefix and needs minutes per epoch on a CPU, so it runs a fixed number of epochs (one by
  default; Caser is stopped by a time budget and reports its estimated epoch time). recozoo is
  run twice: for the same number of epochs (quality at equal epochs, the comparison the peer
  README suggests) and with early stopping (the quality it reaches, with its training time).

When the peer is available recozoo is scored on RecBole's exact splits (``split=preset``), so the
quality columns compare like with like; otherwise it uses its own ``split=random``/``split=loo``.
Runs alternate (recozoo first for even rows, RecBole first for odd ones) so drift of the machine
load hits both sides alike.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import repo_root
from bench.peers import RECBOLE_SPLIT_FOLDERS, PeerError, RecBolePeer
from bench.process import run_process
from recozoo.artifacts import RunDir
from recozoo.runtime import THREAD_SETTINGS


@dataclass(frozen=True)
class ModelSpec:
    """A recozoo model, its RecBole counterpart (None: recozoo only) and its protocol."""

    name: str
    peer: str | None
    kind: str  # "general" or "sequence"
    #: RecBole's time budget for its training (seconds); Caser needs ~15 min per epoch
    peer_time_budget: float | None = None
    #: recozoo overrides that make an epoch the same work as RecBole's
    overrides: tuple[str, ...] = ()

    @property
    def split(self) -> str:
        return "random" if self.kind == "general" else "loo"


#: the compared zoo; models later added to recozoo join here (peer None if RecBole lacks them)
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("bpr", "BPR", "general"),
    ModelSpec("ease", "EASE", "general"),
    ModelSpec("itemknn", "ItemKNN", "general"),
    # RecBole's auto-encoders train on batches of 2048 users (one step per ml-100k epoch);
    # recozoo's default is 128 (8 steps), so an epoch would compare different work. The weight
    # average is off: its decay is per step, and at one step an epoch 0.99 would span 100 epochs
    # (RecBole averages nothing; the panel's ml100k_recbole rows compare the defaults)
    ModelSpec("multvae", "MultiVAE", "general",
              overrides=("model.batch_size=2048", "model.ema_decay=null")),
    ModelSpec("gru4rec", "GRU4Rec", "sequence"),
    ModelSpec("caser", "Caser", "sequence", peer_time_budget=180.0),
    ModelSpec("sasrec", "SASRec", "sequence"),
)

#: the figures compared for every model
QUALITY = ("ndcg@10", "recall@10")
#: the timings compared for every model: training seconds per epoch; the test stage's seconds
#: (recozoo ranks the top 100 and writes them and the per-user values to the run folder;
#: RecBole ranks the top 20 and writes nothing); and the median seconds of a validation inside
#: the fit, the same work on both sides (rank the validation users over the catalogue, keep
#: the top 20, compute the metrics at 10 and 20: recozoo 54 values, RecBole 18; keep nothing)
SECONDS = ("sec_per_epoch", "eval_seconds", "val_seconds")


@dataclass
class CompareSettings:
    """How long each side trains (see `bench.__main__.BenchSettings`)."""

    general_max_epochs: int = 200
    patience: int = 10
    sequence_epochs: int = 1
    sequence_max_epochs: int = 50
    sequence_time_budget: float = 600.0
    #: wall-clock cap of recozoo's sequence runs trained to convergence (Lightning max_time)
    sequence_max_minutes: float = 5.0
    threads: int = 2
    seed: int = 2020
    #: alternating runs per side for general models; their seconds are reported as medians
    #: (RecBole's own timings vary by ~40% between runs on this machine)
    repeats: int = 3
    #: score recozoo on RecBole's exact rows (false: recozoo's own split=random / split=loo)
    peer_splits: bool = True


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a recozoo run with ``threads`` threads (the same as the peer's)."""
    import os
    env = dict(os.environ, **THREAD_SETTINGS, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_recozoo(overrides: list[str], out: Path, threads: int) -> dict[str, Any]:
    """``python train.py <overrides>`` into ``out``; its metrics.json plus process figures."""
    root = repo_root()
    shutil.rmtree(out, ignore_errors=True)  # a leftover last.ckpt would make train.py resume
    command = [sys.executable, str(root / "train.py"), *overrides,
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               f"hydra.run.dir={out}"]
    result = run_process(command, env=thread_env(threads), cwd=root,
                         log=out.with_suffix(".log"))
    record = RunDir(out)
    metrics = dict(record.read_record()) if record.metrics.exists() else {}
    if result.returncode != 0 or metrics.get("status") != "ok":
        raise RuntimeError(f"recozoo run {' '.join(overrides)} failed (exit {result.returncode}):"
                           f"\n{result.tail()}")
    return {**metrics, "peak_rss_mb": round(result.peak_rss_mb, 1),
            "wall_seconds_process": round(result.seconds, 2), "command": " ".join(overrides)}


def recozoo_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one recozoo run."""
    epochs = metrics.get("epoch_seconds") or []
    validations = metrics.get("val_seconds") or []
    return {
        "sec_per_epoch": round(statistics.median(epochs), 4) if epochs else None,
        "eval_seconds": metrics.get("eval_seconds"),
        "val_seconds": round(statistics.median(validations), 4) if validations else None,
        "epochs": metrics.get("epochs"),
        "train_seconds": metrics.get("train_seconds"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        **{name: metrics.get(f"test/{name}") for name in QUALITY},
        "command": metrics.get("command"),
    }


def recbole_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one RecBole run (a run stopped inside its first epoch has only
    an estimated epoch time)."""
    if result.get("status") == "too_slow":
        return {"sec_per_epoch": result.get("est_sec_per_epoch"), "sec_per_epoch_estimated": True,
                "eval_seconds": None, "val_seconds": None, "epochs": 0,
                "train_seconds": result.get("train_seconds_total"),
                "peak_rss_mb": result.get("peak_rss_mb"), "stopped_by": result.get("stopped_by"),
                **{name: None for name in QUALITY}}
    test = result.get("test", {})
    return {
        "sec_per_epoch": result.get("sec_per_epoch_median"),
        "eval_seconds": result.get("eval_seconds"),
        "val_seconds": result.get("valid_sec_per_epoch_median"),
        "epochs": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
        "stopped_by": result.get("stopped_by"),
        "train_seconds": result.get("train_seconds_total"),
        "peak_rss_mb": result.get("peak_rss_mb"),
        **{name: test.get(name) for name in QUALITY},
        "versions": result.get("versions"),
        "loadavg": [result.get("loadavg_start"), result.get("loadavg_end")],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


#: targets of the issue: recozoo / RecBole at most this (time) ...
EPOCH_TARGET = {"general": 0.5, "sequence": 0.1}
EVAL_TARGET = 0.3


def compare_row(spec: ModelSpec, ours: dict[str, Any], peer: dict[str, Any] | None,
                same_epochs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One model's comparison: both sides' figures, the ratios and the targets met."""
    row: dict[str, Any] = {"model": spec.name, "peer": spec.peer, "kind": spec.kind,
                           "split": spec.split, "overrides": list(spec.overrides),
                           "recozoo": ours, "recbole": peer}
    if same_epochs is not None:
        row["recozoo_same_epochs"] = same_epochs
    if peer is None:
        return row
    quality = same_epochs if same_epochs is not None else ours
    ratios = {
        "sec_per_epoch": ratio(ours["sec_per_epoch"], peer["sec_per_epoch"]),
        "eval_seconds": ratio(ours["eval_seconds"], peer["eval_seconds"]),
        "val_seconds": ratio(ours.get("val_seconds"), peer.get("val_seconds")),
        **{name: ratio(quality[name], peer[name]) for name in QUALITY},
    }
    if same_epochs is not None:
        ratios["ndcg@10_converged"] = ratio(ours["ndcg@10"], peer["ndcg@10"])
    row["ratios"] = ratios
    row["targets"] = {
        "sec_per_epoch": _meets(ratios["sec_per_epoch"], EPOCH_TARGET[spec.kind]),
        "eval_seconds": _meets(ratios["eval_seconds"], EVAL_TARGET),
        "ndcg@10": None if ratios["ndcg@10"] is None else ratios["ndcg@10"] >= 1.0,
    }
    return row


def _meets(value: float | None, at_most: float) -> bool | None:
    return None if value is None else value <= at_most


def compare(specs: list[ModelSpec], data: list[str], peer: RecBolePeer | None,
            settings: CompareSettings, out: Path,
            say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every model on both sides (alternating the order) and return the comparison rows.

    Args:
        specs: the models.
        data: the data overrides of recozoo's runs (ml-100k, or a tiny shop for a smoke run).
        peer: the RecBole peer, or None to run recozoo alone.
        settings: epochs, patience, threads.
        out: scratch folder for run folders and logs.
    """
    splits = (peer.export_splits(settings.threads)
              if peer is not None and settings.peer_splits else None)
    rows = []
    for index, spec in enumerate(specs):
        split = ([f"split={spec.split}"] if splits is None else
                 ["split=preset", f"split.folder={splits / RECBOLE_SPLIT_FOLDERS[spec.split]}"])
        # every validation user, as RecBole validates
        base = [f"model={spec.name}", *spec.overrides, *data, *split, f"seed={settings.seed}",
                f"callbacks.early_stopping.patience={settings.patience}", "eval.val_users=null"]
        general = spec.kind == "general"
        max_epochs = settings.general_max_epochs if general else settings.sequence_max_epochs
        cap = [] if general else [f"++trainer.max_time='{_duration(settings.sequence_max_minutes)}'"]
        sides = {
            "recozoo": lambda repeat: _recozoo_side(
                f"recozoo {spec.name}: up to {max_epochs} epochs (early stopping)"
                + (f", run {repeat + 1}" if repeat else ""),
                base + [f"trainer.max_epochs={max_epochs}", *cap],
                out / (f"recozoo_{spec.name}" + (f"_{repeat + 1}" if repeat else "")),
                settings.threads, say),
            "recbole": lambda repeat: _recbole_side(spec, peer, settings, say),
        }
        runs: dict[str, list[dict[str, Any] | None]] = {"recozoo": [], "recbole": []}
        for repeat in range(max(1, settings.repeats) if general else 1):
            order = ["recozoo", "recbole"] if (index + repeat) % 2 == 0 else ["recbole", "recozoo"]
            for side in order:
                runs[side].append(sides[side](repeat))
        figures = {side: median_figures(found) for side, found in runs.items()}
        same_epochs = None
        if not general and figures["recbole"] is not None:
            epochs = settings.sequence_epochs
            same_epochs = _recozoo_side(
                f"recozoo {spec.name}: {epochs} epoch(s), as RecBole",
                base + [f"trainer.max_epochs={epochs}", "callbacks.early_stopping=null"],
                out / f"recozoo_{spec.name}_same_epochs", settings.threads, say)
        rows.append(compare_row(spec, figures["recozoo"], figures["recbole"], same_epochs))
        say(summary_line(rows[-1]))
    return rows


def median_figures(runs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One side's figures over repeated runs: the first run's, with the median of each run's
    seconds per epoch, evaluation seconds and validation seconds (every run's seconds kept
    under ``runs``)."""
    found = [run for run in runs if run is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    combined = dict(found[0])
    for key in SECONDS:
        values = [run[key] for run in found if run.get(key) is not None]
        combined[key] = round(statistics.median(values), 4) if values else None
    combined["runs"] = [{key: run.get(key) for key in (*SECONDS, *QUALITY)} for run in found]
    return combined


def _duration(minutes: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS``."""
    seconds = round(minutes * 60)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _failed(error: Exception) -> dict[str, Any]:
    return {"error": str(error), **{key: None for key in SECONDS},
            **{name: None for name in QUALITY}}


def _recozoo_side(title: str, overrides: list[str], out: Path, threads: int,
                  say: Callable[[str], None]) -> dict[str, Any]:
    say(f"  {title}")
    try:
        return recozoo_figures(run_recozoo(overrides, out, threads))
    except RuntimeError as error:  # recorded in the report; the other models still run
        say(f"  failed: {error}")
        return _failed(error)


def _recbole_side(spec: ModelSpec, peer: RecBolePeer | None, settings: CompareSettings,
                  say: Callable[[str], None]) -> dict[str, Any] | None:
    if peer is None or spec.peer is None:
        return None
    general = spec.kind == "general"
    epochs = settings.general_max_epochs if general else settings.sequence_epochs
    budget = spec.peer_time_budget if spec.peer_time_budget is not None else (
        None if general else settings.sequence_time_budget)
    say(f"  RecBole {spec.peer}: up to {epochs} epochs"
        + (f", time budget {budget:.0f}s" if budget else ""))
    try:
        return recbole_figures(peer.run(spec.peer, epochs=epochs, threads=settings.threads,
                                        stopping_step=settings.patience, time_budget=budget,
                                        seed=settings.seed))
    except PeerError as error:
        say(f"  RecBole {spec.peer} failed: {error}")
        return _failed(error)


def summary_line(row: dict[str, Any]) -> str:
    """One printed line per model."""
    ours, peer = row["recozoo"], row.get("recbole")

    def fmt(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    def side(name: str, figures: dict[str, Any]) -> str:
        return (f"{name} {fmt(figures['sec_per_epoch'], '.3f')} s/epoch, validation "
                f"{fmt(figures.get('val_seconds'), '.3f')} s, test stage "
                f"{fmt(figures['eval_seconds'], '.3f')} s, NDCG@10 {fmt(figures['ndcg@10'])}")

    text = f"{row['model']}: {side('recozoo', ours)}"
    if peer:
        text += f" | {side('RecBole', peer)}"
    return text
