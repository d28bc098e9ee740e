"""Evaluation jobs: the built-in metrics, the dataset check, the refusals at create time, the queue's
handling of stopped, deleted and lost jobs, and a job run in-process (precomputed and real models)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneforge.api.bedrock.evaluation_schemas import evaluation_job, evaluation_summary, parse_create_evaluation_job
from tuneforge.db.tables import EvaluationJob, utcnow
from tuneforge.errors import ResourceNotFoundException, ServiceError, ValidationException
from tuneforge.evaluation.dataset import MAX_RECORDS, check_dataset
from tuneforge.evaluation.metrics import (
    ACCURACY,
    ROBUSTNESS,
    exact_match,
    normalize,
    percentile,
    perturb,
    rouge_l,
    token_f1,
)
from tuneforge.evaluation.scoring import Answer, Pass, score
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.services import Services
from tuneforge.settings import Settings

ROLE = "arn:aws:iam::123456789012:role/tests"
BASE_MODEL = "tuneforge.forge-small-v1:0:512"
DATASET = "s3://tests/eval/data.jsonl"


# -- metrics ---------------------------------------------------------------------------------


def test_accuracy_normalizes_like_squad() -> None:
    assert normalize("  The Billing, please! ") == "billing please"
    assert exact_match("billing.", "Billing") == 1.0
    assert exact_match("billing issue", "billing") == 0.0
    assert token_f1("the cat sat on a mat", "cat sat") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert token_f1("", "") == 1.0 and token_f1("dog", "cat") == 0.0
    assert rouge_l("the cats sat down", "the cat sat") == pytest.approx(2 * 0.75 * 1 / 1.75)


def test_perturbations_are_small_deterministic_and_change_the_prompt() -> None:
    prompt = "Classify this support ticket: my invoice is wrong"
    changed = [perturb(prompt, i) for i in range(30)]
    assert changed == [perturb(prompt, i) for i in range(30)]
    assert all(c != prompt for c in changed)
    assert all(normalize(c) == normalize(prompt) or len(c) == len(prompt) for c in changed)
    kinds = {("upper" if c.isupper() else "spaces" if "  " in c else "typo") for c in changed}
    assert kinds == {"upper", "spaces", "typo"}


def test_scores_report_accuracy_robustness_latency_and_categories() -> None:
    records = check_dataset(
        b'{"prompt": "a", "referenceResponse": "x", "category": "c1"}\n'
        b'{"prompt": "b", "referenceResponse": "y", "category": "c2"}\n',
        need_reference=True,
    ).records
    original = Pass([Answer("x", 0.1, 2), Answer("y", 0.3, 2)], seconds=2.0)
    perturbed = Pass([Answer("x", 0.1, 1), Answer("z", 0.1, 1)], seconds=1.0)
    per_record, summary = score("Classification", [ACCURACY, ROBUSTNESS], records, original, perturbed)
    assert summary["metrics"] == {ACCURACY: 1.0, ROBUSTNESS: 0.5}
    assert summary["latencyP50Ms"] == 200.0 and summary["tokensPerSecond"] == 2.0
    assert summary["categories"] == {"c1": {ACCURACY: 1.0}, "c2": {ACCURACY: 1.0}}
    assert per_record[1]["scores"] == [
        {"metricName": "Accuracy", "result": 1.0},
        {"metricName": "Robustness", "result": 1.0},
    ]
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5


# -- the dataset -----------------------------------------------------------------------------


def test_dataset_errors_name_the_line_and_the_field() -> None:
    check = check_dataset(
        b'{"prompt": "ok", "referenceResponse": "r"}\n\n{"referenceResponse": "r"}\n{"prompt": "p"}\nnot json\n',
        need_reference=True,
    )
    text = check.message("tickets")
    assert 'line 3, field "prompt": missing key "prompt"' in text
    assert 'line 4, field "referenceResponse": missing key "referenceResponse"' in text
    assert "line 5: not valid JSON" in text
    assert len(check.records) == 1


def test_precomputed_responses_are_required_per_source_and_size_is_capped() -> None:
    check = check_dataset(
        b'{"prompt": "p", "modelResponses": [{"response": "a", "modelIdentifier": "one"}]}\n',
        need_reference=False,
        precomputed=("one", "two"),
    )
    assert [str(e) for e in check.errors] == ['line 1, field "modelResponses": no response with modelIdentifier two']
    big = b"".join(b'{"prompt": "p"}\n' for _ in range(MAX_RECORDS + 1))
    assert f"at most {MAX_RECORDS} are allowed" in check_dataset(big, need_reference=False).message("big")


# -- create, refusals, stop, delete ----------------------------------------------------------


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", heartbeat_timeout_s=30))
    yield created
    created.close()


ROWS = [("my invoice is wrong", "billing"), ("the app crashes", "bug"), ("add dark mode", "feature")]


def write_dataset(services: Services, uri: str = DATASET, responses: dict[str, list[str]] | None = None) -> None:
    lines = []
    for index, (prompt, label) in enumerate(ROWS):
        record: dict[str, Any] = {"prompt": prompt, "referenceResponse": label, "category": label}
        if responses:
            record["modelResponses"] = [
                {"response": answers[index], "modelIdentifier": source} for source, answers in responses.items()
            ]
        lines.append(json.dumps(record))
    services.store.write_bytes(uri, "\n".join(lines).encode())


def body(
    name: str = "eval-1",
    models: list[dict[str, Any]] | None = None,
    task: str = "Classification",
    metrics: tuple[str, ...] = (ACCURACY,),
    dataset: str = DATASET,
    output: str = "s3://tests/eval-out",
) -> dict[str, Any]:
    return {
        "jobName": name,
        "roleArn": ROLE,
        "applicationType": "ModelEvaluation",
        "evaluationConfig": {
            "automated": {
                "datasetMetricConfigs": [
                    {
                        "taskType": task,
                        "dataset": {"name": "tickets", "datasetLocation": {"s3Uri": dataset}},
                        "metricNames": list(metrics),
                    }
                ]
            }
        },
        "inferenceConfig": {"models": models or [{"bedrockModel": {"modelIdentifier": BASE_MODEL}}]},
        "outputDataConfig": {"s3Uri": output},
    }


def create(services: Services, request: dict[str, Any]) -> EvaluationJob:
    return services.evaluation_jobs.create(parse_create_evaluation_job(request))


def count_jobs(services: Services) -> int:
    with services.db.session() as session:
        return session.query(EvaluationJob).count()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {"models": [{"bedrockModel": {"modelIdentifier": BASE_MODEL}}] * 3},
            ValidationException,
            "Member must have length less than or equal to 2",
        ),
        ({"task": "Generation"}, ValidationException, "Builtin.Accuracy at '"),
        ({"metrics": ("Builtin.Toxicity",)}, ValidationException, "is not supported yet for task type"),
        ({"metrics": ("Builtin.Fluency",)}, ValidationException, "is not a built-in metric"),
        (
            {"models": [{"bedrockModel": {"modelIdentifier": "no-such-model"}}]},
            ResourceNotFoundException,
            "The model no-such-model does not exist.",
        ),
        ({"output": "/etc/evaluation"}, ValidationException, "Invalid outputDataConfig.s3Uri /etc/evaluation"),
        ({"dataset": "s3://tests/eval/missing.jsonl"}, ValidationException, "no dataset file at this location"),
        (
            {
                "models": [{"precomputedInferenceSource": {"inferenceSourceIdentifier": "mine"}}],
                "metrics": (ROBUSTNESS,),
            },
            ValidationException,
            "precomputedInferenceSource cannot",
        ),
    ],
)
def test_refusals_are_aws_errors_and_leave_no_job(
    services: Services, change: dict[str, Any], error: type[ServiceError], message: str
) -> None:
    write_dataset(services)
    with pytest.raises(error) as refused:
        create(services, body(**change))
    assert message in refused.value.message
    assert count_jobs(services) == 0


def test_a_dataset_with_missing_fields_is_refused_with_its_line_numbers(services: Services) -> None:
    services.store.write_bytes(DATASET, b'{"prompt": "a", "referenceResponse": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(ValidationException, match='line 2, field "referenceResponse": missing key') as refused:
        create(services, body())
    assert refused.value.message.startswith("The evaluation dataset tickets is not valid")
    assert count_jobs(services) == 0


@pytest.mark.parametrize(
    ("request_change", "message"),
    [
        ({"applicationType": "RagEvaluation"}, "A RagEvaluation job evaluates inferenceConfig.ragConfigs"),
        ({"evaluationConfig": {"human": {"datasetMetricConfigs": []}}}, "Human evaluation"),
        (
            {
                "evaluationConfig": {
                    **body()["evaluationConfig"],
                    "automated": {
                        **body()["evaluationConfig"]["automated"],
                        "evaluatorModelConfig": {"bedrockEvaluatorModels": [{"modelIdentifier": BASE_MODEL}]},
                    },
                }
            },
            "names a judge model but no metric needs one",
        ),
    ],
)
def test_rag_and_human_evaluations_are_refused_by_name(
    services: Services, request_change: dict[str, Any], message: str
) -> None:
    write_dataset(services)
    with pytest.raises(ValidationException, match=message):
        create(services, {**body(), **request_change})


def test_stop_and_batch_delete(services: Services) -> None:
    write_dataset(services)
    queued = create(services, body("queued"))
    running = create(services, body("running"))
    with services.db.session() as session:
        row = session.get(EvaluationJob, running.id)
        assert row is not None
        row.phase = "running"
    deleted, errors = services.evaluation_jobs.batch_delete([running.arn, "nosuchjob123"])
    assert deleted == []
    assert [e["code"] for e in errors] == ["ValidationException", "ResourceNotFoundException"]
    services.evaluation_jobs.stop(queued.arn)
    services.evaluation_jobs.stop(running.arn)
    assert services.evaluation_jobs.get(queued.id).status == "Stopped"
    assert services.evaluation_jobs.get(running.id).status == "Stopping"
    deleted, errors = services.evaluation_jobs.batch_delete([queued.arn])
    assert (deleted, errors) == ([{"jobIdentifier": queued.arn, "jobStatus": "Deleting"}], [])
    with pytest.raises(ResourceNotFoundException):
        services.evaluation_jobs.get(queued.id)


@pytest.mark.parametrize(("status", "ends"), [("InProgress", "Failed"), ("Stopping", "Stopped")])
def test_an_evaluation_job_whose_worker_died_is_failed_or_stopped(services: Services, status: str, ends: str) -> None:
    write_dataset(services)
    job = create(services, body(f"lost-{status.lower()}"))
    with services.db.session() as session:
        row = session.get(EvaluationJob, job.id)
        assert row is not None
        row.phase, row.status, row.worker_host, row.worker_pid = "running", status, socket.gethostname(), 2**22 + 1
        row.heartbeat_at = utcnow()
    Supervisor(services).recover()
    assert (services.evaluation_jobs.get(job.id).status, services.evaluation_jobs.get(job.id).phase) == (ends, "done")


# -- a job run in-process --------------------------------------------------------------------


def run_in_process(services: Services, job: EvaluationJob) -> EvaluationJob:
    from tuneforge.jobs.worker import EvaluationJobRunner

    with services.db.session() as session:
        row = session.get(EvaluationJob, job.id)
        assert row is not None
        row.phase = "running"
    EvaluationJobRunner(services, job.id).run()
    return services.evaluation_jobs.get(job.id)


def test_two_precomputed_sources_are_scored_compared_and_written_in_bedrocks_layout(services: Services) -> None:
    write_dataset(services, responses={"old": ["billing", "billing", "billing"], "new": ["billing", "Bug.", "x"]})
    job = create(
        services,
        body(
            "precomputed",
            models=[
                {"precomputedInferenceSource": {"inferenceSourceIdentifier": "old"}},
                {"precomputedInferenceSource": {"inferenceSourceIdentifier": "new"}},
            ],
        ),
    )
    done = run_in_process(services, job)
    assert done.status == "Completed", done.failure_messages
    results = evaluation_job(done)["tuneforge"]["results"]
    assert [r["metrics"][ACCURACY] for r in results["results"]] == pytest.approx([1 / 3, 2 / 3])
    (comparison,) = results["comparisons"]
    assert (comparison["baseline"], comparison["candidate"]) == ("old", "new")
    assert comparison["difference"] == pytest.approx(1 / 3)
    root = f"s3://tests/eval-out/precomputed/{job.id}"
    lines = services.store.read_bytes(
        f"{root}/models/new/taskTypes/Classification/datasets/tickets/{job.id}_output.jsonl"
    )
    first = json.loads(lines.splitlines()[1])
    assert first["automatedEvaluationResult"]["scores"] == [{"metricName": "Accuracy", "result": 1.0}]
    assert first["inputRecord"]["prompt"] == "the app crashes"
    assert first["modelResponses"] == [{"response": "Bug.", "modelIdentifier": "new"}]
    assert json.loads(services.store.read_bytes(f"{root}/summary.json")) == results
    summary = evaluation_summary(done)
    assert summary["inferenceConfigSummary"]["modelConfigSummary"] == {
        "precomputedInferenceSourceIdentifiers": ["old", "new"]
    }


def test_a_model_answers_through_the_batched_path_with_robustness_and_speed(services: Services) -> None:
    write_dataset(services)
    model = {
        "bedrockModel": {"modelIdentifier": BASE_MODEL, "inferenceParams": '{"inferenceConfig": {"maxTokens": 3}}'}
    }
    job = create(services, body("real", models=[model], metrics=(ACCURACY, ROBUSTNESS)))
    done = run_in_process(services, job)
    assert done.status == "Completed", done.failure_messages
    (row,) = evaluation_job(done)["tuneforge"]["results"]["results"]
    assert set(row["metrics"]) == {ACCURACY, ROBUSTNESS}
    assert row["latencyP50Ms"] > 0 and row["tokensPerSecond"] > 0 and 0 < row["outputTokens"] <= 3 * len(ROWS)


def test_a_provisioned_throughput_stands_for_the_model_it_serves(services: Services) -> None:
    from tuneforge.serving.throughput import CreateThroughputRequest

    write_dataset(services)
    throughput = services.throughput.create(CreateThroughputRequest(name="pt", model_id=BASE_MODEL, model_units=1))
    job = create(services, body("through-pt", models=[{"bedrockModel": {"modelIdentifier": throughput.arn}}]))
    assert job.models[0]["identifier"] == throughput.arn
    assert job.models[0]["arn"] == throughput.model_arn
    gone = throughput.arn[:-12] + "abcdefabcdef"
    with pytest.raises(ResourceNotFoundException, match=f"The model {gone} does not exist."):
        create(services, body("gone-pt", models=[{"bedrockModel": {"modelIdentifier": gone}}]))


def test_job_tags_are_read_and_changed_like_other_resources_tags(services: Services) -> None:
    write_dataset(services)
    job = create(services, {**body("tagged"), "jobTags": [{"key": "team", "value": "support"}]})
    assert services.tags.list_tags(job.arn) == [{"key": "team", "value": "support"}]
    services.tags.tag(job.arn, [{"key": "stage", "value": "bake-off"}])
    services.tags.untag(job.arn, ["team"])
    assert services.tags.list_tags(job.arn) == [{"key": "stage", "value": "bake-off"}]


def test_a_running_job_asked_to_stop_ends_stopped_without_results(services: Services) -> None:
    write_dataset(services)
    job = create(services, body("stop-running"))
    with services.db.session() as session:
        row = session.get(EvaluationJob, job.id)
        assert row is not None
        row.stop_requested = True
    done = run_in_process(services, job)
    assert (done.status, done.phase, done.failure_messages) == ("Stopped", "done", [])
    assert not services.store.exists(f"s3://tests/eval-out/stop-running/{job.id}/summary.json")


def test_generation_robustness_compares_perturbed_answers_with_the_original_ones() -> None:
    records = check_dataset(b'{"prompt": "a"}\n{"prompt": "b"}\n', need_reference=False).records
    original = Pass([Answer("the cat sat"), Answer("a dog ran")])
    perturbed = Pass([Answer("the cat sat"), Answer("nothing alike")])
    _, summary = score("Generation", [ROBUSTNESS], records, original, perturbed)
    assert summary["metrics"] == {ROBUSTNESS: pytest.approx(0.5)}


def test_the_client_request_token_returns_the_same_job_and_list_filters(services: Services) -> None:
    from tuneforge.errors import ConflictException
    from tuneforge.jobs.evaluations import EvaluationJobFilter

    write_dataset(services)
    ask = {**body("idempotent"), "clientRequestToken": "token-1"}
    first = create(services, ask)
    assert create(services, ask).id == first.id
    with pytest.raises(ConflictException, match="clientRequestToken token-1 was already used"):
        create(services, {**ask, "jobDescription": "another"})
    other = create(services, body("other"))
    services.evaluation_jobs.stop(other.arn)
    listed = services.evaluation_jobs.list_jobs(EvaluationJobFilter(status_equals="Stopped"), None, 10).items
    assert [j.id for j in listed] == [other.id]
    rag = EvaluationJobFilter(application_type_equals="RagEvaluation")
    assert services.evaluation_jobs.list_jobs(rag, None, 10).items == []


def test_robustness_alone_still_needs_the_reference_it_scores_against(services: Services) -> None:
    """Robustness on a Classification task is an accuracy drop: without referenceResponse the job
    used to be accepted and fail in the worker on an assertion, after the model had answered."""
    services.store.write_bytes(DATASET, b'{"prompt": "a", "referenceResponse": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(ValidationException, match='line 2, field "referenceResponse": missing key'):
        create(services, body("robust", metrics=(ROBUSTNESS,)))
    assert count_jobs(services) == 0
    services.store.write_bytes(DATASET, b'{"prompt": "a"}\n{"prompt": "c"}\n')
    assert create(services, body("generation", task="Generation", metrics=(ROBUSTNESS,))).status == "InProgress"


def test_a_dataset_grown_past_the_cap_after_create_fails_the_job_unread(services: Services) -> None:
    """The worker reads the dataset again: the size cap that create enforced must hold there too."""
    from tuneforge.jobs.evaluations import MAX_DATASET_BYTES

    write_dataset(services, responses={"mine": ["billing", "bug", "feature"]})
    job = create(
        services, body("grown", models=[{"precomputedInferenceSource": {"inferenceSourceIdentifier": "mine"}}])
    )
    huge = {"prompt": "x" * MAX_DATASET_BYTES, "referenceResponse": "billing"}
    huge["modelResponses"] = [{"response": "billing", "modelIdentifier": "mine"}]
    services.store.write_bytes(DATASET, json.dumps(huge).encode())
    done = run_in_process(services, job)
    assert done.status == "Failed"
    assert done.failure_messages == [
        f"The dataset at {DATASET} grew larger than {MAX_DATASET_BYTES >> 20} MiB after the job was created; "
        "make it smaller, then create the job again"
    ]


def test_precomputed_answers_report_no_speed_rather_than_zero_latency() -> None:
    """Answers read from the dataset were never timed here: 0 ms would read as an instant model."""
    records = check_dataset(b'{"prompt": "a", "referenceResponse": "x"}\n', need_reference=True).records
    _, summary = score("Classification", [ACCURACY], records, Pass([Answer("x")]), None)
    assert summary["latencyP50Ms"] is None and summary["tokensPerSecond"] is None


def test_two_datasets_of_one_task_type_need_different_names(services: Services) -> None:
    """Results go to taskTypes/<task type>/datasets/<name>/: a second dataset of the same name
    overwrote the first's output file and mixed their rows in the results."""
    write_dataset(services)
    request = body("twice")
    configs = request["evaluationConfig"]["automated"]["datasetMetricConfigs"]
    configs.append(json.loads(json.dumps(configs[0])))
    with pytest.raises(ValidationException, match="dataset names must differ within a task type"):
        create(services, request)
    configs[1]["dataset"]["name"] = "tickets-again"
    assert create(services, request).status == "InProgress"


