"""Any table of interactions: CSV, TSV, Parquet, JSON lines or an Excel sheet (``data=table``),
with an optional items table.

``data=table data.path=events.csv data.columns.user=customer data.columns.item=sku
data.columns.time=ts data.items_path=products.parquet``. The column mapping names the user, item,
time, rating and event columns (time, rating and event may be null); times are unix seconds or
any date format pandas reads; events are names (``view``, ``cart``, ``purchase`` and common
aliases such as ``click``, ``addtocart``, ``transaction``) or their codes 0-2. The items table
is keyed by ``item_key``; ``item_fields`` maps canonical item columns (``title``, ``category``,
``brand``, ``price``) to its columns for the text template and the numeric ``price`` feature.
Ids lose the spaces around them. A row without a user or an item is an error naming it;
``data.drop_missing=true`` drops such rows instead and logs how many. A text file may be compressed (.gz, .bz2, .xz, .zip); its
separator (comma, semicolon, tab or bar) is read off its header line and its encoding off its
first bytes (UTF-8, Windows-1252, Latin-1, UTF-16 with a byte-order mark) unless ``data.sep`` /
``data.encoding`` say.

`read_table` is the one reader of tabular files for every source: it turns pandas' parse errors
into `DataFormatError` messages that name the file and the line.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import logging
import lzma
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.interactions import EVENT_CODES, Interactions
from recozoo.data.sources.base import (
    DataFormatError,
    log_dropped,
    numeric_column,
    require_columns,
    require_nonempty,
    row_label,
    time_column,
)
from recozoo.data.text import DEFAULT_TEXT_TEMPLATE

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".xlsx", ".xlsm", ".jsonl",
                  ".ndjson", ".json")

#: event names found in public logs -> recozoo's event names
EVENT_ALIASES: dict[str, str] = {
    "view": "view", "click": "view", "pv": "view", "page_view": "view", "detail": "view",
    "cart": "cart", "addtocart": "cart", "add_to_cart": "cart", "fav": "cart",
    "purchase": "purchase", "buy": "purchase", "order": "purchase", "transaction": "purchase",
}

DEFAULT_COLUMNS: dict[str, str | None] = {"user": "user_id", "item": "item_id",
                                          "time": "timestamp", "rating": None, "event": None}


def table_format(path: Path) -> str:
    """``csv``, ``tsv``, ``parquet``, ``excel`` or ``json`` (JSON lines) from the file name (a
    text file may carry a compression suffix: ``.gz``, ``.bz2``, ``.xz``, ``.zip``)."""
    suffixes = [s.lower() for s in path.suffixes
                if s.lower() not in (".gz", ".bz2", ".xz", ".zip")]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".xlsx", ".xlsm") and suffix == path.suffix.lower():
        return "excel"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "json"
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    raise DataFormatError(f"{path}: unknown table format '{suffix}'; expected one of "
                          f"{TABLE_SUFFIXES}")


#: column separators recognised in a text file's header line, the suffix's own first
SEPARATORS = (",", ";", "\t", "|")
#: bytes of a text file read to tell its encoding and separator
SAMPLE_BYTES = 1 << 22


def text_sample(path: Path, size: int = SAMPLE_BYTES) -> bytes:
    """The first ``size`` bytes of a text file, decompressed where its suffix says
    (``.gz``, ``.bz2``, ``.xz``, or a ``.zip`` holding one file, as pandas reads them)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if len(names) != 1:
                    raise DataFormatError(f"{path}: a zip archive must hold exactly one file, "
                                          f"found {len(names)}")
                with archive.open(names[0]) as handle:
                    return handle.read(size)
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
        with opener(path, "rb") as handle:
            return handle.read(size)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: cannot read ({error}); is the file complete?") from None


