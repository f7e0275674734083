"""Training-time machinery that makes runs repeatable and resumable.

* `EpochSeed` re-seeds every random generator at the start of each training epoch from
  ``(seed, epoch, rank)``. An epoch's randomness (shuffling, negative sampling, dropout) then
  does not depend on what ran before it, so a run resumed from the checkpoint of epoch ``e``
  trains epoch ``e + 1`` exactly as the uninterrupted run did.
* `AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it, so a run
  killed (even with SIGKILL) while saving leaves the previous ``last.ckpt`` intact.
* `KeepStopped` keeps a run that early stopping ended from training on when it is resumed.

A SIGTERM (Lightning's signal handling) stops a run after the current batch; the next run of the
same command resumes from the last end-of-epoch checkpoint and redoes the interrupted epoch.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed derived from (seed, epoch, rank) by NumPy's SeedSequence hashing."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeed(L.Callback):
    """Seed Python, NumPy and torch (CPU and CUDA) at every training epoch start.

    Lightning creates the epoch's DataLoader iterator (and its worker seeds) after
    ``on_train_epoch_start``, so the shuffle order and every draw in a collate function follow
    the epoch's seed. ``PL_GLOBAL_SEED`` is left alone, so Lightning's distributed sampler keeps
    shuffling by (run seed, epoch).

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # seeds every CUDA device too


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
