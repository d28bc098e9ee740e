"""Graders: score a model's answers in [0, 1], for reinforcement fine-tuning and ``/v1/fine_tuning/alpha/graders``.

The interface is small on purpose: a grader takes a batch of :class:`Sample` and returns one
:class:`Grade` per sample, in order. A grader that fails on a sample says so in that sample's grade
(``score=None`` and an ``error``) instead of raising, so that a training step can count and report the
failures and carry on; :func:`load_grader` is where a grader configuration is refused up front.

This package is control-plane safe: it never imports torch, so the API process can validate and run
graders too.
"""

from __future__ import annotations

from tuneforge.graders.base import Grade, Grader, GraderConfigError, Sample, all_failed, failure_count
from tuneforge.graders.judge import Complete, JudgeRequest, http_complete
from tuneforge.graders.registry import GraderContext, GraderRegistry, load_grader
from tuneforge.graders.sandbox import SandboxLimits

__all__ = [
    "Complete",
    "Grade",
    "Grader",
    "GraderConfigError",
    "GraderContext",
    "GraderRegistry",
    "JudgeRequest",
    "Sample",
    "SandboxLimits",
    "all_failed",
    "failure_count",
    "http_complete",
    "load_grader",
]
