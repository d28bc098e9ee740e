"""PostgreSQL lost and back: the API answers 503 ServiceUnavailableException, the supervisor and a
worker's reporter carry on without raising, no job is lost, and everything works again once it returns.

The module has its own PostgreSQL server, since it stops it (the session's server serves the others).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.postgres import PostgresServer, find_bin_dir
from tests.unit.test_jobs_service import request
from tuneforge.api.app import create_app
from tuneforge.db import migrate
from tuneforge.db.session import connect
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.jobs.worker import DatabaseReporter
from tuneforge.services import Services
from tuneforge.settings import Settings


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server installed (`make test` installs Debian's postgresql)")
    own = PostgresServer(bin_dir)
    own.start()
    try:
        yield own
    finally:
        own.close()


def test_postgresql_restart_around_a_job_loses_nothing(
    server: PostgresServer, fast_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=fast_tmp, database_url=server.create_database())
    engine = connect(settings)
    migrate.upgrade(engine)
    engine.dispose()
    with TestClient(create_app(settings, run_supervisor=False), base_url="http://127.0.0.1") as client:
        services: Services = client.app.state.services  # type: ignore[attr-defined]
        job = services.jobs.create(request("outage-job"))
        reporter = DatabaseReporter(services, job.id)
        supervisor = Supervisor(services)
        assert client.get(f"/model-customization-jobs/{job.id}").status_code == 200

        server.stop()
        try:
            lost = client.get(f"/model-customization-jobs/{job.id}")
            assert lost.status_code == 503
            assert lost.headers["x-amzn-ErrorType"].startswith("ServiceUnavailableException")
            assert "database is unavailable" in lost.json()["message"]
            caplog.set_level(logging.WARNING)
            assert supervisor.safe_tick() is False
            assert "supervisor: the database is unavailable" in caplog.text
            reporter.progress(
                step=1,
                total_steps=2,
                epoch=1,
                loss=1.5,
                learning_rate=1e-4,
                tokens_per_second=1.0,
                tokens_seen=8,
                mfu=0,
            )
            reporter.log("written while the database was away")
            assert reporter.should_stop() is False
        finally:
            server.start()

        back = client.get(f"/model-customization-jobs/{job.id}")
        assert back.status_code == 200
        assert back.json()["status"] == "InProgress"
        reporter.progress(
            step=2, total_steps=2, epoch=1, loss=1.25, learning_rate=1e-4, tokens_per_second=1.0, tokens_seen=16, mfu=0
        )
        assert services.jobs.get(job.id).progress["loss"] == 1.25
        assert client.post(f"/model-customization-jobs/{job.id}/stop").status_code == 200
        assert supervisor.safe_tick() is True  # the loop's next tick works: nothing queued any more
