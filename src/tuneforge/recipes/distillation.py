"""DISTILLATION: a teacher answers the prompts; a smaller student of the same family learns its answers.

Read top to bottom:

1. **setup**: the teacher, loaded exactly as it is served (a foundation model, or a custom model such
   as a fine-tuned teacher), and the student (full training by default, or LoRA).
2. **dataProcessing**: every prompt gets a response, the record's golden assistant answer when it has
   one, else the teacher's greedy answer, generated ``teacherBatchSize`` prompts at a time (prompts
   of similar length together, so batches pad little) with a progress event per batch. A prompt is
   rejected, with its reason, when it repeats an earlier prompt, when it leaves no room for an
   answer within the student's sequence limit, when the teacher's answer is empty, or when prompt
   and answer together pass the limit. Written: a sample of the synthetic training data and the
   prompt-insights report. Each model sees a prompt as it is served
   (:func:`tuneforge.model.prompts.serving_prompt`): the teacher through its chat template, or as the
   bare prompt when it was fine-tuned on prompt/completion records; the student's training sequences
   are rendered as a conversation fine-tune renders them (its chat template, or the plain one).

   **Truncated answers.** An answer that does not end within ``maxResponseLengthForInference``
   tokens is kept as capped, as Bedrock keeps it, and counted in the insights
   (``truncatedResponses``). Its end of turn (``<eos>``, or the template's marker) is left out, so
   the student learns the answer's words without learning to stop where the cap cut them.
   ``rejectTruncatedTeacherAnswers`` leaves such prompts out instead. A job fails for lack of data
   only when no prompt is usable.
3. **training**: cross-entropy on the responses (sequence-level distillation), optionally mixed with
   logit-level distillation (:func:`distillation_loss`).
4. **evaluate**: per validator, the student's loss on the teacher's answers to the validation prompts
   (the same metric with or without logit distillation, so runs compare); then the distillation
   report: agreement with the teacher on held-out prompts, a reference metric where golden answers
   exist, parameter counts, generation speed of both models measured here, and cost per million
   output tokens.
5. **save**: as fine-tuning saves.

**Golden answers.** Bedrock lets a distillation prompt carry the assistant's "golden" response. For
training prompts tuneforge trains on it instead of asking the teacher: the user's own answer is the
better label, and it saves a teacher call. For held-out prompts the teacher is always asked,
because agreement is measured against it; the golden answers there become the reference metric.

**Held-out prompts** are the validation sets' prompts when the job has any; otherwise
``holdoutPercent`` of the distinct training prompts, chosen with ``seed`` and not trained on.

The teacher's answers are kept beside the checkpoints, so a job resumed after a crash does not ask
the teacher again.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tuneforge.catalog.models import DISTILLATION
from tuneforge.data.formats import FORMAT_CONVERSATION
from tuneforge.data.tasks import write_jsonl
from tuneforge.engine.generation import Completion, measure_generation_speed
from tuneforge.engine.offline import greedy_answers, offline_batcher
from tuneforge.jobs import layout
from tuneforge.model.folders import load_for_inference, trained_format
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.model.prompts import ChatTemplateError, expected_answer, render_prompt, serving_prompt
from tuneforge.recipes.base import JobReporter, RecipeFailed, RecipeInputs, RecipeResult, TeacherInputs
from tuneforge.recipes.loop import (
    TrainingConfig,
    causal_lm_loss,
    output_layer,
    prepare_for_training,
    record_validation,
    target_logits,
    train,
)
from tuneforge.recipes.outputs import MetricsWriter, save_trained_model
from tuneforge.recipes.performance import training_device
from tuneforge.recipes.tokenising import IGNORE_INDEX, Example, conversation_rendering, encode_record, read_jsonl

DATA_CACHE = "distillation_data.json"
"""Beside the checkpoints: the processed prompts, so a resumed job skips the teacher."""
SAMPLE_RECORDS = 100
"""Records of synthetic training data written to the sample file."""

Status = Literal["trained", "heldOut", "rejected"]


@dataclass
class DistillationPrompt:
    """One prompt's way through the job, as the prompt-insights report tells it."""

    file: str
    line: int
    record: dict[str, Any]
    """The record without its golden answer: what the teacher and the student are asked."""
    golden: str | None
    validator: int | None = None
    """The validation file it came from; None for training prompts."""
    held_out: bool = False
    response: str | None = None
    source: str | None = None
    """Where the response came from: "teacher" or "golden"."""
    rejected: str | None = None
    """Why it was not used (a short code), else None."""
    detail: str = ""
    truncated: bool = False
    """The teacher's response was cut at ``maxResponseLengthForInference`` tokens."""

    @property
    def text(self) -> str:
        """The prompt in the plain template: a readable key for duplicates and reports, the same for
        every model (what each model is fed comes from :meth:`ids`)."""
        return render_prompt(self.record)

    def ids(self, tokenizer: Any, trained_format: str | None = None) -> list[int]:
        """The prompt as a model with this tokenizer is served it (its chat template, or the plain one)."""
        return serving_prompt(tokenizer, conversation=self.record, trained_format=trained_format).ids

    @property
    def status(self) -> Status:
        if self.rejected:
            return "rejected"
        return "heldOut" if self.held_out else "trained"

    def reject(self, reason: str, detail: str) -> None:
        self.rejected, self.detail = reason, detail

    def conversation(self) -> dict[str, Any]:
        """The record with its response as the final assistant message: a training record."""
        assert self.response is not None
        answer = {"role": "assistant", "content": [{"text": self.response}]}
        return {**self.record, "messages": [*self.record["messages"], answer]}

    def example(self, tokenizer: Any, max_length: int) -> Example:
        """The training sequence, rendered as fine-tuning renders a conversation; a truncated response
        leaves out its end of turn (it did not end there)."""
        return encode_record(self.conversation(), tokenizer, max_length, close_last=not self.truncated)


