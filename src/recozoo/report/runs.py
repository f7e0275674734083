"""Finished runs as the leaderboard sees them: found on disk, labelled, grouped by protocol.

A run is any folder with a ``metrics.json`` (see `recozoo.artifacts`); a sweep folder holds runs
in its job sub-folders, and a fusion folder (`recozoo.ensemble`) is a run too. Only runs measured
under one protocol are ranked against each other: the same data (name and size), split, head/tail
definition and seeds. `group_runs` returns one `RunGroup` per protocol, with the reason why runs
were kept apart.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recozoo.artifacts import RunDir, RunRecord
from recozoo.provenance import short_code

log = logging.getLogger(__name__)

#: metrics.json facts that must agree for two runs to be ranked in one table.
PROTOCOL_KEYS: tuple[str, ...] = ("data", "split", "n_users", "n_items", "head_share")
#: override keys that describe the protocol or the plumbing, not the model variant.
_NOT_VARIANT = ("seed", "data", "split", "hydra", "logger", "paths", "trainer.enable_",
                "callbacks", "task_name", "tags", "experiment", "hparams_search")
#: folders never searched for runs.
_SKIP_DIRS = {"checkpoints", "wandb", "csv", "tensorboard", ".hydra", "__pycache__"}


@dataclass
class Run:
    """One finished (or failed) run folder.

    Args:
        path: the run folder.
        metrics: its metrics.json (a `RunRecord`, read as the flat mapping on disk).
        overrides: the Hydra command-line overrides of the job (``.hydra/overrides.yaml``), empty
            where the run was not started by Hydra.
    """

    path: Path
    metrics: RunRecord
    overrides: tuple[str, ...] = ()
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.metrics.ok

    @property
    def model(self) -> str:
        return str(self.metrics.get("model", "?"))

    @property
    def reranked(self) -> bool:
        """Whether a re-ranker (``rerank=``) ordered the run's lists."""
        return self.metrics.get("rerank") not in (None, "none")

    @property
    def code(self) -> str:
        """The code that made the run, in a few characters (`recozoo.provenance.short_code`)."""
        return short_code(self.metrics.code)

    @property
    def seed(self) -> int | None:
        seed = self.metrics.get("seed")
        return int(seed) if seed is not None else None

    @property
    def protocol(self) -> tuple:
        return tuple(self.metrics.get(k) for k in PROTOCOL_KEYS)

    @property
    def is_fusion(self) -> bool:
        return RunDir(self.path).is_fusion


@dataclass
class RunGroup:
    """Runs ranked in one table: one protocol, one set of seeds for every ranked variant.

    ``variants`` maps a variant label (model plus the overrides that tell it apart) to its runs
    (one per seed); ``failed`` holds the failed runs shown under the table.
    """

    protocol: dict[str, Any]
    seeds: tuple[int, ...]
    variants: dict[str, list[Run]] = field(default_factory=dict)
    failed: list[Run] = field(default_factory=list)

    @property
    def title(self) -> str:
        p = self.protocol
        seeds = ",".join(map(str, self.seeds))
        return (f"{p['data']} ({p['n_users']} users, {p['n_items']} items), split {p['split']}, "
                f"head share {p['head_share']}, seed{'s' if len(self.seeds) > 1 else ''} {seeds}")

    @property
    def slug(self) -> str:
        p = self.protocol
        return f"{p['data']}_{p['split']}_s{'-'.join(map(str, self.seeds))}".replace("/", "-")


