"""Training-time machinery that makes runs repeatable and resumable.

* `BatchSeed` re-seeds every random generator before each training step from
  ``(seed, epoch, batch, rank)``. A step's randomness then does not depend on what ran before
  it, so a run resumed from the checkpoint of epoch ``e`` trains epoch ``e + 1`` exactly as the
  uninterrupted run did (the DataModule makes shuffling and sampled negatives functions of the
  seed and the epoch too).
* `AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it, so a run
  killed (even with SIGKILL) while saving leaves the previous ``last.ckpt`` intact.
* `RunCheckpoint` is Lightning's ``ModelCheckpoint`` with ``last.ckpt`` written at the end of
  every epoch (Lightning 2.6 writes it only with a new best), so a resumed run continues from
  the epoch it was interrupted in and a finished run's ``last.ckpt`` holds where it stopped.
* `KeepStopped` keeps a run that early stopping ended from training on when it is resumed.
* `TrainThreads` runs a model's training steps on fewer torch threads than its evaluations.
* `RunProgressBar` is Lightning's bar plus the run's time left at most (``run left≤``), for
  runs long enough that a user needs to know.
* `FinetuneOnPlateau` trains some parameters (a pretrained encoder's top layers) only once
  validation stops improving without them, from the best weights so far.

A SIGTERM (Lightning's signal handling) stops a run after the current batch; the next run of the
same command resumes from the last end-of-epoch checkpoint and redoes the interrupted epoch.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    BaseFinetuning,
    ModelCheckpoint,
    RichProgressBar,
    WeightAveraging,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 32-bit seed derived from (seed, epoch, batch, rank) by NumPy's SeedSequence hashing."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(batch), int(rank)])
               .generate_state(1)[0])


class BatchSeed(L.Callback):
    """Seed Python, NumPy and torch (CPU and CUDA) before every training step.

    A step's randomness (dropout, reparameterisation noise, negatives a model draws itself)
    then depends on (seed, epoch, batch, rank) alone, not on what ran before: a run resumed
    from a checkpoint trains exactly as the uninterrupted run did. The DataLoader's share is
    handled by the DataModule (its order and negatives are functions of the seed and epoch).
    ``PL_GLOBAL_SEED`` is left alone.

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        value = batch_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        random.seed(value)
        np.random.seed(value)
        # torch.manual_seed would also queue lazy seeding of every accelerator backend, each
        # recording a stack trace when the backend is not initialised (~2.5 ms a step on CPU):
        # seed the CPU generator, and CUDA where it is in use
        torch.random.default_generator.manual_seed(value)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(value)


