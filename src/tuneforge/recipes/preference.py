"""FINE_TUNING on preference records: direct preference optimization (DPO, Rafailov et al., 2023).

A fine-tuning job whose training file holds preference records (a prompt, a preferred and a
non-preferred answer; :mod:`tuneforge.data.formats`) comes here from
:class:`~tuneforge.recipes.fine_tuning.FineTuningRecipe`. Read top to bottom: setup (base model,
LoRA or full) -> data (both answers rendered as supervised fine-tuning renders a conversation) ->
the reference model's margins -> train -> evaluate -> save.

The loss of a pair, with ``logp`` the summed log-probability of an answer's tokens (its end of
turn included) after the prompt::

    -logsigmoid(beta * ((logp_c - logp_r) - (ref_c - ref_r)))

**The reference model** is the base model: with LoRA, the same model with its adapters disabled
(peft's ``disable_adapter()``); in full training, the weights before the first update. Its
log-probabilities never change, so they are computed once, before training, for every training
and validation pair (what TRL's ``precompute_ref_log_probs`` does). That costs one forward pass per
pair instead of one per pair per epoch, and no frozen copy of the model is held in memory during
full training. A resumed job computes them again from the base weights, before its checkpoint is
loaded, so they are the same.

**Metrics.** Per step, besides Bedrock's loss columns: the mean reward margin
``beta * ((logp_c - ref_c) - (logp_r - ref_r))`` and the reward accuracy (the share of pairs whose
margin is positive), in ``training_artifacts/step_wise_preference_metrics.csv``. On each validator:
the same figures plus the **win rate** (the share of pairs where the trained model gives the
preferred answer the higher log-probability: ``logp_c > logp_r``) next to the base model's win rate,
in ``preference_metrics.csv`` beside Bedrock's validation metrics, whose ``validation_loss`` is the
held-out DPO loss. Under data parallelism the per-step figures are rank 0's share of each batch.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel

from tuneforge.data.formats import FORMAT_CONVERSATION, FORMAT_PREFERENCE
from tuneforge.jobs import layout
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.model.prompts import ChatTemplateError
from tuneforge.recipes.base import JobReporter, RecipeFailed, RecipeInputs, RecipeResult
from tuneforge.recipes.batching import collate_pairs, forward_inputs
from tuneforge.recipes.distributed import is_primary
from tuneforge.recipes.loop import EpochValidation, TrainingConfig, prepare_for_training, train
from tuneforge.recipes.outputs import MetricsWriter, checkpoint_models, save_trained_model
from tuneforge.recipes.performance import model_device
from tuneforge.recipes.tokenising import (
    IGNORE_INDEX,
    PreferencePair,
    conversation_rendering,
    data_format,
    encode_preference_file,
)

PREFERENCE_METRICS_HEADER = ("step_number", "epoch_number", "dpo_loss", "reward_margin", "reward_accuracy")
PREFERENCE_VALIDATION_HEADER = (
    "step_number",
    "epoch_number",
    "dpo_loss",
    "reward_margin",
    "reward_accuracy",
    "win_rate",
    "base_win_rate",
    "pairs",
)
_EVAL_BATCH_PAIRS = 16


def sequence_log_probs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row: the summed log-probability of its target tokens (labels not ``IGNORE_INDEX``)."""
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return -token_nll.sum(dim=-1)


