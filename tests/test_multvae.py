"""Mult-VAE's network against RecBole 1.2.1's MultiVAE, written out by hand (issue 16)."""

from __future__ import annotations

import torch

from recozoo.models.components.autoencoder import MultVAENet


def _recbole_forward(net: MultVAENet, rows: torch.Tensor) -> torch.Tensor:
    """RecBole 1.2.1 MultiVAE.forward at evaluation (no dropout, z = mu), with ``net``'s
    weights: L2-normalised input, Linear-tanh-Linear encoder whose output is (mu, logvar),
    Linear-tanh-Linear decoder, raw logits out."""
    first, second = net.encoder[0], net.encoder[2]  # the first holds a weight row per item
    dec = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Linear)]
    h = torch.nn.functional.normalize(rows)
    h = second(torch.tanh(h @ first.weight + first.bias))
    mu = h[:, :net.latent]
    return dec[1](torch.tanh(dec[0](mu)))


def test_evaluation_forward_is_recboles() -> None:
    torch.manual_seed(0)
    net = MultVAENet(n_items=12, hidden=[7], latent=3, dropout=0.5).eval()
    rows = (torch.rand(5, 12) < 0.4).float()
    rows[0, :] = 0.0
    rows[0, 2] = 1.0  # one item: the normalised row is that item's one-hot
    logits, mu, logvar = net(rows)
    assert logits.shape == (5, 12) and mu.shape == (5, 3) and logvar.shape == (5, 3)
    assert torch.allclose(logits, _recbole_forward(net, rows), atol=1e-6)
    # the input is L2-normalised: a row and twice the row get the same scores
    assert torch.allclose(net(2 * rows)[0], logits, atol=1e-6)


def test_training_noise_is_scaled_by_sampling_std() -> None:
    torch.manual_seed(0)
    rows = (torch.rand(6, 10) < 0.5).float()
    net = MultVAENet(n_items=10, hidden=[8], latent=4, dropout=0.0, sampling_std=0.0)
    with torch.no_grad():
        net.eval()
        clean = net(rows)[0]
        net.train()
        assert torch.allclose(net(rows)[0], clean)  # no noise at std 0
        gaps = {}
        for std in (0.01, 1.0):
            net.sampling_std = std
            gaps[std] = (net(rows)[0] - clean).abs().mean().item()
    assert 0 < gaps[0.01] < gaps[1.0] / 10


def test_sparse_rows_score_as_the_dense_rows() -> None:
    """Scoring passes the inputs as a sparse matrix (EvalBatch.seen_sparse); the first layer
    then multiplies only the inputs, and the scores are the dense rows' (empty rows included)."""
    torch.manual_seed(0)
    net = MultVAENet(n_items=12, hidden=[7], latent=3, dropout=0.5).eval()
    rows = (torch.rand(5, 12) < 0.4).float()
    rows[3, :] = 0.0  # a user without inputs
    assert torch.allclose(net(rows.to_sparse())[0], _recbole_forward(net, rows), atol=1e-6)
    net.train()
    net.dropout.p, net.sampling_std = 0.0, 0.0  # training mode, nothing random
    assert torch.allclose(net(rows.to_sparse())[0], net(rows)[0], atol=1e-6)


