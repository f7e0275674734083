"""Every source on tiny fixture files written here (MovieLens 100K/1M, Online Retail II as
xlsx/csv/parquet, Amazon 2014/2018/2023, RecBole atomic, any table), malformed files with the
error each must give, the shared text template, and the real files in ../shared/data."""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from recozoo.data.interactions import EVENT_CODES
from recozoo.data.sources import (
    AmazonSource,
    AtomicSource,
    DataFormatError,
    MovieLensSource,
    OnlineRetailSource,
    TableSource,
    dataset_statistics,
)
from recozoo.data.sources.shop import ShopSource
from recozoo.data.text import render_item_text


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Sources that cache (downloads, workbook sheets) write under tmp_path, not ~/.cache."""
    monkeypatch.setenv("RECOZOO_CACHE", str(tmp_path / "default-cache"))


def text_of(data, item_id: str) -> str:
    return data.items.text[list(data.item_ids).index(item_id)]


# ---------------------------------------------------------------------------- MovieLens
GENRE_FLAGS = {"10": [3, 4, 5], "20": [1, 2, 16]}  # Animation, Children's, Comedy / Action ...


def write_ml100k(folder: Path, extra_rating: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t10\t5\t100\n1\t20\t3\t200\n2\t10\t2\t150\n" + extra_rating,
                                   encoding="latin-1")
    lines = []
    for item, title in (("10", "Toy Story (1995)"), ("20", "Usual Suspects, The (1995)")):
        flags = ["1" if g in GENRE_FLAGS[item] else "0" for g in range(19)]
        lines.append("|".join([item, title, "01-Jan-1995", "", "http://x", *flags]))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def test_ml100k_official_files_titles_genres_and_ratings(tmp_path):
    data = MovieLensSource(path=str(write_ml100k(tmp_path / "ml-100k"))).load()
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert text_of(data, "10") == "Toy Story. Animation, Children's, Comedy."
    assert text_of(data, "20") == "The Usual Suspects. Action, Adventure, Thriller."
    assert data.items.titles[list(data.item_ids).index("20")] == "The Usual Suspects"
    assert sorted(data.rating.tolist()) == [2, 3, 5] and data.timestamp.max() == 200
    kept = MovieLensSource(path=str(tmp_path / "ml-100k"), min_rating=3).load()
    assert len(kept) == 2


def test_ml100k_zip_and_parent_folder_are_accepted(tmp_path):
    folder = write_ml100k(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("u.data", "u.item"):
            handle.write(folder / name, f"ml-100k/{name}")
    from_zip = MovieLensSource(path=str(archive), cache_dir=str(tmp_path / "cache")).load()
    from_parent = MovieLensSource(path=str(tmp_path / "src")).load()
    assert len(from_zip) == len(from_parent) == 3


def test_ml1m_official_files(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n"
                                        "2::1193::4::978298413\n", encoding="latin-1")
    (folder / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                       "661::James and the Giant Peach (1996)::"
                                       "Animation|Children's|Musical\n", encoding="latin-1")
    data = MovieLensSource(variant="1m", path=str(folder)).load()
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert text_of(data, "661") == "James and the Giant Peach. Animation, Children's, Musical."
    assert data.items.category_names[data.items.category[list(data.item_ids).index("661")]] \
        == "Animation"


def test_movielens_atomic_files_get_the_same_text(tmp_path):
    folder = tmp_path / "atomic"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\t"
                                          "timestamp:float\n1\t10\t5\t100\n2\t10\t3\t120\n")
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\t"
                                         "release_year:token\tclass:token_seq\n"
                                         "10\tToy Story\t1995\tAnimation Children's Comedy\n")
    data = MovieLensSource(path=str(folder)).load()
    assert text_of(data, "10") == "Toy Story. Animation Children's Comedy."
    assert data.name == "ml-100k"


@pytest.mark.parametrize("line, expected", [
    ("3\t10\t4\n", r"u.data, row 4: expected 4"),
    ("3\t10\tfive\t300\n", r"u.data, row 4, column 'rating': 'five' is not a number"),
])
def test_ml100k_bad_rows_name_file_row_and_column(tmp_path, line, expected):
    folder = write_ml100k(tmp_path / "ml-100k", extra_rating=line)
    with pytest.raises(DataFormatError, match=expected):
        MovieLensSource(path=str(folder)).load()


def test_movielens_folder_without_files_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data"):
        MovieLensSource(path=str(tmp_path)).load()


# ---------------------------------------------------------------------------- Online Retail
RETAIL_COLUMNS = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
                  "Customer ID", "Country"]
RETAIL_2009 = [
    ["489434", "85048", "RED LIGHT", 12, "2009-12-01 07:45:00", 6.95, 13085.0, "UK"],
    ["489434", "85048", "RED LIGHT", 6, "2009-12-01 07:45:00", 6.95, 13085.0, "UK"],  # same line
    ["489434", "22041", "CARD", 48, "2009-12-01 07:45:00", 0.65, 13085.0, "UK"],
    ["489434", "POST", "POSTAGE", 1, "2009-12-01 07:45:00", 18.0, 13085.0, "UK"],
    ["489435", "85048", "RED LIGHT HOLDER", 2, "2009-12-02 09:00:00", 7.25, 13085.0, "UK"],
    ["489436", "85048", "red light", 1, "2009-12-03 10:00:00", 6.95, 13086.0, "UK"],
    ["489436", "22041", "CARD", 1, "2009-12-03 10:00:00", 0.65, None, "UK"],  # no customer
    ["C489437", "22041", "CARD", -1, "2009-12-04 10:00:00", 0.65, 13086.0, "UK"],  # cancelled
    ["489438", "22041", "CARD", 0, "2009-12-04 11:00:00", 0.65, 13086.0, "UK"],  # quantity 0
    ["489439", "M", "Manual", 1, "2009-12-04 12:00:00", 5.0, 13086.0, "UK"],
]
RETAIL_2010 = [
    ["536365", "22041", "CARD", 6, "2010-12-01 08:26:00", 0.85, 13086.0, "UK"],
    ["536366", "85048", "RED LIGHT", 6, "2010-12-01 08:28:00", 7.95, 13087.0, "UK"],
    ["536366", "BANK CHARGES", "Bank Charges", 1, "2010-12-01 08:28:00", 15.0, 13087.0, "UK"],
]


def retail_frames() -> dict[str, pd.DataFrame]:
    return {"Year 2009-2010": pd.DataFrame(RETAIL_2009, columns=RETAIL_COLUMNS),
            "Year 2010-2011": pd.DataFrame(RETAIL_2010, columns=RETAIL_COLUMNS)}


def write_retail(tmp_path: Path, kind: str, frame: pd.DataFrame | None = None) -> Path:
    frames = retail_frames()
    if kind == "xlsx":
        path = tmp_path / "online_retail_II.xlsx"
        with pd.ExcelWriter(path) as writer:
            for sheet, part in frames.items():
                part.to_excel(writer, sheet_name=sheet, index=False)
        return path
    both = frame if frame is not None else pd.concat(frames.values(), ignore_index=True)
    path = tmp_path / f"online_retail_II.{kind}"
    if kind == "parquet":
        both.to_parquet(path)
    else:
        both.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["xlsx", "csv", "parquet"])
def test_online_retail_cleaning_rules(tmp_path, kind, caplog):
    caplog.set_level(logging.INFO)
    data = OnlineRetailSource(path=str(write_retail(tmp_path, kind))).load()
    # kept: 13085 x {85048 @489434, 22041 @489434, 85048 @489435}, 13086 x {85048 @489436,
    # 22041 @536365}, 13087 x {85048 @536366}
    assert sorted(data.user_ids) == ["13085", "13086", "13087"]
    assert sorted(data.item_ids) == ["22041", "85048"]
    assert len(data) == 6
    assert (data.event == EVENT_CODES["purchase"]).all()
    assert text_of(data, "85048") == "RED LIGHT."  # the most frequent description
    assert data.items.numeric["price"][list(data.item_ids).index("85048")] == pytest.approx(6.95)
    first = data.timestamp.min()
    assert first == pd.Timestamp("2009-12-01 07:45:00").timestamp()
    log = caplog.text
    for rule in ("no customer: 1", "cancelled invoice: 1", "quantity or price <= 0 or missing: 1",
                 "non-product stock code: 3"):
        assert rule in log


def test_online_retail_one_sheet_and_a_wrong_sheet_name(tmp_path):
    path = write_retail(tmp_path, "xlsx")
    cache = tmp_path / "cache"
    for _ in range(2):  # the second read comes from the Parquet copy of the sheet
        first = OnlineRetailSource(path=str(path), sheets=["Year 2009-2010"],
                                   cache_dir=str(cache)).load()
        assert len(first) == 4 and "13087" not in set(first.user_ids)
    assert len(list((cache / "online_retail").glob("*.parquet"))) == 1
    with pytest.raises(DataFormatError, match=r"online_retail_II.xlsx: no sheet named "
                                              r"'Year 2012'.*Year 2009-2010"):
        OnlineRetailSource(path=str(path), sheets=["Year 2012"]).load()


def test_online_retail_without_stock_codes_uses_descriptions(tmp_path, caplog):
    frame = pd.concat(retail_frames().values()).drop(columns=["StockCode"])
    caplog.set_level(logging.WARNING)
    data = OnlineRetailSource(path=str(write_retail(tmp_path, "parquet", frame))).load()
    assert "no StockCode column" in caplog.text
    assert "RED LIGHT HOLDER" in set(data.item_ids) and "MANUAL" not in set(data.item_ids)


def test_online_retail_malformed_files(tmp_path):
    frame = pd.concat(retail_frames().values(), ignore_index=True)
    missing = write_retail(tmp_path, "csv", frame.drop(columns=["Customer ID"]))
    with pytest.raises(DataFormatError, match=r"online_retail_II.csv: missing column 'Customer ID'"):
        OnlineRetailSource(path=str(missing)).load()
    bad = frame.astype({"Quantity": object})
    bad.loc[1, "Quantity"] = "twelve"
    bad_path = write_retail(tmp_path, "csv", bad)
    with pytest.raises(DataFormatError, match=r"\.csv, row 3, column 'Quantity': 'twelve'"):
        OnlineRetailSource(path=str(bad_path)).load()
    bad_date = frame.copy()
    bad_date.loc[4, "InvoiceDate"] = "yesterday"
    with pytest.raises(DataFormatError, match=r"row 5, column 'InvoiceDate': 'yesterday'"):
        OnlineRetailSource(path=str(write_retail(tmp_path, "parquet", bad_date))).load()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty.csv: the file is empty"):
        OnlineRetailSource(path=str(empty)).load()


#: the common export of the 2010-2011 data: no Invoice, no StockCode, US dates, CustomerID
#: sometimes empty (a quarter of the rows in the real file)
EXPORT_2010 = [
    ["WHITE HANGING HEART", 6, "12/1/2010 8:26", 2.55, 17850.0],
    [" WHITE HANGING HEART ", 2, "12/1/2010 8:26", 2.55, 17850.0],  # same item, same invoice
    ["WHITE METAL LANTERN", 6, "12/1/2010 8:26", 3.39, 17850.0],
    ["WHITE HANGING HEART", 4, "12/2/2010 9:01", 2.55, 17850.0],  # a later purchase
    ["WHITE HANGING HEART", 1, "12/1/2010 8:26", 2.95, 13047.0],  # same time, other customer
    ["POSTAGE", 1, "12/1/2010 8:26", 18.0, 13047.0],  # not a product
    ["WHITE METAL LANTERN", -1, "12/3/2010 10:00", 3.39, 13047.0],  # a return
    ["Cream Cupid Hearts", 8, "12/1/2010 8:45", 3.39, 12583.0],
    ["CREAM CUPID HEARTS", 8, "12/1/2010 8:45", 0.0, 12583.0],  # price 0
    ["WHITE METAL LANTERN", 1, "12/1/2010 9:00", 3.39, None],  # no customer
    ["CREAM CUPID HEARTS", 2, "12/1/2010 9:00", 3.39, None],  # no customer
]


def write_retail_export(tmp_path: Path, kind: str, price: str = "UnitPrice",
                        customer: str = "CustomerID") -> Path:
    """The 2010-2011 export as ``kind`` (csv or xlsx, with real date cells), headers as given."""
    frame = pd.DataFrame(EXPORT_2010, columns=["Description", "Quantity", "InvoiceDate", price,
                                               customer])
    frame["Country"] = "United Kingdom"
    path = tmp_path / f"Online Retail.{kind}"
    if kind == "xlsx":
        frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"], format="%m/%d/%Y %H:%M")
        frame.to_excel(path, sheet_name="Online Retail", index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind, price, customer", [("csv", "UnitPrice", "CustomerID"),
                                                   ("xlsx", "UnitPrice", "CustomerID"),
                                                   ("csv", "Price", "Customer ID")])
def test_online_retail_export_without_invoices_or_stock_codes(tmp_path, kind, price, customer,
                                                               caplog):
    caplog.set_level(logging.INFO)
    path = write_retail_export(tmp_path, kind, price, customer)
    data = OnlineRetailSource(path=str(path), cache_dir=str(tmp_path / "cache")).load()
    assert sorted(data.user_ids) == ["12583", "13047", "17850"]
    assert sorted(data.item_ids) == ["CREAM CUPID HEARTS", "WHITE HANGING HEART",
                                     "WHITE METAL LANTERN"]
    # invoices = (customer, time): 17850 @8:26 {heart, lantern} and @9:01 {heart}; 13047 @8:26
    # {heart}; 12583 @8:45 {cupid}
    pairs = sorted(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp))
    at = {t: pd.Timestamp(t).timestamp()
          for t in ("2010-12-01 08:26", "2010-12-01 08:45", "2010-12-02 09:01")}
    assert pairs == [("12583", "CREAM CUPID HEARTS", at["2010-12-01 08:45"]),
                     ("13047", "WHITE HANGING HEART", at["2010-12-01 08:26"]),
                     ("17850", "WHITE HANGING HEART", at["2010-12-01 08:26"]),
                     ("17850", "WHITE HANGING HEART", at["2010-12-02 09:01"]),
                     ("17850", "WHITE METAL LANTERN", at["2010-12-01 08:26"])]
    # the id is upper case; the title is the kept line's own spelling (the other had price 0)
    assert text_of(data, "CREAM CUPID HEARTS") == "Cream Cupid Hearts."
    heart = list(data.item_ids).index("WHITE HANGING HEART")
    assert data.items.numeric["price"][heart] == pytest.approx(2.55)  # median of 2.55 x3, 2.95
    log = caplog.text
    assert "no Invoice column" in log and "no StockCode column" in log
    for rule in ("11 rows in, 6 kept", "no customer: 2", "cancelled invoice: 0",
                 "quantity or price <= 0 or missing: 2", "non-product stock code: 1"):
        assert rule in log


def test_online_retail_export_trains_from_the_config(make_config, tmp_path):
    """``data=online_retail data.path=<export>`` with its defaults (dedupe, 5-core) trains."""
    from recozoo.train import train

    rng = np.random.default_rng(0)
    rows = [[f"ITEM {rng.integers(40)}", 1, f"12/{day + 1}/2010 10:00", 1.5, 10000.0 + c]
            for c in range(30) for day in range(16)]
    rows += [["ITEM 1", 1, "12/9/2010 10:00", 1.5, None]] * 10
    path = tmp_path / "export.csv"
    pd.DataFrame(rows, columns=["Description", "Quantity", "InvoiceDate", "UnitPrice",
                                "CustomerID"]).to_csv(path, index=False)
    cfg = make_config(["data=online_retail", f"data.path={path}", "model=pop",
                       "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                       "trainer.enable_model_summary=false"], tiny=False)
    metrics = train(cfg)
    assert metrics["status"] == "ok" and metrics["data"] == "online_retail"
    assert metrics["n_users"] == 30 and 20 < metrics["n_items"] <= 40


# ---------------------------------------------------------------------------- Amazon
def write_jsonl(path: Path, records: list, literal: bool = False) -> Path:
    lines = [repr(r) if literal else (r if isinstance(r, str) else json.dumps(r))
             for r in records]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


REVIEWS_2018 = [
    {"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1500000000},
    {"reviewerID": "U1", "asin": "A2", "overall": 2.0, "unixReviewTime": 1500000100},
    {"reviewerID": "U2", "asin": "A1", "overall": 4.0, "unixReviewTime": 1500000200},
]
META_2018 = [
    {"asin": "A1", "title": "Steel Ruler &amp; Square", "brand": "Acme",
     "category": ["Industrial & Scientific", "Measuring", "Rulers"], "price": "$1,299.00"},
    {"asin": "A9", "title": "Never reviewed"},
    {"asin": "A2", "title": "Gloves", "category": [], "price": ""},
]


def test_amazon_2018_reviews_and_metadata(tmp_path):
    write_jsonl(tmp_path / "Industrial_and_Scientific_5.json.gz", REVIEWS_2018)
    write_jsonl(tmp_path / "meta_Industrial_and_Scientific.json.gz", META_2018)
    data = AmazonSource(path=str(tmp_path)).load()
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert text_of(data, "A1") == "Steel Ruler & Square. Industrial & Scientific > Measuring > " \
                                  "Rulers. Acme."
    assert text_of(data, "A2") == "Gloves."
    price = data.items.numeric["price"]
    assert price[list(data.item_ids).index("A1")] == 1299.0
    assert np.isnan(price[list(data.item_ids).index("A2")])
    assert data.name == "Industrial_and_Scientific"
    assert len(AmazonSource(path=str(tmp_path), min_rating=4).load()) == 2


def test_amazon_2014_file_names_and_python_literal_metadata(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS_2018)
    write_jsonl(tmp_path / "meta_Beauty.json.gz", [
        {"asin": "A1", "title": "Soap", "categories": [["Beauty", "Bath"]], "price": 3.5},
        {"asin": "A2", "title": "Comb", "brand": "Kent", "categories": [["Beauty"]]},
    ], literal=True)
    data = AmazonSource(path=str(reviews)).load()  # the review file itself; category from name
    assert text_of(data, "A1") == "Soap. Beauty > Bath."
    assert text_of(data, "A2") == "Comb. Beauty. Kent."


def test_amazon_2023_parent_asins_and_millisecond_times(tmp_path):
    write_jsonl(tmp_path / "All_Beauty.jsonl.gz", [
        {"user_id": "U1", "asin": "C1", "parent_asin": "P1", "rating": 5.0,
         "timestamp": 1588687728923},
        {"user_id": "U1", "asin": "C2", "parent_asin": "P1", "rating": 4.0,
         "timestamp": 1588687729000},
        {"user_id": "U2", "asin": "C3", "parent_asin": "P2", "rating": 3.0,
         "timestamp": 1588687730000},
    ])
    write_jsonl(tmp_path / "meta_All_Beauty.jsonl.gz", [
        {"parent_asin": "P1", "title": "Brush", "store": "Kent", "categories": ["Tools"],
         "price": 9.99, "main_category": "All Beauty"},
        {"parent_asin": "P2", "title": "Oil", "store": None, "categories": [], "price": None,
         "details": {"Brand": "Argan"}},
    ])
    data = AmazonSource(category="All_Beauty", path=str(tmp_path)).load()
    assert sorted(data.item_ids) == ["P1", "P2"] and len(data) == 3
    assert data.timestamp.min() == pytest.approx(1588687728.923)
    assert text_of(data, "P1") == "Brush. Tools. Kent."
    assert text_of(data, "P2") == "Oil. Argan."


@pytest.mark.parametrize("line, expected", [
    ('{"reviewerID": "U3", "asin": "A1", "overall": 5.0, ', r"_5.json.gz, row 4: not valid JSON"),
    ('{"reviewerID": "U3", "overall": 5.0, "unixReviewTime": 1}',
     r"_5.json.gz, row 4: missing field 'asin'"),
    ('{"reviewerID": "U3", "asin": "A1", "overall": "great", "unixReviewTime": 1}',
     r"row 4: 'overall' or 'unixReviewTime' is not a number"),
])
def test_amazon_bad_rows_name_file_and_row(tmp_path, line, expected):
    write_jsonl(tmp_path / "Toys_5.json.gz", [*REVIEWS_2018, line])
    with pytest.raises(DataFormatError, match=expected):
        AmazonSource(category="Toys", path=str(tmp_path)).load()


def test_amazon_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no review file for category 'Toys'"):
        AmazonSource(category="Toys", path=str(tmp_path)).load()
    with gzip.open(tmp_path / "Toys_5.json.gz", "wt") as handle:
        handle.write("")
    with pytest.raises(DataFormatError, match="Toys_5.json.gz: the file has no reviews"):
        AmazonSource(category="Toys", path=str(tmp_path)).load()


# ---------------------------------------------------------------------------- any table
def test_table_csv_with_dates_events_and_an_items_table(tmp_path):
    events = tmp_path / "events.csv"
    pd.DataFrame({
        "customer": ["a", "a", "b", "b"], "sku": ["x", "y", "x", "y"],
        "when": ["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-02 09:00", "2024-01-02 09:01"],
        "action": ["click", "AddToCart", "transaction", "view"],
    }).to_csv(events, index=False)
    items = tmp_path / "items.tsv"
    pd.DataFrame({"id": ["x", "y"], "name": ["Kettle", "Mug"], "maker": ["Brew", None],
                  "price": [30.0, 4.5]}).to_csv(items, sep="\t", index=False)
    source = TableSource(path=str(events), items_path=str(items), item_key="id",
                         columns={"user": "customer", "item": "sku", "time": "when",
                                  "event": "action"},
                         item_fields={"title": "name", "brand": "maker"})
    data = source.load()
    assert len(data) == 4 and list(data.event) == [0, 1, 2, 0]
    assert data.timestamp[0] == pd.Timestamp("2024-01-01 10:00").timestamp()
    assert text_of(data, "x") == "Kettle. Brew." and text_of(data, "y") == "Mug."
    assert data.items.numeric["price"].tolist() == [30.0, 4.5]


def test_table_parquet_with_ratings_and_file_order(tmp_path):
    path = tmp_path / "ratings.parquet"
    pd.DataFrame({"u": [1, 1, 2], "i": [7, 8, 7], "r": [5.0, 1.0, 4.0]}).to_parquet(path)
    data = TableSource(path=str(path), columns={"user": "u", "item": "i", "time": None,
                                                "rating": "r"}, min_rating=4).load()
    assert len(data) == 2 and data.timestamp.tolist() == [0.0, 1.0]


def test_table_malformed_files(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,100\nu1,i2,oops\n")
    with pytest.raises(DataFormatError, match=r"log.csv, row 3, column 'timestamp': 'oops'"):
        TableSource(path=str(path)).load()
    with pytest.raises(DataFormatError, match=r"log.csv: missing column 'user'"):
        TableSource(path=str(path), columns={"user": "user"}).load()
    path.write_text("user_id,item_id,event\nu1,i1,view\nu1,i2,wishlist\n")
    with pytest.raises(DataFormatError, match=r"row 3, column 'event': unknown event 'wishlist'"):
        TableSource(path=str(path), columns={"time": None, "event": "event"}).load()
    for body in ("u1,i1,100,extra,fields\n", "u1,i1,100\nu1,i1,100,extra\n"):
        path.write_text("user_id,item_id,timestamp\n" + body)
        with pytest.raises(DataFormatError, match="log.csv: cannot parse"):
            TableSource(path=str(path)).load()
    path.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataFormatError, match="log.csv: the file has no rows"):
        TableSource(path=str(path)).load()
    (tmp_path / "x.xls").touch()
    with pytest.raises(DataFormatError, match="unknown table format '.xls'"):
        TableSource(path=str(tmp_path / "x.xls")).load()


TEXT_EXPORT = pd.DataFrame({"user_id": ["Zoë", "Zoë", "Øyvind", "Øyvind"],
                            "item_id": ["Crème £5", "Tea; green", "Mug|large", "Crème £5"],
                            "timestamp": [10, 20, 30, 40]})


@pytest.mark.parametrize("name, sep, encoding", [
    ("semicolons.csv", ";", "cp1252"),  # Excel's CSV on a European Windows
    ("tabs.csv", "\t", "utf-8"),
    ("bars.txt", "|", "utf-8"),
    ("gzipped.csv.gz", ";", "latin-1"),
    ("unicode text.txt", "\t", "utf-16"),  # Excel's "Unicode text"
    ("zipped.csv.zip", ",", "utf-8"),
])
def test_table_separator_and_encoding_are_read_off_the_file(tmp_path, caplog, name, sep,
                                                            encoding):
    path = tmp_path / name
    TEXT_EXPORT.to_csv(path, sep=sep, encoding=encoding, index=False)  # ids holding a separator
    caplog.set_level(logging.INFO)                                     # are quoted
    data = TableSource(path=str(path)).load()
    pairs = sorted(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp))
    assert pairs == sorted(zip(TEXT_EXPORT.user_id, TEXT_EXPORT.item_id, [10.0, 20.0, 30.0, 40.0]))
    if sep not in (",", "\t") or (sep == "\t" and name.endswith(".csv")):
        assert f"columns separated by {sep!r}" in caplog.text
    if encoding != "utf-8":  # cp1252 decodes what Latin-1 wrote here (no bytes 0x80-0x9f)
        assert "read as " in caplog.text and "(not UTF-8)" in caplog.text


def test_table_separator_and_encoding_given_are_used_as_given(make_config, tmp_path):
    path = tmp_path / "export.csv"
    TEXT_EXPORT.to_csv(path, sep=";", encoding="cp1252", index=False)
    with pytest.raises(DataFormatError, match=r"missing column 'user_id'.*found \['user_id;"):
        TableSource(path=str(path), sep=",").load()
    with pytest.raises(DataFormatError, match=r"export.csv: not valid utf-8 text .*set the "
                                              r"file's encoding \(data.encoding=<codec>"):
        TableSource(path=str(path), encoding="utf-8").load()
    cfg = make_config(["data=table", f"data.path={path}", "data.sep=';'",
                       "data.encoding=cp1252"], tiny=False)
    assert (cfg.data.source.sep, cfg.data.source.encoding) == (";", "cp1252")
    assert sorted(instantiate(cfg.data.source).load().user_ids) == ["Zoë", "Øyvind"]


def test_table_reads_an_excel_workbook_s_first_sheet_and_refuses_a_file_that_is_none(tmp_path,
                                                                                     caplog):
    path = tmp_path / "orders.xlsx"
    sheet = TEXT_EXPORT.assign(timestamp=pd.to_datetime(["2024-01-02 10:00", "2024-01-02 11:00",
                                                         "2024-01-03 09:00", "2024-01-04 08:30"]))
    with pd.ExcelWriter(path) as book:
        sheet.to_excel(book, sheet_name="orders", index=False)
        sheet.head(1).to_excel(book, sheet_name="notes", index=False)
    caplog.set_level(logging.INFO)
    data = TableSource(path=str(path)).load()
    assert "reading its first sheet 'orders' (of ['orders', 'notes'])" in caplog.text
    assert len(data) == 4 and sorted(set(data.item_ids)) == ["Crème £5", "Mug|large", "Tea; green"]
    assert data.timestamp.max() == pd.Timestamp("2024-01-04 08:30").timestamp()
    (tmp_path / "bad.xlsx").write_text("user_id,item_id\n")
    with pytest.raises(DataFormatError, match=r"bad.xlsx: cannot read as excel: not a workbook"):
        TableSource(path=str(tmp_path / "bad.xlsx")).load()


def test_table_dates_day_first_a_given_layout_and_one_nothing_reads(tmp_path, caplog):
    path = tmp_path / "orders.csv"
    caplog.set_level(logging.INFO)
    path.write_text("user_id,item_id,timestamp\nu,a,01/02/2024 10:00\nu,b,13/02/2024 09:00\n")
    assert TableSource(path=str(path)).load().timestamp.tolist() == [
        pd.Timestamp("2024-02-01 10:00").timestamp(), pd.Timestamp("2024-02-13 09:00").timestamp()]
    assert "column 'timestamp': dates read day first" in caplog.text
    caplog.clear()
    path.write_text("user_id,item_id,timestamp\nu,a,02/01/2024 10:00\nu,b,02/13/2024 09:00\n")
    assert TableSource(path=str(path)).load().timestamp[1] == pd.Timestamp(
        "2024-02-13 09:00").timestamp()
    assert "day first" not in caplog.text  # month first read them all
    path.write_text("user_id,item_id,timestamp\nu,a,2024-W05 Mon\nu,b,2024-W07 Tue\n")
    with pytest.raises(DataFormatError, match=r"row 2, column 'timestamp': '2024-W05 Mon' is not "
                                              r"a time .*set data.time_format, e.g."):
        TableSource(path=str(path)).load()
    assert TableSource(path=str(path), time_format="%G-W%V %a").load().timestamp[1] == (
        pd.Timestamp("2024-02-13").timestamp())


def test_table_numbers_with_a_decimal_comma_are_read_where_every_value_has_one(tmp_path,
                                                                               caplog):
    events, items = tmp_path / "ratings.csv", tmp_path / "items.csv"
    events.write_text("user_id;item_id;rating\nu;a;4,5\nu;b;1\nv;a;3,0\n")
    items.write_text("item_id;name;price\na;Mug;1.234,50\nb;Tea;0,99\n")
    caplog.set_level(logging.INFO)
    data = TableSource(path=str(events), items_path=str(items),
                       columns={"time": None, "rating": "rating"}).load()
    assert data.rating.tolist() == [4.5, 1.0, 3.0]
    np.testing.assert_allclose(data.items.numeric["price"], [1234.5, 0.99])  # float32
    assert "column 'price': numbers with a decimal comma (54,21 is 54.21)" in caplog.text
    items.write_text("item_id;name;price\na;Mug;1,234\nb;Tea;2,500\n")  # US thousands? refused
    with pytest.raises(DataFormatError, match=r"items.csv, row 2, column 'price': '1,234' is not "
                                              r"a number"):
        TableSource(path=str(events), items_path=str(items),
                    columns={"time": None, "rating": "rating"}).load()
    items.write_text("item_id;name;price\na;Mug;2.5\nb;Tea;0,99\n")  # two conventions: refused
    with pytest.raises(DataFormatError, match=r"items.csv, row 3, column 'price': '0,99' is not "
                                              r"a number"):
        TableSource(path=str(events), items_path=str(items),
                    columns={"time": None, "rating": "rating"}).load()


def test_table_without_a_header_row_takes_names_from_the_config(make_config, tmp_path):
    """Taobao's UserBehavior.csv layout: user, item, category, behaviour, unix time, no header."""
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,fav,1511561733\n"
                    "100,2268318,2520377,buy,1511680485\n100,,4145813,pv,oops\n")
    names = ["user_id", "item_id", "category", "behavior", "timestamp"]
    columns = {"event": "behavior"}
    with pytest.raises(DataFormatError, match=r"UserBehavior.csv, row 4, column 'item_id': no "
                                              r"item id"):  # rows counted from the first line
        TableSource(path=str(path), names=names, columns=columns).load()
    path.write_text(path.read_text().replace("100,,4145813,pv,oops", "100,5,4145813,pv,oops"))
    with pytest.raises(DataFormatError, match=r"row 4, column 'timestamp': 'oops'"):
        TableSource(path=str(path), names=names, columns=columns).load()
    path.write_text(path.read_text().replace("oops", "1511680500"))
    cfg = make_config(["data=table", f"data.path={path}", f"data.names=[{','.join(names)}]",
                       "data.columns.event=behavior"], tiny=False)
    data = instantiate(cfg.data.source).load()
    assert len(data) == 4 and list(data.event) == [0, 1, 2, 0]  # fav counts as a cart
    assert sorted(set(data.user_ids)) == ["1", "100"] and data.timestamp[0] == 1511544070.0
    with pytest.raises(DataFormatError, match=r"data.names gives 4 column names .*, but the first "
                                              r"row holds 5 fields"):
        TableSource(path=str(path), names=names[:4]).load()
    sheet = tmp_path / "behaviour.xlsx"
    pd.read_csv(path, header=None).to_excel(sheet, header=False, index=False)
    data = TableSource(path=str(sheet), names=names, columns=columns).load()
    assert len(data) == 4 and sorted(set(data.item_ids)) == ["2268318", "2333346", "5"]
    with pytest.raises(DataFormatError, match=r"behaviour.xlsx: data.names gives 6 column names"):
        TableSource(path=str(sheet), names=[*names, "extra"]).load()
    pd.read_csv(path, header=None, names=names).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataFormatError, match="a Parquet file names its columns"):
        TableSource(path=str(tmp_path / "b.parquet"), names=names).load()


