from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneforge.graders import (
    Grade,
    GraderConfigError,
    GraderContext,
    GraderRegistry,
    JudgeRequest,
    Sample,
    SandboxLimits,
    all_failed,
    load_grader,
)
from tuneforge.graders.openai_graders import parse_spec
from tuneforge.storage.store import LocalObjectBackend, ObjectStore

ARN = "arn:aws:lambda:us-east-1:123456789012:function:"


def test_exact_match_ignores_case_and_spacing_and_reports_a_missing_reference() -> None:
    grader = load_grader({"lambdaGrader": {"lambdaArn": ARN + "tuneforge-exact-match"}})
    prompt = (("user", "2+2?"),)
    grades = grader.grade(
        [
            Sample(prompt, " Four ", {"reference_answer": "four"}),
            Sample(prompt, "five", {"reference_answer": "four"}),
            Sample(prompt, "4", {"reference_answer": 4}),
            Sample(prompt, "four"),
        ]
    )
    assert [g.score for g in grades] == [1.0, 0.0, 1.0, None]
    assert grades[3].error is not None and "reference_answer" in grades[3].error


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "lambdaGrader"),
        ({"lambdaGrader": {"lambdaArn": "not-an-arn"}}, "not a Lambda function ARN"),
        ({"lambdaGrader": {"lambdaArn": ARN + "no-such-grader"}}, "no grader named 'no-such-grader'"),
    ],
)
def test_bad_grader_configs_are_refused(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(GraderConfigError, match=fragment):
        load_grader(config)


@pytest.mark.parametrize(
    ("value", "score", "fragment"),
    [
        (0.25, 0.25, None),
        (1, 1.0, None),
        (math.nan, None, "NaN"),
        (1.5, None, "outside [0, 1]"),
        (-0.1, None, "outside [0, 1]"),
        ("0.5", None, "not a number"),
        (True, None, "not a number"),
    ],
)
def test_raw_grader_values_are_checked(value: object, score: float | None, fragment: str | None) -> None:
    grade = Grade.checked(value)
    assert grade.score == score
    assert (grade.error is None) if fragment is None else (fragment in (grade.error or ""))


# -- built-ins --------------------------------------------------------------------------------------

PROMPT = (("user", "question"),)


def grade_with(name: str, *samples: Sample) -> list[Grade]:
    return load_grader({"lambdaGrader": {"lambdaArn": ARN + name}}).grade(list(samples))


def test_regex_grader_matches_the_whole_answer_and_reports_a_bad_pattern() -> None:
    grades = grade_with(
        "tuneforge-regex",
        Sample(PROMPT, " 42 ", {"reference_answer": r"\d+"}),
        Sample(PROMPT, "42 apples", {"reference_answer": r"\d+"}),
        Sample(PROMPT, "x", {"reference_answer": "("}),
    )
    assert [g.score for g in grades] == [1.0, 0.0, None]
    assert "not a regular expression" in (grades[2].error or "")


def test_a_catastrophically_backtracking_pattern_gets_an_error_grade_not_a_hang() -> None:
    from tuneforge.graders.builtin import REGEX_TIMEOUT_S

    grades = grade_with(
        "tuneforge-regex",
        Sample(PROMPT, "a" * 60 + "b", {"reference_answer": "(a|aa)+"}),
        Sample(PROMPT, "a" * 60, {"reference_answer": "(a|aa)+"}),
    )
    assert grades[0].score is None and f"over {REGEX_TIMEOUT_S:g} s" in (grades[0].error or "")
    assert grades[1].score == 1.0


def test_json_schema_grader_validates_the_answer_against_the_reference_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    grades = grade_with(
        "tuneforge-json-schema",
        Sample(PROMPT, '```json\n{"n": 3}\n```', {"reference_answer": schema}),
        Sample(PROMPT, '{"n": "three"}', {"reference_answer": schema}),
        Sample(PROMPT, "not json", {"reference_answer": json.dumps(schema)}),
        Sample(PROMPT, "{}", {"reference_answer": {"type": 12}}),
    )
    assert [g.score for g in grades] == [1.0, 0.0, 0.0, None]
    assert "not a valid JSON schema" in (grades[3].error or "")


def test_numeric_grader_reads_the_last_number_within_tolerance() -> None:
    grades = grade_with(
        "tuneforge-numeric",
        Sample(PROMPT, "so the total is 1,234.5", {"reference_answer": "1234.5"}),
        Sample(PROMPT, "about 101", {"reference_answer": 100, "relative_tolerance": 0.02}),
        Sample(PROMPT, "about 103", {"reference_answer": 100, "relative_tolerance": 0.02}),
        Sample(PROMPT, "no idea", {"reference_answer": 7}),
        Sample(PROMPT, "7", {"reference_answer": 7, "tolerance": -1}),
    )
    assert [g.score for g in grades] == [1.0, 1.0, 0.0, 0.0, None]
    assert "tolerance" in (grades[4].error or "")


def test_all_failed_names_the_common_error_only_when_every_sample_failed() -> None:
    assert all_failed([Grade(0.0), Grade(None, "x")]) is None
    message = all_failed([Grade(None, "boom"), Grade(None, "boom"), Grade(None, "other")])
    assert message is not None and "all 3 samples" in message and "boom" in message


# -- the sandbox ------------------------------------------------------------------------------------

FAST = SandboxLimits(timeout_s=2, cpu_s=1, memory_bytes=256 << 20)

MISBEHAVING = """
import math, os, socket, sys
print("{not json", flush=True)
sys.stderr.write("noise\\n")
def grade(sample, item):
    kind = item["kind"]
    if kind == "raise":
        raise ValueError("boom")
    if kind == "nan":
        return math.nan
    if kind == "big":
        return 1.5
    if kind == "text":
        return "0.5"
    if kind == "network":
        socket.create_connection(("127.0.0.1", item["port"]), timeout=2)
        return 1.0
    if kind == "memory":
        return len(bytearray(2 << 30))
    if kind == "sleep":
        import time
        time.sleep(60)
    if kind == "spin":
        while True:
            pass
    if kind == "exit":
        os._exit(9)
    if kind == "forge":
        os.write(int(sys.argv[1]), b"garbage on the result pipe\\n")
    return 0.25 if sample["output_text"] == "ok" else 0.0
"""


def python_grader(source: str, limits: SandboxLimits = FAST) -> Any:
    return load_grader({"openai": {"type": "python", "name": "p", "source": source}}, GraderContext(limits))


def test_every_sandbox_failure_is_that_samples_grade_and_the_rest_still_grade() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    kinds = ["ok", "raise", "nan", "big", "text", "network", "memory", "sleep", "exit", "ok", "forge", "ok"]
    grades = python_grader(MISBEHAVING).grade([Sample(PROMPT, "ok", {"kind": k, "port": port}) for k in kinds])
    errors = dict(zip(kinds, (g.error or "" for g in grades), strict=True))
    assert grades[0].score == 0.25 and grades[-1].score == 0.25
    assert "raised ValueError: boom" in errors["raise"]
    assert "NaN" in errors["nan"] and "outside [0, 1]" in errors["big"] and "not a number" in errors["text"]
    assert "without network access" in errors["network"]
    assert "MemoryError" in errors["memory"]
    assert "timed out after 2s" in errors["sleep"]
    assert "exited with status 9" in errors["exit"]
    assert "broke the result protocol" in errors["forge"]
    with pytest.raises(TimeoutError):  # the grader never reached the listener: it had no network
        listener.accept()
    with socket.create_connection(("127.0.0.1", port), timeout=2):  # from here the listener is reachable
        listener.accept()[0].close()
    listener.close()


def test_a_file_that_fails_to_load_fails_every_sample_with_its_error() -> None:
    grades = python_grader("raise RuntimeError('no config')\ndef grade(sample, item):\n    return 1.0\n").grade(
        [Sample(PROMPT, "a"), Sample(PROMPT, "b")]
    )
    assert all(g.score is None for g in grades)
    message = all_failed(grades)
    assert message is not None and "RuntimeError: no config" in message and "all 2 samples" in message


WITHOUT_NAMESPACES = """
import json, sys
from tuneforge.graders import GraderConfigError, Sample, SandboxLimits, all_failed, load_grader
from tuneforge.graders.openai_graders import PythonGrader
source = "def grade(sample, item):\\n    return 1.0\\n"
try:
    load_grader({"openai": {"type": "python", "name": "p", "source": source}})
    refused = None
except GraderConfigError as exc:
    refused = str(exc)
grades = PythonGrader(source, SandboxLimits()).grade([Sample((), "a"), Sample((), "b")])
print(json.dumps({"refused": refused, "all_failed": all_failed(grades)}))
"""


@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "-r", "true"], check=False).returncode != 0,
    reason="needs user namespaces to build a process that may create no namespace",
)
def test_no_namespace_means_python_graders_are_refused_not_run_unsandboxed() -> None:
    # inside a user namespace whose namespace limits are 0, neither unshare the sandbox tries can work
    limits = "echo 0 > /proc/sys/user/max_net_namespaces && echo 0 > /proc/sys/user/max_user_namespaces"
    script = f'{limits} && exec "$0" -c "$1"'
    done = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", script, sys.executable, WITHOUT_NAMESPACES],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert "sandbox is unavailable" in result["refused"] and "unshare(CLONE_NEWNET) failed" in result["refused"]
    assert "all 2 samples" in result["all_failed"] and "sandbox is unavailable" in result["all_failed"]


