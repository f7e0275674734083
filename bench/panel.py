"""``make panel`` (``python -m bench.panel``): every model with its defaults, over several datasets
and seeds, so a default is judged by how it does everywhere, not on the data it was tuned on.

Each (dataset, model, seed) is one ``python train.py`` run in ``<out>/<dataset>/<model>/s<seed>``.
The panel is resumable: a run whose folder holds a finished ``metrics.json``, or that the ledger
(``bench/panel_runs.json``, kept in git, which records each run as it ends) records, is not run
again, so it can be completed over
several sittings, on several machines, and in parts (``datasets=``, ``models=``, ``seeds=``,
``budget_minutes=``). Every call rewrites the report from all the runs found (``report_only=true``
only reports): per dataset a leaderboard of test metrics with the mean and a 95% interval over
seeds (Student's t) and the commit each cell's runs were made at, and across datasets a summary
(mean rank by NDCG@10, wins and losses against pop). The report names the exact commands and the
runs still missing. A finished run is run again when its settings differ from today's defaults
(stale) or, with ``rerun_before=<commit>``, when it was made before that commit.

Datasets: ``shop`` is embedded; the others read the files in ``<shared>/data`` (``shared=`` or
``RECOZOO_SHARED``), and are skipped, with the reason, where they are absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import repo_root
from bench.compare import thread_env
from bench.process import run_process
from recozoo.artifacts import RunDir, RunRecord
from recozoo.cli import parse_settings
from recozoo.provenance import is_at_or_after, resolve_commit, short_code

#: recozoo model -> RecBole model, for the rows RecBole runs on its own splits
RECBOLE_MODELS = {"pop": "Pop", "itemknn": "ItemKNN", "bpr": "BPR", "ease": "EASE",
                  "multvae": "MultiVAE"}


def recbole_row(model: str) -> str:
    """The report's row (and run folder) of RecBole's counterpart of recozoo's ``model``."""
    return f"RecBole {RECBOLE_MODELS[model]}"


#: every RecBole row of the report (runs of the peer, not of recozoo)
RECBOLE_ROWS = frozenset(recbole_row(model) for model in RECBOLE_MODELS)
#: the metrics the tables show, primary first
COLUMNS: tuple[tuple[str, str], ...] = (
    ("test/ndcg@10", "NDCG@10"), ("test/recall@10", "Recall@10"),
    ("test/tail_recall@10", "TailRecall@10"), ("test/coverage@10", "Coverage@10"))
PRIMARY = COLUMNS[0][0]
#: what the ledger keeps of a run's metrics: the report's columns, and the validation value that a
#: setting measured later is compared with (on validation, as defaults are chosen) once the run's
#: folder is gone
KEPT_METRICS: tuple[str, ...] = (*(key for key, _ in COLUMNS), "val/ndcg@10")


@dataclass(frozen=True)
class PanelDataset:
    """One dataset of the panel: the train.py overrides that select it (``{shared}`` is the
    shared folder, ``{split}`` the seed's exported split folder) and the file it needs there
    (None: embedded). ``recbole_splits``: scored on RecBole's own split of each seed, with
    RecBole's rows beside recozoo's. ``models``: the only models run on it (None: every model
    asked for)."""

    name: str
    overrides: tuple[str, ...]
    needs: str | None = None
    note: str = ""
    recbole_splits: bool = False
    models: tuple[str, ...] | None = None

    def runs(self, models: list[str]) -> list[str]:
        """The models of ``models`` that run on this dataset, in their order."""
        return [m for m in models if self.models is None or m in self.models]

    def resolved(self, shared: Path | None, split: Path | None = None) -> list[str]:
        return [o.format(shared=shared, split=split) for o in self.overrides]

    def missing(self, shared: Path | None) -> str | None:
        """Why the dataset cannot run here, or None."""
        if self.needs is None:
            return None
        if shared is None:
            return "no shared folder (set shared=<folder> or RECOZOO_SHARED)"
        if not (shared / self.needs).exists():
            return f"{shared / self.needs} not found"
        return None


DATASETS: dict[str, PanelDataset] = {d.name: d for d in (
    PanelDataset("shop", ("data=shop",), note="embedded synthetic shop, leave-one-out"),
    PanelDataset("ml100k_random", ("data=ml100k", "data.path={shared}/data/ml-100k",
                                   "split=random"), "data/ml-100k/ml-100k.inter",
                 "MovieLens 100K, all ratings, per-user random 8:1:1 (RecBole's protocol)"),
    PanelDataset("ml100k_recbole", ("data=ml100k", "data.path={shared}/data/ml-100k",
                                    "split=preset", "split.folder={split}"),
                 "data/ml-100k/ml-100k.inter",
                 "MovieLens 100K on RecBole 1.2.1's own random 8:1:1 split of each seed "
                 "(`bench/recbole_split.py`), RecBole's rows beside recozoo's; only the "
                 "models RecBole runs (every model runs on ml100k_random, the same protocol on "
                 "recozoo's own split)",
                 recbole_splits=True, models=tuple(RECBOLE_MODELS)),
    PanelDataset("ml100k_loo", ("data=ml100k", "data.path={shared}/data/ml-100k", "split=loo"),
                 "data/ml-100k/ml-100k.inter", "MovieLens 100K, leave-one-out by time"),
    PanelDataset("scientific", ("data=atomic", "data.path={shared}/data/amazon-scientific",
                                "data.name=Scientific"),
                 "data/amazon-scientific/Scientific.inter",
                 "Amazon Industrial & Scientific (UniSRec files), leave-one-out"),
    PanelDataset("online_retail", (
        "data=online_retail",
        "data.path={shared}/data/online-retail-ii/online_retail_II_2009_2010.parquet"),
        "data/online-retail-ii/online_retail_II_2009_2010.parquet",
        "UCI Online Retail II 2009-2010, leave-one-out"),
)}


