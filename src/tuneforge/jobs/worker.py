"""One job in its own process: ``python -m tuneforge.jobs.worker JOB_ID``.

A customization job: validation (pre-flight, seconds) -> recipe (training) -> outputs copied to the
output URI -> custom model registered. A batch inference job (:class:`BatchJobRunner`): records
read -> answered -> output records and manifest written. An evaluation job
(:class:`EvaluationJobRunner`): datasets checked -> answered per model -> scored -> results
written. The worker writes every status change
itself; the supervisor only steps in when the process dies without doing so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from tuneforge.arns import new_id
from tuneforge.catalog import tuning
from tuneforge.catalog.hyperparameters import as_strings, resolve
from tuneforge.catalog.models import DISTILLATION, REINFORCEMENT_FINE_TUNING, FoundationModel
from tuneforge.db.session import first_line
from tuneforge.db.tables import CustomModel, EvaluationJob, IngestionJob, Job, JobEvent, ModelInvocationJob, utcnow
from tuneforge.errors import ServiceError
from tuneforge.evaluation.dataset import EvaluationRecord, check_dataset
from tuneforge.evaluation.judge import BUILTIN_JUDGE_METRICS, JudgeMetric, custom_metric, judge_metric_names
from tuneforge.evaluation.metrics import ROBUSTNESS, needs_reference, perturb
from tuneforge.evaluation.scoring import Answer, Judged, Pass, output_line, score
from tuneforge.graders import GraderContext
from tuneforge.graders.judge import http_complete
from tuneforge.jobs.evaluations import DEFAULT_MAX_TOKENS, MAX_DATASET_BYTES
from tuneforge.jobs.evaluations import mark_ended as end_evaluation
from tuneforge.jobs.evaluations import max_tokens as evaluation_max_tokens
from tuneforge.jobs.invocations import has_expired, mark_ended
from tuneforge.jobs.service import mark_stages
from tuneforge.jobs.supervisor import checkpoint_dir, remove_job_files
from tuneforge.recipes.base import (
    Recipe,
    RecipeFailed,
    RecipeInputs,
    RecipeResult,
    Stage,
    StageStatus,
    TeacherInputs,
)
from tuneforge.recipes.memory import steady_allocator
from tuneforge.services import Services
from tuneforge.serving.retrieval import RetrievedChunk, context_hit
from tuneforge.settings import Settings, available_cpus
from tuneforge.storage import EndpointUnreachable, StorageError

if TYPE_CHECKING:
    from tuneforge.knowledge.ingestion import IngestionRunner

log = logging.getLogger("tuneforge.worker")

HEARTBEAT_S = 2.0
PROGRESS_EVERY_S = 0.5
STAGE_KEYS: dict[str, str] = {
    "validation": "validationDetails",
    "dataProcessing": "dataProcessingDetails",
    "training": "trainingDetails",
}


class JobFailed(Exception):
    """A failure whose message is fit for the job's ``failureMessage``."""


class DatabaseReporter:
    """The recipe's :class:`~tuneforge.recipes.base.JobReporter`, backed by the job's rows."""

    def __init__(self, services: Services, job_id: str) -> None:
        self.services = services
        self.job_id = job_id
        self._stop = threading.Event()
        self._last_progress = 0.0
        self._last_poll = 0.0

    def request_stop(self) -> None:
        self._stop.set()

    def stage(self, stage: Stage, status: StageStatus) -> None:
        key = STAGE_KEYS[stage]
        now = utcnow()
        with self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            details = dict(job.status_details or {})
            details[key] = {**details.get(key, {}), "status": status, "lastModifiedTime": now.isoformat()}
            job.status_details = details
            job.updated_at = now
            session.add(JobEvent(job_id=self.job_id, kind="stage", data={"stage": stage, "status": status}))

    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: int,
        loss: float,
        learning_rate: float,
        tokens_per_second: float,
        tokens_seen: int,
        mfu: float,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S and step < total_steps:
            return
        self._last_progress = now
        data = {
            "step": step,
            "totalSteps": total_steps,
            "epoch": epoch,
            "loss": round(loss, 6),
            "learningRate": learning_rate,
            "tokensPerSecond": round(tokens_per_second, 1),
            "tokensSeen": tokens_seen,
            "mfu": round(mfu, 4),
            **(extra or {}),
        }
        with self._best_effort("progress"), self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.progress = data
            job.updated_at = utcnow()
            session.add(JobEvent(job_id=self.job_id, kind="progress", data=data))

    def data_progress(self, *, done: int, total: int, unit: str) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S and 0 < done < total:
            return
        self._last_progress = now
        data = {"stage": "dataProcessing", "done": done, "total": total, "unit": unit}
        with self._best_effort("progress"), self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.progress = data
            job.updated_at = utcnow()
            session.add(JobEvent(job_id=self.job_id, kind="processing", data=data))

    def log(self, message: str) -> None:
        log.info("%s", message)
        with self._best_effort("a log line"), self.services.db.session() as session:
            session.add(JobEvent(job_id=self.job_id, kind="log", data={"message": message}))

    @contextmanager
    def _best_effort(self, what: str) -> Iterator[None]:
        """Progress, log lines and stop polls while the database is away (PostgreSQL restarting):
        skipped with a warning, so training goes on; the next write after it returns lands. Stage
        changes and the final status are not skipped: a worker that cannot write them ends, and the
        supervisor resumes the job from its checkpoint when the database is back."""
        try:
            yield
        except OperationalError as exc:
            log.warning(
                "job %s: %s was not recorded, the database is unavailable (%s)", self.job_id, what, first_line(exc)
            )

    def should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll >= 0.5:
            self._last_poll = now
            with self._best_effort("a stop poll"), self.services.db.session() as session:
                job = session.get(Job, self.job_id)
                if job is None or job.stop_requested or job.pause_requested:
                    self._stop.set()
        return self._stop.is_set()