def read_prompts(path: Path, validator: int | None = None) -> list[DistillationPrompt]:
    """Conversation records -> prompts, each split from its golden answer when it has one."""
    prompts = []
    for line, record in enumerate(read_jsonl(path), start=1):
        messages = list(record["messages"])
        golden = None
        if messages[-1]["role"] == "assistant":
            golden = expected_answer(record).strip()
            messages = messages[:-1]
        prompts.append(
            DistillationPrompt(
                file=path.name,
                line=line,
                record={**record, "messages": messages},
                golden=golden,
                validator=validator,
                held_out=validator is not None,
            )
        )
    return prompts


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    batch_targets: int,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """``((1 - w) * CE + w * T^2 * KL(teacher_T || student_T))`` summed over target tokens / ``batch_targets``.

    CE is the student's cross-entropy on the response tokens (the labels); the KL term compares the
    two models' next-token distributions at those same positions, both softened by temperature T.
    T^2 keeps the KL term's gradients on the same scale as CE's whatever T is (Hinton et al., 2015).
    Positions whose label is ignored (the prompt, padding) count in neither term. Both models share
    a tokenizer (checked when the job is created); if their output layers differ in size (padding
    rows), only the common vocabulary is compared.
    """
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return target_distillation_loss(
        student_logits[:, :-1][mask], teacher_logits[:, :-1][mask], shifted[mask], batch_targets, weight, temperature
    )


def target_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    batch_targets: int,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """:func:`distillation_loss` on the target positions' logits alone (``[N, vocab]`` each, N targets)."""
    student = student_logits.float()
    teacher = teacher_logits.float()
    cross_entropy = F.cross_entropy(student, targets, reduction="sum")
    vocab = min(student.shape[-1], teacher.shape[-1])
    kl = F.kl_div(
        F.log_softmax(student[:, :vocab] / temperature, dim=-1),
        F.log_softmax(teacher[:, :vocab] / temperature, dim=-1),
        log_target=True,
        reduction="sum",
    )
    return ((1.0 - weight) * cross_entropy + weight * temperature**2 * kl) / max(batch_targets, 1)


