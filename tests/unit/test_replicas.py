"""Several API replicas on one database: the job claim, job takeover and engine-group lease rules."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.unit.test_jobs_service import request
from tests.unit.test_model_import import hf_folder
from tests.unit.test_model_import import request as import_request
from tests.unit.test_supervisor import processes, running_job, sleeper
from tuneforge.api.app import create_app
from tuneforge.db.tables import Job, JobEvent, ModelImportJob, ProvisionedModel, ReplicaRow, utcnow
from tuneforge.errors import ModelNotReadyException, ValidationException
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.replicas import SECRET_HEADER, ReplicaRegistry
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager
from tuneforge.serving.runtime import FORWARD_PATH, error_named
from tuneforge.serving.throughput import CreateThroughputRequest
from tuneforge.settings import Settings

__all__ = ["processes"]  # the fixture, shared with test_supervisor

STUDENT = "tuneforge.forge-micro-v1:0:512"

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="workers are told apart via /proc")


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", heartbeat_timeout_s=30, replica_lease_s=30))
    yield created
    created.close()


@pytest.fixture
def registries(services: Services) -> Iterator[list[ReplicaRegistry]]:
    """Two registered replicas of one database (as two ``serve`` processes would be)."""
    started = [ReplicaRegistry(services.db, services.settings) for _ in range(2)]
    for registry in started:
        registry.start()
    yield started
    for registry in started:
        registry.stop()


class RecordingSupervisor(Supervisor):
    """A supervisor whose workers are only written down: the claim is what is under test."""

    def __init__(self, services: Services, replicas: ReplicaRegistry) -> None:
        super().__init__(services, replicas)
        self.spawned: list[str] = []

    def _spawn(self, job_id: str) -> None:
        self.spawned.append(job_id)


def age_replica(services: Services, registry: ReplicaRegistry, *, seconds: float = 0, pid: int | None = None) -> None:
    """Make ``registry``'s row look dead to the others: a heartbeat ``seconds`` old, or a pid that is gone."""
    with services.db.session() as session:
        values: dict[str, object] = {"heartbeat_at": utcnow() - timedelta(seconds=seconds)}
        if pid is not None:
            values["pid"] = pid
        session.execute(update(ReplicaRow).where(ReplicaRow.id == registry.id).values(**values))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_two_replicas_racing_for_queued_jobs_claim_each_exactly_once(
    services: Services, registries: list[ReplicaRegistry]
) -> None:
    job_ids = [services.jobs.create(request(f"race-{i}")).id for i in range(12)]
    supervisors = [RecordingSupervisor(services, registry) for registry in registries]
    barrier = threading.Barrier(len(supervisors))

    def claim(supervisor: RecordingSupervisor) -> None:
        barrier.wait()
        supervisor._claim()

    threads = [threading.Thread(target=claim, args=(s,)) for s in supervisors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spawned = [job_id for s in supervisors for job_id in s.spawned]
    assert sorted(spawned) == sorted(job_ids)
    with services.db.session() as session:
        owners = dict(session.execute(select(Job.id, Job.owner_replica)).tuples().all())
        attempts = set(session.scalars(select(Job.attempts)))
    for supervisor in supervisors:
        assert all(owners[job_id] == supervisor.replica_id for job_id in supervisor.spawned)
    assert attempts == {1}


def test_a_live_replicas_job_is_left_alone_and_a_dead_ones_is_taken_over_once(
    services: Services, registries: list[ReplicaRegistry], processes: list[subprocess.Popen[bytes]]
) -> None:
    owner, other = registries
    job_id = running_job(services, 0)
    worker = sleeper(processes, "tuneforge.jobs.worker", job_id)
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(worker_pid=worker.pid, owner_replica=owner.id))

    # The owner is alive: another replica on the same host neither adopts its worker nor recovers the job.
    third = ReplicaRegistry(services.db, services.settings)
    bystanders = [Supervisor(services, other), Supervisor(services, third)]
    for supervisor in bystanders:
        supervisor.recover()
        assert supervisor.running_job_ids == []
    assert services.jobs.get(job_id).status == "InProgress"

    # The owner's pid is gone on this host: dead at once. Of two replicas recovering, one takes the job over.
    age_replica(services, owner, pid=dead_pid())
    for supervisor in bystanders:
        supervisor.recover()
    adopters = [s for s in bystanders if s.running_job_ids == [job_id]]
    assert len(adopters) == 1
    with services.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.owner_replica == adopters[0].replica_id and row.status == "InProgress"
        logs = [e.data["message"] for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any(f"replica {owner.id} is gone" in m and "was adopted" in m for m in logs), logs


def test_a_dead_replicas_job_without_a_worker_is_failed_with_the_reason(
    services: Services, registries: list[ReplicaRegistry]
) -> None:
    owner, other = registries
    job_id = running_job(services, dead_pid())
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(owner_replica=owner.id))
    age_replica(services, owner, seconds=60)  # a stale heartbeat: dead wherever it ran
    Supervisor(services, other).recover()
    job = services.jobs.get(job_id)
    assert job.status == "Failed"
    assert job.failure_message is not None and "no checkpoint to resume from" in job.failure_message


def test_engine_group_leases_are_held_by_one_live_replica_and_taken_from_dead_ones(
    services: Services, registries: list[ReplicaRegistry]
) -> None:
    first, second = registries
    assert first.claim_group("pt:a") == first.id
    assert second.claim_group("pt:a") == first.id  # held by a live replica: answered, not taken

    age_replica(services, first, seconds=60)
    assert second.claim_group("pt:a") == second.id  # a stale heartbeat: taken over
    first.heartbeat()
    assert first.claim_group("pt:a") == second.id  # back alive, it does not take it back

    assert second.claim_group("od:m") == second.id
    age_replica(services, second, pid=dead_pid())
    assert first.claim_group("od:m") == first.id  # a pid gone on this host: taken at once

    first.release_group("od:m")
    assert second.claim_group("od:m") == second.id


