"""The panel's bookkeeping: finished runs are skipped, the report aggregates seeds with a t
interval and ranks models against pop (fabricated run folders, nothing is trained)."""

from __future__ import annotations

import json
import math

import pytest
from bench import panel
from bench.process import ProcessResult
from omegaconf import OmegaConf

from recozoo.artifacts import RunDir, RunRecord
from recozoo.report import find_runs


def _write(out, dataset, model, seed, ndcg, ok=True, threads=None):
    folder = panel.run_folder(out, dataset, model, seed)
    record = (RunRecord(model=model, seed=seed, train_seconds=2.0, torch_threads=threads,
                        metrics={"test/ndcg@10": ndcg, "test/recall@10": ndcg,
                                 "test/tail_recall@10": None, "test/coverage@10": 0.5,
                                 "val/ndcg@10": ndcg / 2, "val/recall@10": ndcg})
              if ok else RunRecord(status="failed", model=model, seed=seed, error="boom"))
    RunDir(folder).write_record(record)


def test_t_interval_matches_a_hand_computation():
    mean, half = panel.t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(4.302652729 * 0.1 / math.sqrt(3), rel=1e-6)
    assert math.isnan(panel.t_interval([0.5])[1])


def test_report_ranks_models_and_counts_wins_against_pop(tmp_path):
    out = tmp_path / "runs"
    for seed, (pop, bpr, ease) in zip((1, 2), ((0.10, 0.20, 0.30), (0.12, 0.08, 0.32))):
        _write(out, "shop", "pop", seed, pop)
        _write(out, "shop", "bpr", seed, bpr)
        _write(out, "shop", "ease", seed, ease)
    _write(out, "shop", "cfgan", 1, 0.0, ok=False)
    table = panel.collect(out, ["shop"], ["pop", "bpr", "ease", "cfgan"], [1, 2])
    summary = panel.summarise(table)
    assert summary["ease"]["ranks"]["shop"] == 1 and summary["pop"]["ranks"]["shop"] == 3
    assert summary["bpr"]["wins"] == ["shop"] and summary["pop"]["wins"] == []
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1, 2],
                                   report=str(tmp_path / "panel.md"))
    path = panel.write_report(settings, table, [], None, out, tmp_path)
    text = path.read_text()
    assert "| ease | 2 | 0.3100 ± " in text  # mean of 0.30 and 0.32 with its interval
    assert "| 0.5000 ± 0.0000 |" in text and "–" in text  # no tail value is shown as missing
    assert "cfgan s1: boom" in text and "Missing: cfgan (seeds 2)" in text
    assert path.with_suffix(".json").exists()


def test_finished_runs_are_not_run_again(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    _write(out, "shop", "pop", 1, 0.1)
    _write(out, "shop", "bpr", 1, 0.0, ok=False)
    started = []

    def fake_run(command, **_):
        started.append(command)
        return ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0)

    monkeypatch.setattr(panel, "run_process", fake_run)
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1])
    panel.run_panel(settings, tmp_path, None, out, ["pop", "bpr", "ease"])
    assert [c[c.index("train.py") + 2] for c in started] == ["model=ease"]  # failed: kept
    started.clear()
    settings.retry_failed = True
    panel.run_panel(settings, tmp_path, None, out, ["pop", "bpr"])
    assert [c[c.index("train.py") + 2] for c in started] == ["model=bpr"]


def test_datasets_without_their_files_are_skipped_with_the_reason(tmp_path):
    assert panel.DATASETS["ml100k_random"].missing(None).startswith("no shared folder")
    assert "not found" in panel.DATASETS["scientific"].missing(tmp_path)
    assert panel.DATASETS["shop"].missing(None) is None


