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

import json
import math
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.models.base import Recommender
from recozoo.serve.run_files import (
    CONFIG_FILE,
    FUSION_FILE,
    FusionRule,
    RunLoadError,
    fusion_members,
    read_config,
    resolve_checkpoint,
    run_dirs,
)


# ---------------------------------------------------------------------------------- catalogue
@dataclass
class Catalog:
    """What serving knows about items and users, read from a run folder's artifacts.

    Args:
        items: ``items.parquet`` (item, item_id, popularity, is_tail, and title, text, category
            where the data has them), indexed by item index.
        user_ids: external user id per user index.
        history_items / history_indptr: every known interaction, CSR by user, in time order.
        head_share: the run's head definition (``eval.head_share``), for re-rankers.
    """

    items: pd.DataFrame
    user_ids: np.ndarray
    history_items: np.ndarray
    history_indptr: np.ndarray
    head_share: float = 0.2

    def __post_init__(self) -> None:
        self.item_ids = self.items["item_id"].astype(str).to_numpy()
        self.item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.user_index = {str(user_id): u for u, user_id in enumerate(self.user_ids)}
        self.popularity = torch.tensor(self.items["popularity"].to_numpy(np.float32))
        self.is_tail = self.items["is_tail"].to_numpy(bool)
        self.tail_mask = torch.tensor(self.is_tail)
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
    def from_run_dir(cls, run_dir: Path, head_share: float = 0.2) -> Catalog:
        run_dir = Path(run_dir)
        items = _read_parquet(run_dir / "items.parquet", ("item", "item_id", "popularity",
                                                          "is_tail"))
        if not np.array_equal(items["item"].to_numpy(), np.arange(len(items))):
            raise RunLoadError(f"{run_dir / 'items.parquet'}: column 'item' must be 0..n_items-1 "
                               "in order")
        users = _read_parquet(run_dir / "users.parquet", ("user", "user_id"))
        history = _read_parquet(run_dir / "history.parquet", ("user", "item"))
        user = history["user"].to_numpy(np.int64)
        # a stable sort by user keeps each user's items in the file's (time) order
        order = np.argsort(user, kind="stable")
        indptr = np.r_[0, np.cumsum(np.bincount(user, minlength=len(users)))]
        return cls(items=items, user_ids=users["user_id"].astype(str).to_numpy(),
                   history_items=history["item"].to_numpy(np.int64)[order],
                   history_indptr=indptr, head_share=head_share)

    def dataset_info(self, name: str) -> DatasetInfo:
        """The `DatasetInfo` the run's model was built with, from the artifacts alone."""
        category = None
        if "category_index" in self.items:
            category = torch.tensor(self.items["category_index"].to_numpy(np.int64))
        elif "category" in self.items:
            # runs written before category_index existed: first-appearance order, as the sources
            # factorize it (exact unless preprocessing dropped items)
            category = torch.as_tensor(pd.factorize(self.items["category"], sort=False)[0])
        return DatasetInfo(
            name=name, n_users=self.n_users, n_items=self.n_items,
            item_popularity=self.popularity.clone(), tail_mask=self.tail_mask.clone(),
            head_share=self.head_share,
            item_text=self.items["text"].astype(str).tolist() if "text" in self.items else None,
            item_category=category,
        )


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise RunLoadError(f"{path} not found: is {path.parent} a finished recozoo run?") from None
    missing = [c for c in columns if c not in frame]
    if missing:
        raise RunLoadError(f"{path}: missing columns {missing} (found {list(frame.columns)})")
    return frame