@dataclass(frozen=True)
class LogitDistillationLoss:
    """A :data:`~tuneforge.recipes.loop.LossFunction` that runs the teacher on every micro-batch.

    The teacher's logits are computed on the fly rather than stored: storing them costs
    sequence length x vocabulary floats per record, which does not scale past toy datasets, while
    a teacher forward pass costs about a third of a training step of a model its size.
    """

    teacher: Any
    weight: float
    temperature: float

    def __call__(self, model: Any, inputs: dict[str, torch.Tensor], batch_targets: int) -> torch.Tensor:
        if output_layer(model) is None or output_layer(self.teacher) is None:
            forward = {key: value for key, value in inputs.items() if key != "labels"}
            with torch.no_grad():
                teacher_full = self.teacher(**forward, use_cache=False).logits
            student_full = model(**forward, use_cache=False).logits
            return distillation_loss(
                student_full, teacher_full, inputs["labels"], batch_targets, self.weight, self.temperature
            )
        # Both models' output layers run on the target positions only (target_logits): the same loss.
        with torch.no_grad():
            teacher_logits = target_logits(self.teacher, inputs)
        student_logits = target_logits(model, inputs)
        labels = inputs["labels"][:, 1:]
        return target_distillation_loss(
            student_logits, teacher_logits, labels[labels != IGNORE_INDEX], batch_targets, self.weight, self.temperature
        )


