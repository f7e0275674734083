"""Ranked lists made by another tool, scored with recozoo's metrics against a run's test targets.

`score_external` reads a (user, item, rank) file written elsewhere (RecBole, Elliot, LensKit, a
notebook ...), maps its ids through the run folder's ``users.parquet`` and ``items.parquet``,
scores it with the shared metric suite (`recozoo.metrics.suite.ranking_suite`,
`recozoo.evaluation.per_user_values`) against the run's ``targets_test.parquet``, and writes a run
folder with the run's protocol facts, so ``python -m recozoo.report`` ranks it as a row beside the
run (same data, split, head share and seed) with paired tests on its per-user values.

What is scored:

- every test user of the run; a test user the file has no list for counts with an empty list
  (0 for accuracy, no tail item for ACLT; no value for list-averaged APLT, novelty and ARP,
  which average over the items of a list);
- each list's first K items in rank order, for the run's K's; a list shorter than K is scored as
  it is (its empty slots hold no item: precision counts them as misses);
- the file is trusted: items the user has already interacted with are not removed (recozoo's
  own lists never hold them).

The users' inputs (for PopRSP) and their training activity (light/heavy users) come from the run
folder: ``users.parquet``'s ``activity`` column when it has one, otherwise they are recounted from
``history.parquet`` minus the held-out targets, which is exact when every data row is in one part
of the split (not for ``split=global_temporal``, which leaves rows out, nor with
``eval.cold_items``); where it is not, those metrics have no value and the log says why.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from recozoo import artifacts
from recozoo.artifacts import RunDir, RunRecord, read_items, read_table
from recozoo.evaluation.saved_lists import saved_facts, score_lists
from recozoo.metrics.ranking import NO_ITEM
from recozoo.metrics.suite import whole_test_metric

log = logging.getLogger(__name__)

#: accepted header names of the list file's columns (a RecBole ``:token`` suffix is ignored)
LIST_COLUMNS: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id"), "item": ("item", "item_id"), "rank": ("rank",),
    "score": ("score",),
}
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}


def read_list_file(path: Path) -> pd.DataFrame:
    """A ranked-list file as ``user_id``, ``item_id`` (external ids, as strings), ``rank`` and
    ``score`` (NaN when the file has none).

    The file is csv, tsv (or .txt, tab-separated) or parquet, with a header naming the columns
    ``user`` (or ``user_id``), ``item`` (or ``item_id``) and ``rank`` (1 = best) and, optionally,
    ``score``. Without ``rank``, each user's items are ranked by ``score``, highest first.

    Raises:
        ValueError: an unknown file type, a missing column or a rank that is not a number (the
            message names the file, the column and the row).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix in _SEPARATORS:
        frame = pd.read_csv(path, sep=_SEPARATORS[suffix], dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"{path}: expected a .csv, .tsv or .parquet list file, got "
                         f"'{suffix or path.name}'")
    names = {str(c).split(":", 1)[0].strip().lower(): c for c in frame.columns}
    found = {key: next((names[n] for n in options if n in names), None)
             for key, options in LIST_COLUMNS.items()}
    missing = [key for key in ("user", "item") if found[key] is None]
    if found["rank"] is None and found["score"] is None:
        missing.append("rank (or score)")
    if missing:
        raise ValueError(f"{path}: expected columns user, item and rank (optionally score); "
                         f"missing {missing}; found {list(frame.columns)}")
    out = pd.DataFrame({"user_id": frame[found["user"]].astype(str).str.strip(),
                        "item_id": frame[found["item"]].astype(str).str.strip()})
    for key in ("rank", "score"):
        if found[key] is None:
            out[key] = np.nan
            continue
        values = pd.to_numeric(frame[found[key]], errors="coerce")
        bad = values.isna() & (frame[found[key]].astype(str).str.strip() != "")
        if key == "rank":
            bad |= values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: column {found[key]!r} must hold numbers; row {row + 2} "
                             f"holds {frame[found[key]].iloc[row]!r}")
        out[key] = values.astype(np.float64)
    if found["rank"] is None:  # rank by score, highest first; ties keep file order
        order = np.lexsort((np.arange(len(out)), -out["score"].to_numpy()))
        ranks = pd.Series(0, index=out.index, dtype=np.int64)
        ranks.iloc[order] = out.iloc[order].groupby("user_id", sort=False).cumcount() + 1
        out["rank"] = ranks.astype(np.float64)
    return out


