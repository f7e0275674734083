"""`Ranker.scores`: seen items are masked in place in a freshly computed score matrix, and never
in a model's own tensors."""

from __future__ import annotations

import math

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.evaluation import Ranker
from recozoo.models.pop import Pop

N_ITEMS = 5
INFO = DatasetInfo(name="tiny", n_users=2, n_items=N_ITEMS,
                   item_popularity=torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]),
                   tail_mask=torch.tensor([False, False, True, True, True]), head_share=0.4)


def _batch() -> EvalBatch:
    return EvalBatch(user=torch.tensor([0, 1]), history=torch.tensor([[0], [1]]),
                     seen_rows=torch.tensor([0, 1]), seen_cols=torch.tensor([0, 1]),
                     target_rows=torch.tensor([0]), target_cols=torch.tensor([2]))


def test_masking_never_writes_into_the_models_tensors():
    model = Pop(INFO)  # scores are its popularity buffer, expanded
    before = model.item_popularity.clone()
    scores = Ranker(model, INFO, top_n=3).scores(_batch())
    assert scores[0, 0] == -math.inf and scores[1, 1] == -math.inf
    assert torch.equal(model.item_popularity, before)
    items, _ = Ranker(model, INFO, top_n=3).rank(_batch())
    assert items.tolist() == [[1, 2, 3], [0, 2, 3]]


def test_one_row_for_every_user_goes_into_offered_memory_or_stays_a_view():
    """`EvalBatch.same_scores` (pop's): the row copied into the memory a consumer offers, or,
    without it, the row expanded (no copy; the Ranker copies it before masking)."""
    row = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    batch = _batch()
    view = batch.same_scores(row)
    assert view.shape == (2, N_ITEMS) and view.data_ptr() == row.data_ptr()
    batch.scores_out = torch.full((2, N_ITEMS), math.nan)
    scores = batch.same_scores(row)
    assert scores.data_ptr() == batch.scores_out.data_ptr()
    assert torch.equal(scores, row.expand(2, -1))


class _Fresh(torch.nn.Module):
    """Returns a new score matrix and remembers it (not as a parameter or buffer)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(N_ITEMS))
        self.last: torch.Tensor | None = None

    def score(self, batch: EvalBatch) -> torch.Tensor:
        self.last = self.weight.detach() * torch.ones(len(batch), 1)  # (B, n_items), new memory
        return self.last


def test_a_fresh_score_matrix_is_masked_without_a_copy():
    model = _Fresh()
    scores = Ranker(model, INFO, top_n=3).scores(_batch())
    assert scores.data_ptr() == model.last.data_ptr()  # no (B, n_items) copy
    assert scores[0, 0] == -math.inf and torch.equal(model.weight.detach(), torch.ones(N_ITEMS))


class _Factors(torch.nn.Module):
    """A factor model: scores are user vectors times the item table (`EvalBatch.dot_scores`)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.users = torch.nn.Parameter(torch.randn(3, 4, generator=generator))
        self.items = torch.nn.Parameter(torch.randn(N_ITEMS, 4, generator=generator))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return batch.dot_scores(self.users[batch.user], self.items)


def test_factor_scores_reuse_the_rankers_memory_per_thread():
    """The product is written into memory the ranker keeps for the calling thread: batches of one
    size reuse it, another size or another thread gets its own, a copy of the ranker starts
    without it, and the values are the plain product's (masked)."""
    import copy
    import threading

    model = _Factors()
    ranker = Ranker(model, INFO, top_n=3)
    with torch.no_grad():
        expected = model.users[:2] @ model.items.T
        expected[0, 0] = expected[1, 1] = -math.inf
        first = ranker.scores(_batch())
        assert torch.equal(first, expected)
        pointer = first.data_ptr()
        again = ranker.scores(_batch())
        assert again.data_ptr() == pointer and torch.equal(again, expected)
        wider = EvalBatch(user=torch.tensor([0, 1, 2]), history=torch.tensor([[0], [1], [2]]),
                          seen_rows=torch.tensor([0]), seen_cols=torch.tensor([0]),
                          target_rows=torch.tensor([0]), target_cols=torch.tensor([2]))
        assert ranker.scores(wider).shape == (3, N_ITEMS)
        elsewhere = {}
        thread = threading.Thread(target=lambda: elsewhere.update(
            pointer=ranker.scores(_batch()).data_ptr()))
        thread.start()
        thread.join()
        assert elsewhere["pointer"] != ranker.scores(_batch()).data_ptr()
        assert torch.equal(copy.deepcopy(ranker).scores(_batch()), expected)
        # an evaluation stage ends by letting go of it (the Evaluator); the next call allocates
        ranker.free_scores_memory()
        assert getattr(ranker._thread, "scores", None) is None
        assert torch.equal(ranker.scores(_batch()), expected)
    # with gradients the product is a fresh tensor that keeps them
    scores = _batch().dot_scores(model.users[:2], model.items)
    assert scores.requires_grad and torch.allclose(scores.detach(), model.users[:2].detach()
                                                   @ model.items.detach().T)


def test_an_evaluation_stage_lets_go_of_the_score_memory(make_config):
    """The Evaluator's ranker reuses its score memory within a stage and frees it at the end,
    so that it is not held through the training epochs between validations."""
    import lightning as L

    from recozoo.evaluation import Evaluator
    from recozoo.models.bpr import BPR
    from recozoo.train import build_datamodule

    dm = build_datamodule(make_config([]))
    dm.setup()
    model = BPR(dm.info, embedding_dim=8)
    ranker = Ranker(model, dm.info, top_n=20)
    handed_out = []
    memory_of = ranker._scores_memory

    def recorded(*args):
        handed_out.append(memory_of(*args))
        return handed_out[-1]

    ranker._scores_memory = recorded
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, callbacks=[Evaluator(ranker, ks=[10])])
    trainer.test(model, datamodule=dm, verbose=False)
    assert handed_out  # the stage scored into the ranker's memory
    assert getattr(ranker._thread, "scores", None) is None  # and let go of it at its end