class DistillationRecipe:
    customization_type = DISTILLATION

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        hp = inputs.hyperparameters
        if inputs.teacher is None:
            raise ValueError("a DISTILLATION job needs a teacher")
        config = TrainingConfig.from_hyperparameters(hp)
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup: the teacher as it is served; the student with adapters unless trained in full.
        # Teacher and student share a tokenizer (checked when the job was created); each model
        # still uses its own copy, as it would when served.
        teacher, teacher_tokenizer = load_for_inference(inputs.teacher.model_dir, inputs.teacher.models_dir)
        teacher_format = trained_format(inputs.teacher.model_dir)
        student, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        reporter.log(conversation_rendering(tokenizer))
        max_length = int(hp["maxSequenceLength"]) or int(student.config.max_position_embeddings)
        torch.manual_seed(config.seed)
        student = prepare_for_training(student, hp, reporter)
        teacher.to(training_device())

        # Data processing: a response for every prompt, from the golden answer or the teacher.
        reporter.stage("dataProcessing", "InProgress")
        try:
            asked = (teacher, teacher_tokenizer, teacher_format)
            prompts = self._process(inputs, asked, tokenizer, max_length, reporter)
        except ChatTemplateError as exc:
            raise RecipeFailed(str(exc)) from exc
        job_dir = inputs.output_dir / layout.job_folder(inputs.job_id)
        insights = prompt_insights(prompts)
        write_json(job_dir / layout.PROMPT_INSIGHTS, insights)
        trained = [p for p in prompts if p.status == "trained"]
        write_jsonl(job_dir / layout.SYNTHETIC_DATA_SAMPLE, (p.conversation() for p in trained[:SAMPLE_RECORDS]))
        reporter.log(
            f"{len(trained):,} prompts to train on ({insights['responses']['teacher']:,} answered by the teacher, "
            f"{insights['responses']['golden']:,} golden), {insights['heldOut']:,} held out, "
            f"{insights['rejected']:,} rejected"
        )
        if not trained:
            reasons = ", ".join(f"{count} {reason}" for reason, count in insights["rejectedByReason"].items())
            hint = (
                "; set rejectTruncatedTeacherAnswers=false to train on truncated answers as capped"
                if "truncated" in insights["rejectedByReason"]
                else ""
            )
            raise RecipeFailed(
                f"No prompt is left to train on: {insights['rejected']} rejected ({reasons or 'none'}), "
                f"{insights['heldOut']} held out; see {layout.job_folder(inputs.job_id)}/{layout.PROMPT_INSIGHTS} "
                f"under the output location{hint}"
            )
        if insights["truncatedResponses"]:
            reporter.log(
                f"{insights['truncatedResponses']:,} teacher responses were cut at "
                f"{inputs.teacher.max_response_tokens} tokens (maxResponseLengthForInference); "
                "they are trained on as capped"
            )
        examples = [p.example(tokenizer, max_length) for p in trained]
        validators: list[list[Example]] = [
            [p.example(tokenizer, max_length) for p in prompts if p.validator == index and p.status == "heldOut"]
            for index in range(len(inputs.validation_files))
        ]
        reporter.stage("dataProcessing", "Completed")

        # Train: on the responses, and on the teacher's logits when logitDistillationWeight > 0.
        reporter.stage("training", "InProgress")
        weight = float(hp["logitDistillationWeight"])
        temperature = float(hp["distillationTemperature"])
        loss_function = LogitDistillationLoss(teacher, weight, temperature) if weight > 0 else causal_lm_loss
        metrics = MetricsWriter(inputs.output_dir, inputs.job_id)
        outcome = train(
            student,
            examples,
            config,
            reporter,
            metrics,
            inputs.checkpoint_dir,
            pad_id=tokenizer.pad_token_id,
            loss_function=loss_function,
        )
        if outcome.stopped:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=outcome.final_loss, stopped=True)
        reporter.log(
            f"trained {outcome.steps} steps in {outcome.seconds:.1f}s, "
            f"{outcome.tokens_seen:,} tokens, final loss {outcome.final_loss:.4f}"
        )

        # Evaluate: validation loss on the teacher's answers; then the report, on the student as served.
        validation_losses, artifacts = record_validation(
            student, validators, metrics, outcome, config.epochs, tokenizer.pad_token_id
        )
        full = hp["trainingMethod"] == "full"
        served = student if full else copy.deepcopy(student).merge_and_unload()
        served.eval()
        held_out = [p for p in prompts if p.status == "heldOut"]
        report = distillation_report(
            inputs.teacher,
            (teacher, teacher_tokenizer, teacher_format),
            (served, tokenizer),
            held_out,
            speed_prompts=[p.ids(tokenizer) for p in held_out or trained],
            batch_size=int(hp["teacherBatchSize"]),
            student_model_id=inputs.base_model.model_id,
            price_per_compute_hour=inputs.price_per_compute_hour,
            training_seconds=outcome.seconds,
        )
        write_json(job_dir / layout.DISTILLATION_REPORT, report)
        reporter.log(report["summary"])
        artifacts.update(
            distillationReport=f"{layout.job_folder(inputs.job_id)}/{layout.DISTILLATION_REPORT}",
            promptInsights=f"{layout.job_folder(inputs.job_id)}/{layout.PROMPT_INSIGHTS}",
            syntheticDataSample=f"{layout.job_folder(inputs.job_id)}/{layout.SYNTHETIC_DATA_SAMPLE}",
        )
        reporter.stage("training", "Completed")

        # Save.
        artifacts.update(save_trained_model(student, tokenizer, inputs, full=full, data_format=FORMAT_CONVERSATION))
        return RecipeResult(
            training_loss=outcome.final_loss,
            validation_losses=validation_losses,
            artifacts=artifacts,
        )

    def _process(
        self,
        inputs: RecipeInputs,
        teacher: tuple[Any, Any, str | None],
        tokenizer: Any,
        max_length: int,
        reporter: JobReporter,
    ) -> list[DistillationPrompt]:
        """Every prompt with a response or a rejection reason; from the cache when resuming.

        ``teacher`` is the model, its tokenizer and the data format it was trained on: it is asked
        as it is served. ``tokenizer`` is the student's: lengths and training sequences are its."""
        assert inputs.teacher is not None
        cache = inputs.checkpoint_dir / DATA_CACHE
        if cache.exists():
            reporter.log("resumed: reusing the responses generated before the interruption")
            return [DistillationPrompt(**row) for row in json.loads(cache.read_text(encoding="utf-8"))]
        hp = inputs.hyperparameters
        prompts = read_prompts(inputs.training_file)
        for index, path in enumerate(inputs.validation_files):
            prompts.extend(read_prompts(path, validator=index))

        first_line: dict[str, int] = {}
        for prompt in prompts:
            if prompt.validator is not None:
                continue
            if prompt.text in first_line:
                prompt.reject("duplicate", f"same prompt as line {first_line[prompt.text]}")
            else:
                first_line[prompt.text] = prompt.line
        if not inputs.validation_files:
            candidates = [p for p in prompts if not p.rejected]
            count = len(candidates) * int(hp["holdoutPercent"]) // 100
            for prompt in random.Random(int(hp["seed"])).sample(candidates, count):
                prompt.held_out = True
        for prompt in prompts:
            length = len(prompt.ids(tokenizer))
            if length + 1 >= max_length:
                prompt.reject("too long", f"the prompt is {length} tokens: no room for an answer within {max_length}")

        for prompt in prompts:
            if not prompt.rejected and not prompt.held_out and prompt.golden is not None:
                prompt.response, prompt.source = prompt.golden, "golden"
        ask = [p for p in prompts if not p.rejected and p.response is None]
        self._ask_teacher(
            ask,
            teacher,
            inputs.teacher,
            int(hp["teacherBatchSize"]),
            reporter,
            reject_truncated=bool(hp["rejectTruncatedTeacherAnswers"]),
        )

        for prompt in prompts:
            if prompt.response is None or prompt.rejected:
                continue
            try:
                prompt.example(tokenizer, max_length)
            except ChatTemplateError:
                raise
            except ValueError:
                prompt.reject("too long", f"prompt and response pass the student's limit of {max_length} tokens")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([asdict(p) for p in prompts]), encoding="utf-8")
        return prompts

    def _ask_teacher(
        self,
        prompts: Sequence[DistillationPrompt],
        teacher: tuple[Any, Any, str | None],
        config: TeacherInputs,
        batch_size: int,
        reporter: JobReporter,
        *,
        reject_truncated: bool,
    ) -> None:
        """Greedy teacher answers, a batch at a time, with a progress event after each batch.

        An answer cut at ``limit`` tokens is kept and marked truncated, unless ``reject_truncated``.
        """
        limit = config.max_response_tokens
        reporter.log(f"asking the teacher {config.arn} for {len(prompts):,} responses of up to {limit} tokens")
        reporter.data_progress(done=0, total=len(prompts), unit="prompts")
        model, tokenizer, teacher_format = teacher
        answers = teacher_answers(
            model,
            tokenizer,
            [p.ids(tokenizer, teacher_format) for p in prompts],
            limit,
            batch_size,
            progress=lambda done: reporter.data_progress(done=done, total=len(prompts), unit="prompts"),
        )
        for prompt, answer in zip(prompts, answers, strict=True):
            text = answer.text.strip()
            if not answer.finished and reject_truncated:
                prompt.reject(
                    "truncated",
                    f"the teacher's response did not end within {limit} tokens (maxResponseLengthForInference)",
                )
            elif not text:
                prompt.reject("empty response", "the teacher's response is empty")
            else:
                prompt.response, prompt.source, prompt.truncated = text, "teacher", not answer.finished


