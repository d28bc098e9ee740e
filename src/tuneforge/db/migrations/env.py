"""Alembic's environment: runs on the connection :mod:`tuneforge.db.migrate` hands over.

There is no alembic.ini: ``tuneforge db upgrade`` (and the embedded default's start) build the
configuration in code, so the migrations travel inside the package and need no working directory.
"""

from __future__ import annotations

from alembic import context

from tuneforge.db.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
