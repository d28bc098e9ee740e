"""Automatic hyperparameter tuning inside a job: Optuna trials of the job's own recipe.

The request (:mod:`tuneforge.catalog.tuning`) names the searched hyperparameters and the budget.
Each trial is a real, complete run of the same recipe on the job's data with one sampled
configuration, scored by the validation loss of its last epoch. The sampler is TPE with the job's
seed, so the same job searches the same way every time; the pruner is Optuna's median pruner on
the validation loss each epoch reports (the recipes that validate per epoch: FINE_TUNING), so a
trial that is worse than the median of earlier ones at the same epoch ends there.

Without a validation set in the request, a tenth of the training records (at least one, seeded
shuffle) is held out as the trials' validation split; the final run, with the best configuration,
trains on every training record. The study lives in memory: it is one job's and ends with it.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from tuneforge.catalog.hyperparameters import HyperParameterValue
from tuneforge.catalog.tuning import HOLDOUT_FRACTION, PRUNER_STARTUP_TRIALS, SearchSpace, TuningRequest
from tuneforge.recipes.base import JobReporter, Recipe, RecipeFailed, RecipeInputs, Stage, StageStatus


@dataclass
class TrialRecord:
    number: int
    params: dict[str, HyperParameterValue]
    state: str
    """complete, pruned, failed, or stopped (the job's Stop ended it)."""
    validation_loss: float | None
    seconds: float
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "trialNumber": self.number,
            "hyperParameters": {k: str(v) for k, v in self.params.items()},
            "state": self.state,
            "validationLoss": self.validation_loss,
            "durationSeconds": round(self.seconds, 2),
            **({"message": self.message} if self.message else {}),
        }


@dataclass
class SearchOutcome:
    trials: list[TrialRecord]
    best: TrialRecord | None
    stopped: bool


class _TrialReporter:
    """The job's reporter as one trial sees it: logs and progress go through, stage changes do not
    (the job is in its training stage throughout), and stop means the job's Stop, the time budget,
    or this trial pruned."""

    def __init__(self, parent: JobReporter, trial: optuna.Trial, number: int, deadline: float) -> None:
        self.parent = parent
        self.trial = trial
        self.number = number
        self.deadline = deadline
        self.pruned = False
        self.out_of_time = False
        self.last_loss: float | None = None

    def stage(self, stage: Stage, status: StageStatus) -> None:
        return None

    def progress(self, **kwargs: Any) -> None:
        self.parent.progress(**kwargs)

    def data_progress(self, *, done: int, total: int, unit: str) -> None:
        self.parent.data_progress(done=done, total=total, unit=unit)

    def log(self, message: str) -> None:
        self.parent.log(f"trial {self.number}: {message}")

    def should_stop(self) -> bool:
        if time.monotonic() > self.deadline:
            self.out_of_time = True
        return self.pruned or self.out_of_time or self.parent.should_stop()

    def report(self, epoch: int, loss: float) -> bool:
        self.trial.report(loss, epoch)
        self.last_loss = loss
        self.pruned = self.trial.should_prune()
        return self.pruned


