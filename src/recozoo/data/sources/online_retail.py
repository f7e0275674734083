"""UCI Online Retail II (``data=online_retail``): every invoice line of a UK online gift shop,
2009-12 to 2011-12.

The official download is a zip holding ``online_retail_II.xlsx``, a workbook with one sheet per
year ("Year 2009-2010", "Year 2010-2011"); CSV and Parquet exports of it are read too
(``data.path=<file or folder>``). The columns are ``Invoice, StockCode, Description, Quantity,
InvoiceDate, Price, Customer ID, Country`` (the first Online Retail release's ``InvoiceNo``,
``UnitPrice`` and ``CustomerID`` are understood as well).

Cleaning, in this order, each rule counted in the log:

1. drop rows without a customer;
2. drop cancelled invoices (``Invoice`` starting with "C"; without an ``Invoice`` column,
   cancellations and returns are the negative quantities of rule 3);
3. drop rows with quantity or price <= 0 (or missing);
4. drop non-product stock codes (`NON_PRODUCT_CODES`: postage, manual, carriage, adjustments,
   bank charges, discounts, samples, fees, gift vouchers, test codes; for exports without
   codes, the same lines by description, `NON_PRODUCT_DESCRIPTIONS`);
5. keep one description per stock code, the most frequent one (ties: alphabetical), and take
   the median unit price as the numeric item feature ``price``;
6. one interaction per (customer, item, invoice), at the invoice time (event "purchase").

Some exports have no ``StockCode`` column: the description (stripped, upper case) is then the
item id (the loader logs it). Some have no ``Invoice`` column either, such as the common export
of the 2010-2011 data (``Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country``):
an invoice is then a customer's purchase at one time (the loader logs it). Daqing Chen, Online
Retail II, UCI Machine Learning Repository, 2019 (CC BY 4.0).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.download import cache_folder, download, extract_zip
from recozoo.data.interactions import EVENT_CODES, Interactions
from recozoo.data.sources.base import (
    DataFormatError,
    log_dropped,
    numeric_column,
    require_columns,
    require_nonempty,
    time_column,
)
from recozoo.data.sources.table import read_table, table_format
from recozoo.data.text import DEFAULT_TEXT_TEMPLATE

log = logging.getLogger(__name__)

URL = "https://archive.ics.uci.edu/static/public/502/online+retail+ii.zip"
WORKBOOK = "online_retail_II.xlsx"

#: stock codes that are not products (full match, case-insensitive), seen in both sheets
NON_PRODUCT_CODES: tuple[str, ...] = (
    "POST", "DOT", "M", "C2", "C3", "D", "S", "B", "CRUK", "AMAZONFEE", "BANK CHARGES", "PADS",
    "GIFT", r"ADJUST\d*", r"TEST\d*", r"gift_\d+_\d+",
)

#: descriptions of the same non-product lines (full match, case-insensitive), for exports
#: without a StockCode column
NON_PRODUCT_DESCRIPTIONS: tuple[str, ...] = (
    "POSTAGE", "DOTCOM POSTAGE", "MANUAL", "CARRIAGE", "DISCOUNT", "SAMPLES", "BANK CHARGES",
    "AMAZON FEE", "CRUK COMMISSION", "ADJUST BAD DEBT", r"ADJUSTMENT\b.*", r".*TEST PRODUCT.*",
    r".*GIFT VOUCHER.*", "PADS TO MATCH ALL CUSHIONS",
)

#: normalised header (lower case, letters and digits only) -> our column name
COLUMN_ALIASES = {
    "invoice": "invoice", "invoiceno": "invoice", "stockcode": "stock_code",
    "description": "description", "quantity": "quantity", "invoicedate": "time",
    "price": "price", "unitprice": "price", "customerid": "customer", "country": "country",
}
REQUIRED = ("description", "quantity", "time", "price", "customer")
#: our column name -> the official header, for error messages
OFFICIAL = {"invoice": "Invoice", "stock_code": "StockCode", "description": "Description",
            "quantity": "Quantity", "time": "InvoiceDate", "price": "Price",
            "customer": "Customer ID", "country": "Country"}


def _normalise_header(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def read_online_retail(path: Path, sheets: list[str] | None = None, cache: Path | None = None,
                       encoding: str | None = None) -> list[tuple[str, pd.DataFrame, int]]:
    """The raw parts of a workbook (one per sheet) or an export, as (where, frame, first row).

    Reading the official workbook takes minutes, so each sheet read is kept as Parquet in
    ``cache`` (keyed by the workbook's name, size and time), and later runs read that.
    """
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            book = pd.ExcelFile(path)
        except (OSError, ValueError) as error:
            raise DataFormatError(f"{path}: cannot open as an Excel workbook: {error}") from None
        names = list(sheets) if sheets else book.sheet_names
        unknown = [s for s in names if s not in book.sheet_names]
        if unknown:
            raise DataFormatError(f"{path}: no sheet named '{unknown[0]}' (sheets: "
                                  f"{book.sheet_names}); set data.sheets to some of them")
        parts = []
        stat = path.stat()
        for sheet in names:
            copy = (cache / f"{path.stem}-{re.sub(r'[^A-Za-z0-9]+', '_', sheet)}-{stat.st_size}-"
                    f"{int(stat.st_mtime)}.parquet") if cache is not None else None
            if copy is not None and copy.exists():
                frame = pd.read_parquet(copy)
            else:
                frame = book.parse(sheet, dtype={"Invoice": str, "InvoiceNo": str,
                                                 "StockCode": str, "Description": str})
                if copy is not None:
                    _keep_copy(frame, copy)
            require_nonempty(frame, f"{path}, sheet '{sheet}'")
            parts.append((f"{path}, sheet '{sheet}'", frame, 2))
        return parts
    if sheets:
        raise ValueError(f"data.sheets={list(sheets)} applies to .xlsx workbooks, not to {path}")
    # UCI's CSV exports are often Latin-1 (the pound sign): read_table tells, or ``encoding``
    frame = read_table(path, encoding=encoding, dtype=str)
    return [(str(path), frame, 1 if table_format(path) == "parquet" else 2)]


def _keep_copy(frame: pd.DataFrame, copy: Path) -> None:
    """Write ``frame`` to ``copy`` atomically; a sheet Parquet cannot hold is just not kept."""
    staging = copy.with_name(copy.name + ".tmp")
    try:
        frame.to_parquet(staging)
        staging.replace(copy)
    except (ValueError, TypeError, OSError) as error:  # mixed types in a malformed sheet
        staging.unlink(missing_ok=True)
        log.info("not caching %s (%s)", copy.name, error)


def _standard_columns(frame: pd.DataFrame, where: str, first_row: int) -> pd.DataFrame:
    """Rename to our column names, check them and convert types (errors name row and column).

    Adds ``cancelled`` (the invoice starts with "C"). Without an ``Invoice`` column the invoice
    is the customer's purchase at one time, ``<customer>@<unix seconds>``, and nothing is marked
    cancelled (returns there are negative quantities, dropped by the quantity rule).
    """
    renamed = {c: COLUMN_ALIASES[_normalise_header(c)] for c in frame.columns
               if _normalise_header(c) in COLUMN_ALIASES}
    original = {ours: theirs for theirs, ours in renamed.items()}
    out = frame.rename(columns=renamed)
    missing = [c for c in REQUIRED if c not in out]
    if missing:
        require_columns(frame, [original.get(c, OFFICIAL[c]) for c in REQUIRED], where)
    try:
        out["quantity"] = numeric_column(out, "quantity", where, first_row)
        out["price"] = numeric_column(out, "price", where, first_row)
        out["time"] = time_column(out, "time", where, first_row)
    except DataFormatError as error:  # name the column as the file does
        message = str(error)
        for ours, theirs in original.items():
            message = message.replace(f"column '{ours}'", f"column '{theirs}'")
        raise DataFormatError(message) from None
    customer = out["customer"].astype("string").str.strip().str.replace(r"\.0$", "", regex=True)
    out["customer"] = customer.replace("", pd.NA)
    if "invoice" in out:
        out["invoice"] = out["invoice"].astype(str).str.strip()
        out["cancelled"] = out["invoice"].str.upper().str.startswith("C")
    else:
        log.info("%s has no Invoice column: an invoice is a customer's purchase at one time; "
                 "returns are its negative quantities", where)
        seconds = out["time"].astype(np.int64).astype(str)
        out["invoice"] = out["customer"] + "@" + seconds
        out["cancelled"] = False
    if "stock_code" in out:
        out["stock_code"] = out["stock_code"].astype("string").str.strip().str.upper()
    out["description"] = out["description"].astype("string").str.strip()
    return out


def most_frequent(keys: pd.Series, values: pd.Series) -> pd.Series:
    """The most frequent non-missing value per key (ties: the smallest value)."""
    pairs = pd.DataFrame({"key": keys.to_numpy(), "value": values.to_numpy()}).dropna()
    counts = pairs.value_counts().reset_index(name="n")
    counts = counts.sort_values(["key", "n", "value"], ascending=[True, False, True])
    return counts.drop_duplicates("key").set_index("key")["value"]


@dataclass
class OnlineRetailSource:
    """Load and clean UCI Online Retail II (see the module docstring for the rules).

    Args:
        path: the workbook, a CSV/Parquet export, or a folder holding one; None downloads.
        sheets: workbook sheets to read (default all, i.e. 2009-2011).
        cache_dir: where downloads go.
        non_product_codes: stock-code patterns to drop (full match, case-insensitive).
        non_product_descriptions: description patterns to drop where the export has no stock
            codes.
        text_template: item text template (``title`` is the description, ``price`` the median
            unit price).
        url: the download URL (UCI publishes no checksum, so none is checked).
        encoding: text encoding of a CSV export (None: found from its first bytes).
        name: the dataset's label.
    """

    path: str | None = None
    sheets: list[str] | None = None
    cache_dir: str | None = None
    non_product_codes: list[str] = field(default_factory=lambda: list(NON_PRODUCT_CODES))
    non_product_descriptions: list[str] = field(
        default_factory=lambda: list(NON_PRODUCT_DESCRIPTIONS))
    text_template: str = DEFAULT_TEXT_TEMPLATE
    url: str = URL
    encoding: str | None = None
    name: str = "online_retail"

    def load(self) -> Interactions:
        path = self._resolve()
        cache = (cache_folder(self.cache_dir, "online_retail")
                 if path.suffix.lower() in (".xlsx", ".xls") else None)
        parts = [_standard_columns(frame, where, first_row)
                 for where, frame, first_row in read_online_retail(path, self.sheets, cache,
                                                                  self.encoding)]
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        has_codes = "stock_code" in rows
        if not has_codes:
            log.warning("%s has no StockCode column: the description is the item id", path)
            rows["stock_code"] = rows["description"].str.upper()
        rows, dropped = self.clean(rows, self.non_product_codes if has_codes
                                   else self.non_product_descriptions)
        log_dropped(f"online_retail ({path.name})", sum(len(p) for p in parts), dropped)
        if len(rows) == 0:
            raise DataFormatError(f"{path}: no rows left after cleaning ({dropped})")
        items = pd.DataFrame({
            "title": most_frequent(rows["stock_code"], rows["description"]),
            "price": rows.groupby("stock_code")["price"].median(),
        }).rename_axis("item_id").reset_index()
        items["title"] = items["title"].fillna(items["item_id"])
        # one interaction per (customer, item, invoice), quantities of repeated lines summed
        lines = (rows.groupby(["customer", "stock_code", "invoice"], sort=False)
                 .agg(time=("time", "min"), quantity=("quantity", "sum")).reset_index())
        lines = lines.sort_values(["time", "invoice"], kind="stable")
        log.info("online_retail: %d invoice lines -> %d (customer, item, invoice) interactions",
                 len(rows), len(lines))
        lines["event"] = np.int8(EVENT_CODES["purchase"])
        return Interactions.from_frame(
            lines, user_col="customer", item_col="stock_code", time_col="time",
            event_col="event", items=items, item_key="item_id",
            text_template=self.text_template, title_col="title", numeric_cols=("price",),
            name=self.name)

    def clean(self, rows: pd.DataFrame, non_products: list[str]
              ) -> tuple[pd.DataFrame, dict[str, int]]:
        """Apply rules 1-4 (``non_products``: patterns of item ids that are no products);
        returns the kept rows and the count each rule dropped."""
        pattern = re.compile("|".join(f"(?:{p})" for p in non_products), re.IGNORECASE)
        rules = [
            ("no customer", lambda r: r["customer"].isna()),
            ("cancelled invoice", lambda r: r["cancelled"]),
            ("quantity or price <= 0 or missing",
             lambda r: ~(r["quantity"] > 0) | ~(r["price"] > 0)),
            ("non-product stock code",
             lambda r: r["stock_code"].fillna("").map(lambda c: bool(pattern.fullmatch(c)))),
            ("no item id", lambda r: r["stock_code"].isna()),
        ]
        dropped = {}
        for label, rule in rules:
            drop = rule(rows).fillna(False).to_numpy(dtype=bool)
            dropped[label] = int(drop.sum())
            rows = rows[~drop]
        return rows, dropped

    def _resolve(self) -> Path:
        """The file to read: ``path``, the one data file in ``path``, or the download."""
        hint = "data.path=<online_retail_II.xlsx, or a .csv/.parquet export>"
        if self.path is None:
            cache = cache_folder(self.cache_dir, "online_retail")
            archive = download(self.url, cache, filename="online_retail_II.zip", hint=hint)
            folder = extract_zip(archive, cache / "online_retail_II")
            found = sorted(folder.rglob("*.xlsx"))
            if not found:
                raise DataFormatError(f"{archive}: no .xlsx workbook inside")
            return found[0]
        path = Path(self.path).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in (".xlsx", ".csv", ".parquet", ".pq"))
            if len(found) != 1:
                raise FileNotFoundError(f"data.path={path} holds {len(found)} data files "
                                        f"{[p.name for p in found]}; pass one of them")
            return found[0]
        if not path.is_file():
            raise FileNotFoundError(f"data.path={path} does not exist; pass {hint}")
        return path
