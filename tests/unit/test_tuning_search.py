"""The search driver (tuneforge.recipes.tuning) with a stand-in recipe: pruning, failures, Stop, the CSV.

The recipe here is a function of the sampled learning rate, so the tests see the driver's decisions
without training anything; tests/e2e/test_hyperparameter_tuning.py runs real trials.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve
from tuneforge.catalog.models import BUILTIN_MODELS, FINE_TUNING
from tuneforge.catalog.tuning import split
from tuneforge.recipes.base import JobReporter, RecipeInputs, RecipeResult, Stage, StageStatus
from tuneforge.recipes.loop import EpochValidation
from tuneforge.recipes.tokenising import Example
from tuneforge.recipes.tuning import TrialRecord, holdout_split, search_trials, write_trials_csv


@dataclass
class Reporter:
    messages: list[str] = field(default_factory=list)
    stop: bool = False

    def stage(self, stage: Stage, status: StageStatus) -> None:
        raise AssertionError("a trial must not change the job's stages")

    def progress(self, **values: Any) -> None:
        return None

    def data_progress(self, *, done: int, total: int, unit: str) -> None:
        return None

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return self.stop


@dataclass
class LossOfLearningRate:
    """Validation loss |log10(lr) + 3| + 1/(epoch+1): best near 1e-3, falling each epoch."""

    customization_type: str = FINE_TUNING
    epochs_run: list[int] = field(default_factory=list)
    fail_above: float = math.inf
    stop_after_trials: int | None = None
    reporter: Reporter | None = None

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        lr = float(inputs.hyperparameters["learningRate"])
        if lr > self.fail_above:
            raise RuntimeError("diverged")
        assert inputs.on_validation is not None and inputs.validation_files
        epochs = int(inputs.hyperparameters["epochCount"])
        ran = epochs
        for epoch in range(epochs - 1):
            if self.reporter is not None and self.stop_after_trials == len(self.epochs_run):
                self.reporter.stop = True
            if reporter.should_stop():
                self.epochs_run.append(epoch)
                return RecipeResult(training_loss=None, stopped=True)
            if inputs.on_validation(epoch, abs(math.log10(lr) + 3) + 1 / (epoch + 1)):
                ran = epoch + 1
                break
        self.epochs_run.append(ran)
        return RecipeResult(training_loss=1.0, validation_losses=[abs(math.log10(lr) + 3) + 1 / ran])


def inputs(tmp_path: Path, raw: dict[str, str]) -> tuple[RecipeInputs, Any]:
    plain, search = split(fine_tuning_specs(), raw)
    training = tmp_path / "train.jsonl"
    training.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": " c"}) + "\n" for i in range(20)))
    base = next(m for m in BUILTIN_MODELS if m.model_id.startswith("tuneforge.forge-micro"))
    recipe_inputs = RecipeInputs(
        job_id="job",
        customization_type=FINE_TUNING,
        base_model=base,
        base_model_dir=tmp_path,
        training_file=training,
        validation_files=(),
        output_dir=tmp_path / "out",
        model_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "ckpt",
        hyperparameters=resolve(fine_tuning_specs(), plain),
    )
    return recipe_inputs, search


def test_trials_find_the_best_learning_rate_prune_bad_ones_and_write_the_csv(tmp_path: Path) -> None:
    recipe_inputs, search = inputs(tmp_path, {"learningRate": "1e-5..1e-1", "epochCount": "6", "tuningTrials": "8"})
    recipe = LossOfLearningRate()
    seen: list[int] = []
    outcome = search_trials(
        recipe, recipe_inputs, search, Reporter(), tmp_path / "tuning", lambda r: seen.append(len(r))
    )
    assert seen == list(range(1, 9)) and not outcome.stopped
    states = [t.state for t in outcome.trials]
    assert "pruned" in states and states[:2] == ["complete", "complete"]
    assert all(epochs < 6 for epochs, state in zip(recipe.epochs_run, states, strict=True) if state == "pruned")
    assert outcome.best is not None
    complete = [t for t in outcome.trials if t.state == "complete"]
    assert outcome.best.validation_loss == min(t.validation_loss or math.inf for t in complete)
    write_trials_csv(tmp_path / "trials.csv", outcome.trials)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["state"] for r in rows] == states
    assert json.loads(rows[0]["params"]).keys() == {"learningRate"}


def test_a_trial_that_raises_is_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    recipe_inputs, search = inputs(tmp_path, {"learningRate": "1e-5..1e-1", "tuningTrials": "4"})
    outcome = search_trials(
        LossOfLearningRate(fail_above=1e-3), recipe_inputs, search, Reporter(), tmp_path / "t", lambda r: None
    )
    assert len(outcome.trials) == 4
    failed = [t for t in outcome.trials if t.state == "failed"]
    assert failed and all("diverged" in t.message for t in failed)


def test_stop_ends_the_running_trial_and_runs_no_later_one(tmp_path: Path) -> None:
    recipe_inputs, search = inputs(tmp_path, {"learningRate": "auto", "epochCount": "6", "tuningTrials": "5"})
    reporter = Reporter()
    recipe = LossOfLearningRate(stop_after_trials=1, reporter=reporter)
    outcome = search_trials(recipe, recipe_inputs, search, reporter, tmp_path / "t", lambda r: None)
    assert outcome.stopped
    assert [t.state for t in outcome.trials] == ["complete", "stopped"]


def test_without_a_validation_set_a_tenth_is_held_out_for_the_trials(tmp_path: Path) -> None:
    recipe_inputs, _ = inputs(tmp_path, {})
    train, validation = holdout_split(recipe_inputs.training_file, tmp_path / "split", seed=1)
    assert (len(train.read_text().splitlines()), len(validation.read_text().splitlines())) == (18, 2)
    assert set(train.read_text().splitlines()).isdisjoint(validation.read_text().splitlines())


def test_records_serialise_for_the_job_record() -> None:
    record = TrialRecord(3, {"learningRate": 0.001}, "complete", 0.5, 1.234)
    assert record.as_dict() == {
        "trialNumber": 3,
        "hyperParameters": {"learningRate": "0.001"},
        "state": "complete",
        "validationLoss": 0.5,
        "durationSeconds": 1.23,
    }


class ScriptedLoss(torch.nn.Module):
    """A "model" whose validation loss is a script and whose one weight records which epoch it is from."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses = iter(losses)

    def forward(self, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(loss=torch.tensor(next(self.losses)))


def test_early_stopping_ends_after_patience_epochs_without_improvement_and_keeps_the_best_weights() -> None:
    model = ScriptedLoss([1.0, 0.5, 0.6, 0.7, 0.4])
    reporter = Reporter()
    hook = EpochValidation([Example([1, 2, 3], [-100, 2, 3])], pad_id=0, reporter=reporter, patience=2)
    verdicts = []
    for epoch in range(4):
        with torch.no_grad():
            model.weight.fill_(epoch)
        verdicts.append(hook(epoch, model))
    assert verdicts == [False, False, False, True]
    assert float(model.weight) == 1.0  # epoch 2's weights (index 1): the best validation loss, 0.5
    assert reporter.messages[-1].startswith("early stopping after epoch 4: validation loss 0.5000")


def test_a_pruned_trial_stops_at_once_and_patience_zero_never_stops() -> None:
    reports: list[tuple[int, float]] = []
    pruning = EpochValidation(
        [Example([1, 2], [-100, 2])],
        pad_id=0,
        reporter=Reporter(),
        patience=0,
        report=lambda epoch, loss: reports.append((epoch, loss)) or epoch == 1,
    )
    model = ScriptedLoss([3.0, 4.0, 5.0])
    assert [pruning(0, model), pruning(1, model)] == [False, True]
    assert reports == [(0, 3.0), (1, 4.0)]
