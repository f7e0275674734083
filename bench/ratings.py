"""Rating prediction against scikit-surprise 1.1.5 on ml-100k (``make bench``'s ``ratings``).

For each seed, recozoo's rating protocol (``experiment=ratings``: every rating, per-user random
8:1:1, early stopping on validation RMSE) trains each recozoo rating model; the exact training
and test rows of that split are exported (user, item, rating) and Surprise's SVD, SVD++ and
BaselineOnly are fitted on the same training rows, with Surprise's defaults, and scored on the
same test rows. recozoo's validation rows are not given to Surprise (it uses none).

Surprise lives in its own virtual environment (``~/.cache/recozoo/peers/surprise/venv``, or
``$RECOZOO_SURPRISE_VENV``), created with pip on first use; it is never a dependency of recozoo.
The runner script (`bench/surprise_runner.py`) is run with that interpreter and writes JSON.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from bench import repo_root
from bench.compare import run_recozoo, thread_env
from bench.peers import PeerError, PipPeer
from bench.process import run_process
from recozoo.artifacts import RunDir

#: the pinned peer
SURPRISE_REQUIREMENT = "scikit-surprise==1.1.5"
#: Surprise's models, by the runner's names
SURPRISE_MODELS = ("SVD", "SVDpp", "BaselineOnly")
#: what the issue asks of recozoo's best rating model (mean test RMSE over the seeds)
RMSE_TARGET = 0.910


@dataclass
class SurprisePeer(PipPeer):
    """scikit-surprise in its own virtual environment (``$RECOZOO_SURPRISE_VENV`` or
    ``~/.cache/recozoo/peers/surprise/venv``, where earlier versions installed it)."""

    requirement: ClassVar[str] = SURPRISE_REQUIREMENT
    module: ClassVar[str] = "surprise"
    venv_variable: ClassVar[str] = "RECOZOO_SURPRISE_VENV"
    # Surprise 1.1.5 compiles C extensions against the numpy it finds; where that fails with
    # numpy 2, the install is retried with numpy < 2
    retries: ClassVar[tuple[tuple[str, ...], ...]] = ((), ("numpy<2",))

    @classmethod
    def venv(cls) -> Path:
        return Path(os.environ.get(cls.venv_variable,
                                   "~/.cache/recozoo/peers/surprise/venv")).expanduser()

    def run(self, train: Path, test: Path, seed: int, threads: int) -> dict[str, Any]:
        """Fit every Surprise model on ``train``, score ``test``; the runner's JSON."""
        out = self.scratch / f"surprise_seed{seed}.json"
        out.unlink(missing_ok=True)
        command = [str(self.python), str(repo_root() / "bench" / "surprise_runner.py"),
                   "--train", str(train), "--test", str(test), "--seed", str(seed),
                   "--models", ",".join(SURPRISE_MODELS), "--json-out", str(out)]
        result = run_process(command, env=thread_env(threads), cwd=self.scratch,
                             log=self.scratch / f"surprise_seed{seed}.log")
        if result.returncode != 0 or not out.exists():
            raise PeerError(f"surprise_runner.py failed (exit {result.returncode}):\n"
                            f"{result.tail()}")
        return json.loads(out.read_text())


