"""`Interactions`: the one typed container every data source produces.

A source reads raw logs into integer user/item indices (0-based, dense), timestamps, optional
event types and ratings, plus item side data and the maps back to external ids. Everything
downstream (preprocessing, splits, the DataModule, run artifacts) works on this container.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

#: Event codes, ordered by strength of intent (used by rewards and by dedupe).
EVENT_NAMES: tuple[str, ...] = ("view", "cart", "purchase")
EVENT_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_NAMES)}


@dataclass
class ItemData:
    """Side data of the items, row ``i`` describing item index ``i``.

    Args:
        text: one string per item (title, category, brand ... assembled by the source), or None.
        category: integer category index per item (for filters and calibration), or None.
        category_names: names of the category indices.
        numeric: named numeric features, each a float array of length n_items (e.g. price).
        titles: a short human-readable name per item (falls back to the external id).
    """

    text: list[str] | None = None
    category: np.ndarray | None = None
    category_names: list[str] | None = None
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    titles: list[str] | None = None

    def take(self, index: np.ndarray) -> ItemData:
        """Side data of the items at ``index`` (in that order)."""
        return ItemData(
            text=[self.text[i] for i in index] if self.text is not None else None,
            category=self.category[index] if self.category is not None else None,
            category_names=self.category_names,
            numeric={k: v[index] for k, v in self.numeric.items()},
            titles=[self.titles[i] for i in index] if self.titles is not None else None,
        )


@dataclass
class Interactions:
    """User-item interactions with dense integer indices.

    Args:
        user: (n,) int64 user index in ``[0, n_users)``.
        item: (n,) int64 item index in ``[0, n_items)``.
        timestamp: (n,) float64 time (seconds, or a position when only the order is known).
        user_ids: (n_users,) external user ids; ``user_ids[u]`` is the id of index ``u``.
        item_ids: (n_items,) external item ids.
        event: (n,) int8 event code (see ``EVENT_NAMES``) or None when the data has no types.
        rating: (n,) float32 explicit rating or None.
        items: item side data.
        name: a short label of the dataset (goes to metrics.json).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    event: np.ndarray | None = None
    rating: np.ndarray | None = None
    items: ItemData = field(default_factory=ItemData)
    name: str = "data"

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.timestamp = np.asarray(self.timestamp, dtype=np.float64)
        n = len(self.user)
        for label, column in (("item", self.item), ("timestamp", self.timestamp),
                              ("event", self.event), ("rating", self.rating)):
            if column is not None and len(column) != n:
                raise ValueError(f"Interactions.{label} has {len(column)} rows, user has {n}")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Interactions:
        """Rows at ``index`` (a bool mask or integer positions); id maps are kept as they are."""
        return replace(
            self,
            user=self.user[index],
            item=self.item[index],
            timestamp=self.timestamp[index],
            event=self.event[index] if self.event is not None else None,
            rating=self.rating[index] if self.rating is not None else None,
        )

    def compact(self) -> Interactions:
        """Re-index users and items so that only those with interactions remain (0..n-1)."""
        users, user_new = np.unique(self.user, return_inverse=True)
        items, item_new = np.unique(self.item, return_inverse=True)
        return replace(
            self,
            user=user_new.astype(np.int64),
            item=item_new.astype(np.int64),
            user_ids=self.user_ids[users],
            item_ids=self.item_ids[items],
            items=self.items.take(items),
        )

    def chronological_order(self) -> np.ndarray:
        """Positions sorted by (user, timestamp), stable so that ties keep file order."""
        return np.lexsort((np.arange(len(self)), self.timestamp, self.user))

    def to_frame(self) -> pd.DataFrame:
        """The interactions as a DataFrame (for inspection and artifacts)."""
        frame = pd.DataFrame({"user": self.user, "item": self.item, "timestamp": self.timestamp})
        if self.event is not None:
            frame["event"] = self.event
        if self.rating is not None:
            frame["rating"] = self.rating
        return frame

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str | None = "timestamp",
        rating_col: str | None = None,
        event_col: str | None = None,
        items: pd.DataFrame | None = None,
        item_key: str = "item_id",
        text_template: str | None = None,
        category_col: str | None = None,
        title_col: str | None = None,
        numeric_cols: tuple[str, ...] = (),
        name: str = "data",
    ) -> Interactions:
        """Build from a frame with external ids; item side data from an optional items table.

        Args:
            frame: one row per interaction.
            items: one row per item, keyed by ``item_key``; items absent from it get empty text.
            text_template: ``str.format`` template over the items table's columns and
                ``item_id`` (the external id), e.g. ``"{title}. {category}. {brand}."``;
                missing values become empty strings.
        """
        from recozoo.data.text import render_item_text  # local: avoids a cycle at import

        user_codes, user_ids = pd.factorize(frame[user_col], sort=False)
        item_codes, item_ids = pd.factorize(frame[item_col], sort=False)
        timestamp = (frame[time_col].to_numpy(dtype=np.float64) if time_col
                     else np.arange(len(frame), dtype=np.float64))
        event = None
        if event_col:
            event = frame[event_col].to_numpy(dtype=np.int8)
        rating = frame[rating_col].to_numpy(dtype=np.float32) if rating_col else None
        item_data = ItemData()
        if items is not None:
            table = (items.drop_duplicates(item_key).set_index(item_key).reindex(item_ids)
                     .rename_axis(item_key))  # reindex drops the key's name
            if text_template:
                fields = table.reset_index()
                if "item_id" not in fields:  # every template may name the item's own id
                    fields["item_id"] = np.asarray(item_ids, dtype=str)
                item_data.text = render_item_text(fields, text_template)
            if title_col and title_col in table:
                item_data.titles = [str(t) if isinstance(t, str) else str(i)
                                    for t, i in zip(table[title_col], item_ids)]
            if category_col and category_col in table:
                codes, names = pd.factorize(table[category_col].fillna("unknown"))
                item_data.category = codes.astype(np.int64)
                item_data.category_names = [str(n) for n in names]
            for col in numeric_cols:
                if col in table:
                    item_data.numeric[col] = pd.to_numeric(table[col], errors="coerce").to_numpy(
                        dtype=np.float32)
        return cls(
            user=user_codes, item=item_codes, timestamp=timestamp,
            user_ids=np.asarray(user_ids.astype(str)), item_ids=np.asarray(item_ids.astype(str)),
            event=event, rating=rating, items=item_data, name=name,
        )
