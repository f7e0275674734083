"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml) and W&B run settings.

`LeaderboardCallback` ends every multirun (`python train.py -m ...`): it fuses the finished runs
(`recozoo.ensemble`), writes the leaderboard into the sweep folder (`recozoo.report`), and with
``logger=wandb`` logs the leaderboard as a W&B Table in a summary run of the sweep's group.
It never fails the sweep: a problem is logged and the job results stay as they are.

This module is imported when Hydra starts, so heavy imports happen inside the methods.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: fusion variants the callback can run, by name (see `recozoo.ensemble.FusionSpec`).
FUSION_VARIANTS: dict[str, dict[str, Any]] = {
    "weighted": {}, "rrf": {"method": "rrf"}, "tail": {"objective": "tail"},
}


def sweep_group(task_name: str, sweep_dir: str | Path) -> str:
    """The W&B group of every run of one sweep (and of its leaderboard run)."""
    return f"{task_name}-{Path(str(sweep_dir)).name}"


def wandb_run_settings(cfg: DictConfig) -> dict[str, Any]:
    """W&B init arguments of this job: named ``<model>-<job number>``, grouped by sweep folder
    (multirun), tagged ``model:<name>`` and ``data:<name>`` besides the config's ``tags``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = hydra_cfg.runtime.choices if hydra_cfg is not None else {}
    model = str(choices.get("model") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]
                ).lower()
    data = str(cfg.data.get("name", "data"))
    tags = sorted({*(str(t) for t in cfg.get("tags") or []), f"model:{model}", f"data:{data}"})
    settings: dict[str, Any] = {"tags": tags, "name": model}
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        settings["group"] = sweep_group(cfg.get("task_name", "train"), hydra_cfg.sweep.dir)
        settings["name"] = f"{model}-{hydra_cfg.job.num}"
    return settings


class LeaderboardCallback(Callback):
    """Fusion + leaderboard at the end of a multirun.

    Args:
        fusion: fusion variants to build before the leaderboard (names of `FUSION_VARIANTS`);
            empty for none.
        tail_weight: lambda of the ``tail`` fusion objective.
        max_members: at most this many runs get a weight in each fusion (None: no limit).
        plots: write the PNG plots.
    """

    def __init__(self, fusion: list[str] | None = None, tail_weight: float = 1.0,
                 max_members: int | None = None, plots: bool = True) -> None:
        unknown = sorted(set(fusion or []) - set(FUSION_VARIANTS))
        if unknown:
            raise ValueError(f"hydra.callbacks.leaderboard.fusion: unknown variants {unknown}; "
                             f"choose from {sorted(FUSION_VARIANTS)}")
        self.fusion = list(fusion or [])
        self.tail_weight = tail_weight
        self.max_members = max_members
        self.plots = plots

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the folder of an Optuna sqlite storage (sqlite cannot create it)."""
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None,
                                   throw_on_resolution_failure=False)
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir():
            log.warning("no sweep folder %s: no leaderboard", sweep)
            return
        from recozoo.ensemble import FusionSpec, fuse_sweep

        for name in self.fusion:
            options = dict(FUSION_VARIANTS[name], max_members=self.max_members)
            if name == "tail":
                options["tail_weight"] = self.tail_weight
            try:
                for folder in fuse_sweep(sweep, FusionSpec(**options)):
                    log.info("fusion %s written to %s", name, folder)
            # the sweep's results stay valid whatever goes wrong here, so nothing may escape
            except Exception as error:  # noqa: BLE001
                log.error("fusion %s of %s failed: %s", name, sweep, error)
        try:
            from recozoo.report import build_leaderboard, write_leaderboard

            board = build_leaderboard([sweep])
            files = write_leaderboard(board, sweep, plots=self.plots)
            log.info("leaderboard written to %s", sweep / "leaderboard.md")
        except Exception as error:  # noqa: BLE001
            log.error("leaderboard of %s failed: %s", sweep, error)
            return
        if OmegaConf.select(config, "logger.wandb", default=None,
                            throw_on_resolution_failure=False) is not None:
            try:
                self._log_wandb(config, sweep, board, files)
            except Exception as error:  # noqa: BLE001
                log.error("could not log the leaderboard to W&B: %s", error)

    def _log_wandb(self, config: DictConfig, sweep: Path, board: Any, files: list[Path]) -> None:
        """One summary run in the sweep's group: the leaderboard as a Table, the plots."""
        import wandb

        def option(key: str, default: Any) -> Any:
            return OmegaConf.select(config, f"logger.wandb.{key}", default=default,
                                    throw_on_resolution_failure=False)

        frame = board.to_frame().astype(str)
        run = wandb.init(project=option("project", "recozoo"), entity=option("entity", None),
                         dir=str(sweep), group=sweep_group(config.get("task_name", "train"), sweep),
                         job_type="leaderboard", name="leaderboard",
                         mode="offline" if option("offline", True) else "online",
                         tags=["leaderboard"], config={"sweep_dir": str(sweep)})
        try:
            run.log({"leaderboard": wandb.Table(dataframe=frame),
                     **{f.stem: wandb.Image(str(f)) for f in files if f.suffix == ".png"}})
        finally:
            run.finish()
