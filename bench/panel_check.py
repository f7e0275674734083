"""``python -m bench.panel_check`` (``make panel-check``): do the panel's recorded figures come out
again here? Runs chosen cells of the panel afresh and compares them with the ledger.

The panel's figures (`bench/panel.md`) are what its ledger (`bench/panel_runs.json`) records: runs
made on some machine, at some commit, possibly in a cache since cleared. This check runs each
chosen (dataset, model, seed) that the ledger records with the panel's own ``train.py`` command
(`bench.panel.train_command`), with as many torch threads as the recorded run had, into
``<out>/<dataset>/<model>/s<seed>``, and compares its `bench.panel.KEPT_METRICS` with the
record. On the datasets scored on RecBole's split of each seed (``ml100k_recbole``) RecBole's
rows of the chosen models are run again too, by the peer as the panel runs them
(``recbole_rows=false``: not). It reads the ledger and writes neither it nor the panel's report
or runs.

Verdicts, per cell:

- ``same``: every metric within ``tolerance`` of the record (the default, 1e-6, is float32's
  rounding: a deterministic run on the same code gives the record to the digit);
- ``differs``: the largest difference, and on which metric; the exit status is then 1;
- ``settings changed``: the record ran with other settings than today's defaults (a changed
  default, not a failure to reproduce; the panel marks such cells stale and runs them again), so
  its figures are shown beside the rerun but not judged;
- skipped, with the reason: not in the ledger, a failed run, the dataset's files are absent.

The report (printed, and written to ``<out>/check.md`` with a JSON twin) also names the commit
each record was made at beside the checkout's: a difference on a record made at an older commit
may be a change of the code since (``git log <commit>..``), not of the machine. A run left in
``out`` by an earlier check at the checkout's commit, without uncommitted changes, is read
again instead of rerun (a check can be completed over several sittings).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import repo_root
from bench.compare import thread_env
from bench.panel import (
    DATASETS,
    KEPT_METRICS,
    PRIMARY,
    RECBOLE_MODELS,
    RECBOLE_ROWS,
    FoundRun,
    PanelDataset,
    PanelSettings,
    cell_settings,
    checked_selection,
    current_settings,
    dataset_settings,
    diff_settings,
    present_datasets,
    read_ledger,
    read_run,
    recbole_row,
    recbole_seed,
    run_folder,
    train_command,
)
from bench.process import run_process
from recozoo.artifacts import RunRecord
from recozoo.cli import parse_settings
from recozoo.provenance import code_version, short_code

#: the verdicts a checked cell can have (`check_cell`)
SAME, DIFFERS, CHANGED = "same", "differs", "settings changed"


@dataclass
class CheckSettings:
    """Run recorded panel cells again and compare their figures with the ledger's.

    Args:
        datasets: the panel datasets to check (all: every one in bench/panel.py's DATASETS).
        models: the models to check (all: every ranking model of conf/model/).
        seeds: the seeds to check.
        out: where the check's runs go (not the panel's folder).
        shared: the folder with data/ (default: the RECOZOO_SHARED environment variable).
        ledger: the panel's ledger to compare with.
        tolerance: the largest difference of a metric still called the same.
        threads: torch threads of a run whose record does not say how many it had.
        budget_minutes: start no new run after this many minutes (0: no limit).
        recbole_rows: on the datasets scored on RecBole's split of each seed, also run
            RecBole's rows of the chosen models again (the peer's runs, `bench.peers`; each
            check runs them anew) and compare them with the ledger's, as recozoo's.
    """

    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    models: list[str] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [1])
    out: str = "~/.cache/recozoo/panel_check"
    shared: str | None = None
    ledger: str = "bench/panel_runs.json"
    tolerance: float = 1e-6
    threads: int = 2
    budget_minutes: float = 0.0
    recbole_rows: bool = True


def compare_metrics(recorded: dict[str, Any], rerun: dict[str, Any]
                    ) -> tuple[float, str | None]:
    """The largest absolute difference between the two runs' `KEPT_METRICS` and its metric
    (0.0 and None where every one is equal). A metric with a value on one side only (None or NaN
    on the other: e.g. tail recall where no target is in the tail) counts as an infinite
    difference; one the record does not hold at all (a ledger written before it was kept) is
    not compared."""
    largest, where = 0.0, None
    for key in KEPT_METRICS:
        if key not in recorded:
            continue
        a, b = recorded[key], rerun.get(key)
        if _absent(a) and _absent(b):
            continue
        difference = math.inf if _absent(a) or _absent(b) else abs(float(a) - float(b))
        if difference > largest:
            largest, where = difference, key
    return largest, where


def _absent(value: Any) -> bool:
    """A metric without a value: None, or NaN (as JSON and float32 write it)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_cell(record: FoundRun, rerun: dict[str, Any], changes: list[str],
               tolerance: float) -> dict[str, Any]:
    """The verdict on one cell: its record, the rerun's metrics and the settings that changed
    since the record (`bench.panel.diff_settings`)."""
    largest, where = compare_metrics(record.metrics, rerun)
    verdict = CHANGED if changes else (SAME if largest <= tolerance else DIFFERS)
    return {"verdict": verdict, "largest_difference": largest, "on": where,
            "changes": changes}