def test_cpu_limit_kills_a_spinning_grader_and_repeated_failures_stop_early() -> None:
    limits = SandboxLimits(timeout_s=30, cpu_s=1, memory_bytes=256 << 20)
    grades = python_grader(MISBEHAVING, limits).grade([Sample(PROMPT, "ok", {"kind": "spin"})] * 4)
    assert "SIGXCPU" in (grades[0].error or "")
    assert all(g.score is None for g in grades)
    assert "in a row" in (grades[-1].error or "")
    assert all_failed(grades) is not None


def test_a_lambda_file_grader_gets_bedrock_events_in_one_batch(tmp_path: Path) -> None:
    source = """
import os
def lambda_grader(samples):
    pids = {os.getpid()}
    out = []
    for s in samples:
        answer = s["messages"][-1]["content"]
        out.append({"id": s["id"], "aggregate_reward_score": float(answer == s["reference_answer"]),
                    "metrics_list": [{"name": "pids", "value": len(pids), "type": "Metric"}]})
    return out[:-1]
"""
    store = ObjectStore(LocalObjectBackend(tmp_path / "objects", []))
    registry = GraderRegistry(store)
    registry.register("arith", "arith.py", source.encode())
    assert registry.names() == [("arith", "py")]
    grader = load_grader({"lambdaGrader": {"lambdaArn": ARN + "arith"}}, GraderContext(FAST, store))
    grades = grader.grade(
        [
            Sample(PROMPT, "4", {"reference_answer": "4"}),
            Sample(PROMPT, "5", {"reference_answer": "4"}),
            Sample(PROMPT, "4", {"reference_answer": "4"}),
        ]
    )
    assert [g.score for g in grades] == [1.0, 0.0, None]
    assert "no result with \"id\" '2'" in (grades[2].error or "")
    assert registry.delete("arith") and registry.names() == []
    with pytest.raises(GraderConfigError, match="no grader named 'arith'"):
        load_grader({"lambdaGrader": {"lambdaArn": ARN + "arith"}}, GraderContext(FAST, store))


