"""The Mult-VAE / Mult-DAE network of Liang et al. (WWW 2018): a plain nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from recozoo.models.components.mlp import mlp


def _xavier(linear: nn.Linear) -> None:
    """The initialisation of Liang et al.'s code: Xavier weights, small normal biases."""
    nn.init.xavier_normal_(linear.weight)
    nn.init.normal_(linear.bias, std=0.001)


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
    None)``.
    """

    def __init__(self, n_items: int, hidden: tuple[int, ...] | list[int] = (600,),
                 latent: int = 200, dropout: float = 0.5, variational: bool = True,
                 sampling_std: float = 1.0):
        super().__init__()
        self.variational, self.latent, self.sampling_std = variational, latent, sampling_std
        self.dropout = nn.Dropout(dropout)
        sizes = [n_items, *hidden]
        self.encoder = mlp([*sizes, 2 * latent if variational else latent], nn.Tanh, _xavier)
        self.decoder = mlp([latent, *reversed(sizes)], nn.Tanh, _xavier)

    def forward(self, rows: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = self.dropout(nn.functional.normalize(rows, dim=1))  # (B, n_items)
        code = self.encoder(x)
        if not self.variational:
            return self.decoder(code), code, None
        mu, logvar = code[:, :self.latent], code[:, self.latent:]  # (B, latent) each
        if self.training:
            z = mu + self.sampling_std * torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decoder(z), mu, logvar
