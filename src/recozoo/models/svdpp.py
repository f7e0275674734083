"""SVD++: biased matrix factorisation with an implicit-feedback term for explicit ratings.

Koren, "Factorization Meets the Neighborhood: a Multifaceted Collaborative Filtering Model",
KDD 2008 (eq. 15). A rating is predicted as
``mu + b_u + b_i + <q_i, p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j>``, where N(u) is the set of
items the user rated in training (which items, not how: the implicit signal) and y_j a second
item factor. Fitted by squared error with L2 on the factors, the biases and each user's implicit
term (a cheaper stand-in for Koren's L2 on every y_j of N(u) at each rating). The
implicit term of every user is one sparse-dense product per step (`TrainingGraph`), so a batch
costs little more than biased MF. N(u) holds training items only, as in Surprise.
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.data.contracts import DatasetInfo
from recozoo.models.components.graph import TrainingGraph
from recozoo.models.components.lookup import rows
from recozoo.models.svd import BiasedMF


class SVDpp(BiasedMF):
    """`BiasedMF` whose user vector adds the normalised sum of implicit item factors.

    Args:
        implicit_decay: L2 weight on the implicit term of the user of each rating in a batch.
        (the other arguments: `BiasedMF`)
    """

    def __init__(self, info: DatasetInfo, implicit_decay: float = 0.05, **kwargs):
        super().__init__(info, **kwargs)
        self.implicit_decay = implicit_decay
        self.graph = TrainingGraph(info)
        self.implicit_embedding = nn.Embedding(info.n_items, self.item_embedding.embedding_dim)
        nn.init.normal_(self.implicit_embedding.weight, std=self.init_std)
        self._neighbourhood: torch.Tensor | None = None
        self._implicit: torch.Tensor | None = None  # (n_users, d) cached in eval mode

    def train(self, mode: bool = True) -> SVDpp:
        self._implicit = None  # the implicit factors change while training
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._neighbourhood = self._implicit = None  # new edges or factors
        super()._load_from_state_dict(*args, **kwargs)

    def implicit_term(self) -> torch.Tensor:
        """(n_users, d) ``|N(u)|^-1/2 sum_{j in N(u)} y_j`` for every user."""
        if self.training:
            # Lightning restores training mode by setting ``training`` on each module, without
            # ``train()``: a cache left by validation must not be read (it has no gradient)
            self._implicit = None
        elif self._implicit is not None:
            return self._implicit
        if self._neighbourhood is None or self._neighbourhood.device != self.graph.user.device:
            self._neighbourhood = self.graph.user_neighbourhood()
        implicit = self._neighbourhood @ self.implicit_embedding.weight  # (n_users, d)
        if not self.training:
            self._implicit = implicit = implicit.detach()  # scoring needs no gradient
        return implicit

    def user_vectors(self, user: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(user) + rows(self.implicit_term(), user)  # (B, d)

    def regularizer(self, batch: dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        # the y_j of a user's neighbourhood, through the user's implicit term
        implicit = (vectors - self.user_embedding(batch["user"])).pow(2).sum(-1)  # (B,)
        return super().regularizer(batch, vectors) + self.implicit_decay * implicit.mean()

    @property
    def n_params(self) -> int:
        """Fitted numbers; the training edges in the checkpoint are data, not counted."""
        return super().n_params - self.graph.saved_numbers