def _reusable(found: RunRecord | None, commit: str | None) -> bool:
    """Whether ``found`` (a run folder's record) is a finished run made at ``commit`` from a
    clean checkout."""
    code = (found.code if found is not None else None) or {}
    return (found is not None and found.ok and commit is not None
            and code.get("commit") == commit and not code.get("dirty"))


def _run_afresh(dataset: PanelDataset, model: str, seed: int, shared: Path | None,
                folder: Path, split: Path | None, threads: int, root: Path,
                elapsed: float) -> None:
    """One cell trained with the panel's command into an emptied ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)  # a last.ckpt would resume
    folder.parent.mkdir(parents=True, exist_ok=True)
    _announce(dataset.name, model, seed, threads, elapsed)
    run_process(train_command(dataset, model, seed, shared, folder, [], split),
                env=thread_env(threads), cwd=root, log=folder.with_suffix(".log"))


def run_check(settings: CheckSettings, root: Path, shared: Path | None, out: Path,
              models: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Check every chosen cell the ledger records; returns (checked cells, skipped with why)."""
    ledger_path = Path(settings.ledger).expanduser()
    ledger = read_ledger(ledger_path if ledger_path.is_absolute() else root / ledger_path)
    expected = current_settings(root, models, [])
    by_dataset = dataset_settings(root, settings.datasets)
    commit = code_version(root).get("commit")
    cells, skipped, start = [], [], time.monotonic()
    for name, dataset in present_datasets(settings.datasets, shared, skipped):
        peers = ({recbole_row(m): m for m in dataset.runs(models) if m in RECBOLE_MODELS}
                 if dataset.recbole_splits and settings.recbole_rows else {})  # row -> model
        for seed in settings.seeds:
            split = None  # RecBole's split of the seed, exported at its first use
            for model in [*dataset.runs(models), *peers]:
                record = ledger.get((name, model, seed))
                if record is None:
                    skipped.append(f"{name} {model} seed {seed}: not in the ledger")
                    continue
                if not record.ok:
                    skipped.append(f"{name} {model} seed {seed}: the ledger records a failed run")
                    continue
                elapsed = (time.monotonic() - start) / 60
                if settings.budget_minutes and elapsed > settings.budget_minutes:
                    skipped.append(f"budget of {settings.budget_minutes:g} min used: stopped "
                                   f"before {name} {model} seed {seed}")
                    return cells, skipped
                folder = run_folder(out, name, model, seed)
                threads = record.threads or settings.threads
                started, rerun = time.monotonic(), read_run(folder)
                afresh = model not in peers and not _reusable(rerun, commit)
                try:  # the peer's part: RecBole's run of a row, or the split a rerun reads
                    if model in peers:  # run at every check (no commit of ours says what)
                        shutil.rmtree(folder, ignore_errors=True)
                        _announce(name, model, seed, threads, elapsed)
                        split = recbole_seed(PanelSettings(threads=threads), shared, out, name,
                                             seed, [peers[model]])  # exports the split if need be
                    elif afresh and dataset.recbole_splits and split is None:
                        split = recbole_seed(PanelSettings(threads=threads), shared, out, name,
                                             seed, [])  # the split alone
                except (RuntimeError, OSError) as error:  # the peer missing or failing
                    if split is None:  # no split of the seed: its other cells cannot run either
                        skipped.append(f"{name} seed {seed}: {error}")
                        break
                    skipped.append(f"{name} {model} seed {seed}: {error}")
                    continue
                if afresh:
                    _run_afresh(dataset, model, seed, shared, folder, split, threads, root,
                                elapsed)
                rerun = read_run(folder)
                if rerun is None or not rerun.ok:
                    error = "no record" if rerun is None else (rerun.error or "")[:200]
                    skipped.append(f"{name} {model} seed {seed}: the rerun failed ({error}; "
                                   f"log: {folder.with_suffix('.log')})")
                    continue
                changes = diff_settings(record.settings,
                                        cell_settings(expected, by_dataset, name, model) or {})[0]
                cells.append({
                    "dataset": name, "model": model, "seed": seed,
                    "recorded_code": _code(model, record.code),
                    "rerun_code": _code(model, rerun.code), "threads": threads,
                    "recorded": {k: record.metrics.get(k) for k in KEPT_METRICS},
                    "rerun": {k: rerun.metrics.get(k) for k in KEPT_METRICS},
                    "recorded_train_seconds": record.train_seconds,
                    "rerun_train_seconds": rerun.train_seconds,
                    "wall_seconds": round(time.monotonic() - started, 1),
                    **check_cell(record, rerun.metrics, changes, settings.tolerance)})
    return cells, skipped


