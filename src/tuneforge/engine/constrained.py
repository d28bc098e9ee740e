"""Constrained decoding: a per-request mask over the vocabulary so the output parses as JSON.

OpenAI's ``response_format`` (``json_object``, ``json_schema``) is honoured with llguidance, the
grammar engine behind Guidance and one of vLLM's and SGLang's structured-output backends. It was
chosen over xgrammar, lm-format-enforcer and outlines-core because it installs as one small wheel
with no dependencies (no torch, no transformers pin), runs on the CPU, derives its token table from
any fast Hugging Face tokenizer (the built-in byte-level one included), and computes a mask per
sequence per step, which is exactly what a continuous batcher needs: each row has its own matcher.

Whitespace between JSON tokens is not allowed (``whitespace_flexible`` off): the built-in models are
random-initialised, and with free whitespace a model can stay inside the grammar forever by writing
blanks; without it every step moves the document forward.

This module needs torch; it runs in engine processes and tests only. llguidance itself is imported
on the first ``response_format`` request, so an engine (and the GPU check, which uses the batcher
with torch, transformers and peft alone) loads it only when a request needs it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    import llguidance

_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


def grammar_for(response_format: dict[str, Any]) -> str:
    """The llguidance grammar of a ``response_format``; ValueError when it cannot be compiled."""
    import llguidance

    kind = response_format.get("type")
    if kind == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    elif kind == "json_schema":
        schema = response_format.get("schema") or {}
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON object")
    else:
        raise ValueError(f"response_format type {kind!r} is not supported")
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"Invalid JSON schema in response_format: {'; '.join(messages)}")
    return grammar


class Grammars:
    """One engine's llguidance tokenizer, built on first use (about a second for a 100k vocabulary)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll_tokenizer: llguidance.LLTokenizer | None = None

    def matcher(self, response_format: dict[str, Any]) -> Matcher:
        import llguidance
        import llguidance.hf

        grammar = grammar_for(response_format)
        if self._ll_tokenizer is None:
            if not self.tokenizer.is_fast:
                raise ValueError("response_format needs a model with a fast (tokenizers) tokenizer")
            self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)  # type: ignore[arg-type]
        return Matcher(llguidance.LLMatcher(self._ll_tokenizer, grammar, log_level=0), self.vocab_size)


class Matcher:
    """One sequence's grammar state: which tokens may come next, and the tokens taken so far."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        if matcher.is_error():
            raise ValueError(f"Invalid response_format: {matcher.get_error()}")
        self.matcher = matcher
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """A bool mask over the vocabulary: True where the grammar allows the token next."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        return torch.from_numpy(bits[: self.vocab_size].astype(np.bool_))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