@dataclass
class PanelSettings:
    """Run (or complete) the dataset x model x seed panel and write its report.

    Args:
        datasets: the datasets to run (all: every one in bench/panel.py's DATASETS).
        models: the models to run (all: every ranking model of conf/model/).
        seeds: the seeds. The report covers these and every cell the ledger records
            (`report_scope`), whichever part of the panel a call runs.
        out: where the runs go (resumable: finished runs are skipped).
        shared: the folder with data/ (default: the RECOZOO_SHARED environment variable).
        report: the Markdown report (a JSON twin is written beside it).
        ledger: the record of every finished run, kept in git so a panel resumes on another
            machine (null: ``<report>_runs.json`` beside the report).
        budget_minutes: start no new run after this many minutes (0: no limit).
        threads: torch threads per run.
        retry_failed: run again the runs that failed before.
        keep_stale: keep finished runs whose model settings differ from today's defaults (they
            are marked stale in the report); false: move them aside (``<model>/.stale/s<seed>-<time>``)
            and run them again, so the panel shows the defaults as they are now.
        report_only: write the report from the runs found, run nothing.
        rerun_before: a git commit (or anything git names one by: a tag, ``HEAD~3``): finished
            runs not made at it or after it in this checkout's history are run again (set
            aside as stale runs are), so that cells whose figures a change of the code moved
            without changing a setting (a model's training, the data's preparation) are made
            by today's code. Runs that did not record their commit count as before it, and so do
            runs whose commit this checkout does not have (made elsewhere and not fetched) and
            runs made from uncommitted changes (`made_before`). The report's ``code`` column
            shows the commit each cell's runs were made at.
        overrides: extra train.py overrides for every run (e.g. trainer.max_epochs=20).
    """

    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    models: list[str] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    out: str = "~/.cache/recozoo/panel"
    shared: str | None = None
    report: str = "bench/panel.md"
    ledger: str | None = None
    budget_minutes: float = 0.0
    threads: int = 2
    retry_failed: bool = False
    keep_stale: bool = False
    report_only: bool = False
    rerun_before: str | None = None
    overrides: list[str] = field(default_factory=list)

    def ledger_path(self, root: Path) -> Path:
        report = Path(self.report).expanduser()
        report = report if report.is_absolute() else root / report
        if self.ledger is None:
            return report.with_name(f"{report.stem}_runs.json")
        ledger = Path(self.ledger).expanduser()
        return ledger if ledger.is_absolute() else root / ledger


def ranking_models(root: Path) -> list[str]:
    """Every model config of conf/model/ that ranks items (rating-only models left out)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    names = []
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        for path in sorted((root / "conf" / "model").glob("*.yaml")):
            target = compose("train", overrides=[f"model={path.stem}"]).model._target_
            if not getattr(get_class(target), "predicts_ratings", False):
                names.append(path.stem)
    return names


def current_settings(root: Path, models: list[str], overrides: list[str]
                     ) -> dict[str, dict[str, Any]]:
    """Per model, the settings a panel run would use today, flat (``model.latent``,
    ``trainer.max_epochs``): the values the model config writes literally (interpolated ones
    derive from other settings or from the machine, such as a cache folder)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    settings: dict[str, dict[str, Any]] = {}
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        for model in models:
            cfg = compose("train", overrides=[f"model={model}", *overrides])
            tree = {"model": OmegaConf.to_container(cfg.model, resolve=False),
                    "trainer": {"max_epochs": cfg.trainer.max_epochs}}
            settings[model] = judged_settings(_flat(tree))
    return settings


#: split settings that change what a model learns from (not which rows are held out): a run is
#: judged by them too, per dataset (`dataset_settings`)
JUDGED_SPLIT_SETTINGS = ("split.sequence_order",)


def dataset_settings(root: Path, datasets: list[str]) -> dict[str, dict[str, Any]]:
    """Per dataset, the `JUDGED_SPLIT_SETTINGS` its runs would use today (its ``split=``
    choice composed; the training config's split where it makes none)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    settings: dict[str, dict[str, Any]] = {}
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        for name in datasets:
            choice = [o for o in DATASETS[name].overrides if o.startswith("split=")]
            cfg = compose("train", overrides=choice)
            flat = _flat({"split": OmegaConf.to_container(cfg.split, resolve=False)})
            settings[name] = {key: flat[key] for key in JUDGED_SPLIT_SETTINGS if key in flat}
    return settings


def judged_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The settings a run is judged stale by: the model's, ``trainer.max_epochs`` and
    `JUDGED_SPLIT_SETTINGS`, written literally (an interpolated one derives from others or from
    the machine)."""
    return {key: value for key, value in flat.items()
            if (key.startswith("model.") or key == "trainer.max_epochs"
                or key in JUDGED_SPLIT_SETTINGS)
            and not (isinstance(value, str) and "${" in value)}


def cell_settings(expected: dict[str, dict[str, Any]] | None,
                  by_dataset: dict[str, dict[str, Any]] | None, dataset: str, model: str,
                  ) -> dict[str, Any] | None:
    """The settings the (dataset, model) cell is judged by: the model's (`current_settings`)
    and the dataset's (`dataset_settings`); None where the model's are not known."""
    if not expected or model not in expected:
        return None
    return {**expected[model], **(by_dataset or {}).get(dataset, {})}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


#: Settings whose default changed the behaviour when they were added, with the value that was in
#: effect before: a run whose config lacks the key ran with it. Register every such setting here
#: (an added setting missing from this table is taken to keep the earlier behaviour).
BEFORE_ADDED: dict[str, Any] = {
    "model.posthoc_adjustment": 0.0,  # bert_finetune's post-hoc logit adjustment (issue 17)
    "model.ema_decay": None,  # an average of the weights evaluated in their place (issue 16)
    "model.user_init_std": None,  # caser's user rows at zero (0) instead of normal noise (issue 16)
    "model.pm_min_density": None,  # cfgan: PM (0.05, 1 per item) on dense rows, ZR alone before (issue 16)
    "model.mix_grid": None,  # sqn's Q weight chosen on validation after training (issue 16)
    "model.reward_mean": None,  # sqn's rewards scaled to a mean per logged event (issue 16)
    "model.reg_grid": None,  # ease's L2 weight chosen on validation after the fit (issue 16)
    "model.shrink_grid": None,  # itemknn's shrinkage chosen on validation after the fit
    "model.k_grid": None,  # and its neighbourhood size (issue 16)
    "split.sequence_order": "time",  # a random split's users' items in a random order (issue 16)
}


def ran_settings(folder: Path) -> dict[str, Any] | None:
    """The flat settings the run in ``folder`` ran with (None: the folder keeps no config)."""
    from omegaconf import OmegaConf

    config = RunDir(folder).config
    if not config.exists():
        return None
    return _flat(OmegaConf.to_container(OmegaConf.load(config), resolve=False))


def diff_settings(ran: dict[str, Any] | None, expected: dict[str, Any]
                  ) -> tuple[list[str], list[str]]:
    """(changed, added): the settings in ``expected`` that a run made with ``ran`` had with
    another value, as ``key: ran -> now``, and those ``ran`` does not have at all (both empty
    when ``ran`` is None: nothing to judge by).

    An added setting is not a change when its default keeps the earlier behaviour (e.g. sqn's
    ``sampled_softmax: null``, inert below 10,000 items); one registered in `BEFORE_ADDED` is a
    change when its default differs from the value in effect before it existed."""
    if ran is None:
        return [], []
    changed, added = [], []
    for key, value in expected.items():
        if key in ran:
            if ran[key] != value:
                changed.append(f"{key}: {ran[key]!r} -> {value!r}")
        elif key in BEFORE_ADDED and BEFORE_ADDED[key] != value:
            changed.append(f"{key}: {BEFORE_ADDED[key]!r} (before the setting) -> {value!r}")
        else:
            added.append(key)
    return changed, added


#: where a model's stale runs are kept, beside its cells: a hidden folder, which the leaderboard,
#: fusion and serving do not search, so a panel folder fused or ranked as a sweep holds the
#: current runs alone
STALE_DIR = ".stale"


