"""What the advisor needs to know about a dataset: kind, size, lengths and repetitiveness.

Token lengths are counted as UTF-8 bytes: exact for the byte-level built-in models, an upper bound
for BPE tokenizers (about 4 bytes a token for English). The API process cannot load a real
tokenizer without importing the torch side, and the rules only compare lengths with coarse limits.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tuneforge.catalog.models import FINE_TUNING
from tuneforge.data.formats import FORMAT_PREFERENCE, Preference, RecordError, parse_record
from tuneforge.errors import ValidationException

LABELED = "labeled"
"""Prompt -> wanted answer: prompt/completion, conversations ending in an assistant turn, or
evaluation records with a referenceResponse."""
PROMPTS = "prompts"
"""Prompts without answers (conversations ending in a user turn): material for distillation."""
TEXT = "text"
"""Unlabeled documents (``{"input": ...}``): material for continued pre-training or retrieval."""
PREFERENCE = "preference"
"""A prompt with a preferred and a non-preferred answer (OpenAI's preference format, or a conversation
with ``preferredResponse``): material for preference fine-tuning (DPO)."""
MIXED = "mixed"

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Example:
    """One record reduced to what the advisor and the bake-off use."""

    prompt: str
    answer: str | None
    kind: str
    category: str | None = None
    """An evaluation record's ``category``: the bake-off reports quality per category too."""


@dataclass(frozen=True)
class DataProfile:
    kind: str
    records: int
    prompt_tokens_p50: int
    prompt_tokens_max: int
    answer_tokens_p50: int
    duplicate_share: float
    """Share of records whose normalised prompt (or text) repeats an earlier one."""
    distinct_bigram_ratio: float
    """Distinct word bigrams over all word bigrams: near 1 for varied text, low for templated text."""

    @property
    def distinct_records(self) -> int:
        return round(self.records * (1 - self.duplicate_share))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "distinctRecords": self.distinct_records}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(part.get("text", "")) for part in value if isinstance(part, Mapping))
    return ""


def parse_example(obj: object, line: int) -> Example:
    """Classify one JSONL record; a record of no known format is refused, naming its line and field."""
    if not isinstance(obj, Mapping):
        raise ValidationException(f"line {line}: expected a JSON object")
    if "preferred_output" in obj or "preferredResponse" in obj:
        return _preference_example(obj, line)
    if "input" in obj:
        return Example(_require(obj, "input", line), None, TEXT)
    if "prompt" in obj:
        prompt = _require(obj, "prompt", line)
        category = obj.get("category")
        for key in ("completion", "referenceResponse"):
            if key in obj:
                label = category if isinstance(category, str) else None
                return Example(prompt, _require(obj, key, line), LABELED, label)
        return Example(prompt, None, PROMPTS)
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, Mapping) for m in messages):
            raise ValidationException(f'line {line}, field "messages": expected a non-empty list of messages')
        turns = [(str(m.get("role", "")), _text(m.get("content"))) for m in messages]
        if turns[-1][0] == "assistant" and len(turns) > 1:
            return Example(turns[-2][1], turns[-1][1], LABELED)
        return Example(turns[-1][1], None, PROMPTS)
    raise ValidationException(
        f'line {line}: no "prompt", "messages" or "input" field; expected prompt/completion, conversation or '
        "document records"
    )


def _preference_example(obj: Mapping[str, object], line: int) -> Example:
    """The prompt's last user turn and the preferred answer, read by the training data's own parser."""
    try:
        record = parse_record(dict(obj), FINE_TUNING, FORMAT_PREFERENCE)
    except RecordError as exc:
        raise ValidationException(f"line {line}, {exc}") from None
    assert isinstance(record, Preference)
    return Example(record.turns[-1][1], record.preferred, PREFERENCE)


def _require(obj: Mapping[str, object], key: str, line: int) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise ValidationException(f'line {line}, field "{key}": expected a non-empty string')
    return value


def read_examples(data: bytes) -> list[Example]:
    """Parse JSONL bytes (lines end at ``\\n`` only, as in pre-flight validation)."""
    examples: list[Example] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationException(f"line {number}: not valid JSON ({exc})") from None
        examples.append(parse_example(obj, number))
    if not examples:
        raise ValidationException("the dataset holds no records")
    return examples


def _tokens(text: str) -> int:
    return len(text.encode("utf-8"))


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def profile(examples: Iterable[Example]) -> DataProfile:
    items = list(examples)
    if not items:
        raise ValidationException("the dataset holds no records")
    kinds = {example.kind for example in items}
    prompt_lengths = [_tokens(example.prompt) for example in items]
    answer_lengths = [_tokens(example.answer) for example in items if example.answer is not None]
    seen: set[str] = set()
    duplicates = 0
    bigrams: list[tuple[str, str]] = []
    for example in items:
        key = _normalise(example.prompt)
        duplicates += key in seen
        seen.add(key)
        words = key.split()
        bigrams.extend(itertools.pairwise(words))
    return DataProfile(
        kind=kinds.pop() if len(kinds) == 1 else MIXED,
        records=len(items),
        prompt_tokens_p50=round(statistics.median(prompt_lengths)),
        prompt_tokens_max=max(prompt_lengths),
        answer_tokens_p50=round(statistics.median(answer_lengths)) if answer_lengths else 0,
        duplicate_share=round(duplicates / len(items), 4),
        distinct_bigram_ratio=round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 1.0,
    )
