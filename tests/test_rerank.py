"""Re-rankers: known answers on tiny candidate lists, batch/one-user agreement, the eval path."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from recozoo.rerank import MMR, Calibrated, ItemFacts, TailSlots, XQuAD
from recozoo.train import build_experiment

INF = math.inf
# 10 items by falling popularity: head {0, 1}, mid {2, 3, 4}, tail {5..9}
POPULARITY = torch.tensor([50, 40, 30, 20, 10, 5, 4, 3, 2, 1.0])
CATEGORY = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])


@pytest.fixture
def facts() -> ItemFacts:
    return ItemFacts.from_popularity(POPULARITY, head_share=0.2, category=CATEGORY)


def lists(*rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates in the given order with strictly falling scores."""
    items = torch.tensor(rows)
    scores = torch.arange(items.shape[1], 0, -1).float().expand(len(rows), -1).clone()
    return items, scores


def test_facts_buckets_match_head_tail_partition(facts):
    assert facts.bucket.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert torch.equal(facts.tail_mask, facts.bucket > 0)


@pytest.mark.parametrize("reranker", [XQuAD(0.0), Calibrated(0.0), MMR(0.0), TailSlots(0.0)])
def test_zero_weight_keeps_model_order(reranker, facts):
    items, scores = lists([0, 1, 2, 5, 6, 3], [9, 0, 8, 1, 2, 3])
    history = torch.tensor([[5, 6], [0, 1]])
    out, values = reranker(items, scores, 4, history, facts)
    assert torch.equal(out, items[:, :4])
    assert torch.equal(values, scores[:, :4])


def test_xquad_brings_tail_forward_for_tail_users_only(facts):
    items, scores = lists([0, 1, 2, 5, 6, 7], [0, 1, 2, 5, 6, 7])
    history = torch.tensor([[5, 6, 7], [0, 1, 0]])  # user 0 reads the tail, user 1 the head
    out, _ = XQuAD(weight=0.6)(items, scores, 3, history, facts)
    # a tail reader: the best tail item first, then the list alternates (smooth coverage)
    assert out[0].tolist() == [2, 0, 5]
    assert out[1].tolist() == [0, 1, 2]  # P(tail|u) = 0: the model's order is kept


def test_xquad_binary_adds_one_tail_item(facts):
    items, scores = lists([0, 1, 0, 1, 8, 9])  # a list that is all head but two tail items
    items = torch.tensor([[0, 1, 3, 4, 8, 9]])
    history = torch.tensor([[0, 9]])  # half head, half tail
    out, _ = XQuAD(weight=0.9, variant="binary")(items, scores, 4, history, facts)
    # the first tail item jumps ahead; once the tail is covered, relevance decides again
    assert out[0, 1].item() == 3 and out[0, 0].item() == 0


def test_calibrated_matches_history_mix(facts):
    items, scores = lists([0, 1, 2, 3, 5, 6])
    history = torch.tensor([[0, 2, 5, 6]])  # head 1/4, mid 1/4, tail 1/2
    out, _ = Calibrated(weight=0.95)(items, scores, 4, history, facts)
    assert sorted(facts.bucket[out[0]].tolist()) == [0, 1, 2, 2]


def test_calibrated_by_category(facts):
    items, scores = lists([0, 1, 6, 2, 4, 9])  # categories 0, 0, 0, 1, 2, 0
    history = torch.tensor([[2, 3, 4, 5]])  # categories 1, 1, 2, 2
    out, _ = Calibrated(weight=0.95, groups="category")(items, scores, 2, history, facts)
    assert sorted(CATEGORY[out[0]].tolist()) == [1, 2]


