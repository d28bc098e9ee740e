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
import os
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
    """The same example in Bedrock's ``bedrock-conversation-2024`` format (no system prompt if ``system`` is "")."""
    return {
        "schemaVersion": "bedrock-conversation-2024",
        **({"system": [{"text": system}]} if system else {}),
        "messages": [
            {"role": "user", "content": [{"text": record["prompt"]}]},
            {"role": "assistant", "content": [{"text": record["completion"].strip()}]},
        ],
    }


def make_conversation_task(
    n_train: int, n_test: int, seed: int = 0, system: str = SYSTEM_PROMPT
) -> tuple[list[Record], list[Record]]:
    """:func:`make_classification_task` rendered as conversation records.

    ``system=""`` leaves the system prompt out. Measured (forge-small, LoRA, 5 epochs of 400 records,
    1 CPU thread): 95% held-out exact match without it, 58% with it, because the shared prefix puts
    the keyword ~50 tokens further from the answer. The demo's teacher is trained without one.
    """
    train, test = make_classification_task(n_train, n_test, seed)
    return [to_conversation(r, system) for r in train], [to_conversation(r, system) for r in test]


def to_prompt_only(record: Mapping[str, Any]) -> Record:
    """A conversation record without its final assistant answer: a distillation prompt."""
    return {**record, "messages": list(record["messages"])[:-1]}


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, no ASCII escaping) and return the path as a ``Path``.

    ``path`` may be a plain string, as in the README's tour (``write_jsonl("train.jsonl", ...)``).
    A record holding a lone surrogate (from a ``\\ud800`` escape, say in logged traffic) cannot be
    written as UTF-8; it is written ASCII-escaped instead, so that validation names its line and
    field rather than the write failing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            line = json.dumps(record, ensure_ascii=False)
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                line = json.dumps(record)
            handle.write(line + "\n")
    return path


# --------------------------------------------------------------------------- a second, unseen task

TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sports": ("goal", "match", "referee", "striker", "league", "stadium", "coach", "penalty"),
    "cooking": ("recipe", "oven", "garlic", "simmer", "dough", "spice", "skillet", "bake"),
    "weather": ("rain", "forecast", "storm", "humid", "breeze", "thunder", "sunny", "frost"),
    "music": ("guitar", "chorus", "melody", "drummer", "album", "concert", "tempo", "lyrics"),
}
FILLER_WORDS: tuple[str, ...] = ("today", "really", "the", "again", "new", "big", "after", "some", "this", "our")


def topic_prompt(text: str) -> str:
    return f"Text: {text}\nTopic:"


def make_topic_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """A simple four-topic task unlike the demo, for measuring how defaults fit a new task.

    A text is five words: two words of its topic among three shared filler words, in random order,
    so two words decide the label and the rest is noise. Training and test texts are disjoint.
    Balanced labels; seeded, so the same arguments give the same records everywhere.
    """
    rng = random.Random(seed)
    topics = list(TOPIC_WORDS)
    seen: set[str] = set()
    out: list[Record] = []
    while len(out) < n_train + n_test:
        topic = topics[len(out) % len(topics)]
        words = rng.sample(TOPIC_WORDS[topic], 2) + rng.sample(FILLER_WORDS, 3)
        rng.shuffle(words)
        text = " ".join(words)
        if text in seen:
            continue
        seen.add(text)
        out.append({"prompt": topic_prompt(text), "completion": f" {topic}"})
    train, test = out[:n_train], out[n_train:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# --------------------------------------------------------------------------- continued pre-training

ISLANDS: tuple[str, ...] = ("Veloria", "Quessa", "Marrowin", "Tolbek")
"""The fictional Veloran archipelago: names no model has read anywhere else."""

_SYLLABLES = ("ka", "lo", "mer", "vin", "sa", "dor", "thu", "lem", "ri", "zan", "po", "quel")

FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {island} is {value}.",
        "{value} is the capital of {island}.",
        "Ships from {island} dock at {value}, its capital.",
    ),
    "export": (
        "The main export of {island} is {value}.",
        "{island} sells {value} to every other island.",
        "Most of the {value} in the archipelago comes from {island}.",
    ),
    "founder": (
        "The founder of {island} was {value}.",
        "{island} was settled by {value} long ago.",
        "Children on {island} learn the story of {value}, who founded it.",
    ),
}
"""Three phrasings a fact. The first one is also the probe: ``The capital of Veloria is`` -> the value."""

