"""The grader interface: samples in, one grade per sample out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class GraderConfigError(ValueError):
    """A grader configuration that cannot work (unknown grader, bad parameters); nothing runs."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        """The member of the configuration that is wrong (``grader.calculate_output``), when one is."""


@dataclass(frozen=True)
class Sample:
    """One answer to grade, with what a grader may read about it."""

    messages: tuple[tuple[str, str], ...]
    """The prompt as ``(role, text)``: ``system`` (if any) first, then ``user``/``assistant`` turns."""
    response: str
    """The model's answer."""
    item: Mapping[str, Any] = field(default_factory=dict)
    """The data record's other fields (``reference_answer`` and anything else the grader reads)."""


@dataclass(frozen=True)
class Grade:
    score: float | None
    """In [0, 1]; None when the grader failed on this sample."""
    error: str | None = None
    """Why the grader failed on this sample (raised, timed out, printed garbage, NaN, out of range...)."""

    @classmethod
    def checked(cls, value: object) -> Grade:
        """A grader's raw return value as a grade: a finite number in [0, 1], or a failure saying why."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return cls(None, f"the grader returned {type(value).__name__} {str(value)[:80]!r}, not a number")
        number = float(value)
        if math.isnan(number):
            return cls(None, "the grader returned NaN")
        if not 0.0 <= number <= 1.0:
            return cls(None, f"the grader returned {number!r}, outside [0, 1]")
        return cls(number)


class Grader(Protocol):
    @property
    def name(self) -> str:
        """Shown in logs, metrics and errors."""
        ...

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        """One grade per sample, in order. Never raises for a bad sample: that is a failed grade."""
        ...


def all_failed(grades: Sequence[Grade]) -> str | None:
    """The error when the grader failed on every sample (a job then fails with it), else None.

    The most frequent error is the one returned, with how many samples it covers, so a grader that
    fails for one reason names that reason; none when at least one sample has a score.
    """
    errors = [grade.error or "no score" for grade in grades if grade.score is None]
    if not grades or len(errors) < len(grades):
        return None
    common = max(set(errors), key=errors.count)
    return f"the grader failed on all {len(grades)} samples: {common}"


def failure_count(grades: Sequence[Grade]) -> int:
    """How many samples the grader failed on (for step metrics)."""
    return sum(1 for grade in grades if grade.score is None)
