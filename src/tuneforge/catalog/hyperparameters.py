"""Hyperparameter specs as data.

One list of :class:`HyperParameterSpec` per (model, customization type) drives three things:
validation of the string map a CreateModelCustomizationJob request carries, ``tuneforge models
show``, and the table in docs/hyperparameters.md. Bedrock's names come first (``epochCount``,
``batchSize``, ``learningRate``, ``learningRateWarmupSteps``); the extras are tuneforge's own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

HyperParameterValue = int | float | str | bool
Kind = Literal["int", "float", "bool", "choice", "names"]


class HyperParameterError(ValueError):
    """A hyperparameter map that does not satisfy its spec; the message is user-facing."""


@dataclass(frozen=True)
class HyperParameterSpec:
    name: str
    kind: Kind
    default: HyperParameterValue
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    """For ``choice``: the allowed values. For ``names``: the keywords allowed besides a comma list of names."""
    bedrock: bool = False

    def parse(self, raw: str) -> HyperParameterValue:
        text = raw.strip()
        value: HyperParameterValue
        if self.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise HyperParameterError(f"Hyperparameter {self.name} must be an integer, got '{raw}'") from None
        elif self.kind == "float":
            try:
                value = float(text)
            except ValueError:
                raise HyperParameterError(f"Hyperparameter {self.name} must be a number, got '{raw}'") from None
            if not math.isfinite(value):
                raise HyperParameterError(f"Hyperparameter {self.name} must be finite, got '{raw}'")
        elif self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise HyperParameterError(f"Hyperparameter {self.name} must be 'true' or 'false', got '{raw}'")
            value = lowered == "true"
        elif self.kind == "names":
            value = text.replace(" ", "")
            if value not in self.choices and not _NAME_LIST.fullmatch(value):
                raise HyperParameterError(
                    f"Hyperparameter {self.name} must be one of [{', '.join(self.choices)}] or a comma-separated "
                    f"list of module names, got '{raw}'"
                )
        else:
            if text not in self.choices:
                raise HyperParameterError(
                    f"Hyperparameter {self.name} must be one of [{', '.join(self.choices)}], got '{raw}'"
                )
            value = text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low = self.minimum if self.minimum is not None else -math.inf
            high = self.maximum if self.maximum is not None else math.inf
            if not low <= value <= high:
                raise HyperParameterError(
                    f"Hyperparameter {self.name} value {raw} is out of range: "
                    f"must be between {_fmt(self.minimum)} and {_fmt(self.maximum)}"
                )
        return value

    @property
    def range_text(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "bool":
            return "true, false"
        if self.kind == "names":
            return f"{', '.join(self.choices)}, or module names (comma-separated)"
        return f"{_fmt(self.minimum)} - {_fmt(self.maximum)}"


_NAME_LIST = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(,[A-Za-z_][A-Za-z0-9_.]*)*")


def _fmt(value: float | None) -> str:
    if value is None:
        return "unbounded"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:g}"


def resolve(specs: tuple[HyperParameterSpec, ...], raw: dict[str, str]) -> dict[str, HyperParameterValue]:
    """Validate a Bedrock string map against the specs; return every value typed, defaults filled."""
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        raise HyperParameterError(
            f"Unknown hyperparameter(s): {', '.join(unknown)}. Supported: {', '.join(spec.name for spec in specs)}"
        )
    resolved: dict[str, HyperParameterValue] = {}
    for spec in specs:
        resolved[spec.name] = spec.parse(raw[spec.name]) if spec.name in raw else spec.default
    return resolved


def as_strings(values: dict[str, HyperParameterValue]) -> dict[str, str]:
    """The wire form: Bedrock returns hyperparameters as a string map."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()}


