"""Loading any HF-format model folder and saving tokenizers so that every transformers release reads them.

This module imports torch: it belongs in worker and engine processes.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class a saved ``tokenizer.json`` tokenizer is named by: every transformers release from 4.x on
loads it. transformers 5 writes its own ``TokenizersBackend`` (an alias of the same class there),
which transformers 4.x refuses with "Tokenizer class TokenizersBackend does not exist"."""
TRANSFORMERS_5_ONLY_CLASSES = ("TokenizersBackend",)
CAUSAL_LM_INPUTS = ["input_ids", "attention_mask"]
"""What a tokenizer returns for a decoder: transformers 4.x's ``PreTrainedTokenizerFast`` would add
``token_type_ids`` unless told otherwise, and ``generate(**tokenizer(prompt))`` then fails there."""
LOAD_TIME_KEYS = ("is_local", "local_files_only")
"""What transformers 5 records in tokenizer_config.json about how a tokenizer was loaded, not what it
is; on another machine they are at best noise."""


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """``save_pretrained`` into ``path``, then make its tokenizer_config.json portable.

    Every tokenizer tuneforge writes (built-in models, custom models, exports) goes through here, so
    a folder it hands out loads with ``AutoTokenizer`` on transformers 4.x as well as 5.
    """
    tokenizer.save_pretrained(str(path))
    make_tokenizer_config_portable(path)


def make_tokenizer_config_portable(folder: Path) -> None:
    """Rename transformers 5's ``TokenizersBackend`` to :data:`PORTABLE_TOKENIZER_CLASS` in
    ``folder/tokenizer_config.json`` (with :data:`CAUSAL_LM_INPUTS` as its ``model_input_names``) and
    drop :data:`LOAD_TIME_KEYS`.

    Only that generic class is renamed: a model-specific class (``LlamaTokenizer``,
    ``Qwen2Tokenizer``) may carry behaviour of its own, and transformers 4.x already maps those
    names to its fast variants. Folders written before this existed are fixed the same way on export.
    """
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in TRANSFORMERS_5_ONLY_CLASSES and (folder / "tokenizer.json").is_file():
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        config.setdefault("model_input_names", CAUSAL_LM_INPUTS)
    for key in LOAD_TIME_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_model_and_tokenizer(path: Path, *, dtype: torch.dtype | None = None) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load any HF-format causal LM folder (built-in or a user's) for training or generation.

    ``dtype`` defaults to float32 rather than the checkpoint's dtype: on CPU, fp32 master weights are
    both the fastest and the safest choice for small models, and half-precision checkpoints would
    otherwise train with half-precision optimizer updates.
    """
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model, load_tokenizer(path)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` on a folder; a tokenizer without a pad token pads with ``<eos>`` (always masked)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_counter(path: Path) -> Callable[[str], int]:
    """Counts a text's tokens with the folder's own tokenizer, without special tokens (pre-flight quotas)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence peft 0.21's FutureWarning about transformers' renamed ``is_gradient_checkpointing``.

    peft reads the deprecated attribute whenever it wraps a model; the warning is about peft's code,
    not ours, and would otherwise fail every run under ``-W error``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
