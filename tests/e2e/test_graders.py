"""OpenAI's grader endpoints end to end: the openai SDK's ``fine_tuning.alpha.graders`` against a real server.

No training: the graders run in the API process (Python ones in their sandbox), and the ``score_model``
judge is the built-in micro model served on demand, its reply held to ``{"score": n}`` by structured
output.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import STUDENT_MODEL, Server, cli, unique
from tuneforge.graders import GraderConfigError, GraderContext, Sample, http_complete, load_grader

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


CHECK: Any = {
    "type": "string_check",
    "name": "capital",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "ilike",
}


def test_validate_answers_a_good_grader_and_names_the_member_of_a_bad_one(sdk: openai.OpenAI) -> None:
    assert sdk.fine_tuning.alpha.graders.validate(grader=CHECK).grader is not None
    bad = {
        "type": "multi",
        "name": "m",
        "graders": {"capital": CHECK},
        "calculate_output": "capital + __import__('os').getpid()",
    }
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.fine_tuning.alpha.graders.validate(grader=bad)  # type: ignore[arg-type]
    assert exc.value.param == "grader.calculate_output"
    assert exc.value.body is not None and "may be called" in str(exc.value.body)


def test_run_fills_templates_and_combines_sub_graders(sdk: openai.OpenAI) -> None:
    item = {"reference_answer": "Paris"}
    good = sdk.fine_tuning.alpha.graders.run(grader=CHECK, model_sample="It is paris.", item=item)
    bad = sdk.fine_tuning.alpha.graders.run(grader=CHECK, model_sample="Rome", item=item)
    assert (good.reward, bad.reward) == (1.0, 0.0)
    assert not any(v for k, v in good.metadata.errors.model_dump().items() if isinstance(v, bool))
    multi: Any = {
        "type": "multi",
        "name": "combined",
        "graders": {
            "capital": CHECK,
            "similar": {
                "type": "text_similarity",
                "name": "similar",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.5 * capital + 0.5 * similar",
    }
    result = sdk.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris", item=item)
    assert result.reward == 1.0 and result.sub_rewards == {"capital": 1.0, "similar": 1.0}


def test_python_graders_run_sandboxed_and_report_their_failures(sdk: openai.OpenAI) -> None:
    source = (
        "import socket\n"
        "def grade(sample, item):\n"
        "    print('not a score')\n"
        "    if item.get('port'):\n"
        "        socket.create_connection(('127.0.0.1', item['port']), timeout=2)\n"
        "    if item.get('fail'):\n"
        "        raise KeyError('missing')\n"
        "    return 0.75 if sample['output_text'] == item['reference_answer'] else 0.0\n"
    )
    grader: Any = {"type": "python", "name": "py", "source": source}
    run = sdk.fine_tuning.alpha.graders.run
    assert run(grader=grader, model_sample="42", item={"reference_answer": "42"}).reward == 0.75
    failed = run(grader=grader, model_sample="42", item={"reference_answer": "42", "fail": True})
    assert failed.reward == 0.0 and failed.metadata.errors.python_grader_runtime_error
    assert "KeyError" in (failed.metadata.errors.python_grader_runtime_error_details or "")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        blocked = run(grader=grader, model_sample="42", item={"reference_answer": "42", "port": port})
    assert blocked.metadata.errors.python_grader_runtime_error
    assert "without network access" in (blocked.metadata.errors.python_grader_runtime_error_details or "")


def test_grader_runs_past_the_concurrency_limit_wait_their_turn(
    server: Server, sdk: openai.OpenAI, tmp_path: Path
) -> None:
    """Each run's sandboxed grader writes when it starts and ends; no more than ``grader_concurrency``
    of them are ever inside at once, and every run still gets its reward."""
    limit = server.settings.grader_concurrency
    log = tmp_path / "intervals"
    source = (
        "import os, time\n"
        "def grade(sample, item):\n"
        "    with open(item['log'], 'a') as f: f.write(f'{time.time()} 1\\n')\n"
        "    time.sleep(0.5)\n"
        "    with open(item['log'], 'a') as f: f.write(f'{time.time()} -1\\n')\n"
        "    return 1.0\n"
    )
    grader: Any = {"type": "python", "name": "slow", "source": source}
    with ThreadPoolExecutor(limit + 3) as pool:
        runs = list(
            pool.map(
                lambda _: sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="x", item={"log": str(log)}),
                range(limit + 3),
            )
        )
    assert [r.reward for r in runs] == [1.0] * (limit + 3)
    events = sorted((float(t), int(d)) for t, d in (line.split() for line in log.read_text().splitlines()))
    assert len(events) == 2 * (limit + 3)
    inside = [sum(d for _, d in events[: i + 1]) for i in range(len(events))]
    assert max(inside) <= limit, inside


def test_score_model_asks_a_served_model_for_its_score(sdk: openai.OpenAI) -> None:
    grader: Any = {
        "type": "score_model",
        "name": "judge",
        "model": STUDENT_MODEL,
        "input": [{"role": "user", "content": "Is {{sample.output_text}} the capital of {{item.country}}?"}],
        "range": [0, 1],
        "sampling_params": {"max_completions_tokens": 48, "seed": 1},
    }
    result = sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris", item={"country": "France"})
    assert result.metadata.sampled_model_name == STUDENT_MODEL
    assert result.model_grader_token_usage_per_model[STUDENT_MODEL] > 0  # type: ignore[operator]
    errors = result.metadata.errors
    assert not errors.model_grader_server_error, errors.model_grader_server_error_details
    # structured output makes even the random-initialised judge answer {"score": n} that parses
    assert not errors.model_grader_parse_error
    assert result.metadata.scores == {"judge": result.reward} and 0.0 <= result.reward <= 1.0


def test_a_registered_judge_named_by_lambda_arn_scores_through_the_servers_chat_path(
    server: Server, tmp_path: Path
) -> None:
    name = unique("judge")
    spec = tmp_path / "judge.json"
    spec.write_text(json.dumps({"type": "judge", "model": STUDENT_MODEL, "rubric": "Is it correct?", "range": [1, 5]}))
    cli(server, "graders", "register", name, str(spec))
    assert name in cli(server, "graders", "list").stdout
    context = GraderContext.from_settings(server.settings, http_complete(f"{server.url}/v1", "unused"))
    config = {"lambdaGrader": {"lambdaArn": f"arn:aws:lambda:us-east-1:123456789012:function:{name}"}}
    prompt = (("user", "What is 2 + 2?"),)
    samples = [Sample(prompt, "4", {"reference_answer": "4"}), Sample(prompt, "5", {"reference_answer": "4"})]
    grades = load_grader(config, context).grade(samples)
    assert all(g.score is not None and 0.0 <= g.score <= 1.0 for g in grades), grades
    cli(server, "graders", "delete", name)
    with pytest.raises(GraderConfigError, match="no grader named"):
        load_grader(config, context)
