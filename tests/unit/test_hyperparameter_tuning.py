"""Automatic tuning's request syntax and refusals (tuneforge.catalog.tuning), and the adaptive epochs rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

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
from tuneforge.db.tables import Job
from tuneforge.errors import ResourceNotFoundException, ValidationException
from tuneforge.jobs.service import CreateJobRequest
from tuneforge.services import Services
from tuneforge.settings import Settings

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


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data"))
    yield created
    created.close()


def create(services: Services, name: str, records: int, hyperparameters: dict[str, str]) -> Job:
    uri = f"s3://bucket/{name}.jsonl"
    services.store.write_bytes(uri, b'{"prompt": "a", "completion": " b"}\n' * records)
    return services.jobs.create(
        CreateJobRequest(
            job_name=name,
            custom_model_name=f"{name}-model",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            base_model_identifier="tuneforge.forge-micro-v1:0:512",
            customization_type="FINE_TUNING",
            training_uri=uri,
            output_uri="s3://bucket/out/",
            hyperparameters=hyperparameters,
        )
    )


def test_a_job_without_epoch_count_gets_epochs_that_fit_its_dataset(services: Services) -> None:
    assert create(services, "tiny", 20, {}).hyperparameters["epochCount"] == "5"
    assert create(services, "mid", 600, {}).hyperparameters["epochCount"] == "3"
    assert create(services, "pinned", 20, {"epochCount": "2"}).hyperparameters["epochCount"] == "2"
    messages = [event.data.get("message", "") for event in services.jobs.events("tiny")]
    assert any(m.startswith("epochCount 5: the default for 20 training records") for m in messages)


def test_a_search_is_stored_as_asked_with_its_budget_and_refusals_create_nothing(services: Services) -> None:
    job = create(services, "tuned", 40, {"learningRate": "auto", "batchSize": "4,8", "tuningTrials": "2"})
    stored = services.jobs.get(job.id).hyperparameters
    assert (stored["learningRate"], stored["batchSize"]) == ("auto", "4,8")
    assert (stored["tuningTrials"], stored["tuningTimeBudgetMinutes"]) == ("2", "60")
    with pytest.raises(ValidationException, match="tuningTrials value 0 is out of range"):
        create(services, "zero", 40, {"learningRate": "auto", "tuningTrials": "0"})
    with pytest.raises(ValidationException, match="Hyperparameter seed cannot be searched"):
        create(services, "seed", 40, {"seed": "auto"})
    with pytest.raises(ResourceNotFoundException):
        services.jobs.get("zero")