def set_aside(folder: Path) -> Path:
    """Move a stale run (and its log) to ``.stale/<name>-<time>`` beside it; nothing is deleted."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = folder.parent / STALE_DIR / f"{folder.name}-{stamp}"
    target.parent.mkdir(exist_ok=True)
    folder.rename(target)
    log = folder.with_suffix(".log")
    if log.exists():
        log.rename(target.with_name(f"{target.name}.log"))
    return target


def tidy_stale(out: Path) -> list[Path]:
    """Move the stale runs (and their logs) that earlier panels kept as ``s<seed>.stale-<time>``
    (where the leaderboard and fusion counted them as runs) into their model's `STALE_DIR`;
    returns the new places."""
    moved = []
    for old in sorted(out.glob("*/*/s*.stale-*")):
        seed, _, stamp = old.name.partition(".stale-")
        target = old.parent / STALE_DIR / f"{seed}-{stamp}"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            old.rename(target)
            moved.append(target)
    return moved


def run_folder(out: Path, dataset: str, model: str, seed: int) -> Path:
    return out / dataset / model / f"s{seed}"


def train_command(dataset: PanelDataset, model: str, seed: int, shared: Path | None,
                  folder: Path, extra: list[str], split: Path | None = None) -> list[str]:
    """The train.py command of one panel run (what the report prints)."""
    return [sys.executable, "train.py", *dataset.resolved(shared, split), f"model={model}",
            f"seed={seed}", *extra, "logger=none", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={folder}"]


def read_run(folder: Path) -> RunRecord | None:
    """The run's record; a RecBole row's JSON is read as one (test metrics only)."""
    if (folder / "recbole.json").exists():
        figures = json.loads((folder / "recbole.json").read_text())
        test = {k.lower().replace("itemcoverage", "coverage"): v
                for k, v in (figures.get("test") or {}).items()}  # RecBole's names
        return RunRecord(model=folder.parent.name, train_seconds=figures.get(
            "train_seconds_total"), metrics={key: test.get(key.split("/", 1)[1])
                                             for key, _ in COLUMNS})
    run = RunDir(folder)
    if not run.metrics.exists():
        return None
    try:
        return run.read_record()
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- ledger
@dataclass(frozen=True)
class FoundRun:
    """A finished run: from its folder, or from the ledger where its folder is not here.

    The ledger (bench/panel_runs.json, kept in git) records every finished run with its test
    metrics and validation NDCG@10 (`KEPT_METRICS`), train seconds, torch threads, the code
    that made it (`recozoo.provenance.code_version`: the commit a cell's figures trace to) and the
    settings it ran with. It is how the panel remembers runs made on another machine or in a
    cache since cleared: they are reported and not run again,
    unless their settings differ from today's defaults. Each report adds the runs it found;
    a run is replaced only by a newer run of the same cell, never dropped."""

    ok: bool
    metrics: dict[str, Any]
    train_seconds: float
    settings: dict[str, Any] | None  # None: not known (nothing to judge it stale by)
    error: str | None = None
    in_folder: bool = True
    threads: int | None = None  # the run's torch threads (None: made before runs recorded them)
    code: dict[str, Any] | None = None  # the code that made it (`recozoo.provenance`); None:
    # made before runs recorded it


#: (dataset, model, seed) -> the run as the ledger recorded it
Ledger = dict[tuple[str, str, int], FoundRun]


def read_ledger(path: Path) -> Ledger:
    """The runs the ledger file records (none where it does not exist)."""
    if not path.exists():
        return {}
    try:
        runs = json.loads(path.read_text())
        return {(dataset, model, int(seed)): FoundRun(
                    ok=True, metrics=ran["metrics"], train_seconds=ran["train_seconds"],
                    settings=ran["settings"], in_folder=False, threads=ran.get("threads"),
                    code=ran.get("code"))
                for dataset, models in runs.items() for model, seeds in models.items()
                for seed, ran in seeds.items()}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise SystemExit(f"{path} is not a panel ledger ({type(error).__name__}: {error}); "
                         "restore it from git or move it aside") from error


def update_ledger(path: Path, table: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Add the finished runs of ``table`` (`collect`) whose records come from run folders to the
    ledger file, replacing earlier records of the same cells; the other cells' records are
    kept. A record ``table`` took from the ledger is not written back: the ledger was read when
    the panel started, and another panel process may have replaced that record since. The
    read and the write hold a lock (``.<name>.lock`` beside it), so that two panel processes
    recording at once do not drop each other's runs."""
    with _locked(path):
        _merge_into_ledger(path, table)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s lock file (POSIX ``flock``; none where there is no
    ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one panel process at a time
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _merge_into_ledger(path: Path, table: dict[str, dict[str, dict[str, Any]]]) -> None:
    runs = json.loads(path.read_text()) if path.exists() else {}
    for dataset, models in table.items():
        for model, entry in models.items():
            for seed, ran in entry["ran"].items():
                if seed in entry.get("from_ledger", ()):
                    continue
                runs.setdefault(dataset, {}).setdefault(model, {})[str(seed)] = {
                    "metrics": entry["seeds"][seed], **ran}
    ordered = {d: {m: dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))
                   for m, seeds in sorted(models.items())} for d, models in sorted(runs.items())}
    temporary = path.with_name(f".{path.name}.tmp")  # never a half-written ledger
    temporary.write_text(json.dumps(ordered, indent=1, default=str) + "\n")
    temporary.replace(path)


def find_run(out: Path, ledger: Ledger, dataset: str, model: str, seed: int) -> FoundRun | None:
    """The run's folder record where it exists, else the ledger's, else None."""
    folder = run_folder(out, dataset, model, seed)
    record = read_run(folder)
    if record is None:
        return ledger.get((dataset, model, seed))
    ran = ran_settings(folder)
    return FoundRun(ok=record.ok, metrics={key: record.metrics.get(key) for key in KEPT_METRICS},
                    train_seconds=record.train_seconds or 0.0,
                    settings=None if ran is None else judged_settings(ran), error=record.error,
                    threads=record.torch_threads, code=record.code)


def present_datasets(names: list[str], shared: Path | None, skipped: list[str]
                     ) -> Iterator[tuple[str, PanelDataset]]:
    """The datasets of ``names`` whose files are here, by name; each absent one is added to
    ``skipped`` with the reason."""
    for name in names:
        dataset = DATASETS[name]
        why = dataset.missing(shared)
        if why:
            skipped.append(f"{name}: {why}")
            continue
        yield name, dataset