def test_a_line_separator_inside_a_json_string_does_not_split_the_record() -> None:
    """JSONL lines end at "\\n" only: U+2028 and friends are legal raw inside JSON strings (what
    json.dumps(ensure_ascii=False) writes) and used to cut a valid record in two invalid ones."""
    line = json.dumps({"prompt": "one\u2028two\x1cthree", "referenceResponse": "x"}, ensure_ascii=False)
    check = check_dataset(f"{line}\r\n{line}\n".encode(), need_reference=True)
    assert check.errors == []
    assert [(r.line, r.prompt) for r in check.records] == [(1, "one\u2028two\x1cthree"), (2, "one\u2028two\x1cthree")]


def test_a_dataset_line_that_is_not_utf8_is_refused_naming_the_line(services: Services) -> None:
    """Datasets were decoded with errors="replace": a mis-encoded prompt was scored as U+FFFD text."""
    check = check_dataset(
        b'{"prompt": "a", "referenceResponse": "x"}\n{"prompt": "caf\xe9", "referenceResponse": "x"}\n', True
    )
    assert [str(e) for e in check.errors] == [
        "line 2: not UTF-8 text (invalid continuation byte at byte 15); save the file as UTF-8"
    ]
    services.store.write_bytes(DATASET, b'{"prompt": "\xff", "referenceResponse": "x"}\n')
    with pytest.raises(ValidationException, match="tickets is not valid: line 1: not UTF-8 text"):
        create(services, body("latin1"))
    assert count_jobs(services) == 0


