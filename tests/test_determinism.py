"""The same config and seed give the same metrics.json and rankings on CPU (timing aside)."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import model_names
from recozoo.train import train

TIMING = {"train_seconds", "epoch_seconds", "val_seconds", "eval_seconds"}


def _results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


#: the sampled-softmax paths look up sampled items' rows and biases, repeats included
SAMPLED = ["model.sampled_softmax=true", "model.n_sampled=30"]


@pytest.mark.parametrize("model, extra", [("bpr", [])] + [
    pytest.param(name, [], marks=pytest.mark.slow) for name in model_names() if name != "bpr"] + [
    pytest.param(name, SAMPLED, marks=pytest.mark.slow, id=f"{name}-sampled")
    for name in ("gru4rec", "caser", "sqn")])
def test_same_config_and_seed_give_identical_results(model, extra, make_config):
    overrides = [f"model={model}", "trainer.max_epochs=2", *extra]
    first_cfg, second_cfg = make_config(overrides), make_config(overrides)
    first, second = train(first_cfg), train(second_cfg)
    assert first["status"] == "ok"
    assert _results(first) == _results(second)  # exact, not approximate
    for name in ("rankings_test.parquet", "per_user_test.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(f"{first_cfg.paths.output_dir}/{name}"),
                                      pd.read_parquet(f"{second_cfg.paths.output_dir}/{name}"),
                                      check_exact=True)


def test_another_seed_gives_other_results(make_config):
    first = train(make_config(["model=bpr", "seed=1"]))
    second = train(make_config(["model=bpr", "seed=2"]))
    assert first["test/ndcg@20"] != second["test/ndcg@20"] or first["val/ndcg@20"] != second["val/ndcg@20"]


def test_rows_looks_up_like_indexing_with_a_repeatable_backward():
    """`rows` is ``table[index]``; its backward sums repeated rows in the same order every time
    (advanced indexing's accumulate varied with the threads)."""
    import torch

    from recozoo.models.components.lookup import rows

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=generator, requires_grad=True)
    index = torch.randint(0, 50, (4000, 16), generator=generator)  # many repeats
    weight = torch.randn(4000, 16, 8, generator=generator)
    assert torch.equal(rows(table, index), table[index])
    grads = []
    for lookup in (rows, rows, lambda t, i: t[i]):
        table.grad = None
        (lookup(table, index) * weight).sum().backward()
        grads.append(table.grad.clone())
    assert torch.equal(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-3)  # other sum order
