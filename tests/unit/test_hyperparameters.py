from __future__ import annotations

import pytest

from tuneforge.catalog.hyperparameters import (
    HyperParameterError,
    HyperParameterSpec,
    as_strings,
    fine_tuning_specs,
    resolve,
)
from tuneforge.catalog.models import BUILTIN_MODELS

SPECS = fine_tuning_specs()


def test_resolve_empty_map_fills_every_default() -> None:
    resolved = resolve(SPECS, {})
    assert resolved == {spec.name: spec.default for spec in SPECS}
    assert resolved["epochCount"] == 3
    assert resolved["trainingMethod"] == "lora"


def test_resolve_parses_each_kind_to_its_python_type() -> None:
    resolved = resolve(
        SPECS,
        {"epochCount": "7", "learningRate": "1e-4", "saveMergedModel": "TRUE", "trainingMethod": "full"},
    )
    assert resolved["epochCount"] == 7 and type(resolved["epochCount"]) is int
    assert resolved["learningRate"] == pytest.approx(1e-4) and type(resolved["learningRate"]) is float
    assert resolved["saveMergedModel"] is True
    assert resolved["trainingMethod"] == "full"


def test_resolve_tolerates_surrounding_whitespace() -> None:
    assert resolve(SPECS, {"batchSize": " 16 "})["batchSize"] == 16


def test_resolve_keeps_defaults_for_names_not_given() -> None:
    resolved = resolve(SPECS, {"epochCount": "1"})
    assert resolved["batchSize"] == 8
    assert len(resolved) == len(SPECS)


def test_resolve_refuses_unknown_names_listing_supported_ones() -> None:
    with pytest.raises(HyperParameterError) as info:
        resolve(SPECS, {"epochs": "2", "batch": "4"})
    message = str(info.value)
    assert message.startswith("Unknown hyperparameter(s): batch, epochs.")
    assert "Supported: " + ", ".join(spec.name for spec in SPECS) in message


@pytest.mark.parametrize(
    ("name", "raw", "range_text"),
    [
        ("epochCount", "0", "between 1 and 100"),
        ("epochCount", "101", "between 1 and 100"),
        ("batchSize", "-1", "between 1 and 256"),
        ("learningRate", "2", "between 1e-07 and 1"),
        ("learningRate", "1e-9", "between 1e-07 and 1"),
        ("loraDropout", "0.95", "between 0 and 0.9"),
    ],
)
def test_resolve_refuses_out_of_range_value_with_range_in_message(name: str, raw: str, range_text: str) -> None:
    with pytest.raises(HyperParameterError, match=f"Hyperparameter {name} value {raw} is out of range") as info:
        resolve(SPECS, {name: raw})
    assert range_text in str(info.value)


def test_out_of_range_message_shows_exact_integer_bound() -> None:
    with pytest.raises(HyperParameterError) as info:
        resolve(SPECS, {"seed": str(2**31)})
    assert "between 0 and 2147483647" in str(info.value)


@pytest.mark.parametrize("name", ["epochCount", "learningRateWarmupSteps", "checkpointEverySteps"])
def test_resolve_accepts_both_ends_of_an_int_range(name: str) -> None:
    spec = next(s for s in SPECS if s.name == name)
    assert spec.minimum is not None and spec.maximum is not None
    assert resolve(SPECS, {name: str(int(spec.minimum))})[name] == spec.minimum
    assert resolve(SPECS, {name: str(int(spec.maximum))})[name] == spec.maximum


@pytest.mark.parametrize("raw", ["two", "2.0", "2e1", "", "0x10"])
def test_resolve_refuses_non_integer_for_int(raw: str) -> None:
    with pytest.raises(HyperParameterError, match=f"epochCount must be an integer, got '{raw}'"):
        resolve(SPECS, {"epochCount": raw})


@pytest.mark.parametrize("raw", ["fast", "", "1e-3x"])
def test_resolve_refuses_non_number_for_float(raw: str) -> None:
    with pytest.raises(HyperParameterError, match=f"learningRate must be a number, got '{raw}'"):
        resolve(SPECS, {"learningRate": raw})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "Infinity", "NaN"])
def test_resolve_refuses_non_finite_float(raw: str) -> None:
    with pytest.raises(HyperParameterError, match=f"learningRate must be finite, got '{raw}'"):
        resolve(SPECS, {"learningRate": raw})


@pytest.mark.parametrize("raw", ["yes", "1", "0", "", "truthy"])
def test_resolve_refuses_bool_other_than_true_or_false(raw: str) -> None:
    with pytest.raises(HyperParameterError, match=f"saveMergedModel must be 'true' or 'false', got '{raw}'"):
        resolve(SPECS, {"saveMergedModel": raw})


@pytest.mark.parametrize("raw", ["qlora", "LoRA", ""])
def test_resolve_refuses_value_outside_choices_listing_them(raw: str) -> None:
    with pytest.raises(HyperParameterError, match=rf"trainingMethod must be one of \[lora, full\], got '{raw}'"):
        resolve(SPECS, {"trainingMethod": raw})


def test_as_strings_renders_bools_lower_case() -> None:
    assert as_strings({"saveMergedModel": True, "x": False}) == {"saveMergedModel": "true", "x": "false"}


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"epochCount": "2", "learningRate": "1e-07", "saveMergedModel": "true", "trainingMethod": "full"},
        {"learningRate": "0.000123456789", "loraAlpha": "0.5", "seed": "2147483647", "loraDropout": "0.9"},
    ],
)
def test_as_strings_round_trips_through_resolve(raw: dict[str, str]) -> None:
    typed = resolve(SPECS, raw)
    wire = as_strings(typed)
    assert all(isinstance(v, str) for v in wire.values())
    assert resolve(SPECS, wire) == typed


def test_specs_have_unique_names_and_bedrock_names_first() -> None:
    names = [spec.name for spec in SPECS]
    assert len(names) == len(set(names))
    bedrock = [spec.bedrock for spec in SPECS]
    assert bedrock == sorted(bedrock, reverse=True)
    assert names[:4] == ["epochCount", "batchSize", "learningRate", "learningRateWarmupSteps"]


ALL_SPECS = [
    pytest.param(spec, id=f"{model.model_id}/{ctype}/{spec.name}")
    for model in BUILTIN_MODELS
    for ctype, specs in model.specs.items()
    for spec in specs
]

PYTHON_TYPE = {"int": int, "float": float, "bool": bool, "choice": str, "names": str}


def test_every_builtin_model_has_specs_for_every_customization_it_supports() -> None:
    for model in BUILTIN_MODELS:
        for ctype in model.customizations:
            assert model.hyperparameter_specs(ctype), f"{model.model_id} has no specs for {ctype}"


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_spec_default_satisfies_its_own_type_range_and_choices(spec: HyperParameterSpec) -> None:
    assert type(spec.default) is PYTHON_TYPE[spec.kind]
    if spec.kind in ("choice", "names"):
        assert spec.default in spec.choices
    if spec.kind in ("int", "float"):
        value = float(spec.default)
        assert spec.minimum is None or spec.minimum <= value
        assert spec.maximum is None or value <= spec.maximum
    assert spec.parse(as_strings({spec.name: spec.default})[spec.name]) == spec.default
