"""``make bench`` (``python -m bench [key=value ...]``): speed and quality, one report.

Sections (``sections=[...]`` picks some):

- ``compare``: recozoo against RecBole 1.2.1 on ml-100k (`bench.compare`), when the peer
  folder (``shared=<folder>``, or the environment variable ``RECOZOO_SHARED``) holds the peer
  scripts and the data; otherwise recozoo is run alone on ml-100k if the data is there, and the
  output and the report say so.
- ``implicit``: recozoo's bpr against implicit 0.7.3's BPR and ALS on ml-100k (RecBole's exact
  split where the RecBole peer exports it) and on the synthetic shop of ``implicit_shop_size``
  interactions: seconds per epoch, seconds to the best validation NDCG@10 and test NDCG@10 by
  recozoo's metric code on both sides' lists (`bench.implicit_peer`; implicit gets its own
  virtual environment on first use).
- ``ratings``: recozoo's rating models (``experiment=ratings``) against scikit-surprise 1.1.5
  (SVD, SVD++, BaselineOnly) on the same ml-100k splits, one per seed: RMSE, MAE and seconds
  (`bench.ratings`; Surprise gets its own virtual environment on first use).
- ``scale``: time and peak memory on synthetic shops of growing size (`bench.scaling`).
- ``throughput``: recozoo's full-ranking evaluation in GFLOP/s against a bare matmul + top-K of
  the same shape (`bench.throughput`).
- ``loadtest``: the serving load test (`recozoo.serve.loadtest`) on the EASE run of the
  comparison.

Writes ``bench/results.md`` and ``bench/results.json`` (``merge=true`` keeps the other sections of
the results already there and replaces only those run, saying so in the notes; ``quick=true``: a minute-long smoke run on
a tiny shop, written under ``out`` instead, so the published figures stay as they are). Examples::

    make bench ARGS="shared=../shared"           # the full run (~25 min on 2 cores)
    python -m bench --help                       # every key, its default and meaning
    make bench ARGS="models=[bpr,ease] sections=[compare] merge=true"   # some sections: merge
    make bench ARGS="scale_sizes=[100000,1000000,10000000]"   # add the 10^7 shop (slow)
    make bench ARGS="max_load=3 max_wait=2400"   # wait for a quiet machine first
    make bench ARGS="shared=../shared sections=[implicit] merge=true"   # one section, added
"""

from __future__ import annotations

from recozoo.runtime import configure_process

# the in-process kernels (the throughput section's bare matmul + top-K) run under the settings
# the recozoo runs they are compared with get, which torch reads when it is first loaded
configure_process()

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import compare as comparison
from bench import repo_root, report
from bench.panel import PanelSettings, against_recbole, read_ledger
from bench.peers import RecBolePeer
from recozoo.artifacts import RunDir
from recozoo.cli import parse_settings
from recozoo.provenance import code_version, short_code

SECTIONS = ("compare", "implicit", "ratings", "scale", "throughput", "loadtest")


@dataclass
class BenchSettings:
    """Arguments of ``python -m bench``.

    Args:
        shared: the folder with ``peers/recbole`` and ``data/ml-100k`` (null: the environment
            variable RECOZOO_SHARED; neither set: no RecBole and no ml-100k, recozoo alone).
        peers: false runs recozoo alone even where the peer is available.
        models: recozoo model names to compare (default: every model with a RecBole peer).
        sections: which sections to run (see the module docstring).
        quick: a smoke run on a tiny shop, no peer, results under ``out``.
        out: scratch folder (run folders, logs, RecBole's files; relative: under the
            repository root); ignored by git.
        results: folder of results.md and results.json (null: ``bench``, quick: ``<out>/quick``).
        threads: torch threads of every run, on both sides.
        general_max_epochs: epoch cap of general models.
        patience: early-stopping patience (validation epochs without improvement), both sides.
        sequence_epochs: RecBole's epochs for sequence models (and recozoo's equal-epoch run).
        sequence_max_epochs: recozoo's cap for sequence models trained to convergence.
        sequence_time_budget: RecBole's training time budget for a sequence model (seconds).
        sequence_max_minutes: wall-clock cap of recozoo's sequence runs to convergence.
        repeats: alternating runs per side for each general model (seconds: their median).
        own_splits: score recozoo on its own split=random / split=loo even where RecBole's
            exact splits are available.
        implicit_models: implicit's models of the implicit section (bpr, als).
        implicit_solvers: the ``model.solver`` settings of recozoo's bpr in the implicit
            section, a row each (``optimizer``, its default; ``pair_sgd``, implicit's own
            algorithm, one SGD step per triple).
        implicit_datasets: the data sets of the implicit section (``ml-100k``, ``shop``; with
            ``merge=true`` the earlier results of the others are kept).
        implicit_shop_size: interactions of the implicit section's shop.
        implicit_patience: implicit's early-stopping patience (its BPR learns nothing in its
            first ~10 epochs on ml-100k at its default learning rate; see bench.implicit_peer).
        implicit_shop_max_epochs: epoch cap of both sides on that shop (an epoch of recozoo's
            bpr plus its validation takes ~40 s at 10^6 on 2 cores).
        merge: keep the other sections of the results already in the results folder and
            replace only those run (a note says which and when). A run of some sections without
            it stops where the folder holds results (it would drop the others).
        rating_models: recozoo rating models of the ratings section.
        rating_seeds: the splits (and training seeds) of the ratings section.
        scale_sizes: interactions of the synthetic shops of the scaling section.
        scale_models: models measured at every size (``[bpr]`` for the 10^7 shop; with
            ``merge=true`` the earlier points of the other models are kept).
        scale_max_batches: training batches timed per epoch, the epoch extrapolated from them
            (0: every epoch whole).
        scale_eval_batches: test batches timed, the evaluation extrapolated from them (0: every
            evaluation whole), at sizes above ``scale_full_eval_up_to``.
        throughput_up_to: the throughput section times the bare matmul + top-K of the shops of
            up to this many requested interactions (at 10^7 the bare kernel alone takes ~20
            minutes on 2 cores).
        scale_full_eval_up_to: sizes up to this are evaluated whole whatever
            ``scale_eval_batches`` says (a full evaluation of the 10^7 shop scores 5.7e5 users x
            3e5 items: 1,588 s on 2 busy cores).
        loadtest_requests: requests per phase of the load test.
        max_load: before starting, wait for the 1-minute load average to drop below this
            (null: start at once).
        max_wait: the longest wait for ``max_load`` (seconds).
    """

    shared: str | None = None
    peers: bool = True
    models: list[str] = field(default_factory=lambda: [m.name for m in comparison.MODELS])
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    quick: bool = False
    out: str = "bench/out"
    results: str | None = None
    threads: int = 2
    general_max_epochs: int = 200
    patience: int = 10
    sequence_epochs: int = 1
    sequence_max_epochs: int = 50
    sequence_time_budget: float = 600.0
    sequence_max_minutes: float = 5.0
    repeats: int = 3
    own_splits: bool = False
    implicit_models: list[str] = field(default_factory=lambda: ["bpr", "als"])
    implicit_solvers: list[str] = field(default_factory=lambda: ["optimizer", "pair_sgd"])
    implicit_datasets: list[str] = field(default_factory=lambda: ["ml-100k", "shop"])
    implicit_shop_size: int = 1_000_000
    implicit_patience: int = 30
    implicit_shop_max_epochs: int = 60
    merge: bool = False
    rating_models: list[str] = field(default_factory=lambda: ["svd", "svdpp"])
    rating_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    scale_sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    scale_models: list[str] = field(default_factory=lambda: ["bpr", "sasrec"])
    scale_max_batches: int = 20
    scale_eval_batches: int = 0
    scale_full_eval_up_to: int = 1_000_000
    throughput_up_to: int = 1_000_000
    loadtest_requests: int = 200
    max_load: float | None = None
    max_wait: float = 2400.0


#: the tiny shop of ``quick=true``
QUICK_SHOP = ["data=shop", "data.source.n_users=200", "data.source.n_items=120",
              "data.source.sessions_per_user=3"]


#: the environment variable naming the shared folder when ``shared`` is not given
SHARED_VARIABLE = "RECOZOO_SHARED"


def say(text: str) -> None:
    """Print one progress line at once (the bench runs for minutes)."""
    print(text, flush=True)


def shared_folder(given: str | None) -> tuple[Path | None, str]:
    """The shared folder (``given``, else ``$RECOZOO_SHARED``) and a line saying where it came
    from; None where neither names one.

    Raises:
        SystemExit: the named folder does not exist.
    """
    source = "shared" if given else SHARED_VARIABLE
    value = given or os.environ.get(SHARED_VARIABLE) or None
    if value is None:
        return None, (f"shared folder: none (neither shared=<folder> nor {SHARED_VARIABLE} is "
                      "set): RecBole and ml-100k are not available, recozoo alone is "
                      "benchmarked")
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise SystemExit(f"{source}={value}: no such folder (expected one holding "
                         "peers/recbole and data/ml-100k)")
    return folder, f"shared folder: {folder} (from {source})"


