"""FINE_TUNING: supervised fine-tuning on prompt/completion or conversation records.

Read top to bottom: setup (base model, LoRA or full) -> data -> train -> evaluate -> save. The
shared machinery lives in :mod:`tuneforge.recipes.components`; this file only decides what to call.

Outputs in ``model_dir``:

- ``adapter/``: the LoRA adapter (peft ``save_pretrained``, safetensors) plus the tokenizer; a few MB
  that load on top of the base model.
- ``merged/``: a complete HF model with the adapter folded into the weights, written when
  ``saveMergedModel`` is true, and always for ``trainingMethod=full`` (then it is the only copy).
- ``tuneforge-model.json``: which of the two exists and which base model the adapter belongs to,
  read by :func:`tuneforge.serving.generation.load_for_inference`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from tuneforge.catalog.builtin import load_model_and_tokenizer
from tuneforge.catalog.models import FINE_TUNING
from tuneforge.recipes.base import JobReporter, RecipeInputs, RecipeResult
from tuneforge.recipes.components import (
    MetricsWriter,
    TrainingConfig,
    encode_file,
    mean_token_loss,
    quiet_peft,
    train,
)

MODEL_MANIFEST = "tuneforge-model.json"


class FineTuningRecipe:
    customization_type = FINE_TUNING

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        hp = inputs.hyperparameters
        config = TrainingConfig.from_hyperparameters(hp)
        full = hp["trainingMethod"] == "full"
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup: the base model and, unless full fine-tuning, LoRA adapters on every linear
        # projection (peft's "all-linear" leaves the output layer out, as is usual for LoRA).
        model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        torch.manual_seed(config.seed)
        if not full:
            lora = LoraConfig(
                r=int(hp["loraRank"]),
                # peft annotates lora_alpha as int but computes alpha / r in float: fractions work.
                lora_alpha=float(hp["loraAlpha"]),  # type: ignore[arg-type]
                lora_dropout=float(hp["loraDropout"]),
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            with quiet_peft():
                model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        reporter.log(f"{'full' if full else 'LoRA'} fine-tuning: {trainable:,} of {total:,} parameters train")

        # Data: records -> token ids with the loss on answers only. Over-long records fail here
        # loudly; pre-flight validation should already have rejected them.
        reporter.stage("dataProcessing", "InProgress")
        max_length = int(hp["maxSequenceLength"]) or int(model.config.max_position_embeddings)
        examples = encode_file(inputs.training_file, tokenizer, max_length)
        validators = [encode_file(path, tokenizer, max_length) for path in inputs.validation_files]
        reporter.stage("dataProcessing", "Completed")

        # Train.
        reporter.stage("training", "InProgress")
        metrics = MetricsWriter(inputs.output_dir, inputs.job_id)
        outcome = train(
            model,
            examples,
            config,
            reporter,
            metrics,
            inputs.checkpoint_dir,
            pad_id=tokenizer.pad_token_id,
        )
        if outcome.stopped:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=outcome.final_loss, stopped=True)
        reporter.log(
            f"trained {outcome.steps} steps in {outcome.seconds:.1f}s, "
            f"{outcome.tokens_seen:,} tokens, final loss {outcome.final_loss:.4f}"
        )

        # Evaluate: mean token loss per validator, one metrics file each.
        last_step, last_epoch = outcome.steps - 1, config.epochs - 1
        validation_losses = []
        artifacts = {"trainingMetrics": metrics.relative(metrics.training_csv, inputs.output_dir)}
        for index, validator in enumerate(validators):
            loss = mean_token_loss(model, validator, tokenizer.pad_token_id)
            metrics.validation(index, last_step, last_epoch, loss)
            validation_losses.append(loss)
            artifacts[f"validationMetrics{index}"] = metrics.relative(metrics.validation_csv(index), inputs.output_dir)
        reporter.stage("training", "Completed")

        # Save.
        artifacts.update(self._save(model, tokenizer, inputs, full=full))
        return RecipeResult(
            training_loss=outcome.final_loss,
            validation_losses=validation_losses,
            artifacts=artifacts,
        )

    def _save(self, model: Any, tokenizer: Any, inputs: RecipeInputs, *, full: bool) -> dict[str, str]:
        """Write adapter and/or merged model plus the manifest; return artifact -> relative path."""
        model_dir = inputs.model_dir
        model_dir.mkdir(parents=True, exist_ok=True)
        adapter_dir = None if full else "adapter"
        merged_dir = "merged" if full or inputs.hyperparameters["saveMergedModel"] else None
        if adapter_dir:
            model.save_pretrained(str(model_dir / adapter_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(model_dir / adapter_dir))
        if merged_dir:
            merged = model if full else model.merge_and_unload()
            merged.save_pretrained(str(model_dir / merged_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(model_dir / merged_dir))
        manifest = {
            "base_model_id": inputs.base_model.model_id,
            "base_model_source": inputs.base_model.source,
            "format": "full" if full else "adapter",
            "adapter_dir": adapter_dir,
            "merged_dir": merged_dir,
        }
        (model_dir / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        artifacts = {"manifest": MODEL_MANIFEST}
        if adapter_dir:
            artifacts["adapter"] = adapter_dir
        if merged_dir:
            artifacts["merged"] = merged_dir
        return artifacts


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest a fine-tuning job wrote, or None for a plain HF folder."""
    path = model_dir / MODEL_MANIFEST
    if not path.exists():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest
