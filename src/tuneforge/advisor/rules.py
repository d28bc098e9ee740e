"""The advice: docs/customization-approaches.md ("Choosing by rule") turned into code.

The rules are deliberately few and ordered, and every recommendation carries its reasons, so a user
can see which fact about their data or which goal decided it. ``tuneforge advise --try`` then
measures the candidates instead of trusting the rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneforge.advisor.profile import LABELED, PREFERENCE, PROMPTS, TEXT, DataProfile
from tuneforge.errors import ValidationException

PROMPT_ONLY = "PROMPT_ONLY"
FINE_TUNING = "FINE_TUNING"
CONTINUED_PRE_TRAINING = "CONTINUED_PRE_TRAINING"
RAG = "RAG"
DISTILLATION = "DISTILLATION"
AUTOMATIC_TUNING = "AUTOMATIC_TUNING"
PREFERENCE_TUNING = "PREFERENCE_TUNING"
"""A FINE_TUNING job on a preference file, which trains with DPO (advice only: the bake-off does not
run it yet)."""

MIN_EXAMPLES_TO_TRAIN = 20
"""Below this many distinct labeled examples, put them in the prompt instead of training on them."""
ENOUGH_EXAMPLES = 100
"""From here a fine-tune usually beats the prompt (the demo task: 97% after 400 examples)."""
LARGE_CORPUS = 1000
"""Distinct documents from which continued pre-training pays for stable knowledge; below it a
retrieval index holds the corpus trivially and training mostly memorises phrasings."""
DUPLICATE_WARNING = 0.3
TEMPLATED_BIGRAMS = 0.2

GOAL_KEYS = {
    "quality": "qualityTarget",
    "latency-ms": "latencyBudgetMs",
    "cost": "costBudgetPer1kRequests",
    "knowledge-changes": "knowledgeChanges",
    "cite": "mustCite",
    "teacher": "teacherModelIdentifier",
}
"""CLI ``--goal`` keys -> the API's ``goals`` members."""


@dataclass(frozen=True)
class Goals:
    qualityTarget: float | None = None
    """Wanted held-out score, 0-1. Members are named as in the API's ``goals`` object."""
    latencyBudgetMs: float | None = None
    costBudgetPer1kRequests: float | None = None
    knowledgeChanges: bool = False
    mustCite: bool = False
    teacherModelIdentifier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def goals_from_dict(raw: Mapping[str, object]) -> Goals:
    """The API's ``goals`` object; unknown members and wrong types are refused by name."""
    unknown = sorted(set(raw) - set(GOAL_KEYS.values()))
    if unknown:
        raise ValidationException(f"goals: unknown member {unknown[0]!r}; known: {', '.join(GOAL_KEYS.values())}")
    values: dict[str, Any] = {}
    for name in ("qualityTarget", "latencyBudgetMs", "costBudgetPer1kRequests"):
        if raw.get(name) is not None:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValidationException(f"goals.{name}: expected a positive number")
            values[name] = float(value)
    if "qualityTarget" in values and values["qualityTarget"] > 1:
        values["qualityTarget"] /= 100
        if values["qualityTarget"] > 1:
            raise ValidationException("goals.qualityTarget: expected a share (0-1) or a percentage (0-100)")
    for name in ("knowledgeChanges", "mustCite"):
        if name in raw:
            if not isinstance(raw[name], bool):
                raise ValidationException(f"goals.{name}: expected true or false")
            values[name] = raw[name]
    teacher = raw.get("teacherModelIdentifier")
    if teacher is not None:
        if not isinstance(teacher, str) or not teacher.strip():
            raise ValidationException("goals.teacherModelIdentifier: expected a model id or ARN")
        values["teacherModelIdentifier"] = teacher.strip()
    return Goals(**values)


def goals_from_options(options: Sequence[str]) -> Goals:
    """``--goal quality=0.9 --goal latency-ms=300 --goal cost=2 --goal knowledge-changes --goal cite``
    ``--goal teacher=ID``, each option one goal."""
    raw: dict[str, object] = {}
    for option in options:
        key, has_value, value = option.partition("=")
        name = GOAL_KEYS.get(key.strip())
        if name is None:
            raise ValidationException(f"--goal {option!r}: unknown goal; known: {', '.join(GOAL_KEYS)}")
        if name in ("knowledgeChanges", "mustCite"):
            raw[name] = value.strip().lower() not in ("false", "no", "0") if has_value else True
        elif name == "teacherModelIdentifier":
            raw[name] = value
        else:
            try:
                raw[name] = float(value)
            except ValueError:
                raise ValidationException(f"--goal {option!r}: expected {key}=NUMBER") from None
    return goals_from_dict(raw)


@dataclass
class Advice:
    approach: str
    reasons: list[str]
    alternatives: list[dict[str, str]] = field(default_factory=list)
    """Other approaches worth measuring, each with why: the bake-off's arms besides the recommendation."""
    notes: list[str] = field(default_factory=list)
    """Facts about the data or goals that do not change the choice but matter for it."""
    profile: DataProfile | None = None
    documents: DataProfile | None = None
    goals: Goals = field(default_factory=Goals)

    def alternative(self, approach: str, why: str) -> None:
        if approach != self.approach and all(a["approach"] != approach for a in self.alternatives):
            self.alternatives.append({"approach": approach, "why": why})

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "reasons": self.reasons,
            "alternatives": self.alternatives,
            "notes": self.notes,
            "profile": self.profile.to_dict() if self.profile else None,
            "documentsProfile": self.documents.to_dict() if self.documents else None,
            "goals": self.goals.to_dict(),
        }


def advise(data: DataProfile, goals: Goals, documents: DataProfile | None = None) -> Advice:
    """Recommend one approach for ``data`` (and optional ``documents``) under ``goals``, with reasons."""
    corpus = documents if documents is not None else (data if data.kind == TEXT else None)
    labeled = data.distinct_records if data.kind == LABELED else 0
    advice = _choose(data, goals, corpus, labeled)
    advice.profile, advice.documents, advice.goals = data, documents, goals
    _add_notes(advice, data, goals)
    return advice


def _choose(data: DataProfile, goals: Goals, corpus: DataProfile | None, labeled: int) -> Advice:
    if goals.knowledgeChanges or goals.mustCite:
        why = []
        if goals.knowledgeChanges:
            why.append(
                "the knowledge changes: re-indexing a document takes seconds, while a trained model keeps an "
                "outdated fact until the next training job"
            )
        if goals.mustCite:
            why.append("answers must cite a source: a retrieved passage can be shown, a weight cannot")
        if corpus is None:
            why.append("pass the documents (--documents) so the bake-off can index them")
        advice = Advice(RAG, why)
        if labeled >= MIN_EXAMPLES_TO_TRAIN:
            advice.alternative(FINE_TUNING, "fine-tune the generator for the answer format; retrieval brings the facts")
        if corpus is not None:
            advice.alternative(CONTINUED_PRE_TRAINING, "measured for comparison: it learns the facts as of training")
        return advice
    if goals.teacherModelIdentifier and data.kind in (LABELED, PROMPTS):
        why = [f"a teacher is named ({goals.teacherModelIdentifier}): a small student can learn its answers"]
        if goals.latencyBudgetMs or goals.costBudgetPer1kRequests:
            why.append("a latency or cost budget is set: a smaller student answers faster and costs less per token")
        advice = Advice(DISTILLATION, why)
        if labeled >= MIN_EXAMPLES_TO_TRAIN:
            advice.alternative(FINE_TUNING, "fine-tune the student directly on your labels")
        return advice
    if data.kind == PREFERENCE:
        pairs = data.distinct_records
        if pairs < MIN_EXAMPLES_TO_TRAIN:
            return Advice(
                PROMPT_ONLY,
                [
                    f"only {pairs} distinct preference pairs (< {MIN_EXAMPLES_TO_TRAIN}): too few to train on; "
                    "show the preferred answers in the prompt and collect more"
                ],
            )
        advice = Advice(
            PREFERENCE_TUNING,
            [
                f"{pairs} distinct preference pairs: a FINE_TUNING job on this file trains with DPO, which "
                "moves the model toward the preferred answers and away from the others"
            ],
        )
        advice.alternative(
            FINE_TUNING,
            "supervised fine-tuning on the preferred answers alone: enough when they are good answers in their "
            "own right, and it teaches nothing from the rejected ones",
        )
        advice.alternative(PROMPT_ONLY, "the baseline every approach must beat")
        return advice
    if data.kind == LABELED:
        if labeled < MIN_EXAMPLES_TO_TRAIN:
            return Advice(
                PROMPT_ONLY,
                [
                    f"only {labeled} distinct labeled examples (< {MIN_EXAMPLES_TO_TRAIN}): too few to train on; "
                    "show them in the prompt and collect more"
                ],
            )
        why = [f"{labeled} distinct labeled examples: fine-tuning teaches this task in this format"]
        if labeled < ENOUGH_EXAMPLES:
            why.append(f"fewer than {ENOUGH_EXAMPLES}: compare with the prompt-only baseline before committing")
        advice = Advice(FINE_TUNING, why)
        advice.alternative(PROMPT_ONLY, "the baseline every approach must beat")
        if goals.qualityTarget is not None and labeled >= ENOUGH_EXAMPLES:
            advice.alternative(
                AUTOMATIC_TUNING,
                f'a quality target ({goals.qualityTarget:.0%}) is set: a hyperparameter search ("auto") finds a '
                "better configuration when the defaults underfit",
            )
        if corpus is not None:
            advice.alternative(CONTINUED_PRE_TRAINING, "your documents may add stable domain knowledge first")
            advice.alternative(RAG, "retrieval over your documents needs no training")
        return advice
    if corpus is not None:
        if corpus.distinct_records >= LARGE_CORPUS:
            advice = Advice(
                CONTINUED_PRE_TRAINING,
                [
                    f"{corpus.distinct_records} distinct documents and stable knowledge: continued pre-training "
                    "makes the model know the domain without being told on every request"
                ],
            )
            advice.alternative(RAG, "retrieval over the same documents, for facts that change or must be cited")
            return advice
        advice = Advice(
            RAG,
            [
                f"{corpus.distinct_records} distinct documents (< {LARGE_CORPUS}): a small corpus fits a retrieval "
                "index trivially, while training on it mostly memorises phrasings"
            ],
        )
        advice.alternative(CONTINUED_PRE_TRAINING, "measured for comparison on the same documents")
        return advice
    return Advice(
        PROMPT_ONLY,
        ["prompts without answers and no teacher: nothing to train on; label them, or name a teacher to distil"],
    )


def _add_notes(advice: Advice, data: DataProfile, goals: Goals) -> None:
    if data.duplicate_share > DUPLICATE_WARNING:
        advice.notes.append(
            f"{data.duplicate_share:.0%} of the records repeat an earlier prompt: deduplicate; "
            f"{data.distinct_records} distinct records are what counts"
        )
    if data.distinct_bigram_ratio < TEMPLATED_BIGRAMS:
        advice.notes.append(
            f"templated text ({data.distinct_bigram_ratio:.0%} distinct word pairs): a model learns the template "
            "fast; make sure held-out prompts vary the phrasing"
        )
    if goals.latencyBudgetMs is not None and advice.approach == RAG:
        advice.notes.append(
            f"latency budget {goals.latencyBudgetMs:.0f} ms: retrieval adds a search and longer prompts; "
            "--try measures the p50"
        )
    if goals.qualityTarget is not None:
        advice.notes.append(f"quality target {goals.qualityTarget:.0%}: --try measures each approach against it")


def arms(advice: Advice, has_documents: bool) -> list[str]:
    """The bake-off's arms: the prompt-only baseline, the recommendation and its alternatives, where the
    data allows them (automatic tuning runs as its own customization job type elsewhere, so it is advice only)."""
    wanted = [PROMPT_ONLY, advice.approach, *(a["approach"] for a in advice.alternatives)]
    data = advice.profile
    labeled = data is not None and data.kind == LABELED
    if labeled:
        wanted.append(FINE_TUNING)
    if has_documents:
        wanted += [CONTINUED_PRE_TRAINING, RAG]
    if advice.goals.teacherModelIdentifier:
        wanted.append(DISTILLATION)
    runnable = {PROMPT_ONLY, FINE_TUNING, CONTINUED_PRE_TRAINING, RAG, DISTILLATION}
    if not has_documents:
        runnable -= {CONTINUED_PRE_TRAINING, RAG}
    if not labeled:
        runnable.discard(FINE_TUNING)
    if not advice.goals.teacherModelIdentifier:
        runnable.discard(DISTILLATION)
    order = [PROMPT_ONLY, FINE_TUNING, CONTINUED_PRE_TRAINING, RAG, DISTILLATION]
    return [arm for arm in order if arm in runnable and arm in wanted]
