"""What every source shares: the format error, column checks that name the file/row/column,
time parsing, and the dataset statistics logged after cleaning.

Sources turn their raw columns into *canonical item columns* before rendering item text, so one
template (``{title}. {category}. {brand}.``, see `recozoo.data.text`) reads the same kind of
input from every dataset:

==============  ===============================================================
``title``       the product or film name
``category``    a category path or genre list, as text (``"Tools > Drills"``)
``brand``       brand, store or maker
``price``       a number (also kept as the numeric item feature ``price``)
``main_category``  one category per item, for ``ItemData.category`` (calibration, filters)
==============  ===============================================================
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.interactions import Interactions

log = logging.getLogger(__name__)

CANONICAL_ITEM_COLUMNS = ("title", "category", "brand", "price", "main_category")


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names file, row and column."""


def require_columns(frame: pd.DataFrame, columns: Iterable[str], where: str | Path) -> None:
    """Raise `DataFormatError` naming ``where`` and the first column of ``columns`` absent, with
    the file's column that looks like it (other case, spaces or punctuation; a close spelling)."""
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        raise DataFormatError(f"{where}: missing column '{missing[0]}' (needed: {columns}; "
                              f"found {found}){_did_you_mean(missing[0], found)}")


def _did_you_mean(name: str, found: list[str]) -> str:
    def key(column: str) -> str:
        return re.sub(r"[^0-9a-z]", "", column.lower())

    alike = [c for c in found if key(c) == key(name)]
    alike = alike or difflib.get_close_matches(name, found, n=1, cutoff=0.8)
    return f"; did you mean '{alike[0]}'?" if alike else ""


def row_label(frame: pd.DataFrame, position: int, first_row: int) -> int:
    """The 1-based file row of frame position ``position`` (``first_row`` is the first data row)."""
    index = frame.index[position]
    return int(index) + first_row if isinstance(index, (int, np.integer)) else position + first_row


#: a number written with a decimal comma, thousands grouped by points or not (1.234,5 / 54,21)
DECIMAL_COMMA = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?"


def numeric_column(frame: pd.DataFrame, column: str, where: str | Path,
                   first_row: int = 2) -> np.ndarray:
    """``frame[column]`` as float64; a non-empty value that is not a number is an error naming
    the file, the row (``first_row`` = the file row of the first data row) and the column. A
    column whose every value is written with a decimal comma (a European spreadsheet's
    ``54,21``) is read as such, logged, where some value tells it from a thousands comma."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy() & raw.notna().to_numpy()
    if bad.any() and not pd.api.types.is_numeric_dtype(raw):
        text = raw.dropna().astype(str).str.strip()
        # 1,234 alone could be a thousand (a US export): only a decimal part of other than
        # three digits (54,21) or points grouping thousands (1.234,5) tell a decimal comma
        telling = text.str.contains(r",(?:\d{1,2}|\d{4,})$") | text.str.contains(r"\.\d{3},")
        if text.str.fullmatch(DECIMAL_COMMA).all() and telling.any():
            log.info("%s, column '%s': numbers with a decimal comma (54,21 is 54.21)", where,
                     column)
            plain = raw.astype(str).str.strip().str.replace(".", "", regex=False)
            values = pd.to_numeric(plain.str.replace(",", ".", regex=False).where(raw.notna()))
            bad = values.isna().to_numpy() & raw.notna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where}, row {row_label(frame, pos, first_row)}, column "
                              f"'{column}': '{raw.iloc[pos]}' is not a number")
    return values.to_numpy(dtype=np.float64)


def time_column(frame: pd.DataFrame, column: str, where: str | Path, first_row: int = 2,
                time_format: str | None = None, format_setting: str | None = None
                ) -> np.ndarray:
    """``frame[column]`` as float64 seconds: numbers are taken as they are (unix seconds or an
    order), anything else is parsed as a date/time (``time_format`` for ``pd.to_datetime``;
    without it pandas' guess, or day first where that reads more dates). Missing or unparseable
    values are errors naming the file, row and column, and ``format_setting``, the setting that
    gives the format, where there is one."""
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().all():
            return numbers.to_numpy(dtype=np.float64)
        if numbers.notna().sum() * 2 >= raw.notna().sum():  # mostly numbers: a numeric column
            return numeric_column(frame, column, where, first_row)
        with warnings.catch_warnings():  # "could not infer format": unreadable dates are
            warnings.simplefilter("ignore", UserWarning)  # reported below, by row
            parsed = pd.to_datetime(raw, errors="coerce", format=time_format)
            # pandas guesses the format from the first date, month first where it cannot tell
            # (01/02/2024); a European export then fails at its first day above 12
            day_first = (pd.to_datetime(raw, errors="coerce", dayfirst=True)
                         if time_format is None and parsed.isna().any() else parsed)
        if day_first is not parsed and day_first.isna().sum() < parsed.isna().sum():
            log.info("%s, column '%s': dates read day first (13/01/2024 is 13 January)", where,
                     column)
            parsed = day_first
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where}, row {row_label(frame, pos, first_row)}, column "
                              f"'{column}': '{raw.iloc[pos]}' is not a time (expected unix "
                              "seconds or a date such as 2010-12-01 08:26"
                              + (f"; for another layout set {format_setting}, e.g. "
                                 "'%d.%m.%Y %H:%M')" if format_setting else ")"))
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return (parsed.astype("datetime64[s]").astype(np.int64)).to_numpy(dtype=np.float64)


def require_nonempty(frame: pd.DataFrame, where: str | Path, what: str = "rows") -> None:
    """An empty table is an error naming the file."""
    if len(frame) == 0:
        raise DataFormatError(f"{where}: the file has no {what}")


def dataset_statistics(data: Interactions, head_share: float = 0.2) -> dict[str, float]:
    """Users, items, interactions and the share of interactions that go to the top
    ``head_share`` of items (by interaction count): the long-tail figure of a dataset."""
    counts = np.sort(np.bincount(data.item, minlength=data.n_items))[::-1]
    n_head = round(head_share * data.n_items)
    return {
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data),
        "density": len(data) / max(data.n_users * data.n_items, 1),
        "head_share": head_share,
        "head_interaction_share": float(counts[:n_head].sum() / max(counts.sum(), 1)),
    }


def format_statistics(name: str, stats: dict[str, float]) -> str:
    """One log line of `dataset_statistics`."""
    return (f"{name}: {stats['users']:,} users, {stats['items']:,} items, "
            f"{stats['interactions']:,} interactions (density {stats['density']:.4%}); the top "
            f"{stats['head_share']:.0%} of items get {stats['head_interaction_share']:.1%} of "
            "interactions")


def log_dropped(name: str, total: int, dropped: dict[str, int]) -> None:
    """Log a source's cleaning counts: rows in, each rule's drops, rows kept."""
    steps = ", ".join(f"{rule}: {count:,}" for rule, count in dropped.items()) or "nothing"
    log.info("%s cleaning: %s rows in, %s kept; dropped %s", name, f"{total:,}",
             f"{total - sum(dropped.values()):,}", steps)
