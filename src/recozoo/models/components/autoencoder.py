"""The Mult-VAE / Mult-DAE network of Liang et al. (WWW 2018): a plain nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from recozoo.models.components.mlp import mlp


def _xavier(linear: nn.Module) -> None:
    """The initialisation of Liang et al.'s code: Xavier weights, small normal biases."""
    nn.init.xavier_normal_(linear.weight)
    nn.init.normal_(linear.bias, std=0.001)


class ItemRowsLinear(nn.Module):
    """``rows @ weight + bias`` for rows over the items: a linear layer whose weight holds one
    row per item, ``(n_items, out_features)``, so a sparse COO input is multiplied as one
    weighted embedding bag per row, forward and backward in O(inputs x out_features).

    `nn.Linear` on a CSR input computes the weight's gradient as a dense product instead. A
    forward and backward, 2 threads: 943 x 1,682 at 5% into 600 units 17.3 -> 11.2 ms; 1,024 x
    20,000 at 0.2%: 160 -> 28 ms. With `nn.Linear`'s ``(out, in)`` layout the bag reads a
    transposed weight, which is slower than CSR (67 ms): hence the layout. Dense rows are a
    plain ``addmm``.

    Checkpoints saved when this layer was an `nn.Linear` (version 1) load transposed.
    """

    _version = 2

    def __init__(self, n_items: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if not rows.is_sparse:
            return torch.addmm(self.bias, rows, self.weight)  # (B, out)
        rows = rows.coalesce()  # sorted by row: each row's entries are one bag
        row_of, items = rows.indices()
        starts = torch.searchsorted(row_of, torch.arange(rows.shape[0], device=row_of.device))
        return nn.functional.embedding_bag(items, self.weight, starts, mode="sum",
                                           per_sample_weights=rows.values()) + self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        weight = state_dict.get(prefix + "weight")
        n_items, out_features = self.weight.shape
        if (weight is not None and tuple(weight.shape) == (out_features, n_items)
                and (n_items != out_features or local_metadata.get("version", 1) < 2)):
            state_dict[prefix + "weight"] = weight.t().contiguous()  # nn.Linear's layout
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class MultVAENet(nn.Module):
    """Encoder-decoder over a user's interaction row; the decoder outputs item logits.

    The input row is L2-normalised and dropped out (input dropout is the denoising); the encoder
    is ``n_items -> hidden... -> latent`` with tanh between layers, the decoder mirrors it. The
    variational encoder outputs a mean and a log-variance and samples during training; the
    denoising one outputs the code directly.

    Args:
        n_items: input and output width.
        hidden: hidden layer sizes of the encoder (the decoder uses them reversed).
        latent: size of the code.
        dropout: input dropout rate.
        variational: Mult-VAE (True) or Mult-DAE (False).
        sampling_std: scale of the reparameterisation noise while training (1: the paper's
            sampling ``z = mu + eps * sigma``; RecBole 1.2.1 draws ``eps`` with std 0.01).

    ``forward(rows)`` returns ``(logits (B, n_items), mu (B, latent), logvar (B, latent) or
    None)``; `encode` the code alone.
    """

    def __init__(self, n_items: int, hidden: tuple[int, ...] | list[int] = (600,),
                 latent: int = 200, dropout: float = 0.5, variational: bool = True,
                 sampling_std: float = 1.0):
        super().__init__()
        self.variational, self.latent, self.sampling_std = variational, latent, sampling_std
        self.dropout = nn.Dropout(dropout)
        sizes = [n_items, *hidden]
        encoder = [*sizes, 2 * latent if variational else latent]
        first = ItemRowsLinear(encoder[0], encoder[1])  # reads the (sparse) item rows
        _xavier(first)
        rest = [nn.Tanh(), *mlp(encoder[1:], nn.Tanh, _xavier)] if len(encoder) > 2 else []
        self.encoder = nn.Sequential(first, *rest)
        self.decoder = mlp([latent, *reversed(sizes)], nn.Tanh, _xavier)

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu (B, latent), logvar (B, latent) or None) of (B, n_items) rows, dense or sparse
        COO: the variational encoder's mean and log-variance, or the denoising one's code."""
        code = self.encoder(self._normalised_input(rows))
        if not self.variational:
            return code, None
        return code[:, :self.latent], code[:, self.latent:]  # (B, latent) each

    def forward(self, rows: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encode(rows)
        if logvar is None:
            return self.decoder(mu), mu, None
        if self.training:
            z = mu + self.sampling_std * torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decoder(z), mu, logvar

    def _normalised_input(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows L2-normalised, then dropped out; dense rows stay dense, sparse COO rows
        (what training and scoring pass: ``TrainView(sparse_rows=True)``,
        ``EvalBatch.seen_sparse``) stay sparse, so the first layer costs O(inputs x hidden)
        instead of O(B x n_items x hidden), and dropout draws one number per input instead of
        one per (user, item). One thread, a Mult-VAE's scores: ml-100k's shape (943 x 1,682, 5%
        dense) 79 -> 72 ms (the encoder 29 -> 16 ms, the dense decoder is the rest); 1,024 x
        20,000 at 0.1%: 1,095 -> 637 ms (encoder 458 -> 86 ms). A training step on ml-100k's
        shape spent 23 of 161 ms (2 threads) drawing the dense dropout mask."""
        if not rows.is_sparse:
            return self.dropout(nn.functional.normalize(rows, dim=1))  # (B, n_items)
        rows = rows.coalesce()
        indices, values = rows.indices(), rows.values()
        row_of = indices[0]
        norms = torch.zeros(rows.shape[0], dtype=values.dtype, device=values.device)
        norms = norms.index_add_(0, row_of, values.square()).sqrt().clamp(min=1e-12)  # as normalize
        values = self.dropout(values / norms[row_of])
        if self.training and self.dropout.p > 0:
            # the inputs dropout zeroed add nothing to the first layer (forward or backward):
            # leaving them out halves its bags at the paper's 0.5 (ml-100k's shape, 2 threads:
            # normalising, dropping and the layer's forward and backward 23 -> 16 ms, a whole
            # step 78 -> 72 ms; the same values)
            kept = values != 0
            indices, values = indices[:, kept], values[kept]
        return torch.sparse_coo_tensor(  # the rows' own sorted indices, for `ItemRowsLinear`
            indices, values, rows.shape, is_coalesced=True, check_invariants=False)