def _indices(frame: pd.DataFrame, run: RunDir, list_file: Path,
             on_unknown: str) -> tuple[pd.DataFrame, int]:
    """The list rows with ``user`` and ``item`` indices of the run, and how many rows with
    unknown ids were dropped."""
    users = read_table(run.users, ("user", "user_id"))
    items = read_items(run)
    user = pd.Index(users["user_id"].astype(str)).get_indexer(frame["user_id"])
    item = pd.Index(items["item_id"].astype(str)).get_indexer(frame["item_id"])
    unknown = (user < 0) | (item < 0)
    if unknown.any():
        lost_users = frame["user_id"][user < 0].unique()
        lost_items = frame["item_id"][item < 0].unique()
        message = (f"{list_file}: {int(unknown.sum())} of {len(frame)} rows name ids the run "
                   f"{run.path} does not know: {len(lost_users)} user ids (e.g. "
                   f"{list(lost_users[:3])}, not in {run.users.name}) and {len(lost_items)} item "
                   f"ids (e.g. {list(lost_items[:3])}, not in {run.items.name})")
        if on_unknown != "drop":
            raise ValueError(message + "; ids must be the run's external ids (drop those rows "
                             "with on_unknown='drop')")
        log.warning("%s; those rows are dropped", message)
    known = frame[~unknown].assign(user=user[~unknown], item=item[~unknown])
    repeated = known.duplicated(["user", "item"])
    if repeated.any():
        first = known[repeated].iloc[0]
        raise ValueError(f"{list_file}: {int(repeated.sum())} rows repeat an item in a user's "
                         f"list, e.g. user {first.user_id} item {first.item_id}")
    return known, int(unknown.sum())


def _run_ks(record: RunRecord, run: RunDir) -> list[int]:
    parts = [part for part in map(whole_test_metric, record.metrics) if part]
    ks = sorted({k for name, k in parts if name == "ndcg" and k is not None})
    if not ks:
        raise ValueError(f"{run.metrics}: no test/ndcg@<k> value, so the run's cut-offs are "
                         "unknown; pass ks")
    return ks


