"""Automatic tuning's request syntax and refusals (tuneforge.catalog.tuning), and the adaptive epochs rule."""

from __future__ import annotations

import re

import pytest

from tuneforge.catalog.hyperparameters import HyperParameterError, continued_pretraining_specs, fine_tuning_specs
from tuneforge.catalog.tuning import (
    DEFAULT_TIME_BUDGET_MINUTES,
    DEFAULT_TRIALS,
    SEARCHABLE,
    adaptive_epochs,
    planning_values,
    split,
)

SPECS = fine_tuning_specs()


def test_auto_searches_the_documented_default_range_and_leaves_plain_values_alone() -> None:
    plain, search = split(SPECS, {"learningRate": "auto", "epochCount": "2"})
    assert plain == {"epochCount": "2"}
    assert search is not None
    (space,) = search.spaces
    assert (space.name, space.low, space.high, space.log) == ("learningRate", 1e-4, 1e-2, True)
    assert (search.trials, search.time_budget_minutes) == (DEFAULT_TRIALS, DEFAULT_TIME_BUDGET_MINUTES)
    assert search.as_strings() == {"tuningTrials": str(DEFAULT_TRIALS), "tuningTimeBudgetMinutes": "60"}


def test_ranges_and_choices_are_typed_by_the_spec() -> None:
    _, search = split(
        SPECS,
        {"epochCount": "1..4", "loraRank": "4, 8,16", "tuningTrials": "3", "tuningTimeBudgetMinutes": "5"},
    )
    assert search is not None
    spaces = {space.name: space for space in search.spaces}
    assert (spaces["epochCount"].kind, spaces["epochCount"].low, spaces["epochCount"].high) == ("int", 1, 4)
    assert not spaces["epochCount"].log
    assert spaces["loraRank"].choices == (4, 8, 16)
    assert (search.trials, search.time_budget_minutes) == (3, 5)
    assert planning_values(search) == {"loraRank": 16}


def test_every_searchable_default_range_is_valid_for_its_spec() -> None:
    for specs in (fine_tuning_specs(), continued_pretraining_specs()):
        _, search = split(specs, dict.fromkeys(SEARCHABLE, "auto"))
        assert search is not None and len(search.spaces) == len(SEARCHABLE)


def test_existing_auto_choices_keep_their_meaning() -> None:
    plain, search = split(SPECS, {"precision": "auto", "gradientCheckpointing": "auto"})
    assert search is None
    assert plain == {"precision": "auto", "gradientCheckpointing": "auto"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seed": "auto"}, "Hyperparameter seed cannot be searched"),
        ({"maxSequenceLength": "64..128"}, "Hyperparameter maxSequenceLength cannot be searched"),
        ({"trainingMethod": "auto"}, "Hyperparameter trainingMethod cannot be searched"),
        ({"learningRate": "auto", "tuningTrials": "0"}, "Hyperparameter tuningTrials value 0 is out of range"),
        ({"learningRate": "auto", "tuningTrials": "many"}, "Hyperparameter tuningTrials must be an integer"),
        (
            {"learningRate": "auto", "tuningTimeBudgetMinutes": "0"},
            "Hyperparameter tuningTimeBudgetMinutes value 0 is out of range",
        ),
        ({"tuningTrials": "4"}, "Hyperparameter tuningTrials is used only when a hyperparameter is searched"),
        ({"learningRate": "1e-2..1e-4"}, "Hyperparameter learningRate search range '1e-2..1e-4' is invalid"),
        ({"learningRate": "0..1e-2"}, "learningRate value 0 is out of range"),
        ({"epochCount": "1..500"}, "Hyperparameter epochCount search range '1..500' is invalid"),
        ({"batchSize": "8,eight"}, "Hyperparameter batchSize choices '8,eight' are invalid"),
        ({"batchSize": "8,8"}, "give two or more different values"),
    ],
)
def test_bad_searches_are_refused_naming_the_key(raw: dict[str, str], message: str) -> None:
    with pytest.raises(HyperParameterError, match=re.escape(message)):
        split(SPECS, raw)


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(1, 25), (10, 10), (20, 5), (33, 3), (600, 3), (8_333, 3), (10_000, 2), (30_000, 1)],
)
def test_adaptive_epochs_scale_with_the_dataset_like_openai_auto(examples: int, epochs: int) -> None:
    assert adaptive_epochs(examples) == epochs
