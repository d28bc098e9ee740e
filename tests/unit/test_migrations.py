"""Schema migrations: the models' schema is what the migrations make, old databases are adopted with
their rows, and a database of another schema version is refused with advice (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.postgres import PostgresServer
from tuneforge.cli.main import app
from tuneforge.db import migrate
from tuneforge.db.session import Database, DatabaseUnavailable, connect
from tuneforge.db.tables import Base
from tuneforge.services import Services
from tuneforge.settings import Settings

LEGACY_SCHEMA = Path(__file__).parent.parent / "data" / "legacy_schema_sqlite.sql"

LEGACY_JOB = """INSERT INTO jobs (id, arn, name, custom_model_name, role_arn, request_fingerprint, base_model_id,
    base_model_arn, customization_type, hyperparameters, training_data, validation_data, output_data, job_tags,
    custom_model_tags, status, status_details, validation_losses, progress, phase, stop_requested, attempts,
    created_at, updated_at)
VALUES ('abc123def456', 'arn:aws:bedrock:us-east-1:123456789012:model-customization-job/abc123def456',
    'old-job', 'old-model', 'arn:aws:iam::123456789012:role/R', 'f', 'tuneforge.forge-micro-v1:0:512',
    'arn:aws:bedrock:us-east-1::foundation-model/tuneforge.forge-micro-v1:0:512', 'FINE_TUNING',
    '{"epochCount": "1"}', '{"s3Uri": "s3://b/t.jsonl"}', '{"validators": []}', '{"s3Uri": "s3://b/o/"}', '[]',
    '[]', 'Completed', '{}', '[]', '{}', 'done', FALSE, 1, '2026-01-02 03:04:05.000000',
    '2026-01-02 03:04:05.000000')"""


def differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def test_every_revision_id_fits_alembic_version_on_postgresql() -> None:
    """alembic_version.version_num is VARCHAR(32): SQLite ignores the length, PostgreSQL refuses a longer id
    (a 38-character id once passed every SQLite test and failed the upgrade on PostgreSQL)."""
    ids = [script.revision for script in migrate._scripts().walk_revisions()]
    assert ids and all(len(revision) <= 32 for revision in ids), ids


def test_migrations_make_exactly_the_models_schema_on_sqlite(fast_tmp: Path) -> None:
    """A model change without its migration shows up here as a difference (and fails CI)."""
    Database(Settings(data_dir=fast_tmp)).dispose()
    assert differences(f"sqlite:///{fast_tmp / 'tuneforge.db'}") == []


def test_migrations_make_exactly_the_models_schema_on_postgresql(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    engine = connect(Settings(database_url=url))
    migrate.upgrade(engine)
    engine.dispose()
    assert differences(url) == []


def legacy_sqlite(data_dir: Path) -> None:
    """A data directory as the last release without migrations left it, with one finished job, made
    before ``jobs.tuning`` existed (a nullable column that release added at start)."""
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "tuneforge.db") as db:
        db.executescript(LEGACY_SCHEMA.read_text())
        db.execute(LEGACY_JOB)
        db.execute("ALTER TABLE jobs DROP COLUMN tuning")
        db.execute(
            "INSERT INTO job_events (job_id, created_at, kind, data) VALUES ('abc123def456', "
            "'2026-01-02 03:04:05.000000', 'log', '{\"message\": \"hello\"}')"
        )


def test_a_database_of_the_release_before_migrations_is_upgraded_at_start_and_keeps_its_jobs(fast_tmp: Path) -> None:
    legacy_sqlite(fast_tmp / "data")
    services = Services.create(Settings(data_dir=fast_tmp / "data"))
    try:
        job = services.jobs.get("old-job")
        assert (job.id, job.status, job.hyperparameters, job.tuning) == (
            "abc123def456",
            "Completed",
            {"epochCount": "1"},
            None,
        )
        assert job.created_at.isoformat() == "2026-01-02T03:04:05+00:00"
        assert [event.data for event in services.jobs.events("old-job")] == [{"message": "hello"}]
        assert migrate.current(services.db.engine) == migrate.head()
    finally:
        services.close()
    assert differences(f"sqlite:///{fast_tmp / 'data' / 'tuneforge.db'}") == []


def test_postgresql_is_never_upgraded_at_start_and_db_upgrade_adopts_an_old_database(
    postgres_server: PostgresServer, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas share PostgreSQL: an operator moves its schema, with ``tuneforge db upgrade``."""
    url = postgres_server.create_database()
    legacy = create_engine(url)
    # The release before migrations made the baseline's schema with create_all and kept no revision.
    migrate.upgrade(legacy, "0001_baseline")
    with legacy.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text(LEGACY_JOB))
    legacy.dispose()
    settings = Settings(data_dir=fast_tmp, database_url=url)

    with pytest.raises(migrate.SchemaMismatch, match=r"before migrations.*run `tuneforge db upgrade`"):
        Database(settings)

    monkeypatch.setenv("TUNEFORGE_DATABASE_URL", url)
    monkeypatch.setenv("TUNEFORGE_DATA_DIR", str(fast_tmp))
    assert CliRunner().invoke(app, ["db", "current"]).exit_code == 1
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"none -> {migrate.head()}" in result.output
    assert CliRunner().invoke(app, ["db", "current"]).exit_code == 0

    services = Services.create(settings)
    try:
        assert services.jobs.get("old-job").status == "Completed"
    finally:
        services.close()


