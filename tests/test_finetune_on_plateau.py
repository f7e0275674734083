"""`FinetuneOnPlateau`: a frozen phase until validation plateaus, then the best weights restored
and the frozen parameters trained, on a toy module whose validation values are scripted."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, WeightAveraging
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from recozoo.training_callbacks import FinetuneOnPlateau


class Toy(L.LightningModule):
    """A backbone (the second phase's weights) and a head; validation logs ``values[epoch]``."""

    def __init__(self, values: list[float], start: str = "plateau"):
        super().__init__()
        self.values, self.start = values, start
        self.backbone, self.head = nn.Linear(2, 2), nn.Linear(2, 1)
        self.seen: list[dict] = []  # per epoch start: what trains, the weights, the groups

    def training_step(self, batch, batch_idx):
        return self.head(self.backbone(batch[0])).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/ndcg@10", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.05)

    def configure_callbacks(self):
        finetune = FinetuneOnPlateau(list(self.backbone.parameters()), lr=0.01, warmup=4,
                                     start=self.start)
        return [finetune, Spy()]


class Spy(L.Callback):
    """Runs after `FinetuneOnPlateau` at every epoch start (configure_callbacks' order)."""

    def on_train_epoch_start(self, trainer, module):
        groups = [g.get("name") for g in trainer.optimizers[0].param_groups]
        average = next((c._average_model.module for c in trainer.callbacks
                        if isinstance(c, WeightAveraging)), None)
        module.seen.append({
            "trains": module.backbone.weight.requires_grad, "groups": groups,
            "head_trains": module.head.weight.requires_grad,
            "state": {k: v.clone() for k, v in module.state_dict().items()},
            "average": average and {k: v.clone() for k, v in average.state_dict().items()}})


def _fit(tmp_path, values, patience=2, ema=False, start="plateau", every=1):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/ndcg@10", mode="max",
                                 filename="{epoch}", save_top_k=-1)
    callbacks = [checkpoint, EarlyStopping(monitor="val/ndcg@10", mode="max", patience=patience)]
    if ema:
        callbacks.append(WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.5)))
    module = Toy(values, start)
    trainer = L.Trainer(max_epochs=len(values), callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, check_val_every_n_epoch=every)
    trainer.fit(module, data, data)
    return module, trainer, checkpoint


def test_the_second_phase_starts_at_the_plateau_from_the_best_weights(tmp_path):
    values = [0.1, 0.3, 0.2, 0.25, 0.35, 0.32, 0.31, 0.9]
    module, trainer, checkpoint = _fit(tmp_path, values)
    trains = [epoch["trains"] for epoch in module.seen]
    # frozen while early stopping (patience 2) would go on: epochs 2 and 3 did not beat 0.3
    assert trains == [False] * 4 + [True] * 3
    # then the rest stops: the second phase trains the backbone alone
    assert [epoch["head_trains"] for epoch in module.seen] == [True] * 4 + [False] * 3
    assert module.seen[3]["groups"] == [None] and module.seen[4]["groups"] == [None, "encoder"]
    best = torch.load(tmp_path / "epoch=1.ckpt", weights_only=False)["state_dict"]
    for name, value in module.seen[4]["state"].items():  # epoch 1's weights, not epoch 3's
        torch.testing.assert_close(value, best[name])
    plateau = torch.load(tmp_path / "epoch=3.ckpt", weights_only=False)["state_dict"]
    assert not torch.equal(plateau["head.weight"], best["head.weight"])
    # early stopping counts afresh: the second phase's epoch 4 is the new best, and two
    # epochs without a better one end the run
    assert checkpoint.best_model_path.endswith("epoch=4.ckpt") and trainer.current_epoch == 7


def test_the_second_phase_takes_the_last_epoch_when_validation_improves_to_the_cap(tmp_path):
    module, _, checkpoint = _fit(tmp_path, [0.1, 0.2, 0.3, 0.4])
    assert [epoch["trains"] for epoch in module.seen] == [False, False, False, True]
    assert checkpoint.best_model_path.endswith("epoch=3.ckpt")


def test_with_a_validation_every_other_epoch_the_second_phase_takes_the_last_two(tmp_path):
    """Validations after epochs 2, 4 and 6 of 6: the one after epoch 4 is the last before the
    cap, so the second phase trains epochs 5 and 6 and the last validation scores it."""
    module, _, checkpoint = _fit(tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], every=2)
    assert [epoch["trains"] for epoch in module.seen] == [False] * 4 + [True] * 2
    assert checkpoint.best_model_path.endswith("epoch=5.ckpt")


def test_a_stop_at_the_plateau_is_lifted_for_one_epoch_of_the_second_phase(tmp_path):
    module, _, checkpoint = _fit(tmp_path, [0.1, 0.3, 0.2, 0.25, 0.5], patience=1,
                                 ema=True)
    assert [epoch["trains"] for epoch in module.seen] == [False, False, False, True]
    assert checkpoint.best_model_path.endswith("epoch=1.ckpt")  # the second phase did not help
    saved = torch.load(tmp_path / "epoch=1.ckpt", weights_only=False)
    for name, value in module.seen[3]["state"].items():  # the weights that validated ...
        torch.testing.assert_close(value, saved["state_dict"][name])
    for name, value in module.seen[3]["average"].items():  # ... in the model and its average
        torch.testing.assert_close(value, saved["state_dict"][name])
    assert not torch.equal(saved["state_dict"]["head.weight"],
                           saved["current_model_state"]["head.weight"])


def test_a_warm_up_raises_the_new_groups_learning_rate_from_its_first_step(tmp_path):
    module, trainer, _ = _fit(tmp_path, [0.1, 0.2, 0.3], start="start")
    assert [epoch["trains"] for epoch in module.seen] == [True, True, True]
    assert all(epoch["head_trains"] for epoch in module.seen)  # one phase: everything trains
    group = next(g for g in trainer.optimizers[0].param_groups if g.get("name") == "encoder")
    assert group["lr"] == pytest.approx(0.01)  # 12 steps > 4 warm-up steps
    assert module.seen[0]["groups"] == [None, "encoder"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="'plateau' or 'start'"):
        FinetuneOnPlateau([], lr=0.1, start="later")


def test_a_run_resumed_in_the_second_phase_goes_on_in_it(tmp_path):
    values = [0.1, 0.3, 0.2, 0.35, 0.36, 0.37]
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4)

    def trainer(epochs: int) -> L.Trainer:
        checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/ndcg@10", mode="max",
                                     save_last=True)
        return L.Trainer(max_epochs=epochs, callbacks=[checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)

    first = Toy(values)
    trainer(5).fit(first, data, data)  # the second phase began at epoch 3
    resumed = Toy(values)
    trainer(6).fit(resumed, data, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [(e["trains"], e["head_trains"]) for e in resumed.seen] == [(True, False)]
    assert resumed.seen[0]["groups"] == [None, "encoder"]
