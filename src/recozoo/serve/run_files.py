"""The files that make up a servable run, checked without building anything (so that a server
validates its ``run=`` in milliseconds before it starts its workers; `recozoo.serve.loading`
builds the model from them).

``run=`` may name a run folder, a checkpoint file inside one, or a fusion folder (fusion.json,
written by ``python -m recozoo.ensemble``) whose members are run folders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"
FUSION_FILE = "fusion.json"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")


class RunLoadError(ValueError):
    """A run folder, checkpoint or fusion folder that cannot be served (the message says why)."""


@dataclass
class FusionRule:
    """How `recozoo.ensemble` fused its members (fusion.json's "spec"). Each member takes part
    with its top-N, N being the list length its run saved (the model's ``top_n``).

    Args:
        method: ``weighted`` (normalised scores summed with weights) or ``rrf``.
        normalization: ``minmax`` or ``zscore`` over each member's top-N of a user.
        rrf_k: the constant of reciprocal rank fusion.
    """

    method: str = "weighted"
    normalization: str = "minmax"
    rrf_k: int = 60


def resolve_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run folder is served with: ``metrics.json``'s ``best_checkpoint``, else
    ``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``."""
    run_dir = Path(run_dir)
    candidates = []
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        try:
            best = json.loads(metrics_file.read_text()).get("best_checkpoint")
        except json.JSONDecodeError:
            best = None
        if best:
            candidates.append(Path(best) if Path(best).is_absolute() else run_dir / best)
    candidates += [run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"]
    for path in candidates:
        if path.is_file():
            return path
    raise RunLoadError(f"{run_dir}: no checkpoint found (looked for "
                       f"{', '.join(str(p) for p in candidates)})")


def run_dirs(path: Path) -> list[Path]:
    """The run folders ``run=path`` is served from (several for a fusion)."""
    if not path.exists():
        raise RunLoadError(f"run={path} does not exist")
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise RunLoadError(f"run={path}: expected a run folder, a fusion folder or a "
                               f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
        return [path.parent.parent if path.parent.name == "checkpoints" else path.parent]
    if (path / FUSION_FILE).exists():
        return [run_dir for run_dir, _ in fusion_members(path)[0]]
    return [path]


def check_run(path: str | Path) -> None:
    """Fail early, with `RunLoadError`, when ``path`` cannot be served: the files a load needs
    are checked without loading any weights (a server validates its ``run=`` with it before it
    starts workers)."""
    path = Path(path).expanduser()
    folders = run_dirs(path)
    if path.is_dir() and not (path / FUSION_FILE).exists():
        resolve_checkpoint(path)
    for run_dir in folders:
        read_config(run_dir)
        for name in ("items.parquet", "users.parquet", "history.parquet"):
            if not (run_dir / name).is_file():
                raise RunLoadError(f"{run_dir / name} not found: is {run_dir} a finished "
                                   "recozoo run?")


def fusion_members(folder: Path) -> tuple[list[tuple[Path, float]], FusionRule]:
    """(member run folder, weight) pairs and the fusion rule of a fusion folder's fusion.json
    (member paths are relative to the folder holding the fusion folder, as the ensemble
    writes them)."""
    spec_file = folder / FUSION_FILE
    try:
        description = json.loads(spec_file.read_text())
    except json.JSONDecodeError as error:
        raise RunLoadError(f"{spec_file} is not valid JSON ({error})") from None
    members = description.get("members") if isinstance(description, dict) else None
    if not isinstance(members, list) or not members:
        raise RunLoadError(f"{spec_file}: expected a non-empty 'members' list")
    out = []
    for row, member in enumerate(members):
        if not isinstance(member, dict) or "run" not in member:
            raise RunLoadError(f"{spec_file}: members[{row}] needs a 'run' folder")
        weight = member.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RunLoadError(f"{spec_file}: members[{row}] weight must be a number, got "
                               f"{weight!r}")
        run_dir = Path(member["run"])
        if not run_dir.is_absolute():
            run_dir = folder.resolve().parent / run_dir
        out.append((run_dir, float(weight)))
    spec = description.get("spec") or {}
    rule = FusionRule(method=str(spec.get("method", "weighted")),
                      normalization=str(spec.get("normalization", "minmax")),
                      rrf_k=int(spec.get("rrf_k", 60)))
    if rule.method not in ("weighted", "rrf") or rule.normalization not in ("minmax", "zscore"):
        raise RunLoadError(f"{spec_file}: unknown fusion method {rule.method!r} or "
                           f"normalization {rule.normalization!r}")
    return out, rule


def read_config(run_dir: Path) -> DictConfig:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise RunLoadError(f"{path} not found: is {run_dir} a recozoo run folder?")
    cfg = OmegaConf.load(path)
    if "model" not in cfg or "_target_" not in cfg.model:
        raise RunLoadError(f"{path}: no 'model._target_' (expected a run's resolved config)")
    return cfg
