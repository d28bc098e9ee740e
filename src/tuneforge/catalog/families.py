"""Model families: which modules LoRA adapts in each architecture, by config.json's ``model_type``.

LoRA goes on the attention and MLP projections, the layers that carry most of a decoder's
parameters and all of its token mixing; embeddings, norms and the output layer stay frozen, as is
usual. Each family names those projections differently, so ``loraTargetModules`` (``all``,
``attention``, ``mlp`` or a comma list of module names) is resolved here against the family's table.
Torch-free: the job service checks the choice at create time, and the recipe applies the same
resolution to the loaded model.

A family outside the table still trains: ``all`` falls back to peft's ``all-linear`` (every linear
layer but the output head), and a comma list of names is passed on as given, for peft to match.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.catalog.hyperparameters import HyperParameterError

ALL_LINEAR = "all-linear"
"""peft's own rule for a model whose family is not in :data:`FAMILIES`."""


@dataclass(frozen=True)
class LoraTargets:
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    fan_in_fan_out: bool = False
    """GPT-2 stores its projections as ``Conv1D`` (weights transposed); peft must be told."""

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.attention, *self.mlp)))

    @property
    def names(self) -> tuple[str, ...]:
        """Module names a comma list may use: the projections' own names and their qualified forms."""
        return tuple(dict.fromkeys(name for target in self.all for name in (target, target.split(".")[-1])))


_LLAMA_STYLE = LoraTargets(
    attention=("q_proj", "k_proj", "v_proj", "o_proj"),
    mlp=("gate_proj", "up_proj", "down_proj"),
)

FAMILIES: dict[str, LoraTargets] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "gemma3": _LLAMA_STYLE,
    "gemma3_text": _LLAMA_STYLE,
    "phi3": LoraTargets(attention=("qkv_proj", "o_proj"), mlp=("gate_up_proj", "down_proj")),
    # GPT-2's attention and MLP both have a c_proj: qualified names keep "attention" and "mlp" apart
    # (peft matches a target against the end of a module's dotted name).
    "gpt2": LoraTargets(attention=("attn.c_attn", "attn.c_proj"), mlp=("mlp.c_fc", "mlp.c_proj"), fan_in_fan_out=True),
}
"""config.json ``model_type`` -> the projections LoRA adapts. The built-in forge models are ``llama``."""

SCOPES = ("all", "attention", "mlp")


def lora_target_modules(model_type: str, choice: str) -> list[str] | str:
    """The peft ``target_modules`` for ``loraTargetModules=choice`` on a ``model_type`` model.

    Raises :class:`HyperParameterError` (user-facing) for a scope or module name the family lacks.
    """
    choice = choice.replace(" ", "")
    family = FAMILIES.get(model_type)
    if family is None:
        if choice == "all":
            return ALL_LINEAR
        if choice in SCOPES:
            raise HyperParameterError(
                f"Hyperparameter loraTargetModules={choice} needs a known model family, and model_type "
                f"'{model_type}' is not one ({', '.join(sorted(FAMILIES))}); use all or a comma-separated "
                "list of module names"
            )
        return choice.split(",")
    if choice in SCOPES:
        return list(getattr(family, choice))
    names = [name for name in choice.split(",") if name]
    unknown = [name for name in names if name not in family.names]
    if unknown or not names:
        raise HyperParameterError(
            f"Hyperparameter loraTargetModules names module(s) {', '.join(unknown) or '(none)'} that the "
            f"{model_type} family does not have. Supported: all, attention, mlp, or a comma-separated list "
            f"of {', '.join(family.names)}"
        )
    return names


def lora_fan_in_fan_out(model_type: str) -> bool:
    family = FAMILIES.get(model_type)
    return family is not None and family.fan_in_fan_out