def test_training_loss_reads_sparse_rows_as_the_dense_rows() -> None:
    """Training feeds Mult-VAE/DAE sparse rows (TrainView sparse_rows); with nothing random the
    loss and its gradients are the dense rows', with and without inverse-propensity weights."""
    from recozoo.data.contracts import DatasetInfo
    from recozoo.models.multvae import MultVAE

    torch.manual_seed(0)
    rows = (torch.rand(6, 12) < 0.4).float()
    rows[2, :] = 0.0  # a user without inputs
    info = DatasetInfo(name="tiny", n_users=6, n_items=12, item_popularity=rows.sum(0),
                       tail_mask=torch.zeros(12, dtype=torch.bool), head_share=0.2)
    model = MultVAE(info, hidden=[7], latent=3, dropout=0.0, variational=False)
    assert model.train_view().sparse_rows
    for weight in (None, torch.rand(12) + 0.5):
        model.positive_weight = weight
        losses, grads = [], []
        for batch_rows in (rows, rows.to_sparse()):
            model.zero_grad()
            loss = model.loss({"user": torch.arange(6), "rows": batch_rows})
            loss.backward()
            losses.append(loss.detach())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert torch.allclose(losses[0], losses[1], atol=1e-5)
        assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_checkpoints_of_the_linear_first_layer_load_transposed() -> None:
    """The encoder's first layer (`ItemRowsLinear`) keeps a weight row per item; a checkpoint
    saved when it was an nn.Linear (out, in) loads transposed, into the same scores, also when
    the layer is square; its own checkpoints load as they are."""
    from torch import nn

    torch.manual_seed(0)
    rows = (torch.rand(5, 12) < 0.4).float()
    for hidden in (7, 12):  # 12: as many units as items, where only the version tells
        net = MultVAENet(n_items=12, hidden=[hidden], latent=3).eval()
        first = net.encoder[0]
        old = nn.Sequential(nn.Linear(12, hidden), *list(net.encoder)[1:])
        with torch.no_grad():
            old[0].weight.copy_(first.weight.t())
            old[0].bias.copy_(first.bias)
        saved_old, saved_new = old.state_dict(), net.encoder.state_dict()
        for saved in (saved_old, saved_new):
            fresh = MultVAENet(n_items=12, hidden=[hidden], latent=3).eval()
            fresh.decoder.load_state_dict(net.decoder.state_dict())
            fresh.encoder.load_state_dict(saved)
            assert torch.equal(fresh.encoder[0].weight, first.weight)
            assert torch.allclose(fresh(rows)[0], net(rows)[0])


def test_sparse_dropout_keeps_only_the_surviving_inputs() -> None:
    """In training the sparse input holds only the inputs dropout kept, each L2-normalised and
    scaled by 1 / (1 - p); the first layer of it equals the dense layer of the same dropped rows
    (forward and weight gradient)."""
    torch.manual_seed(0)
    rows = (torch.rand(8, 30) < 0.5).float()
    rows[5, :] = 0.0  # a user without inputs
    net = MultVAENet(n_items=30, hidden=[6], latent=2, dropout=0.5).train()
    dropped = net._normalised_input(rows.to_sparse())
    assert bool((dropped.values() != 0).all())
    assert 0 < dropped._nnz() < int(rows.sum())  # some inputs dropped, some kept
    kept = dropped.to_dense() != 0
    assert bool(rows[kept].eq(1).all())  # only inputs survive
    expected = torch.nn.functional.normalize(rows, dim=1) * kept / 0.5
    assert torch.allclose(dropped.to_dense(), expected, atol=1e-6)
    first = net.encoder[0]
    sparse_out = first(dropped)
    grad_out = torch.randn_like(sparse_out)
    (sparse_grad,) = torch.autograd.grad(sparse_out, first.weight, grad_out)
    dense_out = first(expected)
    (dense_grad,) = torch.autograd.grad(dense_out, first.weight, grad_out)
    assert torch.allclose(sparse_out, dense_out, atol=1e-5)
    assert torch.allclose(sparse_grad, dense_grad, atol=1e-5)


def test_scores_in_the_memory_a_batch_offers_are_the_decoders():
    """Mult-VAE/DAE score a user by the decoder's logits for the mean code; the last layer's
    product is written into the memory an evaluation batch offers (the `Ranker`'s, reused)."""
    import math

    from recozoo.data.contracts import DatasetInfo, EvalBatch
    from recozoo.models.multvae import MultVAE

    torch.manual_seed(0)
    info = DatasetInfo(name="tiny", n_users=2, n_items=6, item_popularity=torch.ones(6),
                       tail_mask=torch.zeros(6, dtype=torch.bool), head_share=0.2)
    batch = EvalBatch(user=torch.tensor([0, 1]), history=torch.tensor([[0], [1]]),
                      seen_rows=torch.tensor([0, 0, 1]), seen_cols=torch.tensor([0, 2, 1]),
                      target_rows=torch.tensor([0]), target_cols=torch.tensor([3]))
    for variational in (True, False):
        model = MultVAE(info, hidden=[5], latent=3, variational=variational).eval()
        with torch.no_grad():
            expected = model.net(batch.seen_matrix(6))[0]  # the forward's logits (z = mu)
            assert torch.allclose(model.score(batch), expected, atol=1e-6)
            batch.scores_out = torch.full_like(expected, math.nan)
            scores = model.score(batch)
            assert scores.data_ptr() == batch.scores_out.data_ptr()
            assert torch.allclose(scores, expected, atol=1e-6)
            batch.scores_out = None
