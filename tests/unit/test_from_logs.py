from __future__ import annotations

from typing import Any

import pytest

from tuneforge.data.from_logs import conversation_from_log, matches, training_records


def log(body: dict[str, Any], completion: str = "billing", metadata: dict[str, str] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"input": {"inputBodyJson": body}, "tuneforge": {"completion": completion}}
    if metadata:
        record["requestMetadata"] = metadata
    return record


@pytest.mark.parametrize(
    ("filters", "metadata", "expected"),
    [
        (None, None, True),
        ({"equals": {"team": "a"}}, {"team": "a"}, True),
        ({"equals": {"team": "a"}}, {"team": "b"}, False),
        ({"notEquals": {"team": "a"}}, {"team": "b"}, True),
        ({"notEquals": {"team": "a"}}, None, True),
        ({"andAll": [{"equals": {"team": "a"}}, {"equals": {"env": "prod"}}]}, {"team": "a", "env": "dev"}, False),
        ({"orAll": [{"equals": {"team": "a"}}, {"equals": {"env": "prod"}}]}, {"team": "x", "env": "prod"}, True),
    ],
)
def test_request_metadata_filters_select_calls(
    filters: dict[str, Any] | None, metadata: dict[str, str] | None, expected: bool
) -> None:
    assert matches(filters, metadata) is expected


def test_converse_call_keeps_system_and_turns_and_adds_the_logged_answer() -> None:
    body = {
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "my invoice"}]}],
    }
    assert conversation_from_log(log(body), use_prompt_response=True) == {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "my invoice"}]},
            {"role": "assistant", "content": [{"text": "billing"}]},
        ],
    }


def test_prompts_only_when_responses_are_not_reused_and_openai_system_role_moves_to_system() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]}
    conversation = conversation_from_log(log(body), use_prompt_response=False)
    assert conversation is not None
    assert conversation["system"] == [{"text": "Be brief."}]
    assert conversation["messages"] == [{"role": "user", "content": [{"text": "hello"}]}]


def test_invoke_model_prompt_becomes_a_user_turn_and_empty_calls_are_skipped() -> None:
    records = [log({"prompt": "Ticket: refund\nCategory:"}), log({"messages": []}), log({"prompt": ""})]
    selected = training_records(records, {"usePromptResponse": False}, limit=10)
    assert selected == [
        {
            "schemaVersion": "bedrock-conversation-2024",
            "messages": [{"role": "user", "content": [{"text": "Ticket: refund\nCategory:"}]}],
        }
    ]


def test_training_records_stop_at_the_limit() -> None:
    records = [log({"prompt": f"p{i}"}) for i in range(10)]
    assert len(training_records(records, {}, limit=3)) == 3