def test_a_prompt_too_long_for_the_context_is_a_record_error_outside_the_latency(services: Services) -> None:
    """It used to get an empty answer with 0 ms latency, which pulled latencyP50Ms down."""
    long_prompt = "word " * 2000
    rows = [*ROWS[:2], (long_prompt, "billing")]
    lines = [json.dumps({"prompt": p, "referenceResponse": r}) for p, r in rows]
    services.store.write_bytes(DATASET, "\n".join(lines).encode())
    model = {
        "bedrockModel": {"modelIdentifier": BASE_MODEL, "inferenceParams": '{"inferenceConfig": {"maxTokens": 2}}'}
    }
    job = create(services, body("too-long", models=[model]))
    done = run_in_process(services, job)
    assert done.status == "Completed", done.failure_messages
    (row,) = evaluation_job(done)["tuneforge"]["results"]["results"]
    assert row["errorRecords"] == 1 and row["records"] == 3
    out = services.store.read_bytes(
        f"s3://tests/eval-out/too-long/{job.id}/models/{BASE_MODEL.replace(':', '_')}/taskTypes/Classification/"
        f"datasets/tickets/{job.id}_output.jsonl"
    )
    answers = [json.loads(line)["modelResponses"][0] for line in out.splitlines()]
    assert [("error" in a) for a in answers] == [False, False, True]
    assert "context" in answers[2]["error"] and answers[2]["response"] == ""
    answered = [json.loads(line)["automatedEvaluationResult"]["scores"] for line in out.splitlines()]
    assert answered[2] == [{"metricName": "Accuracy", "result": 0.0}]
    assert row["latencyP50Ms"] > 0


