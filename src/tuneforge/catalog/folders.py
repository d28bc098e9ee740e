"""A cheap check that a folder holds a Hugging Face causal LM, without torch or transformers.

Registration runs in the API process, which must not import torch, so this reads config.json and
lists files; it never loads weights.
"""

from __future__ import annotations

import json
from pathlib import Path

CAUSAL_LM_SUFFIX = "ForCausalLM"


def check_hf_folder(folder: Path) -> str | None:
    """None when ``folder`` looks like a usable HF causal LM, else the reason it is not."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    config_path = folder / "config.json"
    if not config_path.is_file():
        return f"no config.json in {folder}"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return f"config.json does not parse: {exc}"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(CAUSAL_LM_SUFFIX) for a in architectures):
        return f"config.json architectures [{', '.join(map(str, architectures))}] is not a causal language model"
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if not weights:
        return "no weights (*.safetensors or pytorch_model*.bin)"
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if not any((folder / name).is_file() for name in tokenizer_files):
        return "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
    return None
