"""OpenAI's grader objects (reinforcement fine-tuning and ``/v1/fine_tuning/alpha/graders``) as graders.

Supported: ``string_check``, ``text_similarity`` (the offline metrics: ``fuzzy_match``, ``bleu``,
``gleu``, ``rouge_1`` … ``rouge_5``, ``rouge_l``; ``cosine`` needs an embedding model and ``meteor``
WordNet's data, and both are refused), ``python`` (run in the sandbox), ``score_model`` (a model
tuneforge serves, as judge) and ``multi`` (its ``calculate_output`` formula is parsed into a small
arithmetic tree and evaluated without ``eval``). ``label_model`` is refused. Templates
(``{{ sample.output_text }}``, ``{{ item.x }}``) are checked when the grader is parsed and filled per sample.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tuneforge.graders.base import Grade, Grader, GraderConfigError, Sample
from tuneforge.graders.judge import Complete, ModelJudge
from tuneforge.graders.sandbox import SandboxLimits, check_sandbox, run_sandboxed
from tuneforge.graders.templates import TemplateError, check_template, render, sample_namespace

MAX_SOURCE_CHARS = 256 * 1024
MAX_FORMULA_CHARS = 1000
OFFLINE_METRICS = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StringCheck(_Object):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarity(_Object):
    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]


class PythonSpec(_Object):
    type: Literal["python"]
    name: str
    source: str = Field(max_length=MAX_SOURCE_CHARS)
    image_tag: str | None = None
    """Accepted for compatibility; tuneforge has one sandbox image, this Python."""


class TextContent(_Object):
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(_Object):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | TextContent | list[TextContent]
    type: Literal["message"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, TextContent):
            return self.content.text
        return "\n".join(part.text for part in self.content)


class SamplingParams(_Object):
    max_completions_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    reasoning_effort: str | None = None


class ScoreModelSpec(_Object):
    type: Literal["score_model"]
    name: str
    model: str = Field(min_length=1)
    input: list[InputMessage] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None


class LabelModelSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["label_model"]


SubGrader = Annotated[
    StringCheck | TextSimilarity | PythonSpec | ScoreModelSpec | LabelModelSpec, Field(discriminator="type")
]


class MultiSpec(_Object):
    type: Literal["multi"]
    name: str
    graders: dict[str, SubGrader] | SubGrader
    calculate_output: str = Field(max_length=MAX_FORMULA_CHARS)


GraderSpec = Annotated[
    StringCheck | TextSimilarity | PythonSpec | ScoreModelSpec | MultiSpec | LabelModelSpec, Field(discriminator="type")
]
_SPEC: TypeAdapter[Any] = TypeAdapter(GraderSpec)


@dataclass(frozen=True)
class OpenAIContext:
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    complete: Complete | None = None
    """How a ``score_model`` grader reaches its model; None refuses ``score_model``."""
    check_sandbox: bool = True
    """Refuse ``python`` graders up front when this machine cannot sandbox them."""


def parse_spec(grader: Any) -> Any:
    """The grader object as its typed spec; :class:`GraderConfigError` naming the member that is wrong."""
    if not isinstance(grader, Mapping):
        raise GraderConfigError('the grader must be an object with a "type"', "grader")
    try:
        spec = _SPEC.validate_python(dict(grader))
    except ValidationError as exc:
        first = exc.errors()[0]
        location = [str(part) for part in first["loc"]]
        # the discriminator's tag is the first location part of a union member's error
        if location and location[0] in {"string_check", "text_similarity", "python", "score_model", "multi"}:
            location = location[1:]
        where = ".".join(["grader", *location])
        if first["type"] == "extra_forbidden":
            raise GraderConfigError(f"Unrecognized grader argument supplied: {where}", where) from None
        if first["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            message = f"{where}.type must be one of string_check, text_similarity, python, score_model, multi"
            raise GraderConfigError(message, "grader.type") from None
        raise GraderConfigError(f"Invalid value for '{where}': {first['msg']}", where) from None
    _check(spec, "grader")
    return spec


def _check(spec: Any, where: str) -> None:
    if isinstance(spec, LabelModelSpec):
        raise GraderConfigError(f"{where}: label_model graders are not supported; use score_model", f"{where}.type")
    if isinstance(spec, (StringCheck, TextSimilarity)):
        for member in ("input", "reference"):
            _template(getattr(spec, member), f"{where}.{member}")
    if isinstance(spec, TextSimilarity) and spec.evaluation_metric not in OFFLINE_METRICS:
        raise GraderConfigError(
            f"{where}.evaluation_metric {spec.evaluation_metric!r} is not supported offline; "
            f"use one of {', '.join(OFFLINE_METRICS)}",
            f"{where}.evaluation_metric",
        )
    if isinstance(spec, PythonSpec):
        check_python_source(spec.source, ("grade",), f"{where}.source")
    if isinstance(spec, ScoreModelSpec):
        for index, message in enumerate(spec.input):
            _template(message.text(), f"{where}.input.{index}.content")
        if spec.range is not None and (
            len(spec.range) != 2 or not all(math.isfinite(v) for v in spec.range) or spec.range[0] >= spec.range[1]
        ):
            raise GraderConfigError(f"{where}.range must be two finite numbers, low < high", f"{where}.range")
    if isinstance(spec, MultiSpec):
        graders = sub_graders(spec)
        for name, sub in graders.items():
            if isinstance(sub, MultiSpec):
                raise GraderConfigError(f"{where}.graders.{name}: multi graders do not nest", f"{where}.graders")
            _check(sub, f"{where}.graders.{name}")
        Formula.parse(spec.calculate_output, set(graders), f"{where}.calculate_output")


def _template(text: str, where: str) -> None:
    try:
        check_template(text, where)
    except ValueError as exc:
        raise GraderConfigError(str(exc), where) from None


def sub_graders(spec: MultiSpec) -> dict[str, Any]:
    if isinstance(spec.graders, dict):
        if not spec.graders:
            raise GraderConfigError("grader.graders must name at least one grader", "grader.graders")
        return dict(spec.graders)
    return {spec.graders.name if hasattr(spec.graders, "name") else "grader": spec.graders}


def check_python_source(source: str, functions: Sequence[str], where: str) -> None:
    """Compile (never run) the source and check it defines one of ``functions`` at top level."""
    try:
        tree = ast.parse(source, "<grader>")
    except SyntaxError as exc:
        raise GraderConfigError(f"{where}: line {exc.lineno}: {exc.msg}", where) from None
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if not defined & set(functions):
        raise GraderConfigError(f"{where} must define a function {' or '.join(functions)}", where)


# -- the calculate_output formula ------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # OpenAI's formulas write powers as a ^ b
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}


@dataclass(frozen=True)
class Formula:
    """``calculate_output``: numbers, grader names, + - * / ^ (or **), parentheses, and
    min, max, abs, floor, ceil, exp, sqrt, log; nothing else parses."""

    tree: ast.expr

    @classmethod
    def parse(cls, text: str, names: set[str], where: str) -> Formula:
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise GraderConfigError(f"{where} is not a formula: {exc.msg}", where) from None
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in names and id(node) not in called:
                known = ", ".join(sorted(names))
                raise GraderConfigError(f"{where}: {node.id!r} is not one of the graders ({known})", where)
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                    raise GraderConfigError(f"{where}: only {', '.join(_FUNCTIONS)} may be called", where)
            elif isinstance(node, ast.BinOp):
                if type(node.op) not in _BINARY:
                    raise GraderConfigError(f"{where}: operator {type(node.op).__name__} is not allowed", where)
            elif isinstance(node, ast.UnaryOp):
                if not isinstance(node.op, (ast.UAdd, ast.USub)):
                    raise GraderConfigError(f"{where}: operator {type(node.op).__name__} is not allowed", where)
            elif isinstance(node, ast.Constant):
                if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                    raise GraderConfigError(f"{where}: {node.value!r} is not a number", where)
            elif not isinstance(node, (ast.Name, ast.Load, ast.operator, ast.unaryop)):
                raise GraderConfigError(f"{where}: {type(node).__name__} is not allowed in a formula", where)
        return cls(tree)

    def evaluate(self, values: Mapping[str, float]) -> float:
        return float(self._eval(self.tree, values))

    def _eval(self, node: ast.expr, values: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, (int, float))
            return float(node.value)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, values)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, values), self._eval(node.right, values)
            if isinstance(node.op, (ast.Pow, ast.BitXor)) and abs(right) > 64:
                raise ValueError("an exponent above 64 in calculate_output")
            return _BINARY[type(node.op)](left, right)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return float(_FUNCTIONS[node.func.id](*(self._eval(arg, values) for arg in node.args)))


# -- graders ----------------------------------------------------------------------------------------


def _templated(samples: Sequence[Sample], score: Callable[[Sample], float]) -> list[Grade]:
    grades = []
    for sample in samples:
        try:
            grades.append(Grade.checked(score(sample)))
        except TemplateError as exc:
            grades.append(Grade(None, str(exc)))
    return grades


@dataclass(frozen=True)
class StringCheckGrader:
    spec: StringCheck

    @property
    def name(self) -> str:
        return self.spec.name

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        def one(sample: Sample) -> float:
            given, reference = render(self.spec.input, sample), render(self.spec.reference, sample)
            if self.spec.operation == "eq":
                return float(given == reference)
            if self.spec.operation == "ne":
                return float(given != reference)
            if self.spec.operation == "like":
                return float(reference in given)
            return float(reference.casefold() in given.casefold())

        return _templated(samples, one)


def similarity(metric: str, given: str, reference: str) -> float:
    if metric == "fuzzy_match":
        return difflib.SequenceMatcher(None, given, reference).ratio()
    if metric in {"bleu", "gleu"}:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from nltk.translate.gleu_score import sentence_gleu

        hypothesis, references = given.split(), [reference.split()]
        if not hypothesis or not references[0]:
            return float(hypothesis == references[0])
        if metric == "gleu":
            return float(sentence_gleu(references, hypothesis))
        return float(sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1))
    from rouge_score import rouge_scorer

    kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
    return float(rouge_scorer.RougeScorer([kind]).score(reference, given)[kind].fmeasure)


@dataclass(frozen=True)
class TextSimilarityGrader:
    spec: TextSimilarity

    @property
    def name(self) -> str:
        return self.spec.name

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return _templated(
            samples,
            lambda s: similarity(
                self.spec.evaluation_metric, render(self.spec.input, s), render(self.spec.reference, s)
            ),
        )


@dataclass(frozen=True)
class PythonGrader:
    """OpenAI's ``python`` grader: ``grade(sample, item) -> float`` in the sandbox, one process per batch."""

    source: str
    limits: SandboxLimits
    name: str = "python"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        calls = [(sample_namespace(sample), dict(sample.item)) for sample in samples]
        return run_sandboxed(self.source, "grade", calls, self.limits)


