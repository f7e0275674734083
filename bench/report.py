"""bench/results.md and bench/results.json from the figures of one ``make bench`` run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.compare import EPOCH_TARGET, EVAL_TARGET


def _num(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _ratio(value: float | None, met: bool | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if met is None else (" ok" if met else " **miss**"))


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows)]


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The side-by-side table (quality of sequence models after the same number of epochs)."""
    head = ["model", "split", "s/epoch recozoo", "s/epoch RecBole", "ratio", "eval s recozoo",
            "eval s RecBole", "ratio", "NDCG@10 recozoo", "NDCG@10 RecBole", "Recall@10 recozoo",
            "Recall@10 RecBole", "epochs recozoo / RecBole"]
    body = []
    for row in rows:
        ours, peer = row["recozoo"], row.get("recbole") or {}
        quality = row.get("recozoo_same_epochs") or ours
        ratios, targets = row.get("ratios", {}), row.get("targets", {})
        peer_epoch = _num(peer.get("sec_per_epoch"), ".3f")
        if peer.get("sec_per_epoch_estimated"):
            peer_epoch = f"~{peer_epoch} (est.)"
        ndcg = _num(quality.get("ndcg@10"))
        if targets.get("ndcg@10") is False:
            ndcg += " **miss**"
        body.append([
            row["model"], row["split"], _num(ours["sec_per_epoch"], ".3f"), peer_epoch,
            _ratio(ratios.get("sec_per_epoch"), targets.get("sec_per_epoch")),
            _num(ours["eval_seconds"], ".3f"), _num(peer.get("eval_seconds"), ".3f"),
            _ratio(ratios.get("eval_seconds"), targets.get("eval_seconds")),
            ndcg, _num(peer.get("ndcg@10")), _num(quality.get("recall@10")),
            _num(peer.get("recall@10")),
            f"{_num(quality.get('epochs'), 'd')} / {_num(peer.get('epochs'), 'd')}",
        ])
    notes = [f"- {row['model']} ran with `{' '.join(row['overrides'])}` so that an epoch is the "
             "same work as RecBole's." for row in rows if row.get("overrides")]
    notes += [f"- {row['model']}: kept from the run of {row['kept_from'].get('date')} (recozoo "
              f"{row['kept_from'].get('commit')}); the other rows were measured again."
              for row in rows if row.get("kept_from")]
    return _table(head, body) + ([""] + notes if notes else [])


def seed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """recozoo against RecBole over the panel's seeds (`bench.panel.against_recbole`)."""
    def cell(mean: float, half: float) -> str:
        return f"{mean:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")  # nan: one seed

    body = []
    for row in rows:
        mean, half = row["difference"]
        verdict = ("one seed: no interval" if math.isnan(half) else "above" if mean - half > 0
                   else "below" if mean + half < 0 else "level (the interval holds 0)")
        body.append([row["model"], str(len(row["seeds"])), cell(*row["recozoo"]),
                     cell(*row["recbole"]), cell(mean, half), verdict])
    return _table(["model", "seeds", "NDCG@10 recozoo", "NDCG@10 RecBole",
                   "recozoo - RecBole, paired by seed", "recozoo over the seeds"], body)


def validation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Seconds of one validation inside the fit (median), recozoo against RecBole: the same work
    on both sides, where the test stage's is not (`bench.compare.SECONDS`)."""
    measured = [row for row in rows
                if (row.get("recbole") or {}).get("val_seconds") is not None
                and row["recozoo"].get("val_seconds") is not None]
    if not measured:
        return []
    head = ["model", "validation s recozoo", "validation s RecBole", "ratio"]
    return _table(head, [[row["model"], _num(row["recozoo"]["val_seconds"], ".3f"),
                          _num(row["recbole"]["val_seconds"], ".3f"),
                          _ratio(row.get("ratios", {}).get("val_seconds"), None)]
                         for row in measured])


def converged_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Sequence models trained by recozoo with early stopping, against RecBole's capped run."""
    seq = [row for row in rows if row.get("recozoo_same_epochs") is not None]
    if not seq:
        return []
    head = ["model", "recozoo epochs", "recozoo train s", "recozoo NDCG@10", "recozoo Recall@10",
            "RecBole epochs", "RecBole train s", "RecBole NDCG@10", "RecBole Recall@10"]
    body = []
    for row in seq:
        ours, peer = row["recozoo"], row.get("recbole") or {}
        body.append([row["model"], _num(ours.get("epochs"), "d"),
                     _num(ours.get("train_seconds"), ".1f"), _num(ours.get("ndcg@10")),
                     _num(ours.get("recall@10")), _num(peer.get("epochs"), "d"),
                     _num(peer.get("train_seconds"), ".1f"), _num(peer.get("ndcg@10")),
                     _num(peer.get("recall@10"))])
    return _table(head, body)


def memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = ["model", "peak RSS MB recozoo", "peak RSS MB RecBole"]
    return _table(head, [[row["model"], _num(row["recozoo"].get("peak_rss_mb"), ".0f"),
                          _num((row.get("recbole") or {}).get("peak_rss_mb"), ".0f")]
                         for row in rows])


def ratings_lines(section: dict[str, Any]) -> list[str]:
    """Rating prediction: mean (and standard deviation) over the seeds per model and side."""
    from bench.ratings import RMSE_TARGET
    if "note" in section:
        return [section["note"]]

    def spread(row: dict[str, Any], key: str, spec: str) -> str:
        std = row.get(f"{key}_std")
        return _num(row.get(key), spec) + ("" if std is None else f" ± {std:{spec}}")

    head = ["side", "model", "seeds", "test RMSE", "test MAE", "fit s", "test s"]
    body = [[row["side"], row["model"], str(row["seeds"]), spread(row, "rmse", ".4f"),
             spread(row, "mae", ".4f"), spread(row, "fit_seconds", ".2f"),
             spread(row, "test_seconds", ".3f")] for row in section.get("summary", [])]
    ours = [row for row in section.get("summary", []) if row["side"] == "recozoo"]
    lines = [(f"{section['protocol']}; seeds {section['seeds']}"
              + (f"; Surprise {section['surprise_version']}" if section.get("surprise_version")
                 else "") + ". Lower is better; mean ± standard deviation over the seeds."), ""]
    if section.get("peer_note"):
        lines += [section["peer_note"], ""]
    lines += _table(head, body)
    if ours:
        best = ours[0]
        lines += ["", (f"Best recozoo model: {best['model']}, mean test RMSE "
                       f"{best['rmse']:.4f} (target at most {RMSE_TARGET}: "
                       f"{'met' if best['rmse'] <= RMSE_TARGET else '**missed**'}).")]
    failed = [run for run in section.get("runs", []) if run.get("error")]
    for run in failed:
        first = run["error"].strip().splitlines()[-1] if run["error"].strip() else ""
        lines += ["", (f"- failed: {run['side']} {run.get('model', '')} seed {run['seed']}: "
                       f"{first}")]
    if any(run.get("same_test_rows") is False for run in section.get("runs", [])):
        lines += ["", "**A recozoo run was tested on other rows than the exported split.**"]
    return lines


def _times(ratio: float | None) -> str:
    """``"2.5x"``, or ``"-"`` where nothing was measured."""
    return "-" if ratio is None else f"{ratio:.1f}x"


def implicit_lines(section: dict[str, Any]) -> list[str]:
    """recozoo's bpr beside implicit's BPR and ALS (and RecBole's BPR on its split), per data
    set, with the issue's checks on recozoo against implicit's BPR."""
    from bench.implicit_peer import TIME_TO_BEST_TARGET
    lines = [(f"{section['protocol']}; {section['threads']} thread(s) on both sides"
              + (f"; implicit {v}" if (v := next((d.get("implicit_version") for d in
                                                  section["datasets"] if d.get(
                                                      "implicit_version")), None)) else "")
              + ". Targets: recozoo's seconds to its best validation NDCG@10 at most "
              f"{TIME_TO_BEST_TARGET:g}x implicit BPR's, test NDCG@10 at least implicit BPR's."),
             ""]
    if section.get("peer_note"):
        lines += [section["peer_note"], ""]
    head = ["data set", "split", "side", "model", "s/epoch", "best epoch / epochs",
            "s to best val", "best val NDCG@10", "test NDCG@10", "test Recall@10", "eval s",
            "peak RSS MB"]
    body, failed, checks = [], [], []
    for entry in section["datasets"]:
        for row in entry["rows"]:
            if row.get("error"):
                failed.append(f"- failed: {entry['dataset']} {row['side']} {row['model']}: "
                              f"{row['error'].strip().splitlines()[-1]}")
                continue
            to_best = _num(row.get("seconds_to_best"), ".2f")
            if row.get("seconds_to_best_estimated") and to_best != "-":
                to_best = f"~{to_best} (est.)"
            stopped = " (cap)" if row.get("stopped_by") == "max_epochs" else ""
            body.append([entry["dataset"], entry["split"], row["side"], row["model"],
                         _num(row.get("sec_per_epoch"), ".4f"),
                         f"{_num(row.get('best_epoch'), 'd')} / {_num(row.get('epochs'), 'd')}"
                         + stopped, to_best, _num(row.get("best_val_ndcg@10")),
                         _num(row.get("ndcg@10")), _num(row.get("recall@10")),
                         _num(row.get("eval_seconds"), ".3f"),
                         _num(row.get("peak_rss_mb"), ".0f")])
        # one verdict per recozoo row (earlier results: one, for the default solver's "bpr")
        verdicts = entry.get("verdicts") or (
            {"bpr": entry["verdict"]} if entry.get("verdict") else {})
        when = (f" (measured {entry['date']}, load {entry.get('load_start')} -> "
                f"{entry.get('load_end')})" if entry.get("date") else "")
        for model, verdict in verdicts.items():
            if not verdict:
                continue
            checks.append(
                f"- {entry['dataset']}{when}, recozoo {model}: recozoo/implicit BPR seconds per "
                f"epoch {_num(verdict.get('sec_per_epoch_ratio'), '.1f')}x, seconds to best "
                f"{_ratio(verdict.get('time_to_best_ratio'), verdict.get('time_to_best_met'))}"
                f" (target {TIME_TO_BEST_TARGET:g}x); seconds to reach implicit BPR's best "
                f"validation {_times(verdict.get('time_to_match_ratio'))}; test NDCG@10 "
                "at least implicit BPR's: "
                + ("-" if verdict.get("ndcg_met") is None else
                   "ok" if verdict["ndcg_met"] else "**miss**"))
    lines += _table(head, body)
    if checks:
        lines += ["", *checks]
    if failed:
        lines += ["", *failed]
    if any(r.get("stopped_by") == "max_epochs" for d in section["datasets"] for r in d["rows"]):
        lines += ["", ("(cap): stopped by the epoch cap before early stopping; its seconds to "
                       "best are a lower bound of what convergence would take.")]
    if any(r.get("seconds_to_best_estimated") for d in section["datasets"] for r in d["rows"]):
        lines += ["", ("RecBole's row is its BPR run of the compare section (same split); its "
                       "seconds to best are its median epoch times its best epoch.")]
    return lines