def test_replicas_racing_for_a_free_group_agree_on_one_holder(
    services: Services, registries: list[ReplicaRegistry]
) -> None:
    racers = [*registries, *(ReplicaRegistry(services.db, services.settings) for _ in range(4))]
    for registry in racers[2:]:
        registry.start()
    barrier = threading.Barrier(len(racers))
    answers: list[str] = []

    def claim(registry: ReplicaRegistry) -> None:
        barrier.wait()
        answers.append(registry.claim_group("od:race"))

    threads = [threading.Thread(target=claim, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for registry in racers[2:]:
        registry.stop()
    assert len(answers) == len(racers) and len(set(answers)) == 1


def test_a_stopped_replica_lets_its_groups_go(services: Services, registries: list[ReplicaRegistry]) -> None:
    leaving = ReplicaRegistry(services.db, services.settings)
    leaving.start()
    assert leaving.claim_group("pt:b") == leaving.id
    leaving.stop()
    assert registries[0].claim_group("pt:b") == registries[0].id


def test_the_internal_endpoint_takes_only_the_replica_credential(fast_tmp: Path) -> None:
    settings = Settings(data_dir=fast_tmp / "data", replica_secret="s" * 32)
    client = TestClient(create_app(settings), base_url="http://127.0.0.1:8080")
    body = {"model_id": "no-such-model", "api": "bedrock", "request": {"max_tokens": 1, "prompt": "hi"}}
    assert client.post(FORWARD_PATH, json=body).status_code == 403
    assert client.post(FORWARD_PATH, json=body, headers={SECRET_HEADER: "s" * 31 + "t"}).status_code == 403
    answered = client.post(FORWARD_PATH, json=body, headers={SECRET_HEADER: "s" * 32})
    assert answered.status_code == 200
    event = json.loads(answered.text.splitlines()[0])
    assert event["event"] == "forwarded_error" and event["code"] == "ValidationException"


def test_forwarded_errors_come_back_as_their_own_exceptions() -> None:
    assert type(error_named("ModelNotReadyException", "retry")) is ModelNotReadyException
    assert type(error_named("ValidationException", "bad")) is ValidationException
    assert error_named("NoSuchThing", "x").code == "InternalServerException"


def test_a_replica_reachable_off_loopback_needs_the_secret(fast_tmp: Path) -> None:
    remote = Settings(data_dir=fast_tmp, replica_url="https://replica-1.internal:8443")
    with pytest.raises(ValueError, match="TUNEFORGE_REPLICA_SECRET"):
        remote.check_replica_secret()
    Settings(
        data_dir=fast_tmp, replica_url="https://replica-1.internal:8443", replica_secret="x" * 16
    ).check_replica_secret()
    Settings(data_dir=fast_tmp).check_replica_secret()


def test_start_up_recovery_fails_only_the_imports_of_replicas_that_are_gone(services: Services) -> None:
    owners = {"live": "replica-live", "gone": "replica-gone"}
    jobs = {}
    for name, owner in owners.items():
        jobs[name] = services.imports.create(import_request(hf_folder(services.settings.data_dir / name), name=name))
        services.imports.wait_idle(timeout=60)
        with services.db.session() as session:
            row = session.get(ModelImportJob, jobs[name].id)
            assert row is not None
            row.status, row.imported_model_arn, row.owner_replica = "InProgress", None, owner
    services.imports.recover({owners["live"]})
    assert services.imports.get_job(jobs["live"].arn).status == "InProgress"
    assert services.imports.get_job(jobs["gone"].arn).status == "Failed"


def test_only_the_holder_of_a_throughput_runs_it_and_deletes_it_when_idle(
    services: Services, registries: list[ReplicaRegistry]
) -> None:
    managers = [
        EngineManager(services.settings, services.throughput, services.meter, services.invocation_logs, registry)
        for registry in registries
    ]
    row = services.throughput.create(CreateThroughputRequest(name="idle", model_id=STUDENT, model_units=1))
    services.throughput.mark_in_service(row.id)
    with services.db.session() as session:
        session.execute(
            update(ProvisionedModel)
            .where(ProvisionedModel.id == row.id)
            .values(idle_timeout_s=60.0, in_service_at=utcnow() - timedelta(hours=1))
        )
    live = services.throughput.live()
    held = [manager._held(live) for manager in managers]
    assert [[r.id for r in rows] for rows in held] == [[row.id], []]
    managers[1].reap_idle(held[1])
    assert services.throughput.get(row.arn).status == "InService"
    managers[0].reap_idle(held[0])
    with services.db.session() as session:
        deleted = session.get(ProvisionedModel, row.id)
        assert deleted is not None and deleted.status == "Deleted"


def test_a_replica_taken_for_dead_lets_go_of_the_job_the_other_took_over(
    services: Services, registries: list[ReplicaRegistry], processes: list[subprocess.Popen[bytes]]
) -> None:
    stalled, other = registries
    job_id = running_job(services, 0)
    worker = sleeper(processes, "tuneforge.jobs.worker", job_id)
    with services.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(worker_pid=worker.pid, owner_replica=stalled.id))
    supervisor = Supervisor(services, stalled)
    supervisor.recover()
    assert supervisor.running_job_ids == [job_id]
    with services.db.session() as session:  # what the other replica's takeover wrote while this one stalled
        session.execute(update(Job).where(Job.id == job_id).values(owner_replica=other.id))
    supervisor._reap()
    assert supervisor.running_job_ids == []
    assert worker.poll() is None and services.jobs.get(job_id).status == "InProgress"