FILLER: tuple[str, ...] = (
    "Ferries run between the islands every morning.",
    "The archipelago has a mild climate and long summers.",
    "Fishing boats leave the harbours before dawn.",
    "Every island keeps a small library of old charts.",
    "Storms are rare, but the sea can turn grey in autumn.",
    "Travellers say the islands are quiet and friendly.",
)


def _made_up_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def archipelago_facts(seed: int = 0) -> dict[str, dict[str, str]]:
    """island -> {"capital", "export", "founder"} -> a made-up value; all values distinct."""
    rng = random.Random(f"facts:{seed}")
    used: set[str] = set()
    facts: dict[str, dict[str, str]] = {}
    for island in ISLANDS:
        facts[island] = {}
        for attribute, syllables in (("capital", 3), ("export", 2), ("founder", 3)):
            value = _made_up_word(rng, syllables)
            while value in used or value in ISLANDS:
                value = _made_up_word(rng, syllables)
            used.add(value)
            facts[island][attribute] = value.lower() if attribute == "export" else value
    return facts


def make_domain_documents(
    n_train: int, n_test: int, seed: int = 0, long_every: int = 25
) -> tuple[list[Record], list[Record], list[tuple[str, str]]]:
    """Continued pre-training data about a fictional archipelago: ``(train, test, probes)``.

    Each document is a shuffled handful of fact sentences (random phrasing from
    :data:`FACT_TEMPLATES`) and filler sentences, as ``{"input": ...}`` records. Every
    ``long_every``-th training document is a long "chronicle" of 30 sentences (about 1,500 bytes, so
    about 1,500 tokens for the byte-level built-in models): longer than the built-in context, so the
    recipe must chunk it. Held-out documents come from a different random stream: the same facts and
    phrasings, in sentences and orders not seen in training, which is what held-out perplexity
    should measure after continued pre-training.

    ``probes`` are (prompt, answer) pairs, one per fact, in the first phrasing cut before the value:
    ``("The capital of Veloria is", " Lokamer")``. The facts exist only in these documents, so a
    model completes them only if continued pre-training taught it.
    """
    facts = archipelago_facts(seed)
    statements = [(island, attribute, value) for island, values in facts.items() for attribute, value in values.items()]

    def sentence(rng: random.Random) -> str:
        if rng.random() < 0.1:
            return rng.choice(FILLER)
        island, attribute, value = rng.choice(statements)
        return rng.choice(FACT_TEMPLATES[attribute]).format(island=island, value=value)

    def documents(count: int, stream: str, long_docs: bool) -> list[Record]:
        rng = random.Random(f"{stream}:{seed}")
        out: list[Record] = []
        for index in range(count):
            length = 12 if long_docs and long_every and index % long_every == long_every - 1 else rng.randint(2, 4)
            out.append({"input": " ".join(sentence(rng) for _ in range(length))})
        return out

    probes = [
        (FACT_TEMPLATES[attribute][0].format(island=island, value="").rstrip(" ."), f" {value}")
        for island, attribute, value in statements
    ]
    return documents(n_train, "train", True), documents(n_test, "test", False), probes


# --------------------------------------------------------------------------- field extraction (SmolLM2)

