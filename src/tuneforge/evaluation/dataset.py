"""An evaluation dataset: Bedrock's JSONL for automated model evaluation, checked before a job runs.

One JSON object per line: ``prompt`` (required, a non-empty string), ``referenceResponse`` (the
expected answer: required when a metric scores against it), ``category`` (optional, results are
also broken down by it) and, when a model of the job is a ``precomputedInferenceSource``,
``modelResponses``: ``[{"response": "...", "modelIdentifier": "<that source's identifier>"}]``.
Bedrock takes at most 1,000 prompts per dataset in an automated job, and so does tuneforge.

Every error names its line and field, in the style of pre-flight validation
(:class:`tuneforge.data.validate.DataError`), and at most :data:`MAX_ERRORS` are listed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.jsonl import jsonl_lines
from tuneforge.data.validate import DataError

MAX_RECORDS = 1000
MAX_ERRORS = 10


@dataclass(frozen=True)
class EvaluationRecord:
    line: int
    prompt: str
    reference: str | None = None
    category: str | None = None
    responses: dict[str, str] = field(default_factory=dict)
    """Precomputed answers by ``modelIdentifier``."""
    data: dict[str, Any] = field(default_factory=dict)
    """The line as given (the output files' ``inputRecord``)."""


@dataclass(frozen=True)
class DatasetCheck:
    records: list[EvaluationRecord]
    errors: list[DataError]
    more_errors: int = 0

    def message(self, name: str) -> str:
        """One ValidationException message listing the errors (Bedrock caps messages at 2048 characters)."""
        listed = "; ".join(str(error) for error in self.errors)
        more = f"; and {self.more_errors} more errors" if self.more_errors else ""
        return f"The evaluation dataset {name} is not valid: {listed}{more}"[:2048]


def _string(data: dict[str, object], key: str, line: int, errors: list[DataError], required: bool) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            errors.append(DataError(line, key, f'missing key "{key}"'))
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append(DataError(line, key, f'"{key}" must be a non-empty string'))
        return None
    return value


def check_dataset(content: bytes, need_reference: bool, precomputed: Sequence[str] = ()) -> DatasetCheck:
    """Parse and check every non-blank line; ``precomputed`` names the sources whose answers it must hold."""
    records: list[EvaluationRecord] = []
    errors: list[DataError] = []
    for line in jsonl_lines(content):
        number, raw = line.number, line.text
        if line.error is not None:
            errors.append(DataError(number, None, line.error))
            continue
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError as exc:
            errors.append(DataError(number, None, f"not valid JSON ({exc})"))
            continue
        if not isinstance(data, dict):
            errors.append(DataError(number, None, 'a record must be a JSON object with "prompt"'))
            continue
        before = len(errors)
        prompt = _string(data, "prompt", number, errors, required=True)
        reference = _string(data, "referenceResponse", number, errors, required=need_reference)
        category = _string(data, "category", number, errors, required=False)
        responses = _responses(data, number, precomputed, errors)
        if len(errors) == before and prompt is not None:
            records.append(EvaluationRecord(number, prompt, reference, category, responses, data))
    if not records and not errors:
        errors.append(DataError(None, None, "the dataset holds no records: write one JSON object per line"))
    count = len(records) + len({e.line for e in errors if e.line is not None})
    if count > MAX_RECORDS:
        errors.insert(0, DataError(None, None, f"it holds {count} records; at most {MAX_RECORDS} are allowed"))
    return DatasetCheck(records, errors[:MAX_ERRORS], max(0, len(errors) - MAX_ERRORS))


def _responses(
    data: dict[str, object], line: int, precomputed: Sequence[str], errors: list[DataError]
) -> dict[str, str]:
    if not precomputed:
        return {}
    value = data.get("modelResponses")
    if not isinstance(value, list):
        errors.append(DataError(line, "modelResponses", 'missing key "modelResponses" (a list of response objects)'))
        return {}
    found: dict[str, str] = {}
    for index, item in enumerate(value):
        where = f"modelResponses[{index}]"
        if not isinstance(item, dict):
            errors.append(DataError(line, where, "must be an object with response and modelIdentifier"))
            continue
        response, identifier = item.get("response"), item.get("modelIdentifier")
        if not isinstance(response, str):
            errors.append(DataError(line, f"{where}.response", "must be a string"))
        elif not isinstance(identifier, str) or not identifier:
            errors.append(DataError(line, f"{where}.modelIdentifier", "must be a non-empty string"))
        else:
            found[identifier] = response
    for identifier in precomputed:
        if identifier not in found:
            errors.append(DataError(line, "modelResponses", f"no response with modelIdentifier {identifier}"))
    return found
