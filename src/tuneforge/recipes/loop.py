"""The training loop the recipes share, the trainable model (LoRA or full) and evaluation.

Recipes stay readable top to bottom (setup -> train -> evaluate -> save) by calling these. Nothing
here knows about jobs, the database or HTTP: progress goes through a :class:`JobReporter`.

**Precision and utilisation** are in :mod:`tuneforge.recipes.performance`: bf16 autocast where the
hardware has native bf16, fp32 master weights, and MFU logged with every step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import LoraConfig, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from tuneforge.catalog.families import lora_fan_in_fan_out, lora_target_modules
from tuneforge.catalog.hyperparameters import HyperParameterValue
from tuneforge.model.loading import quiet_peft
from tuneforge.recipes import distributed
from tuneforge.recipes.base import JobReporter
from tuneforge.recipes.batching import (
    collate,
    forward_inputs,
    length_grouped_batches,
    split_micro_batches,
    target_count,
)
from tuneforge.recipes.checkpoints import load_checkpoint, save_checkpoint
from tuneforge.recipes.outputs import MetricsWriter
from tuneforge.recipes.performance import (
    FlopCounter,
    autocast,
    model_device,
    peak_flops,
    resolve_precision,
    training_device,
)
from tuneforge.recipes.tokenising import IGNORE_INDEX, Example


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
    data_parallel_strategy: str = "ddp"
    """ddp or fsdp, with several ranks; see :mod:`tuneforge.recipes.distributed`."""
    checkpoint_on_stop: bool = True
    """A stop checkpoints the step it reached, so that a paused (or interrupted) job resumes there. A
    benchmark stopping a large model after its timed steps turns it off."""

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
            data_parallel_strategy=str(values.get("dataParallelStrategy", "ddp")),
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
    stopped_early: bool = False
    """The ``epoch_end`` hook ended training before the last epoch; the model is still saved."""


class TrainingItem(Protocol):
    """What the loop needs to know of one record it trains on, whatever the recipe's loss.

    An :class:`~tuneforge.recipes.tokenising.Example` is one row with its target tokens; a
    preference pair is two rows (prompt + each answer) and one target (DPO's loss is a mean over
    pairs). The recipe's ``collate_batch`` turns a list of items into the tensors its loss reads.
    """

    @property
    def rows(self) -> tuple[int, ...]:
        """The real lengths of the rows this item adds to a batch."""
        ...

    @property
    def targets(self) -> int:
        """How many units the item adds to a batch's loss denominator."""
        ...


Collate = Callable[[Sequence[Any], int], dict[str, torch.Tensor]]
"""(items of a micro-batch, pad id) -> the tensors the loss function reads."""

EpochEnd = Callable[[int, Any], bool]
"""(epoch index just finished, model) -> True to end training now (early stopping, a pruned trial)."""

LossFunction = Callable[[Any, dict[str, torch.Tensor], int], torch.Tensor]
"""(model, micro-batch, target tokens in the whole batch) -> that micro-batch's share of the batch
loss: its summed token loss divided by the batch's target count, so shares add up to the mean."""


def output_layer(model: Any) -> torch.nn.Module | None:
    """The module that turns hidden states into logits (under DDP, the wrapped model's), if exposed."""
    inner = getattr(model, "module", model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Module) else None


