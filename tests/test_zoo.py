"""Behaviour of the neural zoo beyond the shared contract (tests/test_model_contract.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from recozoo.models.components.sequence import (
    CaserEncoder,
    CausalTransformerEncoder,
    GRUEncoder,
    by_history_length,
    trim_leading_padding,
)
from recozoo.train import build_experiment


def _setup(cfg):
    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    return experiment.datamodule, experiment.model


def _trainer(steps: int, max_epochs: int = 1) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, limit_train_batches=steps, limit_val_batches=0, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "caser"])
def test_every_position_of_a_window_is_trained_and_sees_only_its_past(make_config, name):
    """One pass over a window trains every (prefix, next item) pair: every real input position
    has a target, and the state at a position does not change when later items do."""
    cfg = make_config([f"model={name}", "model.max_len=8"])
    dm, model = _setup(cfg)
    model.eval()  # no dropout: compare exact numbers
    batch = next(iter(dm.train_dataloader()))
    inputs, target = batch["input"], batch["target"]
    is_item = inputs != dm.info.pad_item
    assert torch.equal(target != -100, is_item)  # every position is a target
    assert is_item[:, -1].all()  # the window ends with the newest item (left padding)
    with torch.no_grad():
        states = model.encode(inputs, batch["user"])  # (B, 8, d)
        for cut in range(8):
            future = inputs.clone()
            future[:, cut + 1:] = torch.randint(0, dm.info.n_items, future[:, cut + 1:].shape)
            changed = model.encode(future, batch["user"])
            assert torch.allclose(states[:, :cut + 1], changed[:, :cut + 1], atol=1e-5)
        logits = model.item_logits(states[is_item])  # (N, n_items)
        expected = torch.nn.functional.cross_entropy(logits, target[is_item])
        assert torch.allclose(model.loss(batch), expected, atol=1e-5)


def test_sasrec_attends_to_neither_the_future_nor_padding():
    torch.manual_seed(0)
    encoder = CausalTransformerEncoder(n_items=20, dim=16, num_layers=2, num_heads=2, max_len=6,
                                       dropout=0.0).eval()
    seq = torch.tensor([[20, 20, 3, 5, 7, 9]])
    changed_future = torch.tensor([[20, 20, 3, 5, 11, 12]])
    with torch.no_grad():
        a, b = encoder(seq), encoder(changed_future)
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
        assert not torch.allclose(a[:, 4:], b[:, 4:])
        # the same items with a shorter window (less padding) give the same states
        assert torch.allclose(encoder(seq[:, 2:]), a[:, 2:], atol=1e-5)
        assert torch.all(a[:, :2] == 0)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_sasrec_last_state_is_the_last_column_of_every_state(num_layers):
    torch.manual_seed(0)
    encoder = CausalTransformerEncoder(n_items=30, dim=16, num_layers=num_layers, num_heads=2,
                                       max_len=8, dropout=0.1).eval()
    seq = torch.randint(0, 30, (5, 8))
    seq[0, :5] = 30  # left padding
    seq[1, :] = 30  # nothing at all
    with torch.no_grad():
        assert torch.allclose(encoder.last_state(seq), encoder(seq)[:, -1], atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_runs_padding_once_and_scores_each_row_from_its_first_item(num_layers):
    """The GRU runs the columns that are padding in every row once, for one row, and the batch
    from where that ends (training, gradients included); scoring steps each row from its own
    first item (`gru_last_state`). Both give the plain pass's states, for rows of every length,
    a row of padding alone and a full row; the gradients too."""
    torch.manual_seed(0)
    n_items, width = 40, 9
    encoder = GRUEncoder(n_items, dim=12, num_layers=num_layers, dropout=0.0)
    seq = torch.full((7, width), n_items)
    for row, n in enumerate([6, 0, 1, 4, 6, 2, 5]):  # the 3 oldest columns: padding in every row
        if n:
            seq[row, -n:] = torch.randint(0, n_items, (n,))

    def plain():
        return encoder.gru(encoder.embedding(seq))[0]

    weights = list(encoder.parameters())
    expected = plain()
    trimmed = encoder(seq)
    torch.testing.assert_close(trimmed, expected, atol=1e-6, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(trimmed.square().sum(), weights),
                         torch.autograd.grad(expected.square().sum(), weights)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.last_state(seq), plain()[:, -1], atol=1e-6, rtol=1e-5)
        # padding moves a GRU's state: the same items after less padding end elsewhere
        assert not torch.allclose(encoder.last_state(seq[:, -4:])[3], expected[3, -1], atol=1e-4)


@pytest.mark.parametrize("width", [2, 9])
def test_caser_last_state_is_the_newest_window_of_every_state(width):
    """Scoring reads the window ending at the newest item alone: the full pass's last column,
    for histories shorter than the window and for none at all."""
    torch.manual_seed(0)
    n_items, n_users = 30, 4
    encoder = CaserEncoder(n_items, n_users, dim=8, window=4, user_init_std=None).eval()
    seq = torch.full((4, width), n_items)
    for row, n in enumerate([width, 1, 0, min(3, width)]):
        if n:
            seq[row, -n:] = torch.randint(0, n_items, (n,))
    user = torch.arange(4)
    with torch.no_grad():
        torch.testing.assert_close(encoder.last_state(seq, user), encoder(seq, user)[:, -1])


def test_trim_leading_padding_keeps_every_column_some_row_uses():
    pad = 9
    seq = torch.tensor([[pad, pad, pad, 1], [pad, pad, 2, 3]])
    assert trim_leading_padding(seq, pad).tolist() == [[pad, 1], [2, 3]]
    assert trim_leading_padding(torch.full((2, 4), pad), pad).shape == (2, 1)


def test_users_grouped_by_history_length_get_their_own_rows_back():
    """`by_history_length` hands each group its rows of the batch and its histories trimmed to
    the group's longest; the results come back in the batch's order."""
    pad = 99
    lengths = [5, 1, 3, 0, 2, 4, 1]
    seq = torch.full((7, 6), pad)
    for row, n in enumerate(lengths):
        if n:
            seq[row, -n:] = torch.arange(n) + 10 * row
    widths = []

    def encode(rows, history):
        widths.append(history.shape[1])
        rows = torch.arange(len(seq)) if rows is None else rows
        assert torch.equal(history, seq[rows][:, -history.shape[1]:])  # trimmed, not cut
        return torch.stack([rows.float(), (history != pad).sum(1).float()], dim=1)

    out = by_history_length(seq, pad, encode, group_rows=3)
    assert out[:, 0].tolist() == list(range(7)) and out[:, 1].tolist() == lengths
    assert widths == [1, 4, 5]  # sorted lengths 0, 1, 1 | 2, 3, 4 | 5


def test_sasrec_scores_groups_of_similar_histories_as_the_whole_batch(make_config,
                                                                       monkeypatch):
    """SASRec scores users in groups by history length, each no wider than its longest history:
    the same scores as the whole batch at full width."""
    cfg = make_config(["model=sasrec", "model.max_len=12"])
    dm, model = _setup(cfg)
    _trainer(steps=2).fit(model, datamodule=dm)
    model.eval()
    users = dm.eval_users["test"][:24]
    batch = dm.eval_batch("test", users)
    lengths = (batch.history[:, -12:] != dm.info.pad_item).sum(1)
    assert lengths.min() < 12 and len(set(lengths.tolist())) > 2  # varied short histories
    monkeypatch.setattr("recozoo.models.components.sequence.GROUP_ROWS", 5)
    with torch.no_grad():
        grouped = model.score(batch).clone()
        model.leading_padding_inert = False  # one pass at the full width
        whole = model.score(batch)
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "caser"])
def test_training_drops_the_columns_that_are_padding_in_every_row(make_config, name):
    """A training batch of SASRec or Caser drops the columns that are padding in every row: the
    same loss and gradients as at full width (dropout off)."""
    cfg = make_config([f"model={name}", "model.max_len=12"])
    dm, model = _setup(cfg)
    model.eval()  # no dropout: compare exact numbers
    batch = next(iter(dm.train_dataloader()))
    pad = dm.info.pad_item
    keep = 5  # only the 5 newest columns hold items
    batch["input"][:, :-keep] = pad
    batch["target"][:, :-keep] = -100
    assert (batch["input"][:, -1] != pad).all()
    weights = [p for p in model.parameters() if p.requires_grad]
    trimmed = model.loss(batch)
    got = torch.autograd.grad(trimmed, weights, allow_unused=True)
    model.leading_padding_inert = False  # the full width
    whole = model.loss(batch)
    want = torch.autograd.grad(whole, weights, allow_unused=True)
    torch.testing.assert_close(trimmed, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_sasrec_evaluation_blocks_compute_what_training_blocks_compute(num_heads):
    """Evaluation runs the blocks batch-first on their own weights (`pre_norm_block`);
    training runs nn.TransformerEncoder. With dropout off both give the same states, padding
    included."""
    torch.manual_seed(0)
    encoder = CausalTransformerEncoder(n_items=30, dim=16, num_layers=2, num_heads=num_heads,
                                       max_len=8, dropout=0.0)
    seq = torch.randint(0, 30, (6, 8))
    seq[0, :5] = 30
    seq[1, :] = 30
    with torch.no_grad():
        trained = encoder.train()(seq)  # nn.TransformerEncoder (no dropout to draw)
        evaluated = encoder.eval()(seq)
        assert torch.allclose(evaluated, trained, atol=1e-5)
        assert torch.allclose(encoder.last_state(seq), trained[:, -1], atol=1e-5)


def test_multvae_annealing_survives_checkpoint_and_resume(make_config, tmp_path):
    cfg = make_config(["model=multvae", "model.batch_size=16", "model.total_anneal_steps=10"])
    dm, model = _setup(cfg)
    trainer = _trainer(steps=3)
    trainer.fit(model, datamodule=dm)
    assert model.anneal_step == 3
    assert model.beta == pytest.approx(min(0.2, 3 / 10))
    path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(path)

    restored = type(model).load_from_checkpoint(path, info=dm.info, weights_only=True)
    assert restored.anneal_step == 3

    _, fresh = _setup(cfg)  # a new process resuming the run continues the schedule
    assert fresh.anneal_step == 0
    resumed = _trainer(steps=3, max_epochs=2)
    resumed.fit(fresh, datamodule=dm, ckpt_path=str(path))
    assert fresh.anneal_step == 6
    assert fresh.beta == pytest.approx(0.2)


def test_multdae_has_no_kl_term_and_multvae_has_one(make_config):
    dm, dae = _setup(make_config(["model=multdae"]))
    batch = next(iter(dm.train_dataloader()))
    dae.eval()
    assert batch["rows"].is_sparse  # TrainView(sparse_rows=True): the loss reads the inputs
    logits, _, logvar = dae.net(batch["rows"])
    assert logvar is None
    rows = batch["rows"].to_dense()  # the expected loss, written out over the dense rows
    expected = -(torch.log_softmax(logits, 1) * rows).sum(1).mean()
    assert torch.allclose(dae.loss(batch), expected, atol=1e-4)

    _, vae = _setup(make_config(["model=multvae", "model.total_anneal_steps=1"]))
    vae.anneal_step = 1  # beta at its cap: the loss adds 0.2 * KL
    vae.eval()
    logits, mu, logvar = vae.net(rows)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
    nll = -(torch.log_softmax(logits, 1) * rows).sum(1).mean()
    assert torch.allclose(vae.loss(batch), nll + 0.2 * kl, atol=1e-4)


def test_cfgan_updates_generator_and_discriminator_with_two_optimisers(make_config):
    dm, model = _setup(make_config(["model=cfgan"]))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = _trainer(steps=2)
    trainer.fit(model, datamodule=dm)
    assert len(trainer.optimizers) == 2
    for part in ("generator", "discriminator"):
        moved = [not torch.equal(before[name], p) for name, p in model.named_parameters()
                 if name.startswith(part)]
        assert all(moved), f"{part} parameters were not all updated"


def test_caser_user_embeddings_step_at_their_own_learning_rate(make_config):
    """With SGD, one step moves the user rows ``user_lr_scale`` times as far as at scale 1 and
    every other weight exactly as far."""
    moved = {}
    for scale in (1.0, 10.0):
        cfg = make_config(["model=caser", "model.max_len=8", f"model.user_lr_scale={scale}",
                           "~model.optimizer", "+model.optimizer._target_=torch.optim.SGD",
                           "+model.optimizer._partial_=true", "+model.optimizer.lr=0.1"])
        dm, model = _setup(cfg)
        model.eval()  # no dropout: the same gradients at both scales
        optimizer = model.configure_optimizers()
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        model.loss(next(iter(dm.train_dataloader()))).backward()
        optimizer.step()
        moved[scale] = {name: p.detach() - before[name] for name, p in model.named_parameters()}
    users = "encoder.user_embedding.weight"
    assert moved[1.0][users].abs().sum() > 0
    assert torch.allclose(moved[10.0][users], 10 * moved[1.0][users], atol=1e-6)
    for name, step in moved[1.0].items():
        if name != users:
            assert torch.allclose(moved[10.0][name], step, atol=1e-6), name
    with pytest.raises(ValueError, match="user_lr_scale must be > 0"):
        _setup(make_config(["model=caser", "model.user_lr_scale=0"]))


def test_caser_user_rows_start_at_zero_and_learn_from_there(make_config):
    """``user_init_std=0``: an untrained user adds nothing to the scores (they equal those of
    any other user with the same window), and one step moves the rows of the batch's users."""
    cfg = make_config(["model=caser", "model.max_len=8", "model.user_init_std=0"])
    dm, model = _setup(cfg)
    users = model.encoder.user_embedding.weight
    assert not users.detach().any()
    model.eval()
    seq = torch.randint(0, model.info.n_items, (1, 8))
    assert torch.equal(model.encode(seq, torch.tensor([0])), model.encode(seq, torch.tensor([1])))
    batch = next(iter(dm.train_dataloader()))
    optimizer = model.configure_optimizers()
    model.loss(batch).backward()
    optimizer.step()
    touched = torch.zeros(len(users), dtype=torch.bool)
    touched[batch["user"]] = True
    assert users.detach()[touched].abs().sum(1).gt(0).all()
    assert not users.detach()[~touched].any()
    with pytest.raises(ValueError, match="user_init_std must be >= 0"):
        _setup(make_config(["model=caser", "model.user_init_std=-1"]))