def test_runs_made_with_other_settings_are_set_aside_and_run_again(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for model, latent in (("multvae", 64), ("ease", None)):
        _write(out, "shop", model, 1, 0.2)
        ran = {"model": {"latent": latent, "dropout": 0.5}, "trainer": {"max_epochs": 100}}
        RunDir(panel.run_folder(out, "shop", model, 1)).config.write_text(
            OmegaConf.to_yaml(ran))
    expected = {"multvae": {"model.latent": 200, "model.dropout": 0.5, "trainer.max_epochs": 300},
                "ease": {"model.latent": None, "model.dropout": 0.5, "trainer.max_epochs": 100,
                         "model.shrink": 0.0}}  # a setting added since the run
    def diff(model: str, expected: dict) -> tuple[list[str], list[str]]:
        return panel.diff_settings(panel.ran_settings(panel.run_folder(out, "shop", model, 1)),
                                   expected)

    changes = diff("multvae", expected["multvae"])[0]
    assert changes == ["model.latent: 64 -> 200", "trainer.max_epochs: 100 -> 300"]
    # a setting added with a default that changes what a run does makes the run stale
    before = next(iter(panel.BEFORE_ADDED))
    assert diff("ease", {**expected["ease"], before: 0.5})[0] == [
        f"{before}: {panel.BEFORE_ADDED[before]!r} (before the setting) -> 0.5"]
    assert diff("ease", {**expected["ease"], before: panel.BEFORE_ADDED[before]}) == (
        [], ["model.shrink", before])
    table = panel.collect(out, ["shop"], ["multvae", "ease"], [1], expected)
    assert table["shop"]["multvae"]["stale"] == [f"s1 ({'; '.join(changes)})"]
    assert table["shop"]["ease"]["stale"] == [] and table["shop"]["ease"]["added"] == [
        "model.shrink"]
    started = []
    monkeypatch.setattr(panel, "run_process", lambda command, **_: started.append(command) or
                        ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0))
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1], keep_stale=True)
    panel.run_panel(settings, tmp_path, None, out, ["multvae", "ease"], expected)
    assert started == []  # kept: marked stale in the report only
    settings.keep_stale = False
    panel.run_folder(out, "shop", "multvae", 1).with_suffix(".log").write_text("old run")
    panel.run_panel(settings, tmp_path, None, out, ["multvae", "ease"], expected)
    assert [c[c.index("train.py") + 2] for c in started] == ["model=multvae"]
    stale = out / "shop" / "multvae" / panel.STALE_DIR
    old_logs = list(stale.glob("s1-*.log"))
    assert [log.read_text() for log in old_logs] == ["old run"]  # the old log moved with it
    moved = [p for p in stale.glob("s1-*") if p.is_dir()]
    assert len(moved) == 1 and RunDir(moved[0]).read_record().metrics["test/ndcg@10"] == 0.2
    # the old run is kept where a leaderboard or fusion of the panel's folder does not count it
    assert [run.path for run in find_runs([out / "shop"])] == [
        panel.run_folder(out, "shop", "ease", 1)]


def test_stale_runs_an_earlier_panel_kept_among_the_cells_are_moved_out_of_the_way(tmp_path):
    """Earlier panels kept a stale run as ``s<seed>.stale-<time>`` beside the cells, where
    `find_runs` (the leaderboard's and fusion's) counted it as a run: the panel moves it."""
    cell = tmp_path / "shop" / "bpr"
    old = cell / "s1.stale-20261207-101500"
    _write(tmp_path, "shop", "bpr", 1, 0.1)
    panel.run_folder(tmp_path, "shop", "bpr", 1).rename(old)
    (cell / "s1.stale-20261207-101500.log").write_text("old log")
    _write(tmp_path, "shop", "bpr", 1, 0.2)
    assert len(find_runs([tmp_path / "shop"])) == 2
    assert panel.tidy_stale(tmp_path) == [cell / panel.STALE_DIR / "s1-20261207-101500",
                                          cell / panel.STALE_DIR / "s1-20261207-101500.log"]
    assert not old.exists() and [r.path for r in find_runs([tmp_path / "shop"])] == [cell / "s1"]
    assert panel.tidy_stale(tmp_path) == []


def test_a_cell_is_judged_by_its_datasets_split_settings_too(tmp_path):
    """A run made before a random split shuffled its users' items for sequence models (its
    config has no split.sequence_order) is stale on ml100k_random, whose split now shuffles,
    and not on a leave-one-out dataset, whose split keeps time order as before."""
    from conftest import ROOT

    by_dataset = panel.dataset_settings(ROOT, ["ml100k_random", "ml100k_loo", "shop"])
    assert by_dataset == {"ml100k_random": {"split.sequence_order": "shuffled"},
                          "ml100k_loo": {"split.sequence_order": "time"},
                          "shop": {"split.sequence_order": "time"}}
    out = tmp_path / "runs"
    ran = {"model": {"hidden_size": 100}, "trainer": {"max_epochs": 100},
           "split": {"_target_": "x", "ratios": [0.8, 0.1, 0.1]}}
    for dataset in ("ml100k_random", "ml100k_loo"):
        _write(out, dataset, "gru4rec", 1, 0.2)
        RunDir(panel.run_folder(out, dataset, "gru4rec", 1)).config.write_text(
            OmegaConf.to_yaml(ran))
    expected = {"gru4rec": {"model.hidden_size": 100, "trainer.max_epochs": 100}}
    assert panel.cell_settings(expected, by_dataset, "ml100k_random", "gru4rec") == {
        **expected["gru4rec"], "split.sequence_order": "shuffled"}
    assert panel.cell_settings(expected, by_dataset, "ml100k_random", "bpr") is None
    table = panel.collect(out, ["ml100k_random", "ml100k_loo"], ["gru4rec"], [1], expected,
                          by_dataset=by_dataset)
    assert table["ml100k_random"]["gru4rec"]["stale"] == [
        "s1 (split.sequence_order: 'time' (before the setting) -> 'shuffled')"]
    assert table["ml100k_loo"]["gru4rec"]["stale"] == []


