"""bert_finetune: the text tower (freezing, LoRA, frozen-layer cache in memory and on disk), the
catalogue cache, consistent negatives, the popularity gate's fall-back on IDs, the epoch cap and
cold-start scoring, on toy texts and the tiny shop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import fit_briefly
from recozoo.data.datamodule import DatasetInfo, EvalBatch
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


def test_needs_item_text_and_names_the_dataset_and_the_settings_that_give_it():
    with pytest.raises(ValueError, match=r"'toy' has none .*data.items_path=<file> "
                                         r"data.item_key=.*\+data.item_fields.title="):
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


def test_frozen_layer_output_is_read_from_disk_on_a_second_build(tmp_path, monkeypatch):
    first = TextTower(TEXTS, train_layers=1, bf16=False, cache_dir=tmp_path)
    states = first._frozen()
    assert not first.frozen_from_disk and first.frozen_cache_file().exists()
    second = TextTower(TEXTS, train_layers=1, bf16=False, cache_dir=tmp_path)
    monkeypatch.setattr(second, "_encode_frozen", lambda: pytest.fail("re-encoded"))
    torch.testing.assert_close(second._frozen(), states)
    assert second.frozen_from_disk
    # other texts or another frozen depth are other files
    other = TextTower(TEXTS[:3], train_layers=1, bf16=False, cache_dir=tmp_path)
    deeper = TextTower(TEXTS, train_layers=2, bf16=False, cache_dir=tmp_path)
    files = {first.frozen_cache_file(), other.frozen_cache_file(), deeper.frozen_cache_file()}
    assert len(files) == 3


def test_cold_items_keep_their_text_vector_with_id_embeddings():
    """An item without training interactions (popularity 0) is scored from its text alone."""
    model = BertFinetune(_info(TEXTS, [5.0, 4.0, 0.0, 2.0]), id_embeddings=True)
    with torch.no_grad():
        model.item_table()  # the ID embeddings start at the text vectors
        model.ids.embedding.weight.fill_(1.0)
        table = model.item_table()
        text = model.text.encode_all()
    assert model.ids.gate()[2] == 0 and (model.ids.gate()[[0, 1, 3]] > 0).all()
    # the adapter starts at zero: the cold item's vector is its normalised text vector
    torch.testing.assert_close(table[2], torch.nn.functional.normalize(text[2], dim=0))
    assert not torch.allclose(table[0], table[2])  # same text, but item 0 has an ID vector


def test_untrained_model_is_the_text_prior_with_or_without_ids():
    info = _info(TEXTS, [5.0, 4.0, 0.0, 2.0])
    with torch.no_grad():
        with_ids = BertFinetune(info, id_embeddings=True).item_table()
        text_only = BertFinetune(info, id_embeddings=False).item_table()
    torch.testing.assert_close(with_ids, text_only)


def _sequence_batch(next_items: list[int], length: int) -> dict[str, torch.Tensor]:
    """Every item starts a walk of ``length`` steps along ``next_items`` (item i -> next[i])."""
    inputs, targets = [], []
    for start in range(len(next_items)):
        walk = [start]
        for _ in range(length):
            walk.append(next_items[walk[-1]])
        inputs.append(walk[:-1])
        targets.append(walk[1:])
    return {"input": torch.tensor(inputs), "target": torch.tensor(targets)}


def test_fresh_negatives_are_encoded_by_the_current_weights():
    """Changing the encoder between two steps changes the vectors of the drawn negatives in
    the next step's softmax (they are not read from a cache made by older weights)."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    model = BertFinetune(_info(texts, [2.0] * 12), train_layers=1, negatives="sampled",
                         n_negatives=6, max_fresh_items=2, max_len=4, bf16=False)
    model.eval()  # no dropout: a vector depends on the weights only
    batch = _sequence_batch([(i + 1) % 12 for i in range(12)], length=4)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    encode = model.fresh_item_vectors
    model.fresh_item_vectors = lambda items: seen.append((items, encode(items))) or seen[-1][1]
    torch.manual_seed(0)
    model.loss(batch)
    with torch.no_grad():
        model.text.encoder.encoder.layer[-1].output.dense.weight.mul_(1.5)
    torch.manual_seed(0)
    model.loss(batch)
    (items, before), (same_items, after) = seen
    assert torch.equal(items, same_items) and len(items) > 2  # targets and drawn negatives
    changed = (before - after).norm(dim=1) > 1e-4
    assert changed.all()
    with torch.no_grad():
        now = model._item_vectors(model.text(items), items)
    torch.testing.assert_close(after.detach(), now, atol=1e-5, rtol=1e-5)


