"""Preference records (FINE_TUNING trained with DPO): both spellings, their errors and their token counts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tuneforge.catalog.models import DISTILLATION, FINE_TUNING, TokenLimits
from tuneforge.data.estimate import estimate_training
from tuneforge.data.formats import FORMAT_PREFERENCE, Preference, RecordError, parse_record, record_format
from tuneforge.data.validate import validate_lines

CALM = Preference(system="Be calm.", turns=(("user", "Tone?"),), preferred="Calm.", non_preferred="LOUD!!")
LIMITS = TokenLimits(max_input_tokens=4096, max_output_tokens=2048, max_total_tokens=4096)


def openai_pair(
    prompt: Any = "Tone?", preferred: str = "Calm.", non_preferred: str = "LOUD!!", **input_extra: Any
) -> dict[str, Any]:
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return {
        "input": {"messages": messages, **input_extra},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def bedrock_pair(
    prompt: str = "Tone?", preferred: str = "Calm.", non_preferred: str = "LOUD!!", **extra: Any
) -> dict[str, Any]:
    return {
        **extra,
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "preferredResponse": {"role": "assistant", "content": [{"text": preferred}]},
        "nonPreferredResponse": {"role": "assistant", "content": [{"text": non_preferred}]},
    }


def error_of(obj: object) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_record(obj, FINE_TUNING)
    return info.value


def test_openai_preference_record_reads_as_it_is() -> None:
    obj = openai_pair(
        [{"role": "system", "content": "Be calm."}, {"role": "user", "content": "Tone?"}],
        tools=[],
        parallel_tool_calls=True,
    )
    assert record_format(obj, FINE_TUNING) == FORMAT_PREFERENCE
    record = parse_record(obj, FINE_TUNING)
    assert record == CALM
    assert record.input_output_text() == ("Be calm.\nTone?", "LOUD!!")


def test_bedrock_preference_record_is_a_conversation_ending_with_the_user_plus_two_answers() -> None:
    obj = bedrock_pair(schemaVersion="bedrock-conversation-2024", system=[{"text": "Be calm."}])
    record = parse_record(obj, FINE_TUNING)
    assert record == CALM
    assert record.conversation(preferred=False) == {
        "system": [{"text": "Be calm."}],
        "messages": [
            {"role": "user", "content": [{"text": "Tone?"}]},
            {"role": "assistant", "content": [{"text": "LOUD!!"}]},
        ],
    }


def test_multi_turn_prompt_keeps_its_turns() -> None:
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    record = parse_record(openai_pair(turns), FINE_TUNING)
    assert isinstance(record, Preference)
    assert record.turns == (("user", "a"), ("assistant", "b"), ("user", "c"))


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (openai_pair(preferred="Same", non_preferred="Same"), "non_preferred_output", "same answer"),
        (bedrock_pair(preferred="Same", non_preferred=" Same "), "nonPreferredResponse", "same answer"),
        ({k: v for k, v in openai_pair().items() if k != "non_preferred_output"}, "non_preferred_output", "missing"),
        ({**openai_pair(), "extra": 1}, "extra", "unexpected key"),
        (
            openai_pair([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
            "input.messages[1].role",
            'end with a "user"',
        ),
        (openai_pair(tools=[{"type": "function"}]), "input.tools", "not supported"),
        (openai_pair(parallel_tool_calls="yes"), "input.parallel_tool_calls", "true or false"),
        (
            {**openai_pair(), "preferred_output": [{"role": "assistant", "content": "x"}] * 2},
            "preferred_output",
            "exactly one",
        ),
        (
            {**openai_pair(), "preferred_output": [{"role": "user", "content": "x"}]},
            "preferred_output[0].role",
            '"assistant"',
        ),
        (
            {**openai_pair(), "preferred_output": [{"role": "assistant", "content": "", "tool_calls": []}]},
            "preferred_output[0].tool_calls",
            "tool calls",
        ),
        ({**openai_pair(), "input": "Tone?"}, "input", "JSON object"),
        (bedrock_pair(preferred=""), "preferredResponse.content[0].text", "empty"),
        ({**bedrock_pair(), "nonPreferredResponse": "LOUD!"}, "nonPreferredResponse", "JSON object"),
    ],
)
def test_malformed_preference_record_names_the_field(obj: dict[str, Any], field: str, words: str) -> None:
    error = error_of(obj)
    assert error.field == field
    assert words in error.message


def test_preference_keys_are_not_read_for_distillation() -> None:
    with pytest.raises(RecordError):
        parse_record(bedrock_pair(), DISTILLATION)


def jsonl(*records: object) -> list[bytes]:
    return [json.dumps(r).encode() + b"\n" for r in records]


def words(text: str) -> int:
    return len(text.split())


def test_validation_names_line_and_field_of_identical_answers() -> None:
    report = validate_lines(
        jsonl(openai_pair(), bedrock_pair(preferred="Same", non_preferred="Same")),
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=words,
        max_records=100,
        max_bytes=1 << 20,
    )
    assert report.format == FORMAT_PREFERENCE
    assert [str(e) for e in report.errors] == [
        'line 2, field "nonPreferredResponse": the same answer as "preferredResponse"; '
        "a preference pair needs two different answers to learn from"
    ]


def test_validation_counts_both_sequences_and_limits_the_longer_answer() -> None:
    pair = openai_pair("one two three", "a b", "c d e f")
    report = validate_lines(
        jsonl(pair),
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=words,
        max_records=10,
        max_bytes=1 << 20,
    )
    assert report.ok
    assert (report.input_tokens, report.output_tokens, report.max_record_tokens) == (6, 6, 7)
    tight = TokenLimits(max_input_tokens=10, max_output_tokens=3, max_total_tokens=10)
    report = validate_lines(
        jsonl(pair), customization_type=FINE_TUNING, limits=tight, count_tokens=words, max_records=10, max_bytes=1 << 20
    )
    assert [str(e) for e in report.errors] == ["line 1: Maximum output token count 4 exceeds limit of 3"]


def test_preference_and_supervised_records_do_not_mix_in_one_file() -> None:
    report = validate_lines(
        jsonl(bedrock_pair(), {"prompt": "p", "completion": "c"}),
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=words,
        max_records=10,
        max_bytes=1 << 20,
    )
    assert [(e.line, "preference format" in e.message) for e in report.errors] == [(2, True)]


def test_estimate_adds_the_reference_pass_for_preference_data() -> None:
    pair = openai_pair("one two three", "a b", "c d e f")
    report = validate_lines(
        jsonl(pair),
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=words,
        max_records=10,
        max_bytes=1 << 20,
    )
    hp = {"epochCount": 2, "trainingMethod": "lora"}
    estimate = estimate_training(report, parameter_count=1000, hyperparameters=hp, peak_flops=1e9, price_per_hour=1)
    assert estimate.tokens_processed == 2 * 12
    assert estimate.flops == 4 * 1000 * 24 + 2 * 1000 * 12
    assert "reference forward pass" in estimate.assumptions
