from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tuneforge.catalog.models import CONTINUED_PRE_TRAINING, DISTILLATION, FINE_TUNING, TokenLimits
from tuneforge.data.estimate import estimate_training, measure_peak_flops
from tuneforge.data.validate import (
    FAILURE_MESSAGE_LIMIT,
    MIN_RECORD_BYTES,
    DataError,
    ValidationReport,
    record_byte_limit,
    validate_file,
    validate_lines,
)

LIMITS = TokenLimits(max_input_tokens=4096, max_output_tokens=2048, max_total_tokens=4096)


def pc(prompt: str = "What is 2+2?", completion: str = "4") -> dict[str, Any]:
    return {"prompt": prompt, "completion": completion}


def conversation(*texts: str) -> dict[str, Any]:
    roles = ("user", "assistant")
    return {
        "schemaVersion": "bedrock-conversation-2024",
        "messages": [{"role": roles[i % 2], "content": [{"text": t}]} for i, t in enumerate(texts)],
    }


def jsonl(*records: object) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


def check(
    lines: list[bytes],
    customization_type: str = FINE_TUNING,
    *,
    limits: TokenLimits = LIMITS,
    max_records: int = 1000,
    max_bytes: int = 1 << 20,
    max_errors: int = 20,
) -> ValidationReport:
    return validate_lines(
        lines,
        customization_type=customization_type,
        limits=limits,
        count_tokens=len,
        max_records=max_records,
        max_bytes=max_bytes,
        max_errors=max_errors,
    )


def only_error(report: ValidationReport) -> DataError:
    assert not report.ok
    assert len(report.errors) == 1, report.error_messages()
    return report.errors[0]


def test_clean_prompt_completion_file_counts_records_and_tokens(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"".join(jsonl(pc("abc", "de"), pc("fghij", "k"))))
    report = validate_file(
        path,
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=len,
        max_records=10,
        max_bytes=1 << 20,
    )
    assert report.ok, report.error_messages()
    assert report.format == "prompt-completion"
    assert report.records == 2
    assert (report.input_tokens, report.output_tokens, report.total_tokens) == (8, 3, 11)
    assert report.max_record_tokens == 6
    assert report.bytes == path.stat().st_size
    assert report.to_dict()["ok"] is True
    assert json.loads(json.dumps(report.to_dict()))["records"] == 2


def test_clean_conversation_file_is_detected_as_conversation() -> None:
    report = check(jsonl(conversation("hi", "hello"), conversation("a", "b", "c", "de")))
    assert report.ok, report.error_messages()
    assert report.format == "conversation"
    assert report.records == 2
    # "a\nb\nc" is the second record's input, "de" its output.
    assert (report.input_tokens, report.output_tokens) == (2 + 5, 5 + 2)


def test_malformed_json_names_its_line_and_column() -> None:
    lines = jsonl(pc(), pc(), '{"prompt": "a" "completion": "b"}', pc())
    error = only_error(check(lines))
    assert error.line == 3
    assert str(error) == "line 3: invalid JSON: Expecting ',' delimiter (column 16)"


def test_blank_line_is_an_error() -> None:
    lines = [*jsonl(pc(), pc(), pc(), pc()), b"\n", *jsonl(pc())]
    error = only_error(check(lines))
    assert str(error) == "line 5: blank line; JSONL allows none, so delete it"


def test_trailing_newline_is_not_a_blank_line_but_an_empty_last_line_is() -> None:
    assert check(jsonl(pc(), pc())).ok
    assert only_error(check([*jsonl(pc()), b"\r\n"])).line == 2


def test_non_object_line_is_rejected() -> None:
    error = only_error(check(jsonl(pc(), [1, 2])))
    assert str(error) == "line 2: each line must be a JSON object, got array"


def test_missing_key_names_line_and_field() -> None:
    error = only_error(check(jsonl(pc(), {"prompt": "p"})))
    assert (error.line, error.field) == (2, "completion")
    assert str(error).startswith('line 2, field "completion": missing key "completion"')


def test_extra_key_names_line_and_field() -> None:
    error = only_error(check(jsonl({**pc(), "label": "x"})))
    assert (error.line, error.field) == (1, "label")
    assert 'unexpected key "label"' in error.message


def test_wrong_type_names_line_field_and_types() -> None:
    lines = jsonl(pc(), pc(), pc(), pc(), pc(), pc(), {"prompt": "p", "completion": 7})
    error = only_error(check(lines))
    assert str(error) == 'line 7, field "completion": expected a string, got number'


def test_empty_string_is_rejected() -> None:
    error = only_error(check(jsonl(pc(completion=""))))
    assert (error.line, error.field) == (1, "completion")
    assert "empty string" in error.message


