"""OpenAI's files and fine-tuning shapes: what ``files.*`` and ``fine_tuning.jobs.*`` send and read.

Requests are parsed once here (unknown members refused, as OpenAI refuses them) into the typed
:class:`~tuneforge.jobs.openai_fine_tuning.FineTuningRequest`; responses are built from the rows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.db.tables import JobEvent, OpenAIFile
from tuneforge.jobs.openai_fine_tuning import (
    Checkpoint,
    FineTuningJob,
    FineTuningRequest,
    FineTuningService,
    openai_status,
)
from tuneforge.serving.runtime import InvalidParameter

Auto = Literal["auto"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Hyperparameters(_Request):
    n_epochs: int | float | Auto | None = None
    batch_size: int | float | Auto | None = None
    learning_rate_multiplier: int | float | Auto | None = None


class DpoHyperparameters(_Hyperparameters):
    beta: int | float | Auto | None = None


class ReinforcementHyperparameters(_Hyperparameters):
    eval_interval: int | float | Auto | None = None
    eval_samples: int | float | Auto | None = None
    reasoning_effort: str | None = None
    compute_multiplier: int | float | Auto | None = None


class Supervised(_Request):
    hyperparameters: _Hyperparameters | None = None


class Dpo(_Request):
    hyperparameters: DpoHyperparameters | None = None


class Reinforcement(_Request):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None
    response_format: dict[str, Any] | None = None


class Method(_Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: Reinforcement | None = None


class CreateFineTuningJob(_Request):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    hyperparameters: _Hyperparameters | None = None
    """Deprecated by OpenAI in favour of ``method``; still read, for supervised jobs."""
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = None
    validation_file: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None

    def typed(self) -> FineTuningRequest:
        if self.integrations:
            raise InvalidParameter(
                "integrations are not supported: this server reports to no third party", "integrations"
            )
        method = self.method.type if self.method is not None else "supervised"
        block: Supervised | Dpo | Reinforcement | None = None
        if self.method is not None:
            block = getattr(self.method, method)
        if self.hyperparameters is not None and block is not None and block.hyperparameters is not None:
            raise InvalidParameter(
                "give hyperparameters in method only (the top-level member is OpenAI's deprecated spelling)",
                "hyperparameters",
            )
        chosen = block.hyperparameters if block is not None and block.hyperparameters is not None else None
        if chosen is None and self.hyperparameters is not None:
            if method != "supervised":
                raise InvalidParameter(
                    f"give a {method} job's hyperparameters in method.{method}.hyperparameters", "hyperparameters"
                )
            chosen = self.hyperparameters
        grader = None
        if method == "reinforcement":
            if not isinstance(block, Reinforcement):
                raise InvalidParameter(
                    "method.reinforcement with a grader is required for type 'reinforcement'", "method"
                )
            grader = block.grader
        return FineTuningRequest(
            model=self.model,
            training_file=self.training_file,
            method=method,
            hyperparameters=chosen.model_dump(exclude_none=True) if chosen is not None else {},
            grader=grader,
            suffix=self.suffix,
            seed=self.seed,
            validation_file=self.validation_file,
            metadata=self.metadata,
        )


def file_object(row: OpenAIFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.status_details,
        "expires_at": None,
    }


def _resolved_hyperparameters(found: FineTuningJob) -> dict[str, Any]:
    """The values the job trains with, under OpenAI's names: ``auto`` shows the value tuneforge chose."""
    values = found.job.hyperparameters or {}
    if found.job.customization_config and "rftConfig" in found.job.customization_config:
        values = found.job.customization_config["rftConfig"].get("hyperParameters", {})
    multiplier = (found.openai.hyperparameters or {}).get("learning_rate_multiplier")
    out: dict[str, Any] = {
        "n_epochs": int(values["epochCount"]) if "epochCount" in values else "auto",
        "batch_size": int(values["batchSize"]) if "batchSize" in values else "auto",
        "learning_rate_multiplier": multiplier if multiplier is not None else "auto",
    }
    if found.openai.method.get("type") == "dpo":
        out["beta"] = float(values["beta"]) if "beta" in values else "auto"
    return out


def job_object(found: FineTuningJob, service: FineTuningService) -> dict[str, Any]:
    job, row = found.job, found.openai
    status = openai_status(job)
    hyperparameters = _resolved_hyperparameters(found)
    method_type = row.method.get("type", "supervised")
    method: dict[str, Any] = {"type": method_type, method_type: {"hyperparameters": hyperparameters}}
    if method_type == "reinforcement":
        method[method_type]["grader"] = row.method.get("grader")
    progress = job.progress or {}
    return {
        "id": row.openai_id,
        "object": "fine_tuning.job",
        "created_at": int(job.created_at.timestamp()),
        "error": service.error_of(job),
        "fine_tuned_model": row.fine_tuned_model if status == "succeeded" else None,
        "finished_at": int(job.ended_at.timestamp()) if job.ended_at else None,
        "hyperparameters": hyperparameters,
        "model": row.model,
        "organization_id": "org-tuneforge",
        "result_files": [],
        "seed": row.seed,
        "status": status,
        "trained_tokens": progress.get("tokensSeen") if status == "succeeded" else None,
        "training_file": row.training_file,
        "validation_file": row.validation_file,
        "estimated_finish": None,
        "integrations": [],
        "metadata": row.job_metadata,
        "method": method,
        "user_provided_suffix": row.suffix,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    data = event.data or {}
    level = "info"
    kind = "message"
    payload: dict[str, Any] | None = None
    if event.kind == "progress":
        kind = "metrics"
        payload = {"step": data.get("step"), "total_steps": data.get("totalSteps"), "train_loss": data.get("loss")}
        message = f"Step {data.get('step')}/{data.get('totalSteps')}: training loss={data.get('loss')}"
    elif event.kind == "stage":
        message = f"{data.get('stage')}: {data.get('status')}"
    elif event.kind == "status":
        status = data.get("status")
        level = "error" if status == "Failed" else "info"
        detail = data.get("message") or data.get("modelArn")
        message = f"Job status: {status}" + (f" ({detail})" if detail else "")
    elif event.kind == "processing":
        message = f"Processing {data.get('done')}/{data.get('total')} {data.get('unit', '')}".rstrip()
    else:
        message = str(data.get("message", data))
    return {
        "id": f"ftevent-{event.id}",
        "object": "fine_tuning.job.event",
        "created_at": int(event.created_at.timestamp()),
        "level": level,
        "message": message,
        "data": payload,
        "type": kind,
    }


def checkpoint_object(found: FineTuningJob, checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "id": f"ftckpt-{found.job.id}-{checkpoint.step}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": checkpoint.created_at,
        "fine_tuned_model_checkpoint": checkpoint.model,
        "fine_tuning_job_id": found.openai.openai_id,
        "metrics": {"step": checkpoint.step},
        "step_number": checkpoint.step,
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