@dataclass(frozen=True)
class MultiGrader:
    name: str
    graders: dict[str, Grader]
    formula: Formula

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return self.combine({name: grader.grade(samples) for name, grader in self.graders.items()})

    def combine(self, by_grader: Mapping[str, Sequence[Grade]]) -> list[Grade]:
        """Each sample's grade from its sub-graders' grades, through the formula."""
        count = len(next(iter(by_grader.values())))
        grades = []
        for index in range(count):
            failed = [
                (name, grades_[index].error) for name, grades_ in by_grader.items() if grades_[index].score is None
            ]
            if failed:
                grades.append(Grade(None, "; ".join(f"grader {name!r}: {error}" for name, error in failed)))
                continue
            values = {name: float(grades_[index].score or 0.0) for name, grades_ in by_grader.items()}
            try:
                grades.append(Grade.checked(self.formula.evaluate(values)))
            except (ArithmeticError, ValueError, TypeError) as exc:
                grades.append(Grade(None, f"calculate_output failed: {exc}"))
        return grades


def build(spec: Any, context: OpenAIContext) -> Grader:
    """A parsed spec (see :func:`parse_spec`) as a grader."""
    if isinstance(spec, StringCheck):
        return StringCheckGrader(spec)
    if isinstance(spec, TextSimilarity):
        return TextSimilarityGrader(spec)
    if isinstance(spec, PythonSpec):
        if context.check_sandbox:
            check_sandbox()
        return PythonGrader(spec.source, context.limits, spec.name)
    if isinstance(spec, ScoreModelSpec):
        return score_model(spec, context)
    assert isinstance(spec, MultiSpec)
    graders = {name: build(sub, context) for name, sub in sub_graders(spec).items()}
    return MultiGrader(spec.name, graders, Formula.parse(spec.calculate_output, set(graders), "calculate_output"))


def score_model(spec: ScoreModelSpec, context: OpenAIContext) -> ModelJudge:
    if context.complete is None:
        raise GraderConfigError("score_model graders need a model to call, and none is reachable here", "grader.model")
    low, high = spec.range if spec.range is not None else (0.0, 1.0)
    params = spec.sampling_params or SamplingParams()
    instruction = (
        "system",
        f'Reply with JSON {{"score": <number from {low:g} to {high:g}>}} and nothing else.',
    )

    def messages(sample: Sample) -> tuple[tuple[str, str], ...]:
        rendered = tuple((m.role if m.role != "developer" else "system", render(m.text(), sample)) for m in spec.input)
        return (instruction, *rendered)

    return ModelJudge(
        spec.model,
        context.complete,
        render=messages,
        low=low,
        high=high,
        max_tokens=params.max_completions_tokens or 32,
        temperature=params.temperature if params.temperature is not None else 0.0,
        seed=params.seed,
        name=spec.name,
    )


def load_openai_grader(grader: Any, context: OpenAIContext | None = None) -> Grader:
    return build(parse_spec(grader), context or OpenAIContext())
