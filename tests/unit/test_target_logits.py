"""The training loss computes the output layer on target positions only: the same loss and gradients.

``target_logits`` hooks the output layer so it sees only the hidden states of positions whose next
token is a target. These tests hold it to transformers' own loss (``model(**inputs, labels=...).loss``)
on a batch with prompts, answers and right padding, for a model trained in full, one with LoRA
adapters, and one whose logits are soft-capped after the output layer (Gemma 2's rule), and the
distillation loss to the same loss on full logits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from tuneforge.recipes.distillation import LogitDistillationLoss, distillation_loss
from tuneforge.recipes.loop import causal_lm_loss, target_logits
from tuneforge.recipes.tokenising import IGNORE_INDEX


def batch(vocab: int) -> dict[str, torch.Tensor]:
    """Three rows: prompt then answer, right-padded; labels ignore the prompt and the padding."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (3, 12), generator=generator)
    labels = input_ids.clone()
    for row, (prompt, length) in enumerate(((4, 12), (7, 10), (2, 6))):
        labels[row, :prompt] = IGNORE_INDEX
        labels[row, length:] = IGNORE_INDEX
        input_ids[row, length:] = 0
    return {"input_ids": input_ids, "labels": labels}


def llama() -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def gemma2() -> Any:
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=3.0,
    )  # fmt: skip
    return Gemma2ForCausalLM(config)


def lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    from tuneforge.model.loading import quiet_peft

    with quiet_peft():
        return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def gradients(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make", [llama, gemma2, lambda: lora(llama())], ids=["full", "softcapped", "lora"])
def test_the_loss_and_gradients_are_transformers_own(make: Any) -> None:
    model = make()
    inputs = batch(97)
    targets = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    expected = model(**inputs, use_cache=False, num_items_in_batch=torch.tensor(targets)).loss
    expected.backward()
    expected_grads = gradients(model)
    model.zero_grad()
    loss = causal_lm_loss(model, inputs, targets)
    loss.backward()
    assert expected_grads, "nothing trains"
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, grad in gradients(model).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_target_logits_are_the_full_logits_at_the_target_positions() -> None:
    model = llama()
    inputs = batch(97)
    with torch.no_grad():
        full = model(input_ids=inputs["input_ids"], use_cache=False).logits
        picked = target_logits(model, inputs)
    mask = inputs["labels"][:, 1:] != IGNORE_INDEX
    assert picked.shape == (int(mask.sum()), 97)
    torch.testing.assert_close(picked, full[:, :-1][mask], rtol=1e-5, atol=1e-6)
    assert not model.get_output_embeddings()._forward_pre_hooks, "the hook is removed"


def test_the_distillation_loss_matches_the_one_on_full_logits() -> None:
    student, teacher = llama(), gemma2()
    inputs = batch(97)
    targets = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        teacher_logits = teacher(input_ids=inputs["input_ids"], use_cache=False).logits
    full_logits = student(input_ids=inputs["input_ids"], use_cache=False).logits
    expected = distillation_loss(full_logits, teacher_logits, inputs["labels"], targets, weight=0.5, temperature=2.0)
    loss = LogitDistillationLoss(teacher, 0.5, 2.0)(student, inputs, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
