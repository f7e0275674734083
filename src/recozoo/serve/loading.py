"""Load a finished run (or a fusion of runs) for inference, from its run artifacts only.

The model is rebuilt from the run's resolved ``config.yaml`` with a `DatasetInfo` rebuilt from
``items.parquet`` and ``users.parquet`` (the raw dataset is never reloaded), and its weights are
read with ``torch.load(weights_only=True)`` or safetensors: a checkpoint can never run code.

``run=`` may name:

* a run folder (``config.yaml``, ``items.parquet`` ...): its best checkpoint (the one named in
  ``metrics.json``, else ``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``);
* a checkpoint file inside a run folder (``<run>/checkpoints/<name>.ckpt`` or ``.safetensors``);
* a fusion folder (``fusion.json``, written by ``python -m recozoo.ensemble``): every member run
  is loaded and their scores are fused with the recorded weights (`FusedScorer`).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from recozoo import artifacts
from recozoo.artifacts import RunDir
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.ensemble.normalise import FusionRule, normalise_lists
from recozoo.evaluation import Ranker
from recozoo.models.base import Recommender
from recozoo.serve.run_files import (
    RunLoadError,
    fusion_members,
    read_config,
    resolve_checkpoint,
    run_dirs,
)
from recozoo.train import build_model, build_ranker


# ---------------------------------------------------------------------------------- catalogue
@dataclass
class Catalog:
    """What serving knows about items and users, read from a run folder's artifacts.

    Args:
        items: ``items.parquet`` (item, item_id, popularity, is_tail, bucket, and title, text,
            category where the data has them), indexed by item index.
        user_ids: external user id per user index.
        history_items / history_indptr: every known interaction, CSR by user, in time order.
        info: the dataset facts the run's model was built with (`recozoo.artifacts.item_facts`).
    """

    items: pd.DataFrame
    user_ids: np.ndarray
    history_items: np.ndarray
    history_indptr: np.ndarray
    info: DatasetInfo

    def __post_init__(self) -> None:
        self.item_ids = self.items["item_id"].astype(str).to_numpy()
        self.item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.user_index = {str(user_id): u for u, user_id in enumerate(self.user_ids)}
        self.popularity = self.info.item_popularity
        self.is_tail = self.info.tail_mask.numpy()
        self.titles = (self.items["title"].astype(str).to_numpy() if "title" in self.items
                       else None)
        self.categories: list[str] | None = None
        self.item_category_name: np.ndarray | None = None
        if "category" in self.items:
            self.item_category_name = self.items["category"].astype(str).to_numpy()
            self.categories = sorted(set(self.item_category_name))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def user_history(self, user: int) -> np.ndarray:
        """The known items of ``user`` (an index), oldest first."""
        return self.history_items[self.history_indptr[user]:self.history_indptr[user + 1]]

    def category_mask(self, name: str) -> torch.Tensor:
        """(n_items,) True for items of category ``name``."""
        if self.item_category_name is None:
            raise KeyError(name)
        return torch.as_tensor(self.item_category_name == name)

    @classmethod
    def from_run_dir(cls, run_dir: Path, head_share: float | None = None,
                     name: str = "") -> Catalog:
        """The catalogue of a run folder; ``head_share`` is the run's ``eval.head_share``
        (used only for runs written before items.parquet held the popularity buckets)."""
        run = RunDir(run_dir)
        items = artifacts.read_items(run)
        users = artifacts.read_table(run.users, ("user", "user_id"))
        history = artifacts.read_table(run.history, ("user", "item"))
        user = history["user"].to_numpy(np.int64)
        # a stable sort by user keeps each user's items in the file's (time) order
        order = np.argsort(user, kind="stable")
        indptr = np.r_[0, np.cumsum(np.bincount(user, minlength=len(users)))]
        info = artifacts.item_facts(items, name or run.path.name, len(users), head_share)
        return cls(items=items, user_ids=users["user_id"].astype(str).to_numpy(),
                   history_items=history["item"].to_numpy(np.int64)[order],
                   history_indptr=indptr, info=info)


# ---------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """What serving ranks with: one model, or a fusion of models."""

    name: str
    #: can score a user unknown at training time from a history (see Recommender)
    scores_new_users: bool
    #: recent items a batch carries per user
    history_len: int
    #: how its scores become lists: the run's top-N and re-ranker (`recozoo.evaluation.Ranker`)
    ranker: Ranker

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_items) scores, higher is better."""
        ...


