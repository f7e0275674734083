"""recozoo's BPR against implicit 0.7.3 (BPR and ALS) on the same split (``make bench``'s
``implicit`` section).

For each data set (ml-100k on RecBole's exact random 8:1:1 split where the RecBole peer can
export it, else recozoo's own ``split=random``; the synthetic shop of ``implicit_shop_size``
interactions, leave-one-out) recozoo's bpr is trained with early stopping on validation NDCG@10
(``train.py``, a normal run folder). Its split is then read back from that run folder
(`recozoo.evaluation.saved_lists.recorded_inputs`: training pairs, validation targets, test
users and test inputs) and handed to implicit, which trains on exactly those training pairs,
early-stops on the same validation targets (patience alike) and writes its test top-K lists.
Both sides' test metrics come from recozoo's metric code: implicit's lists are scored against
the run's test targets by `recozoo.report.external.score_external`, the path any outside tool's
lists take.

Figures per side: seconds per training epoch (median; validation excluded on both sides),
seconds to the best validation NDCG@10 (the training seconds of the epochs up to and including
the best one), test NDCG@10 and Recall@10, and the process's peak memory.

implicit lives in its own virtual environment (``~/.cache/recozoo-peers/implicit/venv``, or
``$RECOZOO_IMPLICIT_VENV``), created with pip on first use; it is never a dependency of recozoo.
The runner script (`bench/implicit_runner.py`) is run with that interpreter and writes JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from bench import repo_root
from bench.compare import run_recozoo, thread_env
from bench.peers import PeerError, PipPeer
from bench.process import run_process
from recozoo.artifacts import RunDir, read_items, read_table

#: the pinned peer
IMPLICIT_REQUIREMENT = "implicit==0.7.3"
#: implicit's models, by the runner's names
IMPLICIT_MODELS = ("bpr", "als")
#: what the issue asks: recozoo's seconds to its best validation NDCG@10 at most this times
#: implicit's (BPR), with a test NDCG@10 at least implicit's
TIME_TO_BEST_TARGET = 3.0


@dataclass
class ImplicitPeer(PipPeer):
    """implicit in its own virtual environment (``$RECOZOO_IMPLICIT_VENV`` or
    ``~/.cache/recozoo-peers/implicit/venv``)."""

    requirement: ClassVar[str] = IMPLICIT_REQUIREMENT
    module: ClassVar[str] = "implicit"
    venv_variable: ClassVar[str] = "RECOZOO_IMPLICIT_VENV"

    def run(self, split: Path, model: str, threads: int, seed: int, max_epochs: int,
            patience: int, k: int) -> tuple[dict[str, Any], np.ndarray]:
        """Train implicit's ``model`` on ``split`` (`export_split`); the runner's JSON (plus
        ``peak_rss_mb``) and the test lists."""
        stem = self.scratch / f"{split.stem}_{model}"
        out, lists = stem.with_suffix(".json"), stem.with_name(stem.name + "_lists.npy")
        out.unlink(missing_ok=True)
        command = [str(self.python), str(repo_root() / "bench" / "implicit_runner.py"),
                   "--split", str(split), "--model", model, "--threads", str(threads),
                   "--seed", str(seed), "--max-epochs", str(max_epochs),
                   "--patience", str(patience), "--k", str(k), "--json-out", str(out),
                   "--lists-out", str(lists)]
        result = run_process(command, env=thread_env(threads), cwd=self.scratch,
                             log=stem.with_suffix(".log"))
        if result.returncode != 0 or not out.exists():
            raise PeerError(f"implicit_runner.py --model {model} failed (exit "
                            f"{result.returncode}):\n{result.tail()}")
        figures = json.loads(out.read_text())
        figures["peak_rss_mb"] = round(result.peak_rss_mb, 1)
        return figures, np.load(lists)


def export_split(run: Path, out: Path) -> Path:
    """The split of a finished recozoo run as the runner's ``split.npz`` (see
    `bench.implicit_runner`): training pairs, validation targets, test users and test inputs,
    as the run's indices."""
    from recozoo.evaluation.saved_lists import recorded_inputs

    folder = RunDir(run)
    record = folder.read_record()
    inputs, _ = recorded_inputs(folder, record, int(record.n_users))
    if inputs is None:
        raise ValueError(f"{run}: the run folder cannot tell its training rows (see "
                         "recozoo.evaluation.saved_lists): no split to hand to implicit")
    val = read_table(folder.targets("val"), ("user", "item"))
    test = read_table(folder.targets("test"), ("user", "item"))
    out.parent.mkdir(parents=True, exist_ok=True)
    column = lambda frame, name: frame[name].to_numpy(np.int64)
    np.savez(out, train_user=column(inputs["val"], "user"), train_item=column(inputs["val"], "item"),
             val_user=column(val, "user"), val_item=column(val, "item"),
             test_user=np.unique(column(test, "user")),
             test_input_user=column(inputs["test"], "user"),
             test_input_item=column(inputs["test"], "item"),
             n_users=np.int64(record.n_users), n_items=np.int64(record.n_items))
    return out


