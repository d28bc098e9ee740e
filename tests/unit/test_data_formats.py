from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneforge.catalog.models import CONTINUED_PRE_TRAINING, DISTILLATION, FINE_TUNING
from tuneforge.data.formats import (
    FORMAT_CONVERSATION,
    FORMAT_PRETRAINING,
    FORMAT_PROMPT_COMPLETION,
    Conversation,
    PretrainingText,
    PromptCompletion,
    RecordError,
    json_type_name,
    parse_record,
    record_format,
)
from tuneforge.data.tasks import write_jsonl


def msg(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"text": text}]}


def convo(*messages: object, **extra: Any) -> dict[str, Any]:
    return {**extra, "messages": list(messages)}


def error_of(obj: object, customization_type: str = FINE_TUNING) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_record(obj, customization_type)
    return info.value


def test_prompt_completion_parses_to_typed_record() -> None:
    record = parse_record({"prompt": "2+2?", "completion": "4"}, FINE_TUNING)
    assert record == PromptCompletion("2+2?", "4")
    assert record.format == FORMAT_PROMPT_COMPLETION
    assert record.input_output_text() == ("2+2?", "4")


def test_conversation_with_schema_version_and_system_parses() -> None:
    obj = convo(
        msg("user", "hi"),
        msg("assistant", "hello"),
        schemaVersion="bedrock-conversation-2024",
        system=[{"text": "be brief"}],
    )
    record = parse_record(obj, FINE_TUNING)
    assert record == Conversation(system="be brief", turns=(("user", "hi"), ("assistant", "hello")))
    assert record.format == FORMAT_CONVERSATION
    assert record.input_output_text() == ("be brief\nhi", "hello")


def test_conversation_schema_version_is_optional_and_any_string() -> None:
    assert isinstance(parse_record(convo(msg("user", "a"), msg("assistant", "b")), FINE_TUNING), Conversation)
    obj = convo(msg("user", "a"), msg("assistant", "b"), schemaVersion="something-else")
    assert isinstance(parse_record(obj, FINE_TUNING), Conversation)


def test_conversation_schema_version_must_be_a_string() -> None:
    error = error_of(convo(msg("user", "a"), msg("assistant", "b"), schemaVersion=2024))
    assert error.field == "schemaVersion"
    assert "expected a string" in error.message


def test_multi_turn_input_is_everything_before_the_final_answer() -> None:
    obj = convo(msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2"), msg("assistant", "a2"))
    record = parse_record(obj, FINE_TUNING)
    assert record.input_output_text() == ("q1\na1\nq2", "a2")


def test_multiple_text_blocks_are_joined_by_newlines() -> None:
    obj = convo({"role": "user", "content": [{"text": "a"}, {"text": "b"}]}, msg("assistant", "c"))
    record = parse_record(obj, FINE_TUNING)
    assert isinstance(record, Conversation)
    assert record.turns[0] == ("user", "a\nb")


def test_pretraining_record_parses() -> None:
    record = parse_record({"input": "some text"}, CONTINUED_PRE_TRAINING)
    assert record == PretrainingText("some text")
    assert record.format == FORMAT_PRETRAINING
    assert record.input_output_text() == ("some text", "")


def test_distillation_golden_answer_is_optional() -> None:
    prompt_only = parse_record(convo(msg("user", "q")), DISTILLATION)
    assert isinstance(prompt_only, Conversation)
    assert prompt_only.golden is None
    assert prompt_only.input_output_text() == ("q", "")
    with_golden = parse_record(convo(msg("user", "q"), msg("assistant", "a")), DISTILLATION)
    assert isinstance(with_golden, Conversation)
    assert with_golden.golden == "a"


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        ({"prompt": "p"}, "completion", 'missing key "completion"'),
        ({"prompt": "p", "completion": "c", "extra": 1}, "extra", 'unexpected key "extra"'),
        ({"prompt": "p", "completion": 4}, "completion", "expected a string, got number"),
        ({"prompt": None, "completion": "c"}, "prompt", "expected a string, got null"),
        ({"prompt": "p", "completion": ""}, "completion", "empty string"),
        ({"prompt": "   ", "completion": "c"}, "prompt", "empty string"),
    ],
)
def test_prompt_completion_errors_name_the_field(obj: object, field: str, fragment: str) -> None:
    error = error_of(obj)
    assert error.field == field
    assert fragment in error.message