def score_external(list_file: Path, run_dir: Path, out_dir: Path | None = None,
                   name: str | None = None, on_unknown: Literal["error", "drop"] = "error",
                   ks: list[int] | None = None) -> Path:
    """Score a ranked-list file made elsewhere against a run's test targets and write it as a
    run folder that the leaderboard ranks beside that run.

    Args:
        list_file: (user, item, rank[, score]) rows, csv/tsv/parquet (`read_list_file`); user
            and item are the run's external ids (``users.parquet``/``items.parquet``).
        run_dir: the finished recozoo run whose protocol and test targets score the lists.
        out_dir: where to write; default ``<run_dir's parent>/external_<name>``, so a
            leaderboard of the run's sweep folder includes it.
        name: the row's model name; default the file's stem.
        on_unknown: ``error`` (default) on ids the run does not know, or ``drop`` those rows
            (counted in the log and in metrics.json as ``external_rows_dropped``).
        ks: cut-offs; default the run's (its ``test/ndcg@<k>`` keys).

    Returns:
        The written run folder: metrics.json (the run's data, split, seed, n_users, n_items,
        head_share; ``model`` = ``name``; ``test/<name>@<k>``), rankings_test.parquet,
        per_user_test.parquet and copies of the run's targets, items, users and history.

    Example:
        >>> score_external(Path("recbole_bpr.tsv"), Path("logs/sweep/0"))
        PosixPath('logs/sweep/external_recbole_bpr')
    """
    list_file, run = Path(list_file), RunDir(run_dir)
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: no such ranked-list file")
    record = run.read_record()
    if not record.ok:
        raise ValueError(f"{run.metrics}: the run failed ({record.error}); it has no targets to "
                         "score a list against")
    if on_unknown not in ("error", "drop"):
        raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
    name = name or list_file.stem
    out = RunDir(out_dir if out_dir is not None else run.path.parent / f"external_{name}")
    if out.path.resolve() == run.path.resolve():
        raise ValueError(f"{out.path}: the output folder is the run itself; choose another")
    if out.metrics.exists() and "external_list" not in out.read_record().extra:
        raise ValueError(f"{out.path} holds a recozoo run (metrics.json) that is not an "
                         "external list; choose another output folder")
    ks = sorted(int(k) for k in ks) if ks else _run_ks(record, run)

    frame, n_dropped = _indices(read_list_file(list_file), run, list_file, on_unknown)
    targets = read_table(run.targets("test"), ("user", "item"))
    test_users = np.unique(targets["user"].to_numpy())
    n_users = int(record.n_users) if record.n_users is not None else len(
        pd.read_parquet(run.users))
    listed = frame[frame["user"].isin(test_users)]
    not_scored = frame["user"].nunique() - listed["user"].nunique()
    if not_scored:
        log.info("%s: %d listed users have no test target in %s and are not scored", list_file,
                 not_scored, run.path)
    # each user's first max(ks) items in rank order (ties in rank keep file order)
    listed = listed.sort_values(["user", "rank"], kind="stable")
    listed = listed.assign(position=listed.groupby("user").cumcount())
    listed = listed[listed["position"] < max(ks)]
    row = np.searchsorted(test_users, listed["user"].to_numpy())
    lists = torch.full((len(test_users), max(ks)), NO_ITEM, dtype=torch.long)
    # copies: pandas' arrays are read-only (copy-on-write), which torch warns of
    position, item = (listed[c].to_numpy(np.int64, copy=True) for c in ("position", "item"))
    lists[row, position] = torch.as_tensor(item)
    without_list = len(test_users) - listed["user"].nunique()
    if without_list:
        log.info("%s: %d of %d test users of %s have no list and count with an empty one",
                 list_file, without_list, len(test_users), run.path)

    info, inputs = saved_facts(run, record, n_users, name)
    values, per_user = score_lists(lists, test_users, targets, ks, info, inputs["test"])

    scored = RunRecord(
        status="ok", model=name, data=record.data, split=record.split, seed=record.seed,
        n_users=record.n_users, n_items=record.n_items, n_interactions=record.n_interactions,
        head_share=record.head_share, heavy_user_share=record.heavy_user_share,
        rerank="none", debias="none",
        metrics={f"test/{key}": value for key, value in values.items()},
        extra={"external_list": str(list_file.resolve()), "external_run": str(run.path.resolve()),
               "external_rows_dropped": n_dropped,
               "external_users_without_list": int(without_list),
               "external_users_not_scored": int(not_scored),
               })
    rankings = pd.DataFrame({"user": listed["user"].to_numpy(),
                             "rank": listed["position"].to_numpy(np.int32) + 1,
                             "item": listed["item"].to_numpy(),
                             "score": listed["score"].to_numpy(np.float32)})
    artifacts.write_parquet(out.rankings("test"), rankings)
    artifacts.write_parquet(out.per_user_test, per_user)
    for source, copy in zip(run.protocol_files, out.protocol_files):
        if source.exists():
            shutil.copyfile(source, copy)
    out.write_record(scored)
    log.info("%s scored against %s: %s", list_file, run.path,
             ", ".join(f"test/ndcg@{k} {values[f'ndcg@{k}']:.4f}" for k in ks))
    return out.path
