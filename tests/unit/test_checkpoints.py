"""A damaged checkpoint costs a few steps, never the job: the previous one is kept and used instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.model.builtin import ensure_builtin
from tuneforge.recipes import get_recipe
from tuneforge.recipes.base import RecipeInputs
from tuneforge.recipes.checkpoints import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

MICRO = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-micro")


class Reporter:
    def __init__(self, stop_after_steps: int | None = None) -> None:
        self.stop_after_steps = stop_after_steps
        self.steps: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def stage(self, stage: str, status: str) -> None:
        pass

    def progress(self, **values: Any) -> None:
        self.steps.append(values)

    def data_progress(self, **values: Any) -> None:
        pass

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return self.stop_after_steps is not None and len(self.steps) >= self.stop_after_steps


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    ensure_builtin("forge-micro", root)
    return root


def inputs_in(root: Path, models_dir: Path) -> RecipeInputs:
    train, _ = make_classification_task(n_train=40, n_test=1, seed=0)
    return RecipeInputs(
        job_id="a1b2c3d4e5f6",
        customization_type="FINE_TUNING",
        base_model=MICRO,
        base_model_dir=ensure_builtin("forge-micro", models_dir),
        training_file=write_jsonl(root / "train.jsonl", train),
        validation_files=(),
        output_dir=root / "output",
        model_dir=root / "model",
        checkpoint_dir=root / "checkpoints",
        hyperparameters=resolve(
            fine_tuning_specs(), {"batchSize": "8", "epochCount": "2", "checkpointEverySteps": "3"}
        ),
        num_threads=1,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> list[float]:
    reporter = Reporter()
    get_recipe("FINE_TUNING").run(inputs_in(tmp_path_factory.mktemp("whole"), models_dir), reporter)
    return [float(step["loss"]) for step in reporter.steps]


def interrupted_after_seven_steps(root: Path, models_dir: Path) -> RecipeInputs:
    """Checkpoints at steps 6 (now the previous one) and 7 (the latest: a stop writes the step it reached,
    so that a paused job resumes from there)."""
    inputs = inputs_in(root, models_dir)
    assert get_recipe("FINE_TUNING").run(inputs, Reporter(stop_after_steps=7)).stopped
    assert {p.name for p in inputs.checkpoint_dir.iterdir()} == {CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE}
    return inputs


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, models_dir: Path, uninterrupted: list[float]
) -> None:
    inputs = interrupted_after_seven_steps(tmp_path, models_dir)
    (inputs.checkpoint_dir / CHECKPOINT_FILE).write_bytes(b"\x80\x02 this is not a checkpoint")
    resumed = Reporter()
    result = get_recipe("FINE_TUNING").run(inputs, resumed)
    assert not result.stopped
    assert any(m.startswith(f"checkpoint {CHECKPOINT_FILE} is unusable (") for m in resumed.messages), resumed.messages
    assert f"fell back to the previous checkpoint {PREVIOUS_CHECKPOINT_FILE} (step 6)" in resumed.messages
    assert [s["step"] for s in resumed.steps] == list(range(7, 11))
    torch.testing.assert_close(torch.tensor([float(s["loss"]) for s in resumed.steps]), torch.tensor(uninterrupted[6:]))


def test_with_no_usable_checkpoint_training_starts_over_and_says_so(
    tmp_path: Path, models_dir: Path, uninterrupted: list[float]
) -> None:
    inputs = interrupted_after_seven_steps(tmp_path, models_dir)
    (inputs.checkpoint_dir / CHECKPOINT_FILE).write_bytes(b"")
    (inputs.checkpoint_dir / PREVIOUS_CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated zip")
    restarted = Reporter()
    assert not get_recipe("FINE_TUNING").run(inputs, restarted).stopped
    assert "no usable checkpoint is left: training starts again from step 0" in restarted.messages
    assert [s["step"] for s in restarted.steps] == list(range(1, 11))
    torch.testing.assert_close(torch.tensor([float(s["loss"]) for s in restarted.steps]), torch.tensor(uninterrupted))
