"""The leaderboard on hand-made run folders with known answers (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recozoo.report import build_leaderboard, find_runs, group_runs
from recozoo.report.__main__ import main as report_main
from recozoo.report.stats import bootstrap_ci, holm, paired_test

N_USERS = 60


def write_run(folder: Path, model: str, ndcg: np.ndarray | float, seed: int = 1,
              data: str = "shop", gini: float = 0.5, overrides: list[str] | None = None,
              **facts) -> Path:
    """A finished run: metrics.json (means of the per-user values) and per_user_test.parquet."""
    values = np.full(N_USERS, ndcg, dtype=float) if np.isscalar(ndcg) else np.asarray(ndcg)
    folder.mkdir(parents=True)
    metrics = {"status": "ok", "model": model, "data": data, "split": "loo", "seed": seed,
               "n_users": N_USERS, "n_items": 50, "head_share": 0.2, "n_params": 10,
               "train_seconds": 1.5, "epochs": 3, "test/ndcg@10": float(values.mean()),
               "test/recall@10": float(values.mean()), "test/gini@10": gini,
               "test/aplt@10": 0.3, "test/tail_recall@10": 0.1, **facts}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"user": np.arange(N_USERS), "ndcg@10": values, "recall@10": values}
                 ).to_parquet(folder / "per_user_test.parquet")
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {o}" for o in overrides))
    return folder


def write_failed(folder: Path, model: str, error: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"status": "failed", "error": error, "model": model, "data": "shop", "split": "loo",
         "seed": 1}))
    return folder


def noisy(mean: float, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(mean, 0.05, N_USERS), 0, 1)


def test_holm_matches_hand_computed_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan")])[0] == 0.5


def test_paired_test_finds_a_shift_and_not_an_identity():
    base = pd.Series(noisy(0.3, 0))
    shifted = paired_test(base, base + 0.02)
    assert shifted.p_wilcoxon < 1e-6 and shifted.p_ttest < 1e-6
    assert shifted.mean_difference == pytest.approx(0.02)
    same = paired_test(base, base.copy())
    assert same.p_wilcoxon == 1.0 and same.mean_difference == 0.0


def test_bootstrap_interval_covers_the_mean():
    values = pd.Series(noisy(0.4, 1))
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high and high - low < 0.05


def test_rows_are_ranked_and_each_metric_in_its_own_direction(tmp_path):
    write_run(tmp_path / "0", "pop", noisy(0.10, 2), gini=0.9)
    write_run(tmp_path / "1", "ease", noisy(0.30, 3), gini=0.6)
    write_run(tmp_path / "2", "bpr", noisy(0.20, 4), gini=0.2)
    board = build_leaderboard([tmp_path], bootstrap_resamples=200)
    (table,) = board.tables
    assert list(table.frame["model"]) == ["ease", "bpr", "pop"]
    assert table.best["test/ndcg@10"] == "ease"
    assert table.best["test/gini@10"] == "bpr"  # lower is better
    # far below the best: significant after Holm, with both tests
    assert ("test/ndcg@10", "pop") in table.significant
    assert table.frame.set_index("model").loc["pop", "p_wilcoxon"] < 0.05


def test_markdown_marks_best_and_significant(tmp_path):
    write_run(tmp_path / "0", "ease", noisy(0.30, 3))
    write_run(tmp_path / "1", "pop", noisy(0.10, 2))
    report_main([str(tmp_path), "--no-plots"])
    text = (tmp_path / "leaderboard.md").read_text()
    ease = next(line for line in text.splitlines() if "| ease |" in line)
    pop = next(line for line in text.splitlines() if "| pop |" in line)
    assert "**" in ease and "*" in pop.replace("**", "")


def test_runs_on_different_data_are_not_ranked_together(tmp_path):
    write_run(tmp_path / "0", "ease", 0.3, data="shop")
    write_run(tmp_path / "1", "ease", 0.2, data="ml-100k")
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    assert len(board.tables) == 2
    assert any("differ in data" in note for note in board.notes)


def test_models_with_different_seeds_get_separate_tables(tmp_path):
    write_run(tmp_path / "0", "ease", 0.3, seed=1)
    write_run(tmp_path / "1", "ease", 0.2, seed=2)
    write_run(tmp_path / "2", "pop", 0.1, seed=1)
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    assert len(board.tables) == 2
    assert any("different seeds" in note for note in board.notes)


def test_rows_made_by_different_code_are_ranked_together_with_a_note_and_their_commits(
        tmp_path):
    """Different code does not make runs incomparable (the protocol is the same), but the
    leaderboard says so: a note naming each commit's rows, and each row's commit(s)."""
    old, new = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}
    write_run(tmp_path / "0", "ease", 0.3, seed=1, code=old)
    write_run(tmp_path / "1", "ease", 0.3, seed=2, code=new)
    write_run(tmp_path / "2", "pop", 0.1, seed=1, code=new)
    write_run(tmp_path / "3", "pop", 0.1, seed=2)  # made before runs recorded their code
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    (table,) = board.tables
    assert table.frame.set_index("model")["code"].to_dict() == {
        "ease": "aaaaaaa, bbbbbbb+dirty", "pop": "bbbbbbb+dirty, unrecorded"}
    (note,) = [n for n in board.notes if "different code" in n]
    assert "aaaaaaa: ease; bbbbbbb+dirty: ease, pop; unrecorded: pop" in note
    report_main([str(tmp_path), "--no-plots"])
    assert "different code" in (tmp_path / "leaderboard.md").read_text()
    assert "bbbbbbb+dirty, unrecorded" in (tmp_path / "leaderboard.html").read_text()
    for folder in ("0", "1", "2", "3"):  # one commit: no note
        record = json.loads((tmp_path / folder / "metrics.json").read_text())
        record["code"] = old
        (tmp_path / folder / "metrics.json").write_text(json.dumps(record))
    assert not [n for n in build_leaderboard([tmp_path], bootstrap_resamples=50).notes
                if "different code" in n]


def test_several_seeds_give_mean_and_std(tmp_path):
    write_run(tmp_path / "0", "ease", 0.2, seed=1)
    write_run(tmp_path / "1", "ease", 0.4, seed=2)
    write_run(tmp_path / "2", "pop", 0.1, seed=1)
    write_run(tmp_path / "3", "pop", 0.1, seed=2)
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    (table,) = board.tables
    row = table.frame.set_index("model").loc["ease"]
    assert row["runs"] == 2
    assert row["test/ndcg@10"] == pytest.approx(0.3)
    assert row["test/ndcg@10 std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    report_main([str(tmp_path), "--no-plots"])
    assert "0.3000 ± 0.1414" in (tmp_path / "leaderboard.md").read_text()


def test_failed_run_is_a_row_with_its_error(tmp_path):
    write_run(tmp_path / "0", "ease", 0.3)
    write_failed(tmp_path / "1", "bpr", "ValueError: bad lr")
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    frame = board.tables[0].frame.set_index("model")
    assert frame.loc["bpr", "status"] == "failed"
    assert frame.loc["bpr", "error"] == "ValueError: bad lr"
    assert frame.loc["ease", "rank"] == 1


def test_variants_of_one_model_are_labelled_by_their_overrides(tmp_path):
    write_run(tmp_path / "0", "ease", 0.3, overrides=["model=ease", "model.reg_weight=10", "seed=1"])
    write_run(tmp_path / "1", "ease", 0.2, overrides=["model=ease", "model.reg_weight=500",
                                                      "seed=1"])
    labels = sorted(r.label for r in find_runs([tmp_path]))
    assert labels == ["ease (model.reg_weight=10)", "ease (model.reg_weight=500)"]
    groups, _ = group_runs(find_runs([tmp_path]))
    assert len(groups[0].variants) == 2


def test_cli_writes_every_file_and_refuses_empty_folders(tmp_path, capsys):
    write_run(tmp_path / "0", "ease", noisy(0.3, 1))
    write_run(tmp_path / "1", "pop", noisy(0.1, 2))
    assert report_main([str(tmp_path)]) == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "significance.csv",
                 "ndcg_by_model.png", "accuracy_vs_tail.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    html = (tmp_path / "leaderboard.html").read_text()
    assert "<script>" in html and "data-higher" in html and "http" not in html.lower()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_main([str(empty)]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err


def test_a_metric_without_value_is_missing_and_never_best(tmp_path):
    # no test user of either run had a tail target: tail_recall is null in metrics.json
    write_run(tmp_path / "0", "ease", noisy(0.30, 3), **{"test/tail_recall@10": None})
    write_run(tmp_path / "1", "pop", noisy(0.10, 2), **{"test/tail_recall@10": None})
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    (table,) = board.tables
    assert "test/tail_recall@10" in table.metrics and "test/tail_recall@10" not in table.best
    assert table.frame["test/tail_recall@10"].isna().all()
    assert table.best["test/ndcg@10"] == "ease"  # the other columns are unaffected
    report_main([str(tmp_path), "--no-plots"])
    lines = (tmp_path / "leaderboard.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rank |")).split(" | ")
    column = header.index("test/tail_recall@10")
    for model in ("ease", "pop"):
        cells = next(line for line in lines if f"| {model} |" in line).split(" | ")
        assert cells[column] == "–", model
    html = (tmp_path / "leaderboard.html").read_text()
    assert "<td data-v=''>–</td>" in html and "class='best'>–" not in html


def test_a_run_without_value_is_not_ranked_above_a_zero(tmp_path):
    # a 0 is a value, NaN (null) is none: with gini lower-is-better, NaN must not win either way
    write_run(tmp_path / "0", "ease", noisy(0.30, 3), gini=float("nan"),
              **{"test/tail_recall@10": None})
    write_run(tmp_path / "1", "pop", noisy(0.10, 2), gini=0.8, **{"test/tail_recall@10": 0.0})
    write_run(tmp_path / "2", "bpr", noisy(0.20, 4), gini=0.9,
              **{"test/ndcg@10": None, "test/tail_recall@10": None})
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    (table,) = board.tables
    assert table.best["test/tail_recall@10"] == "pop"
    assert table.best["test/gini@10"] == "pop"
    # a row without the primary metric goes last, without a rank
    frame = table.frame.set_index("model")
    assert list(table.frame["model"]) == ["ease", "pop", "bpr"]
    assert frame.loc["ease", "rank"] == 1 and frame.loc["pop", "rank"] == 2
    assert pd.isna(frame.loc["bpr", "rank"])


def test_per_user_values_without_value_are_not_tested(tmp_path):
    # pop's users have no tail target (NaN per user, null in metrics.json): ease is the best
    # tail_recall and pop is not tested against it
    per_user_tail = {"ease": noisy(0.3, 5), "pop": np.full(N_USERS, np.nan)}
    for folder, (model, tail) in enumerate(per_user_tail.items()):
        mean = float(np.nanmean(tail)) if model == "ease" else None
        run = write_run(tmp_path / str(folder), model, noisy(0.3 if model == "ease" else 0.1, 6),
                        **{"test/tail_recall@10": mean})
        frame = pd.read_parquet(run / "per_user_test.parquet")
        frame["tail_recall@10"] = tail
        frame.to_parquet(run / "per_user_test.parquet")
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    assert board.tables[0].best["test/tail_recall@10"] == "ease"
    assert set(board.significance["metric"]) == {"test/ndcg@10", "test/recall@10"}


def test_legend_states_the_directions_of_the_metric_classes(tmp_path):
    write_run(tmp_path / "0", "ease", 0.3, **{"test/rmse": 0.9})
    board = build_leaderboard([tmp_path], bootstrap_resamples=50)
    from recozoo.report.leaderboard import to_markdown
    legend = to_markdown(board).splitlines()[2]
    assert "lower is better for gini, rmse" in legend  # the columns shown, in table order
    assert "arp" not in legend.split("lower is better for")[1].split(")")[0]
    assert "/distant" in legend and "/tail" not in legend


def test_report_package_has_no_import_cycle():
    import ast

    import recozoo.report

    folder = Path(recozoo.report.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                found |= {n.rsplit(".", 1)[-1] for n in names if n.startswith("recozoo.report.")}
            elif isinstance(node, ast.Import):
                found |= {a.name.rsplit(".", 1)[-1] for a in node.names
                          if a.name.startswith("recozoo.report.")}
        imports[path.stem] = found - {path.stem}
    assert "leaderboard" not in imports["plots"]
    for module, needed in imports.items():  # no module reaches back to itself
        seen, todo = set(), list(needed)
        while todo:
            other = todo.pop()
            if other not in seen and other != "__init__":
                seen.add(other)
                todo += imports.get(other, set())
        assert module not in seen, f"{module} imports itself through {seen}"


def test_markdown_is_compact_and_html_and_csv_keep_every_column(tmp_path):
    write_run(tmp_path / "0", "ease", noisy(0.30, 3), **{"test/coverage@10": 0.4,
                                                         "test/ndcg@20": 0.35})
    write_run(tmp_path / "1", "pop", noisy(0.10, 2), **{"test/coverage@10": 0.1,
                                                        "test/ndcg@20": 0.12})
    assert report_main([str(tmp_path), "plots=false"]) == 0
    lines = (tmp_path / "leaderboard.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rank |"))
    assert header.strip("| ").split(" | ") == [
        "rank", "model", "runs", "test/ndcg@10", "95% CI", "test/recall@10",
        "test/tail_recall@10", "test/aplt@10", "test/coverage@10", "p_wilcoxon", "error"]
    html = (tmp_path / "leaderboard.html").read_text()
    for column in ("test/gini@10", "test/ndcg@20", "p_ttest", "train_seconds", "n_params"):
        assert f">{column}</th>" in html, column
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {"test/gini@10", "test/ndcg@20", "p_ttest"} <= set(csv.columns)


def test_labels_of_coinciding_points_do_not_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recozoo.report.plots import label_column, label_points

    heights = label_column(np.array([0.5, 0.5, 0.5, 0.0, 1.0]), gap=0.1)
    assert heights[3] == 0.0 and heights[4] == 1.0  # room to stay where they are
    assert sorted(heights[:3]) == pytest.approx([0.4, 0.5, 0.6])  # spread around their point
    assert label_column(np.array([0.9] * 3), gap=0.2) == pytest.approx([0.6, 0.8, 1.0])

    fig, ax = plt.subplots(figsize=(5, 4))
    x = np.array([0.1, 0.1, 0.1, 0.1, 0.3, 0.31])
    y = np.array([0.2, 0.2, 0.2, 0.2, 0.25, 0.25])  # four points at one place, two near
    ax.scatter(x, y)
    labels = label_points(ax, x, y, ["ease", "ease (rerank)", "itemknn", "pop", "bpr", "sasrec"])
    fig.canvas.draw()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(label) for label in labels]  # the text, not its line
    assert len(boxes) == 6
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    plt.close(fig)


def test_external_list_is_scored_against_the_run_and_added_as_a_row(tmp_path, monkeypatch):
    import recozoo.report.external

    run = write_run(tmp_path / "runs" / "ease", "ease", noisy(0.30, 3))
    calls = []

    def fake_score_external(list_file: Path, run_dir: Path, out_dir: Path | None = None) -> Path:
        calls.append((list_file, run_dir, out_dir))
        return write_run(run_dir.parent / "external_lists", "external", noisy(0.20, 4))

    monkeypatch.setattr(recozoo.report.external, "score_external", fake_score_external)
    lists = tmp_path / "lists.csv"
    for argv in ([f"external={lists}", f"run={run}", "plots=false"],
                 ["--external", str(lists), "--run", str(run), "--no-plots"]):
        assert report_main(argv) == 0
        assert calls.pop() == (lists, run, None)
        shutil.rmtree(tmp_path / "runs" / "external_lists")
    frame = pd.read_csv(run / "leaderboard.csv")  # written into the run folder by default
    assert sorted(frame["model"]) == ["ease", "external"]
    with pytest.raises(SystemExit, match=r"external=.*lists.csv needs run=<run folder>"):
        report_main([f"external={lists}"])
    with pytest.raises(SystemExit, match=r"run= is read with external="):
        report_main([f"run={run}"])