def test_unanswered_records_are_left_out_of_the_latency_median() -> None:
    records = check_dataset(b'{"prompt": "a", "referenceResponse": "x"}\n' * 3, need_reference=True).records
    answers = [Answer("x", 0.2, 1), Answer("x", 0.4, 1), Answer("", error="Input is too long")]
    _, summary = score("Classification", [ACCURACY], records, Pass(answers, seconds=1.0), None)
    assert summary["latencyP50Ms"] == 300.0 and summary["errorRecords"] == 1
    assert summary["metrics"] == {ACCURACY: pytest.approx(2 / 3)}


def test_two_creates_racing_with_one_name_give_a_conflict_not_a_500(services: Services) -> None:
    """Both passed the name check before either committed: the unique index's IntegrityError was a 500."""
    from tests.unit.races import competitor_before_insert
    from tuneforge.errors import ConflictException

    write_dataset(services)
    with (
        competitor_before_insert(services.db.engine, "evaluation_jobs", lambda: create(services, body("racing"))),
        pytest.raises(ConflictException, match="An evaluation job named racing"),
    ):
        create(services, body("racing"))
    assert count_jobs(services) == 1


# -- the judge model -------------------------------------------------------------------------

JUDGE = "tuneforge.forge-micro-v1:0:512"
JUDGE_ROWS = [("What is the capital of France?", "Paris"), ("How many legs does a spider have?", "eight")]