def test_conversation_last_role_must_be_assistant() -> None:
    error = only_error(check(jsonl(conversation("q", "a"), conversation("q", "a", "q2"))))
    assert (error.line, error.field) == (2, "messages[2].role")
    assert 'last message must be from "assistant"' in error.message


def test_conversation_roles_must_alternate() -> None:
    bad = {"messages": [{"role": "user", "content": [{"text": t}]} for t in ("q", "q2")]}
    error = only_error(check(jsonl(conversation("q", "a"), bad)))
    assert (error.line, error.field) == (2, "messages[1].role")
    assert "alternate" in error.message


def test_distillation_record_without_user_turn_fails_naming_its_line() -> None:
    no_user = {"messages": [{"role": "assistant", "content": [{"text": "a"}]}]}
    report = check(jsonl(conversation("q"), conversation("q", "golden"), no_user), DISTILLATION)
    error = only_error(report)
    assert (error.line, error.field) == (3, "messages")
    assert "at least one user message" in error.message


def test_distillation_prompts_count_golden_answers_as_output() -> None:
    report = check(jsonl(conversation("abc"), conversation("q", "golden")), DISTILLATION)
    assert report.ok, report.error_messages()
    assert report.format == "conversation"
    assert (report.input_tokens, report.output_tokens) == (4, 6)


def test_mixed_formats_name_the_line_and_the_file_format() -> None:
    error = only_error(check(jsonl(pc(), pc(), conversation("q", "a"))))
    assert error.line == 3
    assert "conversation format" in error.message
    assert "prompt-completion format (set by line 1)" in error.message


def test_format_is_set_by_the_first_valid_record() -> None:
    report = check(jsonl({"prompt": 1, "completion": "c"}, conversation("q", "a"), pc()))
    assert report.format == "conversation"
    assert [e.line for e in report.errors] == [1, 3]
    assert "set by line 2" in report.errors[1].message


def test_input_token_limit_uses_bedrock_message() -> None:
    error = only_error(check(jsonl(pc("x" * 4097, "y")), limits=TokenLimits(4096, 2048, 10_000)))
    assert str(error) == "line 1: Maximum input token count 4097 exceeds limit of 4096"


def test_output_token_limit_uses_bedrock_message() -> None:
    error = only_error(check(jsonl(pc(), pc("p", "y" * 2049)), limits=TokenLimits(4096, 2048, 10_000)))
    assert str(error) == "line 2: Maximum output token count 2049 exceeds limit of 2048"


def test_total_token_limit_uses_bedrock_message() -> None:
    lines = jsonl(*[pc()] * 8, pc("x" * 4000, "y" * 97))
    error = only_error(check(lines))
    assert str(error) == "line 9: Max sum of input and output token length 4097 exceeds total limit of 4096"


def test_record_at_exactly_the_limits_passes() -> None:
    assert check(jsonl(pc("x" * 2048, "y" * 2048))).ok


def test_records_over_limits_are_left_out_of_the_counts() -> None:
    report = check(jsonl(pc("ab", "c"), pc("x" * 5000, "y")))
    assert report.records == 1
    assert report.total_tokens == 3


def test_pretraining_has_no_token_limit_only_a_character_quota() -> None:
    limits = TokenLimits(max_input_tokens=10, max_output_tokens=10, max_total_tokens=10)
    long_doc = {"input": "x" * 60}  # 6x the token limit in tokens, exactly the character quota
    report = check(jsonl(long_doc), CONTINUED_PRE_TRAINING, limits=limits)
    assert report.ok, report.error_messages()
    assert report.format == "pretraining"
    assert (report.input_tokens, report.output_tokens, report.max_record_tokens) == (60, 0, 60)

    too_long = {"input": "Once upon a time " + "x" * 60}
    error = only_error(check(jsonl(long_doc, too_long), CONTINUED_PRE_TRAINING, limits=limits))
    assert (error.line, error.field) == (2, "input")
    assert error.message.startswith('Input size exceeded for record starting with "Once upon a time')
    assert "over the limit of 60" in error.message


def test_pretraining_size_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"".join(jsonl({"input": "x" * 61})))
    report = validate_file(
        path,
        customization_type=CONTINUED_PRE_TRAINING,
        limits=TokenLimits(10, 10, 10),
        count_tokens=len,
        max_records=10,
        max_bytes=1 << 20,
    )
    assert "Input size exceeded in file corpus.jsonl for record starting with" in only_error(report).message