def score_lists(lists: np.ndarray, test_users: np.ndarray, run: Path, name: str,
                out: Path) -> dict[str, Any]:
    """Score a peer's (n_test_users, K) lists (run indices, -1 empty) against the run's test
    targets with recozoo's metric code (`score_external`); the scored run's metrics."""
    from recozoo.report.external import score_external

    folder = RunDir(run)
    users = read_table(folder.users, ("user", "user_id")).set_index("user")["user_id"]
    items = read_items(folder).set_index("item")["item_id"]
    rows, positions = np.nonzero(lists >= 0)
    frame = pd.DataFrame({
        "user_id": users.loc[test_users[rows]].astype(str).to_numpy(),
        "item_id": items.loc[lists[rows, positions]].astype(str).to_numpy(),
        "rank": positions + 1})
    list_file = out / f"{name}.parquet"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(list_file, index=False)
    scored = RunDir(score_external(list_file, run, out_dir=out / f"external_{name}", name=name))
    return dict(scored.read_record())


def validation_curve(metrics: Mapping[str, Any]) -> list[float]:
    """val/ndcg@10 after each epoch of the fit, from a run's metrics.json (``val_curve``: every
    validation inside the fit, not the best checkpoint's after it); an epoch's first one counts
    (``trainer.val_check_interval`` below 1 validates more than once an epoch)."""
    curve: dict[int, float] = {}
    for entry in metrics.get("val_curve") or []:
        if "val/ndcg@10" in entry:
            curve.setdefault(int(entry["epoch"]), float(entry["val/ndcg@10"]))
    return [curve[epoch] for epoch in sorted(curve)]


def seconds_to_best(curve: list[float], epoch_seconds: list[float],
                    ) -> tuple[int | None, float | None]:
    """The best epoch (1-based: the first maximum of ``curve``, one value per epoch) and the
    training seconds up to and including it; None without a curve."""
    if not curve:
        return None, None
    best = int(np.argmax(curve))
    return best + 1, round(float(sum(epoch_seconds[:best + 1])), 4)


def seconds_to_reach(curve: list[float], epoch_seconds: list[float],
                     level: float) -> float | None:
    """Training seconds until validation NDCG@10 first reaches ``level`` (None: never)."""
    reached = next((i for i, value in enumerate(curve) if value >= level), None)
    return None if reached is None else round(float(sum(epoch_seconds[:reached + 1])), 4)


def solver_label(solver: str) -> str:
    """A recozoo row's model name: ``bpr`` for the default solver, ``bpr (pair_sgd)`` else."""
    return "bpr" if solver == "optimizer" else f"bpr ({solver})"


def recozoo_side(overrides: list[str], run: Path, threads: int, max_epochs: int,
                 solver: str = "optimizer") -> dict[str, Any]:
    """recozoo's bpr with ``model.solver=solver`` trained with early stopping (at most
    ``max_epochs``): its figures (the run folder is kept)."""
    import statistics
    metrics = run_recozoo([*overrides, f"model.solver={solver}"], run, threads)
    epochs = metrics.get("epoch_seconds") or []
    curve = validation_curve(metrics)
    best_epoch, to_best = seconds_to_best(curve, epochs)
    return {"side": "recozoo", "model": solver_label(solver), "epochs": metrics.get("epochs"),
            "best_epoch": best_epoch, "sec_per_epoch": round(statistics.median(epochs), 4)
            if epochs else None, "seconds_to_best": to_best,
            "train_seconds": metrics.get("train_seconds"),
            "best_val_ndcg@10": max(curve) if curve else None,
            "val_curve": curve, "epoch_seconds": epochs,
            "stopped_by": "max_epochs" if len(epochs) >= max_epochs else "early_stopping",
            "eval_seconds": metrics.get("eval_seconds"),
            "ndcg@10": metrics.get("test/ndcg@10"), "recall@10": metrics.get("test/recall@10"),
            "peak_rss_mb": metrics.get("peak_rss_mb"), "command": metrics.get("command")}