def test_table_ids_lose_the_spaces_around_them_and_blank_ones_are_missing(tmp_path):
    events, items = tmp_path / "log.csv", tmp_path / "items.csv"
    events.write_text("user_id,item_id,timestamp\nKunde 7 ,Mug,1\n Kunde 7,  Mug  ,2\n"
                      "Kunde 8,Tea,3\n   ,Tea,4\n")
    items.write_text("item_id,name\n Mug ,Big mug\nTea,Green tea\n")
    with pytest.raises(DataFormatError, match=r"log.csv, row 5, column 'user_id': no user id"):
        TableSource(path=str(events)).load()
    data = TableSource(path=str(events), items_path=str(items), item_fields={"title": "name"},
                       drop_missing=True).load()
    assert sorted(set(data.user_ids)) == ["Kunde 7", "Kunde 8"] and len(data) == 3
    assert text_of(data, "Mug") == "Big mug."  # the items table's key is stripped alike


def test_table_events_of_the_data_s_own_names_are_mapped_from_the_config(make_config,
                                                                         tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,action\nu,a,1,Ansicht\nu,b,2,Warenkorb\n"
                    "u,b,3,Checkout\nv,a,4,click\n")
    with pytest.raises(DataFormatError, match=r"row 2, column 'action': unknown event 'Ansicht'"
                                              r" .*\+data.event_aliases.<name>=view\|cart"):
        TableSource(path=str(path), columns={"event": "action"}).load()
    cfg = make_config(["data=table", f"data.path={path}", "data.columns.event=action",
                       "+data.event_aliases.ansicht=view", "+data.event_aliases.Warenkorb=cart",
                       "+data.event_aliases.checkout=purchase"], tiny=False)
    assert list(instantiate(cfg.data.source).load().event) == [0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"data.event_aliases.checkout=order: an event is one of "
                                         r"\['view', 'cart', 'purchase'\]"):
        TableSource(path=str(path), columns={"event": "action"},
                    event_aliases={"checkout": "order"}).load()


def test_table_reads_json_lines_and_keeps_integer_ids_whole(tmp_path):
    """Goodreads' layout, gzipped: integer ids with a gap stay "5", not "5.0"."""
    path = tmp_path / "interactions.jsonl.gz"
    lines = ['{"user_id": "u1", "book_id": 5, "rating": 4, "shelf": {"name": "read"}}',
             '{"user_id": "u2", "book_id": null, "rating": 3}',
             '{"user_id": "u2", "book_id": 1234567, "rating": 5}']
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    columns = {"item": "book_id", "time": None, "rating": "rating"}
    with pytest.raises(DataFormatError, match=r"interactions.jsonl.gz, row 2, column 'book_id': "
                                              r"no item id"):
        TableSource(path=str(path), columns=columns).load()
    data = TableSource(path=str(path), columns=columns, drop_missing=True).load()
    assert sorted(data.item_ids) == ["1234567", "5"] and data.rating.tolist() == [4.0, 5.0]
    array = tmp_path / "events.json"
    array.write_text('[{"user_id": "u1", "item_id": "a"}]')
    with pytest.raises(DataFormatError, match=r"events.json: a JSON array; data=table reads JSON "
                                              r"lines"):
        TableSource(path=str(array), columns={"time": None}).load()
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"user_id": "u1", "item_id": "a"}\n{"user_id": \n')
    with pytest.raises(DataFormatError, match=r"broken.ndjson: cannot read as json: JSON parse "
                                              r"error"):
        TableSource(path=str(broken), columns={"time": None}).load()
    with pytest.raises(DataFormatError, match=r"a JSON file names its columns"):
        TableSource(path=str(broken), names=["user_id", "item_id"]).load()


def test_a_missing_column_names_the_file_s_column_that_looks_like_it(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("Customer ID,StockCode ,InvoiceDate\n1,a,2024-01-01\n")
    with pytest.raises(DataFormatError, match=r"missing column 'customer_id' .*did you mean "
                                              r"'Customer ID'\?"):
        TableSource(path=str(path), columns={"user": "customer_id", "item": "StockCode",
                                             "time": "InvoiceDate"}).load()
    with pytest.raises(DataFormatError, match=r"missing column 'StockCode'.*did you mean "
                                              r"'StockCode '\?"):
        TableSource(path=str(path), columns={"user": "Customer ID", "item": "StockCode",
                                             "time": "InvoiceDate"}).load()
    with pytest.raises(DataFormatError, match=r"missing column 'user_id' \(needed: .*\]\)$"):
        TableSource(path=str(path)).load()  # nothing alike: no guess


def test_table_rows_without_a_user_or_item_are_an_error_unless_dropped(tmp_path, caplog):
    path = tmp_path / "log.csv"
    path.write_text("customer,sku,ts\na,x,1\n,x,2\nb,,3\n,,4\nb,y,5\n")
    columns = {"user": "customer", "item": "sku", "time": "ts"}
    with pytest.raises(DataFormatError, match=r"log.csv, row 3, column 'customer': no user id; "
                                              r"set data.drop_missing=true"):
        TableSource(path=str(path), columns=columns).load()
    caplog.set_level(logging.INFO)
    data = TableSource(path=str(path), columns=columns, drop_missing=True).load()
    assert list(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)) == [
        ("a", "x", 1.0), ("b", "y", 5.0)]
    assert ("5 rows in, 2 kept; dropped no user ('customer'): 2, no item ('sku'): 1"
            in caplog.text)
    path.write_text("customer,sku,ts\na,,1\n")
    with pytest.raises(DataFormatError, match=r"row 2, column 'sku': no item id"):
        TableSource(path=str(path), columns=columns).load()
    with pytest.raises(DataFormatError, match=r"log.csv: every row lacks a user \('customer'\) "
                                              r"or an item \('sku'\)"):
        TableSource(path=str(path), columns=columns, drop_missing=True).load()
    path.write_text("customer,sku,ts\n,x,1\na,x,oops\n")  # later errors name the file's row
    with pytest.raises(DataFormatError, match=r"log.csv, row 3, column 'ts': 'oops'"):
        TableSource(path=str(path), columns=columns, drop_missing=True).load()


def test_table_drop_missing_from_the_config_loads_the_retail_export(make_config, tmp_path):
    path = write_retail_export(tmp_path, "csv")
    mapping = ["data=table", f"data.path={path}", "data.columns.user=CustomerID",
               "data.columns.item=Description", "data.columns.time=InvoiceDate"]
    with pytest.raises(DataFormatError, match=r"Online Retail.csv, row 11, column 'CustomerID': "
                                              "no user id"):
        instantiate(make_config(mapping, tiny=False).data.source).load()
    data = instantiate(make_config(mapping + ["data.drop_missing=true"],
                                   tiny=False).data.source).load()
    # the table source keeps ids as the file writes them (pandas wrote the float column)
    assert len(data) == 9 and sorted(data.user_ids) == ["12583.0", "13047.0", "17850.0"]


# ---------------------------------------------------------------------------- atomic
def test_atomic_name_is_inferred_and_item_fields_feed_the_template(tmp_path):
    (tmp_path / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                         "u\ti1\t1\nu\ti2\t2\n")
    (tmp_path / "shop.item").write_text("item_id:token\tname:token_seq\tcat:token\t"
                                        "cost:float\ni1\tRed Pen\toffice\t2.5\n")
    source = AtomicSource(path=str(tmp_path), text_template="{title}. {category}. {brand}.",
                          item_fields={"title": "name", "category": "cat", "price": "cost"})
    data = source.load()
    assert data.name == "shop" and text_of(data, "i1") == "Red Pen. office."
    assert text_of(data, "i2") == "" and data.items.numeric["price"][0] == 2.5
    assert len(AtomicSource(path=str(tmp_path / "shop.inter")).load()) == 2
    with pytest.raises(DataFormatError, match=r"shop.item: item_fields.brand='maker'"):
        AtomicSource(path=str(tmp_path), item_fields={"brand": "maker"}).load()
    (tmp_path / "other.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(DataFormatError, match="found 2 .inter files"):
        AtomicSource(path=str(tmp_path)).load()
    with pytest.raises(DataFormatError, match="other.inter: the file has a header but no rows"):
        AtomicSource(path=str(tmp_path), name="other").load()


# ---------------------------------------------------------------------------- text template
def test_one_template_for_every_source_from_config(make_config, tmp_path):
    template = "{title} by {brand} ({price:.2f})"
    cfg = make_config([f"data.text_template='{template}'"])
    data = instantiate(cfg.data.source).load()
    assert isinstance(instantiate(cfg.data.source), ShopSource)
    assert all(" by " in t and t.endswith(")") for t in data.items.text[:20])
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu,i,1\n")
    items = tmp_path / "i.csv"
    items.write_text("item_id,title,brand,price\ni,Cup,Acme,3\n")
    table_cfg = make_config(["data=table", f"data.path={events}", f"data.items_path={items}",
                             f"data.text_template='{template}'"], tiny=False)
    assert instantiate(table_cfg.data.source).load().items.text == ["Cup by Acme (3.00)"]
    assert render_item_text(pd.DataFrame({"title": ["Cup"]}), template) == ["Cup by ()"]


DATA_CONFIGS = ["ml100k", "ml1m", "online_retail", "amazon", "table", "atomic", "scientific",
                "shop"]
#: the data configs without a default path
NEED_PATH = ("table", "atomic", "scientific")


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_data_config_exposes_a_text_template(make_config, data, tmp_path):
    overrides = [f"data={data}"] + ([f"data.path={tmp_path}"] if data in NEED_PATH else [])
    cfg = make_config(overrides, tiny=False)
    assert "text_template" in cfg.data
    assert cfg.data.source.text_template == cfg.data.text_template


def test_data_configs_share_one_preprocessing_default(make_config, tmp_path):
    """conf/data/preprocess/default.yaml is the one preprocessing block; a data config
    overrides only what differs (5-core for the sparse real logs)."""
    shared = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "preprocess" / "default.yaml"))
    differs = {"online_retail": {"kcore": 5}, "amazon": {"kcore": 5}}
    for data in DATA_CONFIGS:
        cfg = make_config([f"data={data}", f"data.path={tmp_path}"] if data in NEED_PATH
                          else [f"data={data}"], tiny=False)
        assert OmegaConf.to_container(cfg.data.preprocess) == {**shared, **differs.get(data, {})}
    texts = [p.read_text() for p in (CONF / "data").rglob("*.yaml")]
    assert sum("recozoo.data.Preprocessing" in t for t in texts) == 1


