"""SQN/DQN: the reward, the double-Q target, the target network, transitions, checkpoints and
the tail bonus, with known answers on tiny data."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from conftest import compose_config
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.data.interactions import EVENT_CODES
from recozoo.evaluation import Ranker
from recozoo.models.components.q_heads import (
    EventReward,
    TargetNetwork,
    double_q_target,
    rewards_with_mean,
)
from recozoo.models.sqn import SQN
from recozoo.train import build_experiment, build_model

WEIGHTS = {"view": 0.2, "cart": 0.5, "purchase": 1.0}


def _sqn(info: DatasetInfo, **kwargs) -> SQN:
    return SQN(info, **kwargs)


def _info(n_items: int = 6) -> DatasetInfo:
    popularity = torch.arange(n_items, 0, -1).float()
    return DatasetInfo(name="tiny", n_users=4, n_items=n_items, item_popularity=popularity,
                       tail_mask=torch.arange(n_items) >= 2, head_share=0.3)


def _eval_batch(history: torch.Tensor) -> EvalBatch:
    """An evaluation batch of these histories (one row a user); the rest is not read here."""
    users = torch.arange(len(history))
    return EvalBatch(user=users, history=history, seen_rows=users[:1], seen_cols=history[:1, -1],
                     target_rows=users[:1], target_cols=history[:1, 0])


def test_reward_is_event_weight_plus_tail_bonus():
    reward = EventReward(WEIGHTS, torch.tensor([False, False, True, True]), tail_bonus=0.7)
    item = torch.tensor([0, 1, 2, 3])
    event = torch.tensor([EVENT_CODES["view"], EVENT_CODES["purchase"], EVENT_CODES["cart"],
                          EVENT_CODES["view"]])
    assert torch.allclose(reward(item, event), torch.tensor([0.2, 1.0, 1.2, 0.9]))
    # data without event types serve code 0 everywhere: every event is worth a view
    no_bonus = EventReward(WEIGHTS, torch.tensor([False, False, True, True]))
    assert torch.allclose(no_bonus(item, torch.zeros(4, dtype=torch.long)), torch.full((4,), 0.2))


def test_reward_weights_must_name_every_event():
    with pytest.raises(ValueError, match="missing \\['purchase'\\].*unknown \\['buy'\\]"):
        EventReward({"view": 1.0, "cart": 2.0, "buy": 3.0}, torch.zeros(3, dtype=torch.bool))


def test_rewards_with_mean_keep_the_ratios_and_give_the_average_event_the_mean():
    counts = torch.tensor([6, 3, 1])  # views, carts, purchases among training events
    scaled, factor = rewards_with_mean(WEIGHTS, counts, 0.2)
    logged = (6 * 0.2 + 3 * 0.5 + 1 * 1.0) / 10  # 0.37 before
    assert factor == pytest.approx(0.2 / logged)
    average = sum(scaled[name] * n for name, n in zip(("view", "cart", "purchase"), (6, 3, 1)))
    assert average / 10 == pytest.approx(0.2)
    assert scaled["purchase"] / scaled["view"] == pytest.approx(5.0)
    # a log of purchases alone (every event 1.0) earns what a log of views does
    assert rewards_with_mean(WEIGHTS, torch.tensor([0, 0, 50]), 0.2)[0]["purchase"] == (
        pytest.approx(0.2))
    # data without event types log views: 0.2 stays 0.2, bit for bit
    assert rewards_with_mean(WEIGHTS, None, 0.2) == (WEIGHTS, 1.0)


@pytest.mark.parametrize("n", [1, 3, 41, 42253])
def test_a_log_of_one_event_type_keeps_its_reward_bit_for_bit(n):
    # 0.2 * 3 / 3 is not 0.2 in floating point: a sum over counts would move view-only data
    assert rewards_with_mean(WEIGHTS, torch.tensor([n, 0, 0]), 0.2) == (WEIGHTS, 1.0)
    assert rewards_with_mean(WEIGHTS, torch.tensor([0, 0, n]), 1.0) == (WEIGHTS, 1.0)


@pytest.mark.parametrize("weights, mean, message", [
    ({"view": 0.0, "cart": 0.0, "purchase": 1.0}, 0.2, "earn no reward on average"),
    (WEIGHTS, 0.0, "positive number"),
    (WEIGHTS, float("nan"), "positive number"),
])
def test_rewards_with_mean_refuses_what_no_scale_reaches(weights, mean, message):
    with pytest.raises(ValueError, match=f"model.reward_mean.*{message}"):
        rewards_with_mean(weights, torch.tensor([4, 0, 0]), mean)


def test_sqn_scales_its_rewards_by_the_training_events(make_config):
    cfg = make_config(["model=sqn", "model.reward_mean=0.2"])
    experiment = build_experiment(cfg)
    dm, model = experiment.datamodule, experiment.model
    counts = dm.info.event_counts
    assert counts is not None and int(counts.sum()) == len(dm.train)
    assert torch.equal(counts, torch.as_tensor(np.bincount(dm.train.event, minlength=3)))
    weight = model.reward.event_weight.double()
    assert float((weight * counts).sum() / counts.sum()) == pytest.approx(0.2)
    assert float(weight[2] / weight[0]) == pytest.approx(cfg.model.reward.purchase
                                                         / cfg.model.reward.view)


def test_a_rebuilt_sqn_says_it_has_no_event_counts(tmp_path, caplog):
    # serving rebuilds the model from items.parquet, which counts no events; the rewards are
    # training state only (not in the checkpoint), and the log says what the scale was built on
    from recozoo.serve.loading import load_model
    from recozoo.train import run

    cfg = compose_config(["model=sqn", "model.reward_mean=0.2"], tmp_path / "sqn")
    with caplog.at_level("INFO", logger="recozoo.models.sqn"):
        run(cfg)
        trained_log = caplog.text
        caplog.clear()
        load_model(tmp_path / "sqn")
    assert "event rewards x" in trained_log and "no event counts" not in trained_log
    assert "no event counts: every event taken as a view" in caplog.text


def test_double_q_target_lets_online_choose_and_target_value():
    reward = torch.tensor([1.0, 0.0])
    online = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])  # picks items 1 and 0
    target = torch.tensor([[9.0, 2.0, 4.0], [1.0, 8.0, 0.0]])  # would pick 0 and 1 itself

    def target_at(action):
        return target.gather(1, action[:, None])[:, 0]

    expected = torch.tensor([1.0 + 0.5 * 2.0, 0.0 + 0.5 * 1.0])
    assert torch.allclose(double_q_target(reward, online.argmax(-1), target_at, gamma=0.5),
                          expected)
    done = torch.tensor([True, False])
    assert torch.allclose(double_q_target(reward, online.argmax(-1), target_at, 0.5, done),
                          torch.tensor([1.0, 0.5]))


def _set(module: nn.Linear, value: float) -> None:
    with torch.no_grad():
        module.weight.fill_(value)
        module.bias.fill_(value)


def test_soft_target_update_moves_by_tau():
    online = nn.Linear(2, 2)
    _set(online, 0.0)
    target = TargetNetwork(online, tau=0.25)
    _set(online, 4.0)
    assert target.update(online)
    assert torch.allclose(target.network.weight, torch.full((2, 2), 1.0))
    target.update(online)
    assert torch.allclose(target.network.bias, torch.full((2,), 1.75))  # 1 + 0.25 * 3
    assert int(target.steps) == 2
    assert not any(p.requires_grad for p in target.parameters())


def test_periodic_target_update_copies_every_n_steps():
    online = nn.Linear(2, 2)
    _set(online, 0.0)
    target = TargetNetwork(online, tau=1.0, every=3)
    _set(online, 1.0)
    assert [target.update(online) for _ in range(3)] == [False, False, True]
    assert torch.equal(target.network.weight, online.weight)
    _set(online, 2.0)
    target.update(online)
    assert torch.allclose(target.network.weight, torch.ones(2, 2))  # not due until step 6


def test_target_network_stays_in_eval_mode():
    model = _sqn(_info(), dim=8, dropout=0.5)
    model.train()
    assert model.q_network.training and not model.target.network.training
    assert not any(m.training for m in model.target.modules())


@pytest.mark.parametrize("n_negatives", [0, 3])
def test_transitions_pair_each_state_with_the_state_after_its_action(n_negatives, monkeypatch):
    """The batched TD loss, and its gradients, equal a per-position loop over prefixes of the
    window that reads each state's whole Q-row: the logged action's TD error and, with sampled
    ignored items, theirs (reward 0, the state stays)."""
    torch.manual_seed(0)
    info = _info()
    model = _sqn(info, dim=8, dropout=0.0, dropout_hidden=0.0, gamma=0.9, tail_bonus=0.5,
                 target_tau=1.0, n_negatives=n_negatives,
                 reward=WEIGHTS, supervised=False, rank_head="q")
    with torch.no_grad():  # a target network that differs from the online one
        for p in model.target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    drawn = []
    randint = torch.randint

    def recorded_randint(*args, **kwargs):
        drawn.append(randint(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(torch, "randint", recorded_randint)
    pad = info.pad_item
    batch = {"user": torch.tensor([0, 1]),
             "input": torch.tensor([[pad, pad, 1, 2], [0, 3, 4, 5]]),
             "target": torch.tensor([[-100, -100, 2, 3], [3, 4, 5, 1]]),
             "event": torch.tensor([[0, 0, 2, 0], [1, 0, 0, 2]])}
    td = model.losses(batch)["td"]
    batched = torch.autograd.grad(td, list(model.q_network.parameters()))
    negatives = iter(drawn[0]) if n_negatives else None

    errors, ignored = [], []
    for row in range(2):
        seq = torch.cat([batch["input"][row], batch["target"][row, -1:]])[None]  # (1, L + 1)
        for t in range(4):
            action = int(batch["target"][row, t])
            if action < 0:
                continue
            with torch.no_grad():
                next_online = model.q_network.q_values(model.q_network(seq[:, :t + 2])[:, -1])
                next_target = model.target.network.q_values(model.target(seq[:, :t + 2])[:, -1])
                now_target = model.target.network.q_values(model.target(seq[:, :t + 1])[:, -1])
            q_row = model.q_network.q_values(model.q_network(seq[:, :t + 1])[:, -1])[0]
            reward = WEIGHTS[("view", "cart", "purchase")[int(batch["event"][row, t])]]
            reward += 0.5 * bool(info.tail_mask[action])
            value = next_target[0, next_online[0].argmax()]
            errors.append((q_row[action] - (reward + 0.9 * value)) ** 2)
            if n_negatives:
                stay = 0.9 * now_target[0, q_row.detach().argmax()]
                ignored.append((q_row[next(negatives)] - stay) ** 2)
    expected = torch.stack(errors).mean()
    if n_negatives:
        expected = expected + torch.cat(ignored).mean()
    assert torch.allclose(td, expected, atol=1e-5)
    looped = torch.autograd.grad(expected, list(model.q_network.parameters()))
    for got, want in zip(batched, looped):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_one_training_step_on_either_shared_encoder(encoder):
    info = _info()
    model = _sqn(info, encoder=encoder, dim=8, max_len=5)
    pad = info.pad_item
    batch = {"user": torch.tensor([0]), "input": torch.tensor([[pad, 0, 1, 2]]),
             "target": torch.tensor([[-100, 1, 2, 3]]), "event": torch.zeros(1, 4).long()}
    losses = model.losses(batch)
    assert set(losses) == {"loss", "td", "ce"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.supervised_bias.grad is not None and model.q_network.head.weight.grad is not None
    assert all(p.grad is None for p in model.target.parameters())


@pytest.mark.parametrize("supervised", [True, False])
def test_sampled_losses_with_the_whole_catalogue_as_the_sample_are_the_full_losses(supervised):
    """Sampled training computes Q and the softmax over a shared sample; drawn as every item
    once, uniformly, the log-Q correction cancels and the double-Q argmax sees every action, so
    the TD and cross-entropy terms are the full ones."""
    info = _info()
    kwargs = {"dim": 8, "dropout": 0.0, "dropout_hidden": 0.0, "gamma": 0.9, "n_negatives": 3,
              "supervised": supervised, "rank_head": "mix" if supervised else "q",
              "negative_sampling": "uniform"}
    torch.manual_seed(0)
    full = _sqn(info, sampled_softmax=False, **kwargs)
    sampled = _sqn(info, sampled_softmax=True, n_sampled=info.n_items, **kwargs)
    sampled.load_state_dict(full.state_dict())
    sampled.negative_sampler.forward = lambda k: torch.arange(info.n_items)  # the catalogue
    with torch.no_grad():  # a target network that differs from the online one
        for target, online in zip(sampled.target.parameters(), full.target.parameters()):
            online.add_(0.1 * torch.randn_like(online))
            target.copy_(online)
    pad = info.pad_item
    batch = {"user": torch.tensor([0, 1]),
             "input": torch.tensor([[pad, pad, 1, 2], [0, 3, 4, 5]]),
             "target": torch.tensor([[-100, -100, 2, 3], [3, 4, 5, 1]]),
             "event": torch.tensor([[0, 0, 2, 0], [1, 0, 0, 2]])}
    torch.manual_seed(1)
    expected = full.losses(batch)
    torch.manual_seed(1)  # the same ignored items for both
    got = sampled.losses(batch)
    assert set(got) == set(expected) == ({"loss", "td", "ce"} if supervised else {"loss", "td"})
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_sampled_training_is_chosen_by_catalogue_size_and_trains(make_config):
    from conftest import fit_briefly

    _, full, _, _ = fit_briefly(make_config(["model=sqn"]))
    assert not full.sampled_softmax  # a tiny catalogue: the full heads by default
    _, model, trainer, _ = fit_briefly(make_config(["model=dqn", "model.sampled_softmax=true",
                                                    "model.n_sampled=16"]))
    assert model.sampled_softmax and model.n_sampled == 16
    assert all(torch.isfinite(p).all() for p in model.parameters())  # after 3 sampled steps
    batch = next(iter(trainer.datamodule.train_dataloader()))
    model.train()
    assert torch.isfinite(model.losses(batch)["loss"])
    with pytest.raises(ValueError, match="n_sampled must be >= 1, got 0"):
        _sqn(_info(), n_sampled=0)


def test_dqn_needs_q_ranking():
    with pytest.raises(ValueError, match="needs the supervised head"):
        _sqn(_info(), supervised=False, rank_head="mix")
    dqn = _sqn(_info(), supervised=False, rank_head="q")
    assert dqn.supervised_bias is None


def _fit(cfg, epochs: int):
    L.seed_everything(cfg.seed, workers=True)
    experiment = build_experiment(cfg)
    dm, model = experiment.datamodule, experiment.model
    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    return dm, model, trainer


def test_target_network_and_counter_survive_checkpoint_and_resume(make_config, tmp_path):
    # the weights themselves, not their average (model.ema_decay), are what is checkpointed here
    cfg = make_config(["model=sqn", "model.target_tau=1.0", "model.target_every=2",
                       "model.batch_size=32", "model.ema_decay=null"])
    dm, model, trainer = _fit(cfg, epochs=1)
    steps = int(model.target.steps)
    assert steps == trainer.global_step > 2
    path = tmp_path / "sqn.ckpt"
    trainer.save_checkpoint(path)

    restored = SQN.load_from_checkpoint(path, info=dm.info, weights_only=True)
    assert int(restored.target.steps) == steps
    for name, value in model.target.state_dict().items():
        assert torch.equal(restored.target.state_dict()[name], value), name

    # resuming continues the counter (and the periodic schedule) where it stopped
    resumed = build_model(cfg, dm.info)
    trainer2 = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer2.fit(resumed, datamodule=dm, ckpt_path=str(path))
    assert int(resumed.target.steps) == trainer2.global_step == 2 * steps


def _tail_share(dm, model, k: int = 10) -> float:
    model.eval()
    batch = dm.eval_batch("test", dm.eval_users["test"])
    with torch.no_grad():
        top = torch.topk(Ranker(model, dm.info).scores(batch), k).indices
    return dm.info.tail_mask[top].float().mean().item()


@pytest.mark.parametrize("model_name", ["sqn", "dqn"])
def test_tail_bonus_raises_tail_exposure(make_config, model_name):
    shares = []
    for bonus in (0.0, 25.0):  # in views: dqn's rewards are sqn's x5, so is the bonus
        # six short epochs: a weight average (sqn's model.ema_decay) would still lag behind
        cfg = make_config([f"model={model_name}", "model.batch_size=16", "model.dim=16",
                           "model.ema_decay=null"])
        cfg.model.tail_bonus = bonus * cfg.model.reward.view
        dm, model, _ = _fit(cfg, epochs=6)
        shares.append(_tail_share(dm, model))
    print(model_name, shares)
    assert shares[1] > shares[0] + 0.1, shares


def test_mix_grid_keeps_the_weight_that_validates_best():
    """With mix_grid, mix ranking scores at mix_weight until it chooses; then the grid's weight
    with the best validation value, the trained weight on ties; the scores follow it."""
    info = _info()
    model = _sqn(info, dim=8, mix_weight=1.0, mix_grid=[0.0, 0.5, 1.0, 2.0]).eval()
    assert float(model.mix_weight) == 1.0
    values = {0.0: 0.30, 0.5: 0.31, 1.0: 0.29, 2.0: 0.31}  # 0.5 first of two equal bests
    tried = []

    def validate():
        tried.append(float(model.mix_weight))
        return values[tried[-1]]

    chosen = model.choose_on_validation(validate)
    assert tried == [1.0, 0.0, 0.5, 2.0]  # the trained weight first, each weight once
    assert chosen == {"mix_weight": 0.5,
                      "mix_validation": {"0": 0.30, "0.5": 0.31, "1": 0.29, "2": 0.31}}
    batch = _eval_batch(torch.tensor([[info.pad_item, 0, 1]]))
    with torch.no_grad():
        state = model.q_network(batch.history)[:, -1]
        expected = (model.supervised_logits(state).log_softmax(-1)
                    + 0.5 * model.q_network.q_values(state))
        assert torch.allclose(model.score(batch), expected)
    # ties with the trained weight keep it, whatever weight the model held before (a best
    # checkpoint with an earlier choice); a NaN validation is never chosen
    model.mix_weight.fill_(2.0)
    assert model.choose_on_validation(
        lambda: {0.0: 0.3, 0.5: float("nan"), 1.0: 0.3, 2.0: 0.1}[float(model.mix_weight)]
    )["mix_weight"] == 1.0
    # without a grid, or ranking by one head, nothing is chosen and nothing is validated
    for fixed in (_sqn(info, mix_weight=0.7), _sqn(info, mix_grid=[0.0], rank_head="supervised"),
                  _sqn(info, supervised=False, rank_head="q", mix_grid=[0.0, 1.0])):
        assert fixed.choose_on_validation(lambda: pytest.fail("validated")) == {}
    for bad in ([], [-0.5, 1.0], [float("inf")]):
        with pytest.raises(ValueError, match="model.mix_grid must list finite weights >= 0"):
            _sqn(info, mix_grid=bad)


def test_a_checkpoint_from_before_mix_grid_scores_with_its_trained_weight(tmp_path):
    """Weights saved without a chosen mix weight (a run from before the setting) load into a
    model with a grid and score as they were trained: at mix_weight."""
    info = _info()
    old = _sqn(info, dim=8, mix_weight=0.7).eval()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": {}}, path)
    checkpoint = torch.load(path, weights_only=False)
    new = _sqn(info, dim=8, mix_weight=0.7, mix_grid=[0.0, 1.0]).eval()
    new.on_load_checkpoint(checkpoint)
    new.load_state_dict(checkpoint["state_dict"])  # strict: the chosen weight is filled in
    assert float(new.mix_weight) == 0.7
    batch = _eval_batch(torch.tensor([[0, 1, 2]]))
    with torch.no_grad():
        assert torch.equal(new.score(batch), old.score(batch))


def test_a_run_chooses_the_mix_weight_and_tests_and_serves_with_it(make_config):
    """train.py lets sqn choose its mix weight on validation with the best weights, writes it
    into checkpoints/best.ckpt and metrics.json, and the test and serving score with it."""
    from conftest import train_and_read_choice

    cfg = make_config(["model=sqn", "model.batch_size=32", "model.dim=16",
                       "trainer.max_epochs=2", "model.mix_grid=[0.0,3.0]"])
    record, values, state, served = train_and_read_choice(cfg, "mix_weight", "mix_validation")
    chosen = record.chosen_on_validation
    assert sorted(values) == [0.0, 1.0, 3.0]  # the trained weight and the grid's
    assert chosen["mix_weight"] == max(values, key=lambda w: (values[w], w == 1.0))
    assert float(state["mix_weight"]) == chosen["mix_weight"]
    assert float(served.mix_weight) == chosen["mix_weight"]


@pytest.mark.parametrize("rank_head", ["q", "supervised", "mix"])
def test_scores_in_the_memory_a_batch_offers_are_the_heads(rank_head):
    """Each ranking head's scores, written into the memory an evaluation batch offers (the
    `Ranker`'s, reused) and changed there in place, equal the head's plain formula."""
    torch.manual_seed(0)
    model = _sqn(_info(), rank_head=rank_head, mix_weight=0.7, dim=8).eval()
    history = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 6, 1]])  # 6: the padding item
    batch = _eval_batch(history)
    with torch.no_grad():
        state = model.q_network.last_state(history)
        q, supervised = model.q_network.q_values(state), model.supervised_logits(state)
        expected = {"q": q, "supervised": supervised,
                    "mix": supervised.log_softmax(-1) + 0.7 * q}[rank_head]
        assert torch.allclose(model.score(batch), expected, atol=1e-6)
        batch.scores_out = torch.full_like(expected, float("nan"))
        scores = model.score(batch)
        assert scores.data_ptr() == batch.scores_out.data_ptr()
        assert torch.allclose(scores, expected, atol=1e-6)
