"""`run(cfg)`: build the data and the model from config, fit, evaluate, write the run artifacts."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recozoo import artifacts
from recozoo.artifacts import RunDir, RunRecord
from recozoo.data.contracts import DEFAULT_HEAVY_USER_SHARE
from recozoo.data.datamodule import DatasetInfo, RecDataModule
from recozoo.debias import Debias
from recozoo.distributed import job_scope
from recozoo.evaluation import Evaluator, Ranker
from recozoo.models.base import ClosedFormRecommender, Recommender
from recozoo.provenance import code_version
from recozoo.report.published import PublishedResult, parse_published, published_lines
from recozoo.rerank import Reranker
from recozoo.runtime import long_lived_heap, quiet_lightning_logs
from recozoo.training_callbacks import (
    AtomicCheckpointIO,
    BatchSeed,
    KeepStopped,
    RunProgressBar,
    RunTimer,
)

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> RecDataModule:
    """The DataModule described by ``cfg.data``, ``cfg.split``, ``cfg.eval`` and the negative
    sampling of ``cfg.debias``."""
    debias = build_debias(cfg)
    return RecDataModule(
        source=instantiate(cfg.data.source),
        preprocessing=instantiate(cfg.data.preprocess),
        split=instantiate(cfg.split),
        seed=cfg.seed,
        head_share=cfg.eval.head_share,
        heavy_user_share=cfg.eval.get("heavy_user_share", DEFAULT_HEAVY_USER_SHARE),
        eval_batch_size=cfg.eval.batch_size,
        history_len=cfg.eval.history_len,
        num_workers=cfg.data.get("num_workers", 0),
        negative_probabilities=debias.negative_probabilities if debias is not None else None,
        cold_items=cfg.eval.get("cold_items", 0.0),
        val_users=cfg.eval.get("val_users"),
    )


def build_debias(cfg: DictConfig) -> Debias | None:
    """The popularity debiasing of ``cfg.debias`` (``debias=none``: None)."""
    return instantiate(cfg.debias) if cfg.get("debias") else None


def build_reranker(cfg: DictConfig) -> Reranker | None:
    """The re-ranker of ``cfg.rerank`` (``rerank=none``: None)."""
    return instantiate(cfg.rerank) if cfg.get("rerank") else None


def build_model(cfg: DictConfig, info: DatasetInfo) -> Recommender:
    """The model of ``cfg.model`` with the dataset facts and the popularity debiasing of
    ``cfg.debias``."""
    # config values become plain Python (checkpoint hparams must load with weights_only=True);
    # the dataset facts are passed as they are
    factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    model = factory(info=info)
    model.configure_debias(build_debias(cfg))
    return model


def build_ranker(cfg: DictConfig, model: Recommender, info: DatasetInfo) -> Ranker:
    """How ``model``'s scores become ranked lists: top ``eval.top_n`` (at least the largest
    metric cut-off), re-ranked by ``cfg.rerank``. Evaluation, the batch export and serving all
    rank through it."""
    top_n = max(int(cfg.eval.top_n), *(int(k) for k in cfg.eval.ks))
    return Ranker(model, info, top_n=top_n, reranker=build_reranker(cfg))


@dataclass
class Experiment:
    """What one run trains and evaluates: the data, the model and its evaluator."""

    datamodule: RecDataModule
    model: Recommender
    evaluator: Evaluator


def build_experiment(cfg: DictConfig) -> Experiment:
    """Prepare the data of ``cfg``, build its model and evaluator, and serve the model's
    training view."""
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(cfg, dm.info)
    view = model.train_view()
    if (view.kind == "sequences" and getattr(dm.split, "name", "") == "random"
            and getattr(dm.split, "sequence_order", "time") == "time"):
        log.warning(
            "%s learns the next item from the latest ones, but split=random holds out random "
            "ratings, not the next ones, and split.sequence_order=time keeps time order: on "
            "ml-100k's random 8:1:1 split the sequence models then rank near pop's level (test "
            "NDCG@10 0.13-0.17 against pop's 0.136-0.142, below it on some seeds; README: Known "
            "limits). Leave split.sequence_order=shuffled (the default there), or use split=loo "
            "or split=temporal for sequence models.", type(model).__name__)
    dm.use_view(view)
    evaluator = Evaluator(build_ranker(cfg, model, dm.info), ks=[int(k) for k in cfg.eval.ks])
    return Experiment(dm, model, evaluator)


def _choice(group: str, default: str) -> str:
    """The config-group option chosen for this run (e.g. model=ease -> "ease")."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError):  # composed outside a Hydra app (tests, notebooks)
        return default


