"""One template turns item side data into the text that text models read.

Every source (shop, MovieLens, Online Retail, Amazon, atomic files, any table) renders item
text with `render_item_text` and a ``text_template`` from its ``conf/data/*.yaml``, over the
canonical item columns (``title``, ``category``, ``brand``, ``price`` ...; see
`recozoo.data.sources.base`), so text models see the same kind of input from every dataset.
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_TEXT_TEMPLATE = "{title}. {category}. {brand}."


class _BlankFormatter(string.Formatter):
    """``str.format`` where a missing field is empty and a format spec that does not fit the
    value (``{price:.2f}`` over a string) falls back to the plain value."""

    def get_value(self, key: int | str, args: Any, kwargs: dict[str, Any]) -> Any:
        return kwargs.get(key) if isinstance(key, str) else None

    def format_field(self, value: Any, format_spec: str) -> str:
        if _is_missing(value):
            return ""
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value if not _is_missing(v))
        if isinstance(value, str):
            return value.strip()
        try:
            return format(value, format_spec)
        except (TypeError, ValueError):
            return str(value)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, list, tuple)):
        return isinstance(value, str) and not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def template_fields(template: str) -> list[str]:
    """The field names a template reads (``"{title}. {price:.2f}"`` -> ``["title", "price"]``)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as error:
        raise ValueError(f"text_template '{template}' is not a valid format string: "
                         f"{error}") from None


def render_item_text(items: pd.DataFrame, template: str) -> list[str]:
    """Render ``template`` (``str.format`` fields, format specs allowed) for every row of
    ``items``.

    Fields absent from the table or missing in a row become empty strings, and the separators
    they leave behind (". ." or leading dots) are tidied, so every source yields clean text.
    A field that no row has is logged once (a typo in the template shows up in the log).

    Example:
        >>> render_item_text(pd.DataFrame({"title": ["Pen"], "brand": [None]}), "{title}. {brand}.")
        ['Pen.']
        >>> render_item_text(pd.DataFrame({"title": ["Pen"], "price": [2.5]}), "{title}, {price:.2f}")
        ['Pen, 2.50']
    """
    fields = template_fields(template)
    absent = [name for name in fields if name not in items.columns]
    if absent:
        log.info("text_template '%s': no column %s in the item data (rendered empty; columns: "
                 "%s)", template, absent, [str(c) for c in items.columns])
    formatter = _BlankFormatter()
    columns = [name for name in dict.fromkeys(fields) if name in items.columns]
    records = items[columns].to_dict("records") if columns else [{}] * len(items)
    return [_tidy(formatter.vformat(template, (), record)) for record in records]


def _tidy(text: str) -> str:
    text = re.sub(r"\.(\s*\.)+", ".", text)  # an empty field leaves ". ." behind
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    text = re.sub(r"([,;:])(\s*[,;:.])+", r"\2", text)  # ", ." -> "."
    text = re.sub(r"^[\s.,;:]+", "", text)
    return re.sub(r"\s+", " ", text).strip()