def test_gate_falls_back_on_ids_when_text_is_constant():
    """Every item has the same text: only the ID part can learn that item i is followed by
    item i + 1; without ID embeddings the model cannot tell the items apart."""
    n = 12
    batch = _sequence_batch([(i + 1) % n for i in range(n)], length=6)
    history = torch.tensor([[(i - 2) % n, (i - 1) % n, i] for i in range(n)])
    hits = {}
    for id_embeddings in (True, False):
        torch.manual_seed(0)
        model = BertFinetune(_info(["a product"] * n, [6.0] * n), train_layers=0, max_len=6,
                             id_embeddings=id_embeddings, dropout=0.0)
        optimizer = model.configure_optimizers()
        for _ in range(60):
            optimizer.zero_grad()
            model.loss(batch).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            table = model.item_table()
            scores = model.user_states(table, history)[:, -1] @ table[:-1].T
        hits[id_embeddings] = (scores.argmax(1) == (torch.arange(n) + 1) % n).float().mean()
    assert hits[True] >= 0.9
    assert hits[False] <= 0.25


def _fit(cfg, steps: int = 2):
    dm, model, _, _ = fit_briefly(cfg, steps)
    return dm, model


@pytest.mark.parametrize("negatives", ["catalogue", "sampled", "in_batch"])
def test_every_negative_mode_trains_and_scores(make_config, negatives):
    cfg = make_config(["model=bert_finetune", f"model.negatives={negatives}",
                       "model.train_layers=1", "model.n_negatives=8", "model.max_fresh_items=16"])
    dm, model = _fit(cfg)
    batch = dm.eval_batch("test", dm.eval_users["test"][:4])
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (4, dm.info.n_items) and torch.isfinite(scores).all()


def test_evaluation_reads_the_current_weights(make_config):
    """The catalogue cache is rebuilt after training steps, never stale at scoring time."""
    dm, model = _fit(make_config(["model=bert_finetune", "model.train_layers=1"]))
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


def test_short_histories_get_the_states_they_would_get_at_full_width(monkeypatch):
    """The tower leaves out the oldest columns that are padding in every row: a short history's
    states are the same alone (a few columns) as beside a full-length one (max_len columns),
    and scoring in groups ordered by length (`newest_states`) gives each user's newest state."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    model = BertFinetune(_info(texts, [2.0] * 12), max_len=8, bf16=False).eval()
    pad = model.info.pad_item
    short = torch.tensor([[pad] * 5 + [3, 1, 7]])
    full = torch.tensor([[0, 2, 4, 6, 8, 10, 1, 3]])
    with torch.no_grad():
        torch.nn.init.normal_(model.user_out.weight, std=0.1)  # the tower's share, not zero
        table = model.item_table()
        alone = model.user_states(table, short)  # (1, 3, d): the padding columns left out
        beside = model.user_states(table, torch.cat([short, full]))  # (2, 8, d)
        assert alone.shape[1] == 3 and beside.shape[1] == 8
        torch.testing.assert_close(alone[0], beside[0, -3:], atol=1e-6, rtol=1e-5)
        histories = torch.cat([short, full, short.roll(1, 1), full.flip(1), short])
        monkeypatch.setattr("recozoo.models.components.sequence.GROUP_ROWS", 2)
        grouped = model.newest_states(table, histories)
        one_by_one = torch.cat([model.user_states(table, h[None])[:, -1] for h in histories])
    torch.testing.assert_close(grouped, one_by_one, atol=1e-6, rtol=1e-5)


def test_a_sampled_step_reads_its_own_items_vectors_as_the_catalogue_table_holds_them():
    """With sampled negatives a training step builds the vectors of its input items only;
    the users' states are those the whole catalogue's table gives."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    model = BertFinetune(_info(texts, [2.0] * 12), max_len=6, negatives="sampled",
                         bf16=False).eval()  # every item trained: no cold placement
    pad = model.info.pad_item
    sequence = torch.tensor([[pad, pad, 3, 1, 7, 3], [0, 2, 4, 6, 8, 10], [pad] * 5 + [11]])
    with torch.no_grad():
        torch.nn.init.normal_(model.user_out.weight, std=0.1)
        model.adapter.weight.normal_(std=0.1)
        expected = model.user_states(model.item_table(), sequence)
        got = model._input_states(sequence)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_a_stage_builds_the_item_table_once_and_the_next_stage_anew(make_config, monkeypatch):
    """Within a validation the weights hold, so the catalogue's vectors are built at its first
    batch and reused; the next stage, after the weights changed, builds them again."""
    dm, model, trainer, _ = fit_briefly(make_config(["model=bert_finetune",
                                                     "eval.batch_size=4"]), steps=2,
                                     validate=True)
    builds = []
    build = model._build_item_table
    monkeypatch.setattr(model, "_build_item_table", lambda: builds.append(1) or build())
    trainer.validate(model, datamodule=dm, verbose=False)
    assert len(builds) == 1 and len(dm.eval_users["val"]) > 4  # several batches, one build
    with torch.no_grad():
        first = model.score(dm.eval_batch("val", dm.eval_users["val"][:4]))  # outside a stage
        model.adapter.weight.normal_(std=0.5)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert len(builds) == 3  # the call outside a stage built its own
    with torch.no_grad():
        after = model.score(dm.eval_batch("val", dm.eval_users["val"][:4]))
    assert not torch.allclose(first, after)
    assert model._held_table is None  # nothing held between stages


