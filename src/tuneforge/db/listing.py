"""Bedrock-style list queries shared by every List operation.

Creation-time bounds, a case-insensitive ``nameContains``, newest-first (or oldest-first) order with
the id as tie-breaker, and offset paging that fetches one extra row to know whether a next page exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func

from tuneforge.db.session import Database

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_offset: int | None


def created_and_named(
    query: Select[Any],
    entity: Any,
    *,
    after: datetime | None,
    before: datetime | None,
    name_contains: str | None,
) -> Select[Any]:
    """Apply ``creationTimeAfter`` / ``creationTimeBefore`` / ``nameContains`` to ``entity``'s columns."""
    if after:
        query = query.where(entity.created_at > after)
    if before:
        query = query.where(entity.created_at < before)
    if name_contains:
        query = query.where(func.instr(func.lower(entity.name), name_contains.lower()) > 0)
    return query


def fetch_page(
    db: Database, query: Select[Any], entity: Any, *, descending: bool, offset: int, limit: int
) -> Page[Any]:
    order = entity.created_at.desc() if descending else entity.created_at.asc()
    query = query.order_by(order, entity.id).offset(offset).limit(limit + 1)
    with db.session() as session:
        rows = list(session.scalars(query).all())
    return Page(rows[:limit], offset + limit if len(rows) > limit else None)