def _component(cfg: DictConfig, group: str) -> str:
    """The name of the ``group`` component of ``cfg`` where no Hydra choice records it (a config
    composed in a test or notebook): its class name in lower case ("xquad"), or "none"."""
    node = cfg.get(group)
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower() if node else "none"


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # "HydraConfig was not set": composed outside a Hydra app
        return False


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _launch_rank() -> int:
    """0 for the process a user started (global rank 0), else a positive number: read from what
    launchers set (torchrun, SLURM, Lightning's DDP children and other nodes)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return sum(int(os.environ.get(name, "0") or 0) for name in ("NODE_RANK", "LOCAL_RANK"))


def _prepare_output_dir(out: Path) -> None:
    """Create the run folder and check it can be written; the error names the folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-").close()
    except OSError as error:
        raise OSError(error.errno, f"cannot write to the run folder {out} ({error.strerror}); "
                      "free some space or choose another folder with hydra.run.dir=<dir>"
                      ) from error


def _logger_settings(logger_cfg: DictConfig, cfg: DictConfig) -> dict[str, Any]:
    """Per-job W&B name, sweep group and tags (`recozoo.callbacks.wandb_run_settings`)."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbLogger"):
        return {}
    from recozoo.callbacks import wandb_run_settings
    return wandb_run_settings(cfg)


def _resolve_ckpt(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``ckpt_path`` may name a file, or be "last" (``<run dir>/checkpoints/last.ckpt`` if present).
    When it is null, rerunning the same command in the same run folder resumes: the folder's
    ``last.ckpt`` is used if its ``config.yaml`` equals this run's config. Checkpoints of a
    different config are moved aside to ``checkpoints.stale/``. Call before config.yaml is
    rewritten; every DDP rank then takes the decision of rank 0.
    """
    folder = RunDir(output_dir(cfg)).checkpoints
    last = folder / "last.ckpt"
    if cfg.get("ckpt_path") in (None, ""):
        if not last.exists():
            return None
        saved = RunDir(output_dir(cfg)).config
        if saved.exists() and saved.read_text() == OmegaConf.to_yaml(cfg, resolve=True):
            log.info("resuming the interrupted run of this config from %s", last)
            return str(last)
        if _launch_rank() == 0:
            stale = folder.with_name("checkpoints.stale")
            shutil.rmtree(stale, ignore_errors=True)
            folder.rename(stale)
            log.warning("%s held checkpoints of another config: moved them to %s", folder, stale)
        return None
    if cfg.ckpt_path == "last":
        return str(last) if last.exists() else None
    if not Path(cfg.ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
    return str(cfg.ckpt_path)


def check_monitored_cutoffs(cfg: DictConfig) -> None:
    """Refuse, before any data is read, monitored values at a cut-off that ``eval.ks`` does not
    compute (``eval.ks=[5]`` with the default monitors' ``val/ndcg@10``): Lightning would stop
    at the first validation with a message that lists no metric. The error gives the overrides
    that fix it either way. Cut-offs that are not positive integers are refused first, by
    name (the suggested fix would otherwise carry them)."""
    bad = [k for k in cfg.eval.ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise ValueError(f"eval.ks={list(cfg.eval.ks)}: a cut-off K is a positive integer (the "
                         f"length of a ranked list scored), got {bad}; e.g. eval.ks=[10,20]")
    ks = list(cfg.eval.ks)
    watched = {f"callbacks.{name}.monitor": c.get("monitor")
               for name, c in (cfg.get("callbacks") or {}).items() if c is not None}
    watched["optimized_metric"] = cfg.get("optimized_metric")
    missing = {}  # setting -> (value, its cut-off)
    for setting, value in watched.items():
        cutoff = re.fullmatch(r"(?:val|test)/[^@]+@(\d+)(?:/.*)?", str(value or ""))
        if cutoff and int(cutoff[1]) not in ks:
            missing[setting] = (str(value), int(cutoff[1]))
    if missing:
        wanted = sorted({*ks, *(k for _, k in missing.values())})
        instead = " ".join(f"{setting}={value.replace(f'@{k}', f'@{ks[0]}', 1)}"
                           for setting, (value, k) in missing.items())
        raise ValueError(
            f"{', '.join(f'{s}={v}' for s, (v, _) in missing.items())}: eval.ks={ks} computes "
            f"no such cut-off; compute it too (eval.ks=[{','.join(map(str, wanted))}]) or monitor "
            f"one it computes ({instead})")


def train(cfg: DictConfig) -> RunRecord:
    """Fit and evaluate one model; write the run artifacts; return metrics.json's content."""
    check_monitored_cutoffs(cfg)
    code = code_version()  # at the start: a checkout that changes during the run is not its code
    out = output_dir(cfg)
    _prepare_output_dir(out)
    ckpt_path = _resolve_ckpt(cfg)  # before config.yaml is rewritten: resuming compares with it
    if _launch_rank() == 0:
        artifacts.atomic_write_bytes(RunDir(out).config,
                                     OmegaConf.to_yaml(cfg, resolve=True).encode())
    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    dm, model, evaluator = experiment.datamodule, experiment.model, experiment.evaluator

    timer = RunTimer()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    monitored = sorted({str(c.monitor) for c in callbacks if getattr(c, "monitor", None)})
    if len(dm.eval_users["val"]) == 0 and any(m.startswith("val/") for m in monitored):
        raise ValueError(
            f"split '{dm.split.name}' left no validation users in '{dm.info.name}', but "
            f"callbacks monitor {monitored}: give the split a validation share (e.g. "
            "split.ratios=[0.8,0.1,0.1]) or train without them (callbacks=none, fixed "
            "trainer.max_epochs; the last weights are tested)")
    loggers = [instantiate(c, **_logger_settings(c, cfg))
               for c in (cfg.get("logger") or {}).values() if c is not None]
    overrides: dict[str, Any] = {}
    if isinstance(model, ClosedFormRecommender):
        overrides.update(model.trainer_overrides)
        log.info("%s fits in one step: training for one epoch", type(model).__name__)
    if "plugins" not in cfg.trainer:
        overrides["plugins"] = [AtomicCheckpointIO()]  # a kill never leaves half a checkpoint
    # BatchSeed and KeepStopped make a resumed run train exactly like an uninterrupted one
    callbacks += [evaluator, timer, BatchSeed(cfg.seed), KeepStopped()]
    if cfg.trainer.get("enable_progress_bar", True) and not any(
            isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks):
        callbacks.append(RunProgressBar())  # the epoch against the cap, the run's time left
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                     logger=loggers or False, **overrides)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = timer.fit_seconds()  # a resumed run's earlier sessions included
    # before loading the best checkpoint resets them to what it holds
    epoch_seconds, val_curve = list(timer.epoch_seconds), list(evaluator.curve)
    val_seconds = list(timer.val_seconds)
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    if best is None and isinstance(model, ClosedFormRecommender):
        # no optimiser step means global_step stays 0 and ModelCheckpoint saves only last.ckpt;
        # for a one-step fit the last weights are the best ones
        best = getattr(checkpoint, "last_model_path", "") or None
    chosen = choose_on_validation(trainer, model, dm, evaluator, best)
    # evaluate the best weights: validation lists (for fusion weights) and test metrics; the
    # lists and per-user values stream into the run folder as they are made
    evaluator.list_folder = RunDir(out)
    with dm.every_validation_user():  # the selecting validations may have ranked a sample
        trainer.validate(model, datamodule=dm, ckpt_path=best, verbose=False)
    val_metrics = evaluator.stage_metrics.get("val", {})  # none without validation users
    # the validation restored the best checkpoint and changed nothing: the test scores the same
    # weights without loading them again (a load rewrites every weight in place, and a model's
    # `Recommender.derived` scoring form, EASE's weights in blocks, is then built again)
    trainer.test(model, datamodule=dm, ckpt_path=None, verbose=False)
    test_metrics = evaluator.stage_metrics["test"]
    record = RunRecord(
        status="ok",
        model=_choice("model", type(model).__name__.lower()),
        data=dm.info.name,
        split=_choice("split", dm.split.name),
        seed=int(cfg.seed),
        n_users=dm.info.n_users,
        n_items=dm.info.n_items,
        n_interactions=len(dm.data),
        n_params=model.n_params,
        head_share=dm.info.head_share,
        heavy_user_share=dm.info.heavy_user_share,
        rerank=_choice("rerank", _component(cfg, "rerank")),
        rerank_weight=float(cfg.rerank.weight) if cfg.get("rerank") else None,
        debias=_choice("debias", _component(cfg, "debias")),
        epochs=trainer.current_epoch,
        train_seconds=round(train_seconds, 4),
        epoch_seconds=epoch_seconds,
        val_seconds=val_seconds or None,
        eval_seconds=timer.eval_seconds,
        torch_threads=torch.get_num_threads(),
        code=code,
        best_checkpoint=str(Path(best).relative_to(out)) if best and
        Path(best).is_relative_to(out) else best,
        chosen_on_validation=chosen or None,
        val_curve=val_curve or None,
        metrics={**{k: v for k, v in val_metrics.items() if k.startswith("val/")},
                 **{k: v for k, v in test_metrics.items()
                    if k.startswith(("test/", "test_cold/"))}},
    )
    if trainer.is_global_zero:
        run_dir = RunDir(out)
        write_run_artifacts(run_dir, dm)
        run_dir.write_record(record)
    return record


def choose_on_validation(trainer: L.Trainer, model: Recommender, dm: RecDataModule,
                         evaluator: Evaluator, best: str | None) -> dict[str, Any]:
    """Let the model choose its scoring-time settings on validation with the best weights
    (`Recommender.choose_on_validation`) and write its choice into the best checkpoint, so the
    test, the run folder and serving all score with it. Returns the choice ({}: none)."""
    if type(model).choose_on_validation is Recommender.choose_on_validation or best is None:
        return {}
    monitor = getattr(trainer.checkpoint_callback, "monitor", None)
    if monitor is None or len(dm.eval_users["val"]) == 0:
        log.warning("%s chooses settings on validation, but the run monitors no validation "
                    "value: its defaults stay", type(model).__name__)
        return {}
    sign = -1.0 if getattr(trainer.checkpoint_callback, "mode", "max") == "min" else 1.0
    # the best weights, as trainer.validate(ckpt_path=best) would restore them (with an EMA the
    # checkpoint's state_dict is the average; a validation after fit does not swap weights)
    io = trainer.strategy.checkpoint_io
    checkpoint = io.load_checkpoint(best)
    saved = checkpoint["state_dict"]
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(saved)

    def validate() -> float:
        trainer.validate(model, datamodule=dm, verbose=False)
        return sign * evaluator.stage_metrics["val"][monitor]

    loggers, trainer.loggers = trainer.loggers, []  # the trials are not the run's curve
    try:
        with evaluator.metrics_only():  # the trials are compared, their lists never read
            chosen = model.choose_on_validation(validate)
    finally:
        trainer.loggers = loggers
    # the choice is the state it changed; the rest of the checkpoint stays as saved
    changed = {key: value.detach().cpu() for key, value in model.state_dict().items()
               if key not in saved or not torch.equal(saved[key], value.detach().cpu())}
    if changed and trainer.is_global_zero:
        saved.update(changed)
        io.save_checkpoint(checkpoint, best)
    trainer.strategy.barrier()  # every rank loads the checkpoint with the choice next
    return chosen


def write_run_artifacts(run_dir: RunDir, dm: RecDataModule) -> None:
    """Targets and the id maps (see `recozoo.artifacts`); the rankings and per-user metrics
    were streamed by the evaluation (`recozoo.artifacts.StageListWriter`)."""
    data = dm.data
    for stage, idx in (("val", dm.indices.valid), ("test", dm.indices.test)):
        artifacts.write_parquet(run_dir.targets(stage),
                                pd.DataFrame({"user": data.user[idx], "item": data.item[idx]}))
    info = dm.info
    items = pd.DataFrame({
        "item": np.arange(info.n_items), "item_id": data.item_ids,
        "popularity": info.item_popularity.numpy(), "is_tail": info.tail_mask.numpy(),
        "bucket": info.item_bucket.numpy(),
    })
    if data.items.titles is not None:
        items["title"] = data.items.titles
    if data.items.text is not None:
        items["text"] = data.items.text
    if data.items.category is not None:
        items["category"] = [data.items.category_names[c] for c in data.items.category]
        # the index the model saw (DatasetInfo.item_category), so serving rebuilds it exactly
        items["category_index"] = data.items.category
    artifacts.write_parquet(run_dir.items, items)
    users = pd.DataFrame({"user": np.arange(info.n_users), "user_id": data.user_ids})
    if info.user_activity is not None:  # training interactions (light and heavy users)
        users["activity"] = info.user_activity.numpy()
    artifacts.write_parquet(run_dir.users, users)
    order = data.chronological_order()
    artifacts.write_parquet(run_dir.history,
                            pd.DataFrame({"user": data.user[order], "item": data.item[order]}))


def run(cfg: DictConfig) -> float | None:
    """Train one job; on failure record it in metrics.json. Returns ``cfg.optimized_metric``.

    In a multirun a failed job is recorded and the sweep goes on; a single run re-raises.
    """
    out = output_dir(cfg)
    quiet_lightning_logs()  # after Hydra configured logging: each Lightning message once
    try:
        # checked before training: a malformed entry must not cost a whole run
        published = cfg.data.get("published")
        published = parse_published(OmegaConf.to_container(published) if published else None)
        # a DDP job leaves no process group behind for the next job; the collector skips the
        # libraries' objects
        with job_scope(), long_lived_heap():
            metrics = train(cfg)
    except Exception as error:
        log.error("run failed: %s", error)
        failure = RunRecord(status="failed", error=f"{type(error).__name__}: {error}",
                            traceback=traceback.format_exc(limit=20),
                            model=_choice("model", str(cfg.model.get("_target_", "?"))),
                            data=str(cfg.data.get("name", "?")), split=_choice("split", "?"),
                            seed=int(cfg.seed), code=code_version())
        try:
            RunDir(out).write_record(failure)
        except OSError as write_error:
            log.error("could not record the failure in %s: %s", out, write_error)
        if _is_multirun():
            return None
        raise
    finally:
        _finish_wandb()
    print_metrics(metrics, published)
    if not _is_multirun() and _launch_rank() == 0:
        print(next_steps(cfg, metrics), flush=True)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


def _finish_wandb() -> None:
    """Close the W&B run of this job so the next job of a sweep gets its own run."""
    import sys
    if "wandb" in sys.modules:
        import wandb
        if wandb.run is not None:
            wandb.finish()


def print_metrics(metrics: dict[str, Any], published: Sequence[PublishedResult] = ()) -> None:
    """Print the test metrics as a table (one row per metric, one column per K), then the
    ``published`` results on this data beside this run's values."""
    from rich.console import Console
    from rich.table import Table

    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("test/") and isinstance(value, (int, float)):
            name, _, k = key[5:].partition("@")
            k, _, bucket = k.partition("/")  # per-bucket keys such as recall@10/distant
            name = f"{name}/{bucket}" if bucket else name
            rows.setdefault(name, {})[k or "-"] = value
    ks = sorted({k for row in rows.values() for k in row}, key=lambda k: (k == "-", k))
    table = Table(title=f"{metrics['model']} on {metrics['data']} ({metrics['split']}): test "
                        f"metrics, {metrics['epochs']} epochs, {metrics['train_seconds']:.1f}s")
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}" if k != "-" else "", justify="right")
    for name, row in rows.items():
        table.add_row(name, *[f"{row[k]:.4f}" if k in row else "" for k in ks])
    Console().print(table)
    for line in published_lines(published, metrics, metrics):
        print(f"Published on {metrics['data']}: {line}", flush=True)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies under it (shorter to copy)."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def next_steps(cfg: DictConfig, metrics: dict[str, Any]) -> str:
    """What a single run prints last: its folder, what its long-tail figure means, and the next
    three commands (serve it, sweep three models into a leaderboard, open the leaderboard)."""
    run = _shown(output_dir(cfg))
    sweep = _shown(Path(cfg.paths.log_dir) / str(cfg.task_name) / "three_models")
    lines = [f"Run folder: {run}  (metrics.json, checkpoints/, rankings, train.log)"]
    tail = metrics.get("test/tail_recall@10")
    if isinstance(tail, (int, float)):
        lines.append(
            f"tail_recall@10 = {tail:.4f}: the share of test targets outside the top "
            f"{float(cfg.eval.head_share):.0%} most popular items that the top 10 finds; raise it "
            "with rerank=tail_slots (2 of every 10 places for the best tail items below the model's "
            "top) or debias=ips (README: Long-tail levers).")
    lines += [
        "Next:",
        f"  python -m recozoo.serve run={run}    # serve it: POST /predict on 127.0.0.1:8000",
        (f"  python train.py -m model=pop,ease,bpr hydra.sweep.dir={sweep}    # three models "
         "-> leaderboard"),
        (f"  less {sweep}/leaderboard.md    # the leaderboard (all columns: leaderboard.html; "
         "plot: accuracy_vs_tail.png)"),
    ]
    return "\n".join(lines)