class ModelScorer:
    """One trained model of a run folder.

    Args:
        model: the rebuilt model with its weights, in eval mode.
        ranker: the run's ranking of the model's scores (top-N, ``rerank=``).
        name: the model's name (the ``model=`` choice of the run).
        history_len: recent items a batch carries per user (the run's ``eval.history_len``).
    """

    def __init__(self, model: Recommender, ranker: Ranker, name: str, history_len: int):
        self.model = model
        self.ranker = ranker
        self.name = name
        self.history_len = history_len
        self.scores_new_users = bool(type(model).scores_new_users)

    @torch.inference_mode()
    def score(self, batch: EvalBatch) -> torch.Tensor:
        if batch.history.shape[1] > self.history_len:  # a fusion's batch: its longest history
            batch = replace(batch, history=batch.history[:, -self.history_len:])
        return self.ranker.scores(batch, mask_inputs=False)  # (B, n_items)

    @torch.inference_mode()
    def ranked_lists(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, top_n) items and scores of the batch's users, as evaluation ranked them."""
        if batch.history.shape[1] > self.history_len:
            batch = replace(batch, history=batch.history[:, -self.history_len:])
        return self.ranker.rank(batch)


class FusedScorer:
    """Scores of several runs' models fused exactly as `recozoo.ensemble.fusion` fuses their
    saved top-N lists, so a served fusion ranks as the evaluated one did.

    For each member: its ranked list as its run evaluated it (inputs masked, its top-N, its
    re-ranker), normalised by `recozoo.ensemble.normalise.normalise_lists` (by position where
    it has a re-ranker); an item the member
    did not list gets the member's floor. The fused score is the weighted sum (CombSUM; Fox and
    Shaw, TREC-2 1994) over the candidates, the items some member listed. Other items follow
    every candidate, most popular first (the ensemble's own rule for filling short lists).
    """

    def __init__(self, members: list[ModelScorer], weights: list[float], rule: FusionRule,
                 info: DatasetInfo, name: str):
        self.members, self.weights, self.rule, self.name = members, weights, rule, name
        self.scores_new_users = all(m.scores_new_users for m in members)
        self.history_len = max(m.history_len for m in members)
        popularity = info.item_popularity.float()
        # in (0, 1), ordered by popularity: the fill order of items no member listed
        self.fill = popularity / (popularity.max() + 1.0)
        self.ranker = Ranker(self, info, top_n=max(m.ranker.top_n for m in members))

    @torch.inference_mode()
    def score(self, batch: EvalBatch) -> torch.Tensor:
        n_items = len(self.fill)
        fused = torch.zeros(len(batch), n_items, device=batch.user.device)
        listed = torch.zeros(len(batch), n_items, dtype=torch.bool, device=batch.user.device)
        rows = torch.arange(len(batch), device=batch.user.device)[:, None]
        for member, weight in zip(self.members, self.weights):
            items, scores = member.ranked_lists(batch)  # (B, N) in list order
            valid = torch.isfinite(scores)
            values, floor = normalise_lists(scores, valid, self.rule,
                                            by_position=member.ranker.reranker is not None)
            # float32, as the ensemble keeps the normalised values of saved lists
            dense = floor.float().expand(-1, n_items).clone()  # (B, n_items)
            dense[rows.expand_as(items)[valid], items[valid]] = values[valid].float()
            fused += weight * dense
            listed[rows.expand_as(items)[valid], items[valid]] = True
        low = fused.masked_fill(~listed, math.inf).min(dim=1, keepdim=True).values  # (B, 1)
        low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
        return torch.where(listed, fused, low - 1.0 + self.fill.to(fused.device))


