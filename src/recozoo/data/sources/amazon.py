"""Amazon reviews by category (``data=amazon data.category=<Category>``), 2014/2018 and 2023.

Formats, found by name in ``data.path`` (a folder, or the review file itself):

* 2018 (Ni, Li and McAuley, EMNLP 2019): ``<Category>_5.json.gz`` reviews (``reviewerID,
  asin, overall, unixReviewTime``) and ``meta_<Category>.json.gz`` (``asin, title, brand,
  category`` list, ``price`` like ``"$12.99"``). The 2014 release's ``reviews_<Category>_5.json.gz``
  has the same review fields; its metadata lines are Python literals, which are read too.
* 2023 (Hou et al., 2024): ``<Category>.jsonl.gz`` reviews (``user_id, parent_asin, rating,
  timestamp`` in ms) and ``meta_<Category>.jsonl.gz`` (``parent_asin, title, store,
  categories, price``); items are parent ASINs.

Files are streamed line by line (gzip or plain), keeping only the fields used and only the
metadata of reviewed items, because some categories are many GB. Items get the canonical
columns ``title``, ``brand``, ``category`` (the category path, ``"A > B > C"``), ``price`` and
``main_category``, so the shared text template reads the same as for other sources. Without
``data.path`` the files of ``version`` are downloaded from the McAuley lab's repository.
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recozoo.data.download import cache_folder, download
from recozoo.data.interactions import Interactions
from recozoo.data.sources.base import DataFormatError
from recozoo.data.text import DEFAULT_TEXT_TEMPLATE

log = logging.getLogger(__name__)

_ROOT = "https://datarepo.eng.ucsd.edu/mcauley_group/data"
URLS = {
    "2018": (f"{_ROOT}/amazon_v2/categoryFilesSmall/{{category}}_5.json.gz",
             f"{_ROOT}/amazon_v2/metaFiles2/meta_{{category}}.json.gz"),
    "2023": (f"{_ROOT}/amazon_2023/raw/review_categories/{{category}}.jsonl.gz",
             f"{_ROOT}/amazon_2023/raw/meta_categories/meta_{{category}}.jsonl.gz"),
}
#: review file names tried in a folder, in order, and the metadata file that goes with each
REVIEW_NAMES = ("{c}_5.json.gz", "{c}_5.json", "reviews_{c}_5.json.gz", "reviews_{c}_5.json",
                "{c}.jsonl.gz", "{c}.jsonl", "{c}.json.gz", "{c}.json")
META_NAMES = ("meta_{c}.json.gz", "meta_{c}.json", "meta_{c}.jsonl.gz", "meta_{c}.jsonl")

#: (user, item, rating, time, time unit in seconds) fields of each review format
REVIEW_FIELDS = {
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime", 1.0),
    "2023": ("user_id", "parent_asin", "rating", "timestamp", 1e-3),
}
_ITEM_KEY = re.compile(r"""["'](?:parent_asin|asin)["']\s*:\s*["']([^"']+)["']""")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a plain or gzipped text file, streamed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError, io.UnsupportedOperation) as error:
        raise DataFormatError(f"{path}: cannot read ({error}); is the file complete?") from None


def parse_record(line: str, path: Path, number: int) -> dict[str, Any]:
    """One JSON line (or, for 2014 metadata, one Python literal)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            raise DataFormatError(f"{path}, row {number}: not valid JSON ({error.msg} at "
                                  f"column {error.colno})") from None
    if not isinstance(record, dict):
        raise DataFormatError(f"{path}, row {number}: expected a JSON object, found "
                              f"{type(record).__name__}")
    return record


def read_reviews(path: Path) -> tuple[pd.DataFrame, str]:
    """Stream a review file into (user_id, item_id, rating, timestamp); returns the frame and
    the format (``2018`` or ``2023``, told by the first record's fields)."""
    users, items, ratings, times = [], [], [], []
    version = None
    for number, line in open_lines(path):
        record = parse_record(line, path, number)
        if version is None:
            version = "2023" if "user_id" in record else "2018"
            user_key, item_key, rating_key, time_key, unit = REVIEW_FIELDS[version]
        item = record.get(item_key) or (record.get("asin") if version == "2023" else None)
        for key, value in ((user_key, record.get(user_key)), (item_key, item),
                           (time_key, record.get(time_key))):
            if value is None or value == "":
                raise DataFormatError(f"{path}, row {number}: missing field '{key}'")
        try:
            rating = float(record.get(rating_key, np.nan))
            time = float(record[time_key]) * unit
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}, row {number}: '{rating_key}' or '{time_key}' is not a "
                                  f"number ({record.get(rating_key)!r}, "
                                  f"{record.get(time_key)!r})") from None
        users.append(str(record[user_key]))
        items.append(str(item))
        ratings.append(rating)
        times.append(time)
    if version is None:
        raise DataFormatError(f"{path}: the file has no reviews")
    frame = pd.DataFrame({"user_id": users, "item_id": items,
                          "rating": np.asarray(ratings, dtype=np.float32),
                          "timestamp": np.asarray(times, dtype=np.float64)})
    return frame, version


def category_of(path: Path) -> str:
    """The category in a review file's name (``reviews_Beauty_5.json.gz`` -> ``Beauty``)."""
    name = re.sub(r"\.(json|jsonl)(\.gz)?$", "", path.name)
    return re.sub(r"_5$", "", re.sub(r"^reviews_", "", name))


def _price(value: Any) -> float:
    """``"$1,299.00"`` -> 1299.0, ``"$5 - $9"`` -> 5.0, anything else NaN."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _NUMBER.search(str(value or ""))
    return float(match.group().replace(",", "")) if match else np.nan


def _clean(text: Any) -> str | None:
    if not isinstance(text, str) or ("<" in text and ">" in text):  # HTML debris in 2018 meta
        return None
    return html.unescape(text).strip() or None


def meta_row(record: dict[str, Any]) -> dict[str, Any]:
    """Canonical item columns from one metadata record of any release."""
    path = record.get("categories") or record.get("category") or []
    if path and isinstance(path[0], list):  # 2014: a list of category paths
        path = path[0]
    path = [c for c in (_clean(c) for c in path) if c]
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    brand = record.get("brand") or record.get("store") or details.get("Brand")
    main = record.get("main_category") or record.get("main_cat") or (path[0] if path else None)
    return {"title": _clean(record.get("title")), "brand": _clean(brand),
            "category": " > ".join(path) or None, "price": _price(record.get("price")),
            "main_category": _clean(main)}


def read_meta(path: Path, wanted: set[str]) -> pd.DataFrame:
    """Stream a metadata file, keeping the items in ``wanted`` (matched on the raw line first,
    so unwanted lines are never parsed)."""
    rows = []
    for number, line in open_lines(path):
        keys = _ITEM_KEY.findall(line[:4000]) or _ITEM_KEY.findall(line)
        if not any(k in wanted for k in keys):
            continue
        record = parse_record(line, path, number)
        item = record.get("parent_asin") or record.get("asin")
        if item in wanted:
            rows.append({"item_id": str(item), **meta_row(record)})
    return pd.DataFrame(rows, columns=["item_id", "title", "brand", "category", "price",
                                       "main_category"])


@dataclass
class AmazonSource:
    """Amazon reviews of one category (see the module docstring).

    Args:
        category: the category as in the file names, e.g. ``Industrial_and_Scientific``.
        path: a folder holding the category's files, or the review file; None downloads.
        version: ``2018`` or ``2023``: which files to download (local files tell their own).
        cache_dir: where downloads go.
        min_rating: keep reviews rated >= this (None keeps every review).
        text_template: item text template over title, category, brand, price.
        name: the dataset's label (default: the category).
    """

    category: str = "Industrial_and_Scientific"
    path: str | None = None
    version: str = "2018"
    cache_dir: str | None = None
    min_rating: float | None = None
    text_template: str = DEFAULT_TEXT_TEMPLATE
    name: str | None = None

    def load(self) -> Interactions:
        reviews_path, meta_path = self._files()
        reviews, version = read_reviews(reviews_path)
        log.info("%s: %d reviews in the %s format", reviews_path.name, len(reviews), version)
        if self.min_rating is not None:
            before = len(reviews)
            reviews = reviews[reviews["rating"] >= self.min_rating]
            log.info("%s: kept %d of %d reviews rated >= %s", reviews_path.name, len(reviews),
                     before, self.min_rating)
        items = None
        if meta_path is not None:
            items = read_meta(meta_path, set(reviews["item_id"]))
            log.info("%s: metadata for %d of %d reviewed items", meta_path.name, len(items),
                     reviews["item_id"].nunique())
        else:
            log.warning("no metadata file for %s next to %s: items have no text", self.category,
                        reviews_path)
        return Interactions.from_frame(
            reviews, rating_col="rating", items=items, text_template=self.text_template,
            title_col="title", category_col="main_category", numeric_cols=("price",),
            name=self.name or self.category)

    def _files(self) -> tuple[Path, Path | None]:
        """(review file, metadata file or None)."""
        hint = (f"data.path=<folder with {self.category}_5.json.gz + meta_{self.category}.json.gz"
                f" or {self.category}.jsonl.gz + meta_{self.category}.jsonl.gz>")
        if self.path is None:
            if self.version not in URLS:
                raise ValueError(f"data.version={self.version}: expected one of {list(URLS)}")
            cache = cache_folder(self.cache_dir, "amazon", self.version)
            review_url, meta_url = (u.format(category=self.category) for u in URLS[self.version])
            return download(review_url, cache, hint=hint), download(meta_url, cache, hint=hint)
        path = Path(self.path).expanduser()
        category = self.category
        if path.is_file():
            folder, reviews = path.parent, path
            category = category_of(path)
        elif path.is_dir():
            folder = path
            found = [path / n.format(c=self.category) for n in REVIEW_NAMES]
            reviews = next((p for p in found if p.is_file()), None)
            if reviews is None:
                raise FileNotFoundError(f"{path}: no review file for category '{self.category}' "
                                        f"(looked for {[p.name for p in found]})")
        else:
            raise FileNotFoundError(f"data.path={path} does not exist; pass {hint}")
        metas = [folder / n.format(c=category) for n in META_NAMES]
        return reviews, next((p for p in metas if p.is_file()), None)