def judge_body(
    name: str,
    metrics: tuple[str, ...] = ("Builtin.Correctness",),
    judges: list[str] | None = None,
    task: str = "Custom",
    custom: dict[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    request = body(name, task=task, metrics=metrics, models=models)
    automated = request["evaluationConfig"]["automated"]
    if judges is not None:
        automated["evaluatorModelConfig"] = {"bedrockEvaluatorModels": [{"modelIdentifier": j} for j in judges]}
    if custom is not None:
        automated["customMetricConfig"] = custom
    return request


def write_judge_dataset(services: Services, answers: dict[str, list[str]]) -> None:
    lines = []
    for index, (prompt, reference) in enumerate(JUDGE_ROWS):
        responses = [{"response": a[index], "modelIdentifier": source} for source, a in answers.items()]
        lines.append(json.dumps({"prompt": prompt, "referenceResponse": reference, "modelResponses": responses}))
    services.store.write_bytes(DATASET, "\n".join(lines).encode())


CUSTOM_METRIC = {
    "customMetrics": [
        {
            "customMetricDefinition": {
                "name": "Politeness",
                "instructions": "Is this reply to {{prompt}} polite? Reply: {{prediction}}",
                "ratingScale": [
                    {"definition": "rude", "value": {"floatValue": 1}},
                    {"definition": "neutral", "value": {"floatValue": 2}},
                    {"definition": "polite", "value": {"floatValue": 3}},
                ],
            }
        }
    ],
    "evaluatorModelConfig": {"bedrockEvaluatorModels": [{"modelIdentifier": JUDGE}]},
}


@pytest.mark.parametrize(
    ("request_change", "error", "message"),
    [
        ({}, ValidationException, "is rated by a judge model: give its model in evaluationConfig.automated"),
        ({"judges": [BASE_MODEL, BASE_MODEL]}, ValidationException, "Member must have length less than or equal to 1"),
        ({"judges": ["no-such-judge"]}, ResourceNotFoundException, "The judge model (evaluatorModelConfig): The model"),
        (
            {"judges": ["arn:aws:bedrock:us-east-1:123456789012:evaluation-job/abcdefabcdef"]},
            ValidationException,
            "cannot run an evaluation job's judge: give a foundation model",
        ),
        ({"judges": [BASE_MODEL], "task": "Classification"}, ValidationException, "runs on task type Custom"),
        (
            {"judges": [BASE_MODEL], "custom": CUSTOM_METRIC, "metrics": ("Politeness",)},
            ValidationException,
            "at most 1 judge per job",
        ),
        (
            {"custom": {**CUSTOM_METRIC, "evaluatorModelConfig": None}, "metrics": ("Politeness",)},
            ValidationException,
            "customMetricConfig.evaluatorModelConfig' failed to satisfy constraint: Member must not be null",
        ),
    ],
)
def test_judge_metrics_are_refused_without_a_judge_that_can_answer(
    services: Services, request_change: dict[str, Any], error: type[ServiceError], message: str
) -> None:
    write_dataset(services)
    with pytest.raises(error) as refused:
        create(services, judge_body("judged", **request_change))
    assert message in refused.value.message
    assert count_jobs(services) == 0


def test_the_judge_prompt_holds_the_prompt_reference_and_response_and_the_scale() -> None:
    from tuneforge.evaluation.judge import BUILTIN_JUDGE_METRICS, CORRECTNESS, custom_metric, judge_prompt

    text = judge_prompt(BUILTIN_JUDGE_METRICS[CORRECTNESS], "What is 2+2?", "five", "4")
    assert "Prompt:\nWhat is 2+2?" in text and "Reference answer:\n4" in text and "Response:\nfive" in text
    assert '"partially correct"' in text and text.endswith('Reply with JSON: {"rating": "<rating>"}')
    politeness = custom_metric(CUSTOM_METRIC["customMetrics"][0]["customMetricDefinition"])
    text = judge_prompt(politeness, "hi", "go away", None)
    assert text.startswith("Is this reply to hi polite? Reply: go away") and "Reference" not in text
    assert [politeness.score(i.label) for i in politeness.scale] == [0.0, 0.5, 1.0]


def test_a_judge_rates_every_answer_on_its_scale_through_constrained_decoding(services: Services) -> None:
    """forge-micro is random-initialised: without the grammar its replies are noise, so a rating on
    the scale for every record and metric shows the constraint at work, not the model's skill."""
    write_judge_dataset(services, {"mine": ["Paris", "six"]})
    job = create(
        services,
        judge_body(
            "judged",
            metrics=("Builtin.Correctness", "Builtin.Helpfulness", "Politeness"),
            judges=[JUDGE],
            custom=CUSTOM_METRIC,
            models=[{"precomputedInferenceSource": {"inferenceSourceIdentifier": "mine"}}],
        ),
    )
    assert evaluation_summary(job)["inferenceConfigSummary"]["modelConfigSummary"] == {
        "precomputedInferenceSourceIdentifiers": ["mine"]
    }
    done = run_in_process(services, job)
    assert done.status == "Completed", done.failure_messages
    (row,) = evaluation_job(done)["tuneforge"]["results"]["results"]
    assert row["judge"]["modelIdentifier"] == JUDGE
    counts = row["judge"]["ratingCounts"]
    assert set(counts) == {"Builtin.Correctness", "Builtin.Helpfulness", "Politeness"}
    assert all(sum(c.values()) == len(JUDGE_ROWS) for c in counts.values())
    assert set(counts["Politeness"]) == {"1", "2", "3"}
    for name in counts:
        assert 0.0 <= row["metrics"][name] <= 1.0
    out = services.store.read_bytes(
        f"s3://tests/eval-out/judged/{job.id}/models/mine/taskTypes/Custom/datasets/tickets/{job.id}_output.jsonl"
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(JUDGE_ROWS)
    for line in lines:
        scores = line["automatedEvaluationResult"]["scores"]
        assert [s["metricName"] for s in scores] == ["Correctness", "Helpfulness", "Politeness"]
        for s in scores:
            assert s["result"] in (0.0, 0.5, 1.0)
            (details,) = s["evaluatorDetails"]
            assert details["modelIdentifier"] == JUDGE and details["explanation"].startswith("rated ")


def test_a_judge_rates_a_record_the_same_in_a_batch_as_alone(fast_tmp: Path) -> None:
    """The property chosen for the judge (measured first: SmolLM2-135M-Instruct as judge gave every
    answer the same rating, exact reference answers and clearly wrong ones alike, so "rates right above
    wrong" cannot pass with a 135M judge). Each row of the batch decodes under its own metric's grammar:
    a rating taken alone must equal the same rating taken among others of other scales."""
    from tuneforge.engine.offline import offline_batcher
    from tuneforge.evaluation.judge import BUILTIN_JUDGE_METRICS, CORRECTNESS, custom_metric
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.folders import load_for_inference
    from tuneforge.recipes.evaluation import JudgeItem, judge_answers

    model, tokenizer = load_for_inference(ensure_builtin("forge-micro", fast_tmp), fast_tmp)
    batcher = offline_batcher(model, tokenizer, 8)
    politeness = custom_metric(CUSTOM_METRIC["customMetrics"][0]["customMetricDefinition"])
    items = [
        JudgeItem(metric, prompt, answer, reference)
        for prompt, reference in JUDGE_ROWS[:1]
        for answer in (reference, "no idea")
        for metric in (BUILTIN_JUDGE_METRICS[CORRECTNESS], politeness)
    ]
    together = judge_answers(batcher, items, lambda: False)
    alone = [judge_answers(batcher, [item], lambda: False) for item in items]
    assert together is not None and all(a is not None for a in alone)
    assert [r.label for r in together] == [a[0].label for a in alone if a is not None]
    for item, rating in zip(items, together, strict=True):
        assert rating.label in {s.label for s in item.metric.scale}
        assert f"Response:\n{item.response}" in rating.prompt or f"Reply: {item.response}" in rating.prompt
