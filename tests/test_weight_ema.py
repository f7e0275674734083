"""``model.ema_decay``: validation, the best checkpoint and the test score an exponential moving
average of the weights, and training goes on from the trained weights."""

from __future__ import annotations

from typing import ClassVar

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import WeightAveraging

from recozoo.train import build_experiment, train


class Probe(L.Callback):
    """Records the model's weights after every training step and when each evaluation starts."""

    steps: ClassVar[list[dict[str, torch.Tensor]]] = []
    evaluated: ClassVar[dict[str, list[dict[str, torch.Tensor]]]] = {}

    @staticmethod
    def _weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        Probe.steps.append(self._weights(module))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            stage = "fit_val" if trainer.state.fn == "fit" else "val"
            Probe.evaluated.setdefault(stage, []).append(self._weights(module))

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            Probe.evaluated.setdefault("test", []).append(self._weights(module))


def _ema(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """W_1 = w_1, W_t = decay W_(t-1) + (1 - decay) w_t (the average starts at the first step)."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    return average


def _assert_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("model, weight", [
    (["model=multvae"], "net.decoder.0.weight"),
    # bpr's per-triple SGD changes the tables itself; `LoopStep` counts its steps for the average
    (["model=bpr", "model.solver=pair_sgd"], "item_embedding.weight")])
def test_validation_checkpoint_and_test_score_the_average(make_config, model, weight):
    Probe.steps, Probe.evaluated = [], {}
    decay = 0.5
    cfg = make_config([*model, "model.batch_size=32", f"++model.ema_decay={decay}",
                       "trainer.max_epochs=2", "+callbacks.probe._target_=test_weight_ema.Probe"])
    record = train(cfg)
    assert record.status == "ok"
    steps = Probe.steps
    assert len(steps) == 6  # 3 batches x 2 epochs
    after_epoch = [_ema(steps[:3], decay), _ema(steps, decay)]
    # each validation while fitting scores the average so far ...
    for seen, expected in zip(Probe.evaluated["fit_val"], after_epoch):
        _assert_weights(seen, expected)
    # ... and training goes on from the trained weights: the average is not what trains
    assert not torch.allclose(steps[-1][weight], after_epoch[-1][weight])
    # the best checkpoint holds the average of its epoch; validate and test load and score it
    best = torch.load(cfg.paths.output_dir + "/" + record.best_checkpoint, weights_only=False)
    best_epoch = best["epoch"]
    _assert_weights({k: v for k, v in best["state_dict"].items() if k in steps[0]},
                    after_epoch[best_epoch])
    _assert_weights(Probe.evaluated["val"][-1], after_epoch[best_epoch])
    _assert_weights(Probe.evaluated["test"][-1], after_epoch[best_epoch])


def test_without_ema_decay_there_is_no_average(make_config):
    experiment = build_experiment(make_config(["model=bpr"]))
    assert experiment.model.ema_decay is None
    assert not any(isinstance(c, WeightAveraging) for c in experiment.model.configure_callbacks())


def test_bpr_with_an_average_loads_one_batch_per_step(make_config):
    """The average is updated once per loaded batch: bpr, which loads 8 batches at once by
    default, loads one with ``ema_decay`` so that every step is averaged."""
    plain = build_experiment(make_config(["model=bpr"])).model
    averaged = build_experiment(make_config(["model=bpr", "+model.ema_decay=0.9"])).model
    assert plain.train_view().steps_per_load == 8
    assert averaged.train_view().steps_per_load == 1


@pytest.mark.parametrize("overrides, message", [
    (["model=multvae", "model.ema_decay=1.5"], r"model.ema_decay must lie in \[0, 1\)"),
    (["model=ease", "+model.ema_decay=0.9"], "EASE fits in one step"),
])
def test_impossible_ema_decay_is_refused(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_experiment(make_config(overrides))


class _Frozen(torch.nn.Module):
    """A module with a frozen weight it names as constant, as bert_finetune names its encoder."""

    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
        self.trained = torch.nn.Parameter(torch.zeros(2))

    def constant_tensors(self) -> list[torch.Tensor]:
        return [self.frozen]


def test_the_average_skips_constant_tensors_and_averages_the_rest():
    from torch.optim.swa_utils import AveragedModel

    from recozoo.models.base import ema_of_changing_tensors

    module = _Frozen()
    average = AveragedModel(module, multi_avg_fn=ema_of_changing_tensors(module, 0.5))
    average.update_parameters(module)  # the first update copies every tensor
    average.module.frozen.data.fill_(7.0)  # a skipped tensor's average is left as it is
    with torch.no_grad():
        module.trained.fill_(4.0)
    average.update_parameters(module)
    torch.testing.assert_close(average.module.trained, torch.full((2,), 2.0))  # 0.5 * 0 + 0.5 * 4
    torch.testing.assert_close(average.module.frozen, torch.full((3,), 7.0))  # not averaged


def test_bert_finetune_names_its_frozen_encoder_as_constant(make_config):
    experiment = build_experiment(make_config(["model=bert_finetune"]))
    model = experiment.model
    constant = {id(t) for t in model.constant_tensors()}
    assert constant and constant == {id(p) for p in model.text.parameters() if not p.requires_grad}
    assert all(p.requires_grad for p in model.parameters() if id(p) not in constant)
