"""``POST /v1/fine_tuning/alpha/graders/validate`` and ``/run``: OpenAI's grader endpoints.

``validate`` parses the grader object and answers it back, or a 400 whose ``param`` names the member
that is wrong. ``run`` grades one ``model_sample`` (with the dataset ``item`` its templates read) and
answers OpenAI's shape: the ``reward``, the sub-graders' scores, and error flags in ``metadata``
(a grader that fails on the sample is a 200 with the flag set and ``reward`` 0, as OpenAI answers).
A ``score_model`` grader calls its model through this server's own chat completions path, in process.
Grading runs on a worker thread, so a Python grader's sandbox process never blocks the event loop,
and at most ``grader_concurrency`` runs grade at once (the others wait for a turn).
"""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request

from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_openai, get_services
from tuneforge.api.openai.protocol import ChatCompletionRequest, parse_request
from tuneforge.api.openai.serving import OpenAIServing
from tuneforge.api.runtime.routes import caller
from tuneforge.graders import Grade, GraderConfigError, GraderContext, JudgeRequest, Sample
from tuneforge.graders.judge import chat_body
from tuneforge.graders.openai_graders import MultiGrader, OpenAIContext, build, parse_spec
from tuneforge.services import Services
from tuneforge.serving.runtime import InvalidParameter

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders")
ServingDep = Annotated[OpenAIServing, Depends(get_openai)]
ServicesDep = Annotated[Services, Depends(get_services)]
MAX_SAMPLE_CHARS = 1 << 20

ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)


def _spec(body: dict[str, Any]) -> Any:
    if "grader" not in body:
        raise InvalidParameter("Missing required parameter: 'grader'", "grader")
    try:
        return parse_spec(body["grader"])
    except GraderConfigError as exc:
        raise InvalidParameter(exc.message, exc.param or "grader") from None


@router.post("/validate")
async def validate(request: Request) -> dict[str, Any]:
    body = json_object(await request.body())
    unknown = sorted(set(body) - {"grader"})
    if unknown:
        raise InvalidParameter(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    _spec(body)
    return {"grader": body["grader"]}


@router.post("/run")
async def run(request: Request, serving: ServingDep, services: ServicesDep) -> dict[str, Any]:
    body = json_object(await request.body())
    unknown = sorted(set(body) - {"grader", "model_sample", "item"})
    if unknown:
        raise InvalidParameter(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    spec = _spec(body)
    model_sample, item = body.get("model_sample"), body.get("item", {})
    if not isinstance(model_sample, str):
        raise InvalidParameter("'model_sample' must be a string", "model_sample")
    if len(model_sample) > MAX_SAMPLE_CHARS:
        raise InvalidParameter(f"'model_sample' is longer than {MAX_SAMPLE_CHARS} characters", "model_sample")
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise InvalidParameter("'item' must be an object", "item")

    usage: dict[str, int] = {}
    who = caller(request)

    def complete(judge: JudgeRequest) -> str:
        chat = chat_body(judge)
        response = anyio.from_thread.run(serving.chat, parse_request(ChatCompletionRequest, chat), chat, who)
        tokens = int(response.get("usage", {}).get("total_tokens", 0))
        usage[judge.model] = usage.get(judge.model, 0) + tokens
        return str(response["choices"][0]["message"]["content"] or "")

    base = GraderContext.from_settings(services.settings, complete, services.store)
    context = OpenAIContext(base.limits, complete)
    started = time.monotonic()
    grade, sub_grades = await anyio.to_thread.run_sync(
        functools.partial(_build_and_grade, spec, context, Sample((), model_sample, item)),
        limiter=_limiter(request, services.settings.grader_concurrency),
    )
    elapsed = time.monotonic() - started
    errors: dict[str, Any] = dict.fromkeys(ERROR_FLAGS, False)
    for name, failed in sub_grades.items():
        if failed.error is not None:
            _flag(errors, _type_of(spec, name), failed.error)
    if grade.error is not None and not any(errors.values()):
        _flag(errors, spec.type, grade.error)
    scores = {name: got.score for name, got in sub_grades.items()} or {spec.name: grade.score}
    return {
        "reward": grade.score if grade.score is not None else 0.0,
        "metadata": {
            "name": spec.name,
            "type": spec.type,
            "errors": errors,
            "execution_time": elapsed,
            "scores": scores,
            "token_usage": sum(usage.values()) if usage else None,
            "sampled_model_name": next(iter(usage), None),
        },
        "sub_rewards": {name: score for name, score in scores.items() if score is not None},
        "model_grader_token_usage_per_model": usage,
    }


def _limiter(request: Request, concurrency: int) -> anyio.CapacityLimiter:
    """The app's grader-run limiter, made on first use (in the event loop, as anyio wants)."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "grader_limiter", None)
    if limiter is None:
        limiter = request.app.state.grader_limiter = anyio.CapacityLimiter(concurrency)
    return limiter


def _build_and_grade(spec: Any, context: OpenAIContext, sample: Sample) -> tuple[Grade, dict[str, Grade]]:
    """On a worker thread: building a Python grader starts a sandbox to check that one can run."""
    try:
        grader = build(spec, context)
    except GraderConfigError as exc:
        raise InvalidParameter(exc.message, exc.param or "grader") from None
    if isinstance(grader, MultiGrader):
        subs = {name: sub.grade([sample]) for name, sub in grader.graders.items()}
        return grader.combine(subs)[0], {name: grades[0] for name, grades in subs.items()}
    return grader.grade([sample])[0], {}


def _type_of(spec: Any, name: str) -> str:
    graders: Any = getattr(spec, "graders", None)
    if isinstance(graders, dict) and name in graders:
        return str(graders[name].type)
    if graders is not None and getattr(graders, "name", None) == name:
        return str(graders.type)
    return str(spec.type)


def _flag(errors: dict[str, Any], grader_type: str, error: str) -> None:
    if "template variable" in error:
        errors["invalid_variable_error"] = True
    elif "calculate_output" in error:
        errors["formula_parse_error"] = True
    elif grader_type == "python":
        if "sandbox is unavailable" in error or "grader process" in error:
            errors["python_grader_server_error"] = True
            errors["python_grader_server_error_type"] = "sandbox"
        elif "timed out" in error:
            errors["unresponsive_reward_error"] = True
        else:
            errors["python_grader_runtime_error"] = True
            errors["python_grader_runtime_error_details"] = error
    elif grader_type == "score_model":
        key = "model_grader_parse_error" if "reply" in error or "score" in error else "model_grader_server_error"
        errors[key] = True
        if key == "model_grader_server_error":
            errors["model_grader_server_error_details"] = error
    else:
        errors["other_error"] = True