def test_mmr_spreads_categories_and_embeddings(facts):
    items, scores = lists([0, 1, 6, 2, 4])  # categories 0, 0, 0, 1, 2
    history = torch.tensor([[9]])
    out, _ = MMR(weight=0.7, similarity="category")(items, scores, 3, history, facts)
    assert sorted(CATEGORY[out[0]].tolist()) == [0, 1, 2]
    embeddings = torch.eye(10)
    embeddings[1] = embeddings[0]  # items 0 and 1 are duplicates
    with_vectors = ItemFacts(facts.tail_mask, facts.bucket, embeddings=embeddings)
    out, _ = MMR(weight=0.7)(items, scores, 2, history, with_vectors)
    assert out[0].tolist() == [0, 6]


def half_tail() -> ItemFacts:
    """Ten items: head {0..4}, tail {5..9}."""
    tail = torch.arange(10) >= 5
    return ItemFacts(tail_mask=tail, bucket=tail.long() * 2)


def test_tail_slots_hold_the_best_tail_items_below_the_models_top():
    facts = half_tail()  # the model's order: heads first, its tail items further down
    items, scores = lists([0, 1, 2, 3, 4, 7, 6, 9, 5, 8])
    no_history = torch.tensor([[10]])
    out, values = TailSlots(weight=0.2)(items, scores, 10, no_history, facts)
    # positions 5 and 10 are tail slots: the best tail items (7, then 6) not yet listed
    assert out[0, :5].tolist() == [0, 1, 2, 3, 7]
    assert out[0, 5:].tolist() == [4, 6, 9, 5, 8]
    # every prefix of length p: the model's top p - floor(0.2 p) and the best tail items below
    for p in range(1, 11):
        slots = int(0.2 * p + 1e-9)
        expected = set(items[0, :p - slots].tolist())
        below = [i for i in items[0].tolist() if i not in expected and facts.tail_mask[i]]
        expected |= set(below[:slots])
        assert set(out[0, :p].tolist()) == expected, p
    assert torch.equal(values, scores.gather(1, torch.tensor([[0, 1, 2, 3, 5, 4, 6, 7, 8, 9]])))


def test_tail_slots_move_on_where_the_model_listed_the_tail_itself():
    # the model's top already holds tail items 5, 6: a slot takes the next tail below (8)
    items, scores = lists([0, 5, 6, 1, 2, 3, 8, 4, 9, 7])
    out, _ = TailSlots(weight=0.2)(items, scores, 5, torch.tensor([[10]]), half_tail())
    assert out[0].tolist() == [0, 5, 6, 1, 8]


def test_tail_slots_list_does_not_depend_on_its_length(facts):
    generator = torch.Generator().manual_seed(1)
    items = torch.stack([torch.randperm(10, generator=generator) for _ in range(6)])
    scores = torch.rand(6, 10, generator=generator).sort(1, descending=True).values
    for weight in (0.1, 0.3, 0.5, 1.0):
        whole, _ = TailSlots(weight)(items, scores, 10, torch.zeros(6, 1, dtype=torch.long), facts)
        for k in (1, 3, 7):
            part, _ = TailSlots(weight)(items, scores, k, torch.zeros(6, 1, dtype=torch.long),
                                        facts)
            assert torch.equal(part, whole[:, :k])


def test_tail_slots_at_one_list_the_tail_first_then_the_rest():
    items, scores = lists([0, 1, 7, 2, 5])
    scores[0, 4] = -INF  # 5 is not a candidate (seen): never a tail slot's pick, listed last
    out, _ = TailSlots(weight=1.0)(items, scores, 5, torch.tensor([[10]]), half_tail())
    assert out[0].tolist() == [7, 0, 1, 2, 5]


def test_invalid_candidates_come_last(facts):
    items = torch.tensor([[0, 5, 6, 1]])
    scores = torch.tensor([[3.0, 2.0, -INF, -INF]])
    out, values = XQuAD(weight=0.8)(items, scores, 4, torch.tensor([[7, 8]]), facts)
    assert set(out[0, :2].tolist()) == {0, 5}
    assert out[0, 2:].tolist() == [6, 1] and torch.isinf(values[0, 2:]).all()


