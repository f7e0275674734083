"""RecBole atomic files: ``<name>.inter`` (+ optional ``<name>.item``) in one folder.

Atomic files are TSV with a typed header, ``field:type`` where type is ``token``,
``token_seq``, ``float`` or ``float_seq`` (RecBole's format; see recbole.io). ``data=atomic
data.path=<folder> data.name=<stem>`` (``data.name`` may be left out when the folder holds one
``.inter`` file, and ``data.path`` may be the ``.inter`` file itself). Every row is kept unless
``data.min_rating`` is set.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.interactions import Interactions
from recozoo.data.sources.base import DataFormatError

log = logging.getLogger(__name__)

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")

__all__ = ["ATOMIC_TYPES", "AtomicSource", "DataFormatError", "find_atomic", "read_atomic"]


def read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file; returns the frame (columns without types) and field -> type."""
    if not path.exists():
        raise FileNotFoundError(f"atomic file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n\r").split("\t")
    if header == [""]:
        raise DataFormatError(f"{path}: the file is empty (expected a header such as "
                              "'user_id:token\\titem_id:token')")
    types = {}
    for column in header:
        name, _, kind = column.partition(":")
        if kind not in ATOMIC_TYPES:
            raise DataFormatError(f"{path}, header: column '{column}' needs a type, one of "
                                  f"{ATOMIC_TYPES} (e.g. 'item_id:token')")
        types[name] = kind
    try:
        frame = pd.read_csv(path, sep="\t", header=0, names=list(types), dtype=str,
                            quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
                            engine="c")
    except pd.errors.ParserError as error:
        raise DataFormatError(f"{path}: cannot parse ({error}); every row needs "
                              f"{len(types)} tab-separated fields") from None
    for name, kind in types.items():
        if kind == "float":
            values = pd.to_numeric(frame[name], errors="coerce")
            bad = values.isna() & frame[name].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
                raise DataFormatError(f"{path}, row {row}, column '{name}': "
                                      f"'{frame[name].iloc[row - 2]}' is not a number")
            frame[name] = values
    return frame, types


def find_atomic(path: str | Path, name: str | None) -> tuple[Path, str]:
    """The folder and file stem of the atomic files at ``path``.

    ``path`` is a folder (with ``name``, or holding exactly one ``.inter`` file) or an
    ``.inter`` file.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".inter":
        return path.parent, path.stem
    if not path.is_dir():
        raise FileNotFoundError(f"data.path={path} is neither a folder of atomic files nor an "
                                ".inter file")
    if name:
        return path, name
    stems = sorted(p.stem for p in path.glob("*.inter"))
    if len(stems) != 1:
        raise DataFormatError(f"{path}: found {len(stems)} .inter files {stems}; say which with "
                              "data.name=<file stem>")
    return path, stems[0]


@dataclass
class AtomicSource:
    """Load RecBole atomic files.

    Args:
        path: the folder holding ``<name>.inter``, or the ``.inter`` file.
        name: the file stem (``ml-100k`` for ``ml-100k.inter``); None when ``path`` says it.
        min_rating: keep rows with rating >= this (None keeps every row).
        user_field / item_field / time_field / rating_field: column names in ``.inter``;
            ``time_field`` and ``rating_field`` may be absent from the file.
        text_template: ``str.format`` template over ``.item`` columns (and the canonical names
            of ``item_fields``) for item text; None joins every text column in file order.
        title_field: ``.item`` column used as the display title (default: ``item_fields``'
            ``title``, else the first ``token_seq`` column).
        category_field: ``.item`` column used as the item category, or None.
        item_fields: canonical item column -> ``.item`` column, e.g. ``{title: movie_title,
            category: class}``, so that one template fits every dataset.
    """

    path: str
    name: str | None = None
    min_rating: float | None = None
    user_field: str = "user_id"
    item_field: str = "item_id"
    time_field: str = "timestamp"
    rating_field: str = "rating"
    text_template: str | None = None
    title_field: str | None = None
    category_field: str | None = None
    item_fields: dict[str, str] | None = None

    def load(self) -> Interactions:
        folder, stem = find_atomic(self.path, self.name)
        inter_path = folder / f"{stem}.inter"
        frame, types = read_atomic(inter_path)
        if len(frame) == 0:
            raise DataFormatError(f"{inter_path}: the file has a header but no rows")
        for field in (self.user_field, self.item_field):
            if field not in frame:
                raise DataFormatError(f"{inter_path}: missing column '{field}' "
                                      f"(found {list(types)})")
        missing = frame[[self.user_field, self.item_field]].isna().any(axis=1)
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0]) + 2
            raise DataFormatError(f"{inter_path}, row {row}: empty '{self.user_field}' or "
                                  f"'{self.item_field}'")
        rating_col = self.rating_field if self.rating_field in frame else None
        if self.min_rating is not None:
            if rating_col is None:
                raise DataFormatError(f"data.min_rating={self.min_rating} but {inter_path} has "
                                      f"no '{self.rating_field}' column")
            before = len(frame)
            frame = frame[frame[rating_col] >= self.min_rating]
            log.info("%s: kept %d of %d rows with %s >= %s", inter_path.name, len(frame), before,
                     rating_col, self.min_rating)
        time_col = self.time_field if self.time_field in frame else None
        items, template, title, category = None, None, None, None
        item_path = folder / f"{stem}.item"
        if item_path.exists():
            items, item_types = read_atomic(item_path)
            if self.item_field not in items:
                raise DataFormatError(f"{item_path}: missing column '{self.item_field}'")
            aliases = dict(self.item_fields or {})
            for canonical, column in aliases.items():
                if column not in items:
                    raise DataFormatError(f"{item_path}: item_fields.{canonical}='{column}' is "
                                          f"not a column (found {list(item_types)})")
                items[canonical] = items[column]
            text_cols = [c for c, k in item_types.items()
                         if k in ("token", "token_seq") and c != self.item_field]
            template = self.text_template or ". ".join(f"{{{c}}}" for c in text_cols) + "."
            title = self.title_field or ("title" if "title" in aliases else next(
                (c for c in text_cols if item_types[c] == "token_seq"), None))
            category = self.category_field
            if category and category not in items:
                raise DataFormatError(f"{item_path}: category_field '{category}' is not a column "
                                      f"(found {list(item_types)})")
        return Interactions.from_frame(
            frame, user_col=self.user_field, item_col=self.item_field, time_col=time_col,
            rating_col=rating_col, items=items, item_key=self.item_field,
            text_template=template, title_col=title, category_col=category, name=stem,
            numeric_cols=tuple(c for c in ("price",) if items is not None and c in items),
        )
