"""`run(cfg)`: build the data and the model from config, fit, evaluate, write the run artifacts."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recozoo import artifacts
from recozoo.data.datamodule import RecDataModule
from recozoo.debias import Debias
from recozoo.distributed import job_scope
from recozoo.models.base import Recommender
from recozoo.rerank import Reranker
from recozoo.training_callbacks import AtomicCheckpointIO, BatchSeed, KeepStopped

log = logging.getLogger(__name__)


class RunTimer(L.Callback):
    """Wall-clock seconds of each training epoch (validation excluded) and of the test stage."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.eval_seconds: float | None = None
        self._epoch_start = self._val_start = 0.0
        self._val_in_epoch = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_seconds": list(self.epoch_seconds)}  # in checkpoints: kept across a resume

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start, self._val_in_epoch = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_in_epoch += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start - self._val_in_epoch
        self.epoch_seconds.append(round(elapsed, 4))

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.eval_seconds = round(time.perf_counter() - self._test_start, 4)


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
        eval_batch_size=cfg.eval.batch_size,
        history_len=cfg.eval.history_len,
        num_workers=cfg.data.get("num_workers", 0),
        negative_probabilities=debias.negative_probabilities if debias is not None else None,
        cold_items=cfg.eval.get("cold_items", 0.0),
    )


def build_debias(cfg: DictConfig) -> Debias | None:
    """The popularity debiasing of ``cfg.debias`` (``debias=none``: None)."""
    return instantiate(cfg.debias) if cfg.get("debias") else None


def build_reranker(cfg: DictConfig) -> Reranker | None:
    """The re-ranker of ``cfg.rerank`` (``rerank=none``: None)."""
    return instantiate(cfg.rerank) if cfg.get("rerank") else None


def build_model(cfg: DictConfig, dm: RecDataModule) -> Recommender:
    """The model of ``cfg.model`` with the dataset facts, the evaluation settings and the
    long-tail levers (``rerank=``, ``debias=``)."""
    # config values become plain Python (checkpoint hparams must load with weights_only=True);
    # the dataset facts are passed as they are
    factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    model = factory(info=dm.info, eval_ks=[int(k) for k in cfg.eval.ks],
                    top_n=int(cfg.eval.top_n))
    model.configure_long_tail(reranker=build_reranker(cfg), debias=build_debias(cfg))
    return model


def _choice(group: str, default: str) -> str:
    """The config-group option chosen for this run (e.g. model=ease -> "ease")."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return str(HydraConfig.get().runtime.choices[group])
    except Exception:  # composed outside a Hydra app (tests, notebooks)
        return default


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
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
    folder = output_dir(cfg) / "checkpoints"
    last = folder / "last.ckpt"
    if cfg.get("ckpt_path") in (None, ""):
        if not last.exists():
            return None
        saved = output_dir(cfg) / "config.yaml"
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and evaluate one model; write the run artifacts; return metrics.json's content."""
    out = output_dir(cfg)
    _prepare_output_dir(out)
    ckpt_path = _resolve_ckpt(cfg)  # before config.yaml is rewritten: resuming compares with it
    if _launch_rank() == 0:
        artifacts.atomic_write_bytes(out / "config.yaml",
                                     OmegaConf.to_yaml(cfg, resolve=True).encode())
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(cfg, dm)
    dm.use_view(model.train_view())

    timer = RunTimer()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c, **_logger_settings(c, cfg))
               for c in (cfg.get("logger") or {}).values() if c is not None]
    overrides: dict[str, Any] = {}
    if model.fits_in_one_step:
        overrides["max_epochs"] = 1  # closed-form: a second epoch would refit the same thing
        log.info("%s fits in one step: training for one epoch", type(model).__name__)
        if "16" in str(cfg.trainer.get("precision", "")):  # counts and inverses need fp32
            overrides["precision"] = "32-true"
    if "plugins" not in cfg.trainer:
        overrides["plugins"] = [AtomicCheckpointIO()]  # a kill never leaves half a checkpoint
    # BatchSeed and KeepStopped make a resumed run train exactly like an uninterrupted one
    callbacks += [timer, BatchSeed(cfg.seed), KeepStopped()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                     logger=loggers or False, **overrides)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - start
    epoch_seconds = list(timer.epoch_seconds)  # before loading the best checkpoint resets them
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    if best is None and model.fits_in_one_step:
        # no optimiser step means global_step stays 0 and ModelCheckpoint saves only last.ckpt;
        # for a one-step fit the last weights are the best ones
        best = getattr(checkpoint, "last_model_path", "") or None
    # evaluate the best weights: validation lists (for fusion weights) and test metrics
    trainer.validate(model, datamodule=dm, ckpt_path=best, verbose=False)
    val_metrics = model.stage_metrics["val"]
    val_outputs = model.eval_outputs.get("val")
    trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)
    test_metrics = model.stage_metrics["test"]
    metrics: dict[str, Any] = {
        "status": "ok",
        "model": _choice("model", type(model).__name__.lower()),
        "data": dm.info.name,
        "split": _choice("split", dm.split.name),
        "seed": int(cfg.seed),
        "n_users": dm.info.n_users,
        "n_items": dm.info.n_items,
        "n_interactions": len(dm.data),
        "n_params": model.n_params,
        "head_share": dm.info.head_share,
        "rerank": _choice("rerank", "none"),
        "rerank_weight": float(cfg.rerank.weight) if cfg.get("rerank") else None,
        "debias": _choice("debias", "none"),
        "epochs": trainer.current_epoch,
        "train_seconds": round(train_seconds, 4),
        "epoch_seconds": epoch_seconds,
        "eval_seconds": timer.eval_seconds,
        "best_checkpoint": str(Path(best).relative_to(out)) if best and
        Path(best).is_relative_to(out) else best,
    }
    metrics.update({k: float(v) for k, v in sorted(val_metrics.items()) if k.startswith("val/")})
    metrics.update({k: float(v) for k, v in sorted(test_metrics.items())
                    if k.startswith(("test/", "test_cold/"))})
    if trainer.is_global_zero:
        write_run_artifacts(out, dm, val_outputs, model.eval_outputs.get("test"))
        artifacts.write_json(out / artifacts.METRICS_FILE, metrics)
    return metrics


