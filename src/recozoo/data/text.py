"""One template turns item side data into the text that text models read."""

from __future__ import annotations

import re
import string

import pandas as pd

DEFAULT_TEXT_TEMPLATE = "{title}. {category}. {brand}."


def render_item_text(items: pd.DataFrame, template: str) -> list[str]:
    """Render ``template`` (``str.format`` fields) for every row of ``items``.

    Fields absent from the table or missing in a row become empty strings, and the separators
    they leave behind (". ." or leading dots) are tidied, so every source yields clean text.

    Example:
        >>> render_item_text(pd.DataFrame({"title": ["Pen"], "brand": [None]}), "{title}. {brand}.")
        ['Pen.']
    """
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    rows = []
    for record in items.to_dict("records"):
        values = {}
        for name in fields:
            value = record.get(name)
            values[name] = "" if value is None or (isinstance(value, float) and pd.isna(value)) \
                else str(value).strip()
        rows.append(_tidy(template.format(**values)))
    return rows


def _tidy(text: str) -> str:
    text = re.sub(r"\.(\s*\.)+", ".", text)  # an empty field leaves ". ." behind
    text = re.sub(r"^\s*\.\s*", "", text)
    return re.sub(r"\s+", " ", text).strip()
