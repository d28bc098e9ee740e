"""Alembic's environment: runs on the connection :mod:`tuneforge.db.migrate` hands over.

There is no alembic.ini: ``tuneforge db upgrade`` (and the embedded default's start) build the
configuration in code, so the migrations travel inside the package and need no working directory.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext

from tuneforge.db.tables import Base, UTCDateTime


def render_item(kind: str, item: Any, _context: AutogenContext) -> str | Literal[False]:
    """New revisions spell UTCDateTime as the column type it stores, so a revision never imports
    the models (they change; a revision must not)."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