#: the command-line names each data config offers beside data.name and data.text_template
SOURCE_KEYS = {"ml100k": ["path", "min_rating"], "ml1m": ["path", "min_rating"],
               "online_retail": ["path", "sheets", "encoding"],
               "amazon": ["path", "min_rating", "category"],
               "table": ["path", "min_rating", "items_path", "drop_missing", "encoding"],
               "atomic": ["path", "min_rating"], "scientific": ["path", "min_rating"], "shop": []}


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_data_command_line_names_reach_the_source(make_config, data, tmp_path):
    values = {"path": str(tmp_path), "min_rating": 4.0, "sheets": ["Year 2009-2010"],
              "category": "Beauty", "items_path": str(tmp_path / "items.csv"),
              "drop_missing": True, "encoding": "latin-1"}
    overrides = [f"data={data}", "data.name=mine", "data.text_template='{title}!'",
                 "data.preprocess.kcore=7"]
    overrides += [f"data.{key}={values[key]}" for key in SOURCE_KEYS[data]]
    cfg = make_config(overrides, tiny=False)
    source = cfg.data.source
    assert (source.name, source.text_template) == ("mine", "{title}!")
    assert {key: source[key] for key in SOURCE_KEYS[data]} == {
        key: values[key] for key in SOURCE_KEYS[data]}
    assert cfg.data.preprocess.kcore == 7 and cfg.data.num_workers == 0
    instantiate(source)  # the source takes every argument the config passes
    if data.startswith("ml"):
        assert source.variant == {"ml100k": "100k", "ml1m": "1m"}[data]
        assert make_config([f"data={data}"], tiny=False).data.name == f"ml-{source.variant}"