def scaling_lines(scaling: dict[str, Any]) -> list[str]:
    points = scaling["points"]
    head = ["interactions", "users", "items", "stage", "model", "seconds", "CPU s",
            "peak RSS MB", "above base MB"]
    body = [[_num(p["interactions"], ",d"), _num(p.get("users"), ",d"),
             _num(p.get("items"), ",d"), p["stage"], p.get("model") or "-",
             _num(p.get("seconds"), ".2f") + (" (est.)" if p.get("estimated") else ""),
             _num(p.get("cpu_seconds"), ".2f"),
             _num(p.get("peak_rss_mb"), ".0f"),
             _num(p["peak_rss_mb"] - p["baseline_rss_mb"] if "baseline_rss_mb" in p else None,
                  ".0f")]
            for p in points]
    lines = _table(head, body)
    growth = scaling.get("growth") or {}
    if growth:
        lines += ["", ("Growth rate (slope of log time and log memory against log interactions; "
                  "1.0 = linear):"), ""]
        lines += _table(["stage", "model", "time exponent", "CPU time exponent",
                         "memory exponent"],
                        [[g["stage"], g.get("model") or "-", _num(g.get("time_exponent"), ".2f"),
                          _num(g.get("cpu_exponent"), ".2f"),
                          _num(g.get("memory_exponent"), ".2f")] for g in growth])
    return lines


def throughput_lines(throughput: list[dict[str, Any]]) -> list[str]:
    if not throughput:
        return ["not run"]
    head = ["workload", "users", "items", "dim", "recozoo eval s", "recozoo GFLOP/s",
            "matmul+top-K s", "matmul+top-K GFLOP/s", "share of the limit"]
    body = []
    for t in throughput:
        bare = t["bare"]
        share = (t["achieved_gflops"] / bare["gflops"]) if t.get("achieved_gflops") and \
            bare.get("gflops") else None
        body.append([t["workload"], _num(bare["n_users"], ",d"), _num(bare["n_items"], ",d"),
                     str(bare["dim"]), _num(t.get("eval_seconds"), ".3f"),
                     _num(t.get("achieved_gflops"), ".2f"), _num(bare["seconds"], ".3f"),
                     _num(bare["gflops"], ".2f"), _num(share, ".1%")])
    return _table(head, body)


def loadtest_lines(figures: dict[str, Any] | None) -> list[str]:
    if not figures:
        return ["not run"]
    if "error" in figures:
        return [f"failed: {figures['error']}"]
    head = ["phase", "clients", "requests", "failures", "p50 ms", "p99 ms", "max ms", "requests/s"]
    body = [[name, str(figures[name]["clients"]), str(figures[name]["requests"]),
             str(figures[name]["failures"]), _num(figures[name]["p50_ms"], ".2f"),
             _num(figures[name]["p99_ms"], ".2f"), _num(figures[name].get("max_ms"), ".2f"),
             _num(figures[name]["rps"], ".1f")]
            for name in ("single", "batched")]
    return [(f"Model {figures.get('model')} ({figures.get('n_items')} items), server batches up to "
            f"{figures.get('max_batch_size')} requests; ready in {figures.get('startup_seconds')} s."),
            "", *_table(head, body)]


