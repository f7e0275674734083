"""Mult-VAE and Mult-DAE: variational / denoising autoencoders with a multinomial likelihood.

Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for Collaborative Filtering",
WWW 2018. A user's interaction row ``x_u`` is encoded (after L2 normalisation and input dropout)
and decoded to logits over all items; the loss is the multinomial log-likelihood
``-sum_i x_ui log softmax(f(z_u))_i``, averaged over users, plus ``beta * KL(q(z|x_u) || N(0, I))``
for the VAE. ``beta`` is annealed linearly from 0 to ``anneal_cap`` over
``total_anneal_steps`` gradient updates (the paper's "partially regularised" VAE). Scores of a
user are the decoder's logits for the mean code (no sampling at evaluation).

The annealing step is saved in every checkpoint and restored on resume, so a resumed run
continues the schedule instead of restarting it at beta = 0.

The multinomial log-likelihood is ``Recommender.multinomial_loss``: the shared softmax
cross-entropy of every (user, item) pair, summed per user, computed in one (B, n_items) pass and
debiased like every other loss (``debias=``).

Mult-DAE is the same module with ``variational: false`` (conf/model/multdae.yaml).
"""

from __future__ import annotations

from typing import Any

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.autoencoder import MultVAENet


class MultVAE(Recommender):
    """Multinomial variational (or denoising) autoencoder over user rows.

    Args:
        hidden: encoder hidden sizes (paper: [600]).
        latent: code size (paper: 200).
        dropout: input dropout (paper: 0.5).
        variational: VAE (True) or DAE (False).
        anneal_cap: the largest ``beta`` (paper: 0.2).
        total_anneal_steps: updates over which ``beta`` grows from 0 to 1 before the cap.
        batch_size: users per training batch.
        sampling_std: scale of the reparameterisation noise while training (`MultVAENet`).
    """

    scores_new_users = True  # scores read only the user's items, never a user id

    def __init__(self, info: DatasetInfo, hidden: tuple[int, ...] | list[int] = (600,),
                 latent: int = 200, dropout: float = 0.5, variational: bool = True,
                 anneal_cap: float = 0.2, total_anneal_steps: int = 2000, batch_size: int = 128,
                 sampling_std: float = 1.0, **kwargs):
        super().__init__(info, **kwargs)
        if total_anneal_steps <= 0:
            raise ValueError(f"total_anneal_steps must be > 0, got {total_anneal_steps}")
        self.net = MultVAENet(info.n_items, list(hidden), latent, dropout, variational,
                              sampling_std)
        self.anneal_cap, self.total_anneal_steps = anneal_cap, total_anneal_steps
        self.batch_size = batch_size
        #: gradient updates seen so far (drives beta); saved in checkpoints
        self.anneal_step = 0

    def train_view(self) -> TrainView:
        # sparse rows: the first layer multiplies only the inputs and dropout draws one number
        # per input, not per (user, item) (figures in MultVAENet._normalised_input)
        return TrainView("user_rows", batch_size=self.batch_size, sparse_rows=True)

    @property
    def beta(self) -> float:
        """The KL weight at the current annealing step."""
        return min(self.anneal_cap, self.anneal_step / self.total_anneal_steps)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = batch["rows"]  # (B, n_items): sparse COO from train_view, or dense
        logits, mu, logvar = self.net(rows)
        nll = self.multinomial_loss(logits, rows)
        if logvar is None:
            return nll
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
        self.log_train({"train/beta": self.beta}, batch_size=rows.shape[0])
        return nll + self.beta * kl

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.anneal_step += 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["anneal_step"] = self.anneal_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.anneal_step = int(checkpoint.get("anneal_step", 0))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """The decoder's logits for the mean code, its last layer's product written into the
        memory the batch offers (`EvalBatch.dot_scores`) and the bias added there."""
        mu, _ = self.net.encode(batch.seen_sparse(self.n_items))  # (B, latent)
        hidden, last = self.net.decoder[:-1](mu), self.net.decoder[-1]  # last: Linear -> items
        return batch.dot_scores(hidden, last.weight, last.bias)  # (B, n_items)
