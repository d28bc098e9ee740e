"""Memory planning: a job's peak memory, estimated before it is queued, and what to change to fit.

Torch-free (the API process runs it): the model's shape comes from config.json or the built-in
table, the device's memory from /proc/meminfo or ``nvidia-smi``.

**The estimate** (bytes) is the sum of what a training step holds at its peak, the backward pass:

* weights: every parameter in fp32 (workers load fp32 master weights whatever the checkpoint's
  dtype), plus, under bf16 autocast, the bf16 copy of each matmul weight that autocast makes and
  the backward pass keeps;
* gradients (fp32) and AdamW's two fp32 states for the trainable parameters: all of them for full
  training, the adapters for LoRA;
* activations: per token of the micro-batch, what each layer saves for the backward pass
  (:data:`LAYER_HIDDEN_FACTOR` x hidden + :data:`LAYER_MLP_FACTOR` x MLP width, in the compute
  dtype) plus the logits and the loss's fp32 copies of them. With gradient checkpointing only each
  layer's input is kept, plus one layer's activations while it is recomputed. The micro-batch is
  ``ceil(batchSize / gradientAccumulationSteps)`` records of the longest length a record may have
  (maxSequenceLength, or the model's context), so the figure is the worst step, not the typical one;
* a DISTILLATION teacher held in memory next to the student (its fp32 weights, and its logits when
  logitDistillationWeight > 0);
* the runtime: what a worker process holds before the model exists (Python, torch, transformers,
  peft), measured at 353 MiB on CPU (and 112 MiB more under bf16 autocast); on a GPU, the CUDA
  context and kernels' workspace.

Attention is counted as linear in the sequence length: transformers' SDPA path runs a fused
(flash) kernel for the unmasked right-padded batches the training loop sends.

The factors were fitted to peak RSS measured on CPU over Llama shapes from forge-small up to
100M parameters, LoRA and full, fp32 and bf16, with and without checkpointing (tests/unit/
memory_probe.py); a test keeps the estimate within 30% of the measured peak. The measurement
depends on the worker's allocator setting (:func:`tuneforge.recipes.memory.steady_allocator`):
without it glibc's heap fragments and the same job's peak moves by up to 2x with record lengths.

**The budget** is the training device's memory, times a safety fraction, shared by the jobs that
run at once (``workerConcurrency``): on a GPU (``nvidia-smi`` lists one) 90% of its memory; on the
CPU 80% of MemTotal, leaving the rest to the OS, the API server and inference engines. MemTotal,
not MemAvailable: a job runs later than it is created, and the same request should get the same
answer. ``TUNEFORGE_TRAINING_MEMORY_BYTES`` replaces the detected budget.

**Fitting**: when the job as asked does not fit, gradient checkpointing goes on (unless the request
said ``gradientCheckpointing=false``), then the micro-batch halves (gradientAccumulationSteps rises)
until one record per micro-batch. Neither changes what is learned: the step's loss is the mean over
the whole batch either way. When nothing fits the job is refused with the numbers.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from tuneforge.catalog.families import ALL_LINEAR, FAMILIES, lora_target_modules
from tuneforge.catalog.hyperparameters import HyperParameterError, HyperParameterValue
from tuneforge.catalog.models import (
    BUILTIN_ARCHITECTURES,
    BUILTIN_VOCAB_SIZE,
    PRETRAINED_ARCHITECTURES,
    SMOLLM2_VOCAB_SIZE,
    ArchitectureConfig,
    FoundationModel,
)
from tuneforge.catalog.service import Catalog
from tuneforge.settings import Settings
from tuneforge.storage import StorageError

MIB = 1 << 20
GIB = 1 << 30

CPU_RUNTIME_BYTES = 360 * MIB
"""RSS of a worker after importing torch, transformers and peft (353 MiB measured)."""
GPU_RUNTIME_BYTES = 1 * GIB
"""GPU memory a process holds before its first tensor: the CUDA context and cuBLAS/cuDNN workspaces."""
CPU_SAFETY_FRACTION = 0.8
GPU_SAFETY_FRACTION = 0.9

CPU_BF16_RUNTIME_BYTES = 112 * MIB
"""What bf16 autocast adds on the CPU whatever the model's size (oneDNN's bf16 kernels and their
buffers): 109-115 MiB measured at micro-batches of 1,024 to 4,096 tokens."""

LAYER_HIDDEN_FACTOR = 10
"""Hidden-width tensors one decoder layer saves per token for the backward pass (norm inputs and
outputs, q/k/v before and after RoPE, attention output, residuals, the matmuls' compute-dtype
inputs), fitted to measurements: 5,350-5,800 elements per token and layer on forge-small
(hidden 256, MLP 768) in fp32 and bf16, LoRA and full."""
LAYER_MLP_FACTOR = 4
"""MLP-width tensors per token and layer (gate, up, the activation, their product, its cast)."""
LOGITS_BYTES = 16
"""Bytes per token and vocabulary entry: the logits, the loss's fp32 copy, log-softmax and its gradient."""


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: a decoder's widths and depth, read from config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    learned_positions: int = 0
    """GPT-2's position embedding table (rows); 0 for rotary models."""

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection by name, for every family's names."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_width, self.kv_width
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
            "qkv_proj": (h, q + 2 * kv),
            "gate_up_proj": (h, 2 * i),
            "attn.c_attn": (h, 3 * h),
            "attn.c_proj": (h, h),
            "mlp.c_fc": (h, i),
            "mlp.c_proj": (i, h),
        }

    @property
    def layer_parameters(self) -> int:
        h, i, q, kv = self.hidden, self.intermediate, self.q_width, self.kv_width
        mlp = (3 if self.gated_mlp else 2) * h * i
        return 2 * h * q + 2 * h * kv + mlp + 2 * h

    @property
    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_parameters + embeddings + self.hidden + self.learned_positions * self.hidden

    @property
    def matmul_parameters(self) -> int:
        """Weights that go through a matmul (autocast keeps a bf16 copy of each): all but the input table."""
        return self.layers * self.layer_parameters + self.vocab * self.hidden

    def lora_parameters(self, targets: list[str] | str, rank: int) -> int:
        """Adapter parameters: r x (in + out) per adapted projection and layer."""
        shapes = self.module_shapes()
        if isinstance(targets, str):  # peft's all-linear on a family outside the table: Llama-like
            names: list[str] = [*FAMILIES["llama"].all] if targets == ALL_LINEAR else [targets]
        else:
            names = targets
        per_layer = 0
        for name in names:
            if name in shapes:
                per_layer += sum(shapes[name])
            else:  # a bare GPT-2 name, or a module outside the table: both projections it may match
                matches = [shape for full, shape in shapes.items() if full.endswith("." + name)]
                per_layer += sum(sum(shape) for shape in matches) or 2 * self.hidden
        return self.layers * rank * per_layer

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """A shape from an HF config.json (Llama-style keys, or GPT-2's ``n_*`` ones)."""

        def pick(*keys: str, default: int | None = None) -> int:
            for key in keys:
                value = config.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
            if default is None:
                raise ValueError(f"config.json has none of {', '.join(keys)}")
            return default

        model_type = str(config.get("model_type", ""))
        text = config.get("text_config")
        if isinstance(text, Mapping) and "hidden_size" not in config:  # multimodal wrappers (gemma3)
            return replace(cls.from_config(text), model_type=model_type)
        hidden = pick("hidden_size", "n_embd", "d_model")
        heads = pick("num_attention_heads", "n_head")
        gpt2 = model_type == "gpt2"
        return cls(
            model_type=model_type,
            hidden=hidden,
            intermediate=pick("intermediate_size", "n_inner", default=4 * hidden),
            layers=pick("num_hidden_layers", "n_layer"),
            heads=heads,
            kv_heads=pick("num_key_value_heads", default=heads),
            head_dim=pick("head_dim", default=hidden // heads),
            vocab=pick("vocab_size"),
            tied_embeddings=bool(config.get("tie_word_embeddings", gpt2 or model_type.startswith("gemma"))),
            gated_mlp=not gpt2,
            learned_positions=pick("n_positions", default=1024) if gpt2 else 0,
        )

    @classmethod
    def from_architecture(cls, arch: ArchitectureConfig, vocab: int) -> ModelShape:
        """The built-in models: Llama architecture; the forge family's embeddings are untied, SmolLM2's tied."""
        return cls(
            model_type="llama",
            hidden=arch.hidden_size,
            intermediate=arch.intermediate_size,
            layers=arch.num_hidden_layers,
            heads=arch.num_attention_heads,
            kv_heads=arch.num_key_value_heads,
            head_dim=arch.hidden_size // arch.num_attention_heads,
            vocab=vocab,
            tied_embeddings=arch.tie_word_embeddings,
        )


SPECIAL_TOKEN_ALLOWANCE = 16
"""Tokens a record may have beyond one per byte of its line: ``<bos>``/``<eos>`` and a template's system default."""


def longest_line_bytes(handle: BinaryIO, chunk_bytes: int = 1 << 20) -> int:
    """The length in bytes of the longest line read from ``handle``, in fixed-size chunks (bounded
    memory; the handle is the object store's stream, so the file never has to be local)."""
    longest = current = 0
    while chunk := handle.read(chunk_bytes):
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            longest = max(longest, current + len(piece))
            current = 0
        current += len(pieces[-1])
    return max(longest, current)


def read_shape(folder: Path) -> ModelShape | None:
    """The shape in ``folder/config.json``; None when there is none (or it is not a decoder's)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        return ModelShape.from_config(config) if isinstance(config, dict) else None
    except (OSError, ValueError):
        return None


def builtin_shape(name: str) -> ModelShape | None:
    """A built-in model's shape from the catalog's tables: known before its folder exists."""
    if name in BUILTIN_ARCHITECTURES:
        return ModelShape.from_architecture(BUILTIN_ARCHITECTURES[name], BUILTIN_VOCAB_SIZE)
    if name in PRETRAINED_ARCHITECTURES:
        return ModelShape.from_architecture(PRETRAINED_ARCHITECTURES[name], SMOLLM2_VOCAB_SIZE)
    return None


@dataclass(frozen=True)
class TrainingShape:
    """The settings memory depends on, from the job's typed hyperparameters."""

    full: bool
    lora_targets: list[str] | str
    lora_rank: int
    lora_dropout: bool
    batch_size: int
    accumulation: int
    sequence_length: int
    checkpointing: bool
    bf16: bool

    @property
    def micro_batch(self) -> int:
        return math.ceil(self.batch_size / self.accumulation)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.sequence_length

    def describe(self) -> str:
        return (
            f"{'full training' if self.full else f'LoRA rank {self.lora_rank}'}, micro-batch {self.micro_batch} "
            f"x {self.sequence_length} tokens (batchSize {self.batch_size}, gradientAccumulationSteps "
            f"{self.accumulation}), gradient checkpointing {'on' if self.checkpointing else 'off'}, "
            f"{'bf16' if self.bf16 else 'fp32'} compute"
        )


@dataclass(frozen=True)
class Teacher:
    shape: ModelShape
    logits: bool
    """Whether the teacher runs on every micro-batch (logit distillation), not only beforehand."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    teacher: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.teacher + self.runtime

    def describe(self) -> str:
        parts = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("teacher", self.teacher),
            ("runtime", self.runtime),
        ]
        detail = ", ".join(f"{name} {gib(value)}" for name, value in parts if value)
        return f"{gib(self.total)} ({detail})"


def gib(value: int) -> str:
    """Bytes for people: GiB with two decimals, or whole MiB below one GiB."""
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / MIB:.0f} MiB"


def estimate(
    model: ModelShape, training: TrainingShape, *, gpu: bool, teacher: Teacher | None = None
) -> MemoryEstimate:
    """Peak bytes of one training step of ``model`` (see the module docstring for the rule)."""
    compute_bytes = 2 if training.bf16 else 4
    weights = 4 * model.parameters + (2 * model.matmul_parameters if training.bf16 else 0)
    trainable = model.parameters if training.full else model.lora_parameters(training.lora_targets, training.lora_rank)
    tokens = training.tokens
    per_layer = (LAYER_HIDDEN_FACTOR * model.hidden + LAYER_MLP_FACTOR * model.intermediate) * compute_bytes
    if not training.full and training.lora_dropout:  # each adapter keeps its own dropped-out copy of its input
        per_layer += 4 * sum(model.module_shapes().get(name, (model.hidden, 0))[0] for name in _names(training))
    logits = tokens * model.vocab * LOGITS_BYTES
    if training.checkpointing:
        layers = tokens * (model.layers * model.hidden * 4 + per_layer)
    else:
        layers = tokens * model.layers * per_layer
    teacher_bytes = 0
    if teacher is not None:
        teacher_bytes = 4 * teacher.shape.parameters
        if teacher.logits:
            teacher_bytes += tokens * teacher.shape.vocab * LOGITS_BYTES
    return MemoryEstimate(
        weights=weights,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=layers + logits,
        teacher=teacher_bytes,
        runtime=GPU_RUNTIME_BYTES if gpu else CPU_RUNTIME_BYTES + (CPU_BF16_RUNTIME_BYTES if training.bf16 else 0),
    )


def _names(training: TrainingShape) -> list[str]:
    targets = training.lora_targets
    return [*FAMILIES["llama"].all] if isinstance(targets, str) else targets


@dataclass(frozen=True)
class MemoryBudget:
    bytes: int
    device: str
    """Where the number comes from, for the job log and refusals."""
    gpu: bool
    bf16: bool
    """Whether ``precision=auto`` computes in bf16 there (native bf16 hardware)."""


def detect_budget(override: int, concurrency: int) -> MemoryBudget:
    """The memory one job may use on the device a worker trains on (see the module docstring)."""
    gpu = _gpu_memory()
    if gpu is not None:
        total, capability = gpu
        share = int(total * GPU_SAFETY_FRACTION) // concurrency
        device = f"GPU memory: {GPU_SAFETY_FRACTION:.0%} of {gib(total)}"
        bf16 = capability >= 8.0
    else:
        total = _meminfo_total()
        share = int(total * CPU_SAFETY_FRACTION) // concurrency
        device = f"CPU RAM: {CPU_SAFETY_FRACTION:.0%} of MemTotal {gib(total)}"
        bf16 = cpu_has_bf16()
    if concurrency > 1:
        device += f", shared by {concurrency} concurrent jobs"
    if override > 0:
        return MemoryBudget(override, "TUNEFORGE_TRAINING_MEMORY_BYTES", gpu is not None, bf16)
    return MemoryBudget(share, device, gpu is not None, bf16)


def _gpu_memory() -> tuple[int, float] | None:
    """(bytes, compute capability) of the first GPU ``nvidia-smi`` lists; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        memory, capability = out.splitlines()[0].split(",")
        return int(float(memory)) * MIB, float(capability)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * GIB


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX, as :func:`tuneforge.recipes.performance.native_bf16` decides on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_tile" in flags


class MemoryRefused(ValueError):
    """Nothing fits; the message gives the numbers and is user-facing."""


@dataclass(frozen=True)
class MemoryPlan:
    training: TrainingShape
    estimate: MemoryEstimate
    budget: MemoryBudget
    changes: tuple[str, ...]
    """What was changed to fit, and why; empty when the job fits as asked."""

    def hyperparameters(self) -> dict[str, HyperParameterValue]:
        """The values the worker must use: checkpointing decided, accumulation as planned."""
        return {
            "gradientCheckpointing": "true" if self.training.checkpointing else "false",
            "gradientAccumulationSteps": self.training.accumulation,
        }

    def log_lines(self) -> list[str]:
        head = (
            f"memory plan: estimated peak {self.estimate.describe()} with {self.training.describe()}; "
            f"budget {gib(self.budget.bytes)} ({self.budget.device})"
        )
        return [head, *self.changes]


def training_shape(
    values: Mapping[str, HyperParameterValue], targets: list[str] | str, sequence_length: int, bf16: bool
) -> TrainingShape:
    precision = str(values.get("precision", "auto"))
    return TrainingShape(
        full=values.get("trainingMethod") == "full",
        lora_targets=targets,
        lora_rank=int(values.get("loraRank", 16)),
        lora_dropout=float(values.get("loraDropout", 0.0)) > 0,
        batch_size=int(values["batchSize"]),
        accumulation=int(values["gradientAccumulationSteps"]),
        sequence_length=sequence_length,
        checkpointing=values.get("gradientCheckpointing") == "true",
        bf16=precision == "bf16" or (precision == "auto" and bf16),
    )


def plan(
    model: ModelShape,
    values: Mapping[str, HyperParameterValue],
    targets: list[str] | str,
    sequence_length: int,
    budget: MemoryBudget,
    teacher: Teacher | None = None,
) -> MemoryPlan:
    """The settings a job runs with so that its estimate fits ``budget``; :class:`MemoryRefused` if none do."""
    asked = training_shape(values, targets, sequence_length, budget.bf16)
    candidates = [asked]
    if values.get("gradientCheckpointing") == "auto" and not asked.checkpointing:
        candidates.append(replace(asked, checkpointing=True))
    last = candidates[-1]
    while last.micro_batch > 1:
        last = replace(last, accumulation=min(last.batch_size, math.ceil(last.batch_size / (last.micro_batch // 2))))
        candidates.append(last)
    for candidate in candidates:
        figure = estimate(model, candidate, gpu=budget.gpu, teacher=teacher)
        if figure.total <= budget.bytes:
            return MemoryPlan(candidate, figure, budget, _changes(asked, candidate, model, budget, teacher))
    smallest = estimate(model, last, gpu=budget.gpu, teacher=teacher)
    raise MemoryRefused(
        f"The job does not fit in memory: its estimated peak is {smallest.describe()} even with "
        f"{last.describe()}, and the training device has {gib(budget.bytes)} ({budget.device}). Lower "
        "maxSequenceLength, use trainingMethod=lora or a smaller base model"
    )


def _changes(
    asked: TrainingShape, chosen: TrainingShape, model: ModelShape, budget: MemoryBudget, teacher: Teacher | None
) -> tuple[str, ...]:
    if chosen == asked:
        return ()
    before = estimate(model, asked, gpu=budget.gpu, teacher=teacher)
    why = f"as asked the estimated peak is {gib(before.total)}, over the budget of {gib(budget.bytes)}"
    changes = []
    if chosen.checkpointing and not asked.checkpointing:
        changes.append(f"memory plan: turned on gradient checkpointing: {why}")
    if chosen.accumulation != asked.accumulation:
        changes.append(
            f"memory plan: raised gradientAccumulationSteps from {asked.accumulation} to {chosen.accumulation} "
            f"(micro-batch {asked.micro_batch} -> {chosen.micro_batch} records; the step's loss is unchanged): {why}"
        )
    return tuple(changes)


def inference_rows(model: ModelShape, sequence_length: int, budget: MemoryBudget, cap: int) -> tuple[int, str]:
    """Rows of a batch inference job's continuous batch that fit ``budget``, at most ``cap``; and why.

    Serving holds the weights once (fp32 here, 4 bytes a parameter: what the engines load on a CPU,
    and an upper bound on a GPU) and, per row, its KV cache over ``sequence_length`` tokens (keys
    and values of every layer) plus the prefill's transient attention scores (heads x length^2),
    hidden and MLP activations, and one row of logits. Decoding a token costs about the same for
    one row as for ``cap`` (reading the weights dominates), so the largest batch that fits is the
    fastest; past ``cap`` (``TUNEFORGE_BATCH_MAX_ROWS``) the per-step bookkeeping of a longer
    batch outweighs what it saves on these CPUs.
    """
    weights = 4 * model.parameters
    length = max(1, sequence_length)
    kv = 2 * model.layers * model.kv_width * length * 4
    prefill = 4 * (model.heads * length * length + (4 * model.hidden + 2 * model.intermediate) * length)
    per_row = kv + prefill + 4 * model.vocab
    free = budget.bytes - weights
    rows = max(1, min(cap, free // per_row)) if free > 0 else 1
    why = (
        f"batch of {rows} rows: weights {gib(weights)}, {gib(per_row)} per row of up to {length} tokens, "
        f"budget {gib(budget.bytes)} ({budget.device}), cap {cap}"
    )
    return int(rows), why


class MemoryPlanner:
    """The job service's view of memory: model shapes from the catalog, the device's budget once."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog

    def shape(self, model: FoundationModel) -> ModelShape | None:
        """The model's shape: the built-in table, else its folder's config.json; None when unknown."""
        if model.builtin:
            name = model.source.split(":", 1)[1]
            return builtin_shape(name) or read_shape(self.settings.models_dir / "builtin" / name)
        try:
            return read_shape(self.catalog.local_folder(model))
        except StorageError:
            return None

    @functools.cached_property
    def budget(self) -> MemoryBudget:
        return detect_budget(self.settings.training_memory_bytes, self.settings.worker_concurrency)

    def preview(
        self, model: FoundationModel, values: Mapping[str, HyperParameterValue], sequence_length: int
    ) -> dict[str, Any] | None:
        """The plan for a dataset whose longest record is ``sequence_length`` tokens, for ``tuneforge
        data validate``: what the job would run with, or why it would be refused. None when the
        model's shape is unknown here. A DISTILLATION teacher is not counted (the preview has none)."""
        shape = self.shape(model)
        if shape is None:
            return None
        try:
            targets = lora_target_modules(shape.model_type, str(values.get("loraTargetModules", "all")))
            chosen = plan(shape, values, targets, sequence_length, self.budget)
        except (HyperParameterError, MemoryRefused) as exc:
            return {"fits": False, "message": str(exc), "budget_bytes": self.budget.bytes}
        return {
            "fits": True,
            "estimate_bytes": chosen.estimate.total,
            "budget_bytes": self.budget.bytes,
            "lines": chosen.log_lines(),
            "hyperparameters": chosen.hyperparameters(),
        }