def _sample(trial: optuna.Trial, space: SearchSpace) -> HyperParameterValue:
    if space.choices:
        choice = trial.suggest_categorical(space.name, list(space.choices))
        assert choice is not None  # the choices are parsed values, never None
        return choice
    if space.kind == "int":
        return trial.suggest_int(space.name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(space.name, space.low, space.high, log=space.log)


def holdout_split(training_file: Path, folder: Path, seed: int) -> tuple[Path, Path]:
    """Training and validation files for the trials when the request has no validation set."""
    lines = [line for line in training_file.read_text(encoding="utf-8").split("\n") if line.strip()]
    if len(lines) < 2:
        raise RecipeFailed(
            "Automatic tuning needs at least 2 training records to hold one out for validation, or a "
            "validation set (validationDataConfig)"
        )
    random.Random(seed).shuffle(lines)
    held = max(1, round(len(lines) * HOLDOUT_FRACTION))
    folder.mkdir(parents=True, exist_ok=True)
    train, validation = folder / "trial-train.jsonl", folder / "trial-validation.jsonl"
    train.write_text("\n".join(lines[held:]) + "\n", encoding="utf-8")
    validation.write_text("\n".join(lines[:held]) + "\n", encoding="utf-8")
    return train, validation


def search_trials(
    recipe: Recipe,
    inputs: RecipeInputs,
    request: TuningRequest,
    reporter: JobReporter,
    work_dir: Path,
    on_trial: Callable[[list[TrialRecord]], None],
) -> SearchOutcome:
    """Run the trials; ``on_trial`` gets the list so far after each, for the job's record and events."""
    seed = int(inputs.hyperparameters["seed"])
    if inputs.validation_files:
        train_file, validation_file = inputs.training_file, inputs.validation_files[0]
        reporter.log("tuning: trials are scored on the first validation set")
    else:
        train_file, validation_file = holdout_split(inputs.training_file, work_dir, seed)
        reporter.log(
            f"tuning: no validation set, so {HOLDOUT_FRACTION:.0%} of the training records are held out to "
            "score the trials; the final run trains on all of them"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0),
    )
    deadline = time.monotonic() + request.time_budget_minutes * 60
    records: list[TrialRecord] = []
    stopped = False
    for number in range(request.trials):
        if reporter.should_stop():
            stopped = True
            break
        if time.monotonic() >= deadline:
            reporter.log(f"tuning: time budget of {request.time_budget_minutes} min spent after {number} trials")
            break
        trial = study.ask()
        params = {space.name: _sample(trial, space) for space in request.spaces}
        trial_reporter = _TrialReporter(reporter, trial, number, deadline)
        folder = work_dir / f"trial-{number}"
        trial_inputs = replace(
            inputs,
            hyperparameters={**inputs.hyperparameters, **params},
            training_file=train_file,
            validation_files=(validation_file,),
            output_dir=folder / "output",
            model_dir=folder / "model",
            checkpoint_dir=folder / "checkpoints",
            on_validation=trial_reporter.report,
        )
        reporter.log(f"trial {number}: {json.dumps({k: str(v) for k, v in params.items()})}")
        started = time.monotonic()
        record = TrialRecord(number, params, "failed", None, 0.0)
        try:
            result = recipe.run(trial_inputs, trial_reporter)
        except Exception as exc:  # a configuration that cannot train is a failed trial, not a failed job
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record.message = f"{type(exc).__name__}: {exc}"[:500]
        else:
            loss = result.validation_losses[0] if result.validation_losses else None
            if trial_reporter.pruned or trial_reporter.out_of_time:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                record.state = "pruned"
                record.validation_loss = trial_reporter.last_loss
                record.message = "pruned" if trial_reporter.pruned else "time budget spent"
            elif result.stopped:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                record.state = "stopped"
                stopped = True
            elif loss is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                record.message = "no validation loss"
            else:
                study.tell(trial, loss)
                record.state, record.validation_loss = "complete", loss
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        record.seconds = time.monotonic() - started
        records.append(record)
        reporter.log(
            f"trial {number}: {record.state}"
            + (f", validation loss {record.validation_loss:.4f}" if record.validation_loss is not None else "")
            + (f" ({record.message})" if record.message else "")
        )
        on_trial(records)
        if stopped:
            break
    complete = [r for r in records if r.state == "complete" and r.validation_loss is not None]
    best = min(complete, key=lambda r: (r.validation_loss, r.number)) if complete else None
    return SearchOutcome(trials=records, best=best, stopped=stopped)


def write_trials_csv(path: Path, records: list[TrialRecord]) -> None:
    """``tuning_trials.csv``: one row a trial; params as a JSON object so any searched set fits one column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_number", "params", "validation_loss", "state", "duration_seconds"])
        for r in records:
            writer.writerow(
                [
                    r.number,
                    json.dumps({k: v for k, v in r.params.items()}, sort_keys=True),
                    "" if r.validation_loss is None else f"{r.validation_loss:.6f}",
                    r.state,
                    f"{r.seconds:.2f}",
                ]
            )
