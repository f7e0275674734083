"""CFGAN: a collaborative filtering framework based on generative adversarial networks.

Chae, Kang, Kim & Lee, CIKM 2018. A *vector-wise* generator G maps a user's interaction vector
``c_u`` to a purchase vector ``r_hat_u`` over all items; a discriminator D, also given ``c_u``,
tells the real vector ``r_u`` (= ``c_u`` in training) from the generated one. Without more, G
wins by outputting 1 everywhere, so the paper adds, for each user and each epoch, samples of
the items the user did not interact with:

* **partial masking (PM)**: D sees ``r_hat_u * (e_u + k_u)`` where ``e_u`` marks the user's
  items and ``k_u`` a ``pm_ratio`` sample of the others, so G is judged on those negatives too;
* **zero reconstruction (ZR)**: G pays ``alpha * sum_{j in ZR_u} r_hat_uj^2`` on a ``zr_ratio``
  sample of the user's non-interacted items.

The losses are the paper's (ZP scheme): D minimises
``-log D(r_u|c_u) - log(1 - D(r_hat_u * (e_u + k_u) | c_u))``; G minimises the non-saturating
``-log D(r_hat_u * (e_u + k_u) | c_u)`` (as in the authors' code) plus the ZR term. Training is
Lightning manual optimisation with two Adam optimisers, ``d_steps`` discriminator then ``g_steps``
generator updates per batch of users. Scores are ``G(c_u)``.

What differs from the authors' code: the user-based formulation of the paper is implemented (the
code also offers an item-based variant, its default), the PM/ZR samples are drawn per batch, and
the learning rates are higher than their 1e-4 so that training fits in the shared epoch budget:
3e-4 for G and 1e-3 for D. D needs the faster one: with 3e-4 for both, G (two updates for each
of D's) keeps D at chance (its loss stays at log 4) for about 25 epochs on the shop, G then
learns from zero reconstruction alone, which ranks items by popularity (ZR samples a user's
non-interacted items, so it pushes popular items down least), and early stopping ends the run
on that plateau, at pop's NDCG (issue 16). The other defaults are the authors' ML-100K setting
(L2 weight 0.001 on G, none on D) but two, set for very sparse rows (issue 16: on Amazon
Scientific, ~5 training items per user among 4,385, the old defaults ended at pop's validation
NDCG@10, .0199 against .0214, recommending pop's 15 items):

* **no L2 on G** (``weight_decay_g: 0``). Adam's ``weight_decay`` is an L2 gradient that Adam
  then divides by each weight's own gradient scale, so on a G input weight whose item no user of
  the batch has (most items in most batches when rows are that sparse) the decay alone takes an
  lr-sized step: G's first layer fell to 1e-5 (from ~8e-3 at initialisation) within a few epochs
  and G ignored ``c_u``. The authors add the same L2 to the loss, with Adam, on denser data.
* **ZR without PM** on sparse rows (below ``pm_min_density``), the authors' own scheme for their sparsest data set
  (Ciao: ZR only, in their code). With PM, D compares ``r_u`` with G's output over the user's
  items and ~70% of the rest; G matches every item's mean there by spreading a popularity-shaped
  mass, a sigmoid D fed such sparse vectors then gets no first-order signal and stays at chance
  (loss 1.3863 from epoch 5 on Scientific, with or without the L2 on G). Without PM, D judges G
  on the user's own items, where G must reproduce the 1s from ``c_u``: D leaves chance at once and
  G has to use the condition. Dropping PM but keeping the L2 gives D the upper hand instead (loss
  0.2) and validation falls below pop's, as G, its input weights decayed, cannot answer.

Validation NDCG@10 of the old defaults against these (seed 1; pop's in brackets): Scientific .0199
against .0750, seed 2 .0198 against .0756 (.0214; panel cells, 37-38 epochs; test .0162 and .0163
against .0687 and .0679, bpr .0429, multvae .0571);
the shop .0807 against .1033 after 19 epochs, still rising (.0349); ml-100k leave-one-out .0777
against .0734, seeds 1-3 .0756 against .0739 on average, within the old defaults' spread between
seeds (.0697-.0793); ZR alone with the L2 kept scores .0674 there. The cost is on ml-100k's
random 8:1:1 split, where rows are dense (~85 items a user) and PM helps: validation .2160 against
.2357 (seeds 1-3), test .2542 against .2862, below bpr's .2798.

``pm_per_item`` sizes the PM sample by the user's own items, ``k_u = round(min(pm_ratio *
unobserved_u, pm_per_item * n_u))`` drawn without replacement, so that a sparse row shows D only a
few negatives per item. With ``pm_ratio: 0.7`` it recovers PM's gain where rows are dense, ml-100k
random validation NDCG@10 seed 1: .2300 with 1 per item, .2405 with 3, .2395 with 10, .2393 with
30 (the default: .2187); with 3, seeds 1-3 .2358 on average (test .2792; bpr .2798) and leave-one-out
.0846 against .0734 (seed 1). It is not the default: the shop falls to .1015 against .1069 (seed
1) and .1033 against .1067 (seed 2; 1 per item, seed 1: .1032), and Scientific, where PM
collapsed, is not measured.

A 16-trial Optuna search on ml-100k's random split (seed 1, validation only;
``conf/hparams_search/cfgan_optuna.yaml``) found +5-7% there, and none of it held on the sparse
data (issue 16, seed 1, validation NDCG@10 against the defaults' .2390 random, .0772 leave-one-out,
.1121 shop, .0695 Scientific, .0771 Online Retail):

* its best trials (PM 0.54-0.80 with G at 1-2e-4; rounded): random .2553 (test .3096), but tail
  recall a quarter of the defaults' and Scientific .0607 (run stopped by hand after 57 epochs);
* a small PM with faster G and weaker ZR (``zr_ratio 0.6, pm_ratio 0.05, zr_weight 0.006, lr_g
  1e-3, lr_d 8e-4``): random .2501, leave-one-out .0811, shop .1180, Online Retail .0808, but
  Scientific .0568 (stopped by hand after 18 epochs), tail recall 20-50% lower everywhere;
* ``pm_ratio 0.05`` alone, the change that carries those gains: random .2517 (test .2992), leave-
  one-out .0822, shop .1167, Scientific .0372 (stopped after 9 epochs); with ``pm_per_item 1``:
  random .2503, leave-one-out .0817, Online Retail .0784, but shop .1103 and Scientific .0673
  (test .0613 against .0620), below the defaults on the two sparse data sets. Over seeds 1-3
  (the panel's runs, validation mean against the defaults'): random .2450 against .2334 (test
  .2919 against .2760, bpr .2798), leave-one-out .0815 against .0779 (test .0764 against .0755),
  but the shop .1097 against .1146 (test .1076 against .1286).

So PM (``pm_ratio 0.05``, ``pm_per_item 1``) is the default where the training rows are dense,
``pm_min_density`` (3%) of the catalogue on average, the density that separates the two regimes
(ml-100k 5.1-6.2%, where PM gains; the shop 1.0% and Scientific 0.11%, where it loses or
collapses; Online Retail, 1.9%, is level: .0784 against .0771, seed 1); sparser data trains with
ZR alone, exactly as before the threshold.

The adversarial and ZR losses are neither a softmax nor a pairwise ranking loss, so the shared
``cross_entropy_loss``/``pairwise_loss`` do not apply.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.gan import ConditionalDiscriminator, VectorGenerator
from recozoo.models.optimizers import dense_optimizer

log = logging.getLogger(__name__)


class CFGAN(Recommender):
    """Conditional vector-wise GAN with partial masking and zero reconstruction.

    Args:
        hidden_g / hidden_d: hidden sizes of G and D (paper, ML-100K: [400] and [125]).
        zr_ratio / pm_ratio: shares of non-interacted items sampled for ZR and PM (0.7, and 0:
            ZR alone, see the module notes; the paper's ZP scheme uses 0.7).
        pm_min_density: PM only where training rows are this dense on average (interactions
            over users x items; 0: wherever ``pm_ratio > 0``); sparser data trains with ZR
            alone, the authors' scheme for their sparsest data (see the module notes).
        pm_per_item: caps each user's PM sample at this many negatives per item of the user:
            ``k_u = round(min(pm_ratio * unobserved_u, pm_per_item * n_u))`` items, drawn
            without replacement; None: a ``pm_ratio`` share of every row, whatever its length.
        zr_weight: ``alpha``, the weight of the ZR term (0.03).
        d_steps / g_steps: D and G updates per batch (2 and 4 in the paper's ML-100K setting).
        lr_g / lr_d, weight_decay_g / weight_decay_d: the two Adam optimisers (D learns faster
            than G; no L2 on G, the authors' is 0.001: see the module notes).
        batch_size: users per batch.
    """

    scores_new_users = True  # scores read only the user's items, never a user id

    def __init__(self, info: DatasetInfo, hidden_g: tuple[int, ...] | list[int] = (400,),
                 hidden_d: tuple[int, ...] | list[int] = (125,), zr_ratio: float = 0.7,
                 pm_ratio: float = 0.0, pm_per_item: float | None = None,
                 pm_min_density: float = 0.0,
                 zr_weight: float = 0.03, d_steps: int = 2, g_steps: int = 4,
                 lr_g: float = 3e-4, lr_d: float = 1e-3, weight_decay_g: float = 0.0,
                 weight_decay_d: float = 0.0, batch_size: int = 64, **kwargs):
        super().__init__(info, **kwargs)
        for name, ratio in (("zr_ratio", zr_ratio), ("pm_ratio", pm_ratio)):
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"cfgan {name} must be in [0, 1], got {ratio}")
        if pm_per_item is not None and pm_per_item < 0:
            raise ValueError(f"cfgan pm_per_item must be >= 0 or null, got {pm_per_item}")
        if not 0.0 <= pm_min_density <= 1.0:
            raise ValueError(f"cfgan pm_min_density must be in [0, 1], got {pm_min_density}")
        #: the training rows' mean density: interactions / (users x items)
        self.row_density = float(info.item_popularity.sum()) / max(1, info.n_users * info.n_items)
        self.partial_masking = pm_ratio > 0 and self.row_density >= pm_min_density
        if pm_ratio > 0:
            log.info("cfgan: training rows hold %.2f%% of the catalogue on average: %s",
                     100 * self.row_density,
                     f"partial masking (pm_ratio {pm_ratio:g}) with zero reconstruction"
                     if self.partial_masking else
                     f"zero reconstruction alone (partial masking needs pm_min_density "
                     f"{100 * pm_min_density:g}%)")
        self.automatic_optimization = False
        self.generator = VectorGenerator(info.n_items, list(hidden_g))
        self.discriminator = ConditionalDiscriminator(info.n_items, list(hidden_d))
        self.zr_ratio, self.pm_ratio, self.zr_weight = zr_ratio, pm_ratio, zr_weight
        self.pm_per_item = pm_per_item
        self.d_steps, self.g_steps, self.batch_size = d_steps, g_steps, batch_size
        self.lr_g, self.lr_d = lr_g, lr_d
        self.weight_decay_g, self.weight_decay_d = weight_decay_g, weight_decay_d

    def train_view(self) -> TrainView:
        return TrainView("user_rows", batch_size=self.batch_size)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        generator = functools.partial(torch.optim.Adam, lr=self.lr_g,
                                      weight_decay=self.weight_decay_g)
        discriminator = functools.partial(torch.optim.Adam, lr=self.lr_d,
                                          weight_decay=self.weight_decay_d)
        return [dense_optimizer(generator, self.generator.parameters()),
                dense_optimizer(discriminator, self.discriminator.parameters())]

    def _sample_unobserved(self, rows: torch.Tensor, ratio: float) -> torch.Tensor:
        """(B, n_items) 0/1: a ``ratio`` share of each user's non-interacted items."""
        return ((torch.rand_like(rows) < ratio) & (rows == 0)).float()

    def pm_sizes(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) long: ``k_u``, the size of each user's PM sample when ``pm_per_item`` is set."""
        observed = (rows != 0).sum(1)  # (B,): n_u
        unobserved = rows.shape[1] - observed
        return torch.minimum(self.pm_ratio * unobserved, self.pm_per_item * observed).round().long()

    def _sample_pm(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, n_items) 0/1: ``k_u``, the PM sample of each user's non-interacted items."""
        if not self.partial_masking:  # drawn as with pm_ratio 0, so ZR-alone runs repeat
            return self._sample_unobserved(rows, 0.0)
        if self.pm_per_item is None:
            return self._sample_unobserved(rows, self.pm_ratio)
        keys = torch.rand_like(rows).masked_fill(rows != 0, 2.0)  # the user's items rank last
        ranks = keys.argsort(1).argsort(1)  # (B, n_items): a random order of the unobserved
        return (ranks < self.pm_sizes(rows)[:, None]).float()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        rows = batch["rows"]  # (B, n_items): c_u, and the real vector r_u
        mask = rows + self._sample_pm(rows)  # e_u + k_u
        zr = self._sample_unobserved(rows, self.zr_ratio)
        real = torch.ones(len(rows), device=rows.device)  # D's labels
        fake_label = torch.zeros_like(real)
        for _ in range(self.d_steps):
            with torch.no_grad():
                fake = self.generator(rows) * mask
            d_loss = (bce(self.discriminator(rows, rows), real)
                      + bce(self.discriminator(fake, rows), fake_label))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        for _ in range(self.g_steps):
            generated = self.generator(rows)  # (B, n_items)
            adversarial = bce(self.discriminator(generated * mask, rows), real)  # non-saturating
            reconstruction = (generated.pow(2) * zr).sum(1).mean()
            g_loss = adversarial + self.zr_weight * reconstruction
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
            raise FloatingPointError(f"CFGAN: losses d={d_loss.item()} g={g_loss.item()} at "
                                     f"epoch {self.current_epoch}; lower lr_g / lr_d")
        self.log_train({"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()},
                      prog_bar=True, batch_size=len(rows))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """G's output: its first layer multiplies only the inputs, and the last layer's product
        is written into the memory the batch offers (`EvalBatch.dot_scores`)."""
        condition = batch.seen_sparse(self.n_items, torch.sparse_csr)
        net = self.generator.net
        if len(net) == 1:  # no hidden layer: the sparse condition times the one layer
            return self.generator(condition)  # (B, n_items)
        output = net[-1]  # a linear layer over the items
        return batch.dot_scores(net[:-1](condition), output.weight, output.bias)
