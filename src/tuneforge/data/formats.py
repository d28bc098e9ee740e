"""One JSONL record -> one typed record, for each customization type.

The formats are Bedrock's (reference section 3):

* ``FINE_TUNING``: ``{"prompt": "...", "completion": "..."}``, the
  ``bedrock-conversation-2024`` conversation format, **or** preference records (below), which
  train with DPO. A file uses one of the three; which one is decided by the validator from the
  file's first valid record (see :mod:`tuneforge.data.validate`).
* ``CONTINUED_PRE_TRAINING``: ``{"input": "..."}``.
* ``DISTILLATION``: the conversation format, where the assistant's "golden" answer is optional.
* ``REINFORCEMENT_FINE_TUNING``: prompts, the conversation format ending with the user's turn (the
  model writes the answer), with any other keys kept for the grader: Bedrock's RFT format for
  open-weight models is OpenAI's chat spelling plus ``reference_answer``,
  ``{"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
  "reference_answer": ..., ...}`` (:class:`RftPrompt`).

The conversation format::

    {"schemaVersion": "bedrock-conversation-2024",
     "system": [{"text": "..."}],
     "messages": [{"role": "user", "content": [{"text": "..."}]},
                  {"role": "assistant", "content": [{"text": "..."}]}]}

``schemaVersion`` is **optional**, and when present may be any string. Bedrock's own documents
disagree (the Llama pages always show ``"bedrock-conversation-2024"``; the Nova rules say "may be
any string"), and refusing a file over a version tag the data does not depend on would only make
users edit gigabytes of JSONL. ``system`` is optional too. Parsing is strict everywhere else:
unknown keys are errors, because a misspelt key (``"complection"``) silently training on nothing is
worse than a failed pre-flight check. tuneforge's models are text-only, so image, video and
document content blocks are refused with a message that says so.

The same records written in OpenAI's chat format are read as they are: a message's ``content`` may
be a plain string or a list of ``{"type": "text", "text": "..."}`` parts, and the system prompt may be
a first message with role ``"system"`` instead of the ``system`` key (not both).
:func:`parse_messages` reads either spelling, for every format built on a message list.

Preference records (``FINE_TUNING`` trained with DPO) are a prompt and two answers to it, one
preferred. OpenAI's preference format is read as it is::

    {"input": {"messages": [{"role": "user", "content": "..."}], "tools": [], "parallel_tool_calls": true},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

and its Bedrock-style equivalent is the conversation record whose messages end with the user's
turn, plus the two answers as assistant messages::

    {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "..."}],
     "messages": [{"role": "user", "content": [{"text": "..."}]}],
     "preferredResponse": {"role": "assistant", "content": [{"text": "..."}]},
     "nonPreferredResponse": {"role": "assistant", "content": [{"text": "..."}]}}

Both read into one :class:`Preference`, and one file may mix the two spellings (as it may mix the
two spellings of a conversation). Identical answers are an error: DPO learns from the difference
between them, and there is none. ``tools`` must be empty (tuneforge models do not call tools);
``parallel_tool_calls`` is accepted and has no effect.

Every parse error is a :class:`RecordError` naming a JSON path (``messages[2].role``) so the
validator can tell the user the line *and* the field to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from tuneforge.catalog.models import (
    CONTINUED_PRE_TRAINING,
    CUSTOMIZATION_TYPES,
    DISTILLATION,
    REINFORCEMENT_FINE_TUNING,
)

FORMAT_PROMPT_COMPLETION = "prompt-completion"
FORMAT_CONVERSATION = "conversation"
FORMAT_PRETRAINING = "pretraining"
FORMAT_PREFERENCE = "preference"

SCHEMA_VERSION = "bedrock-conversation-2024"
"""The schemaVersion Bedrock's examples carry. Accepted but not required (see module docstring)."""

Role = Literal["user", "assistant"]

_CONVERSATION_EXAMPLE = (
    '{"messages": [{"role": "user", "content": [{"text": "..."}]}, '
    '{"role": "assistant", "content": [{"text": "..."}]}]}'
)
_PROMPT_COMPLETION_EXAMPLE = '{"prompt": "...", "completion": "..."}'
_OPENAI_PREFERENCE_EXAMPLE = (
    '{"input": {"messages": [{"role": "user", "content": "..."}]}, '
    '"preferred_output": [{"role": "assistant", "content": "..."}], '
    '"non_preferred_output": [{"role": "assistant", "content": "..."}]}'
)
_BEDROCK_PREFERENCE_KEYS = ("preferredResponse", "nonPreferredResponse")
_OPENAI_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
_UNSUPPORTED_BLOCKS = ("image", "video", "document")


class RecordError(ValueError):
    """A record that does not match its format.

    ``field`` is a JSON path into the record (``completion``, ``messages[2].content[0].text``), or
    ``""`` when the problem is the record as a whole (wrong JSON type, unrecognisable shape).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f'field "{field}": {message}' if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str

    format: ClassVar[str] = FORMAT_PROMPT_COMPLETION

    def input_output_text(self) -> tuple[str, str]:
        """The text the model reads and the text it learns to write, for token counting."""
        return self.prompt, self.completion


@dataclass(frozen=True)
class Conversation:
    system: str
    """The system blocks' texts joined by newlines; "" when there is none."""
    turns: tuple[tuple[Role, str], ...]
    """(role, text) in order: user first, alternating. Multiple text blocks in one message are
    joined by newlines. For distillation the last turn may be the user's (no golden answer)."""

    format: ClassVar[str] = FORMAT_CONVERSATION

    @property
    def golden(self) -> str | None:
        """The final assistant answer, or None when the record ends with the user's turn."""
        role, text = self.turns[-1]
        return text if role == "assistant" else None

    def as_bedrock(self) -> dict[str, object]:
        """The record in Bedrock's spelling (content blocks, ``system`` key), whichever it was written in."""
        return bedrock_conversation(self.system, self.turns)

    def input_output_text(self) -> tuple[str, str]:
        """Input = system and every turn before the final assistant answer; output = that answer.

        This is the split Bedrock's per-record token limits are stated in. Parts are joined by
        newlines; chat-template markers are not included, because the template belongs to the
        model's tokenizer, which this module must not load.
        """
        golden = self.golden
        prompt_turns = self.turns[:-1] if golden is not None else self.turns
        parts = ([self.system] if self.system else []) + [text for _, text in prompt_turns]
        return "\n".join(parts), golden or ""


@dataclass(frozen=True)
class PretrainingText:
    text: str

    format: ClassVar[str] = FORMAT_PRETRAINING

    def input_output_text(self) -> tuple[str, str]:
        """Continued pre-training learns on the whole text, and has no separate output."""
        return self.text, ""


@dataclass(frozen=True)
class Preference:
    """A prompt and two answers to it, the first preferred: one DPO training pair."""

    system: str
    """The system prompt, "" when there is none."""
    turns: tuple[tuple[Role, str], ...]
    """The prompt's turns, alternating from the user's and ending with the user's."""
    preferred: str
    non_preferred: str

    format: ClassVar[str] = FORMAT_PREFERENCE

    def prompt_text(self) -> str:
        """System and turns joined by newlines, as :meth:`Conversation.input_output_text` counts input."""
        return "\n".join(([self.system] if self.system else []) + [text for _, text in self.turns])

    def input_output_text(self) -> tuple[str, str]:
        """The prompt, and the longer answer: each answer trains after the prompt as its own sequence,
        so the per-record token limits hold for the longer of the two."""
        longer = max(self.preferred, self.non_preferred, key=len)
        return self.prompt_text(), longer

    def conversation(self, preferred: bool) -> dict[str, object]:
        """The prompt with one answer, as a conversation record in Bedrock's spelling (for rendering)."""
        answer = self.preferred if preferred else self.non_preferred
        return bedrock_conversation(self.system, (*self.turns, ("assistant", answer)))


def bedrock_conversation(system: str, turns: tuple[tuple[Role, str], ...]) -> dict[str, object]:
    """A conversation record in Bedrock's spelling, the one the renderers read."""
    return {
        "system": [{"text": system}] if system else [],
        "messages": [{"role": role, "content": [{"text": text}]} for role, text in turns],
    }