_COMMON: tuple[HyperParameterSpec, ...] = (
    HyperParameterSpec("epochCount", "int", 3, "Passes over the training data.", 1, 100, bedrock=True),
    HyperParameterSpec("batchSize", "int", 8, "Records per optimizer step.", 1, 256, bedrock=True),
    HyperParameterSpec(
        "learningRate",
        "float",
        3e-3,
        "Peak learning rate of the AdamW optimizer (linear warmup, then cosine decay).",
        1e-7,
        1.0,
        bedrock=True,
    ),
    HyperParameterSpec(
        "learningRateWarmupSteps",
        "int",
        5,
        "Optimizer steps of linear warmup from 0 to learningRate.",
        0,
        10_000,
        bedrock=True,
    ),
    HyperParameterSpec(
        "trainingMethod",
        "choice",
        "lora",
        "lora trains low-rank adapters on the frozen base; full updates every weight.",
        choices=("lora", "full"),
    ),
    HyperParameterSpec("loraRank", "int", 16, "Rank r of the LoRA adapters.", 1, 256),
    HyperParameterSpec("loraAlpha", "float", 32.0, "LoRA scaling numerator (scale = alpha / r).", 0.0, 1024.0),
    HyperParameterSpec("loraDropout", "float", 0.0, "Dropout on the LoRA path.", 0.0, 0.9),
    HyperParameterSpec(
        "loraTargetModules",
        "names",
        "all",
        "Layers that get LoRA adapters: all = the attention and MLP projections of the model's family, "
        "attention or mlp = one of the two, or a comma-separated list of the family's module names "
        "(docs/models.md lists them per family).",
        choices=("all", "attention", "mlp"),
    ),
    HyperParameterSpec("weightDecay", "float", 0.0, "AdamW decoupled weight decay.", 0.0, 1.0),
    HyperParameterSpec(
        "gradientAccumulationSteps",
        "int",
        1,
        "Micro-batches per optimizer step; the effective batch is batchSize records either way. "
        "Raised at job creation when the job's memory estimate does not fit otherwise.",
        1,
        256,
    ),
    HyperParameterSpec(
        "dataParallelProcesses",
        "int",
        1,
        "Training processes (ranks) per machine, data parallel through torchrun: each takes a share of every "
        "batch of batchSize records, so the result is that of one process. Over gloo on CPUs, NCCL on GPUs "
        "(one per process); DDP or FSDP2 (dataParallelStrategy). Machines: TUNEFORGE_DATA_PARALLEL_NODES.",
        1,
        64,
    ),
    HyperParameterSpec(
        "dataParallelStrategy",
        "choice",
        "ddp",
        "With dataParallelProcesses above 1: ddp = every process trains a whole replica (weights, gradients, "
        "optimizer state); fsdp = FSDP2, each process trains a 1/N shard of them, gathering a layer's weights "
        "as it runs (less memory per GPU, more communication; each process still keeps an unsharded copy of "
        "the weights for evaluation and saving). The same result either way.",
        choices=("ddp", "fsdp"),
    ),
    HyperParameterSpec(
        "gradientCheckpointing",
        "choice",
        "auto",
        "Recompute each layer's activations in the backward pass instead of keeping them (about a third "
        "more compute, far less memory). auto = only when the job's memory estimate does not fit otherwise.",
        choices=("auto", "true", "false"),
    ),
    HyperParameterSpec(
        "maxSequenceLength",
        "int",
        0,
        "Longest record in tokens; 0 = the model's context length. "
        "Longer records fail validation rather than being cut.",
        0,
        1_000_000,
    ),
    HyperParameterSpec(
        "lengthGrouping",
        "bool",
        True,
        "Batch records of similar length together so little compute goes to padding; false = plain random batches.",
    ),
    HyperParameterSpec(
        "precision",
        "choice",
        "auto",
        "Compute dtype: auto = bf16 autocast where the hardware has native bf16 (recent CPUs, CUDA), else fp32. "
        "Weights and optimizer state stay fp32.",
        choices=("auto", "bf16", "fp32"),
    ),
    HyperParameterSpec("seed", "int", 42, "Seed for initialisation and data order.", 0, 2**31 - 1),
    HyperParameterSpec(
        "saveMergedModel",
        "bool",
        False,
        "Also write the LoRA adapter merged into the base weights (exportable full model).",
    ),
    HyperParameterSpec(
        "checkpointEverySteps",
        "int",
        0,
        "Write a resumable checkpoint every N optimizer steps; 0 = once per epoch.",
        0,
        1_000_000,
    ),
)