def test_missing_key_mentions_the_likely_misspelling() -> None:
    error = error_of({"prompt": "p", "complection": "c"})
    assert error.field == "completion"
    assert 'found unexpected key "complection"' in error.message


def test_record_that_is_not_an_object_is_rejected() -> None:
    error = error_of(["prompt", "completion"])
    assert error.field == ""
    assert "JSON object, got array" in error.message


def test_fine_tuning_record_of_unknown_shape_shows_both_formats() -> None:
    error = error_of({"input": "text"})
    assert error.field == ""
    assert '"prompt"' in error.message
    assert '"messages"' in error.message


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        (convo(msg("user", "q")), "messages[0].role", 'last message must be from "assistant"'),
        (
            convo(msg("user", "q"), msg("assistant", "a"), msg("user", "q2")),
            "messages[2].role",
            'last message must be from "assistant"',
        ),
        (convo(msg("assistant", "a"), msg("user", "q")), "messages[0].role", 'first message must be from "user"'),
        (
            convo(msg("user", "q"), msg("user", "q2"), msg("assistant", "a")),
            "messages[1].role",
            'messages[0] and messages[1] are both from "user"',
        ),
        (
            convo(msg("user", "q"), msg("assistant", "a"), msg("assistant", "b")),
            "messages[2].role",
            "roles must alternate",
        ),
        (convo(msg("system", "q"), msg("assistant", "a")), "messages[1].role", 'first message must be from "user"'),
        (
            convo(msg("user", "q"), msg("system", "s"), msg("assistant", "a")),
            "messages[1].role",
            "a system message may only come first",
        ),
        (
            convo(msg("system", "s"), msg("user", "q"), msg("user", "q2"), msg("assistant", "a")),
            "messages[2].role",
            'messages[1] and messages[2] are both from "user"',
        ),
        (
            convo(msg("system", "s"), msg("user", "q"), msg("assistant", "a"), system=[{"text": "t"}]),
            "messages[0].role",
            'got "system"',
        ),
        (convo(), "messages", "empty list"),
        ({"messages": "hi"}, "messages", "expected a list of message objects, got string"),
        (convo(msg("user", "q"), "a"), "messages[1]", "expected a JSON object, got string"),
        (
            convo({"role": "user", "content": 5}, msg("assistant", "a")),
            "messages[0].content",
            "expected a list of content blocks",
        ),
        (convo({"role": "user", "content": "  "}, msg("assistant", "a")), "messages[0].content", "empty string"),
        (
            convo({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, msg("assistant", "a")),
            "messages[0].content[0].type",
            "text-only",
        ),
        (convo({"role": "user", "content": []}, msg("assistant", "a")), "messages[0].content", "empty list"),
        (convo(msg("user", "q"), msg("assistant", "")), "messages[1].content[0].text", "empty string"),
        (
            convo({"role": "user", "content": [{"txt": "q"}]}, msg("assistant", "a")),
            "messages[0].content[0].text",
            'missing key "text"',
        ),
        (
            convo({"role": "user"}, msg("assistant", "a")),
            "messages[0].content",
            'missing key "content"',
        ),
        (
            convo({"role": "user", "content": [{"text": "q"}], "name": "x"}, msg("assistant", "a")),
            "messages[0].name",
            'unexpected key "name"',
        ),
        (
            convo(
                {"role": "user", "content": [{"image": {"format": "png"}}]},
                msg("assistant", "a"),
            ),
            "messages[0].content[0].image",
            "text-only",
        ),
        (
            convo(msg("user", "q"), msg("assistant", "a"), system=7),
            "system",
            "expected a list of content blocks",
        ),
        (convo(msg("user", "q"), msg("assistant", "a"), extra=1), "extra", 'unexpected key "extra"'),
    ],
)
def test_conversation_errors_name_the_json_path(obj: object, field: str, fragment: str) -> None:
    error = error_of(obj)
    assert error.field == field
    assert fragment in error.message


