from __future__ import annotations

import math

import pytest

from tuneforge.graders import Grade, GraderConfigError, Sample, load_grader

ARN = "arn:aws:lambda:us-east-1:123456789012:function:"


def test_exact_match_ignores_case_and_spacing_and_reports_a_missing_reference() -> None:
    grader = load_grader({"lambdaGrader": {"lambdaArn": ARN + "tuneforge-exact-match"}})
    prompt = (("user", "2+2?"),)
    grades = grader.grade(
        [
            Sample(prompt, " Four ", {"reference_answer": "four"}),
            Sample(prompt, "five", {"reference_answer": "four"}),
            Sample(prompt, "4", {"reference_answer": 4}),
            Sample(prompt, "four"),
        ]
    )
    assert [g.score for g in grades] == [1.0, 0.0, 1.0, None]
    assert grades[3].error is not None and "reference_answer" in grades[3].error


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "lambdaGrader"),
        ({"lambdaGrader": {"lambdaArn": "not-an-arn"}}, "not a Lambda function ARN"),
        ({"lambdaGrader": {"lambdaArn": ARN + "no-such-grader"}}, "no grader named 'no-such-grader'"),
    ],
)
def test_bad_grader_configs_are_refused(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(GraderConfigError, match=fragment):
        load_grader(config)


@pytest.mark.parametrize(
    ("value", "score", "fragment"),
    [
        (0.25, 0.25, None),
        (1, 1.0, None),
        (math.nan, None, "NaN"),
        (1.5, None, "outside [0, 1]"),
        (-0.1, None, "outside [0, 1]"),
        ("0.5", None, "not a number"),
        (True, None, "not a number"),
    ],
)
def test_raw_grader_values_are_checked(value: object, score: float | None, fragment: str | None) -> None:
    grade = Grade.checked(value)
    assert grade.score == score
    assert (grade.error is None) if fragment is None else (fragment in (grade.error or ""))