@dataclass(frozen=True)
class RftPrompt:
    """A reinforcement fine-tuning prompt: the conversation so far, ending with the user's turn,
    and the record's other keys (``reference_answer`` and whatever else the grader reads)."""

    system: str
    turns: tuple[tuple[Role, str], ...]
    item: dict[str, Any]

    format: ClassVar[str] = FORMAT_CONVERSATION

    def input_output_text(self) -> tuple[str, str]:
        """The prompt is all input; the answer is the model's own, sampled during training."""
        parts = ([self.system] if self.system else []) + [text for _, text in self.turns]
        return "\n".join(parts), ""


Record = PromptCompletion | Conversation | PretrainingText | Preference | RftPrompt


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, as users see it in their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def record_format(obj: object, customization_type: str) -> str:
    """Which format a parsed JSON value is written in, judged by its keys alone.

    Used by the validator to detect a file's format and to spot a record in a different format
    from the rest of its file before parsing it in detail.
    """
    _check_customization_type(customization_type)
    if customization_type == CONTINUED_PRE_TRAINING:
        return FORMAT_PRETRAINING
    if customization_type in (DISTILLATION, REINFORCEMENT_FINE_TUNING):
        return FORMAT_CONVERSATION
    record = _require_object(obj)
    # A bare "input" is continued pre-training's key: only an input object marks OpenAI's preference record.
    preference_keys = (*_OPENAI_PREFERENCE_KEYS[1:], *_BEDROCK_PREFERENCE_KEYS)
    if isinstance(record.get("input"), dict) or any(key in record for key in preference_keys):
        return FORMAT_PREFERENCE
    if "messages" in record:
        return FORMAT_CONVERSATION
    if "prompt" in record or "completion" in record:
        return FORMAT_PROMPT_COMPLETION
    keys = ", ".join(f'"{key}"' for key in record) or "none"
    raise RecordError(
        "",
        f"not a fine-tuning record (keys: {keys}); write {_PROMPT_COMPLETION_EXAMPLE} "
        f"or the conversation format {_CONVERSATION_EXAMPLE}, or a preference record {_OPENAI_PREFERENCE_EXAMPLE}",
    )


def parse_record(obj: object, customization_type: str, record_fmt: str | None = None) -> Record:
    """Parse one decoded JSON line; raise :class:`RecordError` naming the field that is wrong.

    ``record_fmt`` forces a format (one of the ``FORMAT_*`` constants); by default it is
    :func:`record_format`'s guess from the keys.
    """
    record = _require_object(obj)
    fmt = record_fmt or record_format(record, customization_type)
    if fmt == FORMAT_PRETRAINING:
        _check_keys(record, ("input",), (), 'a continued pre-training record is {"input": "..."}')
        return PretrainingText(_text(record, "input", "input"))
    if fmt == FORMAT_PROMPT_COMPLETION:
        _check_keys(
            record,
            ("prompt", "completion"),
            (),
            f"a prompt-completion record is exactly {_PROMPT_COMPLETION_EXAMPLE}",
        )
        return PromptCompletion(_text(record, "prompt", "prompt"), _text(record, "completion", "completion"))
    if fmt == FORMAT_CONVERSATION and customization_type == REINFORCEMENT_FINE_TUNING:
        return parse_rft_prompt(record)
    if fmt == FORMAT_CONVERSATION:
        return _parse_conversation(record, golden_required=customization_type != DISTILLATION)
    if fmt == FORMAT_PREFERENCE:
        return _parse_preference(record)
    raise ValueError(f"unknown record format {fmt!r}")


def _check_customization_type(customization_type: str) -> None:
    if customization_type not in CUSTOMIZATION_TYPES:
        raise ValueError(
            f"unknown customization type {customization_type!r}; expected one of {', '.join(CUSTOMIZATION_TYPES)}"
        )


