"""MovieLens 100K and 1M from GroupLens (``data=ml100k``, ``data=ml1m``).

By default the official zip is downloaded from files.grouplens.org into the cache folder, its
MD5 checked against GroupLens' published one, unpacked and parsed in the official format:
``u.data`` (tab-separated user, item, rating, unix time) and ``u.item`` (``|``-separated, with
19 genre flags) for 100K; ``ratings.dat`` and ``movies.dat`` (``::``-separated, genres joined
by ``|``) for 1M; both Latin-1. ``data.path=`` points at a local copy instead: the zip, the
unpacked folder, or RecBole atomic files (``ml-100k.inter`` + ``ml-100k.item``).

Items get the canonical columns ``title`` (without the year), ``year``, ``category`` (the genres,
``"Animation, Children's, Comedy"``) and ``main_category`` (the first genre), so the shared text
template renders ``"Toy Story. Animation, Children's, Comedy."``.

F. Maxwell Harper and Joseph A. Konstan. The MovieLens Datasets: History and Context.
ACM TiiS 5(4), 2015.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo.data.download import cache_folder, download, extract_zip
from recozoo.data.interactions import Interactions
from recozoo.data.sources.atomic import AtomicSource
from recozoo.data.sources.base import DataFormatError, numeric_column
from recozoo.data.text import DEFAULT_TEXT_TEMPLATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MovieLensRelease:
    """One official release: where it is and what it holds."""

    url: str
    md5: str
    folder: str  # the folder inside the zip
    ratings: str
    movies: str


RELEASES: dict[str, MovieLensRelease] = {
    "100k": MovieLensRelease("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                             "0e33842e24a9c977be4e0107933c0723", "ml-100k", "u.data", "u.item"),
    "1m": MovieLensRelease("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                           "c4d9eecfca2ab87c1945afe126590906", "ml-1m", "ratings.dat",
                           "movies.dat"),
}

#: u.genre of ML-100K, in the order of u.item's flag columns
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")

#: RecBole's column names for MovieLens atomic files -> canonical item columns
ATOMIC_ITEM_FIELDS = {"title": "movie_title", "year": "release_year", "category": "class"}


def read_delimited(path: Path, sep: str, n_fields: int, encoding: str = "latin-1",
                   min_fields: int | None = None) -> pd.DataFrame:
    """Split every line of ``path`` on ``sep`` (a plain string, may be ``::``); a line with the
    wrong number of fields is an error naming the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file not found: {path}")
    lines = path.read_text(encoding=encoding).splitlines()
    rows = [line.split(sep) for line in lines if line.strip()]
    if not rows:
        raise DataFormatError(f"{path}: the file is empty")
    low = min_fields if min_fields is not None else n_fields
    for number, row in enumerate(rows, start=1):
        if not low <= len(row) <= n_fields:
            raise DataFormatError(f"{path}, row {number}: expected {n_fields} '{sep}'-separated "
                                  f"fields, found {len(row)}")
    frame = pd.DataFrame([row + [None] * (n_fields - len(row)) for row in rows])
    frame.index = np.arange(len(frame))
    return frame


def _title_and_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); ', The' endings moved to the front."""
    match = titles.str.extract(r"^(?P<title>.*?)\s*(?:\((?P<year>\d{4})\))?\s*$")
    title = match["title"].str.replace(r"^(.*), (The|A|An)$", r"\2 \1", regex=True)
    return title, match["year"]


def parse_ml100k(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) frames from an unpacked ML-100K folder."""
    ratings_path = folder / "u.data"
    raw = read_delimited(ratings_path, "\t", 4)
    ratings = _ratings_frame(raw, ratings_path)
    movies_path = folder / "u.item"
    movies = read_delimited(movies_path, "|", 5 + len(GENRES_100K))
    flags = movies.iloc[:, 5:].to_numpy() == "1"
    genres = [", ".join(g for g, on in zip(GENRES_100K, row) if on) for row in flags]
    title, year = _title_and_year(movies[1])
    items = pd.DataFrame({"item_id": movies[0].str.strip(), "title": title, "year": year,
                          "category": genres,
                          "main_category": [g.split(", ")[0] if g else "unknown" for g in genres]})
    return ratings, items