def _heartbeat(
    services: Services,
    table: type[Job] | type[ModelInvocationJob] | type[EvaluationJob] | type[IngestionJob],
    job_id: str,
    done: threading.Event,
) -> None:
    while not done.wait(HEARTBEAT_S):
        try:
            with services.db.session() as session:
                session.execute(update(table).where(table.id == job_id).values(heartbeat_at=utcnow()))
        except OperationalError as exc:  # the database is away; the next beat after it returns lands
            log.warning("heartbeat not recorded, the database is unavailable (%s)", first_line(exc))
        except Exception:
            log.exception("heartbeat failed")


class JobRunner:
    def __init__(self, services: Services, job_id: str) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.job_id = job_id
        self.reporter = DatabaseReporter(services, job_id)
        self.work_dir = self.settings.data_dir / "jobs" / job_id
        self.tuned_hyperparameters: dict[str, str] | None = None
        """The values automatic tuning chose, for the custom model's record."""

    def request_stop(self) -> None:
        self.reporter.request_stop()

    def run(self) -> None:
        with self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.status != "InProgress":
                return
            job.worker_pid = os.getpid()
            job.worker_host = socket.gethostname()
            job.heartbeat_at = utcnow()
            resumed = job.attempts > 1
            snapshot = {c.key: getattr(job, c.key) for c in Job.__table__.columns}
        if resumed:
            self.reporter.log(f"resuming job (attempt {snapshot['attempts']})")
        try:
            result, model_dir, base = self._execute(snapshot)
        except (JobFailed, RecipeFailed) as exc:
            self._finish("Failed", failure=str(exc)[:2048])
            return
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            self._finish(
                "Failed",
                failure=f"Encountered an unexpected error when processing the request, please try again "
                f"({type(exc).__name__}: {exc})"[:2048],
            )
            return
        if result.stopped:
            if self._pause():
                return
            self.reporter.stage("training", "Stopped")
            self._finish("Stopped")
            return
        self._register(snapshot, result, model_dir, base)

    def _pause(self) -> bool:
        """End the worker keeping the checkpoint when the job was paused (and not stopped since).

        The job leaves the queue (phase ``paused``) and stays InProgress; resuming puts it back in
        the queue and the next worker continues from the checkpoint the training loop wrote on its
        way out. The claim this worker took does not count as an attempt.
        """
        with self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.stop_requested or not job.pause_requested:
                return False
            now = utcnow()
            job.phase, job.pause_requested, job.worker_pid, job.updated_at = "paused", False, None, now
            job.attempts = max(job.attempts - 1, 0)
            session.add(JobEvent(job_id=self.job_id, kind="status", data={"status": "InProgress", "message": "paused"}))
        return True

    def _execute(self, job: dict[str, Any]) -> tuple[RecipeResult, Path, FoundationModel]:
        from tuneforge.model.folders import base_model_dir
        from tuneforge.recipes import get_recipe

        base = self.services.catalog.get(job["base_model_id"])
        # validation
        self.reporter.stage("validation", "InProgress")
        base_dir = base_model_dir(self.services, base)
        logs_config = job["training_data"].get("invocationLogsConfig")
        if logs_config:
            training_uri = logs_config["invocationLogSource"]["s3Uri"]
            training_file = self._training_file_from_logs(logs_config)
        else:
            training_uri = job["training_data"]["s3Uri"]
            training_file = self._input_path(training_uri, "training")
        validation_uris = [v["s3Uri"] for v in job["validation_data"].get("validators", [])]
        validation_files = tuple(self._input_path(uri, f"validation-{i}") for i, uri in enumerate(validation_uris))
        output_uri = job["output_data"]["s3Uri"].rstrip("/")
        probe = f"{output_uri}/.write_access_check_file.tmp"
        try:
            self.services.store.write_bytes(probe, b"")
        except EndpointUnreachable as exc:
            raise JobFailed(f"Could not write to {output_uri}: {exc}") from None
        except (StorageError, OSError):
            bucket = output_uri.removeprefix("s3://").split("/", 1)[0]
            raise JobFailed(
                "Amazon S3 perms missing (PutObject): Could not validate PutObject permissions to access "
                f"S3 bucket: {bucket} at key output/.write_access_check_file.tmp"
            ) from None
        specs = base.hyperparameter_specs(job["customization_type"])
        plain, search = tuning.split(specs, job["hyperparameters"])
        hyper = resolve(specs, plain)
        teacher = self._teacher(job, base)
        self._preflight(
            base,
            base_dir,
            job,
            [(training_uri, training_file, False)]
            + [(uri, path, True) for uri, path in zip(validation_uris, validation_files, strict=True)],
            max_sequence_length=int(hyper.get("maxSequenceLength", hyper.get("maxPromptLength", 0))),
        )
        self.reporter.stage("validation", "Completed")
        output_dir = self.work_dir / "output"
        model_dir = self.settings.models_dir / "custom" / self.job_id
        inputs = RecipeInputs(
            job_id=self.job_id,
            customization_type=job["customization_type"],
            base_model=base,
            base_model_dir=base_dir,
            training_file=training_file,
            validation_files=validation_files,
            output_dir=output_dir,
            model_dir=model_dir,
            checkpoint_dir=checkpoint_dir(self.services, self.job_id),
            hyperparameters=hyper,
            num_threads=self._threads(),
            teacher=teacher,
            grader_config=(job["customization_config"] or {}).get("rftConfig", {}).get("graderConfig")
            if job["customization_type"] == REINFORCEMENT_FINE_TUNING
            else None,
            grader_context=self._grader_context() if job["customization_type"] == REINFORCEMENT_FINE_TUNING else None,
            price_per_compute_hour=self.settings.price_per_compute_hour,
        )
        # The recipe reports the dataProcessing and training stages itself: what they contain
        # depends on the customization type (distillation's data processing is the teacher's work).
        recipe = get_recipe(job["customization_type"])
        try:
            if search is not None:
                tuned = self._tune(recipe, inputs, search)
                if tuned is None:
                    return RecipeResult(training_loss=None, stopped=True), model_dir, base
                inputs = tuned
            processes = int(inputs.hyperparameters.get("dataParallelProcesses", 1))
            # Reinforcement fine-tuning samples and trains in one process (its specs have no
            # dataParallelProcesses), whatever the server's node count says.
            parallel = processes > 1 or self.settings.data_parallel_nodes > 1
            if parallel and job["customization_type"] != REINFORCEMENT_FINE_TUNING:
                from tuneforge.jobs.ranks import run_data_parallel

                result = run_data_parallel(self.settings, inputs, processes, self.reporter)
            else:
                result = recipe.run(inputs, self.reporter)
        except RecipeFailed:
            if output_dir.is_dir():  # what the recipe wrote (distillation's prompt insights) explains why
                self._upload_outputs(output_dir, output_uri)
            raise
        except OSError as exc:
            raise JobFailed(
                f"The job could not write a file ({exc}); free disk space or fix the permissions of the data "
                "directory, then create the job again"
            ) from None
        if not result.stopped and output_dir.is_dir():
            self._upload_outputs(output_dir, output_uri)
        return result, model_dir, base

    def _tune(self, recipe: Recipe, inputs: RecipeInputs, search: tuning.TuningRequest) -> RecipeInputs | None:
        """Run the trials (:mod:`tuneforge.recipes.tuning`); the inputs of the final run with the best
        configuration, or None when the job was stopped during the search."""
        from tuneforge.jobs.layout import TUNING_TRIALS, job_folder
        from tuneforge.recipes.tuning import TrialRecord, search_trials, write_trials_csv

        self.reporter.stage("training", "InProgress")
        searched = {space.name: space.describe() for space in search.spaces}

        def record(trials: list[TrialRecord], best: int | None = None) -> None:
            data: dict[str, Any] = {
                "searchedHyperParameters": searched,
                "trialsRequested": search.trials,
                "timeBudgetMinutes": search.time_budget_minutes,
                "trials": [trial.as_dict() for trial in trials],
            }
            if best is not None:
                data["bestTrialNumber"] = best
            with self.services.db.session() as session:
                job = session.get(Job, self.job_id)
                assert job is not None
                job.tuning = data
                job.updated_at = utcnow()
                if trials and best is None:  # one event a trial, as it ends
                    session.add(JobEvent(job_id=self.job_id, kind="trial", data=trials[-1].as_dict()))

        record([])
        outcome = search_trials(recipe, inputs, search, self.reporter, self.work_dir / "tuning", record)
        shutil.rmtree(self.work_dir / "tuning", ignore_errors=True)
        write_trials_csv(inputs.output_dir / job_folder(self.job_id) / TUNING_TRIALS, outcome.trials)
        if outcome.stopped:
            return None
        if outcome.best is None:
            raise RecipeFailed(
                f"Automatic tuning: none of the {len(outcome.trials)} trials completed "
                f"({', '.join(sorted({t.message or t.state for t in outcome.trials})) or 'no time for one'}); "
                "widen the search, raise tuningTimeBudgetMinutes or tuningTrials, or check the job log"
            )
        record(outcome.trials, outcome.best.number)
        chosen = {**inputs.hyperparameters, **outcome.best.params}
        self.tuned_hyperparameters = as_strings(chosen)
        self.reporter.log(
            f"tuning: best trial {outcome.best.number} (validation loss {outcome.best.validation_loss:.4f}): "
            + ", ".join(f"{name}={outcome.best.params[name]}" for name in searched)
            + "; training it to completion"
        )
        return replace(inputs, hyperparameters=chosen)

    def _upload_outputs(self, output_dir: Path, output_uri: str) -> None:
        try:
            self.services.store.upload_tree(output_dir, output_uri)
        except (StorageError, OSError) as exc:
            # strerror, not str(exc): the latter names a path inside the server's object root.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise JobFailed(
                f"Could not write the job's outputs to {output_uri} ({reason}); make the output location "
                "writable, then create the job again"
            ) from None

    def _teacher(self, job: dict[str, Any], student: FoundationModel) -> TeacherInputs | None:
        """A DISTILLATION job's teacher, checked again: it may have been deleted since the job was created."""
        if job["customization_type"] != DISTILLATION:
            return None
        from tuneforge.model.folders import base_model_dir

        try:
            teacher = self.services.jobs.distillation_teacher(job["customization_config"], student)
        except ServiceError as exc:
            raise JobFailed(exc.message) from None
        return TeacherInputs(
            arn=teacher.arn,
            model_dir=Path(teacher.weights_path)
            if teacher.weights_path
            else base_model_dir(self.services, teacher.foundation),
            models_dir=self.settings.models_dir,
            max_response_tokens=teacher.max_response_tokens,
        )

    def _training_file_from_logs(self, config: dict[str, Any]) -> Path:
        """Distillation from logged traffic: select and convert invocation logs into a local JSONL."""
        from tuneforge.data.from_logs import training_records
        from tuneforge.data.tasks import write_jsonl
        from tuneforge.serving.invocation_logs import read_records

        uri = config["invocationLogSource"]["s3Uri"]
        try:
            records = training_records(
                read_records(self.services.store, uri), config, limit=self.settings.max_training_records
            )
        except (StorageError, OSError, ValueError) as exc:
            raise JobFailed(f"Could not read invocation logs at {uri}: {exc}") from None
        if not records:
            raise JobFailed(
                f"No usable invocation logs at {uri}: no logged call with user text matched the requestMetadataFilters"
            )
        self.reporter.log(f"selected {len(records)} logged invocations from {uri}")
        return write_jsonl(self.work_dir / "invocation-logs.jsonl", records)

    def _input_path(self, uri: str, slot: str) -> Path:
        """Stage one input file from the store into the job's own folder (``inputs/<slot>/<name>``,
        keeping its name for messages); recipes read that copy, never the store's bytes."""
        path = self.work_dir / "inputs" / slot / (uri.rstrip("/").rsplit("/", 1)[-1] or "data")
        try:
            found = self.services.store.exists(uri)
            if found:
                self.services.store.download_file(uri, path)
        except StorageError as exc:
            raise JobFailed(str(exc)) from None
        if not found:
            if uri.startswith("s3://"):
                bucket, _, key = uri.removeprefix("s3://").partition("/")
                raise JobFailed(
                    f"Could not validate GetObject permissions to access Amazon S3 bucket: {bucket} at key {key}"
                )
            raise JobFailed(f"Could not read {uri}: no such file")
        return path

    def _preflight(
        self,
        base: FoundationModel,
        base_dir: Path,
        job: dict[str, Any],
        files: list[tuple[str, Path, bool]],
        max_sequence_length: int,
    ) -> None:
        from tuneforge.data.preflight import validate_dataset
        from tuneforge.model.loading import token_counter

        count_tokens = token_counter(base_dir)
        for uri, path, is_validation in files:
            report = validate_dataset(
                self.settings,
                base,
                path,
                job["customization_type"],
                count_tokens,
                is_validation=is_validation,
                max_sequence_length=max_sequence_length,
            )
            if not report.ok:
                raise JobFailed(report.failure_message(uri))
            self.reporter.log(
                f"validated {uri}: {report.records} records, {report.total_tokens} tokens "
                f"(longest record {report.max_record_tokens}; {report.format})"
            )

    def _threads(self) -> int:
        return worker_threads(self.settings)

    def _grader_context(self) -> GraderContext:
        """A reinforcement job's graders: the sandbox limits and registry of the settings, and judge models
        called through this server's own ``/v1`` (with its first API key, where keys are required)."""
        api_key = self.settings.api_keys[0] if self.settings.api_keys else None
        complete = http_complete(self.settings.advertised_url + "/v1", api_key)
        return GraderContext.from_settings(self.settings, complete, self.services.store)

    def _register(self, job: dict[str, Any], result: RecipeResult, model_dir: Path, base: FoundationModel) -> None:
        model_id = new_id()
        arn = self.services.arns.custom_model(base.model_id, model_id)
        now = utcnow()
        with self.services.db.session() as session:
            row = session.get(Job, self.job_id)
            assert row is not None
            session.add(
                CustomModel(
                    id=model_id,
                    arn=arn,
                    name=job["custom_model_name"],
                    job_id=self.job_id,
                    job_arn=job["arn"],
                    job_name=job["name"],
                    base_model_id=base.model_id,
                    base_model_arn=job["base_model_arn"],
                    customization_type=job["customization_type"],
                    hyperparameters=self.tuned_hyperparameters or job["hyperparameters"],
                    training_data=job["training_data"],
                    validation_data=job["validation_data"],
                    output_data=job["output_data"],
                    customization_config=job["customization_config"],
                    training_loss=result.training_loss,
                    validation_losses=list(result.validation_losses),
                    status="Active",
                    weights_path=str(model_dir),
                    tags=job["custom_model_tags"],
                    kms_key=job["kms_key"],
                    created_at=now,
                )
            )
            row.output_model_arn = arn
            row.training_loss = result.training_loss
            row.validation_losses = list(result.validation_losses)
            row.status, row.phase, row.ended_at, row.updated_at = "Completed", "done", now, now
            session.add(JobEvent(job_id=self.job_id, kind="status", data={"status": "Completed", "modelArn": arn}))
        shutil.rmtree(checkpoint_dir(self.services, self.job_id), ignore_errors=True)

    def _finish(self, status: str, failure: str | None = None) -> None:
        """End the job Failed or Stopped; neither is resumed, so its scratch files and weights go.

        They go first, so that whoever sees the final status sees them gone too.
        """
        remove_job_files(self.services, self.job_id)
        now = utcnow()
        with self.services.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.status, job.phase, job.ended_at, job.updated_at = status, "done", now, now
            job.failure_message = failure
            mark_stages(job, status, only_unfinished=True)
            session.add(JobEvent(job_id=self.job_id, kind="status", data={"status": status, "message": failure}))


