"""Prompt rendering: how a record or a request becomes the text and token ids a model sees.

Training and serving both call these, so a model is served exactly as it was trained.

**Prompt/completion records** train on ``<bos> prompt completion <eos>`` with the loss on
``completion <eos>`` only, whatever the model (``<bos>`` where the tokenizer itself starts an
encoding with one, see :func:`bos_ids`). Serving a raw prompt (InvokeModel, OpenAI completions)
encodes it the same way: ``<bos> prompt``.

**Conversations** (``bedrock-conversation-2024`` records, Converse, OpenAI chat) are rendered with
the model's own chat template when its tokenizer has one (``chat_template`` in
tokenizer_config.json), else with tuneforge's plain template (below). Both go through
:func:`conversation_pieces`, which cuts the rendering into pieces, each tokenized on its own and
marked trained or not. Serving a conversation builds the same pieces up to the generation prompt,
so the ids the engine feeds the model are exactly the ids training put before that answer: the
prompt is a prefix of the training sequence by construction, not by luck of tokenization.

*With a chat template*, the pieces come from rendering growing prefixes of the conversation with
``apply_chat_template``: the first user turn(s) with the generation prompt, then with the
assistant's answer, then with the next user turn and the generation prompt, and so on. Each
rendering must extend the previous one (the template is *prefix-stable*); a template that rewrites
earlier turns (one that drops past reasoning, say) cannot be trained turn by turn and is refused
with a :class:`ChatTemplateError` that says so. An assistant piece is what its answer added to the
text: the answer and the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ``</s>``).
The loss covers it up to its last non-whitespace character: the whitespace a template writes
between turns (ChatML's and Gemma's newline after the marker) is the next turn's business and is
not trained. The template writes ``<bos>`` itself when the family uses one, so nothing is added.
A template that refuses a system role (Gemma's and Mistral's raise an error) gets the system prompt
at the start of the first user message, separated by a blank line, as those families' own
documentation advises.

*Without a chat template* (the built-in models) the plain template::

    <bos>System: {system}\\n
    User: {user text}\\nAssistant: {assistant text}\\n
    User: {user text}\\nAssistant: {assistant text}<eos>

The loss covers each assistant text with its terminator: ``<eos>`` after the last turn, a newline
after earlier turns, because that is how an earlier turn appears in the prompt at inference time.

**Text is text.** Message and system text is tokenized as plain text: a special token's spelling in
it (``<|im_end|>``, ``<|eot_id|>``, ``[INST]``) stays text, so a user cannot forge a turn. Only the
template's own markup (role headers, end-of-turn markers, ``<bos>``) becomes control tokens; see
:func:`_render_segments` and :func:`_encode_segments`. A raw prompt (InvokeModel ``prompt``, OpenAI
completions) and a prompt/completion record are the caller's whole input, hand-templated
perhaps, so their special tokens are recognised, in training and serving alike.

**Trained format.** A custom model trained on prompt/completion records never saw a template: a
single-turn conversation sent to it (Converse, OpenAI chat) is served as the bare prompt, the
user's text, exactly as training saw its prompts (a system prompt comes first, separated by a blank
line), but still as message text: its special-token spellings stay text, which differs from
the raw prompt only for text that spells one. Conversations of several turns have no
prompt/completion equivalent and keep the model's conversation rendering.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from tuneforge.data.formats import FORMAT_PROMPT_COMPLETION

SYSTEM_SEPARATOR = "\n\n"
"""Between a system prompt and the user text, where a template or a trained format has no system role."""


class ChatTemplateError(ValueError):
    """The model's chat template refused a conversation, or cannot be trained on turn by turn.

    A job fails with its message (the user must change the data or the template); a request gets a
    ValidationException."""


@dataclass(frozen=True)
class Piece:
    """A run of the rendered conversation, tokenized on its own."""

    text: str
    ids: list[int]
    trained: bool
    """Whether the loss covers these tokens (assistant answers and their end of turn)."""


@dataclass(frozen=True)
class RenderedPrompt:
    """What the engine feeds a model for one request."""

    text: str
    ids: list[int]
    strip_leading_space: bool
    """The plain template trains answers as `` <text>`` after ``Assistant:``: that one space belongs
    to the template, not to the answer."""


def _text(blocks: str | Sequence[Mapping[str, Any]]) -> str:
    """A message's text: Bedrock's content blocks, OpenAI's text parts, or OpenAI's plain string."""
    if isinstance(blocks, str):
        return blocks
    return "\n".join(str(block["text"]) for block in blocks if "text" in block)


def _system_and_messages(conversation: Mapping[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """The system text and the messages as plain text, read in either spelling
    (:func:`tuneforge.data.formats.parse_messages`): OpenAI's leading ``system`` message is the system text."""
    system = _text(conversation.get("system") or [])
    messages = [{"role": str(m["role"]), "content": _text(m["content"])} for m in conversation["messages"]]
    if messages and messages[0]["role"] == "system" and not system:
        system = messages.pop(0)["content"]
    return system, messages


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _as_conversation(record_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(record_or_messages, Mapping):
        return record_or_messages
    return {"messages": list(record_or_messages)}


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` as plain text: a special token's spelling in it (``<|im_end|>``) stays text.

    ``add_special_tokens=False`` only stops the automatic ``<bos>``/``<eos>``; without
    ``split_special_tokens`` the tokenizer would still turn such a spelling into the control token.
    """
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []
    return ids


Segment = tuple[str, bool]
"""A run of rendered text and whether it is message content (else the template's own markup)."""


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """A pattern that finds the tokenizer's special tokens (longest first, as the tokenizer matches
    them), honouring their ``lstrip``/``rstrip`` (the whitespace they absorb), and their ids."""
    tokens = {
        str(token.content): (id_, token) for id_, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    if not tokens:
        return None, {}
    alternatives: list[str] = []
    for content, (_, token) in sorted(tokens.items(), key=lambda item: -len(item[0])):
        before = r"\s*" if getattr(token, "lstrip", False) else ""
        after = r"\s*" if getattr(token, "rstrip", False) else ""
        alternatives.append(f"{before}(?P<t{len(alternatives)}>{re.escape(content)}){after}")
    return re.compile("|".join(alternatives)), {content: id_ for content, (id_, _) in tokens.items()}


def _encode_segments(tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment]) -> list[int]:
    """Markup with its special tokens recognised, content as plain text.

    This is what the tokenizer does to the whole text (split it at special tokens, encode the text
    between them) except that it looks for special tokens in the markup only: text runs that span
    markup and content are encoded as one, so ordinary content gets exactly the ids a plain
    ``encode`` of the rendering gives, and content that spells a control token cannot forge one.
    """
    pattern, ids_of = _special_tokens(tokenizer)
    ids: list[int] = []
    run = ""
    for text, content in segments:
        if content or pattern is None:
            run += text
            continue
        at = 0
        for match in pattern.finditer(text):
            run += text[at : match.start()]
            ids += _encode_text(tokenizer, run)
            run = ""
            ids.append(ids_of[next(value for value in match.groupdict().values() if value is not None)])
            at = match.end()
        run += text[at:]
    return ids + _encode_text(tokenizer, run)


def _piece(tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment], trained: bool) -> Piece:
    return Piece("".join(text for text, _ in segments), _encode_segments(tokenizer, segments), trained)


def _slice(segments: Sequence[Segment], start: int, end: int | None = None) -> list[Segment]:
    """The segments' text from ``start`` to ``end`` (character offsets), cut at those offsets."""
    out: list[Segment] = []
    at = 0
    for text, content in segments:
        low = max(start - at, 0)
        high = len(text) if end is None else min(end - at, len(text))
        if low < high or (not text and start <= at and (end is None or at <= end)):
            out.append((text[low:high], content))
        at += len(text)
    return out


def conversation_pieces(
    tokenizer: PreTrainedTokenizerBase, conversation: Mapping[str, Any], *, close_last: bool = True
) -> list[Piece]:
    """The conversation as pieces; see the module docstring.

    A conversation ending with a user message ends with the generation prompt (serving). One ending
    with an assistant message ends with that answer: closed by its end of turn (training), or left
    open after its text when ``close_last`` is false (an assistant prefill the model continues, or
    a truncated answer that did not end there).
    """
    system, messages = _system_and_messages(conversation)
    if has_chat_template(tokenizer):
        return _template_pieces(tokenizer, system, messages, close_last)
    return _plain_pieces(tokenizer, system, messages, close_last)


def _plain_segments(system: str, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """(text, trained) runs of the plain template, up to the last message's text (no ``<eos>``)."""
    segments = [(f"System: {system}\n", False)] if system else []
    for index, message in enumerate(messages):
        if message["role"] == "user":
            segments.append((f"User: {message['content']}\nAssistant:", False))
        else:
            segments.append((f" {message['content']}" + ("" if index == len(messages) - 1 else "\n"), True))
    return segments


def _plain_pieces(
    tokenizer: PreTrainedTokenizerBase, system: str, messages: list[dict[str, str]], close_last: bool
) -> list[Piece]:
    pieces = [Piece("", bos_ids(tokenizer), False)]
    # No markup of the plain template is a special token: all of it is encoded as plain text.
    pieces += [
        Piece(text, _encode_text(tokenizer, text), trained) for text, trained in _plain_segments(system, messages)
    ]
    if messages and messages[-1]["role"] == "assistant" and close_last:
        pieces.append(Piece(str(tokenizer.eos_token), [tokenizer.eos_token_id], True))
    return pieces


def _render(
    tokenizer: PreTrainedTokenizerBase, system: str, messages: list[dict[str, str]], generation_prompt: bool
) -> str:
    """``apply_chat_template`` as text; a refused system role is retried inside the first user message."""
    try:
        with_system = [{"role": "system", "content": system}, *messages] if system else messages
        return str(tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=generation_prompt))
    except TemplateError as exc:
        if not system:
            raise ChatTemplateError(f"the model's chat template refused the conversation: {exc}") from exc
    merged = [{**messages[0], "content": system + SYSTEM_SEPARATOR + messages[0]["content"]}, *messages[1:]]
    try:
        return str(tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=generation_prompt))
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template refused the conversation: {exc}") from exc


_PLACEHOLDER = "\ue000tuneforge-text-{}\ue001"
"""Stands in for a text in a second rendering (private-use characters: no real text has them)."""
_PLACEHOLDER_PATTERN = "\ue000tuneforge-text-(\\d+)\ue001"


def _render_segments(
    tokenizer: PreTrainedTokenizerBase, system: str, messages: list[dict[str, str]], generation_prompt: bool
) -> list[Segment]:
    """:func:`_render`, told apart into markup and content.

    The template is rendered a second time with a placeholder in place of each text (the system
    prompt's, each message's); the rendering splits into markup at the placeholders. Each text is
    then found in the real rendering between its markup, as written or trimmed (templates trim).
    A template whose markup depends on the text, or that rewrites the text otherwise, cannot be
    told apart from it and is refused with a :class:`ChatTemplateError`.
    """
    real = _render(tokenizer, system, messages, generation_prompt)
    texts = [system, *(message["content"] for message in messages)]
    marked = [{**message, "content": _PLACEHOLDER.format(index + 1)} for index, message in enumerate(messages)]
    parts = re.split(
        _PLACEHOLDER_PATTERN, _render(tokenizer, _PLACEHOLDER.format(0) if system else "", marked, generation_prompt)
    )
    segments: list[Segment] = []
    at = 0
    for index, part in enumerate(parts):
        written = part
        if index % 2:  # a text: as written or trimmed, whichever the next markup follows
            text = texts[int(part)]
            candidates = dict.fromkeys((text, text.strip(), text.rstrip(), text.lstrip()))
            after = parts[index + 1]
            found = (c for c in candidates if real.startswith(c, at) and real.startswith(after, at + len(c)))
            written = next(found, _PLACEHOLDER)
        if not real.startswith(written, at) or (index == len(parts) - 1 and at + len(written) != len(real)):
            raise ChatTemplateError(
                "the model's chat template changes the message text beyond trimming it (or its markup depends "
                "on the text), so the text cannot be tokenized apart from the template's markup"
            )
        segments.append((written, bool(index % 2)))
        at += len(written)
    return segments


def _template_pieces(
    tokenizer: PreTrainedTokenizerBase, system: str, messages: list[dict[str, str]], close_last: bool
) -> list[Piece]:
    pieces: list[Piece] = []
    rendered = ""

    def extend(segments: list[Segment], turn: int) -> list[Segment]:
        if not "".join(text for text, _ in segments).startswith(rendered):
            raise ChatTemplateError(
                f"the model's chat template is not prefix-stable: rendering message {turn + 1} changes the text "
                "of the turns before it, so a conversation cannot be trained on and served turn by turn"
            )
        return _slice(segments, len(rendered))

    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _piece(tokenizer, extend(_render_segments(tokenizer, system, messages[:index], True), index), False)
        pieces.append(prompt)
        rendered += prompt.text
        segments = extend(_render_segments(tokenizer, system, messages[: index + 1], False), index)
        if index == len(messages) - 1 and not close_last:
            pieces.append(_piece(tokenizer, _open_answer(segments, message["content"]), True))
            return pieces
        answer = "".join(text for text, _ in segments)
        trained = answer.rstrip()
        pieces.append(_piece(tokenizer, _slice(segments, 0, len(trained)), True))
        if len(trained) < len(answer):
            pieces.append(_piece(tokenizer, _slice(segments, len(trained)), False))
        rendered += answer
    if messages and messages[-1]["role"] != "assistant":
        segments = extend(_render_segments(tokenizer, system, messages, True), len(messages) - 1)
        pieces.append(_piece(tokenizer, segments, False))
    return pieces


def _open_answer(segments: list[Segment], content: str) -> list[Segment]:
    """The rendered answer cut right after its text: no end-of-turn marker, so the model continues it."""
    last = max((index for index, (_, is_content) in enumerate(segments) if is_content), default=None)
    return segments[: last + 1] if last is not None else [(content, True)]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The special tokens a chat template closes an assistant turn with (empty without a template).

    Found by rendering a one-turn probe: the last token of the trained piece, when it is a special
    (added) token rather than text.
    """
    if not has_chat_template(tokenizer):
        return set()
    probe = {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}, {"role": "assistant", "content": [{"text": "Yes"}]}]
    }
    try:
        trained = [piece for piece in conversation_pieces(tokenizer, probe) if piece.trained]
    except ChatTemplateError:  # a template this odd is refused per request, with its reason
        return set()
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    last = trained[-1].ids[-1:] if trained and trained[-1].ids else []
    return {token for token in last if token in special}


def render_prompt(record_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The prompt's text in the plain template: what a model without a chat template continues.

    For a model with one, :func:`prompt_ids` and :func:`serving_prompt` give what it is fed; this
    text stays a readable, model-independent rendering (distillation keys its prompts by it).
    Accepts a prompt/completion record (returns its prompt), a conversation record or a Converse
    request body (``{"system": [...], "messages": [...]}``), or a bare list of messages. A trailing
    assistant message is treated as the expected answer and left out.
    """
    if isinstance(record_or_messages, Mapping) and "prompt" in record_or_messages:
        return str(record_or_messages["prompt"])
    conversation = _without_answer(_as_conversation(record_or_messages))
    system, messages = _system_and_messages(conversation)
    return "".join(text for text, _ in _plain_segments(system, messages))


def _without_answer(conversation: Mapping[str, Any]) -> dict[str, Any]:
    messages = list(conversation["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return {"system": conversation.get("system"), "messages": messages}


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, record_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> list[int]:
    """The prompt ids training puts before the answer of a record (a trailing answer is left out)."""
    if isinstance(record_or_messages, Mapping) and "prompt" in record_or_messages:
        return encode_prompt(tokenizer, str(record_or_messages["prompt"]))
    conversation = _without_answer(_as_conversation(record_or_messages))
    return [token for piece in conversation_pieces(tokenizer, conversation) for token in piece.ids]


def serving_prompt(
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt: str | None = None,
    conversation: Mapping[str, Any] | None = None,
    trained_format: str | None = None,
) -> RenderedPrompt:
    """What the engine feeds the model for a raw ``prompt`` or a ``conversation``.

    A conversation ending with an assistant message is a prefill: the prompt ends with that partial
    answer, rendered as training renders an answer but without its end of turn, so the model
    continues it and only the continuation is returned. ``trained_format`` is the data format a
    custom model was trained on (its manifest's ``data_format``); see the module docstring.
    """
    if conversation is None:
        assert prompt is not None
        return RenderedPrompt(prompt, encode_prompt(tokenizer, prompt), False)
    messages = conversation["messages"]
    prefill = messages[-1]["role"] == "assistant"
    if trained_format == FORMAT_PROMPT_COMPLETION and len(messages) - prefill == 1:
        system = _text(conversation.get("system") or [])
        text = (system + SYSTEM_SEPARATOR if system else "") + _text(messages[0]["content"])
        if prefill:
            text += _text(messages[-1]["content"])
        # Message text, not a caller-owned raw prompt: its special-token spellings stay text.
        return RenderedPrompt(text, bos_ids(tokenizer) + _encode_text(tokenizer, text), False)
    pieces = conversation_pieces(tokenizer, conversation, close_last=False)
    ids = [token for piece in pieces for token in piece.ids]
    text = "".join(piece.text for piece in pieces)
    return RenderedPrompt(text, ids, strip_leading_space=not prefill and not has_chat_template(tokenizer))


def expected_answer(record: Mapping[str, Any]) -> str:
    """The completion, or the final assistant message of a conversation record."""
    if "completion" in record:
        return str(record["completion"])
    return _text(record["messages"][-1]["content"])


def bos_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """``[<bos>]`` when the tokenizer's own encoding starts with it, else ``[]``.

    Families differ: Llama, Mistral and Gemma tokenizers prepend ``<bos>`` (so do the built-in
    models'), Qwen2's and SmolLM2's prepend nothing (SmolLM2 names ``<|im_start|>`` its bos token,
    but a raw prompt never starts with it). Following the tokenizer keeps a raw prompt encoded as
    the family's own tools encode it, so an exported model answers ``tokenizer(prompt)`` as served.
    """
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos] else []


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """:func:`bos_ids` + the text's tokens, as training and serving both see a raw prompt.

    Adding ``<bos>`` here rather than through the tokenizer's post-processor keeps user models whose
    tokenizer appends ``<eos>`` to every encoding from closing the prompt.
    """
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return bos_ids(tokenizer) + ids