@pytest.mark.parametrize(
    ("name", "filename", "data", "fragment"),
    [
        ("tuneforge-mine", "a.py", b"def lambda_grader(s): return []", "reserved"),
        ("bad name", "a.py", b"", "letters, digits"),
        ("nofn", "a.py", b"def grade(s, i): return 1", "lambda_grader or lambda_handler"),
        ("syntax", "a.py", b"def lambda_grader(:", "line 1"),
        ("judge", "j.json", b'{"type": "judge", "model": "m"}', "rubric"),
        ("multi", "m.json", b'{"type": "multi", "name": "m", "graders": {}, "calculate_output": "1"}', "at least one"),
        ("txt", "a.txt", b"", ".py (Lambda grader) or .json"),
    ],
)
def test_registration_refuses_bad_files(tmp_path: Path, name: str, filename: str, data: bytes, fragment: str) -> None:
    registry = GraderRegistry(ObjectStore(LocalObjectBackend(tmp_path / "objects", [])))
    with pytest.raises(GraderConfigError, match=re.escape(fragment)):
        registry.register(name, filename, data)
    assert registry.names() == []


# -- OpenAI grader objects --------------------------------------------------------------------------


def openai_grade(grader: dict[str, Any], response: str, item: dict[str, Any], **context: Any) -> Grade:
    return load_grader({"openai": grader}, GraderContext(FAST, **context)).grade([Sample(PROMPT, response, item)])[0]