def _require_object(value: object, field: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        what = "each line must be a JSON object" if not field else "expected a JSON object"
        raise RecordError(field, f"{what}, got {json_type_name(value)}")
    return value


def _check_keys(
    record: dict[str, object],
    required: tuple[str, ...],
    optional: tuple[str, ...],
    hint: str,
    path: str = "",
) -> None:
    """Missing keys first (naming any unexpected key, which is often the misspelling), then extras."""
    allowed = set(required) | set(optional)
    extra = [key for key in record if key not in allowed]
    for key in required:
        if key not in record:
            found = f' (found unexpected key "{extra[0]}")' if extra else ""
            raise RecordError(f"{path}{key}", f'missing key "{key}"{found}; {hint}')
    if extra:
        raise RecordError(f"{path}{extra[0]}", f'unexpected key "{extra[0]}"; {hint}')


def _text(record: dict[str, object], key: str, field: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {json_type_name(value)}")
    if not value.strip():
        raise RecordError(field, "empty string; write the text, or remove the record")
    return value


def _list(value: object, field: str, of: str) -> list[object]:
    if not isinstance(value, list):
        raise RecordError(field, f"expected a list of {of}, got {json_type_name(value)}")
    return value


def _content_text(value: object, field: str) -> str:
    """A message's or system prompt's ``[{"text": "..."}, ...]`` blocks, joined by newlines.

    OpenAI's spellings are read too: a plain string, and ``{"type": "text", "text": "..."}`` parts.
    """
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(field, "empty string; write the text, or remove the record")
        return value
    blocks = _list(value, field, 'content blocks like [{"text": "..."}]')
    if not blocks:
        raise RecordError(field, 'empty list; add at least one block like {"text": "..."}')
    texts = []
    for index, raw in enumerate(blocks):
        path = f"{field}[{index}]"
        block = _require_object(raw, path)
        unsupported = next((kind for kind in _UNSUPPORTED_BLOCKS if kind in block), None)
        if unsupported:
            raise RecordError(
                f"{path}.{unsupported}",
                f"{unsupported} content is not supported: tuneforge models are text-only",
            )
        if "type" in block and block["type"] != "text":
            got = f'"{block["type"]}"' if isinstance(block["type"], str) else json_type_name(block["type"])
            raise RecordError(
                f"{path}.type", f'only "text" parts are supported (tuneforge models are text-only), got {got}'
            )
        _check_keys(block, ("text",), ("type",), 'a content block is {"text": "..."}', f"{path}.")
        texts.append(_text(block, "text", f"{path}.text"))
    return "\n".join(texts)


def _parse_conversation(record: dict[str, object], *, golden_required: bool) -> Conversation:
    _check_keys(
        record,
        ("messages",),
        ("schemaVersion", "system"),
        f'a conversation record is {_CONVERSATION_EXAMPLE} with optional "schemaVersion" and "system"',
    )
    if "schemaVersion" in record and not isinstance(record["schemaVersion"], str):
        raise RecordError(
            "schemaVersion",
            f'expected a string such as "{SCHEMA_VERSION}", got {json_type_name(record["schemaVersion"])}',
        )
    system = _content_text(record["system"], "system") if "system" in record else ""
    message_system, turns = parse_messages(record["messages"], "messages", has_system=bool(system))
    system = system or message_system
    at = 1 if message_system else 0
    """Index of turns[0] in the record's messages: 1 after an OpenAI-style system message."""

    if not golden_required and all(role == "assistant" for role, _ in turns):
        raise RecordError(
            "messages",
            "a distillation prompt needs at least one user message (the assistant's golden answer is optional)",
        )
    _check_turn_order(turns, "messages", at)
    last = len(turns) - 1
    if golden_required and turns[last][0] != "assistant":
        raise RecordError(
            f"messages[{at + last}].role",
            'the last message must be from "assistant" (the response to learn), got "user"',
        )
    return Conversation(system=system, turns=tuple(turns))


_RFT_EXAMPLE = (
    '{"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}], '
    '"reference_answer": "..."}'
)


def parse_rft_prompt(record: dict[str, object]) -> RftPrompt:
    """A reinforcement fine-tuning prompt, in OpenAI's chat spelling or Bedrock's conversation one.

    ``messages`` is required and must end with the user's turn; ``system`` and ``schemaVersion`` are
    the conversation format's own keys; every other key (``reference_answer`` first of all) is kept
    as it is and handed to the grader with each answer.
    """
    if "messages" not in record:
        keys = ", ".join(f'"{key}"' for key in record) or "none"
        raise RecordError("messages", f'missing key "messages" (keys: {keys}); a prompt record is {_RFT_EXAMPLE}')
    if "schemaVersion" in record and not isinstance(record["schemaVersion"], str):
        raise RecordError(
            "schemaVersion",
            f'expected a string such as "{SCHEMA_VERSION}", got {json_type_name(record["schemaVersion"])}',
        )
    system = _content_text(record["system"], "system") if "system" in record else ""
    message_system, turns = parse_messages(record["messages"], "messages", has_system=bool(system))
    at = 1 if message_system else 0
    for index, (role, _) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            problem = (
                f'the first message must be from "user", got "{role}"'
                if index == 0
                else f"roles must alternate user/assistant, but messages[{at + index - 1}] and "
                f'messages[{at + index}] are both from "{role}"'
            )
            raise RecordError(f"messages[{at + index}].role", problem)
    if turns[-1][0] != "user":
        raise RecordError(
            f"messages[{at + len(turns) - 1}].role",
            'the last message must be from "user": the model writes the answer, which the grader scores '
            '(put the expected answer in "reference_answer")',
        )
    item = {key: value for key, value in record.items() if key not in ("messages", "system", "schemaVersion")}
    return RftPrompt(system=system or message_system, turns=tuple(turns), item=item)


def parse_messages(value: object, field: str, *, has_system: bool = False) -> tuple[str, list[tuple[Role, str]]]:
    """A message list -> (system text, ``(role, text)`` turns), with errors naming ``field[i]...``.

    Roles are ``user`` and ``assistant``; a first message with role ``system`` (OpenAI's spelling)
    becomes the system text, unless ``has_system`` says the record already has one. Content is
    Bedrock's block list or OpenAI's string or text parts (:func:`_content_text`). The order of the
    turns is left to the caller: each format has its own rule for which role comes last.
    """
    messages = _list(value, field, "message objects")
    if not messages:
        raise RecordError(field, f"empty list; a record needs at least one user message: {_CONVERSATION_EXAMPLE}")
    system = ""
    turns: list[tuple[Role, str]] = []
    for index, raw in enumerate(messages):
        path = f"{field}[{index}]"
        message = _require_object(raw, path)
        _check_keys(
            message,
            ("role", "content"),
            (),
            'a message is {"role": "user" | "assistant", "content": [{"text": "..."}]}',
            f"{path}.",
        )
        role = message["role"]
        if role == "system" and index == 0 and not has_system:
            system = _content_text(message["content"], f"{path}.content")
            continue
        if role != "user" and role != "assistant":
            got = f'"{role}"' if isinstance(role, str) else json_type_name(role)
            where = "" if role != "system" else " (a system message may only come first, and only once)"
            raise RecordError(f"{path}.role", f'expected "user" or "assistant", got {got}{where}')
        typed_role: Role = "user" if role == "user" else "assistant"
        turns.append((typed_role, _content_text(message["content"], f"{path}.content")))
    if not turns:
        raise RecordError(field, f"no user message; a record needs at least one: {_CONVERSATION_EXAMPLE}")
    return system, turns


def _check_turn_order(turns: list[tuple[Role, str]], field: str, at: int) -> None:
    """Roles alternate user/assistant from the user's; ``at`` is the index of turns[0] in ``field``."""
    for index, (role, _) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role == expected:
            continue
        if index == 0:
            problem = f'the first message must be from "user", got "{role}"'
        else:
            problem = (
                f"roles must alternate user/assistant, but {field}[{at + index - 1}] and "
                f'{field}[{at + index}] are both from "{role}"'
            )
        raise RecordError(f"{field}[{at + index}].role", problem)


def _preference_prompt(
    record: dict[str, object], field: str, system: str = ""
) -> tuple[str, tuple[tuple[Role, str], ...]]:
    """A preference record's prompt messages: user first, alternating, ending with the user's turn."""
    message_system, turns = parse_messages(record["messages"], field, has_system=bool(system))
    at = 1 if message_system else 0
    _check_turn_order(turns, field, at)
    last = len(turns) - 1
    if turns[last][0] != "user":
        raise RecordError(
            f"{field}[{at + last}].role",
            'the prompt must end with a "user" message; the answers go under the preferred and '
            "non-preferred keys, not in the messages",
        )
    return system or message_system, tuple(turns)


def _answer(value: object, field: str, *, as_list: bool) -> str:
    """One assistant answer: a message object, or (OpenAI's spelling) a list holding exactly one."""
    if as_list:
        messages = _list(value, field, "assistant messages")
        if len(messages) != 1:
            raise RecordError(
                field,
                f"expected exactly one assistant message, got {len(messages)}; "
                "preference pairs compare one final answer each",
            )
        value, field = messages[0], f"{field}[0]"
    message = _require_object(value, field)
    unsupported = next((key for key in ("tool_calls", "function_call") if key in message), None)
    if unsupported:
        raise RecordError(f"{field}.{unsupported}", "tool calls are not supported: tuneforge models answer in text")
    _check_keys(message, ("role", "content"), (), 'an answer is {"role": "assistant", "content": "..."}', f"{field}.")
    if message["role"] != "assistant":
        got = f'"{message["role"]}"' if isinstance(message["role"], str) else json_type_name(message["role"])
        raise RecordError(f"{field}.role", f'expected "assistant", got {got}')
    return _content_text(message["content"], f"{field}.content")


def _parse_preference(record: dict[str, object]) -> Preference:
    if any(key in record for key in _OPENAI_PREFERENCE_KEYS):
        hint = f"an OpenAI preference record is {_OPENAI_PREFERENCE_EXAMPLE}"
        _check_keys(record, _OPENAI_PREFERENCE_KEYS, (), hint)
        prompt = _require_object(record["input"], "input")
        _check_keys(
            prompt,
            ("messages",),
            ("tools", "parallel_tool_calls"),
            'the input is {"messages": [...]} with optional "tools" and "parallel_tool_calls"',
            "input.",
        )
        if "tools" in prompt and _list(prompt["tools"], "input.tools", "tool definitions"):
            raise RecordError("input.tools", "tool definitions are not supported (tuneforge models do not call tools)")
        if "parallel_tool_calls" in prompt and not isinstance(prompt["parallel_tool_calls"], bool):
            got = json_type_name(prompt["parallel_tool_calls"])
            raise RecordError("input.parallel_tool_calls", f"expected true or false, got {got}")
        system, turns = _preference_prompt(prompt, "input.messages")
        keys = ("preferred_output", "non_preferred_output")
        as_list = True
    else:
        hint = (
            "a preference record is a conversation whose messages end with the user's turn, plus "
            '"preferredResponse" and "nonPreferredResponse", each {"role": "assistant", "content": [{"text": "..."}]}'
        )
        _check_keys(record, ("messages", *_BEDROCK_PREFERENCE_KEYS), ("schemaVersion", "system"), hint)
        if "schemaVersion" in record and not isinstance(record["schemaVersion"], str):
            raise RecordError(
                "schemaVersion",
                f'expected a string such as "{SCHEMA_VERSION}", got {json_type_name(record["schemaVersion"])}',
            )
        system = _content_text(record["system"], "system") if "system" in record else ""
        system, turns = _preference_prompt(record, "messages", system)
        keys = _BEDROCK_PREFERENCE_KEYS
        as_list = False
    preferred = _answer(record[keys[0]], keys[0], as_list=as_list)
    non_preferred = _answer(record[keys[1]], keys[1], as_list=as_list)
    if preferred.strip() == non_preferred.strip():
        raise RecordError(
            keys[1],
            f'the same answer as "{keys[0]}"; a preference pair needs two different answers to learn from',
        )
    return Preference(system=system, turns=turns, preferred=preferred, non_preferred=non_preferred)
