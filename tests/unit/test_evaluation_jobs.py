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
            "evaluatorModelConfig \\(a judge model\\) is not supported yet",
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
