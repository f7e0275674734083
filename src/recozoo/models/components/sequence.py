"""Sequence encoders shared by the sequential models (GRU4Rec, SQN/DQN, ...): plain nn.Modules.

Input sequences are left-padded with ``pad_item`` (= n_items), the newest item in the last
column, as served by `RecDataModule` (training view ``sequences`` and `EvalBatch.history`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

#: users per group of `by_history_length`
GROUP_ROWS = 256


def first_used_column(pad: torch.Tensor) -> int:
    """The oldest column of a (B, L) True-where-padding mask that some row uses (the last
    column where none does): the columns before it are padding in every row."""
    used = (~pad).any(0).nonzero()
    return int(used[0]) if len(used) else pad.shape[1] - 1


def trim_leading_padding(sequence: torch.Tensor, pad_item: int) -> torch.Tensor:
    """(B, L') left-padded ``sequence`` (B, L) without its oldest columns that are padding in
    every row (one column kept at least)."""
    return sequence[:, first_used_column(sequence == pad_item):]


def by_history_length(sequence: torch.Tensor, pad_item: int,
                      encode: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor],
                      group_rows: int | None = None) -> torch.Tensor:
    """``encode(rows, histories)`` for every row of the left-padded ``sequence`` (B, L), the
    users taken ``group_rows`` (`GROUP_ROWS`) at a time in order of history length, each
    group's histories without the columns that are padding in all of them
    (`trim_leading_padding`); ``rows`` indexes the group's users in the batch (None: all of
    them, in order). Returns the (B, ...) results in the batch's order.

    For encoders on which leading padding has no effect (attention that blocks padded keys,
    positions counted from the newest item: SASRec's, bert_finetune's user tower): then this
    is ``encode(None, sequence)`` to rounding, and a group of short histories costs its own
    longest one instead of L. Amazon Scientific's users hold ~6 items of the 50 carried."""
    group_rows = GROUP_ROWS if group_rows is None else group_rows
    if len(sequence) <= group_rows:
        return encode(None, trim_leading_padding(sequence, pad_item))
    lengths = (sequence != pad_item).sum(1)
    out: torch.Tensor | None = None
    for rows in torch.argsort(lengths, stable=True).split(group_rows):
        part = encode(rows, trim_leading_padding(sequence[rows], pad_item))
        if out is None:
            out = part.new_empty((len(sequence), *part.shape[1:]))
        out[rows] = part
    assert out is not None
    return out