class TrainThreads(L.Callback):
    """Run the training epochs on ``threads`` torch intra-op threads; validations inside the
    fit, and everything outside it, keep the process's setting.

    A small model's training step is many small tensor operations. Spread over threads that
    sleep between operations (``OMP_WAIT_POLICY=PASSIVE``, which the Makefile and benchmarks
    set so that a busy machine does not slow torch down tenfold), every operation pays for
    waking them, more than the second thread saves: a BPR epoch on ml-100k's training pairs
    (batch 2,048, 64 factors) took 0.31 s on one thread against 0.43 s on two. A full-catalogue
    scoring is one large matrix product and top-K, which two threads do faster, so evaluation
    keeps them. A model opts in with ``model.train_threads`` (`Recommender`).

    Args:
        threads: intra-op threads while training (``torch.set_num_threads``).
    """

    def __init__(self, threads: int):
        if int(threads) < 1:
            raise ValueError(f"model.train_threads must be a positive number of threads or "
                             f"null, got {threads}")
        self.threads = int(threads)
        self._outer: int | None = None  # the process's setting while a training epoch runs

    def _train(self) -> None:
        if self._outer is None:
            self._outer = torch.get_num_threads()
        torch.set_num_threads(min(self.threads, self._outer))

    def _restore(self) -> None:
        if self._outer is not None:
            torch.set_num_threads(self._outer)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._train()

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restore()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._outer is not None:  # a validation inside a training epoch: back to training
            self._train()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restore()
        self._outer = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule,
                     exception: BaseException) -> None:
        self.on_train_epoch_end(trainer, module)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.on_train_epoch_end(trainer, module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes ``<name>.tmp-<pid>`` then renames it over ``<name>``.

    Remote paths (``s3://`` and the like) keep Lightning's own transactional write.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_last`` writes ``last.ckpt`` at the end of every epoch.

    Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint is written in the same
    step; with ``save_top_k=1`` on a monitored value, that is only at a new best. A run killed
    ``patience - 1`` epochs after its best would then resume from the best epoch and train the
    epochs since again, and a finished run's ``last.ckpt`` would not hold the early stopping
    that ended it (`KeepStopped`), so rerunning its command trained ``patience`` epochs more."""

    @property
    def state_key(self) -> str:
        """Lightning's ``ModelCheckpoint`` key: checkpoints written by either resume under the
        other with their best score and path (a key with this class's name would leave them
        unread, and a resumed run would take its first epoch for the best)."""
        return super().state_key.replace(type(self).__qualname__,
                                         ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_validation_end(trainer, module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _save_last_if_missing(self, trainer: L.Trainer) -> None:
        # after Lightning's own saving: skipped when it wrote a checkpoint at this step
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: L.Trainer,
                              monitor_candidates: dict[str, torch.Tensor]) -> None:
        """At a step that has just written the best checkpoint, ``last.ckpt`` becomes that file
        under a second name (a hard link, put in place by a rename) instead of a second
        serialisation of the same state; Lightning's save otherwise, and wherever a link cannot
        be made (remote paths, file systems without hard links).

        The two files would hold the same state: both are written at the same step, after every
        other callback, and the best one already records ``last.ckpt`` as the last path (so not
        at the first save, whose best checkpoint predates it; that one is written). A later
        save of either name replaces that name's file alone. On ml-100k Mult-VAE's checkpoint
        with its Adam state is 28.6 MB, and most of its epochs are a new best."""
        source = self._last_checkpoint_saved
        target = (self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
                  if self.save_last is True else "")
        if (target and source and self._last_global_step_saved == trainer.global_step
                and self.last_model_path == target
                and os.path.abspath(source) != os.path.abspath(target)
                and "://" not in source and "://" not in target):
            linked = _link_in_place(source, target) if trainer.is_global_zero else True
            if trainer.strategy.broadcast(linked):  # every rank takes the same branch
                return
        super()._save_last_checkpoint(trainer, monitor_candidates)


def _link_in_place(source: str, target: str) -> bool:
    """Make ``target`` a hard link to ``source``, replacing ``target`` atomically (a link under
    a temporary name, then a rename); False, with nothing changed, where that fails."""
    temporary = Path(target).with_name(f".{Path(target).name}.link-{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
        return True
    except OSError:
        temporary.unlink(missing_ok=True)
        return False


class KeepStopped(L.Callback):
    """A run that early stopping ended stays ended when it is resumed.

    Lightning restores `EarlyStopping`'s counters from a checkpoint but not the trainer's
    ``should_stop``; without this, rerunning a finished run's command would train further
    epochs and could change its best checkpoint.
    """

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if any(getattr(callback, "stopped_epoch", 0) > 0
               for callback in trainer.early_stopping_callbacks):
            trainer.should_stop = True


class RunTimer(L.Callback):
    """Wall-clock seconds of the fit (`fit_seconds`), of each training epoch, of each
    validation inside the fit and of the test stage. Checkpoints keep all but the last, so a
    resumed run counts its earlier sessions.

    An epoch's seconds are its training alone, as RecBole and implicit count theirs: a
    validation is excluded together with what Lightning does after it (saving the checkpoint,
    early stopping; Lightning runs `ModelCheckpoint` after every other callback, so the window
    closes at the next training batch or at the end of the epoch, not at ``on_validation_end``).
    A validation's seconds (``val_seconds``) are the evaluation alone, from its start to
    ``on_validation_end`` (before the checkpoint is saved), as RecBole times its ``_valid_epoch``;
    the sanity check before the first epoch is not one of them.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self.eval_seconds: float | None = None
        self._earlier_fit_seconds = 0.0  # fit seconds of the sessions before a resume
        self._fit_start: float | None = None
        self._epoch_start = 0.0
        self._val_start: float | None = None  # an open validation window
        self._val_in_epoch = 0.0

    def fit_seconds(self) -> float:
        """Wall-clock seconds of fitting, over every session of a resumed run: the sessions
        before the resume up to their last checkpoint, plus this one so far."""
        now = 0.0 if self._fit_start is None else time.perf_counter() - self._fit_start
        return self._earlier_fit_seconds + now

    def state_dict(self) -> dict[str, Any]:
        # in checkpoints, so a resumed run reports the whole run's epochs and seconds
        return {"epoch_seconds": list(self.epoch_seconds), "val_seconds": list(self.val_seconds),
                "fit_seconds": self.fit_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))
        self.val_seconds = list(state_dict.get("val_seconds", []))
        self._earlier_fit_seconds = float(state_dict.get("fit_seconds", 0.0))

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start, self._val_in_epoch, self._val_start = time.perf_counter(), 0.0, None

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.val_seconds.append(round(time.perf_counter() - self._val_start, 4))

    def _close_validation(self) -> None:
        if self._val_start is not None:
            self._val_in_epoch += time.perf_counter() - self._val_start
            self._val_start = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._close_validation()  # a validation inside the epoch (val_check_interval < 1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._close_validation()
        elapsed = time.perf_counter() - self._epoch_start - self._val_in_epoch
        self.epoch_seconds.append(round(elapsed, 4))

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.eval_seconds = round(time.perf_counter() - self._test_start, 4)


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning's own logs use: batches that stepped an optimiser (the x-axis of every
    logger, for training and evaluation values alike). Lightning has no public accessor for it;
    this is the one place that reads it."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def run_time_left(elapsed: float, epochs_run: float, epochs_left: float) -> float | None:
    """Seconds left at most: ``elapsed`` seconds bought ``epochs_run`` epochs (fractions count),
    ``epochs_left`` remain to the cap. None before anything ran or without a cap."""
    if epochs_run <= 0 or not np.isfinite(epochs_left) or epochs_left < 0:
        return None
    return elapsed / epochs_run * epochs_left