def test_current_settings_are_the_literal_values_of_the_composed_config():
    from conftest import ROOT

    settings = panel.current_settings(ROOT, ["multvae", "bpr"], ["trainer.max_epochs=7"])
    assert settings["multvae"]["model.variational"] is True
    assert settings["bpr"]["trainer.max_epochs"] == 7
    assert "model.sparse_optimizer.lr" not in settings["bpr"]  # ${model.optimizer.lr}: derived
    assert not any(isinstance(v, str) and "${" in v for s in settings.values() for v in s.values())


def test_a_dataset_restricted_to_some_models_runs_and_reports_only_those(tmp_path, monkeypatch):
    recbole = panel.DATASETS["ml100k_recbole"]
    assert recbole.models == tuple(panel.RECBOLE_MODELS)
    assert recbole.runs(["sasrec", "bpr", "pop"]) == ["bpr", "pop"]
    assert panel.DATASETS["ml100k_random"].runs(["sasrec", "bpr"]) == ["sasrec", "bpr"]
    shared, out = tmp_path / "shared", tmp_path / "runs"
    (shared / "data" / "ml-100k").mkdir(parents=True)
    (shared / "data" / "ml-100k" / "ml-100k.inter").write_text("")
    asked, started = [], []
    monkeypatch.setattr(panel, "recbole_seed", lambda *args: asked.append(args[-1]) or tmp_path)
    monkeypatch.setattr(panel, "run_process", lambda command, **_: started.append(command) or
                        ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0))
    settings = panel.PanelSettings(datasets=["ml100k_recbole", "ml100k_random"], seeds=[1])
    panel.run_panel(settings, tmp_path, shared, out, ["pop", "sasrec"])
    assert asked == [["pop"]]  # RecBole is asked only for the models run beside it
    runs = [(next(o for o in c if o.startswith("split=")), next(o for o in c
             if o.startswith("model="))) for c in started]
    assert runs == [("split=preset", "model=pop"), ("split=random", "model=pop"),
                    ("split=random", "model=sasrec")]
    table = panel.collect(out, ["ml100k_recbole", "ml100k_random"], ["pop", "sasrec"], [1])
    assert list(table["ml100k_recbole"]) == ["pop", "RecBole Pop"]
    assert list(table["ml100k_random"]) == ["pop", "sasrec"]
    report = panel.PanelSettings(datasets=["ml100k_recbole", "ml100k_random"], seeds=[1],
                                 report=str(tmp_path / "panel.md"))
    text = panel.write_report(report, table, [], shared, out, tmp_path).read_text()
    recbole_part, random_part = text.split("## ml100k_random\n")[0:2]
    missing = [line for line in recbole_part.splitlines() if line.startswith("Missing:")]
    assert missing and "sasrec" not in missing[0] and "pop (seeds 1)" in missing[0]
    assert "Missing: pop (seeds 1); sasrec (seeds 1)" in random_part
    assert "models: pop, itemknn, bpr, ease, multvae)" in text


def test_the_ledger_remembers_runs_whose_folders_are_gone(tmp_path, monkeypatch):
    """A panel resumed on another machine (or after its cache was cleared) reports the runs the
    ledger recorded and does not run them again; a stale one runs again; a report that covers
    part of the panel keeps the ledger's other cells."""
    out, ledger_path = tmp_path / "runs", tmp_path / "panel_runs.json"
    expected = {"pop": {"model.k": 1}, "bpr": {"model.k": 2}, "ease": {"model.k": 3}}
    for model, seed, ndcg in (("pop", 1, 0.1), ("bpr", 1, 0.2), ("bpr", 2, 0.3)):
        _write(out, "shop", model, seed, ndcg)
        folder = panel.run_folder(out, "shop", model, seed)
        RunDir(folder).config.write_text(OmegaConf.to_yaml(
            {"model": {"k": expected[model]["model.k"], "lr": "${x}"}, "data": {"path": "p"}}))
    _write(out, "scientific", "pop", 1, 0.05)
    panel.update_ledger(ledger_path, panel.collect(out, ["shop", "scientific"],
                                                   ["pop", "bpr"], [1, 2], expected))
    panel.update_ledger(ledger_path, panel.collect(out, ["shop"], ["pop"], [1], expected))
    ledger = panel.read_ledger(ledger_path)
    assert sorted(ledger) == [("scientific", "pop", 1), ("shop", "bpr", 1), ("shop", "bpr", 2),
                              ("shop", "pop", 1)]  # the partial report dropped nothing
    assert ledger[("shop", "bpr", 2)].metrics["test/ndcg@10"] == 0.3
    # the validation value a later setting is compared on, and nothing else of validation
    assert ledger[("shop", "bpr", 2)].metrics["val/ndcg@10"] == 0.15
    assert "val/recall@10" not in ledger[("shop", "bpr", 2)].metrics
    assert ledger[("shop", "bpr", 2)].settings == {"model.k": 2}  # judged settings only

    import shutil
    shutil.rmtree(out)  # a fresh machine: no run folder
    table = panel.collect(out, ["shop"], ["pop", "bpr", "ease"], [1, 2], expected, ledger)
    # another panel process replaces a record meanwhile: writing this table, whose records all
    # come from the ledger as it was read, keeps the newer record
    newer = {**panel.read_ledger(ledger_path)}
    runs = json.loads(ledger_path.read_text())
    runs["shop"]["bpr"]["2"]["metrics"]["test/ndcg@10"] = 0.35
    ledger_path.write_text(json.dumps(runs))
    panel.update_ledger(ledger_path, table)
    assert panel.read_ledger(ledger_path)[("shop", "bpr", 2)].metrics["test/ndcg@10"] == 0.35
    assert sorted(panel.read_ledger(ledger_path)) == sorted(newer)
    assert table["shop"]["bpr"]["seeds"][2]["test/ndcg@10"] == 0.3
    assert table["shop"]["pop"]["missing"] == [2] and table["shop"]["ease"]["missing"] == [1, 2]
    started = []
    monkeypatch.setattr(panel, "run_process", lambda command, **_: started.append(command) or
                        ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0))
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1, 2])
    now = {**expected, "bpr": {"model.k": 20}}  # bpr's default changed since its runs
    assert panel.collect(out, ["shop"], ["bpr"], [1], now, ledger)["shop"]["bpr"]["stale"] == [
        "s1 (model.k: 2 -> 20)"]
    panel.run_panel(settings, tmp_path, None, out, ["pop", "bpr", "ease"], now, ledger)
    assert [(c[c.index("train.py") + 2], c[c.index("train.py") + 3]) for c in started] == [
        ("model=bpr", "seed=1"), ("model=ease", "seed=1"), ("model=pop", "seed=2"),
        ("model=bpr", "seed=2"), ("model=ease", "seed=2")]


