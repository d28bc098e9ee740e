"""The demo's field-extraction task: deterministic, held-out split disjoint, and a strict scorer."""

from __future__ import annotations

import pytest

from tuneforge.data.tasks import EXTRACTION_QUESTION, extraction_matches, make_extraction_task


def test_same_arguments_give_the_same_records_and_the_split_is_disjoint() -> None:
    train, test = make_extraction_task(n_train=64, n_test=40, seed=0)
    assert (train, test) == make_extraction_task(n_train=64, n_test=40, seed=0)
    assert (train, test) != make_extraction_task(n_train=64, n_test=40, seed=1)
    questions = [r["messages"][0]["content"][0]["text"] for r in train + test]
    assert len(set(questions)) == len(questions) == 104
    assert all(q.endswith(EXTRACTION_QUESTION) for q in questions)


def test_every_answer_is_name_comma_city_and_both_appear_in_the_message() -> None:
    train, test = make_extraction_task(n_train=64, n_test=40)
    for record in train + test:
        message = record["messages"][0]["content"][0]["text"]
        name, city = record["messages"][1]["content"][0]["text"].split(", ")
        assert name in message and city in message


def test_too_many_records_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct messages"):
        make_extraction_task(n_train=8000, n_test=1000)


@pytest.mark.parametrize(
    ("output", "right"),
    [
        ("Anna Berg, Oslo", True),
        (" Anna Berg, Oslo.\n", True),
        ("Anna Berg, Oslo, Norway", False),
        ("The sender is Anna Berg, Oslo.", False),
        ("anna berg, oslo", False),
        ("Anna Berg, Oslo..", False),
    ],
)
def test_exact_match_ignores_only_whitespace_and_one_full_stop(output: str, right: bool) -> None:
    assert extraction_matches(output, "Anna Berg, Oslo") is right