@pytest.mark.parametrize(
    ("operation", "response", "score"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "Rome", 1.0),
        ("like", "It is Paris.", 1.0),
        ("like", "it is paris", 0.0),
        ("ilike", "it is PARIS", 1.0),
    ],
)
def test_string_check_operations_with_templates(operation: str, response: str, score: float) -> None:
    grader = {
        "type": "string_check",
        "name": "s",
        "input": "{{ sample.output_text }}",
        "reference": "{{item.city}}",
        "operation": operation,
    }
    assert openai_grade(grader, response, {"city": "Paris"}).score == score


def test_a_template_naming_a_missing_field_fails_that_sample() -> None:
    grader = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "{{item.nope}}",
        "operation": "eq",
    }
    assert "{{item.nope}}" in (openai_grade(grader, "x", {}).error or "")


@pytest.mark.parametrize(
    ("metric", "low", "high"),
    [
        ("fuzzy_match", 0.8, 1.0),
        ("bleu", 0.3, 0.9),
        ("gleu", 0.3, 0.9),
        ("rouge_1", 0.8, 1.0),
        ("rouge_l", 0.8, 1.0),
        ("rouge_2", 0.5, 0.9),
    ],
)
def test_text_similarity_metrics(metric: str, low: float, high: float) -> None:
    grader = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_answer}}",
        "evaluation_metric": metric,
    }
    near = openai_grade(grader, "the cat sat on the mat", {"reference_answer": "the cat sat on a mat"}).score
    far = openai_grade(grader, "quantum chromodynamics", {"reference_answer": "the cat sat on a mat"}).score
    assert near is not None and far is not None and low <= near <= high and far < near


def test_multi_combines_sub_graders_with_a_formula() -> None:
    grader = {
        "type": "multi",
        "name": "m",
        "calculate_output": "0.5 * exact + 0.5 * min(1, fuzzy ^ 2)",
        "graders": {
            "exact": {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "4",
                "operation": "eq",
            },
            "fuzzy": {
                "type": "text_similarity",
                "name": "fuzzy",
                "input": "{{sample.output_text}}",
                "reference": "4",
                "evaluation_metric": "fuzzy_match",
            },
        },
    }
    assert openai_grade(grader, "4", {}).score == 1.0
    assert openai_grade(grader, "5", {}).score == 0.0
    grader["calculate_output"] = "log(exact) + (0 - 1) ^ 0.5 * fuzzy"
    assert "calculate_output failed" in (openai_grade(grader, "5", {}).error or "")  # log(0)
    assert "calculate_output failed" in (openai_grade(grader, "4", {}).error or "")  # a complex power
    grader["calculate_output"] = "min"
    with pytest.raises(GraderConfigError, match="'min' is not one of the graders"):
        parse_spec(grader)