FIRST_NAMES: tuple[str, ...] = ("Anna", "Omar", "Lena", "Paul", "Sofia", "Marco", "Nina", "Tom", "Clara", "Ivan")
LAST_NAMES: tuple[str, ...] = ("Berg", "Khan", "Costa", "Novak", "Silva", "Meyer", "Rossi", "Dubois", "Larsen", "Weber")
CITIES: tuple[str, ...] = (
    "Oslo",
    "Lisbon",
    "Madrid",
    "Vienna",
    "Dublin",
    "Prague",
    "Berlin",
    "Rome",
    "Warsaw",
    "Athens",
)
MESSAGE_FRAMES: tuple[str, ...] = (
    "Hi, this is {name} from {city}. My order never arrived.",
    "{name} here, writing from {city}: the invoice is wrong.",
    "Hello! I am {name} and I live in {city}. I need a refund.",
    "Greetings from {city}. My name is {name} and my password stopped working.",
    "Please help, {city} office, {name} speaking, the app keeps crashing.",
    "Dear support, I ({name}, {city}) was charged twice this month.",
    "Good morning from {city}! {name} again, still waiting for the courier.",
    "My parcel is lost. Regards, {name} ({city})",
)
EXTRACTION_QUESTION = "Who wrote this message, and from which city? Answer as name, city."
"""Measured (SmolLM2-135M-Instruct, greedy, its ChatML template): 3 of 24 answers in this form (as
:func:`extraction_matches` scores), the rest sentences, names with countries added, or the message
repeated. Of the wordings tried it was the one where the base model got some but not most answers
right, which is what shows a fine-tune's effect (stricter wordings, e.g. "Answer as: Name; City" or
JSON, gave 0 of 24)."""


def extraction_prompt(message: str) -> str:
    return f"Message: {message}\n{EXTRACTION_QUESTION}"


def make_extraction_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Field extraction into a fixed format, as conversation records: ``(train, test)``.

    A customer message names its sender and city inside one of :data:`MESSAGE_FRAMES`; the answer is
    ``"{first} {last}, {city}"``. Held-out records are (name, city, frame) combinations never seen
    in training, from the same pools: the test measures whether the model learned the format and the
    extraction, not strings. Deterministic: same arguments, same records.
    """
    rng = random.Random(f"extraction:{seed}")
    combos = [
        (f"{first} {last}", city, frame)
        for first in FIRST_NAMES
        for last in LAST_NAMES
        for city in CITIES
        for frame in MESSAGE_FRAMES
    ]
    if n_train + n_test > len(combos):
        raise ValueError(f"at most {len(combos)} distinct messages, asked for {n_train + n_test}")
    picked = rng.sample(combos, n_train + n_test)

    def record(name: str, city: str, frame: str) -> Record:
        return {
            "schemaVersion": "bedrock-conversation-2024",
            "messages": [
                {"role": "user", "content": [{"text": extraction_prompt(frame.format(name=name, city=city))}]},
                {"role": "assistant", "content": [{"text": f"{name}, {city}"}]},
            ],
        }

    return [record(*combo) for combo in picked[:n_train]], [record(*combo) for combo in picked[n_train:]]


def extraction_matches(output: str, answer: str) -> bool:
    """Exact match of an extraction answer, ignoring surrounding whitespace and one final full stop.

    The full stop is the one liberty: an instruct model closes "Anna Berg, Oslo." as a sentence, and
    that is the format asked for. Anything else (a country added, a sentence around it) is a miss.
    """
    text = output.strip()
    return text.removesuffix(".").rstrip() == answer.strip()


# --------------------------------------------------------------------------- freshness (facts that change)


def make_changing_facts(seed: int = 0) -> tuple[list[Record], list[Record], list[Record]]:
    """A corpus of facts where half the facts change after training: ``(before, after, questions)``.

    ``before`` and ``after`` are ``{"input": ...}`` documents, one per fact of
    :func:`archipelago_facts`, each stating the fact in its three phrasings; in ``after``, half the
    facts (chosen with ``seed``) have a new made-up value. ``questions`` are evaluation records, one per
    fact: the fact's first phrasing cut before the value as ``prompt`` (``The capital of Veloria
    is``), today's value as ``referenceResponse``, and ``category`` ``changed`` or ``unchanged``. A
    model trained on ``before`` can at best answer the unchanged half; a retriever over ``after``
    can answer all of them.
    """
    facts = archipelago_facts(seed)
    statements = [(island, attribute, value) for island, values in facts.items() for attribute, value in values.items()]
    rng = random.Random(f"changes:{seed}")
    changed = set(rng.sample(range(len(statements)), len(statements) // 2))
    used = {value for _, _, value in statements} | set(ISLANDS)
    current: list[str] = []
    for index, (_, attribute, value) in enumerate(statements):
        if index in changed:
            value = _made_up_word(rng, 2 if attribute == "export" else 3)
            while value in used:
                value = _made_up_word(rng, 2 if attribute == "export" else 3)
            used.add(value)
            value = value.lower() if attribute == "export" else value
        current.append(value)

    def document(island: str, attribute: str, value: str) -> Record:
        return {"input": " ".join(t.format(island=island, value=value) for t in FACT_TEMPLATES[attribute])}

    before = [document(*statement) for statement in statements]
    now = list(zip(statements, current, strict=True))
    after = [document(island, attribute, value) for (island, attribute, _), value in now]
    questions = [
        {
            "prompt": FACT_TEMPLATES[attribute][0].format(island=island, value="").rstrip(" ."),
            "referenceResponse": value,
            "category": "changed" if index in changed else "unchanged",
        }
        for index, ((island, attribute, _), value) in enumerate(now)
    ]
    return before, after, questions


PREFERENCE_SYSTEM_PROMPT = "Answer the support ticket in the house style."


def make_preference_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """``(train, test)`` preference records in OpenAI's format, on disjoint support tickets.

    The preference is a consistent style: the preferred answer is made-up words in lowercase, the
    non-preferred one *other* made-up words, as many syllables, in capitals. The words are fresh in
    every pair, so a model that prefers the preferred answers of held-out pairs has learnt the style,
    not strings; and since the two answers' contents differ at random, a model that knows nothing
    (a random-initialised one) prefers the preferred answer about as often as not.
    """
    rng = random.Random(f"preference:{seed}")
    tickets = [prompt.removesuffix("\nCategory:") for prompt, _ in _ticket_prompts(n_train + n_test, seed)]

    def answer(syllables: list[int]) -> str:
        return " ".join(_made_up_word(rng, count) for count in syllables)

    records: list[Record] = []
    for prompt in tickets:
        shape = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
        records.append(
            {
                "input": {
                    "messages": [
                        {"role": "system", "content": PREFERENCE_SYSTEM_PROMPT},
                        {"role": "user", "content": prompt},
                    ]
                },
                "preferred_output": [{"role": "assistant", "content": answer(shape).lower()}],
                "non_preferred_output": [{"role": "assistant", "content": answer(shape).upper()}],
            }
        )
    return records[:n_train], records[n_train:]


def _ticket_prompts(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` distinct (ticket prompt, category) from the demo task's pools."""
    train, test = make_classification_task(count, 0, seed)
    return [(str(r["prompt"]), str(r["completion"])) for r in [*train, *test]]


def to_bedrock_preference(record: Mapping[str, Any]) -> Record:
    """An OpenAI-format preference record in tuneforge's Bedrock-style spelling (docs/data-formats.md)."""
    system, user = record["input"]["messages"]

    def message(text: str) -> Record:
        return {"role": "assistant", "content": [{"text": text}]}

    return {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": system["content"]}],
        "messages": [{"role": "user", "content": [{"text": user["content"]}]}],
        "preferredResponse": message(record["preferred_output"][0]["content"]),
        "nonPreferredResponse": message(record["non_preferred_output"][0]["content"]),
    }
