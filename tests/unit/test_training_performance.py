"""The speed work in the training loop changes nothing it computes: equivalence tests, precision and MFU rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.recipes.batching import collate, forward_inputs
from tuneforge.recipes.performance import FlopCounter, native_bf16, resolve_precision, spec_peak_for_name
from tuneforge.recipes.tokenising import IGNORE_INDEX, Example

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_pad(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, int]:
    torch.set_num_threads(2)
    model, tokenizer = load_model_and_tokenizer(ensure_builtin("forge-micro", tmp_path_factory.mktemp("models")))
    model.eval()
    return model, int(tokenizer.pad_token_id)


def uneven_examples(seed: int = 0) -> list[Example]:
    """Rows of very different lengths, loss on the second half of each: a batch that pads a lot."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length in (7, 31, 64, 12, 50):
        ids = torch.randint(3, 250, (length,), generator=generator).tolist()
        half = length // 2
        examples.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * half + ids[half:]))
    return examples


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at every target position (after the causal shift), in row-major order."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return F.cross_entropy(logits[:, :-1][mask].float(), shifted[mask], reduction="none")


@torch.no_grad()
def test_unmasked_right_padded_forward_equals_the_masked_one(model_and_pad: tuple[torch.nn.Module, int]) -> None:
    """The training forward drops the attention mask; every real token's prediction stays the same."""
    model, pad = model_and_pad
    batch = collate(uneven_examples(), pad)
    masked = model(**batch, use_cache=False).logits
    unmasked = model(**forward_inputs(batch, CPU), use_cache=False).logits
    assert "attention_mask" not in forward_inputs(batch, CPU)
    torch.testing.assert_close(
        per_token_losses(unmasked, batch["labels"]), per_token_losses(masked, batch["labels"]), atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_padded_batch_loss_equals_padding_free_loss(model_and_pad: tuple[torch.nn.Module, int]) -> None:
    """Padded ≡ padding-free: each row alone, with no padding at all, gives the same token losses.

    This is what makes length grouping a pure speed-up: it only changes how much padding is
    computed, never the loss of a batch.
    """
    model, pad = model_and_pad
    examples = uneven_examples(seed=1)
    batch = collate(examples, pad)
    padded = per_token_losses(model(**forward_inputs(batch, CPU), use_cache=False).logits, batch["labels"])
    alone = torch.cat(
        [
            per_token_losses(
                model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits, torch.tensor([e.labels])
            )
            for e in examples
        ]
    )
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    # Sanity: the comparison is not vacuous, padding really was there.
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel() * 0.7


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", None),  # not in the table: measured instead, never mistaken for an L4
        ("NVIDIA RTX A1000", None),  # not an A100
        ("NVIDIA A10G", 70e12),
    ],
)
def test_gpu_spec_peaks_match_whole_model_names(name: str, peak: float | None) -> None:
    assert spec_peak_for_name(name) == peak


def test_precision_auto_follows_the_hardware() -> None:
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        resolve_precision("fp16", CPU)


def test_flop_rule_counts_base_weights_and_attention(model_and_pad: tuple[torch.nn.Module, int]) -> None:
    model, _ = model_and_pad
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    full = FlopCounter(model, full=True)
    config = model.config
    assert full.parameters == n
    assert full.rows([10]) == 6 * n * 10 + 12 * config.num_hidden_layers * config.hidden_size * 10 * 10
    assert full.rows([10, 20]) == full.rows([10]) + full.rows([20])
    for parameter in model.parameters():  # a frozen base with adapters: N stays the base's size
        parameter.requires_grad_(False)
    adapter = torch.nn.Parameter(torch.zeros(1000))
    model.register_parameter("adapter_for_test", adapter)
    try:
        lora = FlopCounter(model, full=False)
        assert lora.parameters == n
        assert lora.per_token == 4 * n
    finally:
        del model._parameters["adapter_for_test"]
        for parameter in model.parameters():
            parameter.requires_grad_(True)


def test_training_reports_precision_and_mfu_basis(tmp_path: Path) -> None:
    """The job log says which dtype the job computes in and what the MFU is measured against."""
    from tuneforge.recipes.loop import TrainingConfig, train
    from tuneforge.recipes.outputs import MetricsWriter

    model, tokenizer = load_model_and_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    messages: list[str] = []
    steps: list[dict[str, float]] = []

    class Reporter:
        def stage(self, *_: object) -> None: ...

        def log(self, message: str) -> None:
            messages.append(message)

        def should_stop(self) -> bool:
            return False

        def progress(self, **values: float) -> None:
            steps.append(values)

        def data_progress(self, **_: object) -> None: ...

    config = TrainingConfig(
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        warmup_steps=0,
        weight_decay=0.0,
        gradient_accumulation_steps=1,
        seed=0,
        checkpoint_every_steps=1000,
        precision="fp32",
        full_training=True,
    )
    examples = uneven_examples() * 2
    outcome = train(
        model, examples, config, Reporter(), MetricsWriter(tmp_path, "job"), tmp_path / "ckpt", tokenizer.pad_token_id
    )
    assert outcome.steps == 3
    assert any(m.startswith("computing in fp32 on cpu; MFU against") for m in messages)
    assert outcome.tokens_seen == sum(len(e.input_ids) for e in examples)  # real tokens only, never padding
    assert all(step["mfu"] > 0 for step in steps)
