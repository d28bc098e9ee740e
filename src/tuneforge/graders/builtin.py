"""Built-in graders: what a ``lambdaArn`` names without a registered file.

Each reads its parameters from the data record, beside the prompt, since Bedrock's ``graderConfig``
carries only the function's ARN: ``reference_answer`` (what to match, the pattern, the number, or
the JSON schema), and optionally ``tolerance`` / ``relative_tolerance`` for numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex

from tuneforge.graders.base import Grade, Sample

NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
MAX_PATTERN_CHARS = 1000
REGEX_TIMEOUT_S = 1.0
"""How long one answer may take to match: a pattern that backtracks catastrophically (``(a|aa)+$``)
gets an error grade instead of holding a training step or an API thread for ever."""


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def reference_text(sample: Sample) -> str | None:
    """The record's ``reference_answer`` as text, or None when it has none."""
    reference = sample.item.get("reference_answer")
    if reference is None:
        return None
    return reference if isinstance(reference, str) else str(reference)


NO_REFERENCE = 'the record has no "reference_answer"'


def _each(samples: Sequence[Sample], score: Callable[[Sample], Grade]) -> list[Grade]:
    return [score(sample) for sample in samples]


@dataclass(frozen=True)
class ExactMatch:
    """1.0 when the answer equals the record's ``reference_answer`` (whitespace and case ignored), else 0.0."""

    name: str = "tuneforge-exact-match"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        def one(sample: Sample) -> Grade:
            reference = reference_text(sample)
            if reference is None:
                return Grade(None, f"{NO_REFERENCE} to match")
            return Grade(1.0 if normalise(sample.response) == normalise(reference) else 0.0)

        return _each(samples, one)


@dataclass(frozen=True)
class RegexMatch:
    """1.0 when the whole answer (stripped) matches the regular expression in ``reference_answer``."""

    name: str = "tuneforge-regex"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        def one(sample: Sample) -> Grade:
            pattern = reference_text(sample)
            if pattern is None:
                return Grade(None, f"{NO_REFERENCE} (the regular expression)")
            if len(pattern) > MAX_PATTERN_CHARS:
                return Grade(None, f"the regular expression is longer than {MAX_PATTERN_CHARS} characters")
            try:
                compiled = regex.compile(pattern, regex.DOTALL)
            except regex.error as exc:
                return Grade(None, f"reference_answer is not a regular expression: {exc}")
            try:
                matched = compiled.fullmatch(sample.response.strip(), timeout=REGEX_TIMEOUT_S)
            except TimeoutError:
                return Grade(None, f"the regular expression took over {REGEX_TIMEOUT_S:g} s to match the answer")
            return Grade(1.0 if matched else 0.0)

        return _each(samples, one)


def parse_json_answer(text: str) -> Any:
    """The answer as JSON, allowing a fenced ```json block around it; raises ValueError."""
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else stripped)


@dataclass(frozen=True)
class JsonSchemaValid:
    """1.0 when the answer is JSON valid against the schema in ``reference_answer`` (an object, or its text)."""

    name: str = "tuneforge-json-schema"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        def one(sample: Sample) -> Grade:
            schema = sample.item.get("reference_answer")
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError:
                    return Grade(None, "reference_answer is not a JSON schema (not JSON)")
            if not isinstance(schema, Mapping):
                return Grade(None, f"{NO_REFERENCE} holding a JSON schema object")
            try:
                validator_class = jsonschema.validators.validator_for(schema)
                validator_class.check_schema(schema)
            except jsonschema.SchemaError as exc:
                return Grade(None, f"reference_answer is not a valid JSON schema: {exc.message}")
            try:
                answer = parse_json_answer(sample.response)
            except ValueError:
                return Grade(0.0)
            return Grade(1.0 if validator_class(schema).is_valid(answer) else 0.0)

        return _each(samples, one)


def last_number(text: str) -> float | None:
    """The last number in ``text`` (answers often end with it), thousands commas dropped."""
    found = NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


def _tolerance(item: Mapping[str, Any], key: str, default: float) -> float | str:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return f'"{key}" must be a non-negative number, not {value!r}'
    return float(value)


@dataclass(frozen=True)
class NumericTolerance:
    """1.0 when the answer's last number is within ``tolerance`` (absolute, default 1e-6) or
    ``relative_tolerance`` (default 0) of the number in ``reference_answer``."""

    name: str = "tuneforge-numeric"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        def one(sample: Sample) -> Grade:
            reference = reference_text(sample)
            expected = None if reference is None else last_number(reference)
            if expected is None:
                return Grade(None, f"{NO_REFERENCE} holding a number")
            absolute = _tolerance(sample.item, "tolerance", 1e-6)
            relative = _tolerance(sample.item, "relative_tolerance", 0.0)
            if isinstance(absolute, str) or isinstance(relative, str):
                return Grade(None, absolute if isinstance(absolute, str) else str(relative))
            answer = last_number(sample.response)
            if answer is None:
                return Grade(0.0)
            return Grade(1.0 if math.isclose(answer, expected, rel_tol=relative, abs_tol=absolute) else 0.0)

        return _each(samples, one)
