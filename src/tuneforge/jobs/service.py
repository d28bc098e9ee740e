"""Customization jobs: the business rules behind Create/Get/List/Stop. No HTTP, no torch."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id, resource_type
from tuneforge.catalog import tuning
from tuneforge.catalog.families import lora_target_modules
from tuneforge.catalog.hyperparameters import (
    RFT_BEDROCK_NAMES,
    HyperParameterError,
    HyperParameterValue,
    as_strings,
    resolve,
)
from tuneforge.catalog.models import (
    CONTINUED_PRE_TRAINING,
    DISTILLATION,
    FINE_TUNING,
    REINFORCEMENT_FINE_TUNING,
    FoundationModel,
)
from tuneforge.catalog.service import Catalog
from tuneforge.data.formats import FORMAT_PREFERENCE, RecordError, record_format
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database, unique_or_conflict
from tuneforge.db.tables import CustomModel, Job, JobEvent, utcnow
from tuneforge.errors import (
    ConflictException,
    ResourceNotFoundException,
    ValidationException,
)
from tuneforge.graders import GraderConfigError, GraderContext, load_grader
from tuneforge.idempotency import IdempotentRequest
from tuneforge.jobs import memory
from tuneforge.storage import ObjectStore, StorageError

TERMINAL = ("Completed", "Failed", "Stopped")
STAGES = ("validationDetails", "dataProcessingDetails", "trainingDetails")


@dataclass(frozen=True)
class CreateJobRequest(IdempotentRequest):
    job_name: str
    custom_model_name: str
    role_arn: str
    base_model_identifier: str
    customization_type: str
    training_uri: str
    """The training JSONL, or the invocation-log prefix when ``invocation_logs`` is set."""
    output_uri: str
    invocation_logs: dict[str, Any] | None = None
    """``trainingDataConfig.invocationLogsConfig`` (DISTILLATION from logged traffic)."""
    validation_uris: tuple[str, ...] = ()
    hyperparameters: dict[str, str] = field(default_factory=dict)
    client_request_token: str | None = None
    customization_config: dict[str, Any] | None = None
    vpc_config: dict[str, Any] | None = None
    kms_key: str | None = None
    job_tags: tuple[dict[str, str], ...] = ()
    custom_model_tags: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class Teacher:
    """The model that answers a DISTILLATION job's prompts.

    Either a foundation model or, beyond Bedrock, a custom model (say a fine-tuned teacher); then
    ``foundation`` is the model it was customized from, whose family and tokenizer it keeps, and
    ``weights_path`` is where its own weights are.
    """

    arn: str
    foundation: FoundationModel
    max_response_tokens: int
    """``maxResponseLengthForInference``: the most tokens the teacher writes per prompt."""
    weights_path: str | None = None


@dataclass(frozen=True)
class JobFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    status_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


class JobService:
    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        store: ObjectStore,
        arns: ArnFactory,
        planner: memory.MemoryPlanner,
        graders: GraderContext | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.store = store
        self.arns = arns
        self.planner = planner
        self.graders = graders
        """How a reinforcement job's grader is loaded to be checked at create time (registered graders,
        sandbox); None: built-in and OpenAI graders only."""

    # -- create ------------------------------------------------------------------------------

    def create(self, request: CreateJobRequest, *, beside: Callable[[Job], list[Any]] | None = None) -> Job:
        """Validate and queue the job. ``beside`` gives rows stored in the same transaction as the job
        (the OpenAI surface's own record of it), so no worker sees the job without them."""
        fingerprint = request.fingerprint()
        with self.db.session() as session:
            if request.client_request_token:
                existing = session.scalar(select(Job).where(Job.client_request_token == request.client_request_token))
                if existing is not None:
                    if existing.request_fingerprint != fingerprint:
                        raise ConflictException(
                            f"The clientRequestToken {request.client_request_token} was already used "
                            "for a different CreateModelCustomizationJob request"
                        )
                    return existing

        base = self.resolve_base_model(request.base_model_identifier)
        reinforcement = request.customization_type == REINFORCEMENT_FINE_TUNING
        if request.customization_type not in base.customizations:
            why = (
                " (reinforcement fine-tuning samples the model's own answers and learns from their grades, "
                "so it needs a base model that already generates usable text)"
                if reinforcement
                else ""
            )
            raise ValidationException(
                f"The model {base.model_id} does not support customization type "
                f"{request.customization_type}{why}. Supported: {', '.join(base.customizations)}"
            )
        specs = base.hyperparameter_specs(request.customization_type)
        raw_hyperparameters = (
            rft_hyperparameters(request.customization_config, request.hyperparameters)
            if reinforcement
            else request.hyperparameters
        )
        try:
            plain, search = tuning.split(specs, raw_hyperparameters)
            typed = resolve(specs, plain)
        except HyperParameterError as exc:
            raise ValidationException(str(exc)) from None
        customization_config = request.customization_config
        if reinforcement:
            if search is not None:
                raise ValidationException(
                    "Automatic hyperparameter tuning is not available for REINFORCEMENT_FINE_TUNING: "
                    "give each hyperparameter one value"
                )
            customization_config = self.rft_config(request.customization_config, typed, base)
        if request.customization_type == CONTINUED_PRE_TRAINING:
            chunk = int(typed["maxSequenceLength"]) or base.limits.max_total_tokens
            if int(typed["chunkOverlap"]) >= chunk:
                raise ValidationException(
                    f"Hyperparameter chunkOverlap ({typed['chunkOverlap']}) must be smaller than the chunk length "
                    f"({chunk} tokens: maxSequenceLength, or the model's context when it is 0)"
                )
        teacher = None
        if request.customization_type == DISTILLATION:
            teacher = self.distillation_teacher(request.customization_config, base)
        elif request.customization_config and not reinforcement:
            raise ValidationException(
                f"customizationConfig is not used by customization type {request.customization_type}; "
                "only DISTILLATION (distillationConfig) and REINFORCEMENT_FINE_TUNING (rftConfig) take one"
            )
        for member, uri in [
            (
                "trainingDataConfig.invocationLogsConfig.invocationLogSource.s3Uri"
                if request.invocation_logs
                else "trainingDataConfig.s3Uri",
                request.training_uri,
            ),
            ("outputDataConfig.s3Uri", request.output_uri),
            *[
                (f"validationDataConfig.validators.{i + 1}.member.s3Uri", uri)
                for i, uri in enumerate(request.validation_uris)
            ],
        ]:
            try:
                self.store.check(uri)
            except StorageError as exc:
                raise ValidationException(f"Invalid {member} {uri}: {exc}") from None

        adaptive_log = []
        if request.customization_type == FINE_TUNING and "epochCount" not in request.hyperparameters:
            records = self.record_count(None if request.invocation_logs else request.training_uri)
            if records is not None:
                typed["epochCount"] = tuning.adaptive_epochs(records)
                adaptive_log.append(
                    f"epochCount {typed['epochCount']}: the default for {records} training records "
                    '(docs/hyperparameters.md, "Defaults that fit the data")'
                )
        typed, plan_log = self.plan_memory(
            base,
            {**typed, **tuning.planning_values(search)} if search else typed,
            teacher,
            None if request.invocation_logs else request.training_uri,
            preference=request.customization_type == FINE_TUNING
            and not request.invocation_logs
            and self.first_record_format(request.training_uri) == FORMAT_PREFERENCE,
        )
        plan_log = adaptive_log + plan_log
        stored = as_strings(typed)
        if search:
            # The job keeps the search as asked; the custom model gets the values the search chose.
            stored.update({space.name: request.hyperparameters[space.name].strip() for space in search.spaces})
            stored.update(search.as_strings())
            plan_log.append(
                f"tuning: {search.trials} trials within {search.time_budget_minutes} min over "
                + ", ".join(f"{space.name} {space.describe()}" for space in search.spaces)
            )

        job_id = new_id()
        now = utcnow()
        job = Job(
            id=job_id,
            arn=self.arns.job(base.model_id, job_id),
            name=request.job_name,
            custom_model_name=request.custom_model_name,
            role_arn=request.role_arn,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            base_model_id=base.model_id,
            base_model_arn=self.catalog.arn(base),
            customization_type=request.customization_type,
            hyperparameters=stored,
            training_data=(
                {"invocationLogsConfig": request.invocation_logs}
                if request.invocation_logs
                else {"s3Uri": request.training_uri}
            ),
            validation_data={"validators": [{"s3Uri": uri} for uri in request.validation_uris]},
            output_data={"s3Uri": request.output_uri},
            customization_config=customization_config,
            vpc_config=request.vpc_config,
            kms_key=request.kms_key,
            job_tags=list(request.job_tags),
            custom_model_tags=list(request.custom_model_tags),
            status="InProgress",
            status_details={
                stage: {
                    "status": "NotStarted",
                    "creationTime": now.isoformat(),
                    "lastModifiedTime": now.isoformat(),
                }
                for stage in STAGES
            },
            phase="queued",
            created_at=now,
            updated_at=now,
        )
        taken = f"A model customization job named {request.job_name} (or with this clientRequestToken) already exists"
        with unique_or_conflict(taken), self.db.session() as session:
            if session.scalar(select(Job.id).where(Job.name == request.job_name)):
                raise ConflictException(f"A model customization job named {request.job_name} already exists")
            in_use = session.scalar(
                select(Job.id).where(
                    Job.custom_model_name == request.custom_model_name,
                    Job.status.notin_(("Failed", "Stopped")),
                )
            ) or session.scalar(select(CustomModel.id).where(CustomModel.name == request.custom_model_name))
            if in_use:
                raise ConflictException(
                    f"A custom model named {request.custom_model_name} already exists or is being created"
                )
            session.add(job)
            session.add_all(beside(job) if beside is not None else [])
            session.add(JobEvent(job_id=job_id, kind="status", data={"status": "InProgress", "message": "queued"}))
            for line in plan_log:
                session.add(JobEvent(job_id=job_id, kind="log", data={"message": line}))
        return job

    def plan_memory(
        self,
        base: FoundationModel,
        typed: dict[str, HyperParameterValue],
        teacher: Teacher | None,
        training_uri: str | None = None,
        *,
        preference: bool = False,
    ) -> tuple[dict[str, HyperParameterValue], list[str]]:
        """Check ``loraTargetModules`` against the model's family and fit the job to the device's memory.

        Returns the hyperparameters the worker runs with (gradient checkpointing decided, the
        micro-batch possibly lowered, see :mod:`tuneforge.jobs.memory`) and the job-log lines that
        say what was changed and why. A model whose shape is unknown here (no config.json readable
        by the API process) is queued as asked, and the log says so. A ``preference`` (DPO) job
        scores a preferred and a non-preferred sequence per pair, so it is planned as twice the rows.
        """
        shape = self.planner.shape(base)
        # Every built-in model is Llama-architecture; a registered one's family is its model_type.
        model_type = shape.model_type if shape else ("llama" if base.builtin else base.family)
        try:
            targets = lora_target_modules(model_type, str(typed["loraTargetModules"]))
        except HyperParameterError as exc:
            raise ValidationException(str(exc)) from None
        if shape is None:
            return typed, [f"memory plan: skipped, the shape of {base.model_id} is not known before training"]
        teacher_memory = None
        if teacher is not None:
            teacher_shape = self.planner.shape(teacher.foundation)
            if teacher_shape is not None:
                teacher_memory = memory.Teacher(teacher_shape, logits=float(typed["logitDistillationWeight"]) > 0)
        planning = typed
        if "trainingSamplePerPrompt" in typed:
            # Reinforcement: every sampled answer is a training row, as long as its prompt plus the answer.
            prompt = int(typed["maxPromptLength"]) or base.limits.max_input_tokens
            answer = int(typed["inferenceMaxTokens"])
            planning = {
                **typed,
                "batchSize": int(typed["batchSize"]) * int(typed["trainingSamplePerPrompt"]),
                "maxSequenceLength": min(prompt, self.planned_sequence_length(base, None, training_uri)) + answer,
            }
        elif preference:
            planning = {**typed, "batchSize": 2 * int(typed["batchSize"])}
        sequence_length = int(planning["maxSequenceLength"]) or self.planned_sequence_length(
            base, teacher, training_uri
        )
        try:
            plan = memory.plan(shape, planning, targets, sequence_length, self.planner.budget, teacher_memory)
        except memory.MemoryRefused as exc:
            raise ValidationException(str(exc)) from None
        lines = plan.log_lines()
        if preference:
            lines.insert(1, "memory plan: DPO scores both answers of each pair, so a batch is 2 x batchSize rows")
        return {**typed, **plan.hyperparameters()}, lines

    def first_record_format(self, training_uri: str) -> str | None:
        """The format of the training file's first record (validation keeps a file to one), or None
        when it cannot be read or told; pre-flight in the worker reports such a file by line."""
        try:
            with self.store.open_read(training_uri) as handle:
                for raw in handle:
                    if raw.strip():
                        return record_format(json.loads(raw), FINE_TUNING)
        except (OSError, StorageError, ValueError, RecordError):
            return None
        return None

    def record_count(self, training_uri: str | None) -> int | None:
        """Non-empty lines of the training file (pre-flight rejects the job later if any is not a
        record), or None when it cannot be read here: the adaptive epochs then keep their default."""
        if training_uri is None:
            return None
        try:
            with self.store.open_read(training_uri) as handle:
                return sum(1 for line in handle if line.strip())
        except (OSError, StorageError):
            return None

    def planned_sequence_length(self, base: FoundationModel, teacher: Teacher | None, training_uri: str | None) -> int:
        """The longest training sequence the plan assumes when ``maxSequenceLength`` is 0 (the model's context).

        The training file's longest line in bytes bounds its longest record in tokens (every
        tokenizer tuneforge loads spends at least one byte of the line per token, and the JSON
        around the text outweighs a chat template's markers), so a dataset of short records is not
        planned, slowed down by checkpointing, or refused, as if each filled the whole context. A
        distillation record adds the teacher's answer. Without a readable file: the context.
        """
        context = base.limits.max_total_tokens
        if training_uri is None:
            return context
        try:
            with self.store.open_read(training_uri) as handle:
                longest = memory.longest_line_bytes(handle)
        except (OSError, StorageError):
            return context
        answer = teacher.max_response_tokens if teacher is not None else 0
        return max(1, min(context, longest + memory.SPECIAL_TOKEN_ALLOWANCE + answer))

    def rft_config(
        self,
        customization_config: Mapping[str, Any] | None,
        typed: Mapping[str, HyperParameterValue],
        base: FoundationModel,
    ) -> dict[str, Any]:
        """A REINFORCEMENT_FINE_TUNING job's ``customizationConfig`` as stored and returned by Get: the
        grader as asked (checked by loading it) and Bedrock's RFT hyperparameters with every value the
        job runs with, defaults included."""
        rft = (customization_config or {}).get("rftConfig")
        grader_config = rft.get("graderConfig") if isinstance(rft, Mapping) else None
        if not isinstance(grader_config, Mapping):
            raise ValidationException(
                "A REINFORCEMENT_FINE_TUNING job needs customizationConfig.rftConfig.graderConfig: the grader that "
                'scores the sampled answers, such as {"lambdaGrader": {"lambdaArn": '
                '"arn:aws:lambda:us-east-1:123456789012:function:tuneforge-exact-match"}}'
            )
        try:
            load_grader(grader_config, self.graders)
        except GraderConfigError as exc:
            raise ValidationException(f"Invalid customizationConfig.rftConfig.graderConfig: {exc}") from None
        limits = base.limits
        if int(typed["inferenceMaxTokens"]) > limits.max_output_tokens:
            raise ValidationException(
                f"inferenceMaxTokens {typed['inferenceMaxTokens']} exceeds the output token limit of "
                f"{base.model_id} ({limits.max_output_tokens})"
            )
        if int(typed["maxPromptLength"]) > limits.max_input_tokens:
            raise ValidationException(
                f"maxPromptLength {typed['maxPromptLength']} exceeds the input token limit of "
                f"{base.model_id} ({limits.max_input_tokens})"
            )
        return {
            "rftConfig": {
                "graderConfig": dict(grader_config),
                "hyperParameters": {name: typed[name] for name in RFT_BEDROCK_NAMES},
            }
        }

    def resolve_base_model(self, identifier: str) -> FoundationModel:
        return self.catalog.get(decode_identifier(identifier))

    def distillation_teacher(self, customization_config: Mapping[str, Any] | None, student: FoundationModel) -> Teacher:
        """The teacher a DISTILLATION job names, checked against its student.

        Runs at create time, so an impossible pairing is refused at once rather than after the
        teacher has answered thousands of prompts, and again in the worker, which needs the
        teacher's weights. The rule: same model family and same tokenizer. The student learns the
        teacher's answers token by token, and logit-level distillation compares the two models'
        distributions over one vocabulary; with different tokenizers neither means anything.
        """
        config = (customization_config or {}).get("distillationConfig")
        teacher_config = config.get("teacherModelConfig") if isinstance(config, Mapping) else None
        identifier = teacher_config.get("teacherModelIdentifier") if isinstance(teacher_config, Mapping) else None
        if not isinstance(identifier, str) or not identifier:
            raise ValidationException(
                "A DISTILLATION job needs customizationConfig.distillationConfig.teacherModelConfig."
                "teacherModelIdentifier: the foundation model or custom model that answers the prompts"
            )
        assert isinstance(teacher_config, Mapping)
        identifier = decode_identifier(identifier)
        weights_path = None
        if is_arn(identifier) and resource_type(identifier) == "custom-model":
            with self.db.session() as session:
                custom = session.scalar(select(CustomModel).where(CustomModel.arn == identifier))
            if custom is None or custom.status != "Active":
                raise ResourceNotFoundException(f"The teacher model {identifier} does not exist.")
            foundation = self.catalog.get(custom.base_model_id)
            arn, weights_path = custom.arn, custom.weights_path
        else:
            foundation = self.catalog.get(identifier)
            arn = self.catalog.arn(foundation)
        refusal = self.teaching_refusal(foundation, student, arn)
        if refusal is not None:
            raise ValidationException(refusal)
        limit = foundation.limits.max_output_tokens
        max_tokens = teacher_config.get("maxResponseLengthForInference", limit)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limit:
            raise ValidationException(
                f"maxResponseLengthForInference must be an integer between 1 and {limit} (the teacher's "
                f"output token limit), got {max_tokens!r}"
            )
        return Teacher(arn=arn, foundation=foundation, max_response_tokens=max_tokens, weights_path=weights_path)

    def teaching_refusal(self, teacher: FoundationModel, student: FoundationModel, teacher_arn: str) -> str | None:
        """Why ``teacher`` cannot teach ``student``, or None when it can: the one pairing rule.

        Side-effect free, so the console can show, for every candidate teacher, whether it can be
        chosen and why not, with the very message the API refuses a job with. ``teacher`` is the
        foundation model whose family and tokenizer the teacher has (a custom teacher's base).
        """
        if teacher.family != student.family:
            return (
                f"The teacher model {teacher_arn} (family {teacher.family}) cannot teach the student model "
                f"{student.model_id} (family {student.family}): distillation needs a teacher and a student "
                "of the same model family and tokenizer"
            )
        if self.catalog.tokenizer_identity(teacher) != self.catalog.tokenizer_identity(student):
            return (
                f"The teacher model {teacher_arn} and the student model {student.model_id} use different tokenizers: "
                "distillation needs a teacher and a student of the same model family and tokenizer"
            )
        return None

    # -- read --------------------------------------------------------------------------------

    def get(self, identifier: str) -> Job:
        with self.db.session() as session:
            return self._find(session, identifier)

    def _find(self, session: Session, identifier: str) -> Job:
        identifier = decode_identifier(identifier)
        if is_arn(identifier):
            job = session.scalar(select(Job).where(Job.arn == identifier))
        else:
            job = session.scalar(select(Job).where(Job.name == identifier)) or session.get(Job, identifier)
        if job is None:
            raise ResourceNotFoundException(f"The model customization job {identifier} does not exist.")
        return job

    def list_jobs(self, filters: JobFilter, after: Cursor | None, limit: int) -> Page[Job]:
        query = created_and_named(
            select(Job),
            Job,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(Job.status == filters.status_equals)
        return fetch_page(self.db, query, Job, descending=filters.sort_descending, after=after, limit=limit)

    def events(self, identifier: str, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self.db.session() as session:
            job = self._find(session, identifier)
            query = (
                select(JobEvent)
                .where(JobEvent.job_id == job.id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
                .limit(limit)
            )
            return list(session.scalars(query).all())

    # -- stop --------------------------------------------------------------------------------

    def stop(self, identifier: str) -> None:
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status in TERMINAL:
                raise ConflictException(f"The model customization job {job.name} is {job.status} and cannot be stopped")
            if job.status == "Stopping":
                return
            now = utcnow()
            job.stop_requested = True
            job.updated_at = now
            if job.phase in ("queued", "paused"):
                if job.phase == "paused":  # no worker will end it: its kept checkpoint goes now
                    from tuneforge.jobs.supervisor import remove_job_folders  # the supervisor imports this module

                    remove_job_folders(self.planner.settings, job.id)
                job.status = "Stopped"
                job.phase = "done"
                job.ended_at = now
                mark_stages(job, "Stopped", only_unfinished=True)
            else:
                job.status = "Stopping"
                mark_stages(job, "Stopping", only_unfinished=True)
            session.add(JobEvent(job_id=job.id, kind="status", data={"status": job.status}))

    # -- pause and resume (OpenAI's fine-tuning surface) ----------------------------------------

    def pause(self, identifier: str) -> Job:
        """Take the job out of the queue, or ask its worker to end keeping its checkpoint.

        A queued job is paused at once; a running one when its worker sees the request (within half
        a second, between steps): the training loop writes a checkpoint of the step it reached and
        the worker leaves the job in phase ``paused``, still InProgress. Pausing a paused job is a no-op.
        """
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status != "InProgress":
                raise ConflictException(f"The model customization job {job.name} is {job.status} and cannot be paused")
            if job.phase == "queued":
                job.phase = "paused"
                session.add(JobEvent(job_id=job.id, kind="status", data={"status": job.status, "message": "paused"}))
            elif job.phase == "running" and not job.pause_requested:
                job.pause_requested = True
                session.add(JobEvent(job_id=job.id, kind="log", data={"message": "pause requested"}))
            job.updated_at = utcnow()
            return job

    def resume(self, identifier: str) -> Job:
        """Put a paused job back in the queue; its next worker continues from the kept checkpoint."""
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status == "InProgress" and job.pause_requested:
                raise ConflictException(
                    f"The model customization job {job.name} is pausing (its worker is writing a checkpoint); "
                    "resume it once it is paused"
                )
            if job.status != "InProgress" or job.phase != "paused":
                raise ConflictException(f"The model customization job {job.name} is not paused and cannot be resumed")
            job.phase = "queued"
            session.add(JobEvent(job_id=job.id, kind="status", data={"status": job.status, "message": "resumed"}))
            job.updated_at = utcnow()
            return job


def mark_stages(job: Job, status: str, *, only_unfinished: bool) -> None:
    now = utcnow().isoformat()
    details = dict(job.status_details or {})
    for stage in STAGES:
        current = details.get(stage, {})
        if only_unfinished and current.get("status") in ("Completed", "Failed", "Stopped", "NotStarted"):
            continue
        details[stage] = {**current, "status": status, "lastModifiedTime": now}
    job.status_details = details


def rft_hyperparameters(
    customization_config: Mapping[str, Any] | None, extensions: Mapping[str, str]
) -> dict[str, str]:
    """One string map of a REINFORCEMENT_FINE_TUNING job's hyperparameters, for the specs to check.

    Bedrock's RFT hyperparameters come typed in ``customizationConfig.rftConfig.hyperParameters``;
    tuneforge's own (LoRA, ``klCoefficient``...) in the request's ``hyperParameters`` string map, which
    may repeat a Bedrock one only with the same value."""
    rft = (customization_config or {}).get("rftConfig")
    given = rft.get("hyperParameters") if isinstance(rft, Mapping) else None
    merged = dict(extensions)
    for name, value in (given or {}).items():
        text = as_strings({name: value})[name]
        if name in merged and merged[name].strip() != text:
            raise ValidationException(
                f"Hyperparameter {name} is given twice with different values: {value!r} in "
                f"customizationConfig.rftConfig.hyperParameters and {merged[name]!r} in hyperParameters"
            )
        merged[name] = text
    return merged