def export_split(overrides: list[str], folder: Path) -> tuple[Path, Path]:
    """Build the recozoo DataModule of ``overrides`` (the split a run with them trains on) and
    write its training and test rows as ``user, item, rating`` TSV; returns the two files."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recozoo.train import build_datamodule

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(repo_root() / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = build_datamodule(cfg)
    dm.setup()
    data = dm.data
    if data.rating is None:
        raise ValueError(f"{data.name} has no explicit ratings: the ratings section needs them")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rows in (("train", dm.indices.train), ("test", dm.indices.test)):
        path = folder / f"{name}.tsv"
        pd.DataFrame({"user": data.user[rows], "item": data.item[rows],
                      "rating": data.rating[rows]}).to_csv(path, sep="\t", index=False)
        files.append(path)
    return files[0], files[1]


def _same_test_rows(run: Path, test: Path) -> bool:
    """Whether the recozoo run was tested on exactly the exported test rows."""
    targets = pd.read_parquet(RunDir(run).targets("test"))
    exported = pd.read_csv(test, sep="\t")
    key = lambda frame: np.sort(frame.user.to_numpy(np.int64) * 1_000_003
                                + frame.item.to_numpy(np.int64))
    return bool(np.array_equal(key(targets), key(exported)))


def ratings_section(models: list[str], seeds: list[int], data: list[str], out: Path,
                    threads: int, peers: bool = True, extra: list[str] | None = None,
                    say: Callable[[str], None] = print) -> dict[str, Any]:
    """recozoo's rating models and Surprise's on the same splits, one per seed.

    Args:
        models: recozoo rating models (``model=<name>``).
        seeds: one split (and training seed) each.
        data: the data overrides (ml-100k with its ratings).
        out: scratch folder.
        threads: torch / BLAS threads on both sides.
        peers: false runs recozoo alone.
        extra: more overrides of recozoo's runs (e.g. a shorter ``trainer.max_epochs``).

    Returns:
        ``runs`` (one entry per seed, model and side), ``summary`` (mean and standard
        deviation per model over the seeds) and the peer's note.
    """
    peer, reason = (SurprisePeer.find(out / "surprise", say=say) if peers
                    else (None, "peers=false"))
    section: dict[str, Any] = {"protocol": "experiment=ratings: every rating, per-user random "
                               "8:1:1; recozoo early-stopped on val RMSE; Surprise fitted with "
                               "its defaults on the same training rows", "seeds": list(seeds),
                               "runs": []}
    if peer is None:
        section["peer_note"] = f"Surprise not run: {reason}"
        say(section["peer_note"])
    for seed in seeds:
        base = ["experiment=ratings", *data, f"seed={seed}"]
        train, test = export_split(base, out / "ratings" / f"seed{seed}")
        for model in models:
            run = out / "runs" / f"ratings_{model}_seed{seed}"
            say(f"  recozoo {model}, seed {seed}")
            try:
                metrics = run_recozoo(base + [f"model={model}", *(extra or [])], run, threads)
            except RuntimeError as error:
                section["runs"].append({"side": "recozoo", "model": model, "seed": seed,
                                        "error": str(error)})
                continue
            section["runs"].append({
                "side": "recozoo", "model": model, "seed": seed,
                "rmse": metrics.get("test/rmse"), "mae": metrics.get("test/mae"),
                "fit_seconds": metrics.get("train_seconds"), "epochs": metrics.get("epochs"),
                "test_seconds": metrics.get("eval_seconds"),
                "same_test_rows": _same_test_rows(run, test)})
        if peer is not None:
            say(f"  Surprise {', '.join(SURPRISE_MODELS)}, seed {seed}")
            try:
                found = peer.run(train, test, seed, threads)
            except PeerError as error:
                section["runs"].append({"side": "surprise", "seed": seed, "error": str(error)})
                continue
            section["surprise_version"] = found.get("surprise")
            for result in found["results"]:
                section["runs"].append({"side": "surprise", "seed": seed, **result})
    section["summary"] = summarise(section["runs"])
    return section


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (side, model): mean and standard deviation of RMSE, MAE and seconds over seeds,
    best mean RMSE first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("rmse") is not None:
            groups.setdefault((run["side"], run["model"]), []).append(run)
    rows = []
    for (side, model), found in groups.items():
        row: dict[str, Any] = {"side": side, "model": model, "seeds": len(found)}
        for key in ("rmse", "mae", "fit_seconds", "test_seconds"):
            values = [r[key] for r in found if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return sorted(rows, key=lambda r: r["rmse"])