def test_record_quota(tmp_path: Path) -> None:
    report = check(jsonl(*[pc()] * 6), max_records=5)
    error = only_error(report)
    assert error.line is None
    assert "the file has 6 records, over the limit of 5 records" in error.message
    assert check(jsonl(*[pc()] * 5), max_records=5).ok


def test_byte_quota_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"not json at all\n" * 10)
    report = validate_file(
        path,
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=len,
        max_records=100,
        max_bytes=100,
    )
    error = only_error(report)  # the invalid lines were never read
    assert "the file is 160 bytes, over the limit of 100 bytes" in error.message
    assert report.bytes == 160


def test_byte_quota_stops_a_stream() -> None:
    lines = jsonl(*[pc()] * 100)
    report = check(lines, max_bytes=len(lines[0]) * 3 + 1)
    error = only_error(report)
    assert "passes" in error.message
    assert "at line 4" in error.message


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = validate_file(
        path, customization_type=FINE_TUNING, limits=LIMITS, count_tokens=len, max_records=10, max_bytes=10
    )
    assert "the file has no records" in only_error(report).message
    assert report.format == "unknown"


def test_non_utf8_line_is_reported() -> None:
    error = only_error(check([b'{"prompt": "\xff", "completion": "c"}\n']))
    assert error.line == 1
    assert "not UTF-8" in error.message


def test_utf8_byte_order_mark_on_first_line_is_accepted() -> None:
    assert check([b"\xef\xbb\xbf" + jsonl(pc())[0]]).ok


def utf8_token_count(text: str) -> int:
    """Counts as a byte-level tokenizer does; like a real tokenizer, it cannot encode a lone surrogate."""
    return len(text.encode("utf-8"))


def test_lone_surrogate_escape_names_its_line_and_field() -> None:
    lines = [*jsonl(pc()), b'{"prompt": "ok", "completion": "half \\ud800 a pair"}\n']
    report = validate_lines(
        lines,
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=utf8_token_count,
        max_records=10,
        max_bytes=1 << 20,
    )
    error = only_error(report)
    assert (error.line, error.field) == (2, "completion")
    assert "\\ud800" in error.message and "surrogate" in error.message


def test_lone_surrogate_in_a_conversation_names_the_nested_field() -> None:
    record = (
        '{"messages": [{"role": "user", "content": [{"text": "hi"}]}, '
        '{"role": "assistant", "content": [{"text": "\\udfff"}]}]}'
    )
    error = only_error(check([record.encode() + b"\n"]))
    assert error.field == "messages[1].content[0].text"


def test_a_surrogate_pair_escape_is_one_character_and_passes() -> None:
    assert check([b'{"prompt": "smile \\ud83d\\ude00", "completion": "ok"}\n']).ok


def test_record_byte_limit_follows_the_context_with_a_floor() -> None:
    assert record_byte_limit(TokenLimits(384, 384, 512)) == MIN_RECORD_BYTES
    assert record_byte_limit(TokenLimits(100_000, 100_000, 100_000)) == 100_000 * 6 * 6


