"""LightGCN: sparse propagation equals a dense reference on a tiny graph; the eval-mode cache
follows training; the checkpoint carries the graph; it learns an obvious pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recozoo.data.contracts import DatasetInfo
from recozoo.models.lightgcn import LightGCN, propagate

#: 3 users, 4 items: user 0 - items 0, 1; user 1 - item 1, 2; user 2 - item 3 (a duplicate)
PAIRS = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 3, 3]])


def _info(pairs: torch.Tensor | None = PAIRS) -> DatasetInfo:
    return DatasetInfo.from_popularity("tiny", 3, np.ones(4), 0.25, train_pairs=pairs)


def _dense_reference(model: LightGCN) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's eq. 7-8 with a dense adjacency written out by hand."""
    n_users, n_items = 3, 4
    a = torch.zeros(n_users + n_items, n_users + n_items)
    for user, item in {(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)}:
        a[user, n_users + item] = a[n_users + item, user] = 1.0
    degree = a.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    norm = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    layer = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    layers = [layer]
    for _ in range(model.n_layers):
        layer = norm @ layer
        layers.append(layer)
    final = torch.stack(layers).mean(0)
    return final[:n_users], final[n_users:]


def test_sparse_propagation_equals_dense_reference():
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=3).eval()
    users, items = model.final_embeddings()
    ref_users, ref_items = _dense_reference(model)
    assert torch.allclose(users, ref_users, atol=1e-6)
    assert torch.allclose(items, ref_items, atol=1e-6)
    # the normalised adjacency itself: 1/sqrt(d_u d_i), the duplicate pair counted once
    dense = model.adjacency().to_dense()
    assert dense[0, 3 + 1].item() == pytest.approx(0.5)  # user 0 (degree 2), item 1 (degree 2)
    assert dense[2, 3 + 3].item() == pytest.approx(1.0)  # user 2 (degree 1), item 3 (degree 1)


def test_zero_layers_is_matrix_factorisation():
    x = torch.randn(6, 3)
    assert torch.equal(propagate(torch.eye(6), x, 0), x)


def test_eval_cache_is_dropped_when_training_resumes():
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=4, n_layers=2).eval()
    first = model.final_embeddings()
    assert model.final_embeddings() is first  # cached in eval mode
    model.train()
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    model.eval()
    users, _ = model.final_embeddings()
    assert not torch.allclose(users, first[0])
    assert torch.allclose(users, _dense_reference(model)[0], atol=1e-6)


def test_checkpoint_carries_the_graph_for_a_model_rebuilt_without_it():
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=4, n_layers=2).eval()
    rebuilt = LightGCN(_info(pairs=None), embedding_dim=4, n_layers=2)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.allclose(rebuilt.final_embeddings()[0], model.final_embeddings()[0])
    # the edges are data: the parameter count is the embeddings alone
    assert model.n_params == (3 + 4) * 4


def test_learns_co_interaction_pattern():
    """Two communities (users 0-9 with items 0-4, users 10-19 with items 5-9), one item of each
    user's community held out: after training it outranks every item of the other community."""
    torch.manual_seed(0)
    users, items = [], []
    for user in range(20):
        community = range(0, 5) if user < 10 else range(5, 10)
        for item in community:
            if item != (user % 5) + (0 if user < 10 else 5):  # hold one out
                users.append(user)
                items.append(item)
    pairs = torch.tensor([users, items])
    info = DatasetInfo.from_popularity("communities", 20, np.ones(10), 0.2, train_pairs=pairs)
    model = LightGCN(info, embedding_dim=8, n_layers=2, reg_weight=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        negative = torch.randint(0, 10, (len(users), 1), generator=generator)
        batch = {"user": pairs[0], "item": pairs[1], "negative": negative}
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    final_users, final_items = model.final_embeddings()
    scores = final_users @ final_items.T  # (20, 10)
    for user in range(20):
        held_out = (user % 5) + (0 if user < 10 else 5)
        other = range(5, 10) if user < 10 else range(0, 5)
        assert scores[user, held_out] > scores[user, list(other)].max()


def test_training_after_validation_ignores_the_eval_cache():
    """Lightning restores training mode by setting ``module.training`` directly, not through
    ``train()``: the loss must still reach the embeddings through the propagation."""
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=4, n_layers=2, reg_weight=0.0).eval()
    model.final_embeddings()  # validation fills the cache
    for module in model.modules():
        module.training = True
    batch = {"user": torch.tensor([0, 1]), "item": torch.tensor([1, 2]),
             "negative": torch.tensor([[3], [0]])}
    model.loss(batch).backward()
    assert model.user_embedding.weight.grad is not None
    assert model.user_embedding.weight.grad.abs().sum() > 0
