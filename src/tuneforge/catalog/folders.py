"""A cheap check that a folder holds a Hugging Face causal LM, without torch or transformers.

Registration runs in the API process, which must not import torch, so this reads config.json and
lists files; it never loads weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
"""How transformers names causal LM classes: ``LlamaForCausalLM``, and the older ``GPT2LMHeadModel``."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
"""Files that define a tokenizer's token ids (any one of the first three makes it loadable)."""


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
    if not any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return f"config.json architectures [{', '.join(map(str, architectures))}] is not a causal language model"
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if not weights:
        return "no weights (*.safetensors or pytorch_model*.bin)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES[:3]):
        return "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
    return None


def tokenizer_digest(folder: Path) -> str:
    """sha256 over the folder's tokenizer files (name and bytes), in a fixed order."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"
