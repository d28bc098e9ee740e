"""REINFORCEMENT_FINE_TUNING: GRPO, the model learning from grades of its own sampled answers.

Read top to bottom:

1. **setup**: the grader (:func:`tuneforge.graders.load_grader` of the job's ``graderConfig``), the
   base model with LoRA adapters (or trained in full), and the reference it is kept close to: the
   same model with its adapters switched off, or a frozen copy under full training.
2. **dataProcessing**: the prompts (:func:`tuneforge.data.formats.parse_rft_prompt`), each rendered
   exactly as serving renders a Converse request (:func:`tuneforge.model.prompts.serving_prompt`: the
   model's chat template, or the plain one), with the record's other fields kept for the grader.
3. **training**, one optimizer step per ``batchSize`` prompts:

   - *sample*: ``trainingSamplePerPrompt`` answers per prompt, up to ``inferenceMaxTokens`` tokens, at
     ``samplingTemperature``, through the engines' continuous batcher
     (:func:`tuneforge.engine.offline.sample_answers`): every answer is a row of one batch, with the
     engines' stop rules, so an answer is sampled as it would be served;
   - *grade*: every answer, with its prompt and the record's fields (:class:`tuneforge.graders.Sample`).
     A grade the grader failed to give (it raised, timed out, returned garbage) counts as a failure
     and takes no part in the step; failures are counted and reported; a step on which every
     answer failed ends the job with the grader's error;
   - *advantages*, relative to the prompt's group: ``(reward - group mean) / (group std + eps)``; a
     group whose answers all scored the same teaches nothing and gets 0;
   - *loss*, per answer, averaged over its own tokens (a long answer weighs no more than a short one)
     and then over the answers: ``-advantage * log p(token)`` plus ``klCoefficient`` times the KL to
     the reference, estimated per token as ``exp(ref - logp) - (ref - logp) - 1`` (Schulman's k3: never
     negative, unbiased). One update per batch of samples, so the policy ratio of PPO's clipped
     objective is 1 and the objective reduces to this policy gradient.

   Checkpoints, stop and resume work as in the other recipes (:mod:`tuneforge.recipes.checkpoints`):
   a resumed job continues from its last checkpoint with the same prompt order and sampling seeds.
4. **evaluate**: with a validation set, every ``evalInterval`` steps and after the last, the mean
   reward of greedy answers to the validation prompts.
5. **save**: as fine-tuning saves, as a conversation model (it was trained on the chat rendering).

Written beside the Bedrock metrics CSVs (:mod:`tuneforge.jobs.layout`): reward mean and spread,
grader failures, KL, loss and the sampling time of every step; the mean reward by reference answer
per step; and a summary report.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from tuneforge.catalog.hyperparameters import HyperParameterValue
from tuneforge.catalog.models import REINFORCEMENT_FINE_TUNING
from tuneforge.data.formats import FORMAT_CONVERSATION, RftPrompt, parse_rft_prompt
from tuneforge.engine.offline import SampledAnswer, offline_batcher, sample_answers
from tuneforge.graders import Grade, Grader, GraderConfigError, Sample, load_grader
from tuneforge.jobs import layout
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.model.prompts import ChatTemplateError, serving_prompt
from tuneforge.recipes.base import JobReporter, RecipeFailed, RecipeInputs, RecipeResult
from tuneforge.recipes.batching import collate, forward_inputs
from tuneforge.recipes.checkpoints import load_checkpoint, save_checkpoint
from tuneforge.recipes.loop import prepare_for_training
from tuneforge.recipes.outputs import MetricsWriter, save_trained_model
from tuneforge.recipes.performance import FlopCounter, autocast, model_device, peak_flops, resolve_precision
from tuneforge.recipes.tokenising import IGNORE_INDEX, Example, read_jsonl

ADVANTAGE_EPS = 1e-4
"""Added to a group's reward spread, so a group with one odd answer out does not get huge advantages."""
MAX_REFERENCES = 50
"""Reward by reference answer is written when the prompts have at most this many distinct references."""
REWARD_COLUMNS = (
    "step_number",
    "epoch_number",
    "reward_mean",
    "reward_std",
    "samples",
    "grader_failures",
    "kl",
    "loss",
    "learning_rate",
    "sampling_seconds",
    "grading_seconds",
    "update_seconds",
)