def run_panel(settings: PanelSettings, root: Path, shared: Path | None, out: Path,
              models: list[str], expected: dict[str, dict[str, Any]] | None = None,
              ledger: Ledger | None = None,
              by_dataset: dict[str, dict[str, Any]] | None = None,
              ledger_path: Path | None = None) -> list[str]:
    """Run every missing (dataset, model, seed); returns what was skipped and why.

    A run is done when its folder holds a finished record or ``ledger`` holds it. ``expected``
    (``current_settings``) and ``by_dataset`` (``dataset_settings``): a done run whose settings
    differ is stale: set aside (a folder is
    moved, a ledger entry is replaced when the report is written) and run again, unless
    ``settings.keep_stale``. With ``ledger_path`` each finished run is added to that ledger as
    soon as it ends, so that a panel stopped part way loses none of the runs it finished."""
    skipped, start, ledger = [], time.monotonic(), ledger or {}
    for name, dataset in present_datasets(settings.datasets, shared, skipped):
        for seed in settings.seeds:
            todo = [model for model in dataset.runs(models)
                    if _needs_run(settings, out, ledger, name, model, seed,
                                  cell_settings(expected, by_dataset, name, model))]
            peers = [model for model in dataset.runs(models) if dataset.recbole_splits
                     and model in RECBOLE_MODELS and find_run(
                         out, ledger, name, recbole_row(model), seed) is None]
            split = None
            if dataset.recbole_splits and (todo or peers):
                try:
                    split = recbole_seed(settings, shared, out, name, seed, peers)
                except (RuntimeError, OSError) as error:
                    skipped.append(f"{name} seed {seed}: {error}")
                    continue
            for model in todo:
                folder = run_folder(out, name, model, seed)
                elapsed = (time.monotonic() - start) / 60
                if settings.budget_minutes and elapsed > settings.budget_minutes:
                    skipped.append(f"budget of {settings.budget_minutes:g} min used: stopped "
                                   f"before {name}/{model}/s{seed}")
                    return skipped
                command = train_command(dataset, model, seed, shared, folder, settings.overrides,
                                        split)
                print(f"[{elapsed:6.1f} min] {name} {model} seed {seed}", flush=True)
                folder.parent.mkdir(parents=True, exist_ok=True)
                result = run_process(command, env=thread_env(settings.threads), cwd=root,
                                     log=folder.with_suffix(".log"))
                if result.returncode != 0 and read_run(folder) is None:
                    # a crash before train.py could record it: record it here
                    RunDir(folder).write_record(RunRecord(
                        status="failed", model=model, seed=seed,
                        error=f"exit {result.returncode}: {result.tail(3)}"))
                if ledger_path is not None:
                    update_ledger(ledger_path, collect(out, [name], [model], [seed], expected,
                                                       by_dataset=by_dataset))
    return skipped


def made_before(code: dict[str, Any] | None, commit: str) -> bool:
    """Whether a run that recorded ``code`` (metrics.json's ``code``) was not made by ``commit``'s
    code or a later one: its commit is not at or after ``commit`` (`is_at_or_after`), it recorded
    none, or its checkout had uncommitted changes (``dirty``: its commit does not say what ran)."""
    code = code or {}
    return bool(code.get("dirty")) or not is_at_or_after(code.get("commit"), commit)


def _needs_run(settings: PanelSettings, out: Path, ledger: Ledger, dataset: str, model: str,
               seed: int, expected: dict[str, Any] | None) -> bool:
    """Whether the run is missing, failed (with ``retry_failed``), stale (its settings differ,
    unless ``keep_stale``) or made before ``rerun_before``; a stale or earlier run's folder is
    set aside."""
    found = find_run(out, ledger, dataset, model, seed)
    if found is None:
        return True
    changes = diff_settings(found.settings, expected)[0] if expected is not None else []
    reason = None
    if changes and not settings.keep_stale:
        reason = f"settings changed since the run ({'; '.join(changes)})"
    elif settings.rerun_before and made_before(found.code, settings.rerun_before):
        if not found.code:
            made = "made before runs recorded their code"
        elif found.code.get("dirty"):
            made = f"made from uncommitted changes to {short_code(found.code)}"
        else:
            made = f"made at {short_code(found.code)}"
        reason = f"{made}, not at or after {settings.rerun_before}"
    if reason:
        where = "its record stays in the ledger's git history"
        if found.in_folder:
            kept = set_aside(run_folder(out, dataset, model, seed))
            where = f"old run kept in {kept.relative_to(out)}"
        print(f"          {dataset} {model} seed {seed}: {reason}; {where}", flush=True)
        return True
    return not found.ok and settings.retry_failed


