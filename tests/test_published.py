"""Published results on a dataset (``data.published``): parsed with clear errors, shown beside a
run's own values only where the protocol matches, in the run's printout and in the leaderboard."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from tests.conftest import CONF
from tests.test_report import write_run

from recozoo.report import build_leaderboard
from recozoo.report.leaderboard import to_markdown
from recozoo.report.published import PublishedResult, parse_published, published_lines
from recozoo.train import print_metrics

RECFORMER = {"source": "Recformer (KDD 2023)", "split": "loo", "n_items": 50,
             "metrics": {"ndcg@10": 0.1, "test/recall@10": 0.2}}


def test_entries_parse_and_metric_names_drop_the_stage():
    (result,) = parse_published([RECFORMER])
    assert result == PublishedResult("Recformer (KDD 2023)", {"ndcg@10": 0.1, "recall@10": 0.2},
                                     "loo", 50)
    assert parse_published(None) == []


@pytest.mark.parametrize("entry, message", [
    ({"metrics": {"ndcg@10": 0.1}}, r"data.published\[0\].source is missing"),
    ({"source": "x", "metrics": {}}, r"data.published\[0\].metrics must map"),
    ({"source": "x", "metrics": {"ndcg@10": "high"}}, r"metrics.ndcg@10 must be a number"),
    ({"source": "x", "metrics": {"ndcg@10": 0.1}, "year": 2023}, r"unknown keys \['year'\]"),
    ({"source": "x", "metrics": {"ndcg@10": 0.1}, "n_items": 0}, r"n_items must be a positive"),
    ("Recformer", r"must be a mapping"),
])
def test_malformed_entries_are_errors_naming_the_key(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_published([entry])


def test_lines_show_ours_and_the_ratio_only_where_the_protocol_matches():
    (result,) = parse_published([RECFORMER])
    ours = {"test/ndcg@10": 0.05, "test/recall@10": 0.3}
    (line,) = published_lines([result], {"split": "loo", "n_items": 50}, ours)
    assert line == ("Recformer (KDD 2023): ndcg@10 0.1000 (this run 0.0500, 0.50x), "
                    "recall@10 0.2000 (this run 0.3000, 1.50x)")
    (line,) = published_lines([result], {"split": "random", "n_items": 50}, ours)
    assert "not comparable (measured with split loo, this run used random)" in line
    (line,) = published_lines([result], {"split": "loo", "n_items": 49}, ours)
    assert "not comparable (published on 50 items, this data has 49" in line
    (line,) = published_lines([result], {"split": "loo", "n_items": 50}, {"test/ndcg@10": 0.05})
    assert "recall@10 0.2000 (this run: not measured)" in line


def test_the_scientific_config_carries_recformers_figures():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=scientific", "data.path=/nowhere"])
        shop = compose("train", overrides=["data=shop"])
    assert cfg.data.name == "Scientific" and cfg.data.source.name == "Scientific"
    (result,) = parse_published(cfg.data.published)
    assert result.split == "loo" and result.n_items == 4385
    assert result.metrics == {"ndcg@10": 0.1027, "recall@10": 0.1448}
    assert parse_published(shop.data.published) == []


def test_a_run_prints_the_published_figures_beside_its_own(capsys):
    metrics = {"model": "ease", "data": "Scientific", "split": "loo", "n_items": 50, "epochs": 1,
               "train_seconds": 2.0, "test/ndcg@10": 0.08, "test/recall@10": 0.1}
    print_metrics(metrics, parse_published([RECFORMER]))
    assert ("Published on Scientific: Recformer (KDD 2023): ndcg@10 0.1000 (this run 0.0800, "
            "0.80x)") in capsys.readouterr().out


def test_the_leaderboard_shows_them_under_the_table_beside_its_best_row(tmp_path):
    for model, ndcg in (("ease", 0.08), ("bpr", 0.04)):
        folder = write_run(tmp_path / model, model, ndcg)
        (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"published": [RECFORMER]}}))
    markdown = to_markdown(build_leaderboard([tmp_path], bootstrap_resamples=10))
    assert ("Published on this data: Recformer (KDD 2023): ndcg@10 0.1000 (best here, ease "
            "0.0800, 0.80x)") in markdown
    other = tmp_path / "other"
    write_run(other / "pop", "pop", 0.02)  # no published figures in its config: no line
    assert "Published" not in to_markdown(build_leaderboard([other], bootstrap_resamples=10))