def target_logits(model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits at the positions whose next token is a target (label not ignored): ``[N, vocab]``.

    Exactly what ``model(**inputs).logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]`` is, but the output
    layer only runs on those N positions: a hook on it picks their hidden states before the matmul,
    and whatever the model does to its logits afterwards (Gemma's soft-capping, a logit scale) sees
    only them. In fine-tuning on prompt-and-answer data most positions are prompt, and the output
    layer is the largest matmul a token meets when the vocabulary is large (SmolLM2's 49,152 x 576
    is 44% of a 64M student's parameters, Llama 3's 128,256 x 4,096 half a billion), so this is most
    of the saving, in time and in memory (the full logits tensor is never made).
    """
    labels = inputs["labels"]
    wanted = torch.nn.functional.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)
    head = output_layer(model)
    if head is None:
        raise ValueError("the model exposes no output layer (get_output_embeddings)")

    def pick(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][wanted].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        output = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
    finally:
        handle.remove()
    logits: torch.Tensor = output.logits[0]
    return logits


def causal_lm_loss(model: Any, inputs: dict[str, torch.Tensor], batch_targets: int) -> torch.Tensor:
    """Cross-entropy on the target tokens, summed and divided by the batch total (transformers' loss, on
    the target positions' logits alone: :func:`target_logits`). A model that exposes no output layer
    gets transformers' own loss on its full logits."""
    if output_layer(model) is None:
        output = model(**inputs, use_cache=False, num_items_in_batch=torch.tensor(max(batch_targets, 1)))
        whole: torch.Tensor = output.loss
        return whole
    labels = inputs["labels"][:, 1:]
    logits = target_logits(model, inputs).float()
    loss = torch.nn.functional.cross_entropy(logits, labels[labels != IGNORE_INDEX], reduction="sum")
    return loss / max(batch_targets, 1)


def train(
    model: Any,
    examples: Sequence[TrainingItem],
    config: TrainingConfig,
    reporter: JobReporter,
    metrics: MetricsWriter,
    checkpoint_dir: Path,
    pad_id: int,
    loss_function: LossFunction = causal_lm_loss,
    epoch_end: EpochEnd | None = None,
    collate_batch: Collate = collate,
    on_checkpoint: Callable[[int, Any], None] | None = None,
) -> TrainingOutcome:
    """Train the parameters of ``model`` that require grad; resume from ``checkpoint_dir`` if possible.

    AdamW (no decay on 1-D parameters), linear warmup then cosine decay to 0, gradient clipping,
    gradient accumulation. The loss of a step is the mean over every target token of the whole
    batch: each micro-batch adds its *summed* token loss divided by the batch's target count, so
    accumulation changes memory use, never the result. ``loss_function`` computes that share
    (distillation swaps in a loss that also compares with a teacher's logits; DPO, with
    ``collate_batch``, one over preference pairs). ``epoch_end`` runs
    after each epoch but the last (:class:`EpochValidation`); when it says so, training ends there
    with ``stopped_early`` and the recipe evaluates and saves as usual. ``on_checkpoint(step, model)``
    runs after each checkpoint the schedule writes (rank 0 only): the recipe saves the weights of
    that step as a model of their own (:func:`~tuneforge.recipes.outputs.checkpoint_models`).
    ``reporter.should_stop()`` is checked before every step; a stop returns at once, writing a
    checkpoint of the step reached first, so that a *paused* job resumes from there (a stopped
    job's files are removed anyway).

    Runs on the device ``model`` is on (batches follow it), in ``config.precision``, and reports
    real tokens/s and MFU with each step's loss (:mod:`tuneforge.recipes.performance`).

    Under ``torchrun`` every rank calls this with the same arguments and trains its share of each
    batch (:mod:`tuneforge.recipes.distributed`); the step's loss and tokens are summed over the
    ranks, so rank 0 reports the same figures one process would. Only rank 0 writes checkpoints;
    every rank resumes from them. With ``data_parallel_strategy`` fsdp the ranks train a sharded
    copy of ``model``; the trained weights are copied back into ``model`` before ``epoch_end`` and
    before this returns.
    """
    lengths = [sum(e.rows) for e in examples]
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    # Before the optimizer: under FSDP it steps the shards of a sharded copy of ``model``.
    parallel = distributed.DataParallel(model, config.data_parallel_strategy)
    params = parallel.trainable_parameters()
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
    # The strategy enters through DataParallel.fingerprint, only where it changes the checkpoint;
    # whether a stop checkpoints changes nothing a checkpoint holds.
    settings = {k: v for k, v in asdict(config).items() if k not in ("data_parallel_strategy", "checkpoint_on_stop")}
    fingerprint = {**settings, "examples": len(examples), "parameters": sum(p.numel() for p in params)}
    fingerprint.update(parallel.fingerprint())

    state = load_checkpoint(checkpoint_dir, model, parallel.checkpointed(optimizer), scheduler, fingerprint, reporter)
    step, tokens_seen, epoch_losses = state if state else (0, 0, [])
    if state:
        parallel.load_trained()
        reporter.log(f"resumed from checkpoint at step {step}/{total_steps}")
    metrics.start_training(step)

    rank, world = distributed.rank_and_world()
    if world > 1:
        reporter.log(
            f"data parallel on {world} processes: {config.batch_size} records per optimizer step in all, "
            f"about {math.ceil(config.batch_size / world)} per process"
            + (", weights and optimizer state sharded (FSDP)" if parallel.sharded else "")
        )
    forward_model = parallel.module
    # Targets per record, so each rank knows the whole batch's count without a collective.
    record_targets = [e.targets for e in examples]
    model.train()
    forward_model.train()
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
            if distributed.agree(reporter.should_stop()):
                # The step reached is checkpointed, so a paused job resumes from it (collective under FSDP).
                parallel.gather()
                if step > 0 and config.checkpoint_on_stop:
                    stopped_optimizer = parallel.checkpointed(optimizer, for_saving=True)
                    if distributed.is_primary():
                        save_checkpoint(
                            checkpoint_dir,
                            model,
                            stopped_optimizer,
                            scheduler,
                            fingerprint,
                            step=step,
                            tokens_seen=tokens_seen + tokens_this_run,
                            epoch_losses=epoch_losses,
                        )
                return TrainingOutcome(
                    steps=step,
                    total_steps=total_steps,
                    epochs_done=epoch,
                    stopped=True,
                    final_loss=_mean(epoch_losses),
                    tokens_seen=tokens_seen + tokens_this_run,
                    seconds=time.perf_counter() - started,
                )
            targets = sum(record_targets[i] for i in batch)
            share = distributed.rank_share(batch, lengths, rank, world) if world > 1 else batch
            # A rank left without records (a batch smaller than the world) still takes part in the
            # gradient all-reduce, with one record whose loss counts for nothing.
            weight = float(world) if share else 0.0
            parts = split_micro_batches(share or batch[:1], lengths, config.gradient_accumulation_steps)
            micro = [collate_batch([examples[i] for i in part], pad_id) for part in parts]
            loss = 0.0
            step_tokens = 0
            step_flops = 0.0
            for index, (part, inputs) in enumerate(zip(parts, micro, strict=True)):
                with parallel.no_sync(last=index == len(parts) - 1), autocast(device, precision):
                    micro_loss = loss_function(forward_model, forward_inputs(inputs, device), targets) * weight
                micro_loss.backward()  # type: ignore[no-untyped-call]
                loss += float(micro_loss.detach()) / world
                if share:
                    step_tokens += sum(lengths[i] for i in part)
                    step_flops += flops.rows([row for i in part for row in examples[i].rows])
            if world > 1:
                loss, summed_tokens, step_flops = distributed.all_sum([loss, step_tokens, step_flops])
                step_tokens = int(summed_tokens)
            tokens_this_run += step_tokens
            flops_this_run += step_flops
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = max(time.perf_counter() - started, 1e-9)
            tokens_per_second = tokens_this_run / elapsed
            mfu = flops_this_run / elapsed / (peak * world)
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
            at_epoch_end = step % steps_per_epoch == 0
            every = config.checkpoint_every_steps
            due = (every == 0 and at_epoch_end) or (every > 0 and (step % every == 0 or step == total_steps))
            if due:  # collective under FSDP: every rank gathers, rank 0 writes
                parallel.gather()
                saved_optimizer = parallel.checkpointed(optimizer, for_saving=True)
            if due and distributed.is_primary():
                save_checkpoint(
                    checkpoint_dir,
                    model,
                    saved_optimizer,
                    scheduler,
                    fingerprint,
                    step=step,
                    tokens_seen=tokens_seen + tokens_this_run,
                    epoch_losses=epoch_losses,
                )
                if on_checkpoint is not None:
                    on_checkpoint(step, model)
            if epoch_end is not None and at_epoch_end and step < total_steps and epoch_end(epoch, parallel.gather()):
                return TrainingOutcome(
                    steps=step,
                    total_steps=total_steps,
                    epochs_done=epoch + 1,
                    stopped=False,
                    final_loss=_mean(epoch_losses),
                    tokens_seen=tokens_seen + tokens_this_run,
                    seconds=time.perf_counter() - started,
                    stopped_early=True,
                )
    parallel.gather()
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


def prepare_for_training(model: Any, hyperparameters: Mapping[str, HyperParameterValue], reporter: JobReporter) -> Any:
    """The model to train, on the training device: LoRA adapters on the projections
    ``loraTargetModules`` names for the model's family (:mod:`tuneforge.catalog.families`), or the
    model itself for full training; with gradient checkpointing when ``gradientCheckpointing`` is
    ``true`` (the job service sets it when the memory plan needs it).

    Checkpointing is torch's non-reentrant kind (transformers' default): unlike the reentrant one it
    needs no input that requires grad, so a frozen embedding under LoRA works without peft's
    ``enable_input_require_grads``. Precision is unaffected: the recomputed forward runs under the
    same bf16 autocast as the first (torch.utils.checkpoint restores the autocast state).

    Seed torch's RNG before calling: the adapters' initialisation draws from it.
    """
    model_type = str(getattr(model.config, "model_type", ""))
    if hyperparameters["trainingMethod"] != "full":
        targets = lora_target_modules(model_type, str(hyperparameters.get("loraTargetModules", "all")))
        lora = LoraConfig(
            r=int(hyperparameters["loraRank"]),
            # peft annotates lora_alpha as int but computes alpha / r in float: fractions work.
            lora_alpha=float(hyperparameters["loraAlpha"]),  # type: ignore[arg-type]
            lora_dropout=float(hyperparameters["loraDropout"]),
            target_modules=targets,
            fan_in_fan_out=lora_fan_in_fan_out(model_type),
            task_type="CAUSAL_LM",
        )
        with quiet_peft():
            model = get_peft_model(model, lora)
        reporter.log(
            f"LoRA on {model_type or 'unknown'} modules: {targets if isinstance(targets, str) else ', '.join(targets)}"
        )
    if hyperparameters.get("gradientCheckpointing") == "true":
        kwargs = {"use_reentrant": False}
        with quiet_peft():
            # transformers 5 renamed gradient_checkpointing_enable (now a deprecated alias); 4.x has only it.
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        reporter.log("gradient checkpointing on: layer activations are recomputed in the backward pass")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    method = "full training" if hyperparameters["trainingMethod"] == "full" else "LoRA"
    reporter.log(f"{method}: {trainable:,} of {total:,} parameters train")
    return model.to(training_device())


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
            total += float(causal_lm_loss(model, forward_inputs(inputs, device), n)) * n
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


class EpochValidation:
    """The ``epoch_end`` hook of a recipe with a validation set: validation loss after every epoch.

    Each loss goes to the job log and to ``report`` (automatic tuning's pruner; True = prune, end
    the trial). ``measure`` is the loss (mean token cross-entropy; DPO passes its held-out pair loss).
    Then early stopping: after ``patience`` epochs in a row without a new best loss,
    training ends and the weights of the best epoch are put back, so a model that started to
    overfit is saved as it was at its best. ``patience`` 0 turns early stopping off.
    """

    def __init__(
        self,
        validator: Sequence[Any],
        pad_id: int,
        reporter: JobReporter,
        patience: int,
        report: Callable[[int, float], bool] | None = None,
        measure: Callable[[Any, Sequence[Any], int], float] = mean_token_loss,
    ) -> None:
        self.measure = measure
        self.validator = validator
        self.pad_id = pad_id
        self.reporter = reporter
        self.patience = patience
        self.report = report
        self.best = math.inf
        self.best_weights: dict[str, torch.Tensor] = {}
        self.since_best = 0

    def __call__(self, epoch: int, model: Any) -> bool:
        loss = self.measure(model, self.validator, self.pad_id)
        self.reporter.log(f"epoch {epoch + 1}: validation loss {loss:.4f}")
        if self.report is not None and self.report(epoch, loss):
            return True
        if self.patience <= 0:
            return False
        if loss < self.best:
            self.best, self.since_best = loss, 0
            self.best_weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
            return False
        self.since_best += 1
        if self.since_best < self.patience:
            return False
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.best_weights:
                    p.copy_(self.best_weights[name])
        self.reporter.log(
            f"early stopping after epoch {epoch + 1}: validation loss {self.best:.4f} has not improved for "
            f"{self.patience} epochs; the weights of epoch {epoch + 1 - self.patience} are kept"
        )
        return True