def pair_margins(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``logp(preferred) - logp(non-preferred)`` per pair of a :func:`collate_pairs` batch."""
    log_probs = sequence_log_probs(model, batch)
    pairs = log_probs.shape[0] // 2
    return log_probs[:pairs] - log_probs[pairs:]


def dpo_losses(
    margins: torch.Tensor, reference_margins: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: DPO's loss and its reward margin ``beta * (margin - reference margin)``."""
    rewards = beta * (margins - reference_margins.to(margins.dtype))
    return -F.logsigmoid(rewards), rewards


@dataclass
class PreferenceStats:
    """Sums over pairs, to report means per step or per validator."""

    pairs: int = 0
    loss: float = 0.0
    reward_margin: float = 0.0
    reward_correct: int = 0
    wins: int = 0
    base_wins: int = 0

    def add(self, losses: torch.Tensor, rewards: torch.Tensor, margins: torch.Tensor, reference: torch.Tensor) -> None:
        self.pairs += int(losses.numel())
        self.loss += float(losses.sum())
        self.reward_margin += float(rewards.sum())
        self.reward_correct += int((rewards > 0).sum())
        self.wins += int((margins > 0).sum())
        self.base_wins += int((reference > 0).sum())

    def merge(self, other: PreferenceStats) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def mean(self, value: float) -> float:
        return value / self.pairs if self.pairs else math.nan

    @property
    def reward_accuracy(self) -> float:
        return self.mean(self.reward_correct)

    @property
    def win_rate(self) -> float:
        return self.mean(self.wins)

    @property
    def base_win_rate(self) -> float:
        return self.mean(self.base_wins)


class DpoLoss:
    """The :data:`~tuneforge.recipes.loop.LossFunction` of DPO over :func:`collate_pairs` batches.

    Returns the micro-batch's summed pair losses divided by the pairs in the whole batch (each
    pair is one target), so gradient accumulation gives the mean over the batch. Keeps the step's
    figures in :attr:`step` for :class:`PreferenceMetricsWriter`.
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.step = PreferenceStats()

    def __call__(self, model: Any, inputs: dict[str, torch.Tensor], batch_targets: int) -> torch.Tensor:
        margins = pair_margins(model, inputs)
        reference = inputs["reference_margins"]
        losses, rewards = dpo_losses(margins, reference, self.beta)
        self.step.add(losses.detach(), rewards.detach(), margins.detach(), reference)
        return losses.sum() / max(batch_targets, 1)


class PreferenceMetricsWriter(MetricsWriter):
    """Bedrock's metrics files, plus one row of DPO figures per step (see the module docstring),
    and a job-log line with each epoch's reward accuracy and margin (live, in the job's events)."""

    def __init__(self, output_dir: Path, job_id: str, loss: DpoLoss, reporter: JobReporter) -> None:
        super().__init__(output_dir, job_id)
        self.loss = loss
        self.reporter = reporter
        self.preference_csv = self.root / layout.PREFERENCE_TRAINING_METRICS
        self.epoch = PreferenceStats()
        self.epoch_number: int | None = None

    def log_epoch(self) -> None:
        """Log the figures of the epoch seen so far (from this run, if it resumed mid-epoch)."""
        if self.epoch_number is None or not self.epoch.pairs:
            return
        stats = self.epoch
        self.reporter.log(
            f"epoch {self.epoch_number + 1}: DPO loss {_loss(stats):.4f}, reward accuracy "
            f"{stats.reward_accuracy:.0%}, reward margin {stats.mean(stats.reward_margin):.4f} "
            f"over {stats.pairs} pairs"
        )
        self.epoch = PreferenceStats()

    def start_training(self, resumed_steps: int) -> None:
        super().start_training(resumed_steps)
        if not is_primary():
            return
        rows: list[list[str]] = []
        if resumed_steps and self.preference_csv.exists():
            with self.preference_csv.open(newline="") as handle:
                rows = [row for row in list(csv.reader(handle))[1:] if int(row[0]) < resumed_steps]
        self.preference_csv.parent.mkdir(parents=True, exist_ok=True)
        with self.preference_csv.open("w", newline="") as handle:
            csv.writer(handle).writerows([list(PREFERENCE_METRICS_HEADER), *rows])

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
        super().training_step(
            step_number, epoch, loss, learning_rate=learning_rate, tokens_per_second=tokens_per_second, mfu=mfu
        )
        stats, self.loss.step = self.loss.step, PreferenceStats()
        if epoch != self.epoch_number:
            self.log_epoch()
            self.epoch_number = epoch
        self.epoch.merge(stats)
        if not is_primary():
            return
        with self.preference_csv.open("a", newline="") as handle:
            csv.writer(handle).writerow(
                [
                    step_number,
                    epoch,
                    f"{loss:.6f}",
                    f"{stats.mean(stats.reward_margin):.6f}",
                    f"{stats.reward_accuracy:.4f}",
                ]
            )

    def preference_validation(self, validator: int, step_number: int, epoch: int, stats: PreferenceStats) -> Path:
        path = self.root / layout.preference_validation_metrics(validator)
        if is_primary():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(PREFERENCE_VALIDATION_HEADER)
                writer.writerow(
                    [
                        step_number,
                        epoch,
                        f"{stats.mean(stats.loss):.6f}",
                        f"{stats.mean(stats.reward_margin):.6f}",
                        f"{stats.reward_accuracy:.4f}",
                        f"{stats.win_rate:.4f}",
                        f"{stats.base_win_rate:.4f}",
                        stats.pairs,
                    ]
                )
        return path


def reference_model(model: Any) -> AbstractContextManager[Any]:
    """The reference model for DPO: the adapters disabled under LoRA; the model itself before any
    update in full training (which is when :func:`with_reference_margins` runs)."""
    if isinstance(model, PeftModel):
        context: AbstractContextManager[Any] = model.disable_adapter()
        return context
    return nullcontext()


@torch.no_grad()
def with_reference_margins(model: Any, pairs: Sequence[PreferencePair], pad_id: int) -> list[PreferencePair]:
    """``pairs`` with the reference model's margins filled in (see the module docstring)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    margins: list[float] = []
    with reference_model(model):
        for start in range(0, len(pairs), _EVAL_BATCH_PAIRS):
            batch = forward_inputs(collate_pairs(pairs[start : start + _EVAL_BATCH_PAIRS], pad_id), device)
            margins += pair_margins(model, batch).tolist()
    model.train(was_training)
    return [pair.with_reference(margin) for pair, margin in zip(pairs, margins, strict=True)]