def test_table_trains_end_to_end(make_config, tmp_path):
    from recozoo.train import train

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(40)}", t) for u in range(30) for t in range(6)]
    path = tmp_path / "log.tsv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, sep="\t",
                                                                          index=False)
    cfg = make_config(["data=table", f"data.path={path}", "model=pop", "logger=csv",
                       "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                       "trainer.enable_model_summary=false"], tiny=False)
    metrics = train(cfg)
    assert metrics["status"] == "ok" and metrics["data"] == "table"
    assert metrics["n_users"] == 30 and 0 <= metrics["test/recall@10"] <= 1


# ---------------------------------------------------------------------------- real files
def test_shared_ml100k_atomic(shared_data):
    for source in (AtomicSource(path=str(shared_data / "ml-100k"), name="ml-100k"),
                   MovieLensSource(path=str(shared_data / "ml-100k"))):
        data = source.load()
        assert (data.n_users, data.n_items, len(data)) == (943, 1682, 100_000)
    assert text_of(data, "1") == "Toy Story. Animation Children's Comedy."
    assert dataset_statistics(data)["head_interaction_share"] == pytest.approx(0.646, abs=0.01)


def test_shared_amazon_scientific_atomic(shared_data):
    data = AtomicSource(path=str(shared_data / "amazon-scientific"), name="Scientific").load()
    assert (data.n_users, data.n_items, len(data)) == (8442, 4385, 59_427)
    assert all(data.items.text) and "PORTER-CABLE" in text_of(data, "B0000223SI")
    assert dataset_statistics(data)["head_interaction_share"] == pytest.approx(0.52, abs=0.01)


@pytest.mark.slow
def test_shared_online_retail_2009_2010(shared_data):
    from recozoo.data import Preprocessing

    path = shared_data / "online-retail-ii" / "online_retail_II_2009_2010.parquet"
    data = OnlineRetailSource(path=str(path)).load()
    stats = dataset_statistics(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (4285, 4007, 393_636)
    assert stats["head_interaction_share"] == pytest.approx(0.694, abs=0.01)
    assert not {"POST", "M", "DOT", "BANK CHARGES"} & set(data.item_ids)
    cleaned, _ = Preprocessing(kcore=5)(data)
    assert cleaned.n_users == 4035 and cleaned.n_items == 3457


@pytest.mark.slow
def test_shared_online_retail_as_an_export_without_invoices(shared_data, tmp_path, caplog):
    """The 2009-2010 sheet written the way the common 2010-2011 export is (no Invoice, no
    StockCode, UnitPrice, CustomerID): the same customers, and the same rows dropped, with
    cancellations now dropped as negative quantities (9,839 cancelled + 31 <= 0)."""
    raw = pd.read_parquet(shared_data / "online-retail-ii" / "online_retail_II_2009_2010.parquet")
    export = tmp_path / "export.csv"
    raw.drop(columns=["Invoice", "StockCode"]).rename(
        columns={"Price": "UnitPrice", "Customer ID": "CustomerID"}).to_csv(export, index=False)
    caplog.set_level(logging.INFO)
    data = OnlineRetailSource(path=str(export)).load()
    for rule in ("525,461 rows in", "no customer: 107,927",
                 "quantity or price <= 0 or missing: 9,870", "non-product stock code: 1,367"):
        assert rule in caplog.text
    assert data.n_users == 4285 and len(data) > 390_000
    assert not {"POSTAGE", "MANUAL", "DOTCOM POSTAGE", "BANK CHARGES"} & set(data.item_ids)