def text_encoding(sample: bytes) -> str:
    """The encoding a text file's first bytes are in: UTF-16 where they start with its byte-order
    mark (Excel's "Unicode text"), UTF-8 where they decode as such (a byte-order mark, or a
    character cut at the sample's end, allowed), else Windows-1252 (Excel's CSV on Windows:
    the pound and euro signs, accented letters), else Latin-1, which decodes any byte."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for encoding in ("utf-8", "cp1252"):
        try:
            codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


def header_separator(header: str, default: str) -> str:
    """The separator of a header line: the file suffix's ``default`` where the line holds it,
    else the one of `SEPARATORS` it holds most often (a semicolon from a European Excel, a tab
    in a .csv), else ``default`` (a file of one column)."""
    if default in header:
        return default
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else default


def first_data_row(path: Path, header: bool = True) -> int:
    """The row number reported for a file's first data row: 2 in a text file or a sheet with a
    header line, 1 in a Parquet or JSON-lines file or one without a header line."""
    return 1 if table_format(path) in ("parquet", "json") or not header else 2


def read_table(path: str | Path, sep: str | None = None, encoding: str | None = None,
               names: list[str] | None = None, **read_csv: object) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet/JSON-lines file or an Excel workbook's first sheet; parse errors
    become `DataFormatError` naming file and line.

    Args:
        path: the file (a text file may be compressed: .gz, .bz2, .xz, .zip).
        sep: the column separator; None: found from the header line (`header_separator`;
            ``,`` for .csv and tab for .tsv/.txt where the line holds them).
        encoding: the text encoding; None: found from the file's first bytes
            (`text_encoding`: UTF-16 with its mark, UTF-8, Windows-1252 or Latin-1).
        names: the column names of a text file or sheet without a header row (its first row
            is data; it must hold as many fields as there are names); None: a header row.
        **read_csv: extra arguments to ``pd.read_csv`` (e.g. ``dtype``; a workbook takes
            ``dtype`` alone).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = table_format(path)
    if kind in ("csv", "tsv"):
        sample = text_sample(path)
        if encoding is None:
            encoding = text_encoding(sample)
            if encoding != "utf-8":
                log.info("%s: read as %s (not UTF-8); set the encoding to override",
                         path.name, encoding)
        first = sample.decode(encoding, errors="replace").lstrip("\ufeff").split("\n")[0]
        if sep is None:
            default = "\t" if kind == "tsv" else ","
            sep = header_separator(first, default)
            if sep != default:
                log.info("%s: columns separated by %r (from its first line)", path.name, sep)
        if names is not None:
            _check_names(path, names, len(next(csv.reader([first.rstrip("\r")], delimiter=sep),
                                                [])))
            read_csv = {"header": None, "names": list(names)} | read_csv
    elif names is not None and kind in ("parquet", "json"):
        raise DataFormatError(f"{path}: a {'Parquet' if kind == 'parquet' else 'JSON'} file "
                              "names its columns; data.names is for text files and sheets "
                              "without a header row")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        elif kind == "excel":
            frame = _first_sheet(path, read_csv.get("dtype"), names)
        elif kind == "json":
            frame = _json_lines(path, read_csv.get("dtype"))
        else:
            with warnings.catch_warnings():  # a row longer than the header is an error
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(path, sep=sep, encoding=encoding,
                                    **({"quoting": csv.QUOTE_MINIMAL, "index_col": False}
                                       | read_csv))
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: the file is empty (expected a header row)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as error:
        raise DataFormatError(f"{path}: cannot parse: {error}") from None
    except UnicodeError as error:
        raise DataFormatError(f"{path}: not valid {encoding} text ({error}); set the file's "
                              "encoding (data.encoding=<codec>, e.g. latin-1)") from None
    except DataFormatError:
        raise
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataFormatError(f"{path}: cannot read as {kind}: {error}") from None
    require_nonempty(frame, path)
    return frame


def _json_lines(path: Path, dtype: object) -> pd.DataFrame:
    """A JSON-lines file (one object a line, compressed or not; Goodreads, Steam, Yelp) read by
    Arrow, whose reader keeps integers integers: columns that ``dtype`` wants as ``str`` are
    cast from Arrow's types, so an integer id with gaps reads "5", not pandas' "5.0"."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    if text_sample(path, 4096).lstrip().startswith(b"["):
        raise DataFormatError(f"{path}: a JSON array; data=table reads JSON lines (one object a "
                              "line, as .jsonl / .ndjson)")
    with pa.input_stream(str(path), compression="detect") as stream:
        table = pa_json.read_json(stream)
    for column, kind in (dtype.items() if isinstance(dtype, dict) else ()):
        if kind is str and column in table.column_names:
            index = table.schema.get_field_index(column)
            table = table.set_column(index, column, table[column].cast(pa.string()))
    return table.to_pandas()


def _check_names(path: Path, names: list[str], fields: int) -> None:
    """Refuse column names that do not match the fields of a headerless file's first row."""
    if len(names) != fields:
        raise DataFormatError(f"{path}: data.names gives {len(names)} column names {list(names)}"
                              f", but the first row holds {fields} fields")


def _first_sheet(path: Path, dtype: object, names: list[str] | None = None) -> pd.DataFrame:
    """The first sheet of a workbook (the others are named in the log); with ``names``, a
    sheet without a header row. A file that is no workbook is a `DataFormatError` (openpyxl
    reports a zip without a workbook's parts as a KeyError)."""
    try:
        book = pd.ExcelFile(path, engine="openpyxl")
    except (KeyError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: cannot read as excel: not a workbook ({error})"
                              ) from None
    with book:
        if len(book.sheet_names) > 1:
            log.info("%s: reading its first sheet '%s' (of %s)", path.name, book.sheet_names[0],
                     book.sheet_names)
        if names is None:
            return book.parse(book.sheet_names[0], dtype=dtype)
        by_position = ({names.index(c): t for c, t in dtype.items() if c in names}
                       if isinstance(dtype, dict) else dtype)
        frame = book.parse(book.sheet_names[0], header=None, dtype=by_position)
    _check_names(path, names, frame.shape[1])
    frame.columns = list(names)
    return frame


def stripped_ids(ids: pd.Series) -> pd.Series:
    """Text ids without the spaces around them (spreadsheets pad cells: "Kunde 7 " is "Kunde 7"),
    an id of spaces alone missing; other columns (numbers in a Parquet file) as they are."""
    if not pd.api.types.is_string_dtype(ids):
        return ids
    ids = ids.str.strip()
    return ids.mask(ids == "")


def event_codes(frame: pd.DataFrame, column: str, where: str | Path, first_row: int = 2,
                aliases: dict[str, str] | None = None) -> np.ndarray:
    """Event names (or codes 0-2) as int8 codes; an unknown event names file, row and column.

    Args:
        aliases: the data's own event names -> ``view``, ``cart`` or ``purchase``, beside
            `EVENT_ALIASES` (``{checkout: purchase, wishlist: cart}``; case-insensitive).
    """
    known = dict(EVENT_ALIASES)
    for name, event in (aliases or {}).items():
        if event not in EVENT_CODES:
            raise ValueError(f"data.event_aliases.{name}={event}: an event is one of "
                             f"{list(EVENT_CODES)}")
        known[str(name).strip().lower()] = event
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    if numbers.notna().all():
        codes = numbers.to_numpy()
        bad = ~np.isin(codes, list(EVENT_CODES.values()))
    else:
        names = raw.astype(str).str.strip().str.lower().map(known)
        codes = names.map(EVENT_CODES).to_numpy()
        bad = names.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where}, row {row_label(frame, pos, first_row)}, column "
                              f"'{column}': unknown event '{raw.iloc[pos]}' (known: "
                              f"{sorted(known)} or codes 0-2; name yours with "
                              f"+data.event_aliases.<name>=view|cart|purchase)")
    return np.asarray(codes, dtype=np.int8)


