"""Bedrock-style list queries shared by every List operation.

Creation-time bounds, a case-insensitive ``nameContains``, newest-first (or oldest-first) order with
the id as tie-breaker, and **keyset** paging: a page ends at a row, and the next page starts strictly
after that row's ``(created_at, id)``. An offset would move when a row is created or deleted between
two pages (repeating or skipping one); a position in the sort order does not.

The cursor travels to the client as ``nextToken``, signed with HMAC-SHA256 under a server secret
together with the query it belongs to (operation, filters, sort order): a token that was changed,
made up, or sent with other filters is refused with AWS's "Invalid pagination token" instead of
being trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, func, or_

from tuneforge.db.session import Database
from tuneforge.errors import ValidationException
from tuneforge.keyfile import read_or_create_key

T = TypeVar("T")

INVALID_TOKEN = "Invalid pagination token"
MAX_TOKEN_LENGTH = 2048
"""botocore's ``nextToken`` shape: 1 to 2048 characters."""


@dataclass(frozen=True)
class Cursor:
    """The last row of a page, as a position in the ``(created_at, id)`` order."""

    created_at: datetime
    id: str


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: Cursor | None


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
        # LIKE over lower() on both sides: SQLite's LIKE ignores ASCII case but PostgreSQL's does not;
        # autoescape keeps a '%' or '_' in the filter literal.
        query = query.where(func.lower(entity.name).contains(name_contains.lower(), autoescape=True))
    return query


def fetch_page(
    db: Database, query: Select[Any], entity: Any, *, descending: bool, after: Cursor | None, limit: int
) -> Page[Any]:
    """One page in ``(created_at, id)`` order, both descending or both ascending, starting after ``after``.

    One extra row is fetched to know whether a next page exists.
    """
    if after is not None:
        if descending:
            query = query.where(
                or_(
                    entity.created_at < after.created_at,
                    and_(entity.created_at == after.created_at, entity.id < after.id),
                )
            )
        else:
            query = query.where(
                or_(
                    entity.created_at > after.created_at,
                    and_(entity.created_at == after.created_at, entity.id > after.id),
                )
            )
    if descending:
        query = query.order_by(entity.created_at.desc(), entity.id.desc())
    else:
        query = query.order_by(entity.created_at.asc(), entity.id.asc())
    with db.session() as session:
        rows = list(session.scalars(query.limit(limit + 1)).all())
    page = rows[:limit]
    more = len(rows) > limit
    return Page(page, Cursor(page[-1].created_at, page[-1].id) if more else None)


class PageTokens:
    """Signs cursors into ``nextToken`` values and checks them on the way back."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_key_file(cls, path: Path) -> PageTokens:
        """The key in ``path`` (:func:`~tuneforge.keyfile.read_or_create_key`)."""
        return cls(read_or_create_key(path))

    def _mac(self, scope: str, payload: bytes) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]

    def encode(self, scope: str, cursor: Cursor | None) -> str | None:
        """The token for the page after ``cursor`` (None: there is no next page)."""
        if cursor is None:
            return None
        payload = json.dumps([cursor.created_at.isoformat(), cursor.id], separators=(",", ":")).encode()
        raw = payload + self._mac(scope, payload)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, scope: str, token: str | None) -> Cursor | None:
        """The cursor in ``token`` if this server issued it for ``scope``; None for no token."""
        if token is None:
            return None
        if not 1 <= len(token) <= MAX_TOKEN_LENGTH:
            raise ValidationException(INVALID_TOKEN)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise ValidationException(INVALID_TOKEN) from None
        payload, mac = raw[:-16], raw[-16:]
        if len(raw) <= 16 or not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise ValidationException(INVALID_TOKEN)
        created, row_id = json.loads(payload)
        return Cursor(datetime.fromisoformat(created), row_id)