@torch.no_grad()
def evaluate_pairs(model: Any, pairs: Sequence[PreferencePair], pad_id: int, beta: float) -> PreferenceStats:
    """DPO loss, reward margin and accuracy, and win rates of ``model`` on held-out pairs."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    stats = PreferenceStats()
    for start in range(0, len(pairs), _EVAL_BATCH_PAIRS):
        batch = forward_inputs(collate_pairs(pairs[start : start + _EVAL_BATCH_PAIRS], pad_id), device)
        margins = pair_margins(model, batch)
        reference = batch["reference_margins"]
        losses, rewards = dpo_losses(margins, reference, beta)
        stats.add(losses, rewards, margins, reference)
    model.train(was_training)
    return stats


class PreferenceTuning:
    """DPO for a FINE_TUNING job on preference data; called by the fine-tuning recipe."""

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        hp = inputs.hyperparameters
        config = TrainingConfig.from_hyperparameters(hp)
        full = hp["trainingMethod"] == "full"
        beta = float(hp["beta"])
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup: the base model and, unless full fine-tuning, LoRA adapters.
        model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        torch.manual_seed(config.seed)
        model = prepare_for_training(model, hp, reporter)
        reporter.log(f"preference data: training with DPO, beta {beta:g}")

        # Data: both answers of every pair after their prompt, rendered as supervised fine-tuning
        # renders a conversation; validation files must hold preference records too.
        reporter.stage("dataProcessing", "InProgress")
        reporter.log(conversation_rendering(tokenizer))
        for path in inputs.validation_files:
            if (found := data_format(path)) != FORMAT_PREFERENCE:
                raise RecipeFailed(
                    f"validation file {path.name} is in {found} format, but the training file holds preference "
                    "records; DPO validates on preference records, so use the preference format for both"
                )
        max_length = int(hp["maxSequenceLength"]) or int(model.config.max_position_embeddings)
        pad_id = tokenizer.pad_token_id
        try:
            pairs = encode_preference_file(inputs.training_file, tokenizer, max_length)
            validators = [encode_preference_file(path, tokenizer, max_length) for path in inputs.validation_files]
        except ChatTemplateError as exc:
            raise RecipeFailed(str(exc)) from exc
        pairs = with_reference_margins(model, pairs, pad_id)
        validators = [with_reference_margins(model, validator, pad_id) for validator in validators]
        reporter.log(f"{len(pairs):,} preference pairs; reference log-probabilities from the base model")
        reporter.stage("dataProcessing", "Completed")

        # Train; with a validation set, validate after each epoch and stop early once it stops improving.
        reporter.stage("training", "InProgress")
        loss = DpoLoss(beta)
        metrics = PreferenceMetricsWriter(inputs.output_dir, inputs.job_id, loss, reporter)

        def held_out_loss(model: Any, validator: Sequence[PreferencePair], pad_id: int) -> float:
            return _loss(evaluate_pairs(model, validator, pad_id, beta))

        epoch_end = (
            EpochValidation(
                validators[0],
                pad_id,
                reporter,
                patience=int(hp["earlyStoppingPatience"]),
                report=inputs.on_validation,
                measure=held_out_loss,
            )
            if validators
            else None
        )
        outcome = train(
            model,
            pairs,
            config,
            reporter,
            metrics,
            inputs.checkpoint_dir,
            pad_id=pad_id,
            loss_function=loss,
            epoch_end=epoch_end,
            collate_batch=collate_pairs,
            on_checkpoint=None
            if full
            else checkpoint_models(
                tokenizer,
                inputs,
                FORMAT_CONVERSATION,
                steps_per_epoch=math.ceil(len(pairs) / config.batch_size),
                epochs=config.epochs,
            ),
        )
        metrics.log_epoch()
        if outcome.stopped:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=outcome.final_loss, stopped=True)
        reporter.log(
            f"trained {outcome.steps} steps in {outcome.seconds:.1f}s, "
            f"{outcome.tokens_seen:,} tokens, final DPO loss {outcome.final_loss:.4f}"
        )

        # Evaluate: the held-out DPO loss as Bedrock's validation loss, and DPO's own figures beside it.
        artifacts = {
            "trainingMetrics": metrics.relative(metrics.training_csv),
            "performanceMetrics": metrics.relative(metrics.performance_csv),
            "preferenceMetrics": metrics.relative(metrics.preference_csv),
        }
        validation_losses: list[float] = []
        step, epoch = outcome.steps - 1, outcome.epochs_done - 1
        for index, validator in enumerate(validators):
            stats = evaluate_pairs(model, validator, pad_id, beta)
            metrics.validation(index, step, epoch, _loss(stats))
            path = metrics.preference_validation(index, step, epoch, stats)
            validation_losses.append(_loss(stats))
            artifacts[f"validationMetrics{index}"] = metrics.relative(metrics.validation_csv(index))
            artifacts[f"preferenceValidationMetrics{index}"] = metrics.relative(path)
            reporter.log(
                f"validator {index}: {stats.pairs} pairs, DPO loss {_loss(stats):.4f}, reward accuracy "
                f"{stats.reward_accuracy:.0%}, win rate {stats.win_rate:.0%} (base model {stats.base_win_rate:.0%})"
            )
        reporter.stage("training", "Completed")

        # Save: served as a conversation model, as the pairs were rendered.
        artifacts.update(save_trained_model(model, tokenizer, inputs, full=full, data_format=FORMAT_CONVERSATION))
        return RecipeResult(training_loss=outcome.final_loss, validation_losses=validation_losses, artifacts=artifacts)


def _loss(stats: PreferenceStats) -> float:
    return stats.mean(stats.loss)
