"""Training pieces the recipes share: record encoding, batching, the training loop, evaluation, metrics.

Recipes stay readable top to bottom (setup -> train -> evaluate -> save) by calling these. Nothing
here knows about jobs, the database or HTTP: progress goes through a :class:`JobReporter`.

**Prompt rendering.** Prompt/completion records train on ``<bos> prompt completion <eos>`` with the
loss on ``completion <eos>`` only. Conversation records (``bedrock-conversation-2024``) are rendered
with one fixed plain-text template::

    System: {system}\\n
    User: {user text}\\nAssistant: {assistant text}\\n
    User: {user text}\\nAssistant: {assistant text}<eos>

The loss covers each assistant text with its terminator: ``<eos>`` after the last turn, a newline
after earlier turns, because that is how an earlier turn appears in the prompt at inference time.
So :func:`render_prompt` (used by serving) always yields an exact prefix of a training sequence.

**Batching: length-grouped padding, not packing.** Length grouping pads each batch only to its own
longest record and keeps ``batchSize`` = records per optimizer step (Bedrock's meaning). Packing a
batch into one row needs a block-diagonal mask (transformers derives it from position ids that
restart at 0); with SDPA on CPU that is a dense ``total x total`` attention, so its cost grows with
the square of the packed length. Measured on forge-small + LoRA, demo task, batches of 8, 2 CPU
threads, forward + backward over 40-50 steps (two runs on a shared machine): packed 2,250-2,450 real
tokens/s, length-grouped 2,720-3,350, plain random batches 2,870-3,400. Grouping cuts padding from
14% to 2% of the tokens, which matters little at this size (per-op overhead dominates) but a lot for
uneven real datasets. Packing pays off with long, uneven records and a varlen flash-attention kernel
(GPU); it is not worth its complexity here.

**Attention mask.** Batches are right-padded, so under causal attention no real token can see a
pad: the forward pass gets no attention mask at all. That lets SDPA take its fused causal kernel
instead of a dense masked one, with the same result for every real token (padding positions have
label ``IGNORE_INDEX``). :func:`forward_inputs` drops the mask; a test checks the equivalence.

**Precision and utilisation** are in :mod:`tuneforge.recipes.performance`: bf16 autocast where the
hardware has native bf16, fp32 master weights, and MFU logged with every step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from tuneforge.catalog.builtin import save_tokenizer
from tuneforge.catalog.hyperparameters import HyperParameterValue
from tuneforge.model.export import BaseModel, make_adapter_portable, write_merged_readme
from tuneforge.recipes import layout
from tuneforge.recipes.base import JobReporter, RecipeInputs
from tuneforge.recipes.performance import (
    FlopCounter,
    autocast,
    model_device,
    peak_flops,
    resolve_precision,
    training_device,
)

IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's and transformers' convention)."""

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.pt"
"""The checkpoint before the latest, kept so that a corrupt latest one costs a few steps, not the job."""

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


# --------------------------------------------------------------------------- records -> tokens


@dataclass(frozen=True)
class Example:
    """One training sequence; ``labels[i]`` is the target at position ``i`` (the model shifts)."""

    input_ids: list[int]
    labels: list[int]