def render(results: dict[str, Any]) -> str:
    """results.md as text."""
    machine = results["machine"]
    lines = [
        "# recozoo benchmark", "",
        (f"Written by `make bench` on {results['date']} (recozoo {results.get('commit') or '?'}). "
        "A benchmark measures and prints; nothing here is asserted by the tests."), "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores; {machine['threads']} torch "
        f"thread(s) on both sides, OMP_WAIT_POLICY=PASSIVE; torch {machine['torch']}, "
        f"Python {machine['python']}. Load average at start {machine['load_start']}, at end "
        f"{machine['load_end']}."), "",
    ]
    if results.get("notes"):
        lines += [f"- {note}" for note in results["notes"]] + [""]
    rows = results.get("comparison") or []
    if rows:
        lines += [
            "## recozoo against RecBole 1.2.1 on ml-100k", "",
            (f"Targets: seconds per epoch at most {EPOCH_TARGET['general']}x RecBole's for general "
            f"models and {EPOCH_TARGET['sequence']}x for sequence models; full-ranking "
            f"evaluation at most {EVAL_TARGET}x; NDCG@10 at least RecBole's. General models: "
            "per-user random 8:1:1, both sides early-stopped on validation NDCG@10, seconds "
            "the median of alternating repeated runs (`repeats`; every run is in results.json); "
            "sequence models: leave-one-out by time, quality after the same number of epochs. "
            f"{results.get('split_note', '')}"), "",
            *comparison_lines(rows), "",
        ]
        validation = validation_lines(rows)
        if validation:
            lines += ["### A validation inside the fit: the same work on both sides", "",
                      ("The evaluation column above times the test stage, where recozoo does more "
                      "than RecBole: it ranks the top 100 of every user and writes those lists "
                      "and the per-user values to the run folder (RecBole ranks the top 20 and "
                      "writes nothing). A validation inside the fit is the same job on both "
                      "sides: rank the validation users over the catalogue, keep the top 20 and "
                      "compute the metrics at 10 and 20 (recozoo 54 values, RecBole 18), "
                      "nothing kept. Median seconds of one, the median over the repeated runs; "
                      "no target is set on it."), "",
                      *validation, ""]
        converged = converged_lines(rows)
        if converged:
            lines += ["### Sequence models: recozoo trained to convergence", "",
                      ("recozoo with early stopping (its normal use) against RecBole's capped run: "
                      "what each side reaches and what its training cost."), "",
                      *converged, ""]
        if results.get("against_recbole"):
            lines += ["### Quality over seeds: the panel's runs on RecBole's own splits", "",
                      ("The table above scores one seed. `python -m bench.panel` runs both "
                      "libraries with their defaults on RecBole's own random 8:1:1 split of "
                      "each seed (`bench/panel.md`, ml100k_recbole); its ledger "
                      "(`bench/panel_runs.json`) gives test NDCG@10 over those seeds: mean "
                      "± half-width of the 95% Student-t interval, and the difference seed by "
                      "seed (the same split on both sides). recozoo is above or below RecBole "
                      "where that difference's interval excludes 0."), "",
                      *seed_lines(results["against_recbole"]), ""]
        lines += ["### Peak memory of each run (whole process)", "", *memory_lines(rows), ""]
    elif results.get("comparison_note"):
        lines += ["## recozoo against RecBole", "", results["comparison_note"], ""]
    if "implicit" in results:
        lines += ["## recozoo's BPR against implicit 0.7.3 (BPR, ALS)", "",
                  *implicit_lines(results["implicit"]), ""]
    if "ratings" in results:
        lines += ["## Rating prediction against scikit-surprise on ml-100k", "",
                  *ratings_lines(results["ratings"]), ""]
    if "scaling" in results:
        scaling = results["scaling"]
        lines += ["## Scaling on synthetic shops", "", scaling.get("note", ""), "",
                  *(scaling_lines(scaling) if scaling.get("points") else []), ""]
    if "throughput" in results:
        lines += ["## Evaluation throughput against the machine's limit", "",
                  ("Scoring FLOPs (2 x users x items x dim) per second of recozoo's whole test "
                  "evaluation (scoring, masking, top-K, every metric), against a bare batched "
                  "matmul plus top-100 of the same shape."), "",
                  *throughput_lines(results["throughput"]), ""]
    if "loadtest" in results:
        lines += ["## Serving load test (localhost)", "", *loadtest_lines(results["loadtest"]),
                  ""]
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(render(results))
    return md_path, json_path