def canonical_items(items: pd.DataFrame, item_fields: dict[str, str] | None,
                    where: str | Path) -> pd.DataFrame:
    """Copy mapped columns to their canonical names (``{title: product_name}`` adds ``title``)."""
    for canonical, column in (item_fields or {}).items():
        if column not in items:
            raise DataFormatError(f"{where}: item_fields.{canonical}='{column}' is not a column "
                                  f"(found {[str(c) for c in items.columns]})")
        items[canonical] = items[column]
    return items


@dataclass
class TableSource:
    """Interactions from one CSV/TSV/Parquet file (see the module docstring).

    Args:
        path: the interactions file.
        columns: ``user``, ``item``, ``time``, ``rating``, ``event`` -> column names in the file
            (missing keys take `DEFAULT_COLUMNS`; time/rating/event may be None).
        items_path: an optional items table (CSV/TSV/Parquet) keyed by ``item_key``.
        item_key: the item id column of the items table.
        item_fields: canonical item column -> items-table column (``{title: name}``).
        text_template: item text template over the items table's columns.
        numeric_cols: items-table columns kept as numeric item features (default: ``price``).
        category_col: items-table column used as the item category, or None.
        min_rating: keep rows with rating >= this (None keeps every row).
        names: column names of an interactions file without a header row (its first row is
            data), e.g. Taobao's ``[user, item, category, behavior, timestamp]``.
        event_aliases: the data's own event names -> view, cart or purchase (beside the
            common ones, `EVENT_ALIASES`).
        sep: column separator of the text files (None: found from each file's first line).
        encoding: text encoding of the text files (None: found from each file's first bytes).
        time_format: ``pd.to_datetime`` format of the time column, when it is not numeric.
        drop_missing: drop rows without a user or an item (counted in the log); False makes
            such a row an error naming it.
        name: the dataset's label.
    """

    path: str
    columns: dict[str, str | None] | None = None
    items_path: str | None = None
    item_key: str = "item_id"
    item_fields: dict[str, str] | None = None
    text_template: str = DEFAULT_TEXT_TEMPLATE
    numeric_cols: list[str] | None = None
    category_col: str | None = None
    min_rating: float | None = None
    names: list[str] | None = None
    event_aliases: dict[str, str] | None = None
    sep: str | None = None
    encoding: str | None = None
    time_format: str | None = None
    drop_missing: bool = False
    name: str = "table"

    def load(self) -> Interactions:
        columns = {**DEFAULT_COLUMNS, **(self.columns or {})}
        unknown = set(columns) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ValueError(f"data.columns has unknown keys {sorted(unknown)}; known: "
                             f"{list(DEFAULT_COLUMNS)}")
        path = Path(self.path).expanduser()
        raw = read_table(path, self.sep, self.encoding, self.names,
                         dtype={columns["user"]: str, columns["item"]: str})
        first_row = first_data_row(path, header=self.names is None)
        require_columns(raw, [c for c in columns.values() if c], path)
        for column in (columns["user"], columns["item"]):
            raw[column] = stripped_ids(raw[column])
        raw = self._without_missing_ids(raw, columns["user"], columns["item"], path, first_row)
        frame = pd.DataFrame({"user_id": raw[columns["user"]].astype(str).to_numpy(),
                              "item_id": raw[columns["item"]].astype(str).to_numpy()})
        if columns["time"]:
            frame["timestamp"] = time_column(raw, columns["time"], path, first_row,
                                             self.time_format, "data.time_format")
        if columns["rating"]:
            frame["rating"] = numeric_column(raw, columns["rating"], path, first_row)
        if columns["event"]:
            frame["event"] = event_codes(raw, columns["event"], path, first_row,
                                         self.event_aliases)
        if self.min_rating is not None:
            if not columns["rating"]:
                raise ValueError(f"data.min_rating={self.min_rating} needs a rating column: "
                                 "set data.columns.rating=<column>")
            before = len(frame)
            frame = frame[frame["rating"] >= self.min_rating]
            log.info("%s: kept %d of %d rows with rating >= %s", path.name, len(frame), before,
                     self.min_rating)
        items = None
        numeric = tuple(self.numeric_cols) if self.numeric_cols is not None else ("price",)
        if self.items_path:
            items_file = Path(self.items_path).expanduser()
            items = read_table(items_file, self.sep, self.encoding, dtype={self.item_key: str})
            require_columns(items, [self.item_key], items_file)
            items = canonical_items(items, self.item_fields, items_file)
            items[self.item_key] = stripped_ids(items[self.item_key]).astype(str)
            for column in numeric:
                if column in items:
                    items[column] = numeric_column(items, column, items_file,
                                                   first_row=first_data_row(items_file))
        return Interactions.from_frame(
            frame, time_col="timestamp" if columns["time"] else None,
            rating_col="rating" if columns["rating"] else None,
            event_col="event" if columns["event"] else None, items=items, item_key=self.item_key,
            text_template=self.text_template if items is not None else None,
            title_col="title" if items is not None and "title" in items else None,
            category_col=self.category_col, numeric_cols=numeric, name=self.name,
        )

    def _without_missing_ids(self, raw: pd.DataFrame, user: str, item: str, path: Path,
                             first_row: int) -> pd.DataFrame:
        """``raw`` without rows whose ``user`` or ``item`` cell is empty: dropped and counted
        when ``drop_missing``, else the first such row is an error naming file, row and column.
        The kept rows keep their index, so later errors still name the file's row."""
        no_user = raw[user].isna().to_numpy()
        no_item = raw[item].isna().to_numpy() & ~no_user
        missing = no_user | no_item
        if not missing.any():
            return raw
        if not self.drop_missing:
            pos = int(np.flatnonzero(missing)[0])
            kind, column = ("user", user) if no_user[pos] else ("item", item)
            raise DataFormatError(f"{path}, row {row_label(raw, pos, first_row)}, column "
                                  f"'{column}': no {kind} id; set data.drop_missing=true to "
                                  "drop rows without a user or item")
        log_dropped(f"table ({path.name})", len(raw),
                    {f"no user ('{user}')": int(no_user.sum()),
                     f"no item ('{item}')": int(no_item.sum())})
        if missing.all():
            raise DataFormatError(f"{path}: every row lacks a user ('{user}') or an item "
                                  f"('{item}')")
        return raw[~missing]