def teacher_answers(
    teacher: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[int]],
    limit: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[Completion]:
    """The teacher's greedy answers to ``prompts`` (token ids or raw text), in order, ``batch_size`` rows at a time.

    The batched path of batch inference jobs (:func:`tuneforge.engine.offline.greedy_answers`): a
    continuous batch of ``batch_size`` rows, refilled as answers end, with the engines' stop rules,
    so the teacher answers a prompt exactly as it would answer it served. A greedy answer does not
    depend on the rows beside it. ``progress`` gets the count of prompts answered so far after every
    ``batch_size`` answers and after the last.
    """
    batcher = offline_batcher(teacher, tokenizer, max_batch=batch_size)
    return greedy_answers(batcher, prompts, limit, progress=progress, progress_every=batch_size)


def prompt_insights(prompts: Sequence[DistillationPrompt]) -> dict[str, Any]:
    """Counts by outcome and by rejection reason, then every prompt's outcome by file and line."""
    statuses = Counter(p.status for p in prompts)
    used = [p for p in prompts if p.status == "trained"]
    return {
        "prompts": len(prompts),
        "trained": statuses["trained"],
        "heldOut": statuses["heldOut"],
        "rejected": statuses["rejected"],
        "responses": {
            "teacher": sum(p.source == "teacher" for p in used),
            "golden": sum(p.source == "golden" for p in used),
        },
        "truncatedResponses": sum(p.truncated for p in prompts if not p.rejected),
        "rejectedByReason": dict(Counter(p.rejected for p in prompts if p.rejected)),
        "details": [
            {
                "file": p.file,
                "line": p.line,
                "status": p.status,
                **({"responseSource": p.source} if p.source else {}),
                **({"truncated": True} if p.truncated and not p.rejected else {}),
                **({"reason": p.rejected, "detail": p.detail} if p.rejected else {}),
            }
            for p in prompts
        ],
    }