@pytest.mark.parametrize(
    ("grader", "param", "fragment"),
    [
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "__import__('os')",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "eq"}
                },
            },
            "grader.calculate_output",
            "may be called",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a.real",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "eq"}
                },
            },
            "grader.calculate_output",
            "Attribute",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a + b",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "eq"}
                },
            },
            "grader.calculate_output",
            "'b' is not one of the graders",
        ),
        (
            {"type": "string_check", "name": "s", "input": "{{ foo.bar }}", "reference": "y", "operation": "eq"},
            "grader.input",
            "unknown template variable",
        ),
        (
            {"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "sounds_like"},
            "grader.operation",
            "Invalid value",
        ),
        (
            {"type": "text_similarity", "name": "t", "input": "x", "reference": "y", "evaluation_metric": "cosine"},
            "grader.evaluation_metric",
            "not supported offline",
        ),
        (
            {"type": "python", "name": "p", "source": "def other(): pass"},
            "grader.source",
            "must define a function grade",
        ),
        ({"type": "label_model", "name": "l"}, "grader.type", "not supported"),
        ({"type": "nope"}, "grader.type", "must be one of"),
        (
            {"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "eq", "extra": 1},
            "grader.extra",
            "Unrecognized",
        ),
    ],
)
def test_bad_openai_graders_are_refused_naming_the_member(grader: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(GraderConfigError, match=re.escape(fragment)) as exc:
        parse_spec(grader)
    assert exc.value.param == param


def test_score_model_and_registered_judges_call_their_model_and_scale_its_score(tmp_path: Path) -> None:
    asked: list[JudgeRequest] = []

    def complete(request: JudgeRequest) -> str:
        asked.append(request)
        return '{"score": 7}' if "good" in request.messages[-1][1] else "nonsense"

    grader = {
        "type": "score_model",
        "name": "j",
        "model": "judge-model",
        "range": [0, 10],
        "input": [{"role": "user", "content": "Rate: {{sample.output_text}} for {{item.q}}"}],
    }
    assert openai_grade(grader, "good answer", {"q": "Q"}, complete=complete).score == pytest.approx(0.7)
    assert "no score" in (openai_grade(grader, "bad", {"q": "Q"}, complete=complete).error or "")
    assert asked[0].model == "judge-model" and asked[0].schema["properties"]["score"]["maximum"] == 10
    with pytest.raises(GraderConfigError, match="need a model"):
        load_grader({"openai": grader}, GraderContext(FAST))

    store = ObjectStore(LocalObjectBackend(tmp_path / "objects", []))
    GraderRegistry(store).register(
        "polite",
        "polite.json",
        json.dumps({"type": "judge", "model": "judge-model", "rubric": "Is it good?", "range": [0, 10]}).encode(),
    )
    judge = load_grader({"lambdaGrader": {"lambdaArn": ARN + "polite"}}, GraderContext(FAST, store, complete=complete))
    asked.clear()
    assert judge.grade([Sample(PROMPT, "good", {"reference_answer": "fine"})])[0].score == pytest.approx(0.7)
    assert "Is it good?" in asked[0].messages[0][1] and "fine" in asked[0].messages[1][1]


def test_cli_registers_lists_and_deletes_graders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tuneforge.cli.main import app

    monkeypatch.setenv("TUNEFORGE_DATA_DIR", str(tmp_path / "data"))
    grader = tmp_path / "arith.py"
    grader.write_text("def lambda_grader(samples):\n    return []\n")
    runner = CliRunner()
    assert runner.invoke(app, ["graders", "register", "arith", str(grader)]).exit_code == 0
    listed = runner.invoke(app, ["graders", "list", "--json"])
    assert {"name": "arith", "kind": "lambda"} in json.loads(listed.stdout)
    refused = runner.invoke(app, ["graders", "register", "tuneforge-x", str(grader)])
    assert refused.exit_code == 1 and "reserved" in refused.output
    assert runner.invoke(app, ["graders", "delete", "arith"]).exit_code == 0
    assert runner.invoke(app, ["graders", "delete", "arith"]).exit_code == 1


def test_a_lambda_grader_that_times_out_fails_the_whole_batch_once(tmp_path: Path) -> None:
    store = ObjectStore(LocalObjectBackend(tmp_path / "objects", []))
    GraderRegistry(store).register("slow", "slow.py", b"import time\ndef lambda_grader(samples):\n    time.sleep(60)\n")
    limits = SandboxLimits(timeout_s=0.5, cpu_s=1, memory_bytes=256 << 20)
    grader = load_grader({"lambdaGrader": {"lambdaArn": ARN + "slow"}}, GraderContext(limits, store))
    grades = grader.grade([Sample(PROMPT, "a"), Sample(PROMPT, "b"), Sample(PROMPT, "c")])
    assert [g.error for g in grades] == ["the grader timed out after 1.5s"] * 3
