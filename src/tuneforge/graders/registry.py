"""Grader configurations -> graders.

A configuration is Bedrock's ``graderConfig`` union as stored with the job:

- ``{"lambdaGrader": {"lambdaArn": "arn:aws:lambda:<region>:<account>:function:<name>"}}``: tuneforge has
  no Lambda, so ``<name>`` names a built-in grader (:data:`BUILTIN`) or a grader registered in tuneforge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.graders.base import Grade, Grader, GraderConfigError, Sample

LAMBDA_ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:[a-z0-9-]*:\d{12}:function:(?P<name>[A-Za-z0-9_-]{1,64})(:[A-Za-z0-9$_-]+)?$"
)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def reference_text(sample: Sample) -> str | None:
    """The record's ``reference_answer`` as text, or None when it has none."""
    reference = sample.item.get("reference_answer")
    if reference is None:
        return None
    return reference if isinstance(reference, str) else str(reference)


@dataclass(frozen=True)
class ExactMatch:
    """1.0 when the answer equals the record's ``reference_answer`` (whitespace and case ignored), else 0.0."""

    name: str = "tuneforge-exact-match"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        grades = []
        for sample in samples:
            reference = reference_text(sample)
            if reference is None:
                grades.append(Grade(None, 'the record has no "reference_answer" to match'))
            else:
                grades.append(Grade(1.0 if _normalise(sample.response) == _normalise(reference) else 0.0))
        return grades


BUILTIN: dict[str, Callable[[], Grader]] = {
    "tuneforge-exact-match": ExactMatch,
}
"""Built-in grader name (the function name in a ``lambdaArn``) -> a factory."""


def load_grader(config: Mapping[str, Any]) -> Grader:
    """The grader a ``graderConfig`` names; :class:`GraderConfigError` says what is wrong with it."""
    lambda_grader = config.get("lambdaGrader")
    if not isinstance(lambda_grader, Mapping):
        raise GraderConfigError("graderConfig needs lambdaGrader.lambdaArn")
    arn = lambda_grader.get("lambdaArn")
    match = LAMBDA_ARN.match(arn) if isinstance(arn, str) else None
    if match is None:
        raise GraderConfigError(f"graderConfig.lambdaGrader.lambdaArn is not a Lambda function ARN: {arn!r}")
    name = match.group("name")
    if name in BUILTIN:
        return BUILTIN[name]()
    raise GraderConfigError(f"no grader named {name!r}; built-in graders: {', '.join(sorted(BUILTIN))}")
