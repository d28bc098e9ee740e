"""Foundation-model records: the built-in family and users' registered models.

This module is metadata only (no torch), so the API process can list and describe models.
Weights are created or loaded by worker processes (:mod:`tuneforge.model.builtin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.catalog.hyperparameters import (
    HyperParameterSpec,
    continued_pretraining_specs,
    distillation_specs,
    fine_tuning_specs,
)

FINE_TUNING = "FINE_TUNING"
CONTINUED_PRE_TRAINING = "CONTINUED_PRE_TRAINING"
DISTILLATION = "DISTILLATION"
CUSTOMIZATION_TYPES = (FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION)


@dataclass(frozen=True)
class ArchitectureConfig:
    """A Llama-shaped decoder; fields map one to one onto ``transformers.LlamaConfig``."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int

    def parameter_count(self, vocab_size: int) -> int:
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = h * self.num_key_value_heads // self.num_attention_heads
        attention = h * h * 2 + h * kv * 2
        mlp = 3 * h * i
        norms = 2 * h
        return n * (attention + mlp + norms) + 2 * vocab_size * h + h


@dataclass(frozen=True)
class TokenLimits:
    max_input_tokens: int
    max_output_tokens: int
    max_total_tokens: int


@dataclass(frozen=True)
class FoundationModel:
    model_id: str
    name: str
    provider: str
    family: str
    source: str
    """'builtin:<name>' for the built-in family, else a local folder or s3:// prefix."""
    limits: TokenLimits
    parameter_count: int | None = None
    customizations: tuple[str, ...] = (FINE_TUNING,)
    inference_types: tuple[str, ...] = ("ON_DEMAND", "PROVISIONED")
    input_modalities: tuple[str, ...] = ("TEXT",)
    output_modalities: tuple[str, ...] = ("TEXT",)
    streaming: bool = True
    lifecycle: str = "ACTIVE"
    description: str = ""
    builtin: bool = False
    tool_use: bool = False
    """Whether the model's chat template renders tools and its output is parsed into tool calls; the
    runtime refuses ``tools`` / ``toolConfig`` for a model without it."""
    specs: dict[str, tuple[HyperParameterSpec, ...]] = field(default_factory=dict)
    arn: str | None = None
    """An imported model's own ARN (``imported-model/<id>``); None: the model is a foundation model."""

    def hyperparameter_specs(self, customization_type: str) -> tuple[HyperParameterSpec, ...]:
        return self.specs.get(customization_type, ())


BUILTIN_VOCAB_SIZE = 260
"""256 byte tokens + <pad>, <bos>, <eos>, <unk>. See model/builtin.py."""

BUILTIN_TOKENIZER = "forge-byte-260"
"""The identity of the built-in family's one tokenizer, compared when pairing a teacher with a student."""

BUILTIN_CONTEXT = 512
BUILTIN_LIMITS = TokenLimits(max_input_tokens=384, max_output_tokens=256, max_total_tokens=512)

BUILTIN_ARCHITECTURES: dict[str, ArchitectureConfig] = {
    "forge-small": ArchitectureConfig(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=BUILTIN_CONTEXT,
    ),
    "forge-micro": ArchitectureConfig(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=BUILTIN_CONTEXT,
    ),
}


def all_specs() -> dict[str, tuple[HyperParameterSpec, ...]]:
    """The hyperparameter specs of every customization type; every recipe runs on any HF causal LM."""
    return {
        FINE_TUNING: fine_tuning_specs(),
        CONTINUED_PRE_TRAINING: continued_pretraining_specs(),
        DISTILLATION: distillation_specs(),
    }


def _builtin(name: str, description: str) -> FoundationModel:
    arch = BUILTIN_ARCHITECTURES[name]
    return FoundationModel(
        model_id=f"tuneforge.{name}-v1:0:{BUILTIN_CONTEXT}",
        name=f"Forge {name.split('-')[1].capitalize()}",
        provider="tuneforge",
        family="forge",
        source=f"builtin:{name}",
        limits=BUILTIN_LIMITS,
        parameter_count=arch.parameter_count(BUILTIN_VOCAB_SIZE),
        customizations=CUSTOMIZATION_TYPES,
        description=description,
        builtin=True,
        specs=all_specs(),
    )


BUILTIN_MODELS: tuple[FoundationModel, ...] = (
    _builtin(
        "forge-small",
        "Built-in teacher-sized Llama-architecture model with a byte-level tokenizer. "
        "Random-initialised offline from a fixed seed: it knows nothing until customized.",
    ),
    _builtin(
        "forge-micro",
        "Built-in student-sized sibling of forge-small (same tokenizer and family), "
        "about 5x fewer parameters. Random-initialised offline from a fixed seed.",
    ),
)