def distillation_report(
    teacher_inputs: TeacherInputs,
    teacher: tuple[Any, Any, str | None],
    student: tuple[Any, Any],
    held_out: Sequence[DistillationPrompt],
    *,
    speed_prompts: Sequence[list[int]],
    batch_size: int,
    student_model_id: str,
    price_per_compute_hour: float,
    training_seconds: float,
) -> dict[str, Any]:
    """Teacher vs student on the held-out prompts, and what each costs to run on this machine.

    Agreement is exact match between the student's and the teacher's greedy answers (whitespace at
    the ends ignored). Speed is measured on one batch of up to ``batch_size`` prompts, both models
    writing ``maxResponseLengthForInference`` tokens per prompt (:func:`measure_generation_speed`),
    in this process, one after the other. Cost per million output tokens is the time to write them
    at that speed, priced at ``price_per_compute_hour``.
    """
    limit = teacher_inputs.max_response_tokens
    # The student answers on the teacher's path (continuous batching, the engines' stop rules), so
    # agreement compares two models and not two decoders.
    answers = greedy_answers(
        offline_batcher(*student, max_batch=batch_size), [p.ids(student[1]) for p in held_out], limit
    )
    pairs = [(p, a.text.strip()) for p, a in zip(held_out, answers, strict=True)]
    agreement = sum(p.response == answer for p, answer in pairs) / len(pairs) if pairs else None
    golden = [(p, answer) for p, answer in pairs if p.golden is not None]
    reference = (
        {
            "prompts": len(golden),
            "metric": "exact match with the golden answer",
            "teacher": sum(p.response == p.golden for p, _ in golden) / len(golden),
            "student": sum(answer == p.golden for p, answer in golden) / len(golden),
        }
        if golden
        else None
    )

    timed = list(speed_prompts[:batch_size])
    sides: dict[str, dict[str, Any]] = {}
    for name, (model, tokenizer), identity in (
        ("teacher", teacher[:2], {"modelArn": teacher_inputs.arn}),
        ("student", student, {"baseModelId": student_model_id}),
    ):
        tokens_per_second = measure_generation_speed(model, tokenizer, timed, limit).tokens_per_second
        sides[name] = {
            **identity,
            "parameters": sum(p.numel() for p in model.parameters()),
            "generationTokensPerSecond": round(tokens_per_second, 1),
            "costPerMillionOutputTokens": round(price_per_compute_hour * 1e6 / (tokens_per_second * 3600), 6),
        }
    speedup = sides["student"]["generationTokensPerSecond"] / sides["teacher"]["generationTokensPerSecond"]
    agreement_text = f"{agreement:.0%} of {len(pairs)}" if agreement is not None else "no"
    return {
        "summary": (
            f"student agrees with the teacher on {agreement_text} held-out prompts; it has "
            f"{sides['student']['parameters'] / sides['teacher']['parameters']:.0%} of the teacher's parameters "
            f"and generates {speedup:.1f}x as many tokens per second"
        ),
        "heldOutPrompts": len(pairs),
        "agreement": {"metric": "exact match with the teacher's answer", "student": agreement},
        "reference": reference,
        "teacher": sides["teacher"],
        "student": sides["student"],
        "speedup": round(speedup, 2),
        "measurement": {
            "batchSize": len(timed),
            "newTokensPerSequence": limit,
            "threads": torch.get_num_threads(),
            "method": "greedy generation, fastest of 3 timed runs after a warm-up, same prompts for both models",
        },
        "pricePerComputeHour": price_per_compute_hour,
        "trainingSeconds": round(training_seconds, 1),
        "examples": [
            {"prompt": p.text, "teacher": p.response, "student": answer, **({"golden": p.golden} if p.golden else {})}
            for p, answer in pairs[:5]
        ],
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
