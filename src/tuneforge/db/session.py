"""Engine and session factory. SQLite by default (WAL, busy timeout), PostgreSQL by URL.

The schema comes from the Alembic migrations (:mod:`tuneforge.db.migrate`), checked at every start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.db import migrate
from tuneforge.errors import ConflictException
from tuneforge.settings import Settings

CONNECT_TIMEOUT_S = 10
"""How long a connection attempt to PostgreSQL waits: a down server fails the start (or a request) quickly."""


def make_engine(settings: Settings) -> Engine:
    """The engine, once the database's schema revision is the code's (see :func:`migrate.prepare`)."""
    engine = connect(settings)
    file = engine.url.database if engine.dialect.name == "sqlite" else None
    if file and file != ":memory:" and not file.startswith("file:") and not Path(file).exists():
        start_from_migrated_copy(Path(file))
    try:
        migrate.prepare(engine, auto_upgrade=engine.dialect.name == "sqlite")
    except OperationalError as exc:
        engine.dispose()
        raise DatabaseUnavailable(unreachable_message(engine.url, exc)) from None
    except migrate.SchemaMismatch:
        engine.dispose()
        raise
    return engine


def connect(settings: Settings) -> Engine:
    """An engine for ``settings.db_url`` with no schema check (``tuneforge db`` works on any revision)."""
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
        # Each process (the API, every job worker) has its own pool: a few connections each keeps
        # the total well under PostgreSQL's default max_connections=100 with several replicas and
        # workers. pre_ping replaces connections the server dropped (a restart, an idle timeout);
        # recycle bounds how long a connection lives behind a proxy that cuts idle ones.
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            pool_timeout=30,
            pool_recycle=1800,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
    return engine


def start_from_migrated_copy(path: Path) -> None:
    """A new embedded database begins as a copy of one this process migrated to the head once.

    Running the migrations costs ~100 ms of Python per database (Alembic builds every table anew),
    a copy ~1 ms; test suites and the CLI create many. The copy is the migrations' own result, never
    ``create_all``'s. It is linked into place, so a concurrent start that got there first wins.
    """
    staged = path.with_name(f".{path.name}.{os.getpid()}.new")
    shutil.copyfile(_migrated_template(), staged)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink()


@cache
def _migrated_template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tuneforge-schema-"))
    atexit.register(shutil.rmtree, folder, True)
    engine = create_engine(f"sqlite:///{folder / 'head.db'}")
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return folder / "head.db"


class DatabaseUnavailable(RuntimeError):
    """The database server cannot be reached (down, wrong host or port, refused credentials)."""


def unreachable_message(url: URL, exc: OperationalError) -> str:
    """One line naming the server (never the password) and the driver's first line of reason."""
    where = f"{url.host or 'localhost'}:{url.port}" if url.port else (url.host or "localhost")
    reason = first_line(exc)
    return f"cannot reach the database at {where} ({url.get_backend_name()}, database {url.database}): {reason}"


def first_line(exc: OperationalError) -> str:
    """The driver's reason without SQLAlchemy's statement and parameters (they may hold user data)."""
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