def recbole_seed(settings: PanelSettings, shared: Path | None, out: Path, dataset: str,
                 seed: int, models: list[str]) -> Path:
    """RecBole's split of ``seed`` exported for ``split=preset`` (once), and RecBole's own runs
    of the compared models on it (once each); returns the split folder."""
    from bench.peers import RecBolePeer

    peer, why = RecBolePeer.find(shared, out / dataset / "recbole_scratch") if shared else (
        None, "no shared folder")
    if peer is None:
        raise RuntimeError(f"RecBole cannot run ({why})")
    split = out / dataset / "splits" / f"s{seed}"
    if not (split / "test.tsv").exists():
        peer.prepare_data()
        result = run_process([str(peer.python), str(Path(__file__).with_name("recbole_split.py")),
                              str(split), str(seed), str(peer.scratch / "data")],
                             env=thread_env(1), cwd=peer.scratch)
        if result.returncode != 0:
            raise RuntimeError(f"exporting RecBole's split failed:\n{result.tail()}")
    for model in models:
        if model not in RECBOLE_MODELS:
            continue
        folder = run_folder(out, dataset, recbole_row(model), seed)
        if (folder / "recbole.json").exists():
            continue
        print(f"          {dataset} {recbole_row(model)} seed {seed}", flush=True)
        figures = peer.run(RECBOLE_MODELS[model], epochs=300, threads=settings.threads,
                           seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recbole.json").write_text(json.dumps(figures, default=str))
    return split


# ---------------------------------------------------------------------------------- report
def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (nan with fewer than 2 values)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def against_recbole(ledger: Ledger, dataset: str = "ml100k_recbole",
                    metric: str = PRIMARY) -> list[dict[str, Any]]:
    """Per model RecBole also runs: ``metric`` of recozoo's runs and of RecBole's on the same
    seeds of ``dataset`` (RecBole's own split of each seed), as the ledger records them: the
    mean and 95% half-width of each side, and of their paired difference (recozoo minus
    RecBole, seed by seed). Models with no seed run by both sides are left out."""
    values: dict[str, dict[int, float]] = {}  # row -> seed -> value
    for (found_in, row, seed), run in ledger.items():
        if found_in == dataset and run.ok and run.metrics.get(metric) is not None:
            values.setdefault(row, {})[seed] = run.metrics[metric]
    rows = []
    for model in RECBOLE_MODELS:
        ours, peer = values.get(model, {}), values.get(recbole_row(model), {})
        seeds = sorted(set(ours) & set(peer))
        if not seeds:
            continue
        rows.append({"model": model, "peer": recbole_row(model), "seeds": seeds,
                     "recozoo": t_interval([ours[s] for s in seeds]),
                     "recbole": t_interval([peer[s] for s in seeds]),
                     "difference": t_interval([ours[s] - peer[s] for s in seeds])})
    return rows


def collect(out: Path, datasets: list[str], models: list[str], seeds: list[int],
            expected: dict[str, dict[str, Any]] | None = None, ledger: Ledger | None = None,
            by_dataset: dict[str, dict[str, Any]] | None = None,
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> model -> {"seeds": {seed: {metric: value}}, "ran": {seed: {"train_seconds",
    "settings"}}, "failed": [...], "missing": [...], "stale": [...], "added": [...],
    "from_ledger": [seeds whose record is the ledger's, not a run folder's]}
    (ran: what the ledger keeps of each finished run; stale: runs whose settings differ from
    the cell's (`cell_settings`: ``expected[model]`` and ``by_dataset[dataset]``); added: those
    settings some of its runs did not have yet). A run's folder is read first, the ``ledger``
    where the folder is missing."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset in datasets:
        runs = DATASETS[dataset].runs(models)
        peers = ([recbole_row(m) for m in runs if m in RECBOLE_MODELS]
                 if DATASETS[dataset].recbole_splits else [])
        for model in [*runs, *peers]:
            entry: dict[str, Any] = {"seeds": {}, "ran": {}, "failed": [], "missing": [],
                                     "seconds": [], "stale": [], "added": [], "from_ledger": []}
            judged = cell_settings(expected, by_dataset, dataset, model)
            for seed in seeds:
                found = find_run(out, ledger or {}, dataset, model, seed)
                if found is not None and judged is not None:
                    changes, added = diff_settings(found.settings, judged)
                    if changes:
                        entry["stale"].append(f"s{seed} ({'; '.join(changes)})")
                    for key in added:
                        if key not in entry["added"]:
                            entry["added"].append(key)
                if found is None:
                    entry["missing"].append(seed)
                elif not found.ok:
                    entry["failed"].append(f"s{seed}: {(found.error or '')[:120]}")
                else:
                    entry["seeds"][seed] = found.metrics
                    entry["seconds"].append(found.train_seconds)
                    entry["ran"][seed] = {"train_seconds": found.train_seconds,
                                          "settings": found.settings or {},
                                          "threads": found.threads, "code": found.code}
                    if not found.in_folder:
                        entry["from_ledger"].append(seed)
            table.setdefault(dataset, {})[model] = entry
    return table


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, half = t_interval(values)
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _values(entry: dict[str, Any], key: str) -> list[float]:
    return [v[key] for v in entry["seeds"].values() if v.get(key) is not None]


def _codes(model: str, entry: dict[str, Any]) -> str:
    """The code that made a cell's runs (`recozoo.provenance.short_code`), with the number of
    runs at each where they differ; RecBole's rows are the peer's code ("–")."""
    if model in RECBOLE_ROWS:
        return "–"
    counts = Counter(short_code(ran.get("code")) for ran in entry["ran"].values())
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{code} ({n})" for code, n in sorted(counts.items()))


def summarise(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: its rank by mean NDCG@10 on each dataset, and wins/losses against pop."""
    summary: dict[str, dict[str, Any]] = {}
    for dataset, rows in table.items():
        means = {m: sum(v) / len(v) for m, e in rows.items() if (v := _values(e, PRIMARY))}
        order = sorted(means, key=lambda m: -means[m])
        for model, mean in means.items():
            row = summary.setdefault(model, {"ranks": {}, "wins": [], "losses": []})
            row["ranks"][dataset] = order.index(model) + 1
            if model != "pop" and "pop" in means:
                (row["wins"] if mean > means["pop"] else row["losses"]).append(dataset)
    for row in summary.values():
        row["mean_rank"] = sum(row["ranks"].values()) / len(row["ranks"])
    return summary


def threads_used(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """How many of the table's recozoo runs ran on how many torch threads (their
    ``metrics.json``'s ``torch_threads``), for the report's header."""
    counts = Counter(ran.get("threads") for models in table.values()
                     for model, entry in models.items() if model not in RECBOLE_ROWS
                     for ran in entry["ran"].values())
    parts = [f"{n} run(s) on {threads} torch thread(s)"
             for threads, n in sorted((t, n) for t, n in counts.items() if t is not None)]
    if counts.get(None):
        parts.append(f"{counts[None]} run(s) made before runs recorded their threads, on 1-2")
    return ", ".join(parts) or "no runs yet"


def write_report(settings: PanelSettings, table: dict[str, dict[str, dict[str, Any]]],
                 skipped: list[str], shared: Path | None, out: Path, root: Path) -> Path:
    """bench/panel.md (and panel.json beside it)."""
    summary = summarise(table)
    lines = ["# recozoo panel: every model with its defaults, datasets x seeds", "",
             (f"Written {datetime.datetime.now():%Y-%m-%d %H:%M} on {platform.node()} "
             f"({os.cpu_count()} CPUs, OMP_WAIT_POLICY=PASSIVE; {threads_used(table)}: the "
             "seconds depend on it, the metrics do not). Test metrics of each model's best validation "
             "checkpoint; mean ± half-width of the 95% Student-t interval over the seeds done "
             "(n); full ranking over all items. The seed moves a random split and a model's "
             "initialisation and sampling; a leave-one-out split is fixed by time and the shop's "
             "data by its own seed, so deterministic models (pop, itemknn, ease) show ± 0 there."),
             "",
             ("Reproduce (resumable: finished runs are skipped, those in the run folders and "
              "those the ledger `" + settings.ledger_path(root).name + "` records with the settings they ran with; a run whose settings differ from "
              "today's defaults runs again; the leaderboards' `code` column names the commit each "
              "cell's runs were made at, and `rerun_before=<commit>` runs again those made "
              "before it, and those that did not record their commit (`unrecorded`: any commit "
              "reruns them, e.g. the first, `$(git rev-list --max-parents=0 HEAD)`)):"), "", "```",
             "make panel ARGS=\"shared=<folder with data/>\"   # or python -m bench.panel ...",
             (f"python -m bench.panel datasets=[{','.join(settings.datasets)}] "
             f"seeds=[{','.join(map(str, settings.seeds))}] report_only=true   # the report alone"),
             "```", "", "One run is `" + shlex.join([
                 "python", *train_command(DATASETS["shop"], "<model>", 1, shared,
                                          Path("<run folder>"), settings.overrides)[1:]])
             + "`, with each dataset's overrides:", ""]
    for name in settings.datasets:
        dataset = DATASETS[name]
        only = f"; models: {', '.join(dataset.models)}" if dataset.models is not None else ""
        lines.append(f"- `{name}`: `{' '.join(dataset.overrides)}` ({dataset.note}{only})")
    if skipped:
        lines += ["", "Not run this time:", ""] + [f"- {s}" for s in skipped]
    lines += ["", "## Summary across datasets", "",
              ("Rank by mean test NDCG@10 within each dataset (1 = best); wins/losses: datasets "
              "where the model's mean NDCG@10 is above/below pop's. A mean rank compares models "
              "only over the same datasets: read it with the number of datasets a model ran on."),
              "", "| model | datasets | mean rank | " + " | ".join(settings.datasets)
              + " | beats pop on | loses to pop on |",
              "|---|---:|---:|" + "---:|" * len(settings.datasets) + "---|---|"]
    for model, row in sorted(summary.items(),
                             key=lambda kv: (-len(kv[1]["ranks"]), kv[1]["mean_rank"])):
        ranks = [str(row["ranks"].get(d, "–")) for d in settings.datasets]
        lines.append(f"| {model} | {len(row['ranks'])} | {row['mean_rank']:.1f} | "
                     + " | ".join(ranks)
                     + f" | {', '.join(row['wins']) or '–'} | {', '.join(row['losses']) or '–'} |")
    for name in settings.datasets:
        rows = table.get(name, {})
        lines += ["", f"## {name}", "", DATASETS[name].note, "",
                  "| model | n | " + " | ".join(label for _, label in COLUMNS)
                  + " | train s (mean) | code |",
                  "|---|---:|" + "---:|" * (len(COLUMNS) + 1) + "---|"]
        order = sorted(rows, key=lambda m: -(sum(v) / len(v) if (v := _values(rows[m], PRIMARY))
                                             else -1))
        for model in order:
            entry = rows[model]
            seconds = entry["seconds"]
            lines.append(f"| {model} | {len(entry['seeds'])} | "
                         + " | ".join(_cell(_values(entry, key)) for key, _ in COLUMNS)
                         + f" | {sum(seconds) / len(seconds):.0f} | {_codes(model, entry)} |"
                         if seconds else
                         f"| {model} | 0 | " + " | ".join("–" for _ in COLUMNS) + " | – | – |")
        failed = [f"{m} {f}" for m, e in rows.items() for f in e["failed"]]
        missing = [f"{m} (seeds {', '.join(map(str, e['missing']))})" for m, e in rows.items()
                   if e["missing"]]
        stale = [f"{m} {s}" for m, e in rows.items() for s in e.get("stale", [])]
        added = [f"{m} ({', '.join(e['added'])})" for m, e in rows.items() if e.get("added")]
        if failed:
            lines += ["", "Failed: " + "; ".join(failed)]
        if stale:
            lines += ["", "Stale (run with other settings than today's defaults; the panel "
                      "reruns them unless keep_stale=true): " + "; ".join(stale)]
        if added:
            lines += ["", "Settings added since some runs were made (at defaults that keep the "
                      "earlier behaviour; not counted as a change): " + "; ".join(added)]
        if missing:
            lines += ["", "Missing: " + "; ".join(missing)]
    path = Path(settings.report)
    path = path if path.is_absolute() else root / path
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(
        {"settings": dataclasses.asdict(settings), "runs": {  # the ledger keeps "ran"
            d: {m: {k: v for k, v in e.items() if k != "ran"} for m, e in rows.items()}
            for d, rows in table.items()}, "summary": summary,
         "skipped": skipped, "out": str(out)}, indent=1, default=str))
    return path


@dataclass(frozen=True)
class ReportScope:
    """The datasets, models and seeds a report covers (`report_scope`)."""

    datasets: list[str]
    models: list[str]
    seeds: list[int]


def report_scope(settings: PanelSettings, models: list[str], available: list[str],
                 ledger: Ledger) -> ReportScope:
    """What the report covers: the cells this call asked for and every cell the ledger records
    (of the datasets and models that exist today), in the panel's order. So a call that
    completes part of the panel (``datasets=[scientific] models=[cfgan]``) rewrites the whole
    report, not a report of that part alone; a report with a ledger of its own (``report=``
    elsewhere) covers what was run for it."""
    datasets = {*settings.datasets, *(dataset for dataset, _, _ in ledger)}
    reported = {*models, *(model for _, model, _ in ledger)}
    return ReportScope([d for d in DATASETS if d in datasets],
                       [m for m in available if m in reported],
                       sorted({*settings.seeds, *(seed for _, _, seed in ledger)}))


def checked_selection(root: Path, datasets: list[str], models: list[str], shared: str | None
                      ) -> tuple[Path | None, list[str], list[str]]:
    """A panel call's choice, checked: (the shared folder, from ``shared`` or the
    RECOZOO_SHARED environment variable; every ranking model; the chosen models, ``["all"]``
    expanded). Unknown datasets or models and a shared path that is no folder stop the call with
    what is known."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    shared_name = shared or os.environ.get("RECOZOO_SHARED")
    folder = Path(shared_name).expanduser().resolve() if shared_name else None
    if folder is not None and not folder.is_dir():
        raise SystemExit(f"shared={folder} is not a folder")
    available = ranking_models(root)
    chosen = available if models == ["all"] else models
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {', '.join(available)}")
    return folder, available, chosen


def main(argv: list[str] | None = None) -> Path:
    settings = parse_settings(PanelSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m bench.panel")
    root = repo_root()
    shared, available, models = checked_selection(root, settings.datasets, settings.models,
                                                  settings.shared)
    if settings.rerun_before and resolve_commit(settings.rerun_before, root) is None:
        raise SystemExit(f"rerun_before={settings.rerun_before} names no commit of the checkout "
                         f"at {root}")
    out = Path(settings.out).expanduser().resolve()
    moved = tidy_stale(out) if out.is_dir() else []
    if moved:
        print(f"{len(moved)} stale runs and logs that earlier panels kept among the cells moved "
              f"into their model's {STALE_DIR}/ (e.g. {moved[0].relative_to(out)})")
    ledger_path = settings.ledger_path(root)
    ledger = read_ledger(ledger_path)
    scope = report_scope(settings, models, available, ledger)
    expected = current_settings(root, scope.models, settings.overrides)
    by_dataset = dataset_settings(root, scope.datasets)
    skipped = ([] if settings.report_only else
               run_panel(settings, root, shared, out, models, expected, ledger, by_dataset,
                         ledger_path))
    skipped += [f"{d}: {why}" for d in scope.datasets
                if (settings.report_only or d not in settings.datasets)
                and (why := DATASETS[d].missing(shared))]
    table = collect(out, scope.datasets, scope.models, scope.seeds, expected, ledger, by_dataset)
    path = write_report(dataclasses.replace(settings, datasets=scope.datasets,
                                            seeds=scope.seeds), table, skipped, shared, out, root)
    update_ledger(ledger_path, table)
    print(f"panel report: {path}; ledger: {ledger_path}")
    return path


if __name__ == "__main__":
    main()
