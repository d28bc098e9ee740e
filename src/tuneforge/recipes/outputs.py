"""What a training job writes besides the model: the step-wise metrics CSV files."""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.jobs import layout
from tuneforge.model.folders import save_model
from tuneforge.recipes.base import RecipeInputs
from tuneforge.recipes.distributed import is_primary

TRAINING_METRICS_HEADER = ("step_number", "epoch_number", "training_loss", "perplexity")
PERFORMANCE_METRICS_HEADER = (
    "step_number",
    "epoch_number",
    "training_loss",
    "learning_rate",
    "tokens_per_second",
    "mfu",
)
VALIDATION_METRICS_HEADER = ("step_number", "epoch_number", "validation_loss", "perplexity")


class MetricsWriter:
    """Bedrock's metrics layout (:mod:`tuneforge.jobs.layout`) under ``output_dir``.

    Training: one row per optimizer step in ``training_artifacts/step_wise_training_metrics.csv``
    (``step_number`` from 0), Bedrock's four columns exactly; the same steps with learning rate,
    real tokens/s and MFU in ``step_wise_performance_metrics.csv`` beside it. Validation: after
    training, one row per validator, each validator in its own file.

    Under data parallelism only rank 0 writes (the others' calls do nothing): rank 0 reports the
    loss summed over all ranks.
    """

    def __init__(self, output_dir: Path, job_id: str) -> None:
        self.output_dir = output_dir
        self.root = output_dir / layout.job_folder(job_id)
        self.training_csv = self.root / layout.TRAINING_METRICS
        self.performance_csv = self.root / layout.PERFORMANCE_METRICS

    def validation_csv(self, validator: int) -> Path:
        return self.root / layout.validation_metrics(validator)

    def start_training(self, resumed_steps: int) -> None:
        """Create the training files, or keep only the rows of steps a resumed checkpoint covers."""
        if not is_primary():
            return
        for path, header in (
            (self.training_csv, TRAINING_METRICS_HEADER),
            (self.performance_csv, PERFORMANCE_METRICS_HEADER),
        ):
            rows: list[list[str]] = []
            if resumed_steps and path.exists():
                with path.open(newline="") as handle:
                    rows = [row for row in list(csv.reader(handle))[1:] if int(row[0]) < resumed_steps]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerows([list(header), *rows])

    def training_step(
        self,
        step_number: int,
        epoch: int,
        loss: float,
        *,
        learning_rate: float = 0.0,
        tokens_per_second: float = 0.0,
        mfu: float = 0.0,
    ) -> None:
        if not is_primary():
            return
        # Appended and closed per row: a killed worker leaves every finished step on disk.
        with self.training_csv.open("a", newline="") as handle:
            csv.writer(handle).writerow([step_number, epoch, f"{loss:.6f}", f"{_perplexity(loss):.6f}"])
        with self.performance_csv.open("a", newline="") as handle:
            csv.writer(handle).writerow(
                [step_number, epoch, f"{loss:.6f}", f"{learning_rate:.6g}", f"{tokens_per_second:.1f}", f"{mfu:.4f}"]
            )

    def validation(self, validator: int, step_number: int, epoch: int, loss: float) -> None:
        if not is_primary():
            return
        path = self.validation_csv(validator)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(VALIDATION_METRICS_HEADER)
            writer.writerow([step_number, epoch, f"{loss:.6f}", f"{_perplexity(loss):.6f}"])

    def relative(self, path: Path) -> str:
        """``path`` relative to the output folder, as recorded in :attr:`RecipeResult.artifacts`."""
        return path.relative_to(self.output_dir).as_posix()


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def save_trained_model(
    model: Any, tokenizer: Any, inputs: RecipeInputs, *, full: bool, data_format: str
) -> dict[str, str]:
    """:func:`tuneforge.model.folders.save_model` for a recipe's model, where its inputs say, with the
    format of the data it was trained on. Under data parallelism only rank 0 saves (the ranks hold
    the same weights); the others get no artifacts."""
    if not is_primary():
        return {}
    return save_model(
        model,
        tokenizer,
        inputs.model_dir,
        inputs.base_model,
        full=full,
        save_merged=bool(inputs.hyperparameters["saveMergedModel"]),
        data_format=data_format,
    )


CHECKPOINT_MODELS = "checkpoints"
KEPT_CHECKPOINT_MODELS = 3
"""As OpenAI keeps them: the models of the last three checkpoints (the final model is saved apart)."""


def checkpoint_models(
    tokenizer: Any, inputs: RecipeInputs, data_format: str, *, steps_per_epoch: int, epochs: int
) -> Callable[[int, Any], None]:
    """The training loop's ``on_checkpoint`` for a LoRA recipe: each checkpoint's adapter saved as a model.

    ``<model_dir>/checkpoints/step-<N>/`` is a model folder like the final one (adapter and manifest,
    a few MB), so a checkpoint is served the way the finished model is. Only checkpoints from
    ``from_step`` on are saved (the start of the last three epochs: saving a model
    at every epoch of a long run costs time for folders nobody keeps), and only the last
    :data:`KEPT_CHECKPOINT_MODELS` are kept.
    """

    from_step = steps_per_epoch * max(epochs - KEPT_CHECKPOINT_MODELS, 0) + 1

    def save(step: int, model: Any) -> None:
        if step < from_step:
            return
        root = inputs.model_dir / CHECKPOINT_MODELS
        save_model(
            model,
            tokenizer,
            root / f"step-{step}",
            inputs.base_model,
            full=False,
            save_merged=False,
            data_format=data_format,
        )
        steps = sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*") if p.name[5:].isdigit())
        for old in steps[:-KEPT_CHECKPOINT_MODELS]:
            shutil.rmtree(root / f"step-{old}", ignore_errors=True)

    return save
