"""Deterministic demo task: route a customer-support ticket to one of five categories.

The demo and the tests need a task that a random-initialised built-in model cannot do at all (about
0% exact match) and that a LoRA fine-tune of ``forge-small`` learns to >= 80% held-out exact match in
seconds on two CPU cores. A ticket is ``frame`` (shared by every category) around a category
keyword phrase, with an optional shared opener and closer, so only the keyword decides the label and
the surroundings are noise the model must learn to ignore. Held-out tickets are combinations
(opener, frame, keyword, closer) never seen in training, built from the same pools: the test measures
generalisation over phrasing, not memorisation of strings. Category names start with distinct
letters, so the decision is one token and the rest of the label is spelling.

Everything is generated with a seeded ``random.Random``: same arguments, same records, on any machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "refund", "payment"),
    "shipping": ("parcel", "delivery", "courier"),
    "account": ("password", "login", "username"),
    "technical": ("crash", "error", "website"),
    "feedback": ("suggestion", "idea", "review"),
}
"""Three keywords a category. Measured (forge-small, LoRA, default hyperparameters): with five
keywords a category, held-out accuracy was 42-82% after 250 steps; with three it passes 90% after the
150 steps of the defaults (3 epochs of 400 tickets), about 16 s on 2 CPU cores."""

FRAMES: tuple[str, ...] = (
    "{}",
    "my {}",
    "{} issue",
    "help: {}",
    "problem with {}",
    "the {} again",
    "{} question",
    "about {}",
)
OPENERS: tuple[str, ...] = ("", "hi ", "urgent ", "hello ")
CLOSERS: tuple[str, ...] = ("", " pls", "!", " thanks")

SYSTEM_PROMPT = "Classify the support ticket into one category."

Record = dict[str, Any]


def ticket_prompt(ticket: str) -> str:
    """The prompt form the model is trained and evaluated on; the label follows after a space."""
    return f"Ticket: {ticket}\nCategory:"


def make_classification_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Return ``(train, test)`` prompt/completion records with disjoint ticket texts.

    Labels are balanced by cycling through the categories, so accuracy is not inflated by a
    majority class. Raises ValueError if the pools cannot supply that many distinct tickets.
    """
    rng = random.Random(seed)
    categories = list(CATEGORY_KEYWORDS)
    per_category = {
        category: [
            (opener, frame, keyword, closer)
            for opener in OPENERS
            for frame in FRAMES
            for keyword in keywords
            for closer in CLOSERS
        ]
        for category, keywords in CATEGORY_KEYWORDS.items()
    }
    for combos in per_category.values():
        rng.shuffle(combos)
    needed = -(-(n_train + n_test) // len(categories))
    available = min(len(combos) for combos in per_category.values())
    if needed > available:
        raise ValueError(f"at most {available * len(categories)} distinct tickets, asked for {n_train + n_test}")

    def records(count: int, start: int) -> list[Record]:
        out: list[Record] = []
        for index in range(count):
            category = categories[index % len(categories)]
            opener, frame, keyword, closer = per_category[category][start + index // len(categories)]
            ticket = opener + frame.format(keyword) + closer
            out.append({"prompt": ticket_prompt(ticket), "completion": f" {category}"})
        rng.shuffle(out)
        return out

    train = records(n_train, 0)
    test = records(n_test, -(-n_train // len(categories)))
    return train, test


def to_conversation(record: Mapping[str, str], system: str = SYSTEM_PROMPT) -> Record:
    """The same example in Bedrock's ``bedrock-conversation-2024`` format."""
    return {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": system}],
        "messages": [
            {"role": "user", "content": [{"text": record["prompt"]}]},
            {"role": "assistant", "content": [{"text": record["completion"].strip()}]},
        ],
    }


def make_conversation_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """:func:`make_classification_task` rendered as conversation records."""
    train, test = make_classification_task(n_train, n_test, seed)
    return [to_conversation(r) for r in train], [to_conversation(r) for r in test]


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, no ASCII escaping) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
