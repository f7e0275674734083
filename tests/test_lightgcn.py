"""LightGCN: sparse propagation equals a dense reference on a tiny graph; the eval-mode cache
follows training; the checkpoint carries the graph; it learns an obvious pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recozoo.data.contracts import DatasetInfo, EvalBatch
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


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_learns_co_interaction_pattern(loss: str):
    """Two communities (users 0-9 with items 0-4, users 10-19 with items 5-9), one item of each
    user's community held out: after training it outranks every item of the other community."""
    torch.manual_seed(0)
    users, items = [], []
    for user in range(20):
        community = range(5) if user < 10 else range(5, 10)
        for item in community:
            if item != (user % 5) + (0 if user < 10 else 5):  # hold one out
                users.append(user)
                items.append(item)
    pairs = torch.tensor([users, items])
    info = DatasetInfo.from_popularity("communities", 20, np.ones(10), 0.2, train_pairs=pairs)
    model = LightGCN(info, embedding_dim=8, n_layers=2, reg_weight=0.0, loss=loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        negative = torch.randint(0, 10, (len(users), 1), generator=generator)
        batch = {"user": pairs[0], "item": pairs[1], "negative": negative}
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    final_users, final_items = model.final_embeddings()
    if model.normalize:  # the softmax default ranks by cosine
        final_users = F.normalize(final_users, dim=-1)
        final_items = F.normalize(final_items, dim=-1)
    scores = final_users @ final_items.T  # (20, 10)
    for user in range(20):
        held_out = (user % 5) + (0 if user < 10 else 5)
        other = range(5, 10) if user < 10 else range(5)
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


def _pair_batch() -> dict[str, torch.Tensor]:
    return {"user": torch.tensor([0, 1, 2]), "item": torch.tensor([1, 2, 3]),
            "negative": torch.tensor([[3], [0], [1]])}


def test_softmax_loss_is_cross_entropy_over_the_catalogue():
    """loss=softmax: -log softmax(<u, i> / temperature) of the positive among all 4 items."""
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=2, reg_weight=0.0, loss="softmax",
                     temperature=0.5, normalize=False, sampled_softmax=False)
    batch = _pair_batch()
    users, items = _dense_reference(model)
    logits = users[batch["user"]] @ items.T / 0.5  # (3, 4)
    expected = -(logits.log_softmax(1)[torch.arange(3), batch["item"]]).mean()
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sampled_softmax_loss_has_the_log_q_correction():
    """Uniform sampling (Q = 1/4), k = 6 shared negatives: each negative's logit is lowered by
    log(k Q) = log(1.5), and a negative equal to the row's positive is left out."""
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=1, reg_weight=0.0, loss="softmax",
                     temperature=1.0, normalize=False, sampled_softmax=True, n_sampled=6,
                     negative_sampling="uniform")
    batch = _pair_batch()
    torch.manual_seed(3)
    loss = model.loss(batch)
    torch.manual_seed(3)
    negatives = model.negative_sampler(6)  # the same draw
    users, items = _dense_reference(model)
    u = users[batch["user"]]
    expected = []
    for row, pos in enumerate(batch["item"].tolist()):
        terms = [u[row] @ items[pos]] + [u[row] @ items[j] - np.log(6 / 4)
                                         for j in negatives.tolist() if j != pos]
        expected.append(torch.logsumexp(torch.stack(terms), 0) - terms[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_normalize_scores_are_cosines_over_the_temperature():
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=2, normalize=True,
                     temperature=0.2, fold_in=False).eval()
    users, items = _dense_reference(model)
    empty = torch.zeros(0, dtype=torch.long)
    batch = EvalBatch(user=torch.tensor([0, 2]), history=torch.zeros(2, 1, dtype=torch.long),
                      seen_rows=empty, seen_cols=empty, target_rows=empty, target_cols=empty)
    cosine = torch.nn.functional.cosine_similarity(users[[0, 2], None], items[None], dim=-1)
    assert torch.allclose(model.score(batch), cosine / 0.2, atol=1e-5)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("loss", "hinge", "model.loss must be 'bpr' or 'softmax', got 'hinge'"),
    ("temperature", 0.0, "model.temperature must be > 0, got 0.0"),
    ("n_sampled", 0, "model.n_sampled must be >= 1, got 0"),
])
def test_bad_options_are_named(key: str, value: object, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LightGCN(_info(), **{key: value})


def _eval_batch(users: list[int], seen: list[tuple[int, int]]) -> EvalBatch:
    rows, cols = (torch.tensor(x) for x in zip(*seen))
    return EvalBatch(user=torch.tensor(users), history=torch.zeros(len(users), 1, dtype=torch.long),
                     seen_rows=rows, seen_cols=cols, target_rows=torch.tensor([0]),
                     target_cols=torch.tensor([0]))


def test_fold_in_with_the_training_items_is_the_transductive_embedding():
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=3, fold_in=True, normalize=False,
                     temperature=1.0).eval()
    users, items = _dense_reference(model)
    # rows 0, 1, 2 = users 0, 1, 2 with their training items (user 2's duplicate once)
    batch = _eval_batch([0, 1, 2], [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)])
    assert torch.allclose(model.fold_in_users(batch), users, atol=1e-6)
    assert torch.allclose(model.score(batch), users @ items.T, atol=1e-5)


def test_fold_in_adds_a_new_input_with_the_training_degrees():
    """User 2 (trained on item 3) with a new input, item 0 (training degree 1): its layer 1 is
    (E_3^(0) / sqrt(1) + E_0^(0) / sqrt(1)) / sqrt(2)."""
    torch.manual_seed(0)
    model = LightGCN(_info(), embedding_dim=5, n_layers=1, fold_in=True).eval()
    batch = _eval_batch([2], [(0, 3), (0, 0)])
    items = model.item_embedding.weight.detach()
    layer1 = (items[3] + items[0]) / 2 ** 0.5
    expected = (model.user_embedding.weight[2].detach() + layer1) / 2
    assert torch.allclose(model.fold_in_users(batch)[0], expected, atol=1e-6)
