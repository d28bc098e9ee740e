"""Replays a create race deterministically: a competing create commits between another create's
name check and its insert, as two API threads (or servers) can interleave."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


@contextmanager
def competitor_before_insert(engine: Engine, table: str, competitor: Callable[[], Any]) -> Iterator[None]:
    """Run ``competitor`` (on its own connection) just before the first ``INSERT INTO table``."""
    fired = False

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal fired
        if not fired and statement.startswith(f"INSERT INTO {table} "):
            fired = True
            competitor()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert fired, f"no INSERT INTO {table} ran"