EARLY_STOPPING_PATIENCE = HyperParameterSpec(
    "earlyStoppingPatience",
    "int",
    2,
    "With a validation set: end training once the first validator's loss (measured after every epoch) "
    "has not improved for this many epochs, keeping the best epoch's weights; 0 = train every epoch.",
    0,
    100,
)


DPO_BETA = HyperParameterSpec(
    "beta",
    "float",
    0.1,
    "DPO only (a training file of preference records): how strongly the model is held to the base model. "
    "Loss = -log sigmoid(beta x (policy margin - base model margin)); lower lets it move further from the "
    "base model. Has no effect on supervised data.",
    0.001,
    10.0,
)


def fine_tuning_specs() -> tuple[HyperParameterSpec, ...]:
    return (*_COMMON, EARLY_STOPPING_PATIENCE, DPO_BETA)


def _amend(
    specs: tuple[HyperParameterSpec, ...],
    name: str,
    *,
    default: HyperParameterValue | None = None,
    help: str | None = None,
) -> tuple[HyperParameterSpec, ...]:
    """``specs`` with one spec's default and/or help changed, keeping the order users see."""
    return tuple(
        replace(
            spec,
            default=spec.default if default is None else default,
            help=spec.help if help is None else help,
        )
        if spec.name == name
        else spec
        for spec in specs
    )


_CHUNK_OVERLAP = HyperParameterSpec(
    "chunkOverlap",
    "int",
    64,
    "Tokens a document chunk shares with the previous one, as context only (never counted twice in the loss).",
    1,
    100_000,
)


def continued_pretraining_specs() -> tuple[HyperParameterSpec, ...]:
    """Fine-tuning's specs, with maxSequenceLength meaning the chunk length, plus ``chunkOverlap``."""
    specs = _amend(
        _COMMON,
        "maxSequenceLength",
        help="Chunk length in tokens; 0 = the model's context length. Longer documents are split into "
        "overlapping chunks, never cut.",
    )
    at = [spec.name for spec in specs].index("maxSequenceLength") + 1
    return (*specs[:at], _CHUNK_OVERLAP, *specs[at:])


_DISTILLATION_EXTRAS: tuple[HyperParameterSpec, ...] = (
    HyperParameterSpec(
        "logitDistillationWeight",
        "float",
        0.0,
        "Weight w of logit-level distillation: loss = (1 - w) x cross-entropy on the teacher's response "
        "+ w x T^2 x KL(teacher || student) on its token distributions. 0 = sequence-level only.",
        0.0,
        1.0,
    ),
    HyperParameterSpec(
        "distillationTemperature",
        "float",
        2.0,
        "Softmax temperature T of the KL term (higher passes on more of the teacher's second choices).",
        0.1,
        20.0,
    ),
    HyperParameterSpec(
        "teacherBatchSize",
        "int",
        32,
        "Rows of the teacher's continuous batch while it generates the training data (a row takes the next "
        "prompt as its answer ends).",
        1,
        1024,
    ),
    HyperParameterSpec(
        "holdoutPercent",
        "int",
        10,
        "Without a validation set: share of the training prompts held out (not trained on) for the "
        "distillation report. With one, the report uses the validation prompts and nothing is held out.",
        0,
        50,
    ),
    HyperParameterSpec(
        "rejectTruncatedTeacherAnswers",
        "bool",
        False,
        "Leave out prompts whose teacher answer did not end within maxResponseLengthForInference tokens. "
        "false (as on Bedrock) trains on the answer as capped, without teaching the student to stop there.",
    ),
)


