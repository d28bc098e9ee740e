"""Bedrock's Custom Model Import: import jobs and the imported models they register. No torch here.

``CreateModelImportJob`` checks the source at once (:mod:`tuneforge.catalog.imports`: architecture,
tokenizer, dtype, weight files, size against memory) and refuses what it can see is wrong with a
ValidationException. An accepted job then copies the folder into the data directory (so the model
outlives its source) or, for a GGUF file, converts it once into a safetensors folder in a separate
process (``python -m tuneforge.model.importing``: the conversion needs torch, which this process
never imports). A job that fails there ends ``Failed`` with the reason and registers nothing; one
that succeeds registers the imported model and becomes ``Completed`` in one transaction.

Imported models live in the catalog's ``registered_models`` table (model id ``imported.<id>``), so
they are bases for customization jobs and on-demand models for the runtime without a second path.

Jobs run on background threads of the server, one at a time (a GGUF conversion holds the whole
model in memory). A server that stops mid-import leaves no half-imported model: at the next start
:meth:`ImportService.recover` fails the jobs it finds ``InProgress`` and removes their staging folders.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id
from tuneforge.catalog.imports import (
    ImportCheckError,
    ImportFacts,
    check_confined,
    inspect_folder,
    inspect_source,
    resolve_source,
)
from tuneforge.catalog.models import DISTILLATION
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import (
    LIVE_PROVISIONED_STATUSES,
    CustomModel,
    Job,
    ModelImportJob,
    ProvisionedModel,
    RegisteredModel,
    utcnow,
)
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.idempotency import IdempotentRequest
from tuneforge.settings import Settings, child_environment
from tuneforge.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

SOURCE_MEMBER = "modelDataSource.s3DataSource.s3Uri"
IMPORTED_PROVIDER = "imported"
INTERRUPTED = "The server stopped before the import finished; nothing was registered. Create the import job again."


@dataclass(frozen=True)
class CreateImportJobRequest(IdempotentRequest):
    job_name: str
    imported_model_name: str
    role_arn: str
    source_uri: str
    job_tags: tuple[dict[str, str], ...] = ()
    imported_model_tags: tuple[dict[str, str], ...] = ()
    client_request_token: str | None = None
    vpc_config: dict[str, Any] | None = None
    kms_key: str | None = None


@dataclass(frozen=True)
class ImportJobFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    status_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


@dataclass(frozen=True)
class ImportedModelFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    name_contains: str | None = None
    sort_descending: bool = True


class ImportService:
    def __init__(self, db: Database, store: ObjectStore, arns: ArnFactory, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.arns = arns
        self.settings = settings
        self.imports_dir = settings.models_dir.resolve() / "imported"
        self._one_at_a_time = threading.Lock()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.replica_id: str | None = None
        """The API replica this service runs in (set by the app when it registers one): its imports'
        owner, so another replica's start-up recovery leaves them alone."""

    # -- create ---------------------------------------------------------------------------------

    def create(self, request: CreateImportJobRequest) -> ModelImportJob:
        fingerprint = request.fingerprint()
        if request.client_request_token:
            with self.db.session() as session:
                existing = session.scalar(
                    select(ModelImportJob).where(ModelImportJob.client_request_token == request.client_request_token)
                )
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ConflictException(
                        f"The clientRequestToken {request.client_request_token} was already used "
                        "for a different CreateModelImportJob request"
                    )
                return existing
        facts = self._check_source(request.source_uri)
        job_id, model_id = new_id(), new_id()
        now = utcnow()
        job = ModelImportJob(
            id=job_id,
            owner_replica=self.replica_id,
            arn=self.arns.model_import_job(job_id),
            name=request.job_name,
            imported_model_name=request.imported_model_name,
            imported_model_id=model_id,
            role_arn=request.role_arn,
            source_uri=request.source_uri,
            source_kind=facts.kind,
            facts=facts.as_dict(),
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            vpc_config=request.vpc_config,
            kms_key=request.kms_key,
            job_tags=list(request.job_tags),
            imported_model_tags=list(request.imported_model_tags),
            status="InProgress",
            created_at=now,
            updated_at=now,
        )
        try:
            self._insert(job, request)
        except IntegrityError:
            # Two creates with one name (or token) racing past the checks: the unique index decides.
            raise ConflictException(
                f"A model import job named {request.job_name} (or with this clientRequestToken) already exists"
            ) from None
        self._start(job.id)
        return job

    def _insert(self, job: ModelImportJob, request: CreateImportJobRequest) -> None:
        with self.db.session() as session:
            if session.scalar(select(ModelImportJob.id).where(ModelImportJob.name == request.job_name)):
                raise ConflictException(f"A model import job named {request.job_name} already exists")
            taken = session.scalar(
                select(RegisteredModel.model_id).where(RegisteredModel.name == request.imported_model_name)
            ) or session.scalar(
                select(ModelImportJob.id).where(
                    ModelImportJob.imported_model_name == request.imported_model_name,
                    ModelImportJob.status == "InProgress",
                )
            )
            if taken:
                raise ConflictException(
                    f"An imported model named {request.imported_model_name} already exists or is being imported"
                )
            session.add(job)

    def _check_source(self, uri: str) -> ImportFacts:
        try:
            self.store.check(uri.rstrip("/") or uri)
        except StorageError as exc:
            raise ValidationException(f"Invalid {SOURCE_MEMBER} {uri}: {exc}") from None
        try:
            path = self.store.cached(uri)
        except StorageError as exc:
            raise ValidationException(f"Invalid {SOURCE_MEMBER} {uri}: {exc}") from None
        try:
            return inspect_source(path, self.settings.import_memory_limit_bytes)
        except ImportCheckError as exc:
            raise ValidationException(f"The model at {uri} cannot be imported: {exc}") from None

    # -- running --------------------------------------------------------------------------------

    def _start(self, job_id: str) -> None:
        thread = threading.Thread(target=self._run, args=(job_id,), name=f"import-{job_id}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _run(self, job_id: str) -> None:
        with self._one_at_a_time:
            if self._stopping.is_set():
                return
            with self.db.session() as session:
                job = session.get(ModelImportJob, job_id)
                assert job is not None
            self.imports_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{job.imported_model_id}.", dir=self.imports_dir))
            target = self.imports_dir / job.imported_model_id
            try:
                source = resolve_source(self.store.cached(job.source_uri))
                if job.source_kind == "gguf":
                    self._convert(job, source, staging / "model")
                else:
                    # Checked again (the source may have changed since create), and links are copied as
                    # links, never followed: the copy's own check below refuses any that appeared since.
                    check_confined(source)
                    shutil.copytree(source, staging / "model", symlinks=True, ignore=shutil.ignore_patterns(".*"))
                # The copy (or the conversion) is checked again: a source changed since create, or a
                # conversion that wrote something unexpected, fails here and not in a worker later.
                facts = inspect_folder(staging / "model")
                (staging / "model").rename(target)
                self._complete(job, target, facts)
            except Exception as exc:  # any failure ends the job Failed, with its reason
                if self._stopping.is_set():
                    # Stopped between the rename and the commit: nothing is registered, so the folder goes.
                    shutil.rmtree(target, ignore_errors=True)
                    return
                message = str(exc) if isinstance(exc, ImportCheckError | _ConversionFailed) else repr(exc)
                self._fail(job.id, f"The model at {job.source_uri} could not be imported: {message}")
                shutil.rmtree(target, ignore_errors=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _convert(self, job: ModelImportJob, gguf_path: Path, dest: Path) -> None:
        """Convert in a child process; its last line of output is the reason when it fails."""
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.logs_dir / f"import-{job.id}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.model.importing", str(gguf_path), str(dest)],
                env=child_environment(self.settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with self._lock:
                self._processes[job.id] = process
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._processes.pop(job.id, None)
        if code != 0:
            lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            reason = lines[-1].removeprefix("error: ") if lines else ""
            if code < 0:
                reason = f"the conversion process was killed by signal {-code} (out of memory?) {reason}".strip()
            raise _ConversionFailed(f"GGUF conversion failed: {reason or f'exit status {code}'}")

    def _complete(self, job: ModelImportJob, weights: Path, facts: ImportFacts) -> None:
        model_arn = self.arns.imported_model(job.imported_model_id)
        now = utcnow()
        with self.db.session() as session:
            row = session.get(ModelImportJob, job.id)
            assert row is not None
            if session.scalar(select(RegisteredModel.model_id).where(RegisteredModel.name == job.imported_model_name)):
                raise ImportCheckError(f"an imported model named {job.imported_model_name} exists already")
            session.add(
                RegisteredModel(
                    model_id=f"imported.{job.imported_model_id}",
                    provider=IMPORTED_PROVIDER,
                    source=job.source_uri,
                    family=facts.architecture,
                    context_length=facts.context_length,
                    parameter_count=int(job.facts.get("parameter_count") or facts.parameter_count),
                    created_at=now,
                    arn=model_arn,
                    name=job.imported_model_name,
                    weights_path=str(weights),
                    job_arn=job.arn,
                    job_name=job.name,
                    instruct_supported=facts.instruct_supported,
                    tags=list(job.imported_model_tags),
                    kms_key=job.kms_key,
                )
            )
            row.status = "Completed"
            row.imported_model_arn = model_arn
            row.updated_at = row.ended_at = now

    def _fail(self, job_id: str, message: str) -> None:
        now = utcnow()
        with self.db.session() as session:
            row = session.get(ModelImportJob, job_id)
            if row is not None and row.status == "InProgress":
                row.status = "Failed"
                row.failure_message = message[:2048]
                row.updated_at = row.ended_at = now

    def recover(self, live_replicas: set[str] | None = None) -> None:
        """Fail the imports a stopped server left ``InProgress`` and remove their staging folders and any
        ``imported/<id>`` folder they had renamed into place but not registered.

        Imports run in the API process that accepted them. ``live_replicas`` (with several API
        replicas on one database) are the replicas alive besides this one: their imports are still
        running and are left alone, and so are the staging folders while any other replica lives
        (they may share this models folder). None: this is the only server, every ``InProgress``
        import is a stopped server's.
        """
        with self.db.session() as session:
            stale = session.execute(
                select(ModelImportJob.id, ModelImportJob.imported_model_id, ModelImportJob.owner_replica).where(
                    ModelImportJob.status == "InProgress"
                )
            ).all()
        others = live_replicas or set()
        for job_id, model_id, owner in stale:
            if owner in others:
                continue
            self._fail(job_id, INTERRUPTED)
            shutil.rmtree(self.imports_dir / model_id, ignore_errors=True)
        if not others and self.imports_dir.is_dir():
            for leftover in self.imports_dir.glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop conversions in flight; their jobs are failed by :meth:`recover` at the next start."""
        self._stopping.set()
        with self._lock:
            processes = list(self._processes.values())
            threads = list(self._threads)
        for process in processes:
            process.kill()
        for thread in threads:
            thread.join(timeout=10)

    def wait_idle(self, timeout: float) -> None:
        """Wait for the imports started so far to end (tests and the CLI's in-process use)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=timeout)

    # -- jobs -----------------------------------------------------------------------------------

    def get_job(self, identifier: str) -> ModelImportJob:
        identifier = decode_identifier(identifier)
        column = ModelImportJob.arn if is_arn(identifier) else ModelImportJob.name
        with self.db.session() as session:
            job = session.scalar(select(ModelImportJob).where(column == identifier))
        if job is None:
            raise ResourceNotFoundException(f"The model import job {identifier} does not exist.")
        return job

    def list_jobs(self, filters: ImportJobFilter, after: Cursor | None, limit: int) -> Page[ModelImportJob]:
        query = created_and_named(
            select(ModelImportJob),
            ModelImportJob,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(ModelImportJob.status == filters.status_equals)
        return fetch_page(self.db, query, ModelImportJob, descending=filters.sort_descending, after=after, limit=limit)

    # -- imported models ------------------------------------------------------------------------

    def get_model(self, identifier: str) -> RegisteredModel:
        with self.db.session() as session:
            return self._find_model(session, identifier)

    @staticmethod
    def _find_model(session: Session, identifier: str) -> RegisteredModel:
        identifier = decode_identifier(identifier)
        column = RegisteredModel.arn if is_arn(identifier) else RegisteredModel.name
        model = session.scalar(select(RegisteredModel).where(column == identifier, RegisteredModel.arn.is_not(None)))
        if model is None:
            raise ResourceNotFoundException(f"The imported model {identifier} does not exist.")
        return model

    def list_models(self, filters: ImportedModelFilter, after: Cursor | None, limit: int) -> Page[RegisteredModel]:
        query = created_and_named(
            select(RegisteredModel).where(RegisteredModel.arn.is_not(None)),
            RegisteredModel,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        return fetch_page(self.db, query, RegisteredModel, descending=filters.sort_descending, after=after, limit=limit)

    def delete_model(self, identifier: str) -> None:
        """Remove the imported model and its weights, unless something still depends on it.

        Bedrock's DeleteImportedModel answers ConflictException when the model is in use. Here a
        model is in use while a provisioned throughput serves it or a model customized from it, while
        a customization job not yet finished uses it as base or teacher, and while a custom model
        customized from it exists (an adapter-only custom model needs its base's weights).
        """
        with self.db.session() as session:
            model = self._find_model(session, identifier)
            assert model.arn is not None and model.name is not None
            reason = self._in_use(session, model)
            if reason:
                raise ConflictException(f"The imported model {model.name} is in use: {reason}. Remove that first.")
            weights = Path(model.weights_path) if model.weights_path else None
            session.delete(model)
        if weights is not None and weights.exists() and self.imports_dir in weights.resolve().parents:
            shutil.rmtree(weights, ignore_errors=True)

    @staticmethod
    def _in_use(session: Session, model: RegisteredModel) -> str | None:
        arn = model.arn
        serving = session.scalar(
            select(ProvisionedModel.name).where(
                ProvisionedModel.status.in_(LIVE_PROVISIONED_STATUSES),
                (ProvisionedModel.model_arn == arn)
                | (ProvisionedModel.desired_model_arn == arn)
                | (ProvisionedModel.foundation_model_arn == arn),
            )
        )
        if serving is not None:
            return f"provisioned model throughput {serving} serves it or a model customized from it"
        for job in session.scalars(select(Job).where(Job.status.in_(("InProgress", "Stopping")))):
            config = (job.customization_config or {}).get("distillationConfig") or {}
            teacher = (config.get("teacherModelConfig") or {}).get("teacherModelIdentifier")
            if job.base_model_id == model.model_id or (
                job.customization_type == DISTILLATION
                and isinstance(teacher, str)
                and decode_identifier(teacher) in (arn, model.model_id)
            ):
                return f"model customization job {job.name} has not finished"
        custom = session.scalar(select(CustomModel.name).where(CustomModel.base_model_id == model.model_id))
        if custom is not None:
            return f"custom model {custom} was customized from it (delete the custom model first)"
        return None


class _ConversionFailed(RuntimeError):
    """The conversion process failed; the message is its reason."""