def test_ten_megabyte_line_is_refused_unread_naming_file_line_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(json.dumps(pc()).encode() + b"\n")
        handle.write(b'{"prompt": "' + b"x" * (10 << 20) + b'", "completion": "c"}\n')
        handle.write(json.dumps(pc()).encode() + b"\n")
    counted: list[int] = []

    def count(text: str) -> int:
        counted.append(len(text))
        return len(text)

    tracemalloc.start()
    try:
        report = validate_file(
            path, customization_type=FINE_TUNING, limits=LIMITS, count_tokens=count, max_records=10, max_bytes=1 << 30
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = only_error(report)
    assert error.line == 2
    assert f"in file huge.jsonl is {(10 << 20) + 34} bytes" in error.message
    assert f"over the limit of {MIN_RECORD_BYTES} bytes per record" in error.message
    assert max(counted) < 100, "the huge record must not reach the tokenizer"
    assert peak < 4 * MIN_RECORD_BYTES, f"validation held {peak} bytes at once"
    assert report.bytes == path.stat().st_size


def test_an_oversized_line_in_a_stream_of_bytes_is_refused_before_parsing() -> None:
    report = validate_lines(
        [b"{" * 100 + b"\n"],
        customization_type=FINE_TUNING,
        limits=LIMITS,
        count_tokens=len,
        max_records=10,
        max_bytes=1 << 20,
        max_record_bytes=50,
    )
    assert "is 101 bytes, over the limit of 50 bytes per record" in only_error(report).message


def test_errors_are_capped_and_the_rest_counted() -> None:
    report = check([b"{\n"] * 25, max_errors=20)
    assert len(report.errors) == 20
    assert report.omitted_errors == 5
    assert report.error_messages()[-1] == "and 5 more errors"
    assert report.to_dict()["omitted_errors"] == 5


def test_file_level_errors_come_first_and_are_never_dropped() -> None:
    report = check([b"{\n"] * 6, max_records=5, max_errors=2)
    assert report.errors[0].line is None
    assert "over the limit of 5 records" in report.errors[0].message
    assert len(report.errors) == 3


def test_failure_message_names_file_line_and_field() -> None:
    report = check(jsonl(pc(), pc(), "{", {"prompt": "p", "completion": 7}))
    message = report.failure_message("s3://bucket/train.jsonl")
    assert message == (
        "Input data validation failed for s3://bucket/train.jsonl: "
        "line 3: invalid JSON: Expecting property name enclosed in double quotes (column 2); "
        'line 4, field "completion": expected a string, got number'
    )


def test_failure_message_fits_bedrock_limit_and_counts_the_rest() -> None:
    report = check(jsonl(*[pc("x" * 5000, "y")] * 200), max_errors=200)
    message = report.failure_message("s3://bucket/train.jsonl")
    assert len(message) <= FAILURE_MESSAGE_LIMIT
    assert message.startswith("Input data validation failed for s3://bucket/train.jsonl: line 1: Maximum")
    assert message.endswith("more errors")


def test_failure_message_of_a_valid_report_is_refused() -> None:
    with pytest.raises(ValueError):
        check(jsonl(pc())).failure_message("s3://b/k")


def test_data_error_str_forms() -> None:
    assert str(DataError(3, "completion", "bad")) == 'line 3, field "completion": bad'
    assert str(DataError(3, None, "bad")) == "line 3: bad"
    assert str(DataError(None, None, "bad")) == "bad"


def test_failure_message_cuts_an_overlong_first_error() -> None:
    report = valid_report()
    report.errors = [DataError(1, None, "x" * 3000), DataError(2, None, "y")]
    message = report.failure_message("s3://bucket/train.jsonl")
    assert len(message) == FAILURE_MESSAGE_LIMIT
    assert message.endswith("…; and 1 more error")


# estimate ---------------------------------------------------------------------------------------

PEAK = 1e12


def valid_report(total_tokens: int = 10_000) -> ValidationReport:
    return ValidationReport(
        errors=[],
        format="prompt-completion",
        records=10,
        input_tokens=total_tokens // 2,
        output_tokens=total_tokens - total_tokens // 2,
        total_tokens=total_tokens,
        max_record_tokens=1000,
        bytes=1234,
    )


def estimate(**hyper: Any) -> Any:
    return estimate_training(
        valid_report(), parameter_count=1_000_000, hyperparameters=hyper, peak_flops=PEAK, price_per_hour=2.0
    )


def test_full_fine_tuning_takes_longer_than_lora() -> None:
    full = estimate(trainingMethod="full", epochCount=1)
    lora = estimate(trainingMethod="lora", epochCount=1)
    assert full.seconds > lora.seconds
    assert full.flops == 6 * 1_000_000 * 10_000
    assert lora.flops == 4 * 1_000_000 * 10_000


def test_more_epochs_take_longer_and_cost_more() -> None:
    one, three = estimate(epochCount=1), estimate(epochCount=3)
    assert three.tokens_processed == 3 * one.tokens_processed == 30_000
    assert three.seconds > one.seconds
    assert three.cost > one.cost


def test_estimate_accepts_bedrock_string_hyperparameters_and_defaults() -> None:
    assert (
        estimate(epochCount="2", trainingMethod="full").seconds == estimate(epochCount=2, trainingMethod="full").seconds
    )
    default = estimate()
    assert default.tokens_processed == 3 * 10_000  # epochCount default 3, LoRA by default
    assert "LoRA" in default.assumptions
    assert "25%" in default.assumptions


def test_estimate_seconds_and_cost_follow_the_stated_rule() -> None:
    result = estimate(epochCount=1, trainingMethod="full")
    assert result.seconds == pytest.approx(6e10 / (PEAK * 0.25))
    assert result.cost == pytest.approx(result.seconds / 3600 * 2.0)


def test_estimate_refuses_an_invalid_dataset() -> None:
    bad = check(jsonl("{"))
    with pytest.raises(ValueError, match="failed validation"):
        estimate_training(bad, parameter_count=1, hyperparameters={}, peak_flops=PEAK, price_per_hour=1)


def test_measured_peak_flops_is_positive_and_cached() -> None:
    first = measure_peak_flops()
    assert first > 1e6
    assert measure_peak_flops() == first