class RunProgressBar(RichProgressBar):
    """Lightning's default (Rich) bar plus ``run left≤``: the wall time per epoch so far
    (validation included) times the epochs left to ``trainer.max_epochs``, an upper bound, since
    early stopping may end the run sooner. The bar itself keeps the epoch against the cap and
    the time left in the epoch.

    It redraws ``refresh_rate`` times a second (4, Rich's own default, against Lightning's 100)
    and reads the values it shows at most as often, not after every batch. Both cost the training
    they report on: one bpr epoch on ml-100k (40 batches, one thread, in a terminal, medians of
    three runs) took 94.6 ms with Lightning's settings, 85.9 ms with these and without a bar."""

    def __init__(self, refresh_rate: int = 4, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._start: float | None = None
        self._first_epoch = 0
        self._shown: tuple[float, dict[str, Any]] | None = None  # (when, values) last read

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self._start, self._first_epoch = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._shown = None  # an epoch's last values are shown fresh
        super().on_train_epoch_end(trainer, module)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._shown = None
        super().on_validation_end(trainer, module)

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        now = time.perf_counter()
        if self._shown is not None and now - self._shown[0] < 1.0 / max(self.refresh_rate, 1):
            return self._shown[1]
        items = self._current_metrics(trainer, module)
        self._shown = (now, items)
        return items

    def _current_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        cap, batches = trainer.max_epochs, self.total_train_batches
        if (self._start is None or cap is None or cap < 0 or not batches
                or not np.isfinite(batches)):
            return items
        # the epoch's batches done so far (Lightning counts a batch before its batch-end hooks)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        fraction = min(done / batches, 1.0)
        left = run_time_left(time.perf_counter() - self._start,
                             trainer.current_epoch - self._first_epoch + fraction,
                             cap - trainer.current_epoch - fraction)
        if left is not None:
            items["run left≤"] = str(datetime.timedelta(seconds=round(left)))
        return items


#: when `FinetuneOnPlateau`'s parameters start to train
FINETUNE_STARTS = ("plateau", "start")


class FinetuneOnPlateau(BaseFinetuning):
    """Two phases in one fit: ``parameters`` stay frozen until validation stops improving, then
    train from the best weights so far, alone.

    The frozen phase ends where early stopping would end the run: after ``patience``
    validations without a new best of ``monitor``, or at the last validation before the epoch
    cap (which leaves one epoch; n with ``check_val_every_n_epoch=n``). So it trains exactly as
    a run without these parameters would, and the
    two-phase run can only add to it. At the next epoch's start the weights that validated best
    are restored (the best checkpoint's ``state_dict``: the weight average of
    ``model.ema_decay`` where there is one, into the model and into the average), every other
    parameter is frozen, and ``parameters`` join the optimizer as a group of their own
    (``group_name``, learning rate ``lr``, rising linearly over ``warmup`` steps). Early
    stopping starts counting afresh, against the first phase's best: the best checkpoint is the
    better of the two phases, and where the new parameters do not help, the run keeps the
    frozen phase's best.

    Both choices were measured (bert_finetune's top encoder layer, Amazon Scientific, seed 1,
    one epoch of the second phase, validation NDCG@10 against the first phase's .1032):
    everything training on from the best checkpoint's trained (not averaged) weights and
    optimizer state, .1000; from the averaged weights with the rest at a tenth of its learning
    rate, .1028; the rest frozen, .1040 (test .0977 against .0957). Ending the first phase at
    its first validation without a new best instead cut Online Retail's at epoch 3 on a dip of
    .0004 (.2265 after .2269), where the frozen run improves to epoch 7.

    Without a checkpoint callback the second phase starts from the current weights (logged).
    With ``start="start"`` the parameters train from the first step, with everything else (one
    phase). Resuming from a checkpoint of either phase continues in that phase
    (`BaseFinetuning` restores the group).

    Args:
        parameters: the parameters of the second phase (frozen during the first).
        lr: their learning rate.
        group_name: the ``name`` of their optimizer group.
        warmup: optimizer steps over which their learning rate rises from 0 to ``lr``.
        start: ``"plateau"`` (two phases) or ``"start"`` (they train from the first step).
        patience: validations without a new best that end the first phase; None: the early
            stopping callback's patience, or 1 without one.
        monitor: the validation value whose plateau ends the first phase; None: the early
            stopping callback's, else the checkpoint callback's, else ``val/ndcg@10``.
        mode: ``"max"`` or ``"min"``: which way ``monitor`` improves.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], lr: float,
                 group_name: str = "encoder", warmup: int = 0, start: str = "plateau",
                 patience: int | None = None, monitor: str | None = None, mode: str = "max"):
        super().__init__()
        if start not in FINETUNE_STARTS:
            raise ValueError(f"finetune start must be 'plateau' or 'start', got {start!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.parameters, self.lr, self.group_name = list(parameters), float(lr), group_name
        self.warmup, self.start, self.monitor, self.mode = int(warmup), start, monitor, mode
        self.patience = None if patience is None else int(patience)
        self.best: float | None = None  # the first phase's best monitored value
        self.bad_validations = 0  # since that best
        self.due = False  # the second phase starts at the next epoch
        self.unfrozen_step: int | None = None  # global step at which the second phase began
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best": self.best, "due": self.due,
                "bad_validations": self.bad_validations, "unfrozen_step": self.unfrozen_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best, self.due = state_dict.get("best"), bool(state_dict.get("due", False))
        self.bad_validations = int(state_dict.get("bad_validations", 0))
        self.unfrozen_step = state_dict.get("unfrozen_step")

    # ------------------------------------------------------------------ phases
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        for param in self.parameters:
            param.requires_grad = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # a resumed second phase: its group is back
        if self.unfrozen_step is not None:
            self._train_only_these(pl_module, self.start == "plateau")

    def _train_only_these(self, pl_module: L.LightningModule, freeze_the_rest: bool) -> None:
        """``parameters`` train; with ``freeze_the_rest`` every other parameter stops."""
        own = {id(param) for param in self.parameters}
        for param in pl_module.parameters():
            if id(param) in own:
                param.requires_grad = True
            elif freeze_the_rest:
                param.requires_grad = False

    def _monitor(self, trainer: L.Trainer) -> str:
        if self.monitor is not None:
            return self.monitor
        for callback in (trainer.early_stopping_callback, trainer.checkpoint_callback):
            if getattr(callback, "monitor", None):
                return str(callback.monitor)
        return "val/ndcg@10"

    def _patience(self, trainer: L.Trainer) -> int:
        if self.patience is not None:
            return self.patience
        stopping = trainer.early_stopping_callback
        return max(int(stopping.patience), 1) if stopping is not None else 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (self.start != "plateau" or self.unfrozen_step is not None or self.due
                or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING):
            return
        monitor = self._monitor(trainer)
        value = trainer.callback_metrics.get(monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
        epochs_left = (trainer.max_epochs - trainer.current_epoch - 1
                       if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None)
        plateau = self.bad_validations >= self._patience(trainer)
        # the last validation before the cap: one epoch left, or the epochs up to the next
        # validation with check_val_every_n_epoch > 1 (there is none after them)
        last = epochs_left is not None and 0 < epochs_left <= (trainer.check_val_every_n_epoch
                                                                 or 1)
        if epochs_left == 0 or not (plateau or last):
            return
        self.due = True
        rank_zero_info(
            f"{type(pl_module).__name__}: {monitor} "
            + (f"has not beaten {self.best:.4f} for {self.bad_validations} validations"
               if plateau else f"is still improving with {epochs_left} epoch(s) left")
            + f" (epoch {trainer.current_epoch + 1}): the next epochs train the "
            f"{self.group_name} alone, from the weights that validated best")
        self._restart_early_stopping(trainer)

    @staticmethod
    def _restart_early_stopping(trainer: L.Trainer) -> None:
        """Early stopping gives the second phase its full patience: a stop it decided at this
        validation is undone and its count restarts; where it counts later (at the epoch's end,
        Lightning's default with one validation per epoch) it will count this epoch from 0."""
        for callback in trainer.early_stopping_callbacks:
            if getattr(callback, "_check_on_train_epoch_end", False):
                callback.wait_count = -1
            else:
                callback.wait_count = 0
                if callback.stopped_epoch == trainer.current_epoch and trainer.should_stop:
                    callback.stopped_epoch = 0
                    trainer.should_stop = False

    def finetune_function(self, pl_module: L.LightningModule, epoch: int,
                          optimizer: torch.optim.Optimizer) -> None:
        trainer = self._trainer
        if trainer is None or optimizer is not trainer.optimizers[0]:
            return
        if self.unfrozen_step is not None or not (self.due or self.start == "start"):
            return
        if self.due:
            self._restore_best(trainer, pl_module)
        self._train_only_these(pl_module, freeze_the_rest=self.due)
        optimizer.add_param_group({"params": self.parameters, "name": self.group_name,
                                   "lr": self.lr * self._warmup_scale(0)})
        self.due, self.unfrozen_step = False, trainer.global_step

    def _restore_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The weights that validated best (a checkpoint's ``state_dict``: the weight average
        where there is one) into the model and its weight average, where there is a best
        checkpoint."""
        checkpoint = trainer.checkpoint_callback
        path = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        if not path or not Path(path).exists():
            rank_zero_info(
                f"{type(pl_module).__name__}: no best checkpoint to restore; the {self.group_name}"
                " trains from the current weights")
            return
        state = trainer.strategy.checkpoint_io.load_checkpoint(path,
                                                              map_location=pl_module.device)
        validated = {**state, "current_model_state": state["state_dict"]}
        pl_module.load_state_dict(state["state_dict"])
        for callback in trainer.callbacks:
            if isinstance(callback, WeightAveraging) and "averaging_state" in state:
                callback.on_load_checkpoint(trainer, pl_module, validated)
        pl_module.on_load_checkpoint(state)
        rank_zero_info(
            f"{type(pl_module).__name__}: the weights that validated best (epoch "
            f"{state.get('epoch', 0) + 1}, {path}) restored; only the {self.group_name} trains "
            "from here")

    def _warmup_scale(self, steps_done: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (steps_done + 1) / self.warmup)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.unfrozen_step is None or self.warmup <= 0:
            return
        scale = self._warmup_scale(trainer.global_step - self.unfrozen_step)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("name") == self.group_name:
                    group["lr"] = self.lr * scale
