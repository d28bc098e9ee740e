"""Checks a conversation must pass before it is rendered for a model: the same for Converse and OpenAI chat.

The model sees a conversation as training rendered it (:func:`tuneforge.model.prompts.serving_prompt`,
applied in the engine): through its chat template, or tuneforge's plain ``System: ...``,
``User: ...\\nAssistant:`` template for a model without one. So a conversation must start with a user
message, alternate, and hold text only. It ends with a user message (the assistant's turn is what
gets generated) or with an assistant message, which the model continues (prefill: the answer
starts with that text, and only the continuation is returned). Text blocks may not be blank, as on
Bedrock.
"""

from __future__ import annotations

import itertools
from typing import Any

from tuneforge.errors import ValidationException, constraint_errors

Conversation = dict[str, Any]
"""``{"system": [{"text": ...}], "messages": [{"role": ..., "content": [{"text": ...}]}]}``"""

_AT_LEAST_ONE = "Member must have length greater than or equal to 1"
_ROLES = "Member must satisfy enum value set: [user, assistant]"
_UNSUPPORTED_BLOCKS = {
    "image": "images",
    "document": "documents",
    "video": "video",
    "audio": "audio",
    "toolUse": "tool use",
    "toolResult": "tool use",
    "reasoningContent": "reasoning content",
    "guardContent": "guardrails",
    "citationsContent": "citations",
    "searchResult": "search results",
}


def text_blocks(blocks: Any, member: str) -> list[dict[str, str]]:
    """Keep ``text`` blocks (``cachePoint`` markers are ignored); refuse what the models cannot read."""
    if not isinstance(blocks, list):
        raise constraint_errors([f"Value at '{member}' failed to satisfy constraint: Member must be a list"])
    out: list[dict[str, str]] = []
    for block in blocks:
        if not isinstance(block, dict) or len(block) != 1:
            raise ValidationException(f"Each content block at '{member}' must have exactly one member")
        ((kind, value),) = block.items()
        if kind == "text":
            if not isinstance(value, str):
                raise constraint_errors(
                    [f"Value at '{member}.text' failed to satisfy constraint: Member must be a string"]
                )
            if not value.strip():
                raise ValidationException(
                    f"The text field in the ContentBlock object at {member} is blank. "
                    "Add text to the text field, and try again."
                )
            out.append({"text": value})
        elif kind == "cachePoint":
            continue
        elif kind in _UNSUPPORTED_BLOCKS:
            raise ValidationException(f"This model doesn't support {_UNSUPPORTED_BLOCKS[kind]}.")
        else:
            raise ValidationException(f"Unknown content block type '{kind}' at '{member}'")
    return out


def check_conversation(system: list[dict[str, str]], messages: Any) -> Conversation:
    """A validated, text-only conversation; ValidationException names the first problem."""
    if not isinstance(messages, list) or not messages:
        raise constraint_errors([f"Value '[]' at 'messages' failed to satisfy constraint: {_AT_LEAST_ONE}"])
    checked = []
    for index, message in enumerate(messages):
        where = f"messages.{index + 1}.member"
        if not isinstance(message, dict):
            raise constraint_errors([f"Value at '{where}' failed to satisfy constraint: Member must be a structure"])
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise constraint_errors([f"Value '{role}' at '{where}.role' failed to satisfy constraint: {_ROLES}"])
        content = text_blocks(message.get("content"), f"{where}.content")
        if not content:
            raise ValidationException(f"The content field in message {index + 1} is empty. Add text and try again.")
        checked.append({"role": role, "content": content})
    if checked[0]["role"] != "user":
        raise ValidationException(
            "A conversation must start with a user message. "
            "Try again with a conversation that starts with a user message."
        )
    for previous, current in itertools.pairwise(checked):
        if previous["role"] == current["role"]:
            raise ValidationException(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
    return {"system": system, "messages": checked}