def recbole_side(comparison: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """RecBole's BPR from the compare section (same split: RecBole's own), if it ran; its
    seconds to best are its median epoch times its best epoch (marked estimated)."""
    row = next((r for r in comparison or [] if r.get("model") == "bpr"), None)
    peer = (row or {}).get("recbole")
    if not peer or peer.get("sec_per_epoch") is None:
        return None
    best = peer.get("best_epoch")
    to_best = (round(peer["sec_per_epoch"] * (best + 1), 3) if best is not None else None)
    return {"side": "recbole", "model": "BPR", "epochs": peer.get("epochs"),
            "best_epoch": None if best is None else best + 1,
            "sec_per_epoch": peer.get("sec_per_epoch"), "seconds_to_best": to_best,
            "seconds_to_best_estimated": True, "train_seconds": peer.get("train_seconds"),
            "eval_seconds": peer.get("eval_seconds"), "ndcg@10": peer.get("ndcg@10"),
            "recall@10": peer.get("recall@10"), "peak_rss_mb": peer.get("peak_rss_mb"),
            "from": "compare section"}


def verdict(rows: list[dict[str, Any]], model: str = "bpr") -> dict[str, Any]:
    """recozoo's row ``model`` (a `solver_label`) against implicit's BPR: the time-to-best
    ratio and the NDCG@10 check."""
    ours = next((r for r in rows if r["side"] == "recozoo" and r["model"] == model
                 and "error" not in r), None)
    theirs = next((r for r in rows if r["side"] == "implicit" and r["model"] == "bpr"
                   and "error" not in r), None)
    if ours is None or theirs is None or not theirs.get("seconds_to_best"):
        return {}
    ratio = ours["seconds_to_best"] / theirs["seconds_to_best"] if ours.get(
        "seconds_to_best") else None
    epoch = (ours["sec_per_epoch"] / theirs["sec_per_epoch"]
             if ours.get("sec_per_epoch") and theirs.get("sec_per_epoch") else None)
    # a second view of the same race: how long recozoo takes to match implicit's best
    # validation quality (it keeps improving past it)
    level = theirs.get("best_val_ndcg@10")
    to_match = (seconds_to_reach(ours.get("val_curve") or [], ours.get("epoch_seconds") or [],
                                 level) if level is not None else None)
    return {"time_to_best_ratio": ratio, "sec_per_epoch_ratio": epoch,
            "seconds_to_match": to_match,
            "time_to_match_ratio": None if to_match is None else
            to_match / theirs["seconds_to_best"],
            "time_to_best_met": None if ratio is None else ratio <= TIME_TO_BEST_TARGET,
            "ndcg_met": None if ours.get("ndcg@10") is None or theirs.get("ndcg@10") is None
            else ours["ndcg@10"] >= theirs["ndcg@10"]}


def dataset_rows(name: str, overrides: list[str], split_name: str, out: Path, threads: int,
                 peer: ImplicitPeer | None, models: list[str], max_epochs: int, patience: int,
                 seed: int, say: Callable[[str], None], peer_patience: int | None = None,
                 solvers: tuple[str, ...] | list[str] = ("optimizer",)) -> dict[str, Any]:
    """recozoo's bpr (a row per solver) then implicit's models on one data set (see the module
    docstring); implicit gets the split of the first recozoo run (every run has the same)."""
    runs = {solver: out / "runs" / ("implicit_recozoo_bpr" + (
        "" if solver == "optimizer" else f"_{solver}") + f"_{name}") for solver in solvers}
    # every validation user on both sides: implicit's runner validates them all
    base = ["model=bpr", *overrides, f"seed={seed}", f"trainer.max_epochs={max_epochs}",
            f"callbacks.early_stopping.patience={patience}", "eval.val_users=null"]
    entry: dict[str, Any] = {"dataset": name, "split": split_name, "rows": [],
                             "date": datetime.datetime.now().isoformat(timespec="seconds"),
                             "load_start": [round(x, 2) for x in os.getloadavg()]}
    for solver, run in runs.items():
        say(f"  {name}: recozoo {solver_label(solver)}, up to {max_epochs} epochs "
            "(early stopping)")
        try:
            entry["rows"].append(recozoo_side(base, run, threads, max_epochs, solver))
        except RuntimeError as error:
            entry["rows"].append({"side": "recozoo", "model": solver_label(solver),
                                  "error": str(error)})
    run = next((runs[s] for s, row in zip(runs, entry["rows"]) if "error" not in row), None)
    if run is None:
        return entry
    if peer is None:
        entry["load_end"] = [round(x, 2) for x in os.getloadavg()]
        return entry
    split = export_split(run, peer.scratch / f"{name}.npz")
    test_users = np.load(split)["test_user"]
    ks = [int(m[1]) for k in RunDir(run).read_record()
          if (m := re.fullmatch(r"test/ndcg@(\d+)", k))]
    for model in models:
        say(f"  {name}: implicit {model}, up to {max_epochs} epochs (early stopping)")
        try:
            figures, lists = peer.run(split, model, threads, seed, max_epochs,
                                      peer_patience or patience, max(ks))
        except PeerError as error:
            entry["rows"].append({"side": "implicit", "model": model, "error": str(error)})
            continue
        scored = score_lists(lists, test_users, run, f"implicit_{model}_{name}",
                             out / "runs")
        entry["rows"].append({"side": "implicit", **figures,
                              "ndcg@10": scored.get("test/ndcg@10"),
                              "recall@10": scored.get("test/recall@10")})
        entry["implicit_version"] = figures.get("implicit")
    entry["verdicts"] = {row["model"]: verdict(entry["rows"], row["model"])
                         for row in entry["rows"] if row["side"] == "recozoo"}
    entry["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return entry


def implicit_section(datasets: list[tuple[str, list[str], str]], out: Path, threads: int,
                     models: list[str], max_epochs: dict[str, int], patience: int,
                     seed: int = 2020, peers: bool = True, peer_patience: int | None = None,
                     comparison: list[dict[str, Any]] | None = None,
                     say: Callable[[str], None] = print,
                     solvers: tuple[str, ...] | list[str] = ("optimizer",)) -> dict[str, Any]:
    """Every data set's rows (recozoo, implicit's models and, on RecBole's split, RecBole's BPR
    from the compare section).

    Args:
        datasets: (name, recozoo data and split overrides, split description) per data set.
        out: scratch folder.
        threads: torch / BLAS / implicit threads on both sides.
        models: implicit's models (``bpr``, ``als``).
        max_epochs: epoch cap of both sides per data set name.
        patience: validations without improvement before recozoo stops.
        peer_patience: the same for implicit (None: ``patience``). implicit's BPR at its
            default learning rate sits at popularity level for its first ~10 epochs on ml-100k
            (validation NDCG@10 0.11, then up to 0.19 near epoch 50), so a patience of 10
            stops it before it learns; a longer one only helps the peer.
        comparison: the compare section's rows (RecBole's BPR joins the table where the split
            is RecBole's).
        solvers: recozoo bpr's ``model.solver`` settings, a row and a verdict each.
    """
    peer, reason = (ImplicitPeer.find(out / "implicit", say=say) if peers
                    else (None, "peers=false"))
    section: dict[str, Any] = {
        "protocol": ("both sides early-stopped on validation NDCG@10 (patience "
                     f"{patience} for recozoo, {peer_patience or patience} for implicit); seconds to best = training seconds of the epochs up to the "
                     "best one (validation excluded); test metrics of both sides by recozoo's "
                     "metric code on their top-K lists; implicit with its defaults except "
                     "factors=64 (recozoo's embedding_dim)"),
        "threads": threads, "datasets": []}
    if peer is None:
        section["peer_note"] = f"implicit not run: {reason}"
        say(section["peer_note"])
    for name, overrides, split_name in datasets:
        entry = dataset_rows(name, overrides, split_name, out, threads, peer, models,
                             max_epochs.get(name, 200), patience, seed, say,
                             peer_patience=peer_patience, solvers=solvers)
        if "RecBole" in split_name:
            recbole = recbole_side(comparison)
            if recbole is not None:
                entry["rows"].append(recbole)
        section["datasets"].append(entry)
        for row in entry["rows"]:
            say("    " + ", ".join(f"{k} {row.get(k)}" for k in
                                   ("side", "model", "sec_per_epoch", "seconds_to_best",
                                    "ndcg@10", "error") if row.get(k) is not None))
    return section
