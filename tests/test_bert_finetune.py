"""bert_finetune: the text tower (freezing, LoRA, frozen-layer cache), the catalogue cache, the
three negative modes and cold-start scoring, on the tiny shop."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_briefly

from recozoo.data.datamodule import DatasetInfo
from recozoo.models.bert_finetune import BertFinetune
from recozoo.models.components.text_tower import TextTower

TEXTS = ["red cotton shirt", "blue denim jeans", "red cotton shirt", "steel kitchen knife"]


def _info(texts: list[str] | None, popularity: list[float] | None = None) -> DatasetInfo:
    n = 4 if texts is None else len(texts)
    pop = torch.tensor(popularity or [3.0] * n)
    return DatasetInfo(name="toy", n_users=3, n_items=n, item_popularity=pop,
                       tail_mask=torch.zeros(n, dtype=torch.bool), head_share=0.2,
                       item_text=texts)


def _trainable(module: torch.nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]


def test_needs_item_text_and_names_the_dataset():
    with pytest.raises(ValueError, match="'toy' has none"):
        BertFinetune(_info(None))


def test_unknown_negatives_are_refused():
    with pytest.raises(ValueError, match="model.negatives"):
        BertFinetune(_info(TEXTS), negatives="hard")


def test_train_layers_and_lora_choose_what_trains():
    top = _trainable(TextTower(TEXTS, train_layers=1))
    assert top and all(".layer.5." in name for name in top)
    assert _trainable(TextTower(TEXTS, train_layers=0)) == []
    lora = _trainable(TextTower(TEXTS, train_layers=2, lora_rank=4))
    assert lora and all("lora_" in name for name in lora)
    assert {name.split(".layer.")[1].split(".")[0] for name in lora} == {"4", "5"}
    assert any("embeddings" in name for name in _trainable(TextTower(TEXTS, train_layers=-1)))


def test_frozen_layer_cache_gives_the_same_vectors_as_the_full_forward():
    cached = TextTower(TEXTS, train_layers=2, bf16=False).eval()
    full = TextTower(TEXTS, train_layers=2, bf16=False, cache_frozen_layers=False).eval()
    items = torch.arange(len(TEXTS))
    with torch.no_grad():
        torch.testing.assert_close(cached(items), full(items), atol=5e-3, rtol=1e-3)
        # identical texts, identical vectors; padding trimmed per batch changes nothing
        vectors = cached.encode_all()
    torch.testing.assert_close(vectors[0], vectors[2])
    torch.testing.assert_close(vectors, cached(items), atol=1e-5, rtol=1e-5)


def test_cold_items_keep_their_text_vector_with_id_embeddings():
    """An item without training interactions (popularity 0) is scored from its text alone."""
    model = BertFinetune(_info(TEXTS, [5.0, 4.0, 0.0, 2.0]), id_embeddings=True)
    with torch.no_grad():
        model.ids.embedding.weight.fill_(1.0)
        model.ids.embedding.weight[2].zero_()  # what a never-trained row holds
        table = model.item_table()
        text = model.text.encode_all()
    # the adapter starts at zero: the cold item's vector is its normalised text vector
    torch.testing.assert_close(table[2], torch.nn.functional.normalize(text[2], dim=0))
    assert not torch.allclose(table[0], table[2])  # same text, but item 0 has an ID vector


def _fit(cfg, steps: int = 2):
    dm, model, _, _ = fit_briefly(cfg, steps)
    return dm, model


@pytest.mark.parametrize("negatives", ["in_batch", "sampled", "catalogue"])
def test_every_negative_mode_trains_and_scores(make_config, negatives):
    cfg = make_config(["model=bert_finetune", f"model.negatives={negatives}",
                       "model.n_negatives=8", "model.max_fresh_items=16"])
    dm, model = _fit(cfg)
    batch = dm.eval_batch("test", dm.eval_users["test"][:4])
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (4, dm.info.n_items) and torch.isfinite(scores).all()


def test_evaluation_reads_the_current_weights(make_config):
    """The catalogue cache is rebuilt after training steps, never stale at scoring time."""
    dm, model = _fit(make_config(["model=bert_finetune"]))
    batch = dm.eval_batch("test", dm.eval_users["test"][:4])
    with torch.no_grad():
        before = model.score(batch)
        layer = model.text.encoder.encoder.layer[-1]
        layer.output.dense.weight.mul_(1.5)
        model._steps_since_refresh += 1  # what a training step records
        after = model.score(batch)
        model._text_cache = None
        rebuilt = model.score(batch)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, rebuilt)


def test_cold_items_are_never_negatives_and_get_no_id_gradient(make_config):
    cfg = make_config(["model=bert_finetune", "model.id_embeddings=true", "eval.cold_items=0.1",
                       "model.negatives=catalogue"])
    dm, model = _fit(cfg, steps=3)
    cold = dm.info.cold_items
    assert cold.any()
    assert not model.trained_items[cold].any()
    assert (model.ids.embedding.weight[cold] == 0).all()
    assert (model.ids.embedding.weight[~cold].abs().sum(1) > 0).any()
