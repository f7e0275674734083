"""Data sources: each has ``load() -> Interactions`` (``data=<name>``, see conf/data/).

=================  ==================================================  =====================
``data=``          source                                              reads
=================  ==================================================  =====================
``shop``           `ShopSource`                                        generated (no files)
``ml100k/ml1m``    `MovieLensSource`                                   GroupLens zip, folder
                                                                       or atomic files
``online_retail``  `OnlineRetailSource`                                UCI .xlsx, .csv,
                                                                       .parquet
``amazon``         `AmazonSource`                                      2018 / 2023 json(l).gz
``atomic``         `AtomicSource`                                      RecBole atomic files
``table``          `TableSource`                                       CSV, TSV, Parquet
=================  ==================================================  =====================

``python -m recozoo.data.sources data=<name> [overrides]`` prints a dataset's statistics after
cleaning (the README's dataset table).
"""

from recozoo.data.sources.amazon import AmazonSource
from recozoo.data.sources.atomic import AtomicSource
from recozoo.data.sources.base import DataFormatError, dataset_statistics
from recozoo.data.sources.movielens import MovieLensSource
from recozoo.data.sources.online_retail import OnlineRetailSource
from recozoo.data.sources.shop import ShopSource
from recozoo.data.sources.table import TableSource

__all__ = ["AmazonSource", "AtomicSource", "DataFormatError", "MovieLensSource",
           "OnlineRetailSource", "ShopSource", "TableSource", "dataset_statistics"]