def find_runs(folders: list[Path | str]) -> list[Run]:
    """Every run under ``folders`` (a run folder, or a sweep folder with runs inside).

    Raises:
        FileNotFoundError: a folder does not exist or holds no metrics.json at all.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        found = [p.parent for p in _metrics_files(folder)]
        if not found:
            raise FileNotFoundError(f"{folder} holds no metrics.json: not a recozoo "
                                    "run or sweep folder (or its jobs have not finished)")
        for run_dir in sorted(found, key=_natural_key):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            try:
                metrics = RunDir(run_dir).read_record()
            except ValueError as error:
                metrics = RunRecord(status="failed", error=str(error), model=run_dir.name)
            runs.append(Run(run_dir, metrics, _read_overrides(run_dir)))
    label_runs(runs)
    return runs


def _metrics_files(folder: Path) -> list[Path]:
    if RunDir(folder).metrics.exists():
        found = [RunDir(folder).metrics]
    else:
        found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.is_dir() and child.name not in _SKIP_DIRS and not child.name.startswith("."):
            found += _metrics_files(child)
    return found


def _natural_key(path: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _read_overrides(run_dir: Path) -> tuple[str, ...]:
    path = RunDir(run_dir).hydra_overrides
    if not path.exists():
        return ()
    try:
        values = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as error:
        log.warning("%s is not valid YAML (%s): the run is labelled by its model only", path, error)
        return ()
    return tuple(str(v) for v in values)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_variant(key: str) -> bool:
    return key != "model" and not key.startswith(_NOT_VARIANT)


def label_runs(runs: list[Run]) -> None:
    """Label every run with its model plus the overrides that differ between runs of the same
    model (seed, data and plumbing excluded), e.g. ``ease (model.reg_weight=-1)``."""
    by_model: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_model[run.model].append(run)
    for model, same in by_model.items():
        variant = [{o for o in r.overrides if _is_variant(_override_key(o))} for r in same]
        common = set.intersection(*variant) if variant else set()
        for run, overrides in zip(same, variant):
            extra = sorted(overrides - common)
            run.label = f"{model} ({', '.join(extra)})" if extra else model
    # the same label twice for one seed and protocol: two copies of a run, kept apart by folder
    counts: dict[tuple, int] = defaultdict(int)
    for run in runs:
        counts[(run.label, run.seed, run.protocol)] += 1
    for run in runs:
        if counts[(run.label, run.seed, run.protocol)] > 1:
            run.label = f"{run.label} [{run.path.parent.name}/{run.path.name}]"


def _protocol_note(protocol: tuple, finding: str, parts: list[str], consequence: str) -> str:
    """A note on one data/split's runs: what was found, each part of it, what follows."""
    return f"{protocol[0]}/{protocol[1]}: {finding} ({'; '.join(parts)}); {consequence}"


def group_runs(runs: list[Run]) -> tuple[list[RunGroup], list[str]]:
    """Split runs into comparable groups.

    Returns:
        the groups (in order of first appearance) and messages saying why runs were kept apart.
    """
    notes: list[str] = []
    by_protocol: dict[tuple, dict[str, list[Run]]] = {}
    for run in runs:
        if run.ok:
            by_protocol.setdefault(run.protocol, defaultdict(list))[run.label].append(run)
    groups: list[RunGroup] = []
    for protocol, variants in by_protocol.items():
        by_seeds: dict[tuple[int, ...], dict[str, list[Run]]] = {}
        for label, members in variants.items():
            seeds = tuple(sorted({r.seed for r in members if r.seed is not None}))
            by_seeds.setdefault(seeds, {})[label] = sorted(members, key=lambda r: r.seed or 0)
        if len(by_seeds) > 1:
            notes.append(_protocol_note(
                protocol, "models were run with different seeds",
                [f"seeds {list(s)}: {', '.join(v)}" for s, v in by_seeds.items()],
                "each seed set is ranked in its own table, since rows are comparable only under "
                "the same data, split and seeds"))
        for seeds, members in by_seeds.items():
            groups.append(RunGroup(dict(zip(PROTOCOL_KEYS, protocol)), seeds, members))
        by_code: dict[str, list[str]] = defaultdict(list)
        for label, members in variants.items():
            for code in sorted({run.code for run in members}):
                by_code[code].append(label)
        if len(by_code) > 1:
            notes.append(_protocol_note(
                protocol, "runs were made by different code",
                [f"{code}: {', '.join(labels)}" for code, labels in by_code.items()],
                "a change of the code can move a model's figures with the same settings "
                "(leaderboard.csv's code column names each row's)"))
    if len(by_protocol) > 1:
        differing = [k for i, k in enumerate(PROTOCOL_KEYS)
                     if len({p[i] for p in by_protocol}) > 1]
        notes.append(f"runs differ in {', '.join(differing)}: {len(by_protocol)} protocols are "
                     "ranked in separate tables (a leaderboard only ranks runs on the same data "
                     "and split)")
    for run in runs:
        if run.ok:
            continue
        home = next((g for g in groups if g.protocol["data"] == run.metrics.get("data")
                     and g.protocol["split"] == run.metrics.get("split")), None)
        if home is None:
            home = RunGroup({k: run.metrics.get(k, "?") for k in PROTOCOL_KEYS},
                            (run.seed,) if run.seed is not None else ())
            groups.append(home)
        home.failed.append(run)
    return groups, notes


def fusion_config(run: Run) -> dict[str, Any] | None:
    """The run's fusion.json when it is a fusion folder."""
    path = RunDir(run.path).fusion
    return json.loads(path.read_text()) if path.exists() else None