def _text(blocks: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(str(block["text"]) for block in blocks if "text" in block)


def _conversation_segments(record: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(text, trained_on) pieces of a conversation, in order; see the module docstring."""
    segments: list[tuple[str, bool]] = []
    system = _text(record.get("system") or [])
    if system:
        segments.append((f"System: {system}\n", False))
    messages = list(record["messages"])
    for index, message in enumerate(messages):
        text = _text(message["content"])
        if message["role"] == "user":
            segments.append((f"User: {text}\nAssistant:", False))
        else:
            terminator = "" if index == len(messages) - 1 else "\n"
            segments.append((f" {text}{terminator}", True))
    return segments


def render_prompt(record_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The text a model continues to answer: the same rendering for training and serving.

    Accepts a prompt/completion record (returns its prompt), a conversation record or a Converse
    request body (``{"system": [...], "messages": [...]}``), or a bare list of messages. A trailing
    assistant message is treated as the expected answer and left out.
    """
    if isinstance(record_or_messages, Mapping) and "prompt" in record_or_messages:
        return str(record_or_messages["prompt"])
    if isinstance(record_or_messages, Mapping):
        conversation: Mapping[str, Any] = record_or_messages
    else:
        conversation = {"messages": list(record_or_messages)}
    messages = list(conversation["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    segments = _conversation_segments({"system": conversation.get("system"), "messages": messages})
    return "".join(text for text, _ in segments)


def expected_answer(record: Mapping[str, Any]) -> str:
    """The completion, or the final assistant message of a conversation record."""
    if "completion" in record:
        return str(record["completion"])
    return _text(record["messages"][-1]["content"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``<bos>`` (when the tokenizer has one) + the text's tokens, as training and serving both see it.

    Adding ``<bos>`` here rather than through the tokenizer's post-processor keeps user models whose
    tokenizer appends ``<eos>`` to every encoding from closing the prompt.
    """
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_record(record: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Example:
    """Tokenize one prompt/completion or conversation record, loss on answer tokens only.

    Raises ValueError for a record longer than ``max_length``: pre-flight validation rejects those,
    and cutting one silently would train on an answer without its end.
    """
    eos = tokenizer.eos_token_id
    if "prompt" in record:
        prompt = encode_prompt(tokenizer, str(record["prompt"]))
        answer = [*tokenizer.encode(str(record["completion"]), add_special_tokens=False), eos]
        input_ids = prompt + answer
        labels = [IGNORE_INDEX] * len(prompt) + answer
    else:
        segments = _conversation_segments(record)
        if not segments or not segments[-1][1]:
            raise ValueError("a training conversation must end with an assistant message")
        input_ids = encode_prompt(tokenizer, "")
        labels = [IGNORE_INDEX] * len(input_ids)
        for text, trained in segments:
            ids = tokenizer.encode(text, add_special_tokens=False)
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        input_ids.append(eos)
        labels.append(eos)
    if len(input_ids) > max_length:
        raise ValueError(
            f"record is {len(input_ids)} tokens, above the limit of {max_length} (maxSequenceLength or "
            "the model's context); it should have been rejected by validation"
        )
    return Example(input_ids=input_ids, labels=labels)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of an already validated JSONL file (blank lines skipped).

    ``utf-8-sig`` drops a byte-order mark before the first record, as validation does: a file
    saved by an editor that writes one must not pass validation and then fail here.
    """
    with path.open(encoding="utf-8-sig") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def encode_file(path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    """Encode every record of a JSONL file; errors name the file and line."""
    examples = []
    for line_number, record in enumerate(read_jsonl(path), start=1):
        try:
            examples.append(encode_record(record, tokenizer, max_length))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path.name} line {line_number}: {exc}") from exc
    return examples


def chunk_document(token_ids: Sequence[int], max_length: int, overlap: int) -> list[Example]:
    """Cut one tokenized document into training windows of at most ``max_length`` tokens.

    Continued pre-training must neither cut long documents silently nor count a token twice. Each
    window after the first starts ``overlap`` tokens (or more, for the last one) before the end of
    the previous window: those tokens are context only (label ``IGNORE_INDEX``), so every token is a
    target in exactly one window and, except in the first window, is predicted with at least
    ``overlap`` tokens of context. The last window is aligned to the document's end, so it is full
    length whenever the document is, rather than a short tail.

    The first token of a document is never a target (a causal LM has nothing to predict it from),
    so ``overlap`` must be at least 1: with no overlap, the first token of every later window would
    silently drop out of the loss as well.
    """
    if not 1 <= overlap < max_length:
        raise ValueError(f"overlap must be between 1 and max_length - 1 ({max_length - 1}), got {overlap}")
    ids = list(token_ids)
    windows: list[Example] = []
    target_start = 0
    while target_start < len(ids) or not windows:
        if target_start == 0:
            start, end = 0, min(len(ids), max_length)
        else:
            end = min(len(ids), target_start + max_length - overlap)
            start = max(0, end - max_length)
        window = ids[start:end]
        labels = [IGNORE_INDEX if start + i < target_start else token for i, token in enumerate(window)]
        windows.append(Example(input_ids=window, labels=labels))
        target_start = end
    return windows


def encode_documents(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int, overlap: int
) -> tuple[list[Example], int]:
    """``{"input": ...}`` records -> ``<bos> text <eos>`` cut into windows; also the document count.

    ``<bos>`` is added as :func:`encode_prompt` adds it (when the tokenizer has one).

    The loss covers every token of every document (see :func:`chunk_document`).
    """
    windows: list[Example] = []
    documents = 0
    for line_number, record in enumerate(read_jsonl(path), start=1):
        try:
            text = str(record["input"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f'{path.name} line {line_number}: not a {{"input": ...}} record') from exc
        # verbose=False: a document longer than the context is expected here (it is chunked next),
        # so transformers' "longer than the maximum sequence length" warning would only mislead.
        body: list[int] = tokenizer.encode(text, add_special_tokens=False, verbose=False)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        windows.extend(chunk_document([*bos, *body, tokenizer.eos_token_id], max_length, overlap))
        documents += 1
    return windows, documents


def loss_token_count(examples: Sequence[Example]) -> int:
    """Tokens the loss covers over ``examples`` (each label after the causal shift that is not ignored)."""
    return sum(label != IGNORE_INDEX for example in examples for label in example.labels[1:])


# --------------------------------------------------------------------------- batching


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_batches: int = 16
) -> list[list[int]]:
    """Indices of each batch of one epoch: shuffled, then length-sorted within groups of batches.

    The order depends only on (seed, epoch), which is what makes resuming mid-epoch exact. Sorting
    inside groups of ``group_batches`` batches (not over the whole set) keeps batches random in
    content while most of the padding goes away; the batch order is shuffled again afterwards so
    that lengths do not drift through an epoch. On the demo task (batch 8) padding falls from 14% of
    the tokens with plain random batches to 2%.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def split_micro_batches(batch: list[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split one optimizer batch into ``parts`` near-equal micro-batches of similar lengths."""
    ordered = sorted(batch, key=lambda i: lengths[i], reverse=True)
    size = math.ceil(len(ordered) / parts)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding has attention 0 and label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def target_count(labels: torch.Tensor) -> int:
    """Tokens the loss averages over: labels after the causal shift that are not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def forward_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """What a training or evaluation forward pass gets from a :func:`collate` batch, on ``device``.

    The attention mask is left out: rows are right-padded, so causal attention already keeps every
    real token from seeing padding, and without a mask SDPA runs its fused causal kernel (see the
    module docstring). Position ids default to 0..n-1, which is what they are for right padding.
    """
    return {key: value.to(device) for key, value in batch.items() if key != "attention_mask"}


# --------------------------------------------------------------------------- metrics files


class MetricsWriter:
    """Bedrock's metrics layout (:mod:`tuneforge.recipes.layout`) under ``output_dir``.

    Training: one row per optimizer step in ``training_artifacts/step_wise_training_metrics.csv``
    (``step_number`` from 0), Bedrock's four columns exactly; the same steps with learning rate,
    real tokens/s and MFU in ``step_wise_performance_metrics.csv`` beside it. Validation: after
    training, one row per validator, each validator in its own file.
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
        # Appended and closed per row: a killed worker leaves every finished step on disk.
        with self.training_csv.open("a", newline="") as handle:
            csv.writer(handle).writerow([step_number, epoch, f"{loss:.6f}", f"{_perplexity(loss):.6f}"])
        with self.performance_csv.open("a", newline="") as handle:
            csv.writer(handle).writerow(
                [step_number, epoch, f"{loss:.6f}", f"{learning_rate:.6g}", f"{tokens_per_second:.1f}", f"{mfu:.4f}"]
            )

    def validation(self, validator: int, step_number: int, epoch: int, loss: float) -> None:
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


# --------------------------------------------------------------------------- training loop


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    gradient_accumulation_steps: int
    seed: int
    checkpoint_every_steps: int
    """0 = a checkpoint at each epoch end."""
    length_grouping: bool = True
    precision: str = "auto"
    """auto, bf16 or fp32; see :mod:`tuneforge.recipes.performance`."""
    full_training: bool = False
    """Whether every weight trains (6·N FLOPs per token) rather than adapters (4·N): for MFU only."""
    max_grad_norm: float = 1.0

    @classmethod
    def from_hyperparameters(cls, values: Mapping[str, HyperParameterValue]) -> TrainingConfig:
        return cls(
            epochs=int(values["epochCount"]),
            batch_size=int(values["batchSize"]),
            learning_rate=float(values["learningRate"]),
            warmup_steps=int(values["learningRateWarmupSteps"]),
            weight_decay=float(values["weightDecay"]),
            gradient_accumulation_steps=int(values["gradientAccumulationSteps"]),
            seed=int(values["seed"]),
            checkpoint_every_steps=int(values["checkpointEverySteps"]),
            length_grouping=bool(values.get("lengthGrouping", True)),
            precision=str(values.get("precision", "auto")),
            full_training=values.get("trainingMethod") == "full",
        )


@dataclass
class TrainingOutcome:
    steps: int
    """Optimizer steps done in total, including those before a resume."""
    total_steps: int
    epochs_done: int
    stopped: bool
    final_loss: float | None
    """Mean loss of the steps of the last (or current, if stopped) epoch: smoother than the last
    step's loss and comparable across batch sizes."""
    tokens_seen: int
    seconds: float
    """Wall time of this run of the loop (not counting time before a resume)."""


LossFunction = Callable[[Any, dict[str, torch.Tensor], int], torch.Tensor]
"""(model, micro-batch, target tokens in the whole batch) -> that micro-batch's share of the batch
loss: its summed token loss divided by the batch's target count, so shares add up to the mean."""


def causal_lm_loss(model: Any, inputs: dict[str, torch.Tensor], batch_targets: int) -> torch.Tensor:
    """Cross-entropy on the target tokens: transformers' own loss, summed and divided by the batch total."""
    output = model(**inputs, use_cache=False, num_items_in_batch=torch.tensor(max(batch_targets, 1)))
    loss: torch.Tensor = output.loss
    return loss


def train(
    model: Any,
    examples: Sequence[Example],
    config: TrainingConfig,
    reporter: JobReporter,
    metrics: MetricsWriter,
    checkpoint_dir: Path,
    pad_id: int,
    loss_function: LossFunction = causal_lm_loss,
) -> TrainingOutcome:
    """Train the parameters of ``model`` that require grad; resume from ``checkpoint_dir`` if possible.

    AdamW (no decay on 1-D parameters), linear warmup then cosine decay to 0, gradient clipping,
    gradient accumulation. The loss of a step is the mean over every target token of the whole
    batch: each micro-batch adds its *summed* token loss divided by the batch's target count, so
    accumulation changes memory use, never the result. ``loss_function`` computes that share
    (distillation swaps in a loss that also compares with a teacher's logits).
    ``reporter.should_stop()`` is checked before every step; a stop returns at once without a
    checkpoint (a stopped job is not resumed).

    Runs on the device ``model`` is on (batches follow it), in ``config.precision``, and reports
    real tokens/s and MFU with each step's loss (:mod:`tuneforge.recipes.performance`).
    """
    lengths = [len(e.input_ids) for e in examples]
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    precision = resolve_precision(config.precision, device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        # One fused kernel per step on CUDA; on the CPU, multi-tensor ("foreach") updates.
        fused=device.type == "cuda" or None,
        foreach=device.type != "cuda" or None,
    )
    flops = FlopCounter(model, full=config.full_training)
    peak, peak_source = peak_flops(device, precision)
    reporter.log(
        f"computing in {precision}{' (autocast, fp32 weights)' if precision == 'bf16' else ''} on {device}; "
        f"MFU against {peak / 1e12:.3g} TFLOP/s ({peak_source})"
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    fingerprint = {**asdict(config), "examples": len(examples), "parameters": sum(p.numel() for p in params)}

    state = _load_checkpoint(checkpoint_dir, model, optimizer, scheduler, fingerprint, reporter)
    step, tokens_seen, epoch_losses = state if state else (0, 0, [])
    if state:
        reporter.log(f"resumed from checkpoint at step {step}/{total_steps}")
    metrics.start_training(step)

    model.train()
    started = time.perf_counter()
    tokens_this_run = 0
    flops_this_run = 0.0
    while step < total_steps:
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        # One batch per group sorts only within a batch: plain random batches, padded to their max.
        group = 16 if config.length_grouping else 1
        batches = length_grouped_batches(lengths, config.batch_size, config.seed, epoch, group_batches=group)
        if index_in_epoch == 0:
            epoch_losses = []
        for batch in batches[index_in_epoch:]:
            if reporter.should_stop():
                return TrainingOutcome(
                    steps=step,
                    total_steps=total_steps,
                    epochs_done=epoch,
                    stopped=True,
                    final_loss=_mean(epoch_losses),
                    tokens_seen=tokens_seen + tokens_this_run,
                    seconds=time.perf_counter() - started,
                )
            parts = split_micro_batches(batch, lengths, config.gradient_accumulation_steps)
            micro = [collate([examples[i] for i in part], pad_id) for part in parts]
            targets = sum(target_count(m["labels"]) for m in micro)
            loss = 0.0
            for part, inputs in zip(parts, micro, strict=True):
                with autocast(device, precision):
                    micro_loss = loss_function(model, forward_inputs(inputs, device), targets)
                micro_loss.backward()  # type: ignore[no-untyped-call]
                loss += float(micro_loss.detach())
                tokens_this_run += sum(lengths[i] for i in part)
                flops_this_run += flops.rows([lengths[i] for i in part])
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = max(time.perf_counter() - started, 1e-9)
            tokens_per_second = tokens_this_run / elapsed
            mfu = flops_this_run / elapsed / peak
            metrics.training_step(
                step, epoch, loss, learning_rate=learning_rate, tokens_per_second=tokens_per_second, mfu=mfu
            )
            step += 1
            epoch_losses.append(loss)
            reporter.progress(
                step=step,
                total_steps=total_steps,
                epoch=epoch,
                loss=loss,
                learning_rate=learning_rate,
                tokens_per_second=tokens_per_second,
                tokens_seen=tokens_seen + tokens_this_run,
                mfu=mfu,
            )
            epoch_end = step % steps_per_epoch == 0
            every = config.checkpoint_every_steps
            if (every == 0 and epoch_end) or (every > 0 and (step % every == 0 or step == total_steps)):
                _save_checkpoint(
                    checkpoint_dir,
                    model,
                    optimizer,
                    scheduler,
                    fingerprint,
                    step=step,
                    tokens_seen=tokens_seen + tokens_this_run,
                    epoch_losses=epoch_losses,
                )
    return TrainingOutcome(
        steps=step,
        total_steps=total_steps,
        epochs_done=config.epochs,
        stopped=False,
        final_loss=_mean(epoch_losses),
        tokens_seen=tokens_seen + tokens_this_run,
        seconds=time.perf_counter() - started,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(
    checkpoint_dir: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    fingerprint: dict[str, Any],
    *,
    step: int,
    tokens_seen: int,
    epoch_losses: list[float],
) -> None:
    """Trainable weights, optimizer, scheduler, step and RNG state, written atomically.

    The checkpoint it replaces becomes :data:`PREVIOUS_CHECKPOINT_FILE`: the last two are kept.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint,
        "step": step,
        "tokens_seen": tokens_seen,
        "epoch_losses": list(epoch_losses),
        "model": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    partial = checkpoint_dir / f".{CHECKPOINT_FILE}.partial"
    torch.save(payload, partial)
    latest = checkpoint_dir / CHECKPOINT_FILE
    if latest.exists():
        os.replace(latest, checkpoint_dir / PREVIOUS_CHECKPOINT_FILE)
    os.replace(partial, latest)


_CHECKPOINT_KEYS = (
    "fingerprint",
    "step",
    "tokens_seen",
    "epoch_losses",
    "model",
    "optimizer",
    "scheduler",
    "torch_rng",
)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload, or ValueError saying why it cannot be used (unreadable, cut, not ours)."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... on damaged files
        raise ValueError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in _CHECKPOINT_KEYS):
        raise ValueError("not a complete training checkpoint")
    return payload


def _load_checkpoint(
    checkpoint_dir: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    fingerprint: dict[str, Any],
    reporter: JobReporter,
) -> tuple[int, int, list[float]] | None:
    """Restore the newest usable checkpoint: the latest, else the previous one, else none (start over).

    A damaged file (a disk error, a partial copy) must not fail a job that has an older good
    checkpoint, or that could simply start again: each fallback is said in the job's log.
    """
    payload: dict[str, Any] | None = None
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = checkpoint_dir / name
        if not path.exists():
            continue
        try:
            payload = _read_checkpoint(path)
        except ValueError as exc:
            reporter.log(f"checkpoint {name} is unusable ({exc}); falling back to an earlier state")
            continue
        if name != CHECKPOINT_FILE:
            reporter.log(f"fell back to the previous checkpoint {name} (step {payload['step']})")
        break
    if payload is None:
        if any((checkpoint_dir / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)):
            reporter.log("no usable checkpoint is left: training starts again from step 0")
        return None
    if payload["fingerprint"] != fingerprint:
        raise ValueError(
            f"the checkpoint in {checkpoint_dir} was written for another configuration "
            f"({payload['fingerprint']} != {fingerprint}); delete it to start over"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    if payload.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return int(payload["step"]), int(payload["tokens_seen"]), [float(x) for x in payload["epoch_losses"]]


# --------------------------------------------------------------------------- trainable model


def prepare_for_training(model: Any, hyperparameters: Mapping[str, HyperParameterValue], reporter: JobReporter) -> Any:
    """The model to train, on the training device: LoRA adapters on every linear projection, or the
    model itself for full training.

    peft's "all-linear" leaves the output layer out, as is usual for LoRA. Seed torch's RNG before
    calling: the adapters' initialisation draws from it.
    """
    if hyperparameters["trainingMethod"] != "full":
        lora = LoraConfig(
            r=int(hyperparameters["loraRank"]),
            # peft annotates lora_alpha as int but computes alpha / r in float: fractions work.
            lora_alpha=float(hyperparameters["loraAlpha"]),  # type: ignore[arg-type]
            lora_dropout=float(hyperparameters["loraDropout"]),
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        with quiet_peft():
            model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    method = "full training" if hyperparameters["trainingMethod"] == "full" else "LoRA"
    reporter.log(f"{method}: {trainable:,} of {total:,} parameters train")
    return model.to(training_device())


# --------------------------------------------------------------------------- saving

MODEL_MANIFEST = "tuneforge-model.json"


def save_model(model: Any, tokenizer: Any, inputs: RecipeInputs, *, full: bool) -> dict[str, str]:
    """Write a trained model to ``inputs.model_dir``; return artifact name -> path relative to it.

    - ``adapter/``: the LoRA adapter (peft ``save_pretrained``, safetensors) plus the tokenizer; a
      few MB that load on top of the base model.
    - ``merged/``: a complete HF model with the adapter folded into the weights, written when
      ``saveMergedModel`` is true, and always for full training (then it is the only copy).
    - ``tuneforge-model.json``: which of the two exists and which base model the adapter belongs
      to, read by :func:`tuneforge.serving.generation.load_for_inference`.

    Both folders are portable (:mod:`tuneforge.model.export`): a tokenizer class transformers 4.x
    loads, the base named by its catalog id rather than a local path, and a README saying how to load
    them.
    """
    model_dir = inputs.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    adapter_dir = None if full else "adapter"
    merged_dir = "merged" if full or inputs.hyperparameters["saveMergedModel"] else None
    base = BaseModel(model_id=inputs.base_model.model_id, builtin=inputs.base_model.builtin)
    if adapter_dir:
        model.save_pretrained(str(model_dir / adapter_dir), safe_serialization=True)
        save_tokenizer(tokenizer, model_dir / adapter_dir)
        make_adapter_portable(model_dir / adapter_dir, base)
    if merged_dir:
        merged = model if full else model.merge_and_unload()
        merged.save_pretrained(str(model_dir / merged_dir), safe_serialization=True)
        save_tokenizer(tokenizer, model_dir / merged_dir)
        write_merged_readme(model_dir / merged_dir, base)
    manifest = {
        "base_model_id": inputs.base_model.model_id,
        "base_model_source": inputs.base_model.source,
        "format": "full" if full else "adapter",
        "adapter_dir": adapter_dir,
        "merged_dir": merged_dir,
    }
    (model_dir / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    artifacts = {"manifest": MODEL_MANIFEST}
    if adapter_dir:
        artifacts["adapter"] = adapter_dir
    if merged_dir:
        artifacts["merged"] = merged_dir
    return artifacts


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest :func:`save_model` wrote, or None for a plain HF folder."""
    path = model_dir / MODEL_MANIFEST
    if not path.exists():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def mean_token_loss(model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 32) -> float:
    """Mean cross-entropy over every target token of ``examples`` (not a mean of per-batch means)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    lengths = [len(e.input_ids) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: lengths[i])
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        inputs = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        n = target_count(inputs["labels"])
        if n:
            total += float(model(**forward_inputs(inputs, device), use_cache=False).loss) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def record_validation(
    model: Any,
    validators: Sequence[Sequence[Example]],
    metrics: MetricsWriter,
    outcome: TrainingOutcome,
    epochs: int,
    pad_id: int,
) -> tuple[list[float], dict[str, str]]:
    """Mean token loss per validator, each written to its Bedrock metrics file after the last step.

    Returns the losses in validator order and artifact name -> path relative to the output folder.
    """
    losses: list[float] = []
    artifacts = {
        "trainingMetrics": metrics.relative(metrics.training_csv),
        "performanceMetrics": metrics.relative(metrics.performance_csv),
    }
    for index, validator in enumerate(validators):
        loss = mean_token_loss(model, validator, pad_id)
        metrics.validation(index, outcome.steps - 1, epochs - 1, loss)
        losses.append(loss)
        artifacts[f"validationMetrics{index}"] = metrics.relative(metrics.validation_csv(index))
    return losses, artifacts


# --------------------------------------------------------------------------- library quirks


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence peft 0.21's FutureWarning about transformers' renamed ``is_gradient_checkpointing``.

    peft reads the deprecated attribute whenever it wraps a model; the warning is about peft's code,
    not ours, and would otherwise fail every run under ``-W error``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