@dataclass(frozen=True)
class RftSettings:
    """The hyperparameters this recipe reads, typed once."""

    epochs: int
    batch_size: int
    """Prompts per optimizer step."""
    samples: int
    """Answers sampled per prompt."""
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    micro_batches: int
    """Pieces the step's answers are split into for the forward and backward passes (memory)."""
    seed: int
    checkpoint_every_steps: int
    precision: str
    max_tokens: int
    temperature: float
    kl_coefficient: float
    eval_interval: int
    full_training: bool
    max_grad_norm: float = 1.0

    @classmethod
    def from_hyperparameters(cls, values: Mapping[str, HyperParameterValue]) -> RftSettings:
        return cls(
            epochs=int(values["epochCount"]),
            batch_size=int(values["batchSize"]),
            samples=int(values["trainingSamplePerPrompt"]),
            learning_rate=float(values["learningRate"]),
            warmup_steps=int(values["learningRateWarmupSteps"]),
            weight_decay=float(values["weightDecay"]),
            micro_batches=int(values["gradientAccumulationSteps"]),
            seed=int(values["seed"]),
            checkpoint_every_steps=int(values["checkpointEverySteps"]),
            precision=str(values["precision"]),
            max_tokens=int(values["inferenceMaxTokens"]),
            temperature=float(values["samplingTemperature"]),
            kl_coefficient=float(values["klCoefficient"]),
            eval_interval=int(values["evalInterval"]),
            full_training=values["trainingMethod"] == "full",
        )


@dataclass(frozen=True)
class RftPromptIds:
    """One prompt as the model is fed it, and what the grader reads about it."""

    line: int
    prompt: RftPrompt
    ids: list[int]
    strip_leading_space: bool

    @property
    def reference(self) -> str | None:
        value = self.prompt.item.get("reference_answer")
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def sample(self, response: str) -> Sample:
        messages = ((("system", self.prompt.system),) if self.prompt.system else ()) + self.prompt.turns
        return Sample(messages=messages, response=response, item=self.prompt.item)


def conversation(prompt: RftPrompt) -> dict[str, Any]:
    """The prompt as a Converse request carries it (``system`` blocks, text content blocks)."""
    data: dict[str, Any] = {"messages": [{"role": role, "content": [{"text": text}]} for role, text in prompt.turns]}
    if prompt.system:
        data["system"] = [{"text": prompt.system}]
    return data


def read_prompts(path: Path, tokenizer: Any) -> list[RftPromptIds]:
    """The validated prompt records of ``path``, rendered for ``tokenizer`` as serving renders them."""
    prompts = []
    for line, record in enumerate(read_jsonl(path), start=1):
        parsed = parse_rft_prompt(record)
        rendered = serving_prompt(tokenizer, conversation=conversation(parsed))
        prompts.append(RftPromptIds(line, parsed, rendered.ids, rendered.strip_leading_space))
    return prompts


def group_advantages(grades: Sequence[Grade]) -> list[float]:
    """``(reward - mean) / (std + eps)`` over the group's graded answers; 0 for failed grades, and for
    every answer of a group with fewer than two grades or no spread (nothing to prefer)."""
    scores = [g.score for g in grades if g.score is not None]
    if len(scores) < 2:
        return [0.0] * len(grades)
    mean = statistics.fmean(scores)
    std = statistics.pstdev(scores)
    if std == 0.0:
        return [0.0] * len(grades)
    return [0.0 if g.score is None else (g.score - mean) / (std + ADVANTAGE_EPS) for g in grades]


