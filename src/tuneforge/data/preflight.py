"""Pre-flight checks shared by job workers and ``tuneforge data validate``.

Resolves the model's tokenizer and limits, runs the validator with the right quotas and, for the
CLI, adds the time and cost estimate for the given hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.catalog.hyperparameters import HyperParameterError, resolve
from tuneforge.catalog.models import CONTINUED_PRE_TRAINING, REINFORCEMENT_FINE_TUNING, FoundationModel, TokenLimits
from tuneforge.data.estimate import estimate_training
from tuneforge.data.validate import ValidationReport, validate_file
from tuneforge.errors import ValidationException
from tuneforge.settings import Settings

if TYPE_CHECKING:
    from tuneforge.services import Services


def validate_dataset(
    settings: Settings,
    model: FoundationModel,
    path: Path,
    customization_type: str,
    count_tokens: Callable[[str], int],
    *,
    is_validation: bool = False,
    max_sequence_length: int = 0,
) -> ValidationReport:
    limits = model.limits
    if customization_type == REINFORCEMENT_FINE_TUNING:
        # maxSequenceLength carries maxPromptLength here: a prompt is all input, and the answers are sampled.
        prompt_limit = min(limits.max_input_tokens, max_sequence_length or limits.max_input_tokens)
        limits = TokenLimits(prompt_limit, limits.max_output_tokens, limits.max_total_tokens)
        max_sequence_length = 0
    # For continued pre-training maxSequenceLength is the chunk length: longer documents are split,
    # so it limits nothing here.
    if customization_type != CONTINUED_PRE_TRAINING and 0 < max_sequence_length < limits.max_total_tokens:
        limits = TokenLimits(
            max_input_tokens=min(limits.max_input_tokens, max_sequence_length),
            max_output_tokens=min(limits.max_output_tokens, max_sequence_length),
            max_total_tokens=max_sequence_length,
        )
    return validate_file(
        path,
        customization_type=customization_type,
        limits=limits,
        count_tokens=count_tokens,
        max_records=settings.max_validation_records if is_validation else settings.max_training_records,
        max_bytes=settings.max_validation_file_bytes if is_validation else settings.max_training_file_bytes,
    )


def preflight_report(
    services: Services,
    file: Path,
    model_id: str,
    customization_type: str,
    raw_hyperparameters: dict[str, str],
    model_dir: Callable[[FoundationModel], Path],
    counter: Callable[[Path], Callable[[str], int]],
) -> dict[str, Any]:
    """``model_dir`` resolves the model to a local folder (for its tokenizer); it is passed in because
    building a built-in model needs torch, which this module does not import. ``counter`` turns that
    folder into a token counter: transformers' tokenizer in the CLI
    (:func:`tuneforge.model.loading.token_counter`), the ``tokenizers`` library in the API process,
    where importing transformers would import torch."""
    model = services.catalog.get(model_id)
    if customization_type not in model.customizations:
        raise ValidationException(
            f"{model.model_id} does not support {customization_type}; it supports {', '.join(model.customizations)}"
        )
    try:
        hyper = resolve(model.hyperparameter_specs(customization_type), raw_hyperparameters)
    except HyperParameterError as exc:
        raise ValidationException(str(exc)) from None
    if not file.is_file():
        raise ValidationException(f"{file} does not exist")
    count_tokens = counter(model_dir(model))
    report = validate_dataset(
        services.settings,
        model,
        file,
        customization_type,
        count_tokens,
        max_sequence_length=int(hyper.get("maxSequenceLength", hyper.get("maxPromptLength", 0))),
    )
    result: dict[str, Any] = {"report": report.to_dict()}
    if report.ok and model.parameter_count:
        estimate = estimate_training(
            report,
            parameter_count=model.parameter_count,
            hyperparameters=hyper,
            price_per_hour=services.settings.price_per_compute_hour,
        )
        result["estimate"] = asdict(estimate)
    if report.ok:
        planned = services.jobs.planner.preview(model, hyper, report.max_record_tokens)
        if planned is not None:
            result["memory"] = planned
    return result