def under_root(path: str) -> Path:
    """``path`` as given when absolute, else under the repository root."""
    return Path(path) if Path(path).is_absolute() else repo_root() / path


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    """Sleep until the 1-minute load average is below ``max_load`` or ``max_wait`` has passed."""
    start = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - start < max_wait:
        say(f"load average {os.getloadavg()[0]:.2f} >= {max_load}: waiting "
            f"({time.monotonic() - start:.0f}/{max_wait:.0f} s)")
        time.sleep(30)


def machine(threads: int) -> dict[str, Any]:
    """The machine and the software the figures were taken on."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_start": [round(x, 2) for x in os.getloadavg()]}


def commit() -> str | None:
    """The checkout's short commit (``+dirty`` where its code had uncommitted changes), or None
    outside git (`recozoo.provenance`, which each run's metrics.json records in full)."""
    code = code_version()
    return short_code(code) if code["commit"] else None


def run_compare(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    unknown = sorted(set(settings.models) - {m.name for m in comparison.MODELS})
    specs = [m for m in comparison.MODELS if m.name in settings.models]
    specs += [comparison.ModelSpec(name, None, "general") for name in unknown]
    compare_settings = comparison.CompareSettings(
        general_max_epochs=settings.general_max_epochs, patience=settings.patience,
        sequence_epochs=settings.sequence_epochs,
        sequence_max_epochs=settings.sequence_max_epochs,
        sequence_time_budget=settings.sequence_time_budget,
        sequence_max_minutes=settings.sequence_max_minutes, threads=settings.threads,
        peer_splits=not settings.own_splits, repeats=1 if settings.quick else settings.repeats)
    shared = Path(settings.shared) if settings.shared else None
    if settings.quick:
        data_overrides = QUICK_SHOP + [f"paths.cache_dir={out / 'cache'}"]
        peer, reason = None, "quick run: recozoo alone on a tiny shop"
    elif shared is None:
        results["comparison_note"] = (f"not run: no shared folder (shared=<folder> or "
                                      f"{SHARED_VARIABLE}) holding data/ml-100k and "
                                      "peers/recbole")
        say(results["comparison_note"])
        return
    else:
        data = shared / "data" / "ml-100k"
        if not (data / "ml-100k.inter").is_file():
            results["comparison_note"] = (f"not run: no ml-100k in {data} (set shared=<folder> "
                                          "holding data/ml-100k and peers/recbole)")
            say(results["comparison_note"])
            return
        data_overrides = ["data=atomic", f"data.path={data}", "data.name=ml-100k"]
        peer, reason = RecBolePeer.find(shared, out / "recbole") if settings.peers else (
            None, "peers=false")
    if peer is None or settings.own_splits:
        results["split_note"] = "recozoo used its own split=random / split=loo."
    else:
        results["split_note"] = ("recozoo was scored on RecBole's exact train/valid/test rows "
                                 "(export_splits.py, read by recozoo.data.PresetSplit).")
    if peer is None and settings.merge and settings.peers and not settings.quick:
        # merged, the rows measured alone would replace rows that hold RecBole's figures
        raise SystemExit(f"compare: RecBole cannot run ({reason}); with merge=true its figures "
                         "in the results would be replaced by none. Set the peer up, or pass "
                         "peers=false to merge recozoo's figures alone on purpose.")
    if peer is None:
        results["notes"].append(f"RecBole not run ({reason}): recozoo alone.")
        say(f"RecBole not run ({reason}): recozoo alone")
    if settings.quick:
        compare_settings.general_max_epochs = compare_settings.sequence_max_epochs = 2
    say(f"== compare: {', '.join(s.name for s in specs)}")
    results["comparison"] = comparison.compare(specs, data_overrides, peer, compare_settings,
                                               out / "runs", say=say)
    earlier = results.pop("earlier_comparison", None) if settings.merge else None
    if earlier:
        results["comparison"] = with_earlier_rows(results["comparison"], earlier)


def with_earlier_rows(rows: list[dict[str, Any]], earlier: dict[str, Any]
                      ) -> list[dict[str, Any]]:
    """``rows`` of the compare section plus the earlier run's rows of the models ``rows`` does
    not measure, each marked ``kept_from`` (the run it comes from: ``earlier["from"]``)."""
    measured = {row["model"] for row in rows}
    return rows + [{**row, "kept_from": row.get("kept_from") or earlier["from"]}
                   for row in earlier["rows"] if row["model"] not in measured]


def run_implicit(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    from bench import implicit_peer, scaling
    datasets: list[tuple[str, list[str], str]] = []
    max_epochs: dict[str, int] = {}
    if settings.quick:
        datasets.append(("quick_shop", QUICK_SHOP + [f"paths.cache_dir={out / 'cache'}",
                                                     "split=loo"], "leave-one-out"))
        max_epochs["quick_shop"] = 2
    else:
        shared = Path(settings.shared) if settings.shared else None
        data = shared / "data" / "ml-100k" if shared else None
        wanted = set(settings.implicit_datasets)
        if "ml-100k" in wanted and data is not None and (data / "ml-100k.inter").is_file():
            peer, _ = RecBolePeer.find(shared, out / "recbole") if settings.peers else (None, "")
            if peer is not None and not settings.own_splits:
                folder = peer.export_splits(settings.threads) / comparison.RECBOLE_SPLIT_FOLDERS[
                    "random"]
                split = ["split=preset", f"split.folder={folder}"]
                described = "RecBole's exact random 8:1:1"
            else:
                split, described = ["split=random"], "recozoo's random 8:1:1"
            datasets.append(("ml-100k", ["data=atomic", f"data.path={data}",
                                         "data.name=ml-100k", *split], described))
            max_epochs["ml-100k"] = settings.general_max_epochs
        if "shop" in wanted:
            name = f"shop_{settings.implicit_shop_size}"
            datasets.append((name, scaling.shop_overrides(settings.implicit_shop_size,
                                                          out / "scale" / "cache")
                             + ["split=loo"], "leave-one-out"))
            max_epochs[name] = settings.implicit_shop_max_epochs
    say(f"== implicit: {', '.join(name for name, _, _ in datasets) or 'no data set'}")
    results["implicit"] = implicit_peer.implicit_section(
        datasets, out, settings.threads, settings.implicit_models, max_epochs,
        settings.patience, peers=settings.peers, comparison=results.get("comparison"), say=say,
        peer_patience=settings.implicit_patience, solvers=settings.implicit_solvers)
    earlier = results.pop("earlier_implicit", None) if settings.merge else None
    if earlier:  # keep the data sets this run did not measure
        names = {entry["dataset"] for entry in results["implicit"]["datasets"]}
        results["implicit"]["datasets"] += [entry for entry in earlier.get("datasets", [])
                                            if entry["dataset"] not in names]


def run_ratings(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    from bench import ratings
    shared = Path(settings.shared) if settings.shared else None
    data = shared / "data" / "ml-100k" if shared else None
    if data is None or not (data / "ml-100k.inter").is_file():
        results["ratings"] = {"note": f"not run: no ml-100k ratings in {data or 'no shared folder'}"
                                      " (shared=<folder> holding data/ml-100k)"}
        say(results["ratings"]["note"])
        return
    seeds = settings.rating_seeds[:1] if settings.quick else settings.rating_seeds
    say(f"== ratings: {', '.join(settings.rating_models)} and Surprise, seeds {seeds}")
    results["ratings"] = ratings.ratings_section(
        settings.rating_models, seeds, ["data=ml100k", f"data.path={data}"], out,
        settings.threads, peers=settings.peers,
        extra=["trainer.max_epochs=2"] if settings.quick else None, say=say)


def run_scale(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    from bench import scaling
    sizes = [2_000, 10_000] if settings.quick else list(settings.scale_sizes)
    say(f"== scale: {sizes}")
    results["scaling"] = scaling.scaling_section(
        sizes, out / "scale", settings.threads, say=say, quick=settings.quick,
        max_batches=settings.scale_max_batches, models=settings.scale_models,
        eval_batches=settings.scale_eval_batches,
        full_eval_up_to=settings.scale_full_eval_up_to)
    if settings.merge and results.get("earlier_scaling"):
        results["scaling"] = scaling.with_earlier(results["scaling"],
                                                  results.pop("earlier_scaling"),
                                                  settings.scale_models)


def run_throughput(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    from bench import scaling
    say("== throughput")
    results["throughput"] = scaling.throughput_section(results, settings.threads,
                                                       up_to=settings.throughput_up_to)


def run_loadtest(settings: BenchSettings, out: Path, results: dict[str, Any]) -> None:
    run = out / "runs" / "recozoo_ease"
    if not RunDir(run).metrics.exists():
        results["loadtest"] = {"error": f"no EASE run in {run} (the compare section makes it)"}
        return
    say("== loadtest")
    try:
        from recozoo.serve.loadtest import load_test
        requests = 40 if settings.quick else settings.loadtest_requests
        results["loadtest"] = load_test(run, requests=requests, clients=8, time_cap=60.0,
                                        accelerator="cpu", log_file=out / "loadtest.log")
    except Exception as error:  # noqa: BLE001 (the other sections' figures are still worth writing)
        results["loadtest"] = {"error": f"{type(error).__name__}: {error}"}


RUNNERS = {"compare": run_compare, "implicit": run_implicit, "ratings": run_ratings, "scale": run_scale, "throughput": run_throughput,
           "loadtest": run_loadtest}


#: the results.json keys each section writes
SECTION_KEYS = {"compare": ("comparison", "comparison_note", "split_note"),
                "implicit": ("implicit",), "ratings": ("ratings",), "scale": ("scaling",),
                "throughput": ("throughput",), "loadtest": ("loadtest",)}


def merged(path: Path, fresh: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """The results in ``path`` with the figures of ``sections`` left to this run: the earlier
    run's date, machine and notes stay (the report's header describes it), and a note says
    which sections were run now, when, at which commit and load. No file: ``fresh`` alone."""
    if not path.exists():
        return fresh
    earlier = json.loads(path.read_text())
    for name in sections:
        for key in SECTION_KEYS[name]:
            found = earlier.pop(key, None)
            if key in ("scaling", "implicit") and found:  # parts of them may be kept
                earlier[f"earlier_{key}"] = found
            if key == "comparison" and found:  # the rows of models not rerun may be kept
                merges = [m for m in earlier.get("merged", []) if "compare" in m["sections"]]
                source = merges[-1] if merges else earlier
                earlier["earlier_comparison"] = {
                    "rows": found, "from": {"date": source.get("date"),
                                            "commit": source.get("commit")}}
    note = (f"The {', '.join(sections)} section(s) were run on their own on {fresh['date']} "
            f"(recozoo {fresh['commit']}, {fresh['machine']['threads']} thread(s), load "
            f"{fresh['machine']['load_start']} at the start) and added here; the other sections "
            "are from the run above.")
    earlier["notes"] = [n for n in earlier.get("notes", [])
                        if not any(f"The {name} section" in n for name in sections)] + [note]
    earlier.setdefault("merged", []).append({"sections": list(sections), "date": fresh["date"],
                                             "commit": fresh["commit"],
                                             "settings": fresh["settings"],
                                             "machine": fresh["machine"]})
    return earlier


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections and write the report; returns the figures."""
    settings = parse_settings(BenchSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m bench", description=__doc__)
    unknown = sorted(set(settings.sections) - set(SECTIONS))
    if unknown or not settings.sections:
        raise SystemExit(f"sections: unknown {unknown or 'none given'}; choose from "
                         f"{list(SECTIONS)}")
    out = under_root(settings.out).resolve()
    folder = under_root(settings.results) if settings.results else (
        out / "quick" if settings.quick else repo_root() / "bench")
    left_out = [name for name in SECTIONS if name not in settings.sections]
    # a run of some sections would drop the others' published figures (a quick run's are scratch)
    if left_out and not (settings.merge or settings.quick) and (folder / "results.json").exists():
        raise SystemExit(f"sections={list(settings.sections)} without merge=true would rewrite "
                         f"{folder / 'results.md'} without its sections {left_out}: pass "
                         "merge=true to replace only the sections run, or results=<folder> to "
                         "write elsewhere")
    if settings.max_load is not None:
        wait_for_quiet(settings.max_load, settings.max_wait)
    shared, shared_line = shared_folder(settings.shared)
    settings.shared = None if shared is None else str(shared)
    say(shared_line)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
        "settings": vars(settings).copy(), "machine": machine(settings.threads), "notes": [],
    }
    if shared is None:
        results["notes"].append(shared_line + ".")
    if settings.merge:
        results = merged(folder / "results.json", results, settings.sections)
    if settings.quick:
        results["notes"].append("quick smoke run on a tiny shop: the figures mean nothing")
    seeds_against_recbole = None  # read from the panel's ledger once, where a report needs it
    start = time.perf_counter()
    for name in SECTIONS:
        if name in settings.sections:
            RUNNERS[name](settings, out, results)
            # written after every section, so a run cut short keeps what it measured
            machine_now = (results["merged"][-1]["machine"] if settings.merge
                           and results.get("merged") else results["machine"])
            machine_now["load_end"] = [round(x, 2) for x in os.getloadavg()]
            if not settings.merge:
                results["seconds"] = round(time.perf_counter() - start, 1)
            if results.get("comparison"):  # the one seed's verdicts, beside the panel's seeds
                if seeds_against_recbole is None:
                    seeds_against_recbole = against_recbole(
                        read_ledger(PanelSettings().ledger_path(repo_root())))
                results["against_recbole"] = seeds_against_recbole
            md, js = report.write(results, folder)
    say(md.read_text())
    say(f"wrote {md} and {js} in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