def sequence_log_probs(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probability of every target token (``labels``), 0 where the label is ignored; shape (rows, T-1).

    The output layer runs only over the positions from the first answer token to the last in any
    row (``logits_to_keep``): the prompts, most of every row, need no vocabulary-wide logits.
    """
    labels = inputs["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    columns = mask.any(0).nonzero().flatten()
    result = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if columns.numel() == 0:
        return result
    first, last = int(columns[0]), int(columns[-1]) + 1
    keep = torch.arange(first, last, device=labels.device)
    logits = model(input_ids=inputs["input_ids"], use_cache=False, logits_to_keep=keep).logits.float()
    window = labels[:, first:last]
    picked = -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), window.clamp(min=0).reshape(-1), reduction="none"
    ).view(window.shape)
    result[:, first:last] = picked * mask[:, first:last]
    return result


def grpo_loss(
    log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    kl_coefficient: float,
    total_answers: int,
    copies: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this micro-batch's share of the step's loss, its summed per-answer KL), both / ``total_answers``.

    Per answer: ``mean over its tokens of (-advantage * logp + beta * k3)``, where
    ``k3 = exp(ref - logp) - (ref - logp) - 1``; ``logp`` carries the gradient, ``ref`` does not.
    The shares of the micro-batches add up to the mean over every answer of the step.

    A row may stand for ``copies`` identical answers to its prompt: its ``advantages`` entry is then
    their summed advantage, and its KL counts ``copies`` times, which is exactly the loss of the copies.
    """
    tokens = mask.sum(1).clamp(min=1)
    difference = (reference_log_probs - log_probs) * mask
    kl = (torch.exp(difference) - difference - 1.0) * mask
    if copies is not None:
        kl = kl * copies[:, None]
    policy = -(advantages[:, None] * log_probs * mask)
    per_answer = (policy + kl_coefficient * kl).sum(1) / tokens
    kl_per_answer = kl.sum(1) / tokens
    return per_answer.sum() / total_answers, kl_per_answer.detach().sum() / total_answers


class ReinforcementFineTuningRecipe:
    customization_type = REINFORCEMENT_FINE_TUNING

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        hp = inputs.hyperparameters
        settings = RftSettings.from_hyperparameters(hp)
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup: the grader, the model with its adapters, and the reference.
        try:
            grader = load_grader(inputs.grader_config or {}, inputs.grader_context)
        except GraderConfigError as exc:
            raise RecipeFailed(f"Invalid graderConfig: {exc}") from exc
        model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        torch.manual_seed(settings.seed)
        reference = copy.deepcopy(model).eval().requires_grad_(False) if settings.full_training else None
        model = prepare_for_training(model, hp, reporter)
        if reference is not None:
            reference.to(model_device(model))

        # Data processing: prompts rendered as served.
        reporter.stage("dataProcessing", "InProgress")
        try:
            prompts = read_prompts(inputs.training_file, tokenizer)
            validation = [p for path in inputs.validation_files[:1] for p in read_prompts(path, tokenizer)]
        except ChatTemplateError as exc:
            raise RecipeFailed(str(exc)) from exc
        reporter.log(
            f"{len(prompts):,} training prompts, {len(validation):,} validation prompts; grader {grader.name}; "
            f"{settings.samples} answers per prompt of up to {settings.max_tokens} tokens at temperature "
            f"{settings.temperature:g}; KL coefficient {settings.kl_coefficient:g}"
        )
        reporter.stage("dataProcessing", "Completed")

        reporter.stage("training", "InProgress")
        trainer = GrpoTrainer(model, reference, tokenizer, grader, settings, reporter, inputs)
        outcome = trainer.train(prompts, validation)
        if outcome is None:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=trainer.last_loss, stopped=True)
        reporter.log(outcome["summary"])
        reporter.stage("training", "Completed")

        artifacts = {
            "trainingMetrics": trainer.metrics.relative(trainer.metrics.training_csv),
            "performanceMetrics": trainer.metrics.relative(trainer.metrics.performance_csv),
            **trainer.artifacts(),
        }
        artifacts.update(
            save_trained_model(model, tokenizer, inputs, full=settings.full_training, data_format=FORMAT_CONVERSATION)
        )
        return RecipeResult(training_loss=trainer.last_loss, artifacts=artifacts)