def test_a_damaged_ledger_stops_the_panel_with_its_name(tmp_path):
    ledger = tmp_path / "panel_runs.json"
    ledger.write_text('{"shop": {"pop": {"1": {"metrics": {}}}}}')
    with pytest.raises(SystemExit, match="panel_runs.json is not a panel ledger"):
        panel.read_ledger(ledger)
    assert panel.PanelSettings(report=str(tmp_path / "p.md")).ledger_path(tmp_path) == (
        tmp_path / "p_runs.json")


def test_a_call_that_completes_part_of_the_panel_reports_the_whole_of_it(tmp_path):
    """``datasets=[scientific] models=[cfgan] seeds=[2]`` reruns those cells; its report still
    covers every cell the ledger records (it once shrank to the cells run)."""
    out, ledger_path = tmp_path / "runs", tmp_path / "panel_runs.json"
    for dataset, model, seed in (("shop", "pop", 1), ("shop", "bpr", 3), ("scientific", "pop", 1)):
        _write(out, dataset, model, seed, 0.1)
    panel.update_ledger(ledger_path, panel.collect(out, ["shop", "scientific"], ["pop", "bpr"],
                                                   [1, 3]))
    ledger = panel.read_ledger(ledger_path)
    settings = panel.PanelSettings(datasets=["scientific"], models=["cfgan"], seeds=[2])
    scope = panel.report_scope(settings, ["cfgan"], ["pop", "bpr", "cfgan", "ease"], ledger)
    assert scope == panel.ReportScope(["shop", "scientific"], ["pop", "bpr", "cfgan"], [1, 2, 3])
    alone = panel.report_scope(settings, ["cfgan"], ["pop", "bpr", "cfgan"], {})
    assert alone == panel.ReportScope(["scientific"], ["cfgan"], [2])  # a report of its own
    gone = panel.report_scope(settings, ["cfgan"], ["cfgan"], ledger)  # pop, bpr removed since
    assert gone.models == ["cfgan"]


def test_a_report_only_call_for_one_cell_still_writes_every_recorded_cell(tmp_path):
    """``python -m bench.panel report_only=true datasets=[shop] models=[pop]`` with a ledger
    that also records bpr on the shop and pop on Scientific: all three are in the report."""
    out, report = tmp_path / "runs", tmp_path / "panel.md"
    for dataset, model, seed in (("shop", "pop", 1), ("shop", "bpr", 2), ("scientific", "pop", 1)):
        _write(out, dataset, model, seed, 0.1)
    panel.update_ledger(tmp_path / "panel_runs.json", panel.collect(
        out, ["shop", "scientific"], ["pop", "bpr"], [1, 2]))
    import shutil
    shutil.rmtree(out)  # the ledger alone knows the runs
    panel.main(["report_only=true", "datasets=[shop]", "models=[pop]", "seeds=[1]",
                f"out={out}", f"report={report}"])
    text = report.read_text()
    shop, scientific = text.split("## shop\n")[1].split("## scientific\n")
    assert "| pop | 1 |" in shop and "| bpr | 1 |" in shop  # bpr's seed 2 of seeds 1-2
    assert "| pop | 1 |" in scientific
    assert "seeds=[1,2]" in text  # the report's own command covers the recorded seeds