def test_an_empty_postgresql_database_asks_for_db_upgrade(postgres_server: PostgresServer, fast_tmp: Path) -> None:
    settings = Settings(data_dir=fast_tmp, database_url=postgres_server.create_database())
    with pytest.raises(migrate.SchemaMismatch, match=r"has no schema revision; .* run `tuneforge db upgrade`"):
        Database(settings)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_newer_than_the_code_is_refused(
    backend: str, request: pytest.FixtureRequest, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer replica upgraded the schema: this one would misread it, and an upgrade cannot help."""
    url = None if backend == "sqlite" else request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=fast_tmp, database_url=url)
    database = Database(settings)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    database.dispose()

    with pytest.raises(migrate.SchemaMismatch, match="revision 9999_from_the_future is newer than this tuneforge"):
        Database(settings)
    if url is not None:
        monkeypatch.setenv("TUNEFORGE_DATABASE_URL", url)
    monkeypatch.setenv("TUNEFORGE_DATA_DIR", str(fast_tmp))
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "newer than this tuneforge" in result.output


def test_an_unreachable_postgresql_fails_the_start_with_one_line_naming_the_host(
    fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.postgres import _free_port

    port = _free_port()
    url = f"postgresql+psycopg://tuneforge:s3cret-pw@127.0.0.1:{port}/tuneforge"
    with pytest.raises(DatabaseUnavailable) as caught:
        Database(Settings(data_dir=fast_tmp, database_url=url))
    assert f"cannot reach the database at 127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)

    monkeypatch.setenv("TUNEFORGE_DATABASE_URL", url)
    monkeypatch.setenv("TUNEFORGE_DATA_DIR", str(fast_tmp))
    result = CliRunner().invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot reach the database at 127.0.0.1:{port}")
    assert result.output.count("\n") == 1
    assert "s3cret" not in result.output


NEXT_REVISION = '''"""A newer release's revision: one nullable column."""

import sqlalchemy as sa
from alembic import op

revision = "9999_newer_release"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("newer_release_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "newer_release_note")
'''


def test_replicas_of_two_releases_on_one_postgresql_refuse_until_db_upgrade_then_the_older_refuses(
    postgres_url: str, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "disagreeing replicas": the newer release (here: this code plus one revision) will
    not start on the older schema, advising `tuneforge db upgrade`; after it, the older one refuses."""
    settings = Settings(data_dir=fast_tmp, database_url=postgres_url)
    Database(settings).dispose()  # the older release runs on its schema

    newer = fast_tmp / "newer-migrations"
    shutil.copytree(migrate.MIGRATIONS, newer)
    older = migrate.head()
    (newer / "versions" / "9999_newer_release.py").write_text(NEXT_REVISION.replace("{down}", older))
    monkeypatch.setattr(migrate, "MIGRATIONS", newer)
    migrate._scripts.cache_clear()
    try:
        with pytest.raises(migrate.SchemaMismatch) as refused:
            Database(settings)
        assert str(refused.value) == (
            f"the database is at schema revision {older}; this tuneforge needs 9999_newer_release: "
            "run `tuneforge db upgrade`"
        )
        monkeypatch.setenv("TUNEFORGE_DATABASE_URL", postgres_url)
        result = CliRunner().invoke(app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert f"{older} -> 9999_newer_release" in result.output
        Database(settings).dispose()
    finally:
        monkeypatch.undo()
        migrate._scripts.cache_clear()

    with pytest.raises(migrate.SchemaMismatch, match="revision 9999_newer_release is newer than this tuneforge"):
        Database(settings)
