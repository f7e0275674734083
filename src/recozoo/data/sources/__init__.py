"""Data sources: each has ``load() -> Interactions``."""

from recozoo.data.sources.atomic import AtomicSource, DataFormatError
from recozoo.data.sources.shop import ShopSource

__all__ = ["AtomicSource", "DataFormatError", "ShopSource"]