def test_a_served_model_builds_its_item_table_at_the_first_request_only(monkeypatch):
    """`hold_weights` (what loading a run for serving calls): the catalogue's vectors are built
    once; with gradients on (training) they are still built at every call."""
    model = BertFinetune(_info(TEXTS, [5.0, 4.0, 0.0, 2.0]), bf16=False).eval()
    builds = []
    build = model._build_item_table
    monkeypatch.setattr(model, "_build_item_table", lambda: builds.append(1) or build())
    model.hold_weights()
    with torch.no_grad():  # serving: inference mode
        first, second = model.item_table(), model.item_table()
    assert len(builds) == 1 and first is second
    model.item_table()  # gradients on: built afresh, nothing kept from it
    assert len(builds) == 2


def test_a_checkpoint_of_the_same_encoder_weights_keeps_the_catalogue_encoding():
    """Loading the best checkpoint (the choice on validation, the final validation, the test)
    re-encodes the catalogue only where its encoder weights differ from the encoding's."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    model = BertFinetune(_info(texts, [2.0] * 12), train_layers=1, max_len=4, bf16=False).eval()
    encodes = []
    encode = model.text.encode_all
    model.text.encode_all = lambda: encodes.append(1) or encode()

    def load(state):
        model.on_load_checkpoint({"state_dict": state})
        model.load_state_dict(state)
        with torch.no_grad():
            return model.item_table()

    with torch.no_grad():
        before = model.item_table()
    same = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(load(same), before)
    assert encodes == [1]  # the first table's encoding only
    other = {**same, model._encoder_names[0]: same[model._encoder_names[0]] + 0.5}
    after = load(other)
    assert encodes == [1, 1] and not torch.allclose(after, before)
    model._text_cache = None  # a fresh encoding of the loaded weights gives the same table
    with torch.no_grad():
        torch.testing.assert_close(model.item_table(), after)


def test_cold_items_are_never_negatives_and_train_on_their_text_vector(make_config):
    cfg = make_config(["model=bert_finetune", "eval.cold_items=0.1", "model.negatives=catalogue"])
    dm, model = _fit(cfg, steps=3)
    cold = dm.info.cold_items
    assert cold.any()
    assert not model.trained_items[cold].any()
    gate = model.ids.gate()
    assert (gate[cold] == 0).all() and (gate[model.trained_items] > 0).all()
    model.train()  # when scoring they are placed by their neighbours instead
    with torch.no_grad():
        text = model._cached_text()[cold]
        expected = torch.nn.functional.normalize(text + model.adapter(text), dim=-1)
        torch.testing.assert_close(model.item_table()[:-1][cold], expected)


def test_model_max_epochs_caps_the_trainer(make_config):
    cfg = make_config(["model=bert_finetune", "model.train_layers=0", "model.max_epochs=1"])
    _, _, trainer, _ = fit_briefly(cfg, steps=1, epochs=3)
    assert trainer.current_epoch == 1 and trainer.max_epochs == 1


def test_gate_bias_sets_how_much_warm_items_start_on_their_ids():
    info = _info(TEXTS, [1.0, 20.0, 0.0, 3.0])
    default = BertFinetune(info).ids.gate()
    trusting = BertFinetune(info, gate_bias=2.0).ids.gate()
    torch.testing.assert_close(default[0], torch.sigmoid(torch.log(torch.tensor(2.0)) - 1))
    torch.testing.assert_close(trusting[0], torch.sigmoid(torch.log(torch.tensor(2.0)) + 2))
    assert trusting[2] == 0 and (trusting[[0, 1, 3]] > default[[0, 1, 3]]).all()


def test_encoder_learns_from_the_fresh_softmax_alone_never_from_stale_rows():
    """While the encoder trains under negatives=catalogue, the full softmax reads only the
    catalogue cache (no row of it carries the encoder's gradient), so no step can lower the loss
    by moving fresh rows away from stale ones (issue 17); the fresh softmax trains the encoder."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    batch = _sequence_batch([(i + 1) % 12 for i in range(12)], length=4)
    model = BertFinetune(_info(texts, [2.0] * 12), train_layers=1, max_len=4, n_negatives=4,
                         bf16=False).eval()
    weight = model.text.encoder.encoder.layer[-1].output.dense.weight
    fresh_loss = model._fresh_loss
    model._fresh_loss = lambda states, targets, **_: states.sum() * 0  # the full softmax alone
    model.loss(batch).backward()
    assert weight.requires_grad and (weight.grad is None or not weight.grad.any())
    model._fresh_loss = fresh_loss
    model.loss(batch).backward()
    assert weight.grad is not None and weight.grad.any()


def test_the_encoders_fresh_softmax_weighs_each_target_by_its_text_share():
    """fresh_weighting=text_share: the fresh softmax that trains the encoder beside the
    catalogue's weighs each target by 1 - its ID gate (how much of its vector is text), so
    popular items, which lean on their IDs, teach the encoder less; the same draws otherwise.
    With equal gates it is the plain mean; as the whole loss (sampled negatives) it is plain."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    batch = _sequence_batch([(i + 1) % 12 for i in range(12)], length=4)
    targets = batch["target"][:, -1]

    def fresh(popularity: list[float], weighting: str, encoder_only: bool = True) -> float:
        model = BertFinetune(_info(texts, popularity), train_layers=1, max_len=4,
                             n_negatives=4, fresh_weighting=weighting).eval()
        dim = model.fresh_item_vectors(targets[:1]).shape[1]
        states = torch.randn(len(targets), dim, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(1)  # the same uniform draws for every call
        with torch.no_grad():
            return model._fresh_loss(states, targets, encoder_only=encoder_only).item()

    even, skewed = [2.0] * 12, [1.0, 50.0, 1.0, 200.0] * 3
    assert fresh(even, "text_share") == pytest.approx(fresh(even, "none"), rel=1e-5)
    assert fresh(skewed, "text_share") != pytest.approx(fresh(skewed, "none"), rel=1e-3)
    assert fresh(skewed, "text_share", encoder_only=False) == pytest.approx(
        fresh(skewed, "none", encoder_only=False), rel=1e-6)
    with pytest.raises(ValueError, match="fresh_weighting"):
        BertFinetune(_info(texts), fresh_weighting="popularity")


def test_fresh_softmax_can_leave_the_user_tower_alone():
    """With fresh_user_grad=False the user tower's gradient is the full softmax's alone (the
    same as with a frozen encoder), while the encoder still gets one from the fresh softmax."""
    texts = [f"item number {i} of the shop" for i in range(12)]
    batch = _sequence_batch([(i + 1) % 12 for i in range(12)], length=4)

    def grads(fresh_user_grad: bool, encoder_trains: bool) -> tuple[torch.Tensor, bool]:
        torch.manual_seed(0)
        model = BertFinetune(_info(texts, [2.0] * 12), train_layers=1, max_len=4,
                             n_negatives=4, fresh_user_grad=fresh_user_grad).eval()
        for param in model._encoder_params:  # what FinetuneOnPlateau does between phases
            param.requires_grad = encoder_trains
        model.loss(batch).backward()
        encoder = model.text.encoder.encoder.layer[-1].output.dense.weight.grad
        return model.lag_weight.grad.clone(), encoder is not None and bool(encoder.any())

    catalogue_only, _ = grads(True, encoder_trains=False)
    detached, encoder_learns = grads(False, encoder_trains=True)
    shared, _ = grads(True, encoder_trains=True)
    torch.testing.assert_close(detached, catalogue_only)
    assert encoder_learns
    assert not torch.allclose(shared, catalogue_only)


def test_encoder_learning_rate_warms_up_linearly(make_config):
    cfg = make_config(["model=bert_finetune", "model.train_layers=1", "model.encoder_lr=1e-3",
                       "model.encoder_warmup=10", "model.finetune_start=start"])
    _, _model, trainer, _ = fit_briefly(cfg, steps=2)
    groups = {g.get("name"): g["lr"] for g in trainer.optimizers[0].param_groups}
    assert groups["encoder"] == pytest.approx(1e-3 * 2 / 10)  # set before the second step
    assert groups[None] == pytest.approx(cfg.model.optimizer.lr)  # the rest is untouched


def test_model_patience_sets_the_early_stopping_callback():
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    model = BertFinetune(_info(TEXTS), patience=2)
    stopping = EarlyStopping(monitor="val/ndcg@10", mode="max", patience=10)
    model.trainer = L.Trainer(callbacks=[stopping], logger=False, enable_progress_bar=False,
                              enable_model_summary=False, enable_checkpointing=False)
    model.on_fit_start()
    assert stopping.patience == 2
    with pytest.raises(ValueError, match="model.patience"):
        BertFinetune(_info(TEXTS), patience=0)


def _grouped_info(texts: list[str], group_of: list[int], n_users: int = 12) -> DatasetInfo:
    """Each user interacts with every item of one group (user u: group u % n_groups)."""
    n_groups = max(group_of) + 1
    pairs = [(u, i) for u in range(n_users) for i, g in enumerate(group_of) if g == u % n_groups]
    pairs_t = torch.tensor(pairs).T
    pop = torch.bincount(pairs_t[1], minlength=len(texts)).float()
    return DatasetInfo(name="toy", n_users=n_users, n_items=len(texts), item_popularity=pop,
                       tail_mask=torch.zeros(len(texts), dtype=torch.bool), head_share=0.2,
                       item_text=texts, train_pairs=pairs_t)


def test_user_text_auc_has_known_answers():
    from recozoo.models.components.text_signal import user_text_auc

    group_of = torch.tensor([0, 0, 0, 1, 1, 1])
    pairs = torch.tensor([[u, i] for u in range(20) for i in range(6) if group_of[i] == u % 2]).T
    one_hot = torch.nn.functional.one_hot(group_of).float()  # text = the group, exactly
    # a user's pairs always share the text (cosine 1); two distinct random items do 2 times in
    # 5 (same group), else cosine 0: P(same > random) + P(tie) / 2 = 0.6 + 0.4 / 2
    assert user_text_auc(one_hot, pairs) == pytest.approx(0.8, abs=0.01)
    assert user_text_auc(torch.ones(6, 3), pairs) == 0.5  # one text for all: a coin
    assert user_text_auc(one_hot * 3 + 0.1, pairs) == pytest.approx(0.8, abs=0.01)
    assert user_text_auc(one_hot, pairs[:, :3]) is None  # too few pairs to judge
    with pytest.raises(ValueError, match=r"shape \(2, n\)"):
        user_text_auc(one_hot, pairs.T)


KITCHEN = ["steel kitchen knife", "cast iron frying pan", "wooden cutting board",
           "kitchen chef knife set", "non-stick saucepan", "bamboo cooking spoon"]
GARDEN = ["garden hose reel", "lawn mower blade", "flower seed packet", "garden pruning shears",
          "plant watering can", "compost bin for the garden"]


def test_weak_text_falls_back_on_fast_ids_and_varied_text_does_not():
    """Users that buy within one theme: titles that name the theme are informative, one text
    for every item is weak; "weak" trains the ID embeddings at weak_text_id_lr."""
    group_of = [0] * 6 + [1] * 6

    def ids_lr(texts: list[str], **kwargs) -> tuple[bool, float | None]:
        model = BertFinetune(_grouped_info(texts, group_of), bf16=False,
                             weak_text_id_lr=0.02, **kwargs)
        groups = {g.get("name"): g["lr"] for g in model.configure_optimizers().param_groups}
        return model.text_is_weak(), groups.get("ids")

    assert ids_lr(["a product"] * 12) == (True, 0.02)
    assert ids_lr(KITCHEN + GARDEN) == (False, None)  # the optimizer's own lr
    # forced either way, and an explicit id_lr wins over both
    assert ids_lr(KITCHEN + GARDEN, weak_text=True) == (True, 0.02)
    assert ids_lr(["a product"] * 12, weak_text=False) == (False, None)
    assert ids_lr(["a product"] * 12, id_lr=0.005)[1] == 0.005
    with pytest.raises(ValueError, match="model.weak_text"):
        BertFinetune(_info(TEXTS), weak_text="maybe")


def test_weak_text_measure_logs_its_choice(caplog):
    model = BertFinetune(_grouped_info(["a product"] * 12, [0] * 6 + [1] * 6), bf16=False)
    with caplog.at_level("INFO", logger="recozoo.models.bert_finetune"):
        model.configure_optimizers()
    assert "item text is weak (same-user text AUC 0.500 < model.weak_text_auc 0.6)" in caplog.text
    assert "model.weak_text_id_lr=0.01" in caplog.text


def test_id_dropout_plays_warm_items_cold_in_training_only():
    texts = [f"item number {i} of the shop" for i in range(40)]
    model = BertFinetune(_info(texts, [5.0] * 40), id_dropout=0.5, dropout=0.0)
    with torch.no_grad():
        model.item_table()  # the ID embeddings start at the text vectors
        model.ids.embedding.weight.fill_(1.0)
        text = torch.nn.functional.normalize(model._cached_text(), dim=-1)

        def text_only_rows() -> int:
            table = model.item_table()[:-1]
            return int(torch.isclose(table, text, atol=1e-6).all(1).sum())

        torch.manual_seed(0)
        model.train()
        played_cold = text_only_rows()
        model.eval()
        assert text_only_rows() == 0  # scoring: every warm item has its ID part
    assert 10 <= played_cold <= 30  # about half of the 40 in training
    with pytest.raises(ValueError, match="model.id_dropout"):
        BertFinetune(_info(TEXTS), id_dropout=1.0)


def test_cold_items_are_placed_by_their_text_neighbours_when_scoring():
    """Item 2 is cold and has item 0's text: with one neighbour it takes item 0's vector (the
    same text moved by the same ID offset); in training, and with cold_neighbours=0, it keeps
    its text vector."""
    info = _info(TEXTS, [5.0, 4.0, 0.0, 2.0])
    placed = BertFinetune(info, cold_neighbours=1)
    kept = BertFinetune(info, cold_neighbours=0)
    with torch.no_grad():
        for model in (placed, kept):
            model.item_table()  # the ID embeddings start at the text vectors
            model.ids.embedding.weight.copy_(torch.randn(4, model.ids.embedding.weight.shape[1]))
        text = torch.nn.functional.normalize(placed._cached_text(), dim=-1)
        kept.ids.embedding.weight.copy_(placed.ids.embedding.weight)
        training = placed.item_table()
        placed.eval()
        kept.eval()
        scoring, unplaced = placed.item_table(), kept.item_table()
    torch.testing.assert_close(scoring[2], scoring[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scoring[0], text[0], atol=1e-3)  # item 0 left its text
    torch.testing.assert_close(training[2], text[2])
    torch.testing.assert_close(unplaced[2], text[2])
    torch.testing.assert_close(scoring[[0, 1, 3]], unplaced[[0, 1, 3]])  # warm items unmoved
    with pytest.raises(ValueError, match="model.cold_neighbours"):
        BertFinetune(info, cold_neighbours=-1)


def test_posthoc_adjustment_lowers_scores_by_tau_log_prior():
    """Scores are the plain ones minus τ log((n_i + 1) / Σ(n + 1)), so a rarer item gains on a
    popular one by τ log of their count ratio; an item without training interactions takes the
    mean offset of the trained ones; τ = 0 leaves the scores alone."""
    info = _info(TEXTS, [7.0, 3.0, 0.0, 1.0])
    plain = BertFinetune(info, posthoc_adjustment=0.0).eval()
    adjusted = BertFinetune(info, posthoc_adjustment=0.5).eval()
    adjusted.load_state_dict(plain.state_dict())
    batch = EvalBatch(user=torch.tensor([0, 1]), history=torch.tensor([[0, 1], [3, 3]]),
                      seen_rows=torch.tensor([0, 0, 1]), seen_cols=torch.tensor([0, 1, 3]),
                      target_rows=torch.tensor([0, 1]), target_cols=torch.tensor([2, 0]))
    with torch.no_grad():
        base, moved = plain.score(batch), adjusted.score(batch)
    warm = -0.5 * (torch.tensor([8.0, 4.0, 2.0]) / 15.0).log()  # items 0, 1, 3
    expected = torch.stack([warm[0], warm[1], warm.mean(), warm[2]])
    torch.testing.assert_close(moved - base, expected.expand(2, 4))
    # the rarest warm item (1 interaction) gains τ log 4 on the most popular one (7)
    gain = (moved[:, 3] - base[:, 3]) - (moved[:, 0] - base[:, 0])
    torch.testing.assert_close(gain, torch.full((2,), 0.5 * torch.tensor(4.0).log().item()))
    with pytest.raises(ValueError, match="model.posthoc_adjustment"):
        BertFinetune(info, posthoc_adjustment=-0.1)


def test_auto_posthoc_adjustment_raises_tau_while_within_tolerance_of_plain_scores():
    """posthoc_adjustment=auto scores plainly until it chooses; then τ rises through the grid
    while the validation value stays within the tolerance of τ = 0's (a better one included),
    and the first τ outside it ends the search; the choice is a persistent buffer, so a model
    loaded from the checkpoint scores with it."""
    info = _info(TEXTS, [7.0, 3.0, 0.0, 1.0])
    auto = BertFinetune(info, posthoc_tolerance=0.01,
                        posthoc_grid=[0.0, 0.1, 0.2, 0.3, 0.4]).eval()
    assert float(auto.posthoc_tau) == 0.0
    curve = {0.0: 0.300, 0.1: 0.2985, 0.2: 0.2971, 0.3: 0.2969, 0.4: 0.2990}
    tried = []

    def validate() -> float:
        tried.append(float(auto.posthoc_tau))
        return curve[tried[-1]]

    chosen = auto.choose_on_validation(validate)
    assert tried == [0.0, 0.1, 0.2, 0.3]  # .3 is outside: .4, within again, is not tried
    assert chosen["posthoc_adjustment"] == 0.2  # .2971 >= .300 - .003; .2969 is not
    assert chosen["posthoc_validation"] == {"0": 0.300, "0.1": 0.2985, "0.2": 0.2971,
                                            "0.3": 0.2969}
    # the default grid goes on to τ 1 where validation stays level (it costs nothing there)
    level = BertFinetune(info).eval()
    assert level.choose_on_validation(lambda: 0.3)["posthoc_adjustment"] == 1.0
    # no finite reference (e.g. no validation target the metric applies to): plain scores
    undefined = level.choose_on_validation(lambda: math.nan)
    assert undefined["posthoc_adjustment"] == 0.0 and list(undefined["posthoc_validation"]) == ["0"]
    assert float(level.posthoc_tau) == 0.0
    fixed = BertFinetune(info, posthoc_adjustment=0.2).eval()
    fixed.load_state_dict({k: v for k, v in auto.state_dict().items() if k != "posthoc_tau"})
    loaded = BertFinetune(info).eval()  # auto, as a run folder's hyper-parameters rebuild it
    loaded.load_state_dict(auto.state_dict())
    batch = EvalBatch(user=torch.tensor([0]), history=torch.tensor([[0, 1]]),
                      seen_rows=torch.tensor([0]), seen_cols=torch.tensor([0]),
                      target_rows=torch.tensor([0]), target_cols=torch.tensor([2]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(batch), fixed.score(batch))
    better = {0.0: 0.30, 0.1: 0.31, 0.2: 0.305, 0.3: 0.20, 0.4: 0.305}
    auto.posthoc_tau.fill_(0.0)
    assert auto.choose_on_validation(
        lambda: better[float(auto.posthoc_tau)])["posthoc_adjustment"] == 0.2
    assert fixed.choose_on_validation(lambda: 1.0) == {}  # a fixed τ chooses nothing
    with pytest.raises(ValueError, match="model.posthoc_grid"):
        BertFinetune(info, posthoc_grid=[0.1, 0.2])
    with pytest.raises(ValueError, match="model.posthoc_adjustment"):
        BertFinetune(info, posthoc_adjustment="high")


def test_a_run_writes_the_choice_into_its_best_checkpoint_and_metrics(make_config, monkeypatch):
    """train.py lets the model choose on validation with its best weights, writes the choice
    into checkpoints/best.ckpt (what the test, `recommend` and serving load) and metrics.json,
    and tests with it; the rest of the checkpoint stays as training saved it (with an EMA, the
    averaged weights, not the trained ones)."""
    import recozoo.train as train_module
    from conftest import train_and_read_choice

    as_trained = {}
    choose, drive = BertFinetune.choose_on_validation, train_module.choose_on_validation

    def moved(trainer, model, *args):  # weights that are not the best: the driver must load them
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        return drive(trainer, model, *args)

    def spy(self, validate):  # the best checkpoint before the choice is written into it
        best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
        as_trained.update(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
        for key, value in self.state_dict().items():  # it chooses with the best weights
            assert torch.equal(value.cpu(), as_trained[key]), key
        return choose(self, validate)

    monkeypatch.setattr(train_module, "choose_on_validation", moved)
    monkeypatch.setattr(BertFinetune, "choose_on_validation", spy)
    cfg = make_config(["model=bert_finetune", "model.max_epochs=2", "model.ema_decay=0.5"])
    record, values, state, served = train_and_read_choice(cfg, "posthoc_adjustment",
                                                          "posthoc_validation")
    chosen = record.chosen_on_validation
    tried = sorted(values)  # the grid, rising, up to the first τ outside the tolerance
    assert tried == [float(t) for t in cfg.model.posthoc_grid][:len(tried)]
    within = [t for t in tried if values[t] >= values[0.0] - 0.01 * abs(values[0.0])]
    assert within == tried[:len(within)] and len(tried) - len(within) <= 1
    assert chosen["posthoc_adjustment"] == within[-1]
    assert float(state["posthoc_tau"]) == chosen["posthoc_adjustment"]
    assert as_trained and state.keys() == as_trained.keys()
    for key, value in as_trained.items():
        if key != "posthoc_tau":
            assert torch.equal(state[key], value), key
    # serving rebuilds the model and scores with the choice
    assert float(served.posthoc_tau) == chosen["posthoc_adjustment"]


def test_init_from_starts_a_second_phase_from_an_earlier_checkpoint(tmp_path):
    """A fine-tuning phase (train_layers=1) starts from a frozen model's trained weights."""
    info = _info(TEXTS, [5.0, 4.0, 0.0, 2.0])
    frozen = BertFinetune(info, train_layers=0, posthoc_adjustment="auto")
    with torch.no_grad():
        frozen.item_table()  # ID embeddings initialised
        frozen.adapter.weight.normal_()
        frozen.ids.embedding.weight.mul_(2.0)
        frozen.posthoc_tau.fill_(0.2)  # chosen on the first phase's validation
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": frozen.state_dict()}, path)
    phase2 = BertFinetune(info, train_layers=1, init_from=str(path))
    torch.testing.assert_close(phase2.adapter.weight, frozen.adapter.weight)
    torch.testing.assert_close(phase2.ids.embedding.weight, frozen.ids.embedding.weight)
    assert bool(phase2.ids.initialised)  # not reset to the text vectors on first use
    # the first phase's τ is not the second's: its validations score plain until it chooses
    assert float(BertFinetune(info, train_layers=1, posthoc_adjustment="auto",
                              init_from=str(path)).posthoc_tau) == 0.0
    assert _trainable(phase2.text) and not _trainable(frozen.text)
    with pytest.raises(ValueError, match="model.init_from: no checkpoint"):
        BertFinetune(info, init_from=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"other.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a bert_finetune checkpoint"):
        BertFinetune(info, init_from=str(tmp_path / "other.ckpt"))


def test_encoder_layers_that_train_wait_for_the_plateau_by_default():
    """train_layers > 0 hands the layers to `FinetuneOnPlateau` (frozen until validation
    plateaus); train_layers=0 has nothing to hand over; finetune_start=start trains them at once."""
    from recozoo.training_callbacks import FinetuneOnPlateau

    def finetuning(**kwargs) -> FinetuneOnPlateau | None:
        model = BertFinetune(_info(TEXTS), **kwargs)
        found = [c for c in model.configure_callbacks() if isinstance(c, FinetuneOnPlateau)]
        return found[0] if found else None

    assert finetuning(train_layers=0) is None
    plateau = finetuning(train_layers=1, encoder_lr=3e-5, encoder_warmup=7)
    assert plateau.start == "plateau" and plateau.lr == 3e-5 and plateau.warmup == 7
    assert len(plateau.parameters) == 16  # one MiniLM layer: attention, output, 2 layer norms
    assert finetuning(train_layers=1, finetune_start="start").start == "start"
    with pytest.raises(ValueError, match="model.finetune_start"):
        BertFinetune(_info(TEXTS), train_layers=1, finetune_start="later")


def test_a_run_fine_tunes_the_top_layer_in_its_last_epochs(make_config):
    """The training command end to end: the frozen phase, then the top layer alone (here at
    the cap: 3 epochs, the third fine-tunes), with the trained weights in last.ckpt."""
    from recozoo.train import run

    cfg = make_config(["model=bert_finetune", "model.train_layers=1", "trainer.max_epochs=3",
                       "model.encoder_lr=1e-3"])
    run(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                      weights_only=False)["current_model_state"]
    pretrained = BertFinetune(_info(TEXTS)).text.encoder.state_dict()
    top = "text.encoder.encoder.layer.5.output.dense.weight"
    bottom = "text.encoder.encoder.layer.0.output.dense.weight"
    assert not torch.equal(last[top], pretrained[top.removeprefix("text.encoder.")])
    torch.testing.assert_close(last[bottom], pretrained[bottom.removeprefix("text.encoder.")])
