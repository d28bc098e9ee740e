"""Grader configurations -> graders, and the graders registered in the object store.

A configuration is one of:

- Bedrock's ``graderConfig``: ``{"lambdaGrader": {"lambdaArn": "arn:aws:lambda:<region>:<account>:function:<name>"}}``.
  tuneforge has no Lambda, so ``<name>`` names a built-in grader (:data:`BUILTIN`) or a grader
  registered in tuneforge (:class:`GraderRegistry`).
- ``{"openai": <grader object>}``: one of OpenAI's grader objects (:mod:`tuneforge.graders.openai_graders`).

A registered grader is a file under the registry prefix of the object store (``grader_registry_uri``,
default ``s3://tuneforge/graders``): ``<name>.py``, the code of a Lambda grader, run in the sandbox,
defining Bedrock's ``lambda_grader(samples) -> results`` (or ``lambda_handler(event, context)``); or
``<name>.json``, an OpenAI grader object, or ``{"type": "judge", "model", "rubric", "range"}`` for a
judge model with a rubric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.graders.base import Grade, Grader, GraderConfigError, Sample
from tuneforge.graders.builtin import ExactMatch, JsonSchemaValid, NumericTolerance, RegexMatch, reference_text
from tuneforge.graders.judge import Complete, ModelJudge
from tuneforge.graders.openai_graders import OpenAIContext, check_python_source, load_openai_grader
from tuneforge.graders.sandbox import SandboxLimits, check_sandbox, run_sandboxed
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore, StorageError

__all__ = ["BUILTIN", "GraderContext", "GraderRegistry", "load_grader", "reference_text"]

LAMBDA_ARN = re.compile(
    r"arn:aws[a-z-]*:lambda:[a-z0-9-]*:\d{12}:function:(?P<name>[A-Za-z0-9_-]{1,64})(:[A-Za-z0-9$_-]+)?"
)
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A registered grader's name (matched whole, with ``fullmatch``)."""
RESERVED_PREFIX = "tuneforge-"
DEFAULT_REGISTRY_URI = "s3://tuneforge/graders"
MAX_FILE_BYTES = 256 * 1024
LAMBDA_FUNCTIONS = ("lambda_grader", "lambda_handler")

BUILTIN: dict[str, Callable[[], Grader]] = {
    "tuneforge-exact-match": ExactMatch,
    "tuneforge-regex": RegexMatch,
    "tuneforge-json-schema": JsonSchemaValid,
    "tuneforge-numeric": NumericTolerance,
}
"""Built-in grader name (the function name in a ``lambdaArn``) -> a factory. The judge model is
registered (a ``.json`` file naming the model and rubric), since it needs both."""