EXPIRED_BEFORE_START = "The job's timeoutDurationInHours ran out before any record was answered"


class BatchJobRunner:
    """A batch inference job (:mod:`tuneforge.recipes.batch_inference`), with its status in its row."""

    def __init__(self, services: Services, job_id: str, clock: Callable[[], datetime] = utcnow) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.job_id = job_id
        self.clock = clock
        """What :meth:`should_stop` compares the job's expiration time with (tests pass a later one)."""
        self._stop = threading.Event()
        self._expired = False
        self._last_poll = 0.0
        self._last_progress = 0.0

    def request_stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        """A stop request, or the job's ``timeoutDurationInHours`` running out, ends the decoding."""
        now = time.monotonic()
        if not self._stop.is_set() and now - self._last_poll >= 0.5:
            self._last_poll = now
            with self.services.db.session() as session:
                job = session.get(ModelInvocationJob, self.job_id)
                if job is None or job.stop_requested:
                    self._stop.set()
                elif has_expired(job, self.clock):
                    self._expired = True
                    self._stop.set()
        return self._stop.is_set()

    def run(self) -> None:
        with self.services.db.session() as session:
            job = session.get(ModelInvocationJob, self.job_id)
            if job is None or job.status not in ("InProgress", "Stopping"):
                return
            if job.status == "Stopping":  # stopped between the claim and this worker's start
                mark_ended(job, "Stopped", "Stopped before any record was answered")
                return
            if has_expired(job, self.clock):  # its timeoutDurationInHours ran out while it was queued
                mark_ended(job, "Expired", EXPIRED_BEFORE_START)
                return
            job.worker_pid = os.getpid()
            job.worker_host = socket.gethostname()
            job.heartbeat_at = utcnow()
            snapshot = {c.key: getattr(job, c.key) for c in ModelInvocationJob.__table__.columns}
        log.info("batch job %s: started", self.job_id)
        try:
            status, message = self._execute(snapshot)
        except JobFailed as exc:
            status, message = "Failed", str(exc)[:2048]
        except Exception as exc:
            log.exception("batch job %s failed", self.job_id)
            status = "Failed"
            message = (
                "Encountered an unexpected error when processing the request, please try again "
                f"({type(exc).__name__}: {exc})"[:2048]
            )
        remove_job_files(self.services, self.job_id)
        with self.services.db.session() as session:
            row = session.get(ModelInvocationJob, self.job_id)
            assert row is not None
            mark_ended(row, status, message)

    def _execute(self, job: dict[str, Any]) -> tuple[str, str | None]:
        import torch

        from tuneforge.engine.offline import offline_batcher
        from tuneforge.engine.server import model_folder
        from tuneforge.jobs.memory import ModelShape, detect_budget, inference_rows
        from tuneforge.model.folders import load_for_inference, trained_format
        from tuneforge.recipes.batch_inference import (
            MANIFEST,
            BatchRun,
            Counts,
            output_lines,
            output_name,
            read_records,
        )

        input_uri = job["input_data"]["s3InputDataConfig"]["s3Uri"].rstrip("/")
        output_root = f"{job['output_data']['s3OutputDataConfig']['s3Uri'].rstrip('/')}/{self.job_id}"
        try:
            served = self.services.invocation_jobs.resolve_model(job["model_arn"])
        except ServiceError as exc:
            raise JobFailed(exc.message) from None
        files = self._input_files(input_uri)
        records = read_records(files, job["invocation_type"], served.foundation.limits.max_output_tokens)
        flat = [record for file_records in records for record in file_records]
        if not flat:
            raise JobFailed(f"The input at {input_uri} holds no records: write one JSON object per line")
        self._write(f"{output_root}/.write_access_check_file.tmp", b"")

        torch.set_num_threads(self._threads())
        started = time.monotonic()
        folder = model_folder(served.source, self.settings)
        model, tokenizer = load_for_inference(folder, self.settings.models_dir)
        batcher = offline_batcher(model, tokenizer, self.settings.batch_max_rows, trained_format(folder))
        run = BatchRun(batcher, job["invocation_type"], Counts(total=len(flat)))
        ready = run.render(flat)
        run.counts.error = sum(record.result is not None for record in flat)
        longest = max((len(request.prompt_ids) + request.request.max_tokens for _, request in ready), default=1)
        shape = ModelShape.from_config(model.config.to_dict())
        budget = detect_budget(self.settings.training_memory_bytes, self.settings.worker_concurrency)
        batcher.max_batch, why = inference_rows(shape, longest, budget, self.settings.batch_max_rows)
        log.info(
            "batch job %s: %d records, model loaded in %.1f s, %s",
            self.job_id,
            len(flat),
            time.monotonic() - started,
            why,
        )
        self._progress(run.counts, force=True)
        started = time.monotonic()
        finished = run.answer(ready, self.should_stop, self._progress)
        seconds = time.monotonic() - started
        self._progress(run.counts, force=True)
        log.info(
            "batch job %s: answered %d records in %.1f s, %.0f output tokens/s",
            self.job_id,
            run.counts.success,
            seconds,
            run.counts.output_tokens / max(seconds, 1e-9),
        )

        for (name, _), file_records in zip(files, records, strict=True):
            self._write(f"{output_root}/{output_name(name)}", output_lines(file_records))
        self._write(f"{output_root}/{MANIFEST}", json.dumps(run.counts.manifest(), indent=2).encode())
        self.services.store.delete_prefix(f"{output_root}/.write_access_check_file.tmp")
        counts = run.counts
        if not finished and self._expired:
            return "Expired", (
                f"The job's timeoutDurationInHours ({job['timeout_hours']}) ran out after {counts.processed} of "
                f"{counts.total} records; the answered ones are written and counted in the manifest"
            )
        if not finished:
            return "Stopped", f"Stopped after {counts.processed} of {counts.total} records"
        if counts.error == 0:
            return "Completed", None
        if counts.success == 0:
            return "Failed", f"Every record failed ({counts.error}); each output record's error says why"
        return "PartiallyCompleted", f"{counts.error} of {counts.total} records failed; see their output records"

    def _input_files(self, uri: str) -> list[tuple[str, bytes]]:
        """The input: one file, or every ``.jsonl`` under a prefix; names relative to the prefix."""
        from tuneforge.recipes.batch_inference import INPUT_SUFFIX

        try:
            if self.services.store.exists(uri):
                return [(uri.rsplit("/", 1)[-1], self.services.store.read_bytes(uri))]
            uris = [u for u in self.services.store.list(uri) if u.endswith(INPUT_SUFFIX)]
            files = [(u[len(uri) + 1 :], self.services.store.read_bytes(u)) for u in uris]
        except (StorageError, OSError) as exc:
            raise JobFailed(f"Could not read the input at {uri}: {exc}") from None
        if not files:
            raise JobFailed(f"The input at {uri} is neither a file nor a prefix holding {INPUT_SUFFIX} files")
        return files

    def _write(self, uri: str, data: bytes) -> None:
        write_output(self.services, uri, data)

    def _progress(self, counts: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        with self.services.db.session() as session:
            row = session.get(ModelInvocationJob, self.job_id)
            assert row is not None
            row.total_records, row.processed_records = counts.total, counts.processed
            row.success_records, row.error_records = counts.success, counts.error
            row.input_tokens, row.output_tokens = counts.input_tokens, counts.output_tokens
            row.updated_at = utcnow()

    def _threads(self) -> int:
        return worker_threads(self.settings)


def write_output(services: Services, uri: str, data: bytes) -> None:
    """Write one of a batch or evaluation job's output files; a failure fails the job, saying why."""
    try:
        services.store.write_bytes(uri, data)
    except (StorageError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JobFailed(
            f"Could not write the job's outputs to {uri} ({reason}); make the output location writable, "
            "then create the job again"
        ) from None


def worker_threads(settings: Settings) -> int:
    """torch threads for a job: ``worker_threads``, or the CPUs this process may run on shared among
    ``worker_concurrency`` jobs; never more than those CPUs (more threads than CPUs spin against each
    other: on one CPU, 2 threads trained a 8-layer SmolLM2-shaped model 5x slower than 1)."""
    cpus = available_cpus()
    if settings.worker_threads:
        return min(settings.worker_threads, cpus)
    return max(1, cpus // settings.worker_concurrency)


class EvaluationJobRunner:
    """An automated evaluation job (:mod:`tuneforge.recipes.evaluation`), with its status in its row.

    Each dataset is checked again (its file may have changed since the job was created), then each
    model answers every dataset's prompts (and, for ``Builtin.Robustness``, their perturbations)
    one model at a time, so at most one model is in memory; a judge model, when the job has one, is
    loaded last and rates the answers kept from every model (:meth:`_judge`). Results go under
    ``<outputDataConfig s3Uri>/<job name>/<job id>/`` as Bedrock lays them out:
    ``models/<model>/taskTypes/<task type>/datasets/<dataset>/<job id>_output.jsonl``, one line per
    record; tuneforge adds ``summary.json``, the results Get shows.
    """

    def __init__(self, services: Services, job_id: str) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.job_id = job_id
        self._stop = threading.Event()
        self._last_poll = 0.0

    def request_stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop.is_set() and now - self._last_poll >= 0.5:
            self._last_poll = now
            with self.services.db.session() as session:
                job = session.get(EvaluationJob, self.job_id)
                if job is None or job.stop_requested:
                    self._stop.set()
        return self._stop.is_set()

    def run(self) -> None:
        with self.services.db.session() as session:
            job = session.get(EvaluationJob, self.job_id)
            if job is None or job.status not in ("InProgress", "Stopping"):
                return
            if job.status == "Stopping":
                end_evaluation(job, "Stopped", None)
                return
            job.worker_pid = os.getpid()
            job.worker_host = socket.gethostname()
            job.heartbeat_at = utcnow()
            snapshot = {c.key: getattr(job, c.key) for c in EvaluationJob.__table__.columns}
        log.info("evaluation job %s: started", self.job_id)
        results: dict[str, Any] | None = None
        try:
            status, message, results = self._execute(snapshot)
        except JobFailed as exc:
            status, message = "Failed", str(exc)[:2048]
        except Exception as exc:
            log.exception("evaluation job %s failed", self.job_id)
            status = "Failed"
            message = (
                "Encountered an unexpected error when processing the request, please try again "
                f"({type(exc).__name__}: {exc})"[:2048]
            )
        remove_job_files(self.services, self.job_id)
        with self.services.db.session() as session:
            row = session.get(EvaluationJob, self.job_id)
            if row is None:
                return
            row.results = results
            end_evaluation(row, status, message)

    def _execute(self, job: dict[str, Any]) -> tuple[str, str | None, dict[str, Any] | None]:
        import gc

        import torch

        from tuneforge.knowledge.rag import WorkerRetriever
        from tuneforge.recipes.evaluation import answer_prompts

        configs = job["evaluation_config"]["automated"]["datasetMetricConfigs"]
        precomputed = [m["identifier"] for m in job["models"] if m.get("precomputed")]
        datasets = []
        for config in configs:
            uri = config["dataset"]["datasetLocation"]["s3Uri"]
            try:
                if self.services.store.size(uri) > MAX_DATASET_BYTES:
                    raise JobFailed(
                        f"The dataset at {uri} grew larger than {MAX_DATASET_BYTES >> 20} MiB after the job was "
                        "created; make it smaller, then create the job again"
                    )
                content = self.services.store.read_bytes(uri)
            except (StorageError, OSError) as exc:
                raise JobFailed(f"Could not read the dataset at {uri}: {exc}") from None
            check = check_dataset(content, needs_reference(config["taskType"], config["metricNames"]), precomputed)
            if check.errors:
                raise JobFailed(check.message(config["dataset"]["name"]))
            datasets.append((config, check.records))
        root = f"{job['output_data']['s3Uri'].rstrip('/')}/{job['name']}/{self.job_id}"
        self._write(f"{root}/.write_access_check_file.tmp", b"")
        torch.set_num_threads(worker_threads(self.settings))
        answered: list[tuple[str, dict[str, Any], list[Any], Pass, Pass | None]] = []
        # What a RagEvaluation's retriever found for each answered pass (None for a model's own pass).
        retrieved: list[list[list[RetrievedChunk]] | None] = []
        for model in job["models"]:
            if model.get("judge"):
                continue
            identifier = model["identifier"]
            batcher = None
            limit = DEFAULT_MAX_TOKENS
            if not model.get("precomputed"):
                batcher, limit = self._batcher(model)
            tokens = evaluation_max_tokens(model.get("inferenceParams"), limit)
            retriever = WorkerRetriever(self.services, model["rag"]) if model.get("rag") else None
            for config, records in datasets:
                prompts = [r.prompt for r in records]
                contexts = retriever.retrieve(prompts) if retriever is not None else None
                if retriever is not None and contexts is not None:
                    prompts = [retriever.prompt(p, c) for p, c in zip(prompts, contexts, strict=True)]
                if batcher is None:
                    original: Pass | None = Pass([Answer(r.responses[identifier]) for r in records])
                    perturbed: Pass | None = None
                else:
                    original = answer_prompts(batcher, prompts, tokens, self.should_stop)
                    perturbed = None
                    if original is not None and ROBUSTNESS in config["metricNames"]:
                        changed = [perturb(r.prompt, i) for i, r in enumerate(records)]
                        perturbed = answer_prompts(batcher, changed, tokens, self.should_stop)
                        if perturbed is None:
                            original = None
                if original is None:
                    self.services.store.delete_prefix(f"{root}/.write_access_check_file.tmp")
                    return "Stopped", None, None
                answered.append((identifier, config, records, original, perturbed))
                retrieved.append(contexts)
            del batcher
            gc.collect()
        judged = self._judge(job, answered)
        if judged is None:
            self.services.store.delete_prefix(f"{root}/.write_access_check_file.tmp")
            return "Stopped", None, None
        rows: list[dict[str, Any]] = []
        for (identifier, config, records, original, perturbed), judgement, contexts in zip(
            answered, judged, retrieved, strict=True
        ):
            task, metrics = config["taskType"], config["metricNames"]
            per_record, summary = score(task, metrics, records, original, perturbed, judgement)
            outputs = [
                output_line(r, s, identifier, a) for r, s, a in zip(records, per_record, original.answers, strict=True)
            ]
            if contexts is not None:
                summary["retrieval"] = _retrieval_scores(records, contexts, outputs)
            lines = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in outputs)
            name = config["dataset"]["name"]
            where = f"{root}/models/{_path_part(identifier)}/taskTypes/{task}/datasets/{name}"
            self._write(f"{where}/{self.job_id}_output.jsonl", lines)
            rows.append({"modelIdentifier": identifier, "taskType": task, "dataset": name, **summary})
        results = _evaluation_results(root, rows)
        self._write(f"{root}/summary.json", json.dumps(results, indent=2).encode())
        self.services.store.delete_prefix(f"{root}/.write_access_check_file.tmp")
        return "Completed", None, results

    def _batcher(self, model: dict[str, Any]) -> tuple[Any, int]:
        """The batcher for one resolved model (a job's or its judge), and its output token limit."""
        from tuneforge.engine.offline import offline_batcher
        from tuneforge.engine.server import model_folder
        from tuneforge.model.folders import load_for_inference, trained_format

        try:
            served = self.services.invocation_jobs.resolve_model(model["arn"])
        except ServiceError as exc:
            raise JobFailed(exc.message) from None
        folder = model_folder(served.source, self.settings)
        loaded, tokenizer = load_for_inference(folder, self.settings.models_dir)
        batcher = offline_batcher(loaded, tokenizer, self.settings.batch_max_rows, trained_format(folder))
        return batcher, served.foundation.limits.max_output_tokens

    def _judge(
        self, job: dict[str, Any], answered: list[tuple[str, dict[str, Any], list[Any], Pass, Pass | None]]
    ) -> list[Judged | None] | None:
        """The judge's ratings for each (model, dataset) pass that asks for judge metrics (None for one
        that does not); None when stopped first. The judge is loaded once, after the models are gone."""
        import gc

        from tuneforge.recipes.evaluation import JudgeItem, judge_answers

        judge = next((m for m in job["models"] if m.get("judge")), None)
        if judge is None:
            return [None] * len(answered)
        sources = (job["evaluation_config"]["automated"].get("customMetricConfig") or {}).get("customMetrics") or []
        definitions = [source["customMetricDefinition"] for source in sources]
        custom = {definition["name"]: custom_metric(definition) for definition in definitions}
        batcher, _ = self._batcher(judge)
        out: list[Judged | None] = []
        for _, config, records, original, _ in answered:
            names = judge_metric_names(config["metricNames"], custom)
            if not names:
                out.append(None)
                continue
            metrics: dict[str, JudgeMetric] = {n: BUILTIN_JUDGE_METRICS.get(n) or custom[n] for n in names}
            items = [
                JudgeItem(metrics[name], record.prompt, answer.text, record.reference)
                for name in names
                for record, answer in zip(records, original.answers, strict=True)
            ]
            try:
                ratings = judge_answers(batcher, items, self.should_stop)
            except ValueError as exc:
                raise JobFailed(str(exc)) from None
            if ratings is None:
                return None
            count = len(records)
            by_metric = {name: ratings[i * count : (i + 1) * count] for i, name in enumerate(names)}
            out.append(Judged(judge["identifier"], metrics, by_metric))
        del batcher
        gc.collect()
        return out

    def _write(self, uri: str, data: bytes) -> None:
        write_output(self.services, uri, data)


def _retrieval_scores(
    records: list[EvaluationRecord], contexts: list[list[RetrievedChunk]], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """A RagEvaluation's retrieval scores: per record, the passages retrieved (added to its output
    line) and whether one holds the reference answer; the context hit rate over records with one."""
    hits = []
    for record, chunks, line in zip(records, contexts, outputs, strict=True):
        line["retrievedPassages"] = [
            {"content": {"text": c.text}, "location": {"type": "S3", "s3Location": {"uri": c.uri}}} for c in chunks
        ]
        hit = context_hit(record.reference, chunks)
        if hit is not None:
            line["automatedEvaluationResult"]["scores"].append({"metricName": "ContextHit", "result": float(hit)})
            hits.append(hit)
    return {"contextHitRate": sum(hits) / len(hits) if hits else None, "records": len(hits)}


def _path_part(identifier: str) -> str:
    """A model identifier as one folder name: an ARN's ``/`` and ``:`` become ``_``."""
    return identifier.replace("/", "_").replace(":", "_")


def _evaluation_results(root: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Get response's ``tuneforge.results``: each (model, dataset) row and, when two models
    answered the same dataset, the second's gain over the first on each metric."""
    comparisons = []
    by_dataset: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_dataset.setdefault((row["dataset"], row["taskType"]), []).append(row)
    for (dataset, task), pair in by_dataset.items():
        if len(pair) != 2:
            continue
        first, second = pair
        for metric, value in second["metrics"].items():
            base = first["metrics"].get(metric)
            if value is not None and base is not None:
                comparisons.append(
                    {
                        "dataset": dataset,
                        "taskType": task,
                        "metricName": metric,
                        "baseline": first["modelIdentifier"],
                        "candidate": second["modelIdentifier"],
                        "difference": value - base,
                    }
                )
    return {"outputLocation": root, "results": rows, "comparisons": comparisons}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneforge.jobs.worker JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = Services.create(Settings())
    with services.db.session() as session:
        batch = session.get(ModelInvocationJob, args[0]) is not None
        evaluation = session.get(EvaluationJob, args[0]) is not None
        ingestion = session.get(IngestionJob, args[0]) is not None
    if not batch and not evaluation and not ingestion:
        # Before the first large allocation: the memory plan assumes it. Batch inference keeps glibc's
        # default: decoding grows the KV cache by multi-MiB tensors every step, and a fixed 1 MiB mmap
        # threshold turns each into an mmap/munmap pair (forge-small, 64 rows: 1.6x slower).
        steady_allocator()
    runner: JobRunner | BatchJobRunner | EvaluationJobRunner | IngestionRunner
    table: type[Job] | type[ModelInvocationJob] | type[EvaluationJob] | type[IngestionJob]
    if ingestion:
        from tuneforge.knowledge.ingestion import IngestionRunner

        runner, table = IngestionRunner(services, args[0], worker_threads(services.settings)), IngestionJob
    elif evaluation:
        runner, table = EvaluationJobRunner(services, args[0]), EvaluationJob
    elif batch:
        runner, table = BatchJobRunner(services, args[0]), ModelInvocationJob
    else:
        runner, table = JobRunner(services, args[0]), Job

    def _on_term(_signum: int, _frame: FrameType | None) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, _on_term)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(services, table, args[0], done), daemon=True)
    beat.start()
    try:
        runner.run()
    finally:
        done.set()
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