def _announce(dataset: str, model: str, seed: int, threads: int, elapsed: float) -> None:
    print(f"[{elapsed:6.1f} min] {dataset} {model} seed {seed} ({threads} "
          f"thread{'s' if threads != 1 else ''})", flush=True)


def _code(model: str, code: dict[str, Any] | None) -> str:
    """The code column of a cell: recozoo's commit, or the peer's (the panel's report writes
    its rows' code as "–")."""
    return "RecBole" if model in RECBOLE_ROWS else short_code(code)


def _value(value: Any) -> str:
    return "–" if _absent(value) else f"{value:.4f}"


def report_lines(cells: list[dict[str, Any]], skipped: list[str], tolerance: float) -> list[str]:
    """The check's Markdown report."""
    lines = [
        "# The panel's recorded figures, run again",
        "",
        (f"Each cell run afresh with the panel's command and compared with the ledger's record on "
         f"{', '.join(KEPT_METRICS)}; same: every one within {tolerance:g}."),
        "",
        ("| dataset | model | seed | record's code | rerun's code | threads | "
         "NDCG@10 recorded | NDCG@10 rerun | largest difference (metric) | verdict |"),
        "|---|---|---:|---|---|---:|---:|---:|---|---|",
    ]
    for cell in cells:
        difference = ("0" if cell["on"] is None
                      else f"{cell['largest_difference']:.2e} ({cell['on']})")
        verdict = cell["verdict"] + (f": {'; '.join(cell['changes'])}" if cell["changes"] else "")
        lines.append(f"| {cell['dataset']} | {cell['model']} | {cell['seed']} | "
                     f"{cell['recorded_code']} | {cell['rerun_code']} | {cell['threads']} | "
                     f"{_value(cell['recorded'].get(PRIMARY))} | "
                     f"{_value(cell['rerun'].get(PRIMARY))} | {difference} | {verdict} |")
    counts = {v: sum(c["verdict"] == v for c in cells) for v in (SAME, DIFFERS, CHANGED)}
    lines += ["", (f"{counts[SAME]} same, {counts[DIFFERS]} differ, {counts[CHANGED]} with "
               f"settings changed since the record, {len(skipped)} skipped.")]
    if skipped:
        lines += ["", "Skipped:", *(f"- {why}" for why in skipped)]
    return lines


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(CheckSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m bench.panel_check")
    root = repo_root()
    shared, _, models = checked_selection(root, settings.datasets, settings.models,
                                          settings.shared)
    out = Path(settings.out).expanduser().resolve()
    cells, skipped = run_check(settings, root, shared, out, models)
    lines = report_lines(cells, skipped, settings.tolerance)
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.md").write_text("\n".join(lines) + "\n")
    (out / "check.json").write_text(json.dumps({"cells": cells, "skipped": skipped},
                                               indent=1, default=str) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out / 'check.md'}")
    return 1 if any(cell["verdict"] == DIFFERS for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