def test_the_report_says_how_many_threads_each_run_had(tmp_path):
    """Seconds depend on the thread count: the header counts the runs per torch thread count,
    as each run recorded it, through the ledger too, and names the runs that recorded none."""
    out, ledger_path = tmp_path / "runs", tmp_path / "panel_runs.json"
    _write(out, "shop", "bpr", 1, 0.2, threads=1)
    _write(out, "shop", "bpr", 2, 0.3, threads=2)
    _write(out, "shop", "pop", 1, 0.1)  # a folder made before runs recorded threads
    table = panel.collect(out, ["shop"], ["pop", "bpr"], [1, 2])
    expected = ("1 run(s) on 1 torch thread(s), 1 run(s) on 2 torch thread(s), "
                "1 run(s) made before runs recorded their threads, on 1-2")
    assert panel.threads_used(table) == expected
    panel.update_ledger(ledger_path, table)
    import shutil
    shutil.rmtree(out)  # only the ledger remembers them now
    ledger = panel.read_ledger(ledger_path)
    assert ledger[("shop", "bpr", 2)].threads == 2 and ledger[("shop", "pop", 1)].threads is None
    table = panel.collect(out, ["shop"], ["pop", "bpr"], [1, 2], ledger=ledger)
    assert panel.threads_used(table) == expected


def test_runs_made_before_a_commit_run_again_and_the_report_names_each_cells_code(
        tmp_path, monkeypatch):
    """``rerun_before=<commit>``: a change of the code moved a model's figures without changing
    a setting; the cells made before it (or that recorded no commit, or were made from
    uncommitted changes) run again, those made at it or after stay; the leaderboard's code
    column names the commits."""
    import subprocess

    from recozoo import provenance

    root = tmp_path / "repo"
    commits = []
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for text in ("before", "the change", "after"):
        (root / "train.py").write_text(text)
        for args in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit",
                                     "-q", "-m", text]):
            subprocess.run(["git", "-C", str(root), *args], check=True)
        commits.append(subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                      capture_output=True, text=True, check=True).stdout.strip())
    monkeypatch.setattr(provenance, "package_root", lambda: root)
    out = tmp_path / "runs"
    for seed, commit in ((1, commits[0]), (2, commits[1]), (3, commits[2])):
        _write(out, "shop", "bpr", seed, 0.1 * seed)
        run = RunDir(panel.run_folder(out, "shop", "bpr", seed))
        record = run.read_record()
        record.code = {"commit": commit, "dirty": False}
        run.write_record(record)
    _write(out, "shop", "pop", 1, 0.05)  # made before runs recorded their code
    _write(out, "shop", "bpr", 4, 0.4)  # after the change, but from uncommitted changes
    run = RunDir(panel.run_folder(out, "shop", "bpr", 4))
    record = run.read_record()
    record.code = {"commit": commits[2], "dirty": True}
    run.write_record(record)
    table = panel.collect(out, ["shop"], ["pop", "bpr"], [1, 2, 3])
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1, 2, 3],
                                   report=str(tmp_path / "panel.md"))
    text = panel.write_report(settings, table, [], None, out, tmp_path).read_text()
    text = text.split("## shop\n")[1]  # the leaderboard, not the summary
    bpr_row = next(line for line in text.splitlines() if line.startswith("| bpr |"))
    assert bpr_row.endswith(" | " + ", ".join(f"{c[:7]} (1)" for c in sorted(commits)) + " |")
    assert next(line for line in text.splitlines()
                if line.startswith("| pop |")).endswith(" | unrecorded |")
    ledger_path = tmp_path / "panel_runs.json"
    panel.update_ledger(ledger_path, table)
    assert panel.read_ledger(ledger_path)[("shop", "bpr", 2)].code["commit"] == commits[1]

    started = []
    monkeypatch.setattr(panel, "run_process", lambda command, **_: started.append(command) or
                        ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0))
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1, 2, 3, 4],
                                   rerun_before=commits[1][:10])
    panel.run_panel(settings, tmp_path, None, out, ["pop", "bpr"])
    assert [(c[c.index("train.py") + 2], c[c.index("train.py") + 3]) for c in started] == [
        ("model=pop", "seed=1"), ("model=bpr", "seed=1"), ("model=pop", "seed=2"),
        ("model=pop", "seed=3"), ("model=pop", "seed=4"),  # pop's seeds 2-4 were never run
        ("model=bpr", "seed=4")]
    for seed in (1, 4):  # set aside, not lost
        assert len(list((out / "shop" / "bpr" / panel.STALE_DIR).glob(f"s{seed}-*"))) == 1
    with pytest.raises(SystemExit, match="rerun_before=no-such names no commit"):
        panel.main(["rerun_before=no-such", f"out={out}", f"report={tmp_path / 'p.md'}"])