def parse_ml1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) frames from an unpacked ML-1M folder."""
    ratings_path = folder / "ratings.dat"
    ratings = _ratings_frame(read_delimited(ratings_path, "::", 4), ratings_path)
    movies = read_delimited(folder / "movies.dat", "::", 3)
    title, year = _title_and_year(movies[1])
    genres = movies[2].str.strip().str.split("|")
    items = pd.DataFrame({"item_id": movies[0].str.strip(), "title": title, "year": year,
                          "category": genres.str.join(", "), "main_category": genres.str[0]})
    return ratings, items


def _ratings_frame(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """user, item, rating, timestamp from the four raw columns, numbers checked per row."""
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    return pd.DataFrame({
        "user_id": raw["user_id"].str.strip(), "item_id": raw["item_id"].str.strip(),
        "rating": numeric_column(raw, "rating", path, first_row=1),
        "timestamp": numeric_column(raw, "timestamp", path, first_row=1),
    })


@dataclass
class MovieLensSource:
    """MovieLens 100K or 1M (see the module docstring).

    Args:
        variant: ``100k`` or ``1m``.
        path: a local copy (zip, unpacked folder, or atomic files); None downloads.
        cache_dir: where downloads go.
        min_rating: keep ratings >= this (None keeps every rating).
        text_template: item text template over title, year, category (genres).
        url / md5: override the official download (a mirror).
        name: the dataset's label.
    """

    variant: str = "100k"
    path: str | None = None
    cache_dir: str | None = None
    min_rating: float | None = None
    text_template: str = DEFAULT_TEXT_TEMPLATE
    url: str | None = None
    md5: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in RELEASES:
            raise ValueError(f"MovieLens variant '{self.variant}' is not one of "
                             f"{list(RELEASES)}")

    @property
    def release(self) -> MovieLensRelease:
        return RELEASES[self.variant]

    def load(self) -> Interactions:
        label = self.name or self.release.folder
        folder = self._official_folder()
        if folder is None:  # atomic files
            source = AtomicSource(path=str(self.path), name=None, min_rating=self.min_rating,
                                  text_template=self.text_template,
                                  item_fields=ATOMIC_ITEM_FIELDS)
            data = source.load()
            data.name = label
            return data
        parse = parse_ml100k if self.variant == "100k" else parse_ml1m
        ratings, items = parse(folder)
        if self.min_rating is not None:
            ratings = ratings[ratings["rating"] >= self.min_rating]
        log.info("MovieLens %s from %s: %d ratings, %d movies", self.variant, folder,
                 len(ratings), len(items))
        return Interactions.from_frame(
            ratings, rating_col="rating", items=items, text_template=self.text_template,
            title_col="title", category_col="main_category", name=label)

    def _official_folder(self) -> Path | None:
        """The unpacked official folder, or None when ``path`` holds atomic files."""
        release = self.release
        hint = (f"data.path=<{release.folder}.zip, the unpacked {release.folder} folder, or "
                "RecBole atomic files>")
        if self.path is None:
            cache = cache_folder(self.cache_dir, "movielens")
            archive = download(self.url or release.url, cache, md5=self.md5 or release.md5,
                               hint=hint)
            return self._inner(extract_zip(archive, cache / archive.stem))
        path = Path(self.path).expanduser()
        if path.is_file() and path.suffix == ".zip":
            cache = cache_folder(self.cache_dir, "movielens")
            return self._inner(extract_zip(path, cache / f"{path.stem}-local"))
        if path.is_file() and path.suffix == ".inter":
            return None
        if not path.is_dir():
            raise FileNotFoundError(f"data.path={path} does not exist; pass {hint}")
        try:
            return self._inner(path)
        except FileNotFoundError:
            if any(path.glob("*.inter")):
                return None
            raise

    def _inner(self, folder: Path) -> Path:
        """The folder holding the ratings file: ``folder`` or its ``ml-100k``/``ml-1m`` child."""
        for candidate in (folder, folder / self.release.folder):
            if (candidate / self.release.ratings).is_file():
                return candidate
        raise FileNotFoundError(f"{folder}: no {self.release.ratings} (MovieLens "
                                f"{self.variant} official files) and no atomic .inter file")
