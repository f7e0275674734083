"""The files that make up a servable run, checked without building anything (so that a server
validates its ``run=`` in milliseconds before it starts its workers; `recozoo.serve.loading`
builds the model from them).

``run=`` may name a run folder, a checkpoint file inside one, or a fusion folder (fusion.json,
written by ``python -m recozoo.ensemble``) whose members are run folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recozoo.artifacts import RunDir, RunFileError
from recozoo.ensemble.normalise import FusionRule

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")


#: a run folder, checkpoint or fusion folder that cannot be served (the message says why)
RunLoadError = RunFileError


def resolve_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run folder is served with: ``metrics.json``'s ``best_checkpoint``, else
    ``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``."""
    run = RunDir(run_dir)
    candidates = []
    if run.metrics.exists():
        try:
            best = run.read_record().best_checkpoint
        except ValueError:
            best = None
        if best:
            candidates.append(Path(best) if Path(best).is_absolute() else run.path / best)
    candidates += [run.checkpoints / "best.ckpt", run.checkpoints / "last.ckpt"]
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
    if RunDir(path).is_fusion:
        return [run_dir for run_dir, _ in fusion_members(path)[0]]
    return [path]


def check_run(path: str | Path) -> None:
    """Fail early, with `RunLoadError`, when ``path`` cannot be served: the files a load needs
    are checked without loading any weights (a server validates its ``run=`` with it before it
    starts workers)."""
    path = Path(path).expanduser()
    folders = run_dirs(path)
    if path.is_dir() and not RunDir(path).is_fusion:
        resolve_checkpoint(path)
    for run_dir in folders:
        read_config(run_dir)
        for file in RunDir(run_dir).catalogue_files:
            if not file.is_file():
                raise RunLoadError(f"{file} not found: is {run_dir} a finished recozoo run?")


def fusion_members(folder: Path) -> tuple[list[tuple[Path, float]], FusionRule]:
    """(member run folder, weight) pairs and the fusion rule of a fusion folder's fusion.json
    (member paths are relative to the folder holding the fusion folder, as the ensemble
    writes them)."""
    spec_file = RunDir(folder).fusion
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
    try:
        rule = FusionRule(method=str(spec.get("method", "weighted")),
                          normalization=str(spec.get("normalization", "minmax")),
                          rrf_k=int(spec.get("rrf_k", 60)))
    except ValueError as error:
        raise RunLoadError(f"{spec_file}: {error}") from None
    return out, rule


def read_config(run_dir: Path) -> DictConfig:
    """A run's resolved config; the error names the file."""
    path = RunDir(run_dir).config
    if not path.exists():
        raise RunLoadError(f"{path} not found: is {run_dir} a recozoo run folder?")
    cfg = OmegaConf.load(path)
    if "model" not in cfg or "_target_" not in cfg.model:
        raise RunLoadError(f"{path}: no 'model._target_' (expected a run's resolved config)")
    return cfg