def test_recozoo_against_recbole_over_seeds_pairs_the_same_seeds(tmp_path):
    """The bench report's second look at the one-seed comparison: recozoo's and RecBole's test
    NDCG@10 over the panel's seeds of RecBole's own splits, and their difference seed by seed
    (only seeds both sides ran); the verdict is the paired interval's."""
    from bench import report

    def run(ndcg):
        return panel.FoundRun(ok=True, metrics={"test/ndcg@10": ndcg}, train_seconds=1.0,
                              settings=None, in_folder=False)

    ledger = {("ml100k_recbole", "bpr", 1): run(0.30), ("ml100k_recbole", "bpr", 2): run(0.32),
              ("ml100k_recbole", "bpr", 3): run(0.31), ("ml100k_recbole", "RecBole BPR", 1):
              run(0.29), ("ml100k_recbole", "RecBole BPR", 2): run(0.30),
              ("ml100k_recbole", "ease", 1): run(0.33),  # RecBole's EASE has no seed 1: left out
              ("ml100k_recbole", "RecBole EASE", 2): run(0.33),
              ("ml100k_random", "bpr", 3): run(0.50), ("ml100k_recbole", "pop", 1): run(0.10),
              ("ml100k_recbole", "RecBole Pop", 1): run(0.10),
              **{("ml100k_recbole", "multvae", seed): run(0.30) for seed in (1, 2, 3)},
              **{("ml100k_recbole", "RecBole MultiVAE", seed): run(0.31 + seed / 1000)
                 for seed in (1, 2, 3)}}
    rows = panel.against_recbole(ledger)
    assert [row["model"] for row in rows] == ["pop", "bpr", "multvae"]
    bpr = rows[1]
    assert bpr["seeds"] == [1, 2]  # seed 3 has no RecBole run
    assert bpr["recozoo"] == panel.t_interval([0.30, 0.32])
    assert bpr["difference"] == panel.t_interval([0.30 - 0.29, 0.32 - 0.30])
    lines = report.seed_lines(json.loads(json.dumps(rows)))  # as results.json holds them
    assert lines[2].startswith("| pop | 1 | 0.1000 | 0.1000 | 0.0000 | one seed")
    # differences .01 and .02: mean .015, half-width 12.706 * .005 = .0635 -> the interval holds 0
    assert lines[3] == ("| bpr | 2 | 0.3100 ± 0.1271 | 0.2950 ± 0.0635 | 0.0150 ± 0.0635 | "
                        "level (the interval holds 0) |")
    assert lines[4].endswith("| below |")  # -.011, -.012, -.013: the interval excludes 0


def test_each_finished_run_is_in_the_ledger_even_if_the_panel_stops_part_way(tmp_path,
                                                                             monkeypatch):
    """A panel stopped during its second run (a session's end, Ctrl-C) has recorded the first
    in the ledger: it is not lost with the report the call never wrote."""
    out, ledger_path = tmp_path / "runs", tmp_path / "panel_runs.json"
    calls = []

    def run(command, **_):
        calls.append(command)
        if len(calls) == 2:
            raise KeyboardInterrupt
        _write(out, "shop", "pop", 1, 0.1)
        return ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0)

    monkeypatch.setattr(panel, "run_process", run)
    settings = panel.PanelSettings(datasets=["shop"], seeds=[1])
    with pytest.raises(KeyboardInterrupt):
        panel.run_panel(settings, tmp_path, None, out, ["pop", "bpr"], ledger_path=ledger_path)
    assert sorted(panel.read_ledger(ledger_path)) == [("shop", "pop", 1)]
    assert panel.read_ledger(ledger_path)[("shop", "pop", 1)].metrics["test/ndcg@10"] == 0.1


# ---------------------------------------------------------------------------------- the check
def _ledger(path, cells):
    """A ledger file recording ``cells``: (dataset, model, seed) -> (ndcg, settings, ok)."""
    runs = {}
    for (dataset, model, seed), (ndcg, settings) in cells.items():
        runs.setdefault(dataset, {}).setdefault(model, {})[str(seed)] = {
            "metrics": {"test/ndcg@10": ndcg, "test/recall@10": ndcg,
                        "test/tail_recall@10": None, "test/coverage@10": 0.5,
                        "val/ndcg@10": ndcg / 2},
            "train_seconds": 2.0, "settings": settings, "threads": 1,
            "code": {"commit": "0" * 40, "dirty": False}}
    path.write_text(json.dumps(runs))


