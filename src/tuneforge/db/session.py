"""Engine and session factory. SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.db.tables import Base
from tuneforge.errors import ConflictException
from tuneforge.settings import Settings


def make_engine(settings: Settings) -> Engine:
    url = settings.db_url
    if url.startswith("sqlite"):
        settings.ensure_dirs()
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes progress; busy_timeout makes
            # concurrent writers wait instead of failing with "database is locked".
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


def add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a newer tuneforge declares to tables an older one created.

    ``create_all`` creates missing tables but leaves existing ones alone, so a data directory made
    before a column was added would fail every query of that table ("no such column"). New columns
    are nullable (or this raises naming the column), so adding them keeps every existing row valid.
    A unique constraint on an added column is not added (SQLite cannot); the services check names.
    """
    inspector = inspect(engine)
    existing_tables = set(inspector.get_table_names())
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if table.name not in existing_tables:
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(
                        f"the database's table {table.name} predates column {column.name}, which cannot be added "
                        "to existing rows; use a new data directory"
                    )
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


class Database:
    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def unique_or_conflict(message: str) -> Iterator[None]:
    """Around a create's unit of work: a name (or clientRequestToken) check then an insert.

    Two creates with one name can both pass the check before either commits; the unique index then
    refuses the second insert, and this answers it with the ConflictException the check gives
    (``message``) rather than letting the IntegrityError become a 500.
    """
    try:
        yield
    except IntegrityError:
        raise ConflictException(message) from None
