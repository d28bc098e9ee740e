"""The interface between a job's worker process and a customization recipe.

A recipe is one readable file per customization type (setup -> train -> evaluate -> save). It gets
local paths and typed hyperparameters in :class:`RecipeInputs` and talks back only through a
:class:`JobReporter`, so it knows nothing of the database, the object store or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tuneforge.catalog.hyperparameters import HyperParameterValue
from tuneforge.catalog.models import FoundationModel

if TYPE_CHECKING:
    from tuneforge.graders import GraderContext

Stage = Literal["validation", "dataProcessing", "training"]
StageStatus = Literal["InProgress", "Completed", "Stopping", "Stopped", "Failed", "NotStarted"]


@dataclass(frozen=True)
class TeacherInputs:
    """A DISTILLATION job's teacher, resolved and checked against the student by the job service."""

    arn: str
    """The teacher as the request named it: a foundation model or custom model ARN."""
    model_dir: Path
    """An HF folder, or a custom model's folder (manifest + adapter or merged weights)."""
    models_dir: Path
    """The models directory, where the base of an adapter-only custom teacher is found."""
    max_response_tokens: int
    """``maxResponseLengthForInference``: the most tokens the teacher writes per prompt."""


@dataclass(frozen=True)
class RecipeInputs:
    job_id: str
    """The 12-character id at the end of the job ARN."""
    customization_type: str
    base_model: FoundationModel
    base_model_dir: Path
    """A local Hugging Face folder (config.json, weights, tokenizer files)."""
    training_file: Path
    """Local JSONL, already validated pre-flight."""
    validation_files: tuple[Path, ...]
    """One local JSONL per validator, in request order."""
    output_dir: Path
    """Local staging folder; its contents are copied to the job's output URI afterwards.
    Metrics go under ``model-customization-job-<job_id>/`` in Bedrock's layout."""
    model_dir: Path
    """Where the custom model's weights go (adapter and/or merged safetensors + tokenizer)."""
    checkpoint_dir: Path
    """Resumable state. A recipe resumes from it when it holds a checkpoint."""
    hyperparameters: dict[str, HyperParameterValue]
    """Typed and complete: every spec'd name is present (defaults filled)."""
    num_threads: int = 0
    teacher: TeacherInputs | None = None
    """Set for DISTILLATION only."""
    grader_config: Mapping[str, Any] | None = None
    """Set for REINFORCEMENT_FINE_TUNING only: ``rftConfig.graderConfig``, for :func:`tuneforge.graders.load_grader`."""
    grader_context: GraderContext | None = None
    """What loading that grader needs: sandbox limits, the registry, and how a judge model is called."""
    price_per_compute_hour: float = 1.0
    """For the cost figures of reports (``TUNEFORGE_PRICE_PER_COMPUTE_HOUR``)."""
    on_validation: Callable[[int, float], bool] | None = None
    """Set by automatic tuning for a trial: called with (epoch, validation loss) after each epoch
    but the last, by the recipes that validate per epoch; True = the trial is pruned, stop it."""


@dataclass
class RecipeResult:
    training_loss: float | None
    validation_losses: list[float] = field(default_factory=list)
    """One final validation loss per validator, in request order."""
    stopped: bool = False
    """True when the recipe returned early because ``reporter.should_stop()`` said so."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Artifact name -> path relative to ``output_dir`` or ``model_dir``, for the job record."""


class RecipeFailed(Exception):
    """A failure the user can act on (say, no usable data left); its message becomes the job's
    ``failureMessage`` as is, where any other exception is reported as an unexpected error."""


class JobReporter(Protocol):
    def stage(self, stage: Stage, status: StageStatus) -> None: ...

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
        """One optimizer step done: ``tokens_per_second`` counts real (non-padding) tokens since the
        run (re)started; ``mfu`` is model FLOPs utilisation over the same span, 0-1. ``extra``: a
        recipe's own figures of the step (reinforcement's reward and KL), shown with the others."""
        ...

    def data_progress(self, *, done: int, total: int, unit: str) -> None:
        """Progress of a dataProcessing stage that takes a while (a teacher answering prompts)."""
        ...

    def log(self, message: str) -> None: ...

    def should_stop(self) -> bool: ...


class Recipe(Protocol):
    customization_type: str

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult: ...
