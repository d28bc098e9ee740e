"""Model folders: saving what training produced (adapter, merged weights, manifest) and loading it to serve.

This module imports torch: it belongs in worker and engine processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft import PeftModel
from transformers import (
    PreTrainedTokenizerBase,
)

from tuneforge.catalog.models import FoundationModel

if TYPE_CHECKING:
    from tuneforge.services import Services
from tuneforge.model.export import BaseModel, make_adapter_portable, write_merged_readme
from tuneforge.model.loading import load_model_and_tokenizer, load_tokenizer, quiet_peft, save_tokenizer

MODEL_MANIFEST = "tuneforge-model.json"


def save_model(
    model: Any,
    tokenizer: Any,
    model_dir: Path,
    base_model: FoundationModel,
    *,
    full: bool,
    save_merged: bool,
    data_format: str | None = None,
) -> dict[str, str]:
    """Write a trained model to ``model_dir``; return artifact name -> path relative to it.

    - ``adapter/``: the LoRA adapter (peft ``save_pretrained``, safetensors) plus the tokenizer; a
      few MB that load on top of the base model.
    - ``merged/``: a complete HF model with the adapter folded into the weights, written when
      ``saveMergedModel`` is true, and always for full training (then it is the only copy).
    - ``tuneforge-model.json``: which of the two exists, which base model the adapter belongs
      to (read by :func:`load_for_inference`), and ``data_format``, the format of the data it was
      trained on (:mod:`tuneforge.data.formats`; read by :func:`trained_format`), so it is served as
      it was trained (:func:`tuneforge.model.prompts.serving_prompt`).

    Both folders are portable (:mod:`tuneforge.model.export`): a tokenizer class transformers 4.x
    loads, the base named by its catalog id rather than a local path, and a README saying how to load
    them.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    adapter_dir = None if full else "adapter"
    merged_dir = "merged" if full or save_merged else None
    base = BaseModel(model_id=base_model.model_id, builtin=base_model.builtin)
    if adapter_dir:
        model.save_pretrained(str(model_dir / adapter_dir), safe_serialization=True)
        save_tokenizer(tokenizer, model_dir / adapter_dir)
        make_adapter_portable(model_dir / adapter_dir, base)
    if merged_dir:
        merged = model if full else model.merge_and_unload()
        merged.save_pretrained(str(model_dir / merged_dir), safe_serialization=True)
        save_tokenizer(tokenizer, model_dir / merged_dir)
        write_merged_readme(model_dir / merged_dir, base)
    manifest = {
        "base_model_id": base_model.model_id,
        "base_model_source": base_model.source,
        "format": "full" if full else "adapter",
        "adapter_dir": adapter_dir,
        "merged_dir": merged_dir,
        "data_format": data_format,
    }
    (model_dir / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    artifacts = {"manifest": MODEL_MANIFEST}
    if adapter_dir:
        artifacts["adapter"] = adapter_dir
    if merged_dir:
        artifacts["merged"] = merged_dir
    return artifacts


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest :func:`save_model` wrote, or None for a plain HF folder."""
    path = model_dir / MODEL_MANIFEST
    if not path.exists():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def trained_format(model_dir: Path) -> str | None:
    """The data format a custom model was trained on; None for a plain HF folder or an older manifest."""
    manifest = read_manifest(model_dir)
    return None if manifest is None else manifest.get("data_format")


BUILTIN_SOURCE_PREFIX = "builtin:"


def load_for_inference(model_dir: Path, models_dir: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load what a fine-tuning job wrote (merged model, or adapter on its base) or a plain HF folder.

    A merged model is preferred when both exist. An adapter is merged into its base after loading:
    serving then runs plain matmuls, and the result equals the unmerged model up to rounding.
    Returns the model in eval mode.
    """
    manifest = read_manifest(model_dir)
    if manifest is None:
        model, tokenizer = load_model_and_tokenizer(model_dir)
    elif manifest["merged_dir"]:
        model, tokenizer = load_model_and_tokenizer(model_dir / manifest["merged_dir"])
    else:
        base, _ = load_model_and_tokenizer(_base_model_dir(manifest, models_dir))
        adapter_dir = model_dir / manifest["adapter_dir"]
        with quiet_peft():
            model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        tokenizer = load_tokenizer(adapter_dir)
    model.eval()
    return model, tokenizer


def _base_model_dir(manifest: Mapping[str, Any], models_dir: Path) -> Path:
    source = str(manifest.get("base_model_source", ""))
    if source.startswith(BUILTIN_SOURCE_PREFIX):
        from tuneforge.model.builtin import ensure_builtin  # builtin saves its tokenizer through this module

        return ensure_builtin(source.removeprefix(BUILTIN_SOURCE_PREFIX), models_dir)
    if source and Path(source).is_dir():
        return Path(source)
    raise FileNotFoundError(
        f"base model {manifest.get('base_model_id')!r} of this adapter is not available locally "
        f"(source {source!r}); fetch it into a local folder first"
    )


def base_model_dir(services: Services, model: FoundationModel) -> Path:
    """A local HF folder for the model; creates the built-in ones on first use (imports torch)."""
    if model.builtin:
        from tuneforge.model.builtin import ensure_builtin  # builtin saves its tokenizer through this module

        return ensure_builtin(model.source.split(":", 1)[1], services.settings.models_dir)
    return services.catalog.local_folder(model)