@dataclass(frozen=True)
class GraderContext:
    """What loading a grader may need beyond its configuration."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    store: ObjectStore | None = None
    """Where registered graders live; None: only built-in and OpenAI graders load."""
    registry_uri: str = DEFAULT_REGISTRY_URI
    complete: Complete | None = None
    """How judge and ``score_model`` graders reach their model; None refuses them."""
    check_sandbox: bool = True

    @classmethod
    def from_settings(
        cls, settings: Settings, complete: Complete | None = None, store: ObjectStore | None = None
    ) -> GraderContext:
        """The limits and registry ``settings`` name; ``store`` reuses an open object store."""
        limits = SandboxLimits(settings.grader_timeout_s, settings.grader_cpu_s, settings.grader_memory_bytes)
        return cls(limits, store or ObjectStore.from_settings(settings), settings.grader_registry_uri, complete)

    @classmethod
    def for_checking(cls, settings: Settings, store: ObjectStore | None = None) -> GraderContext:
        """Loads every grader a job may name, to refuse a bad one at create time: judge and
        ``score_model`` graders load with a model call that is never made (the job's worker makes them)."""
        return cls.from_settings(settings, _unused, store)


@dataclass(frozen=True)
class LambdaFileGrader:
    """A registered Lambda grader: Bedrock's event per sample, the whole batch in one sandbox call."""

    name: str
    source: str
    limits: SandboxLimits

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return run_sandboxed(self.source, "lambda", [lambda_event(i, s) for i, s in enumerate(samples)], self.limits)


def lambda_event(index: int, sample: Sample) -> dict[str, Any]:
    """Bedrock's reward-function input: the record with the generated answer appended as the last turn."""
    messages = [{"role": role, "content": text} for role, text in sample.messages]
    messages.append({"role": "assistant", "content": sample.response})
    return {**dict(sample.item), "id": str(index), "messages": messages}


class GraderRegistry:
    """Registered graders as files under one prefix of the object store: register, list, load, delete."""

    def __init__(self, store: ObjectStore, uri: str = DEFAULT_REGISTRY_URI) -> None:
        self.store = store
        self.uri = uri.rstrip("/")

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.fullmatch(name):
            raise GraderConfigError(f"grader name {name!r} must be 1-64 letters, digits, '-' or '_'", "name")
        if name.startswith(RESERVED_PREFIX):
            raise GraderConfigError(
                f"grader names starting with {RESERVED_PREFIX!r} are reserved for built-ins", "name"
            )

    def register(self, name: str, filename: str, data: bytes) -> str:
        """Check and store a grader file (``.py`` or ``.json``); its URI."""
        self.check_name(name)
        if len(data) > MAX_FILE_BYTES:
            raise GraderConfigError(f"a grader file may hold at most {MAX_FILE_BYTES} bytes", "file")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise GraderConfigError(f"{filename} is not UTF-8 text", "file") from None
        if filename.endswith(".py"):
            check_python_source(text, LAMBDA_FUNCTIONS, filename)
            kind = "py"
        elif filename.endswith(".json"):
            json_grader(name, _json(text, filename), GraderContext(check_sandbox=False), validate_only=True)
            kind = "json"
        else:
            raise GraderConfigError(f"{filename}: a grader file is a .py (Lambda grader) or .json (grader object)")
        for other in ("py", "json"):
            if other != kind:
                self.store.delete(f"{self.uri}/{name}.{other}")
        uri = f"{self.uri}/{name}.{kind}"
        self.store.write_bytes(uri, data)
        return uri

    def names(self) -> list[tuple[str, str]]:
        """(name, kind) of every registered grader, sorted."""
        try:
            found = list(self.store.list(self.uri + "/"))
        except StorageError:
            return []
        entries = []
        for uri in found:
            stem, _, kind = uri.rsplit("/", 1)[-1].rpartition(".")
            if kind in {"py", "json"} and NAME.fullmatch(stem):
                entries.append((stem, kind))
        return sorted(entries)

    def delete(self, name: str) -> bool:
        self.check_name(name)
        found = False
        for kind in ("py", "json"):
            uri = f"{self.uri}/{name}.{kind}"
            if self.store.exists(uri):
                self.store.delete(uri)
                found = True
        return found

    def load(self, name: str, context: GraderContext) -> Grader | None:
        for kind in ("py", "json"):
            uri = f"{self.uri}/{name}.{kind}"
            if not self.store.exists(uri):
                continue
            text = self.store.read_bytes(uri).decode()
            if kind == "py":
                if context.check_sandbox:
                    check_sandbox()
                return LambdaFileGrader(name, text, context.limits)
            return json_grader(name, _json(text, uri), context)
        return None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise GraderConfigError(f"{where} is not JSON: {exc}") from None


def json_grader(name: str, spec: Any, context: GraderContext, *, validate_only: bool = False) -> Grader:
    """A registered ``.json`` grader: a judge with a rubric, or an OpenAI grader object."""
    if isinstance(spec, Mapping) and spec.get("type") == "judge":
        model, rubric, bounds = spec.get("model"), spec.get("rubric"), spec.get("range", [0, 1])
        unknown = set(spec) - {"type", "model", "rubric", "range"}
        if unknown:
            raise GraderConfigError(f"a judge grader has no member {sorted(unknown)[0]!r}")
        if not isinstance(model, str) or not model or not isinstance(rubric, str) or not rubric.strip():
            raise GraderConfigError('a judge grader needs "model" (a model id) and "rubric" (text)')
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds)
            and bounds[0] < bounds[1]
        ):
            raise GraderConfigError('a judge grader\'s "range" is two numbers, low < high')
        if context.complete is None:
            if validate_only:
                return ExactMatch()  # placeholder: the file is valid; nothing is graded at registration
            raise GraderConfigError(f"the judge grader {name!r} needs a model to call, and none is reachable here")
        return ModelJudge(
            model, context.complete, rubric=rubric, low=float(bounds[0]), high=float(bounds[1]), name=name
        )
    openai_context = OpenAIContext(
        context.limits, context.complete if not validate_only else _unused, context.check_sandbox and not validate_only
    )
    return load_openai_grader(spec, openai_context)


def _unused(_request: Any) -> str:
    raise GraderConfigError("a grader loaded only to be checked calls no model")


def load_grader(config: Mapping[str, Any], context: GraderContext | None = None) -> Grader:
    """The grader a configuration names; :class:`GraderConfigError` says what is wrong with it."""
    context = context or GraderContext()
    if "openai" in config:
        return json_grader("openai", config["openai"], context)
    lambda_grader = config.get("lambdaGrader")
    if not isinstance(lambda_grader, Mapping):
        raise GraderConfigError("graderConfig needs lambdaGrader.lambdaArn")
    arn = lambda_grader.get("lambdaArn")
    match = LAMBDA_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise GraderConfigError(f"graderConfig.lambdaGrader.lambdaArn is not a Lambda function ARN: {arn!r}")
    name = match.group("name")
    if name in BUILTIN:
        return BUILTIN[name]()
    if context.store is not None:
        try:
            grader = GraderRegistry(context.store, context.registry_uri).load(name, context)
        except StorageError as exc:
            raise GraderConfigError(f"the grader {name!r} cannot be read: {exc}") from None
        if grader is not None:
            return grader
    raise GraderConfigError(
        f"no grader named {name!r}; built-in graders: {', '.join(sorted(BUILTIN))}; "
        "register your own with `tuneforge graders register`"
    )