class GrpoTrainer:
    """The GRPO loop: sample -> grade -> advantages -> one update, per ``batchSize`` prompts."""

    def __init__(
        self,
        model: Any,
        reference: Any,
        tokenizer: Any,
        grader: Grader,
        settings: RftSettings,
        reporter: JobReporter,
        inputs: RecipeInputs,
    ) -> None:
        self.model = model
        self.reference = reference
        self.tokenizer = tokenizer
        self.grader = grader
        self.settings = settings
        self.reporter = reporter
        self.inputs = inputs
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = model_device(model)
        self.precision = resolve_precision(settings.precision, self.device)
        self.metrics = MetricsWriter(inputs.output_dir, inputs.job_id)
        self.folder = inputs.output_dir / layout.job_folder(inputs.job_id)
        self.last_loss: float | None = None
        self.batcher = offline_batcher(model, tokenizer, max_batch=settings.batch_size * settings.samples)
        self.flops = FlopCounter(model, full=settings.full_training)

    # -- outputs ------------------------------------------------------------------------------

    def artifacts(self) -> dict[str, str]:
        files = {
            "rewardMetrics": layout.RFT_REWARD_METRICS,
            "rewardByReference": layout.RFT_REWARD_BY_REFERENCE,
            "validationRewards": layout.RFT_VALIDATION_REWARDS,
            "rftReport": layout.RFT_REPORT,
        }
        return {
            name: f"{layout.job_folder(self.inputs.job_id)}/{path}"
            for name, path in files.items()
            if (self.folder / path).exists()
        }

    def _csv(self, relative: str, header: Sequence[str], resumed_steps: int) -> None:
        """Create one of this recipe's CSVs, or keep the rows of the steps a resumed checkpoint covers."""
        path = self.folder / relative
        rows: list[list[str]] = []
        if resumed_steps and path.exists():
            with path.open(newline="") as handle:
                rows = [row for row in list(csv.reader(handle))[1:] if int(row[0]) < resumed_steps]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows([list(header), *rows])

    def _append(self, relative: str, rows: Sequence[Sequence[Any]]) -> None:
        with (self.folder / relative).open("a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    # -- the loop -----------------------------------------------------------------------------

    def train(self, prompts: Sequence[RftPromptIds], validation: Sequence[RftPromptIds]) -> dict[str, Any] | None:
        """Every step of every epoch; the summary report, or None when the job was stopped."""
        settings = self.settings
        steps_per_epoch = math.ceil(len(prompts) / settings.batch_size)
        total_steps = steps_per_epoch * settings.epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=settings.learning_rate,
        )
        scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, total_steps)
        fingerprint = {**asdict(settings), "prompts": len(prompts), "parameters": sum(p.numel() for p in params)}
        state = load_checkpoint(
            self.inputs.checkpoint_dir, self.model, optimizer, scheduler, fingerprint, self.reporter
        )
        step, tokens_seen, losses = state if state else (0, 0, [])
        if state:
            self.reporter.log(f"resumed from checkpoint at step {step}/{total_steps}")
        self.metrics.start_training(step)
        self._csv(layout.RFT_REWARD_METRICS, REWARD_COLUMNS, step)
        references = {p.reference for p in prompts if p.reference is not None}
        by_reference = 0 < len(references) <= MAX_REFERENCES
        if by_reference:
            self._csv(
                layout.RFT_REWARD_BY_REFERENCE, ("step_number", "reference_answer", "samples", "reward_mean"), step
            )
        if validation:
            self._csv(layout.RFT_VALIDATION_REWARDS, ("step_number", "reward_mean", "prompts", "grader_failures"), step)
        history = self._read_history()

        peak, peak_source = peak_flops(self.device, self.precision)
        self.reporter.log(
            f"computing in {self.precision} on {self.device}; MFU against {peak / 1e12:.3g} TFLOP/s ({peak_source}), "
            "counting sampling, the reference pass and the update"
        )
        started = time.perf_counter()
        tokens_this_run, flops_this_run = 0, 0.0
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            order = list(range(len(prompts)))
            random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
            batch = [prompts[i] for i in order[index * settings.batch_size : (index + 1) * settings.batch_size]]
            if self.reporter.should_stop():
                return None
            result = self._step(batch, step)
            if result is None:
                return None
            row, rewards_by_reference, step_tokens, step_flops = result
            learning_rate = scheduler.get_last_lr()[0]
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm, foreach=True)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss = row["loss"]
            self.last_loss = loss
            losses.append(loss)
            tokens_this_run += step_tokens
            flops_this_run += step_flops
            elapsed = max(time.perf_counter() - started, 1e-9)
            mfu = flops_this_run / (elapsed * peak)
            self.metrics.training_step(
                step, epoch, loss, learning_rate=learning_rate, tokens_per_second=tokens_this_run / elapsed, mfu=mfu
            )
            self._append(
                layout.RFT_REWARD_METRICS,
                [
                    [step, epoch]
                    + [
                        f"{row[name]:.6g}" if isinstance(row[name], float) else row[name]
                        for name in REWARD_COLUMNS[2:8]
                    ]
                    + [f"{learning_rate:.6g}"]
                    + [f"{row[name]:.3f}" for name in REWARD_COLUMNS[9:]]
                ],
            )
            if by_reference:
                self._append(
                    layout.RFT_REWARD_BY_REFERENCE,
                    [
                        [step, ref, len(scores), f"{statistics.fmean(scores):.6g}"]
                        for ref, scores in sorted(rewards_by_reference.items())
                    ],
                )
            history.append({"step": step, "rewardMean": row["reward_mean"], "kl": row["kl"]})
            totals = self._totals(history, row)
            step += 1
            self.reporter.progress(
                step=step,
                total_steps=total_steps,
                epoch=epoch,
                loss=loss,
                learning_rate=learning_rate,
                tokens_per_second=tokens_this_run / elapsed,
                tokens_seen=tokens_seen + tokens_this_run,
                mfu=mfu,
                extra=totals,
            )
            if validation and (step % settings.eval_interval == 0 or step == total_steps):
                evaluated = self._evaluate(validation, step - 1)
                if evaluated is None:
                    return None
            every = settings.checkpoint_every_steps
            due = (every == 0 and step % steps_per_epoch == 0) or (
                every > 0 and (step % every == 0 or step == total_steps)
            )
            if due:
                self._write_history(history)
                save_checkpoint(
                    self.inputs.checkpoint_dir,
                    self.model,
                    optimizer,
                    scheduler,
                    fingerprint,
                    step=step,
                    tokens_seen=tokens_seen + tokens_this_run,
                    epoch_losses=losses,
                )
        return self._report(history, total_steps)

    def _step(
        self, batch: Sequence[RftPromptIds], step: int
    ) -> tuple[dict[str, Any], dict[str, list[float]], int, float] | None:
        """Sample, grade and backpropagate one step's loss (the optimizer step is the caller's).

        Returns the metrics row, the rewards by reference answer, the tokens the update computed and
        the step's model FLOPs: a 2N forward per sampled token (prompt and answer: the batcher does not
        share prompts), plus the update's (:meth:`_update`)."""
        settings = self.settings
        started = time.perf_counter()
        self.model.eval()
        answers = sample_answers(
            self.batcher,
            [(p.ids, p.strip_leading_space) for p in batch],
            settings.samples,
            settings.max_tokens,
            settings.temperature,
            seed=settings.seed * 1_000_003 + step * 65_537,
            should_stop=self.reporter.should_stop,
        )
        if answers is None:
            return None
        sampled = time.perf_counter()
        samples = [p.sample(a.text) for p, group in zip(batch, answers, strict=True) for a in group]
        grades = self.grader.grade(samples)
        if len(grades) != len(samples):
            raise RecipeFailed(
                f"The grader {self.grader.name} returned {len(grades)} grades for {len(samples)} answers"
            )
        graded = time.perf_counter()
        failures = [g for g in grades if g.score is None]
        if len(failures) == len(grades):
            raise RecipeFailed(
                f"The grader {self.grader.name} failed on every one of the {len(grades)} answers of step {step + 1}: "
                f"{failures[0].error}"
            )
        if failures:
            self.reporter.log(
                f"step {step + 1}: the grader failed on {len(failures)} of {len(grades)} answers "
                f"(first: {failures[0].error}); they take no part in the update"
            )
        k = settings.samples
        advantages = [a for i in range(len(batch)) for a in group_advantages(grades[i * k : (i + 1) * k])]
        flat: list[tuple[RftPromptIds, SampledAnswer]] = [
            (p, a) for p, group in zip(batch, answers, strict=True) for a in group
        ]
        loss, kl, tokens, update_flops = self._update(flat, advantages)
        sampling_flops = 2.0 * self.flops.parameters * sum(len(p.ids) + len(a.token_ids) for p, a in flat)
        scores = [g.score for g in grades if g.score is not None]
        by_reference: dict[str, list[float]] = defaultdict(list)
        for (prompt, _), grade in zip(flat, grades, strict=True):
            if grade.score is not None and prompt.reference is not None:
                by_reference[prompt.reference].append(grade.score)
        row = {
            "reward_mean": statistics.fmean(scores),
            "reward_std": statistics.pstdev(scores),
            "samples": len(grades),
            "grader_failures": len(failures),
            "kl": kl,
            "loss": loss,
            "sampling_seconds": sampled - started,
            "grading_seconds": graded - sampled,
            "update_seconds": time.perf_counter() - graded,
        }
        return row, by_reference, tokens, sampling_flops + update_flops

    def _update(
        self, flat: Sequence[tuple[RftPromptIds, SampledAnswer]], advantages: Sequence[float]
    ) -> tuple[float, float, int, float]:
        """Backpropagate the GRPO loss of every answer, in ``micro_batches`` pieces; (loss, KL, tokens, FLOPs).

        Identical answers to one prompt (common once the policy sharpens, and with short answers) go
        through the model once, as one row weighted by their number (:func:`grpo_loss`); tokens and
        FLOPs count the rows the model computed: forward and backward, plus the reference's forward."""
        self.model.train()
        merged: dict[tuple[int, ...], list[Any]] = {}
        total = 0
        for (p, a), advantage in zip(flat, advantages, strict=True):
            if not a.token_ids:
                continue
            total += 1
            row = merged.setdefault((len(p.ids), *p.ids, *a.token_ids), [p, a, 0.0, 0])
            row[2] += advantage
            row[3] += 1
        if not total:
            return 0.0, 0.0, 0, 0.0
        rows = [
            (Example([*p.ids, *a.token_ids], [IGNORE_INDEX] * len(p.ids) + a.token_ids), total_advantage, count)
            for p, a, total_advantage, count in merged.values()
        ]
        pieces = max(1, min(self.settings.micro_batches, len(rows)))
        size = math.ceil(len(rows) / pieces)
        loss_sum, kl_sum, tokens = 0.0, 0.0, 0
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            inputs = forward_inputs(collate([example for example, _, _ in part], self.pad_id), self.device)
            mask = (inputs["labels"][:, 1:] != IGNORE_INDEX).float()
            summed = torch.tensor([a for _, a, _ in part], dtype=torch.float32, device=self.device)
            copies = torch.tensor([c for _, _, c in part], dtype=torch.float32, device=self.device)
            with torch.no_grad(), autocast(self.device, self.precision):
                reference = self._reference_log_probs(inputs)
            with autocast(self.device, self.precision):
                log_probs = sequence_log_probs(self.model, inputs)
            loss, kl = grpo_loss(log_probs, reference, mask, summed, self.settings.kl_coefficient, total, copies=copies)
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            kl_sum += float(kl)
            tokens += sum(len(example.input_ids) for example, _, _ in part)
        lengths = [len(example.input_ids) for example, _, _ in rows]
        flops = self.flops.rows(lengths) + 2.0 * self.flops.parameters * sum(lengths)
        return loss_sum, kl_sum, tokens, flops

    def _reference_log_probs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is not None:
            return sequence_log_probs(self.reference, inputs)
        with self.model.disable_adapter():
            return sequence_log_probs(self.model, inputs)

    def _evaluate(self, validation: Sequence[RftPromptIds], step: int) -> float | None:
        """Mean reward of greedy answers to the validation prompts, written to its CSV."""
        self.model.eval()
        answers = sample_answers(
            self.batcher,
            [(p.ids, p.strip_leading_space) for p in validation],
            1,
            self.settings.max_tokens,
            temperature=0.0,
            seed=0,
            should_stop=self.reporter.should_stop,
        )
        if answers is None:
            return None
        grades = self.grader.grade([p.sample(group[0].text) for p, group in zip(validation, answers, strict=True)])
        scores = [g.score for g in grades if g.score is not None]
        failures = len(grades) - len(scores)
        mean = statistics.fmean(scores) if scores else math.nan
        self._append(layout.RFT_VALIDATION_REWARDS, [[step, f"{mean:.6g}", len(validation), failures]])
        self.reporter.log(f"step {step + 1}: validation reward {mean:.4f} on {len(validation)} prompts (greedy)")
        return mean

    # -- what the report and the live progress show ------------------------------------------------

    def _history_path(self) -> Path:
        return self.inputs.checkpoint_dir / "rft_history.json"

    def _read_history(self) -> list[dict[str, Any]]:
        path = self._history_path()
        return list(json.loads(path.read_text())) if path.exists() else []

    def _write_history(self, history: list[dict[str, Any]]) -> None:
        path = self._history_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(history))

    def _totals(self, history: Sequence[Mapping[str, Any]], row: Mapping[str, Any]) -> dict[str, float]:
        """The progress event's reward figures: this step's, and the first step's to compare with."""
        return {
            "rewardMean": round(float(row["reward_mean"]), 6),
            "rewardStd": round(float(row["reward_std"]), 6),
            "firstRewardMean": round(float(history[0]["rewardMean"]), 6),
            "klDivergence": round(float(row["kl"]), 6),
            "graderFailures": float(row["grader_failures"]),
            "samplesGraded": float(row["samples"]),
        }

    def _report(self, history: Sequence[Mapping[str, Any]], total_steps: int) -> dict[str, Any]:
        rewards = [float(h["rewardMean"]) for h in history]
        window = max(1, len(rewards) // 4)
        first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
        report = {
            "summary": (
                f"trained {total_steps} steps: mean reward {first:.3f} over the first {window} step(s), "
                f"{last:.3f} over the last {window}"
            ),
            "grader": self.grader.name,
            "steps": total_steps,
            "rewardMeanFirstSteps": first,
            "rewardMeanLastSteps": last,
            "stepsAveraged": window,
            "rewardByStep": rewards,
            "klByStep": [float(h["kl"]) for h in history],
        }
        path = self.folder / layout.RFT_REPORT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return report
