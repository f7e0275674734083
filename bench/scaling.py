"""How cost grows with data: time and peak memory on synthetic shops of growing size.

For each size (interactions; items grow with them, a tenth as many, users ~a twentieth) one
fresh process per model measures, in order:

- ``data``: reading the generated shop from its cache, preprocessing, splitting (leave-one-out)
  and building the evaluation inputs (`RecDataModule.setup`), with the model and its evaluator
  (`recozoo.train.build_experiment`, as a run prepares them);
- ``train``: one training epoch (``bpr``, ``sasrec``); where an epoch has more than
  ``max_batches`` batches, the first ``max_batches`` are timed and the epoch is extrapolated
  (marked ``estimated``);
- ``eval``: full-ranking evaluation of every test user over every item (``trainer.test``);
  where the test set has more than ``eval_batches`` batches (0: no limit) the first ones are
  timed and the whole is extrapolated (marked ``estimated``; its peak memory then holds the
  outputs of the timed batches only).

Each stage also records the process's CPU seconds (all threads): on a machine shared with
other jobs, wall seconds grow with the load and CPU seconds much less, so the growth rate is
fitted on both. Peak memory is the process's maximum resident set size at the end of each stage (so a stage's
figure includes what earlier stages still hold); the baseline after imports (~0.5 GB of Python,
torch and Lightning) is reported too, and memory growth is fitted on the peak above it. Generating the shop is done and cached first,
in its own process, and reported as ``generate``. The growth rate is the least-squares slope of
log(seconds) and log(peak MB) against log(interactions): 1.0 is linear growth.

Run one point alone: ``python -m bench.scaling '<json of point arguments>'``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import repo_root
from bench.compare import thread_env
from bench.process import run_process
from bench.throughput import achieved, matmul_topk

#: models whose training epoch is measured
SCALE_MODELS = ("bpr", "sasrec")
#: user and item counts per interaction of the generated shops (about a fifth of the generated
#: rows are repeats that preprocessing drops, hence 1/17 users: ~20 kept rows per user)
USERS_PER_INTERACTION, ITEMS_PER_INTERACTION = 1 / 17, 1 / 10
#: the shop's mean interactions per user is about sessions x length x (1 + cart/purchase events)
SHOP_SESSIONS, SHOP_LENGTH = 4.0, 4.5


def shop_overrides(interactions: int, cache_dir: Path) -> list[str]:
    """Config overrides of a shop of about ``interactions`` rows."""
    users = max(50, round(interactions * USERS_PER_INTERACTION))
    items = max(20, round(interactions * ITEMS_PER_INTERACTION))
    return ["data=shop", f"data.source.n_users={users}", f"data.source.n_items={items}",
            f"data.source.sessions_per_user={SHOP_SESSIONS}",
            f"data.source.session_length={SHOP_LENGTH}", "++data.source.vectorised=true",
            f"paths.cache_dir={cache_dir}"]


def _peak_mb() -> float:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_point(overrides: list[str], stages: list[str], max_batches: int,
                  output_dir: str, eval_batches: int = 0) -> dict[str, Any]:
    """In this process: compose the config, then time the stages (see the module docstring)."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from recozoo.artifacts import RunDir
    from recozoo.train import build_experiment

    baseline = round(_peak_mb(), 1)  # the interpreter, torch and Lightning, before any data
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(repo_root() / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        del cfg.hydra
    if "generate" in stages:  # only make the cache
        start = time.perf_counter()
        data = instantiate(cfg.data.source).load()
        return {"generate": {"seconds": round(time.perf_counter() - start, 3),
                             "peak_rss_mb": round(_peak_mb(), 1), "baseline_rss_mb": baseline,
                             "interactions": len(data),
                             "users": int(data.n_users), "items": int(data.n_items)}}
    L.seed_everything(cfg.seed, workers=True)
    figures: dict[str, Any] = {"baseline_rss_mb": baseline}
    start, cpu = time.perf_counter(), time.process_time()
    experiment = build_experiment(cfg)
    dm, model = experiment.datamodule, experiment.model
    figures["data"] = {"seconds": round(time.perf_counter() - start, 3),
                       "cpu_seconds": round(time.process_time() - cpu, 3),
                       "peak_rss_mb": round(_peak_mb(), 1)}
    figures["shape"] = {"interactions": len(dm.data), "users": dm.info.n_users,
                        "items": dm.info.n_items, "test_users": len(dm.indices.test)}
    n_batches = len(dm.train_dataloader())
    limited = 0 < max_batches < n_batches
    n_test = len(dm.test_dataloader())
    test_limited = 0 < eval_batches < n_test
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    trainer = instantiate(cfg.trainer, callbacks=[experiment.evaluator], logger=False,
                          enable_checkpointing=False, max_epochs=1, limit_val_batches=0,
                          limit_train_batches=max_batches if limited else None,
                          limit_test_batches=eval_batches if test_limited else None)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scale = n_batches / max_batches if limited else 1
    figures["train"] = {"seconds": round(seconds * scale, 3),
                        "cpu_seconds": round(cpu * scale, 3),
                        "estimated": limited, "batches": n_batches,
                        "batches_timed": max_batches if limited else n_batches,
                        "peak_rss_mb": round(_peak_mb(), 1)}
    # the test lists stream into the run folder as in train.py (bounded memory, writes timed)
    experiment.evaluator.list_folder = RunDir(output_dir)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.test(model, datamodule=dm, verbose=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scale = n_test / eval_batches if test_limited else 1
    figures["eval"] = {"seconds": round(seconds * scale, 3), "cpu_seconds": round(cpu * scale, 3),
                       "estimated": test_limited, "batches": n_test,
                       "batches_timed": eval_batches if test_limited else n_test,
                       "peak_rss_mb": round(_peak_mb(), 1)}
    figures["dim"] = int(cfg.model.get("embedding_dim") or cfg.model.get("hidden_size") or 0)
    return figures


def _run_point(arguments: dict[str, Any], threads: int, log: Path) -> dict[str, Any]:
    arguments = {**arguments, "output_dir": str(log.with_suffix(""))}
    result = run_process([sys.executable, "-m", "bench.scaling", json.dumps(arguments)],
                         env=thread_env(threads), cwd=repo_root(), log=log)
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"scaling point {arguments} failed (exit {result.returncode}):\n"
                           f"{result.tail()}")
    return json.loads(lines[-1])


def growth(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Least-squares slopes of log time and log memory against log interactions, per stage."""
    keys = sorted({(p["stage"], p.get("model")) for p in points}, key=str)
    out = []
    for stage, model in keys:
        series = [p for p in points if p["stage"] == stage and p.get("model") == model
                  and p.get("seconds")]
        if len(series) < 2:
            continue
        x = [math.log(p["interactions"]) for p in series]
        cpu = [p.get("cpu_seconds") for p in series]
        out.append({"stage": stage, "model": model,
                    "time_exponent": round(_slope(x, [math.log(p["seconds"]) for p in series]), 3),
                    "cpu_exponent": round(_slope(x, [math.log(c) for c in cpu]), 3)
                    if all(cpu) else None,
                    "memory_exponent": round(_slope(x, [math.log(max(1.0, _above(p)))
                                                        for p in series]), 3)})
    return out


def _above(point: dict[str, Any]) -> float:
    """Peak MB above the process's baseline after imports (what the data and model cost)."""
    return point["peak_rss_mb"] - point.get("baseline_rss_mb", 0.0)


def _slope(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx else float("nan")


def scaling_section(sizes: list[int], out: Path, threads: int, say: Callable[[str], None] = print,
                    quick: bool = False, max_batches: int = 20,
                    models: tuple[str, ...] | list[str] = SCALE_MODELS,
                    eval_batches: int = 0, full_eval_up_to: int | None = None
                    ) -> dict[str, Any]:
    """Every point of the curve, the growth rates and the shapes the throughput section uses.

    Args:
        sizes: interactions of the shops.
        models: the models measured at every size.
        max_batches: training batches timed per epoch (0: the whole epoch).
        eval_batches: test batches timed (0: the whole evaluation) at sizes above
            ``full_eval_up_to`` (None: at every size).
    """
    points: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    cache = out / "cache"
    for size in sizes:
        shop = shop_overrides(size, cache)
        extra = ["trainer.max_epochs=1"] + (["model.batch_size=64"] if quick else [])
        generated = _run_point({"overrides": shop, "stages": ["generate"],
                                "max_batches": max_batches}, threads,
                               out / f"generate_{size}.log")["generate"]
        say(f"  {size:,}: generated {generated['interactions']:,} interactions in "
            f"{generated['seconds']:.1f}s")
        points.append({"interactions": generated["interactions"], "users": generated["users"],
                       "items": generated["items"], "stage": "generate", "model": None,
                       "seconds": generated["seconds"], "peak_rss_mb": generated["peak_rss_mb"],
                       "baseline_rss_mb": generated["baseline_rss_mb"]})
        for model in models:
            figures = _run_point({"overrides": shop + [f"model={model}"] + extra,
                                  "stages": ["data", "train", "eval"],
                                  "max_batches": max_batches,
                                  "eval_batches": 0 if full_eval_up_to is not None
                                  and size <= full_eval_up_to else eval_batches},
                                 threads, out / f"{model}_{size}.log")
            shape = figures["shape"]
            for stage in ("data", "train", "eval"):
                if stage == "data" and model != models[0]:
                    continue  # the same data preparation for every model
                points.append({"interactions": shape["interactions"], "users": shape["users"],
                               "items": shape["items"], "stage": stage,
                               "model": None if stage == "data" else model,
                               "baseline_rss_mb": figures["baseline_rss_mb"], **figures[stage]})
            evaluations.append({"model": model, "size": size, **shape,
                                "dim": figures["dim"], "eval_seconds": figures["eval"]["seconds"]})
            say(f"  {size:,} {model}: data {figures['data']['seconds']:.1f}s, epoch "
                f"{figures['train']['seconds']:.1f}s"
                f"{' (est.)' if figures['train']['estimated'] else ''}, eval "
                f"{figures['eval']['seconds']:.1f}s"
                f"{' (est.)' if figures['eval']['estimated'] else ''}, peak {figures['eval']['peak_rss_mb']:.0f} MB")
    note = (f"Shops of {', '.join(f'{s:,}' for s in sizes)} interactions requested (items a tenth, "
            "users about a twentieth of that; 10^7 is an option: `scale_sizes=[100000,1000000,"
            f"10000000]`), models {', '.join(models)}, leave-one-out split, {threads} "
            "thread(s). Train: one epoch"
            + (f"; where an epoch has more than {max_batches} batches it is extrapolated from "
               "the first ones" if max_batches else ", whole")
            + ". Eval: every test user"
            + (f"; {'above ' + format(full_eval_up_to, ',') + ' requested interactions, ' if full_eval_up_to is not None else ''}"
               f"where there are more than {eval_batches} test batches the first ones are "
               "timed and the whole is extrapolated (its peak memory holds their outputs only)"
               if eval_batches else "")
            + ". Peak RSS is the process maximum at the end of each stage; 'above base' "
            "subtracts the process's RSS after imports.")
    return {"note": note, "points": points, "growth": growth(points), "evaluations": evaluations}


def with_earlier(fresh: dict[str, Any], earlier: dict[str, Any], models: list[str]
                 ) -> dict[str, Any]:
    """A scaling section of ``models`` completed by an earlier run's points of the other
    models (their train and eval rows; data and generate are this run's), growth refitted."""
    kept = [p for p in earlier.get("points", [])
            if p.get("model") is not None and p["model"] not in models]
    if not kept:
        return fresh
    points = fresh["points"] + kept
    others = sorted({p["model"] for p in kept})
    return {**fresh, "points": points, "growth": growth(points),
            "evaluations": fresh["evaluations"] + [e for e in earlier.get("evaluations", [])
                                                   if e["model"] not in models],
            "note": fresh["note"] + (f" The {', '.join(others)} rows are from the earlier run "
                                     "(not re-measured).")}


def throughput_section(results: dict[str, Any], threads: int,
                       up_to: int | None = None) -> list[dict[str, Any]]:
    """GFLOP/s of recozoo's BPR evaluations (ml-100k and the shops of at most ``up_to``
    requested interactions; None: all) against a bare matmul + top-K of the same shape."""
    import torch

    previous = torch.get_num_threads()
    rows = []
    workloads = []
    for row in results.get("comparison") or []:
        if row["model"] == "bpr" and row["recozoo"].get("eval_seconds"):
            workloads.append({"workload": "ml-100k bpr (random split)",
                              "users": row["recozoo"].get("test_users", 943), "items": 1682,
                              "dim": 64, "eval_seconds": row["recozoo"]["eval_seconds"]})
    for e in (results.get("scaling") or {}).get("evaluations", []):
        if e["model"] == "bpr" and (up_to is None or e.get("size", 0) <= up_to):
            workloads.append({"workload": f"shop {e['interactions']:,} bpr",
                              "users": e["test_users"], "items": e["items"], "dim": e["dim"],
                              "eval_seconds": e["eval_seconds"]})
    try:
        for w in workloads:
            bare = matmul_topk(w["users"], w["items"], w["dim"], threads=threads)
            rows.append({"workload": w["workload"], "eval_seconds": w["eval_seconds"],
                         "achieved_gflops": achieved(w["users"], w["items"], w["dim"],
                                                     w["eval_seconds"]), "bare": bare})
    finally:
        torch.set_num_threads(previous)
    return rows


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    print(json.dumps(measure_point(arguments["overrides"], arguments["stages"],
                                   int(arguments.get("max_batches", 30)),
                                   arguments["output_dir"],
                                   int(arguments.get("eval_batches", 0)))), flush=True)
