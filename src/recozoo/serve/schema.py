"""The request and response bodies of ``POST /predict`` (pydantic: they are the OpenAPI schema
FastAPI publishes and validates), and `RequestError` for requests the run cannot answer.
Kept free of torch and of the model code, so the HTTP process imports it in milliseconds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["user", "history", "popularity"]


class RecommendRequest(BaseModel):
    """Body of ``POST /predict``: a known ``user_id``, or a ``history`` for a new user."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, description="external user id; unknown ids fall back to "
                                "the history, else to popularity")
    history: list[str] | None = Field(None, description="item ids the user interacted with, "
                                      "oldest first")
    k: int = Field(10, ge=1, description="list length, 1..n_items")
    exclude_seen: bool = Field(True, description="leave out the user's known and given items")
    tail_boost: float = Field(0.0, ge=0.0, le=1.0, description="xQuAD weight: the list's "
                              "head/tail mix moves toward the user's own (toward the tail where "
                              "the model's list is head-heavier than the user); 0 keeps the "
                              "model's order")
    tail_slots: float = Field(0.0, ge=0.0, le=1.0, description="share of the list's places "
                              "for the best tail items below the model's top (0.2: places 5 "
                              "and 10 of 10; rerank=tail_slots); 0: none; not with tail_boost")
    category: str | None = Field(None, description="only items of this category")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    category: str | None = None
    is_tail: bool


class RecommendResponse(BaseModel):
    """Answer of ``POST /predict``."""

    user_id: str | None
    model: str
    strategy: Strategy = Field(description="user, history, or popularity (a fallback)")
    fallback: str | None = Field(description="why the request was not scored as asked, or null")
    items: list[RecommendedItem]


class RequestError(ValueError):
    """A request the run cannot answer; ``errors`` use FastAPI's 422 format (loc, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors
