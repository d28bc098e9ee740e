"""LoRA per architecture: the adapters land on each family's attention and MLP projections, and
gradient checkpointing (the memory plan's first resort) changes memory, not the gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from tuneforge.catalog.families import ALL_LINEAR, FAMILIES, lora_target_modules
from tuneforge.catalog.hyperparameters import HyperParameterError, fine_tuning_specs, resolve
from tuneforge.recipes.loop import prepare_for_training

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
CONFIGS: dict[str, Any] = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral": lambda: transformers.MistralConfig(**TINY),
    "qwen2": lambda: transformers.Qwen2Config(**TINY),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=8),
    "gemma": lambda: transformers.GemmaConfig(**TINY, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**TINY, head_dim=8),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**TINY, head_dim=8),
    "phi3": lambda: transformers.Phi3Config(**TINY),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64),
}


class Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def adapted(model: Any) -> set[str]:
    """Names of the modules that carry a LoRA adapter: the projection's own name, or for GPT-2
    (whose attention and MLP both have a c_proj) its last two parts, as the family table has them."""
    names = set()
    gpt2 = model.config.model_type == "gpt2"
    for name, module in model.named_modules():
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and module.lora_A:
            names.add(".".join(name.split(".")[-2:]) if gpt2 else name.split(".")[-1])
    return names


def build(model_type: str) -> Any:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[model_type]())


def hyperparameters(**raw: str) -> dict[str, Any]:
    return resolve(fine_tuning_specs(), raw)


def test_every_supported_family_has_a_tiny_model_here() -> None:
    assert set(CONFIGS) | {"gemma3"} == set(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("scope", ["all", "attention", "mlp"])
def test_lora_adapts_the_familys_projections(model_type: str, scope: str) -> None:
    model = build(model_type)
    assert model.config.model_type == model_type
    wrapped = prepare_for_training(model, hyperparameters(loraTargetModules=scope), Reporter())  # type: ignore[arg-type]
    assert adapted(wrapped) == set(getattr(FAMILIES[model_type], scope))
    assert all("lora_" in name for name, p in wrapped.named_parameters() if p.requires_grad)


def test_a_comma_list_adapts_exactly_those_modules() -> None:
    hp = hyperparameters(loraTargetModules="q_proj, v_proj")
    wrapped = prepare_for_training(build("qwen2"), hp, Reporter())  # type: ignore[arg-type]
    assert adapted(wrapped) == {"q_proj", "v_proj"}


def test_a_module_the_family_lacks_is_refused_with_the_names_it_has() -> None:
    with pytest.raises(HyperParameterError, match=r"phi3 family does not have.*qkv_proj"):
        lora_target_modules("phi3", "q_proj")


def test_an_unknown_family_falls_back_to_all_linear_for_all_only() -> None:
    assert lora_target_modules("falcon", "all") == ALL_LINEAR
    assert lora_target_modules("falcon", "query_key_value") == ["query_key_value"]
    with pytest.raises(HyperParameterError, match="not one"):
        lora_target_modules("falcon", "mlp")


def test_lora_target_modules_spec_refuses_what_is_not_a_name_list() -> None:
    with pytest.raises(HyperParameterError, match="loraTargetModules must be one of"):
        hyperparameters(loraTargetModules="q_proj;drop table")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(method: str) -> None:
    batch = torch.randint(3, 64, (2, 12))

    def step(checkpointing: str) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(1)
        hp = hyperparameters(trainingMethod=method, gradientCheckpointing=checkpointing, loraDropout="0")
        reporter = Reporter()
        model = prepare_for_training(build("llama"), hp, reporter)  # type: ignore[arg-type]
        assert getattr(model, "is_activation_checkpointing", None) in (None, checkpointing == "true")
        assert any("gradient checkpointing on" in line for line in reporter.lines) == (checkpointing == "true")
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # checkpointing keeps the bf16 path
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain_loss, plain_grads = step("false")
    checkpointed_loss, checkpointed_grads = step("true")
    assert checkpointed_loss == pytest.approx(plain_loss, rel=1e-5)
    for plain, checkpointed in zip(plain_grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)