# ---------------------------------------------------------------------------------- loading
@dataclass
class LoadedRun:
    """A run ready for inference: its catalogue and its scorer."""

    path: Path
    catalog: Catalog
    scorer: ModelScorer | FusedScorer


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights, read without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        # a forbidden global (UnpicklingError names it), a truncated or unreadable file
        raise RunLoadError(f"{path}: not a weights-only checkpoint ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise RunLoadError(f"{path}: expected a Lightning checkpoint or a state dict of tensors")
    return state


def load_model(run_dir: Path, checkpoint: Path | None = None,
               device: str | torch.device = "cpu") -> tuple[ModelScorer, Catalog]:
    """Rebuild a run's model from its config and artifacts and load its weights.

    Args:
        run_dir: the run folder.
        checkpoint: the weights; the run's best checkpoint when None.
        device: where the model runs.
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    eval_cfg = cfg.get("eval") or {}
    catalog = Catalog.from_run_dir(run_dir, head_share=eval_cfg.get("head_share"),
                                   name=str(cfg.get("data", {}).get("name", run_dir.name)))
    model = build_model(cfg, catalog.info)
    checkpoint = Path(checkpoint) if checkpoint else resolve_checkpoint(run_dir)
    state = load_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RunLoadError(f"{checkpoint} does not fit the model of {RunDir(run_dir).config}: "
                           f"{error}") from None
    model.eval().to(device)
    model.hold_weights()  # served weights never change: what a model derives from them may stay
    # the run's own ranking (top-N and re-ranker): a served list is the evaluated list
    ranker = build_ranker(cfg, model, catalog.info)
    return ModelScorer(model, ranker, name=_model_name(run_dir, cfg),
                       history_len=int(eval_cfg.get("history_len", 50))), catalog


def load_catalog(path: str | Path) -> Catalog:
    """The catalogue of ``run=path`` alone (no model is built): ids, titles, histories."""
    run_dir = run_dirs(Path(path).expanduser())[0]
    return Catalog.from_run_dir(run_dir, head_share=(read_config(run_dir).get("eval") or {}
                                                     ).get("head_share"))


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``path`` (a run folder, a checkpoint in one, or a fusion folder) for inference."""
    path = Path(path).expanduser()
    folders = run_dirs(path)
    if path.is_file():
        scorer, catalog = load_model(folders[0], path, device)
        return LoadedRun(folders[0], catalog, scorer)
    if RunDir(path).is_fusion:
        return _load_fusion(path, device)
    scorer, catalog = load_model(path, None, device)
    return LoadedRun(path, catalog, scorer)


def _load_fusion(folder: Path, device: str | torch.device) -> LoadedRun:
    """Every member run of fusion.json, fused with its weights; members share one catalogue."""
    members, rule = fusion_members(folder)
    scorers, catalog = [], None
    for row, (run_dir, _) in enumerate(members):
        scorer, member_catalog = load_model(run_dir, None, device)
        if catalog is None:
            catalog = member_catalog
        elif not np.array_equal(catalog.item_ids, member_catalog.item_ids):
            raise RunLoadError(f"{RunDir(folder).fusion}: members[{row}] ({run_dir}) has "
                               "another item catalogue than members[0]")
        scorers.append(scorer)
    name = "fusion(" + ",".join(s.name for s in scorers) + ")"
    fused = FusedScorer(scorers, [w for _, w in members], rule, catalog.info, name)
    return LoadedRun(folder, catalog, fused)


def _model_name(run_dir: Path, cfg: DictConfig) -> str:
    run = RunDir(run_dir)
    if run.metrics.exists():
        try:
            return str(run.read_record().model)
        except ValueError:
            pass
    return str(cfg.model._target_).rsplit(".", 1)[-1].lower()