PRETRAINED_FULL_LEARNING_RATE = 3e-4
"""The default learning rate for training a *pretrained* student in full.

3e-3 suits adapters and random-initialised students, but training every weight of a pretrained model
at that rate overwrites what it knows. Measured on the extraction task (SmolLM2 student, 64 records,
5 epochs, batch 8, full training, ChatML, 2 CPU threads), greedy exact match on 20 held-out records:
3e-3 -> 0/20, 3e-4 -> 16/20, 1e-4 -> 2/20."""


def distillation_specs(pretrained: bool = False) -> tuple[HyperParameterSpec, ...]:
    """Fine-tuning's specs with student-sized defaults, plus the teacher-side and logit-distillation extras.

    The student is small, so training it in full is cheap, and it learns the teacher's behaviour far
    better than adapters on a random-initialised model do. Measured on the demo task (forge-micro
    student of a fine-tuned forge-small, 400 prompts, 1 CPU thread): full training for 5 epochs
    agreed with the teacher on 93% of held-out prompts in 18 s; LoRA for 3 epochs on 65%.
    A ``pretrained`` student (SmolLM2's, an imported model) trains in full at
    :data:`PRETRAINED_FULL_LEARNING_RATE` by default.
    """
    specs = _amend(_COMMON, "trainingMethod", default="full")
    specs = _amend(specs, "epochCount", default=5)
    if pretrained:
        specs = _amend(
            specs,
            "learningRate",
            default=PRETRAINED_FULL_LEARNING_RATE,
            help="Peak learning rate of the AdamW optimizer (linear warmup, then cosine decay). Lower by "
            "default for a pretrained student, which trains in full: at 3e-3 it forgets what it knew "
            "(0/20 held-out answers on the extraction task against 16/20 at 3e-4).",
        )
    return (*specs, *_DISTILLATION_EXTRAS)


RFT_BEDROCK_NAMES = (
    "epochCount",
    "batchSize",
    "learningRate",
    "maxPromptLength",
    "trainingSamplePerPrompt",
    "inferenceMaxTokens",
    "reasoningEffort",
    "evalInterval",
)
"""Bedrock's ``RFTHyperParameters`` (``customizationConfig.rftConfig.hyperParameters``), in its order."""

_RFT_BEDROCK: tuple[HyperParameterSpec, ...] = (
    HyperParameterSpec("epochCount", "int", 2, "Passes over the training prompts.", 1, 50, bedrock=True),
    HyperParameterSpec(
        "batchSize",
        "int",
        16,
        "Prompts per optimizer step; each is answered trainingSamplePerPrompt times.",
        16,
        512,
        bedrock=True,
    ),
    HyperParameterSpec(
        "learningRate",
        "float",
        1e-4,
        "Peak learning rate of the AdamW optimizer (linear warmup, then cosine decay).",
        1e-7,
        1e-3,
        bedrock=True,
    ),
    HyperParameterSpec(
        "maxPromptLength",
        "int",
        0,
        "Longest prompt in tokens (text, without the chat template's markers); longer prompts fail "
        "validation with their line. 0 = the model's input token limit.",
        0,
        1_000_000,
        bedrock=True,
    ),
    HyperParameterSpec(
        "trainingSamplePerPrompt",
        "int",
        4,
        "Answers sampled per prompt at each step: the group whose rewards are compared with each other "
        "(group-relative advantages need at least 2).",
        2,
        16,
        bedrock=True,
    ),
    HyperParameterSpec(
        "inferenceMaxTokens",
        "int",
        64,
        "Most tokens of one sampled answer (at most the model's output token limit); an answer cut there "
        "is graded as it stands.",
        1,
        1_000_000,
        bedrock=True,
    ),
    HyperParameterSpec(
        "reasoningEffort",
        "choice",
        "low",
        "Recorded as Bedrock records it; tuneforge's models have no reasoning mode, so it changes nothing.",
        choices=("low", "medium", "high"),
        bedrock=True,
    ),
    HyperParameterSpec(
        "evalInterval",
        "int",
        10,
        "With a validation set: every this many steps (and after the last), the mean reward of greedy "
        "answers to the validation prompts.",
        1,
        100,
        bedrock=True,
    ),
)

