"""Schema versions: Alembic migrations shipped in the package, checked at every start.

The database records its revision in ``alembic_version``; the code knows the head of
``tuneforge/db/migrations/versions``. At start (:func:`prepare`):

- equal: go on;
- the database is behind (or empty, or made by a release before migrations, which has tables but no
  ``alembic_version``): the embedded SQLite default is upgraded in place; PostgreSQL, which several
  replicas of possibly different versions share, is left alone and the start is refused with the
  advice to run ``tuneforge db upgrade``, so an operator decides when the shared schema moves;
- the database is at a revision this code does not know (a newer tuneforge upgraded it): refused,
  on every backend, since this code would misread the newer tables.

The baseline revision creates the schema of the last release without migrations, and completes a
database that release made (missing tables and nullable columns), so such a database is adopted
with its rows.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaMismatch(RuntimeError):
    """The database's schema revision is not the one this code was written for."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The revision this code expects."""
    revision = _scripts().get_current_head()
    assert revision is not None, "the migrations folder has no revision"
    return revision


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or made before migrations)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def has_tables(engine: Engine) -> bool:
    return bool(set(inspect(engine).get_table_names()) - {"alembic_version"})


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (one transaction on PostgreSQL: all or nothing)."""
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def prepare(engine: Engine, *, auto_upgrade: bool) -> None:
    """Check the database's revision against the code's; upgrade when allowed, else refuse."""
    found = current(engine)
    expected = head()
    if found == expected:
        return
    check_known(found)
    if auto_upgrade:
        upgrade(engine)
        return
    state = f"is at schema revision {found}" if found else "has no schema revision"
    if found is None and has_tables(engine):
        state = "was made by a tuneforge release before migrations"
    raise SchemaMismatch(f"the database {state}; this tuneforge needs {expected}: run `tuneforge db upgrade`")


def check_known(revision: str | None) -> None:
    """Refuse a revision this code has no migration for: a newer tuneforge wrote it."""
    if revision is not None and _is_unknown(revision):
        raise SchemaMismatch(
            f"the database's schema revision {revision} is newer than this tuneforge knows (its newest is "
            f"{head()}); run the tuneforge release that upgraded it, or a newer one"
        )


def _is_unknown(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is None
    except CommandError:  # "Can't locate revision identified by ..."
        return True


def new_revision(message: str) -> str:
    """Write ``versions/NNNN_<message>.py`` for what the models declare beyond the head (for
    developers: ``python -m tuneforge.db.migrate "jobs: lease columns"``, then review and commit it).
    The comparison runs against a scratch SQLite database migrated to the head; new columns must be
    nullable or have a server default, so the revision applies to tables that already hold rows."""
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            upgrade(engine)
            with engine.begin() as connection:
                config = _config(connection)
                config.set_main_option("file_template", "%%(rev)s")
                # alembic_version.version_num is VARCHAR(32) (PostgreSQL enforces it): "NNNN_" + 27.
                slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:27].rstrip("_")
                number = int(head().split("_", 1)[0]) + 1
                script = command.revision(config, message=message, autogenerate=True, rev_id=f"{number:04d}_{slug}")
        finally:
            engine.dispose()
    assert isinstance(script, Script)
    return str(script.path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a new schema revision from the models' changes.")
    parser.add_argument("message", help="what the revision changes, e.g. 'jobs: lease columns'")
    print(new_revision(parser.parse_args().message))