def test_distillation_record_without_user_turn_fails() -> None:
    error = error_of(convo(msg("assistant", "a")), DISTILLATION)
    assert error.field == "messages"
    assert "at least one user message" in error.message


def test_distillation_roles_must_still_alternate() -> None:
    error = error_of(convo(msg("user", "q"), msg("user", "q2")), DISTILLATION)
    assert error.field == "messages[1].role"


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        ({}, "input", 'missing key "input"'),
        ({"input": "x", "output": "y"}, "output", 'unexpected key "output"'),
        ({"input": 3}, "input", "expected a string, got number"),
        ({"input": ""}, "input", "empty string"),
    ],
)
def test_pretraining_errors_name_the_field(obj: object, field: str, fragment: str) -> None:
    error = error_of(obj, CONTINUED_PRE_TRAINING)
    assert error.field == field
    assert fragment in error.message


def test_record_format_is_judged_by_keys() -> None:
    assert record_format({"prompt": "p", "completion": "c"}, FINE_TUNING) == FORMAT_PROMPT_COMPLETION
    assert record_format({"completion": "c"}, FINE_TUNING) == FORMAT_PROMPT_COMPLETION
    assert record_format({"messages": []}, FINE_TUNING) == FORMAT_CONVERSATION
    assert record_format({"anything": 1}, DISTILLATION) == FORMAT_CONVERSATION
    assert record_format({"anything": 1}, CONTINUED_PRE_TRAINING) == FORMAT_PRETRAINING


def test_unknown_customization_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown customization type"):
        record_format({}, "REINFORCEMENT")


def test_record_error_str_names_the_field() -> None:
    assert str(RecordError("completion", "expected a string, got number")) == (
        'field "completion": expected a string, got number'
    )


@pytest.mark.parametrize(
    ("value", "name"),
    [(None, "null"), (True, "boolean"), (1, "number"), (1.5, "number"), ("s", "string"), ([], "array"), ({}, "object")],
)
def test_json_type_names(value: object, name: str) -> None:
    assert json_type_name(value) == name


def test_write_jsonl_accepts_a_plain_string_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    written = write_jsonl("train.jsonl", [{"prompt": "a", "completion": "é"}])
    assert written == Path("train.jsonl")
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == '{"prompt": "a", "completion": "é"}\n'


def test_write_jsonl_escapes_a_record_with_a_lone_surrogate_so_validation_can_name_it(tmp_path: Path) -> None:
    written = write_jsonl(tmp_path / "logs.jsonl", [{"prompt": "ok é"}, {"prompt": "half \ud800"}])
    assert written.read_bytes() == '{"prompt": "ok é"}\n{"prompt": "half \\ud800"}\n'.encode()


def test_openai_chat_records_are_read_as_they_are() -> None:
    """OpenAI's chat fine-tuning format: string content, text parts, and a leading system message."""
    record = parse_record(
        {
            "messages": [
                {"role": "system", "content": "Classify the ticket."},
                {"role": "user", "content": [{"type": "text", "text": "charged twice"}]},
                {"role": "assistant", "content": "billing"},
            ]
        },
        FINE_TUNING,
    )
    assert isinstance(record, Conversation)
    assert record.system == "Classify the ticket."
    assert record.turns == (("user", "charged twice"), ("assistant", "billing"))
    assert record.input_output_text() == ("Classify the ticket.\ncharged twice", "billing")