class ItemEmbedding(nn.Embedding):
    """Item embeddings with one extra padding row (index ``n_items``) that stays zero."""

    def __init__(self, n_items: int, dim: int):
        super().__init__(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.weight[n_items].zero_()

    @property
    def items(self) -> torch.Tensor:
        """(n_items, dim) embeddings of the real items (without the padding row)."""
        return self.weight[:-1]


class GRUEncoder(nn.Module):
    """Embeds an item sequence and runs a GRU over it.

    Args:
        n_items: catalogue size (the padding index is ``n_items``).
        dim: embedding and hidden size.
        num_layers: stacked GRU layers.
        dropout: dropout on the embeddings and between layers.

    ``forward(seq)`` returns the hidden state at every position, (B, L, dim); with left padding
    the last column is the state after the user's newest item.
    """

    def __init__(self, n_items: int, dim: int = 64, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.embedding = ItemEmbedding(n_items, dim)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        inputs = self.dropout(self.embedding(seq))  # (B, L, dim): every position's draws, as always
        skip = first_used_column(seq == self.embedding.padding_idx)
        if skip == 0 or (self.training and self.gru.num_layers > 1 and self.gru.dropout > 0):
            states, _ = self.gru(inputs)  # (B, L, dim)
            return states
        # columns of padding in every row move every row's state alike (the padding row's input
        # from the zero state; under dropout alike because that row is zero, as `ItemEmbedding`
        # keeps it): the first row runs them, and the batch starts from where it ends. Amazon
        # Scientific's training batches hold ~21 columns of items of the 50 (median).
        padding_states, start = self.gru(inputs[:1, :skip])
        states, _ = self.gru(inputs[:, skip:], start.expand(-1, len(seq), -1).contiguous())
        return torch.cat([padding_states.expand(len(seq), -1, -1), states], 1)  # (B, L, dim)

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, dim) the state after the newest item, ``forward(seq)[:, -1]`` to rounding.

        Scoring (eval mode, no gradient, one layer) on a CPU steps the GRU itself
        (`gru_last_state`) and runs each row from its own first item, not through every column.
        Elsewhere the full pass: a GPU's fused GRU (cuDNN) against a Python loop of small
        kernels was not measured."""
        if (self.training or torch.is_grad_enabled() or self.gru.num_layers > 1
                or seq.device.type != "cpu"):
            return self.forward(seq)[:, -1]
        return gru_last_state(self.gru, self.embedding.weight, seq, self.embedding.padding_idx)


def gru_last_state(gru: nn.GRU, embedding: torch.Tensor, seq: torch.Tensor,
                   pad_item: int) -> torch.Tensor:
    """(B, dim) the state of the one-layer, batch-first ``gru`` after the last column of the
    left-padded item sequences ``seq`` (B, L), whose items' inputs are rows of ``embedding``
    (padding: row ``pad_item``): ``gru(embedding[seq])[0][:, -1]`` to rounding, with less
    work, for scoring (no gradient).

    - The input projection ``W_ih x + b_ih`` is one row per distinct item of the batch,
      computed once, instead of a product for every position.
    - A row is stepped from its first item on. Its leading padding brings every row to the
      same state (the padding row's input from the zero state), so one extra all-padding row
      carries that state, and a row joins the batch with it at its first item. Rows are
      sorted by their first item, so the rows of step t are a prefix and each step's product
      is over them alone: the steps cost the histories' items, not B x L. Amazon Scientific's
      users hold ~6 items of the 50 columns.
    - The gates are laid out so that each elementwise pass runs once over contiguous memory
      (r and z's biases folded into the projection, r and z in one product).

    PyTorch's GRU equations: r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}),
    n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""
    n_rows, width = seq.shape
    dim = gru.hidden_size
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    used = seq != pad_item
    first = torch.where(used.any(1), used.int().argmax(1), width)  # (B,) first item's column
    order = torch.argsort(first, stable=True)
    # rows of step t: the padding row and those whose first item is at a column <= t
    joined = (torch.searchsorted(first[order], torch.arange(width, device=seq.device),
                                 right=True) + 1).tolist()
    padding_row = seq.new_full((1, width), pad_item)
    items, steps = torch.unique(torch.cat([padding_row, seq[order]]), return_inverse=True)
    steps = steps.T.contiguous()  # (L, B + 1): step t's inputs, as rows of the projection
    inputs = F.linear(embedding[items], w_ih, b_ih)  # (distinct items, 3 dim)
    inputs_rz = (inputs[:, :2 * dim] + b_hh[:2 * dim]).contiguous()
    inputs_n = inputs[:, 2 * dim:].contiguous()
    w_rz, w_n, b_n = w_hh[:2 * dim].T, w_hh[2 * dim:].T, b_hh[2 * dim:]
    state = embedding.new_zeros(n_rows + 1, dim)
    # each step's memory, reused (fresh memory for every step cost more than the step's work)
    rz_all, new_all, hidden_all = (embedding.new_empty(n_rows + 1, size)
                                   for size in (2 * dim, dim, dim))
    stepped = 1
    for t in range(width):
        rows = joined[t]
        if rows > stepped:  # rows whose first item is at column t start from padding's state
            state[stepped:rows] = state[0]
            stepped = rows
        h, at = state[:rows], steps[t, :rows]
        rz, new, hidden = rz_all[:rows], new_all[:rows], hidden_all[:rows]
        torch.index_select(inputs_rz, 0, at, out=rz).addmm_(h, w_rz).sigmoid_()  # r, z
        torch.addmm(b_n, h, w_n, out=hidden)
        torch.index_select(inputs_n, 0, at, out=new).addcmul_(rz[:, :dim], hidden).tanh_()
        torch.lerp(new, h, rz[:, dim:], out=h)  # h' = n + z (h - n)
    state[stepped:] = state[0]  # rows without an item: all padding
    out = torch.empty_like(state[1:])
    out[order] = state[1:]
    return out


def pre_norm_block(layer: nn.TransformerEncoderLayer, x: torch.Tensor, allowed: torch.Tensor,
                   newest_only: bool = False) -> torch.Tensor:
    """``layer``'s pre-norm block (``norm_first=True``; its own weights, its arithmetic) on
    (B, L, dim) states, batch-first throughout: (B, L, dim) out, or (B, 1, dim) for the newest
    position alone (its keys and values still come from every position). ``allowed``: (B, 1,
    L, L), True where a query may attend to a key.

    nn.MultiheadAttention turns batch-first inputs sequence-first and back, and lays the packed
    projection out again per head: copies that took about half of sasrec's scoring time on
    ml-100k (943 users x 50 positions; its test stage 0.164 -> 0.097 s). Here the packed
    projection is viewed per head and attention is PyTorch's `scaled_dot_product_attention`.
    `CausalTransformerEncoder` evaluates with it and trains with nn.TransformerEncoder, whose
    dropout draws its trained results were made with; dropout applies here too in training
    mode. (bert_finetune's user tower, 128 wide, is bound by its products: the same function
    measured no faster there, ~330 ms either way for 943 x 50 positions.)"""
    attn, (batch, length, dim) = layer.self_attn, x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    h = layer.norm1(x)
    if newest_only:
        x, allowed = x[:, -1:], allowed[:, :, -1:]
        q = F.linear(h[:, -1:], weight[:dim], None if bias is None else bias[:dim])
        k, v = F.linear(h, weight[dim:], None if bias is None else bias[dim:]).view(
            batch, length, 2, heads, dim // heads).unbind(2)
        q = q.view(batch, 1, heads, dim // heads)
    else:
        q, k, v = F.linear(h, weight, bias).view(batch, length, 3, heads, dim // heads).unbind(2)
    attended = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
        dropout_p=attn.dropout if layer.training else 0.0)  # (B, heads, L or 1, dim / heads)
    x = x + layer.dropout1(attn.out_proj(attended.transpose(1, 2).reshape(batch, -1, dim)))
    feed = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
    return x + layer.dropout2(feed)


class CausalTransformerEncoder(nn.Module):
    """SASRec's encoder: item plus learned position embeddings, then causal self-attention blocks.

    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Each block is
    pre-norm multi-head self-attention and a point-wise feed-forward net, with residuals and
    dropout, followed by a final layer norm (as in the authors' code). A position attends to
    itself and to the earlier real items, never to padding or to later items.

    Args:
        n_items: catalogue size (the padding index is ``n_items``).
        dim: embedding and hidden size.
        num_layers: self-attention blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        max_len: longest sequence; positions are counted from the newest item backwards, so the
            newest item always has the same position embedding.
        dropout: dropout on embeddings, attention weights and feed-forward outputs.

    ``forward(seq)`` returns (B, L, dim) states; the last column follows the newest item.
    """

    def __init__(self, n_items: int, dim: int = 64, num_layers: int = 2, num_heads: int = 1,
                 max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.pad_item, self.max_len, self.num_heads = n_items, max_len, num_heads
        self.embedding = ItemEmbedding(n_items, dim)
        self.position = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(dim),
                                            enable_nested_tensor=False)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x, blocked, is_pad = self._inputs(seq)
        if self.training:  # nn.TransformerEncoder: the dropout draws every trained run was made with
            states = self.blocks(x, mask=blocked.repeat_interleave(self.num_heads, dim=0))
        else:
            for layer in self.blocks.layers:
                x = pre_norm_block(layer, x, ~blocked[:, None])
            states = self.blocks.norm(x)
        return states * (~is_pad)[..., None]  # (B, L, dim)

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, dim) the state after the newest item, equal to ``forward(seq)[:, -1]``.

        Scoring needs only that state, so the top block runs for the newest position alone (its
        keys and values still come from every position): a third less work at evaluation and
        serving for two blocks."""
        x, blocked, is_pad = self._inputs(seq)
        allowed = ~blocked[:, None]  # (B, 1, L, L), True = may attend
        *lower, top = self.blocks.layers
        for layer in lower:
            x = pre_norm_block(layer, x, allowed)
        y = pre_norm_block(top, x, allowed, newest_only=True)  # (B, 1, dim)
        return self.blocks.norm(y)[:, 0] * (~is_pad[:, -1])[:, None]

    def _inputs(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded inputs (B, L, dim), the attention mask (B, L, L; True = blocked) and the
        padding mask (B, L)."""
        seq = seq[:, -self.max_len:]
        length = seq.shape[1]
        is_pad = seq == self.pad_item  # (B, L)
        positions = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        x = self.embedding(seq) * self.embedding.embedding_dim ** 0.5 + self.position(positions)
        x = self.dropout(x) * (~is_pad)[..., None]  # (B, L, dim)
        future = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)
        own = torch.eye(length, dtype=torch.bool, device=seq.device)
        # True = may not attend; padded queries attend to themselves only (their output is unused)
        blocked = future | (is_pad[:, None, :] & ~own)  # (B, L, L)
        return x, blocked, is_pad


class CaserEncoder(nn.Module):
    """Caser's convolutional sequence embedding, evaluated at every position of a sequence.

    Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
    Embedding", WSDM 2018. The embeddings of the last ``window`` items form an ``window x dim``
    image; horizontal filters of every height 1..window (max-pooled over time) capture union-level
    patterns, vertical filters (window x 1) weighted sums of the items. Their concatenation goes
    through dropout and a fully connected layer to ``dim`` and is concatenated with the user
    embedding: the output is ``2 * dim`` wide.

    Args:
        n_items, n_users: catalogue and user counts (the item padding index is ``n_items``).
        dim: item and user embedding size (``d`` in the paper).
        window: items per image (``L``).
        n_horizontal / n_vertical: filters per height / vertical filters (``n_h`` / ``n_v``).
        dropout: dropout before the fully connected layer.
        user_init_std: standard deviation of the user embeddings' normal initialisation
            (0: zeros, a user row that has not learned adds nothing to the scores; None:
            ``dim ** -0.5``, the scale of a trained row).

    ``forward(seq, user)`` returns (B, S, 2 * dim): for each position of ``seq`` (left-padded),
    the representation of the window ending there.
    """

    def __init__(self, n_items: int, n_users: int, dim: int = 50, window: int = 5,
                 n_horizontal: int = 16, n_vertical: int = 4, dropout: float = 0.5,
                 user_init_std: float | None = 0.0):
        super().__init__()
        self.pad_item, self.window = n_items, window
        self.embedding = ItemEmbedding(n_items, dim)
        self.user_embedding = nn.Embedding(n_users, dim)
        std = dim ** -0.5 if user_init_std is None else float(user_init_std)
        if std < 0:
            raise ValueError(f"model.user_init_std must be >= 0 or null, got {user_init_std}")
        if std > 0:
            nn.init.normal_(self.user_embedding.weight, std=std)
        else:
            nn.init.zeros_(self.user_embedding.weight)
        self.vertical = nn.Conv2d(1, n_vertical, (window, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_horizontal, (h, dim))
                                        for h in range(1, window + 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(n_vertical * dim + n_horizontal * window, dim)

    def forward(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        batch, length = seq.shape
        padded = nn.functional.pad(seq, (self.window - 1, 0), value=self.pad_item)
        windows = padded.unfold(1, self.window, 1)  # (B, S, window)
        z = self._windows(windows.reshape(-1, self.window)).view(batch, length, -1)
        u = self.user_embedding(user)[:, None].expand(-1, length, -1)  # (B, S, dim)
        return torch.cat([z, u], -1)  # (B, S, 2 * dim)

    def last_state(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(B, 2 * dim) the representation of the window ending at the newest item,
        ``forward(seq, user)[:, -1]``: scoring reads that window alone, not one per position
        (ml-100k's 50 carried items: a 50th of the convolutions)."""
        newest = nn.functional.pad(seq[:, -self.window:],
                                   (max(0, self.window - seq.shape[1]), 0), value=self.pad_item)
        return torch.cat([self._windows(newest), self.user_embedding(user)], -1)

    def _windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, dim) ``z`` of (N, window) item windows."""
        image = self.embedding(windows)[:, None]  # (N, 1, window, dim)
        vertical = self.vertical(image).flatten(1)  # (N, n_v * dim)
        horizontal = [torch.relu(conv(image).squeeze(3)).amax(2)  # (N, n_h) each
                      for conv in self.horizontal]
        return torch.relu(self.fc(self.dropout(torch.cat([vertical, *horizontal], 1))))


class NegativeSampler(nn.Module):
    """Draws negatives shared by a whole batch for sampled softmax, and knows each item's
    sampling probability ``Q`` (for the log-Q correction).

    ``popularity``: ``Q(i)`` proportional to the item's training count plus one (every item can
    be drawn; popular items, the hard negatives of a softmax, more often); ``uniform``: ``1 /
    n_items``. A draw costs O(k log n_items) (a search of the cumulative distribution), not
    O(n_items).

    Args:
        item_popularity: (n_items,) training interaction counts.
        distribution: ``popularity`` or ``uniform``.
    """

    def __init__(self, item_popularity: torch.Tensor, distribution: str = "popularity"):
        super().__init__()
        if distribution not in ("popularity", "uniform"):
            raise ValueError(f"model.negative_sampling must be 'popularity' or 'uniform', got "
                             f"'{distribution}'")
        weight = (item_popularity.double() + 1 if distribution == "popularity"
                  else torch.ones(len(item_popularity), dtype=torch.float64))
        probability = weight / weight.sum()
        self.register_buffer("log_q", probability.log().float(), persistent=False)  # (n_items,)
        self.register_buffer("cdf", probability.cumsum(0), persistent=False)  # (n_items,)

    def forward(self, k: int) -> torch.Tensor:
        """(k,) items drawn with replacement from ``Q``."""
        u = torch.rand(k, dtype=torch.float64, device=self.cdf.device) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=len(self.cdf) - 1)