def write_run_artifacts(out: Path, dm: RecDataModule, val_outputs: dict | None,
                        test_outputs: dict | None) -> None:
    """Rankings, targets, per-user metrics and the id maps (see `recozoo.artifacts`)."""
    data = dm.data
    if val_outputs:
        artifacts.write_parquet(out / "rankings_val.parquet", artifacts.rankings_frame(val_outputs))
    if test_outputs:
        artifacts.write_parquet(out / "rankings_test.parquet",
                                artifacts.rankings_frame(test_outputs))
        artifacts.write_parquet(out / "per_user_test.parquet",
                                artifacts.per_user_frame(test_outputs))
    for stage, idx in (("val", dm.indices.valid), ("test", dm.indices.test)):
        artifacts.write_parquet(out / f"targets_{stage}.parquet",
                                pd.DataFrame({"user": data.user[idx], "item": data.item[idx]}))
    info = dm.info
    items = pd.DataFrame({
        "item": np.arange(info.n_items), "item_id": data.item_ids,
        "popularity": info.item_popularity.numpy(), "is_tail": info.tail_mask.numpy(),
    })
    if data.items.titles is not None:
        items["title"] = data.items.titles
    if data.items.text is not None:
        items["text"] = data.items.text
    if data.items.category is not None:
        items["category"] = [data.items.category_names[c] for c in data.items.category]
        # the index the model saw (DatasetInfo.item_category), so serving rebuilds it exactly
        items["category_index"] = data.items.category
    artifacts.write_parquet(out / "items.parquet", items)
    artifacts.write_parquet(out / "users.parquet",
                            pd.DataFrame({"user": np.arange(info.n_users), "user_id": data.user_ids}))
    order = data.chronological_order()
    artifacts.write_parquet(out / "history.parquet",
                            pd.DataFrame({"user": data.user[order], "item": data.item[order]}))


def run(cfg: DictConfig) -> float | None:
    """Train one job; on failure record it in metrics.json. Returns ``cfg.optimized_metric``.

    In a multirun a failed job is recorded and the sweep goes on; a single run re-raises.
    """
    out = output_dir(cfg)
    try:
        with job_scope():  # a DDP job leaves no process group behind for the next job
            metrics = train(cfg)
    except Exception as error:
        log.error("run failed: %s", error)
        failure = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc(limit=20),
                   "model": _choice("model", str(cfg.model.get("_target_", "?"))),
                   "data": str(cfg.data.get("name", "?")), "split": _choice("split", "?"),
                   "seed": int(cfg.seed)}
        try:
            artifacts.write_json(out / artifacts.METRICS_FILE, failure)
        except OSError as write_error:
            log.error("could not record the failure in %s: %s", out, write_error)
        if _is_multirun():
            return None
        raise
    finally:
        _finish_wandb()
    print_metrics(metrics)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


def _finish_wandb() -> None:
    """Close the W&B run of this job so the next job of a sweep gets its own run."""
    import sys
    if "wandb" in sys.modules:
        import wandb
        if wandb.run is not None:
            wandb.finish()


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print the test metrics as a table (one row per metric, one column per K)."""
    from rich.console import Console
    from rich.table import Table

    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("test/") and isinstance(value, (int, float)):
            name, _, k = key[5:].partition("@")
            k, _, bucket = k.partition("/")  # per-bucket keys such as recall@10/tail
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