@pytest.mark.parametrize("reranker", [XQuAD(0.4), Calibrated(0.4), MMR(0.4), TailSlots(0.4)])
def test_batch_equals_one_user_at_a_time(reranker, facts):
    generator = torch.Generator().manual_seed(0)
    items = torch.stack([torch.randperm(10, generator=generator)[:8] for _ in range(5)])
    scores = torch.rand(5, 8, generator=generator).sort(1, descending=True).values
    history = torch.randint(0, 11, (5, 6), generator=generator)  # 10 = padding
    together, _ = reranker(items, scores, 5, history, facts)
    for row in range(5):
        alone, _ = reranker(items[row:row + 1], scores[row:row + 1], 5, history[row:row + 1],
                            facts)
        assert torch.equal(together[row], alone[0])


def test_bad_arguments_raise_clear_errors(facts):
    with pytest.raises(ValueError, match="weight"):
        XQuAD(weight=1.5)
    with pytest.raises(ValueError, match="variant"):
        XQuAD(variant="soft")
    no_category = ItemFacts(facts.tail_mask, facts.bucket)
    items, scores = lists([0, 1, 2])
    with pytest.raises(ValueError, match="categories"):
        Calibrated(0.5, groups="category")(items, scores, 2, torch.tensor([[1]]), no_category)
    with pytest.raises(ValueError, match="embeddings or categories"):
        MMR(0.5)(items, scores, 2, torch.tensor([[1]]), no_category)


@pytest.mark.parametrize("reranker", ["xquad", "tail_slots"])
def test_rerank_config_changes_evaluation_lists(make_config, reranker):
    """rerank=<reranker> through the real config: more tail in the lists, same candidates."""
    lists_by = {}
    for choice in ("none", reranker):
        cfg = make_config(["model=pop", f"rerank={choice}"] +
                          (["rerank.weight=0.9"] if choice == "xquad" else []))
        L.seed_everything(cfg.seed)
        experiment = build_experiment(cfg)
        dm, model, evaluator = experiment.datamodule, experiment.model, experiment.evaluator
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu", devices=1, limit_val_batches=0,
                            callbacks=[evaluator])
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        metrics = evaluator.stage_metrics["test"]
        lists_by[choice] = (evaluator.outputs["test"]["items"], metrics)
    (plain, m_plain), (reranked, m_rerank) = lists_by["none"], lists_by[reranker]
    assert set(plain[0].tolist()) == set(reranked[0].tolist())  # a re-ordering of the top-N
    assert m_rerank["test/aplt@10"] > m_plain["test/aplt@10"]


def test_tradeoff_report_chooses_weight_on_validation_and_plots(tmp_path):
    """The λ-sweep report reads metrics.json files, picks λ on validation, writes a PNG."""
    import json

    from recozoo.rerank import tradeoff

    def write(name: str, rerank: str, weight: float | None, ndcg: float, tail: float) -> None:
        folder = tmp_path / name
        folder.mkdir()
        metrics = {"status": "ok", "data": "shop", "model": "bpr", "debias": "none",
                   "rerank": rerank, "rerank_weight": weight}
        for stage in ("val", "test"):
            metrics.update({f"{stage}/ndcg@10": ndcg, f"{stage}/tail_recall@10": tail,
                            f"{stage}/aplt@10": tail})
        (folder / "metrics.json").write_text(json.dumps(metrics))

    write("base", "none", None, 0.10, 0.010)
    write("0", "xquad", 0.2, 0.098, 0.013)
    write("1", "xquad", 0.5, 0.090, 0.020)  # more tail, but NDCG -10%: not allowed
    runs = tradeoff.load_runs([tmp_path])
    text = tradeoff.report(runs, max_ndcg_cost=0.05)
    assert "xquad: λ = 0.2 chosen on validation" in text and "+30.0%" in text
    png = tradeoff.plot(runs, tmp_path / "curve.png")
    assert png.stat().st_size > 0