def test_the_check_reruns_recorded_cells_and_tells_same_from_different(tmp_path, monkeypatch):
    """Each recorded cell is run again with the panel's command and the recorded run's threads;
    a rerun equal to the record is ``same``, one off by more than the tolerance ``differs``
    (exit status 1), one whose record ran with other settings is shown but not judged; cells
    the ledger lacks are skipped with the reason, and the ledger is left as it was."""
    from bench import panel_check

    ledger = tmp_path / "panel_runs.json"
    _ledger(ledger, {("shop", "pop", 1): (0.1, None), ("shop", "ease", 1): (0.3, None),
                     ("shop", "bpr", 1): (0.2, {"trainer.max_epochs": 7})})
    before = ledger.read_bytes()
    rerun_ndcg = {"pop": 0.1, "ease": 0.3 + 1e-3, "bpr": 0.25}
    started = []

    def fake_run(command, env=None, **_):
        model = next(a.split("=")[1] for a in command if a.startswith("model="))
        folder = next(a.split("=", 1)[1] for a in command if a.startswith("hydra.run.dir="))
        started.append((model, env["OMP_NUM_THREADS"]))
        _write_folder(folder, model, rerun_ndcg[model])
        return ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0)

    def _write_folder(folder, model, ndcg):
        RunDir(folder).write_record(RunRecord(
            model=model, seed=1, train_seconds=1.0, metrics={
                "test/ndcg@10": ndcg, "test/recall@10": ndcg, "test/tail_recall@10": None,
                "test/coverage@10": 0.5, "val/ndcg@10": ndcg / 2}))

    monkeypatch.setattr(panel_check, "run_process", fake_run)
    argv = ["datasets=[shop]", "models=[pop,ease,bpr,itemknn]", "seeds=[1]",
            f"out={tmp_path / 'check'}", f"ledger={ledger}"]
    assert panel_check.main(argv) == 1  # ease differs
    assert sorted(started) == [("bpr", "1"), ("ease", "1"), ("pop", "1")]  # the record's threads
    found = json.loads((tmp_path / "check" / "check.json").read_text())
    verdicts = {cell["model"]: cell for cell in found["cells"]}
    assert verdicts["pop"]["verdict"] == "same" and verdicts["pop"]["on"] is None
    assert verdicts["ease"]["verdict"] == "differs"
    assert verdicts["ease"]["largest_difference"] == pytest.approx(1e-3)
    assert verdicts["ease"]["on"] == "test/ndcg@10"
    assert verdicts["bpr"]["verdict"] == "settings changed"
    assert "trainer.max_epochs: 7 ->" in verdicts["bpr"]["changes"][0]
    assert found["skipped"] == ["shop itemknn seed 1: not in the ledger"]
    text = (tmp_path / "check" / "check.md").read_text()
    assert "| shop | ease | 1 | 0000000 |" in text and "1 same, 1 differ, 1 with settings" in text
    assert ledger.read_bytes() == before


def test_the_check_counts_a_metric_missing_on_one_side_as_a_difference_nan_on_both_not():
    from bench import panel_check

    assert panel_check.compare_metrics({"test/ndcg@10": 0.1, "test/tail_recall@10": None},
                                       {"test/ndcg@10": 0.1,
                                        "test/tail_recall@10": float("nan")}) == (0.0, None)
    largest, on = panel_check.compare_metrics({"test/coverage@10": 0.5},
                                              {"test/coverage@10": None})
    assert largest == math.inf and on == "test/coverage@10"
    # a metric the record does not hold (an older ledger) is not compared
    assert panel_check.compare_metrics({"test/ndcg@10": 0.1},
                                       {"test/ndcg@10": 0.1, "val/ndcg@10": 0.2}) == (0.0, None)


def test_the_check_reads_again_a_run_it_made_at_the_checkouts_commit(tmp_path, monkeypatch):
    """A run an earlier check left, made at the checkout's commit from a clean tree, is compared
    without running it again; one made at another commit is run again."""
    from bench import panel_check

    from recozoo.provenance import code_version

    ledger = tmp_path / "panel_runs.json"
    _ledger(ledger, {("shop", "pop", 1): (0.1, None), ("shop", "ease", 1): (0.3, None)})
    commit = code_version(panel_check.repo_root())["commit"]
    out = tmp_path / "check"
    for model, code in (("pop", {"commit": commit, "dirty": False}),
                        ("ease", {"commit": "f" * 40, "dirty": False})):
        RunDir(panel.run_folder(out, "shop", model, 1)).write_record(RunRecord(
            model=model, seed=1, code=code, metrics={"test/ndcg@10": 0.1, "test/recall@10": 0.1,
                                                     "test/coverage@10": 0.5,
                                                     "val/ndcg@10": 0.05}))
    started = []

    def fake_run(command, **_):
        started.append(next(a for a in command if a.startswith("model=")))
        return ProcessResult(returncode=1, output="boom", seconds=0.0, peak_rss_mb=0.0)

    monkeypatch.setattr(panel_check, "run_process", fake_run)
    settings = panel_check.CheckSettings(datasets=["shop"], models=["pop", "ease"],
                                         ledger=str(ledger))
    cells, skipped = panel_check.run_check(settings, panel_check.repo_root(), None, out,
                                           ["pop", "ease"])
    if commit is None:  # not a git checkout: nothing is reusable
        pytest.skip("recozoo does not run from a git checkout here")
    assert started == ["model=ease"]
    assert [(c["model"], c["verdict"]) for c in cells] == [("pop", "same")]
    assert len(skipped) == 1 and skipped[0].startswith("shop ease seed 1: the rerun failed")