# ---------------------------------------------------------------------------------- scorers
class Scorer(Protocol):
    """What serving ranks with: one model, or a fusion of models."""

    name: str
    #: can score a user unknown at training time from a history (see Recommender)
    scores_new_users: bool

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_items) scores, higher is better."""
        ...


class ModelScorer:
    """One trained model of a run folder.

    Args:
        model: the rebuilt model with its weights, in eval mode.
        name: the model's name (the ``model=`` choice of the run).
        history_len: recent items a batch carries per user (the run's ``eval.history_len``).
    """

    def __init__(self, model: Recommender, name: str, history_len: int):
        self.model = model
        self.name = name
        self.history_len = history_len
        self.scores_new_users = bool(type(model).scores_new_users)

    @torch.inference_mode()
    def score(self, batch: EvalBatch) -> torch.Tensor:
        if batch.history.shape[1] > self.history_len:  # a fusion's batch: its longest history
            batch = replace(batch, history=batch.history[:, -self.history_len:])
        return self.model.score(batch).float()  # (B, n_items)


class FusedScorer:
    """Scores of several runs' models fused exactly as `recozoo.ensemble.fusion` fuses their
    saved top-N lists, so a served fusion ranks as the evaluated one did.

    For each member: its scores with the batch's input items masked (as in evaluation), its
    top-N, normalised over that list (min-max, z-score, or ``1 / (rrf_k + rank)``); an item the
    member did not list gets the member's floor (0, or the lowest listed z-score). The fused score
    is the weighted sum (CombSUM; Fox and Shaw, TREC-2 1994) over the candidates, the items some
    member listed. Other items follow every candidate, most popular first (the ensemble's own
    rule for filling short lists).
    """

    def __init__(self, members: list[ModelScorer], weights: list[float], rule: FusionRule,
                 popularity: torch.Tensor, name: str):
        self.members, self.weights, self.rule, self.name = members, weights, rule, name
        self.scores_new_users = all(m.scores_new_users for m in members)
        self.history_len = max(m.history_len for m in members)
        # in (0, 1), ordered by popularity: the fill order of items no member listed
        self.fill = popularity.float() / (popularity.float().max() + 1.0)

    @torch.inference_mode()
    def score(self, batch: EvalBatch) -> torch.Tensor:
        fused, listed = None, None
        for member, weight in zip(self.members, self.weights):
            scores = member.score(batch).clone()  # (B, n_items)
            scores[batch.seen_rows, batch.seen_cols] = -math.inf
            value, in_list = self._normalised_top(scores, member.model.top_n)
            fused = weight * value if fused is None else fused + weight * value
            listed = in_list if listed is None else listed | in_list
        low = fused.masked_fill(~listed, math.inf).min(dim=1, keepdim=True).values  # (B, 1)
        low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
        return torch.where(listed, fused, low - 1.0 + self.fill.to(fused.device))

    def _normalised_top(self, scores: torch.Tensor, top_n: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_items) normalised values of a member's top-N (floor elsewhere) and the mask of
        the listed items."""
        rule = self.rule
        top = torch.topk(scores, min(top_n, scores.shape[1]), dim=1)  # (B, N)
        ok = torch.isfinite(top.values)
        if rule.method == "rrf":
            ranks = torch.cumsum(ok.int(), dim=1).float()
            values, floor = 1.0 / (rule.rrf_k + ranks), torch.zeros(len(scores), 1)
        elif rule.normalization == "minmax":
            high = top.values.masked_fill(~ok, -math.inf).max(1, keepdim=True).values
            low = top.values.masked_fill(~ok, math.inf).min(1, keepdim=True).values
            spread = high - low
            values = torch.where(spread > 0, (top.values - low) / spread.clamp_min(1e-12),
                                 torch.ones_like(top.values))
            floor = torch.zeros(len(scores), 1)
        else:  # zscore, with pandas' sample standard deviation as the ensemble computes it
            count = ok.sum(1, keepdim=True).clamp_min(1)
            mean = top.values.masked_fill(~ok, 0.0).sum(1, keepdim=True) / count
            var = ((top.values - mean).masked_fill(~ok, 0.0) ** 2).sum(1, keepdim=True) \
                / (count - 1).clamp_min(1)
            std = var.sqrt()
            values = (top.values - mean) / torch.where(std > 0, std, torch.ones_like(std))
            floor = values.masked_fill(~ok, math.inf).min(1, keepdim=True).values
            floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        floor = floor.to(scores.device)
        dense = floor.expand_as(scores).clone()
        listed = torch.zeros_like(scores, dtype=torch.bool)
        rows = torch.arange(len(scores), device=scores.device)[:, None].expand_as(top.indices)
        dense[rows[ok], top.indices[ok]] = values[ok]
        listed[rows[ok], top.indices[ok]] = True
        return dense, listed


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
    catalog = Catalog.from_run_dir(run_dir, head_share=float(eval_cfg.get("head_share", 0.2)))
    info = catalog.dataset_info(name=str(cfg.get("data", {}).get("name", run_dir.name)))
    factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    model: Recommender = factory(info=info, eval_ks=[int(k) for k in eval_cfg.get("ks", [10])],
                                 top_n=int(eval_cfg.get("top_n", 100)))
    checkpoint = Path(checkpoint) if checkpoint else resolve_checkpoint(run_dir)
    state = load_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RunLoadError(f"{checkpoint} does not fit the model of {run_dir / CONFIG_FILE}: "
                           f"{error}") from None
    model.eval().to(device)
    return ModelScorer(model, name=_model_name(run_dir, cfg),
                       history_len=int(eval_cfg.get("history_len", 50))), catalog


def load_catalog(path: str | Path) -> Catalog:
    """The catalogue of ``run=path`` alone (no model is built): ids, titles, histories."""
    return Catalog.from_run_dir(run_dirs(Path(path).expanduser())[0])


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``path`` (a run folder, a checkpoint in one, or a fusion folder) for inference."""
    path = Path(path).expanduser()
    folders = run_dirs(path)
    if path.is_file():
        scorer, catalog = load_model(folders[0], path, device)
        return LoadedRun(folders[0], catalog, scorer)
    if (path / FUSION_FILE).exists():
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
            raise RunLoadError(f"{folder / FUSION_FILE}: members[{row}] ({run_dir}) has "
                               "another item catalogue than members[0]")
        scorers.append(scorer)
    name = "fusion(" + ",".join(s.name for s in scorers) + ")"
    fused = FusedScorer(scorers, [w for _, w in members], rule,
                        catalog.popularity.to(device), name)
    return LoadedRun(folder, catalog, fused)


def _model_name(run_dir: Path, cfg: DictConfig) -> str:
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        try:
            return str(json.loads(metrics_file.read_text()).get("model"))
        except json.JSONDecodeError:
            pass
    return str(cfg.model._target_).rsplit(".", 1)[-1].lower()