_RFT_EXTRAS: tuple[HyperParameterSpec, ...] = (
    HyperParameterSpec(
        "klCoefficient",
        "float",
        0.05,
        "Weight beta of the KL penalty to the base model (the adapter switched off, or a frozen copy "
        "under full training): loss = policy loss + beta x KL. 0 = no penalty.",
        0.0,
        10.0,
    ),
    HyperParameterSpec(
        "samplingTemperature",
        "float",
        1.0,
        "Softmax temperature of the sampled answers (1 = the model's own distribution).",
        0.05,
        2.0,
    ),
)

_RFT_DROPPED = (
    "epochCount",
    "batchSize",
    "learningRate",
    "maxSequenceLength",
    "lengthGrouping",
    "dataParallelProcesses",
)
"""Fine-tuning specs that RFT replaces (Bedrock's own ranges) or that do not apply to sampled answers."""


def reinforcement_specs(pretrained: bool = False) -> tuple[HyperParameterSpec, ...]:
    """Bedrock's ``RFTHyperParameters`` with its ranges, then LoRA and the shared training settings,
    then the KL coefficient and the sampling temperature.

    LoRA by default, so the base model is the adapter switched off and the KL reference costs no
    second copy. Warmup defaults to 0: an RFT job takes few steps. A ``pretrained`` model starts
    at a lower learning rate, as it already answers sensibly and should drift from that slowly.
    """
    common = tuple(
        replace(spec, bedrock=False) if spec.name == "learningRateWarmupSteps" else spec
        for spec in _amend(_COMMON, "learningRateWarmupSteps", default=0)
        if spec.name not in _RFT_DROPPED
    )
    bedrock = _amend(_RFT_BEDROCK, "learningRate", default=1e-5) if pretrained else _RFT_BEDROCK
    return (*bedrock, *common, *_RFT_EXTRAS)


def markdown_table(specs: tuple[HyperParameterSpec, ...]) -> str:
    """The table in docs/hyperparameters.md; a test keeps the file equal to this output."""
    lines = [
        "| name | type | default | range | Bedrock name? | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        default = str(spec.default).lower() if isinstance(spec.default, bool) else str(spec.default)
        lines.append(
            f"| `{spec.name}` | {spec.kind} | `{default}` | {spec.range_text} | "
            f"{'yes' if spec.bedrock else 'extension'} | {spec.help} |"
        )
    return "\n".join(lines) + "\n"


def render_docs() -> str:
    """docs/hyperparameters.md, generated from the specs (``python -m tuneforge.catalog.hyperparameters``)."""
    from tuneforge.catalog.models import BUILTIN_MODELS

    parts = [
        "# Hyperparameters\n",
        "Generated from the specs in `src/tuneforge/catalog/hyperparameters.py` by\n"
        "`python -m tuneforge.catalog.hyperparameters > docs/hyperparameters.md`; a test keeps it in sync.\n"
        "The same specs validate `hyperParameters` in CreateModelCustomizationJob (values arrive as\n"
        "strings, as in Bedrock) and drive `tuneforge models show`.\n",
    ]
    seen: list[tuple[str, tuple[HyperParameterSpec, ...]]] = []
    for model in BUILTIN_MODELS:
        for ctype, specs in model.specs.items():
            if (ctype, specs) in seen:
                continue
            # A second table for one type: some models have other defaults (pretrained students).
            title = ctype if all(seen_type != ctype for seen_type, _ in seen) else f"{ctype} (other defaults)"
            seen.append((ctype, specs))
            users = [m.model_id for m in BUILTIN_MODELS if m.specs.get(ctype) == specs]
            parts.append(f"## {title}\n\nModels: {', '.join(f'`{u}`' for u in users)}.\n\n{markdown_table(specs)}")
    from tuneforge.catalog.tuning import render_docs as tuning_docs

    parts.append(tuning_docs())
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_docs(), end="")