def test_the_check_runs_recboles_rows_again_each_time_beside_recozoos(tmp_path, monkeypatch):
    """On the dataset scored on RecBole's split, the chosen models' RecBole rows are run again
    by the peer (even where an earlier check left their result) and judged as recozoo's cells;
    ``recbole_rows=false`` leaves them out."""
    from bench import panel_check

    shared = tmp_path / "shared"
    (shared / "data" / "ml-100k").mkdir(parents=True)
    (shared / "data" / "ml-100k" / "ml-100k.inter").write_text("")
    ledger = tmp_path / "panel_runs.json"
    _ledger(ledger, {("ml100k_recbole", "ease", 1): (0.3, None)})
    runs = json.loads(ledger.read_text())
    peer_record = {"metrics": {"test/ndcg@10": 0.33, "test/recall@10": 0.28,
                               "test/tail_recall@10": None, "test/coverage@10": 0.25},
                   "train_seconds": 0.7, "settings": {}}
    runs["ml100k_recbole"]["RecBole EASE"] = {"1": peer_record}
    runs["ml100k_recbole"]["RecBole Pop"] = {"1": {**peer_record, "metrics": {
        **peer_record["metrics"], "test/ndcg@10": 0.10}}}
    ledger.write_text(json.dumps(runs))
    out, peer_calls = tmp_path / "check", []

    def fake_recbole_seed(settings, shared_folder, out_folder, dataset, seed, models):
        peer_calls.append(tuple(models))
        for model in models:  # RecBole's figures: EASE as recorded, Pop off by .001
            folder = panel.run_folder(out_folder, dataset, panel.recbole_row(model), seed)
            folder.mkdir(parents=True, exist_ok=True)
            ndcg = {"ease": 0.33, "pop": 0.101}[model]
            (folder / "recbole.json").write_text(json.dumps({
                "test": {"ndcg@10": ndcg, "recall@10": 0.28, "itemcoverage@10": 0.25},
                "train_seconds_total": 0.8}))
        return out_folder / dataset / "splits" / f"s{seed}"

    def fake_run(command, **_):
        folder = next(a.split("=", 1)[1] for a in command if a.startswith("hydra.run.dir="))
        RunDir(folder).write_record(RunRecord(model="ease", seed=1, metrics={
            "test/ndcg@10": 0.3, "test/recall@10": 0.3, "test/coverage@10": 0.5,
            "val/ndcg@10": 0.15}))
        return ProcessResult(returncode=0, output="", seconds=0.0, peak_rss_mb=0.0)

    monkeypatch.setattr(panel_check, "recbole_seed", fake_recbole_seed)
    monkeypatch.setattr(panel_check, "run_process", fake_run)
    settings = panel_check.CheckSettings(datasets=["ml100k_recbole"], ledger=str(ledger))
    for _ in range(2):  # the second check runs the peer again, though its results are there
        cells, skipped = panel_check.run_check(settings, panel_check.repo_root(), shared, out,
                                               ["pop", "ease"])
        verdicts = {c["model"]: (c["verdict"], c["recorded_code"]) for c in cells}
        assert verdicts == {"ease": ("same", "0000000"), "RecBole EASE": ("same", "RecBole"),
                            "RecBole Pop": ("differs", "RecBole")}
        assert skipped == ["ml100k_recbole pop seed 1: not in the ledger"]
    assert peer_calls.count(("ease",)) == 2 and peer_calls.count(("pop",)) == 2
    without = panel_check.CheckSettings(datasets=["ml100k_recbole"], ledger=str(ledger),
                                        recbole_rows=False)
    cells, _ = panel_check.run_check(without, panel_check.repo_root(), shared, out,
                                     ["pop", "ease"])
    assert [c["model"] for c in cells] == ["ease"]

    def no_peer(*_, **__):
        raise RuntimeError("RecBole cannot run (no environment)")

    monkeypatch.setattr(panel_check, "recbole_seed", no_peer)  # the seed's cells: one line
    cells, skipped = panel_check.run_check(settings, panel_check.repo_root(), shared, out,
                                           ["pop", "ease"])
    assert cells == [] and skipped == [
        "ml100k_recbole pop seed 1: not in the ledger",
        "ml100k_recbole seed 1: RecBole cannot run (no environment)"]


@pytest.mark.slow
def test_the_published_shop_pop_cell_comes_out_again(tmp_path):
    """A real check: the ledger's shop pop seed 1 (the committed record) trained again here with
    the panel's command gives its figures back."""
    from bench import panel_check

    status = panel_check.main(["datasets=[shop]", "models=[pop]", "seeds=[1]",
                               f"out={tmp_path}"])
    cells = json.loads((tmp_path / "check.json").read_text())["cells"]
    assert status == 0 and [(c["model"], c["verdict"]) for c in cells] == [("pop", "same")]
