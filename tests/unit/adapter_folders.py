"""Tiny custom-model folders for multi-adapter tests: random LoRA adapters of a built-in base, saved
the way a fine-tuning job saves them (:func:`tuneforge.model.folders.save_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from tuneforge.catalog.models import BUILTIN_MODELS, FoundationModel
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import save_model
from tuneforge.model.loading import load_model_and_tokenizer, quiet_peft

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]


class AdapterFactory:
    """Writes adapters of one built-in base; the base loads once per LoRA layout, not per adapter."""

    def __init__(self, base_name: str, models_dir: Path) -> None:
        self.base: FoundationModel = next(m for m in BUILTIN_MODELS if m.source == f"builtin:{base_name}")
        self.base_dir = ensure_builtin(base_name, models_dir)
        self._models: dict[tuple[int, tuple[str, ...]], tuple[Any, Any]] = {}

    def make(
        self,
        folder: Path,
        *,
        seed: int,
        rank: int = 4,
        targets: tuple[str, ...] = tuple(ALL),
        data_format: str | None = None,
        magnitude: float = 0.3,
    ) -> Path:
        """An adapter with random, non-zero A and B, so it visibly changes the base model's answers."""
        key = (rank, targets)
        if key not in self._models:
            model, tokenizer = load_model_and_tokenizer(self.base_dir)
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), task_type="CAUSAL_LM")
            with quiet_peft():
                self._models[key] = (get_peft_model(model, config), tokenizer)
        peft_model, tokenizer = self._models[key]
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * magnitude)
        save_model(peft_model, tokenizer, folder, self.base, full=False, save_merged=False, data_format=data_format)
        return folder
