"""SmolLM2-135M-Instruct, the pretrained built-in, through boto3 against a real server.

It answers a factual question through Converse on demand; fine-tuning it with default
hyperparameters on the demo's field-extraction task raises held-out exact match, measured through
Converse before (on demand) and after (provisioned throughput); and the fine-tuned model distils into
the SmolLM2 student, which goes from no held-out answer right to most of them. The server converts
the wheel's GGUF on first use, once per session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.e2e.conftest import HANG_GUARD_S, ROLE, Server, make_server, unique, wait_for_status, wait_until
from tuneforge.data.tasks import extraction_matches, make_extraction_task, to_prompt_only, write_jsonl
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0:8k"
STUDENT = "tuneforge.smollm2-64m-student-v1:0:8k"
TERMINAL = ("Completed", "Failed", "Stopped")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server: its jobs run one after another, each with every CPU the server may
    run on (one, under `make test`'s pinning; the worker never starts more threads than that)."""
    srv = make_server(tmp_path_factory.mktemp("smollm2-server"), worker_concurrency=1, worker_threads=2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bedrock(server: Server) -> Any:
    return server.bedrock()


@pytest.fixture(scope="module")
def runtime(server: Server) -> Any:
    """A runtime client that waits as long as the first on-demand request may (conversion, model load)."""
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name=server.settings.region,
        aws_access_key_id="AKIDTESTS",
        aws_secret_access_key="test-secret",
        config=Config(retries={"max_attempts": 1}, read_timeout=HANG_GUARD_S),
    )


def answer(runtime: Any, model_id: str, text: str, max_tokens: int = 24) -> str:
    response = runtime.converse(
        modelId=model_id,
        messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"temperature": 0.0, "maxTokens": max_tokens},
    )
    return str(response["output"]["message"]["content"][0]["text"])


def exact_match(runtime: Any, model_id: str, records: Sequence[dict[str, Any]]) -> int:
    """Held-out answers right through Converse, sent eight at a time as concurrent clients would."""
    questions = [r["messages"][0]["content"][0]["text"] for r in records]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda q: answer(runtime, model_id, q), questions))
    return sum(
        extraction_matches(out, r["messages"][1]["content"][0]["text"]) for out, r in zip(outputs, records, strict=True)
    )


@dataclass(frozen=True)
class Extraction:
    train_uri: str
    prompts_uri: str
    validation_uri: str
    validation: list[dict[str, Any]]
    """What the distillation report measures the student on (20 records)."""
    test: list[dict[str, Any]]
    """Held out from everything (40 records)."""


@pytest.fixture(scope="module")
def extraction(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Extraction:
    train, held_out = make_extraction_task(n_train=64, n_test=60)
    store = ObjectStore.from_settings(server.settings)
    folder = tmp_path_factory.mktemp("extraction")
    prefix = f"s3://tests/{unique('smollm2')}"
    files = {"train": train, "prompts": [to_prompt_only(r) for r in train], "validation": held_out[:20]}
    for name, records in files.items():
        store.upload_file(write_jsonl(folder / f"{name}.jsonl", records), f"{prefix}/{name}.jsonl")
    return Extraction(
        f"{prefix}/train.jsonl", f"{prefix}/prompts.jsonl", f"{prefix}/validation.jsonl", held_out[:20], held_out[20:]
    )


@pytest.fixture(scope="module")
def fine_tuned(bedrock: Any, extraction: Extraction) -> dict[str, Any]:
    """SmolLM2 fine-tuned with every hyperparameter at its default."""
    name = unique("smollm2-ft")
    arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=SMOLLM2,
        customizationType="FINE_TUNING",
        trainingDataConfig={"s3Uri": extraction.train_uri},
        outputDataConfig={"s3Uri": f"s3://tests/output/{name}/"},
    )["jobArn"]
    job = wait_for_status(bedrock, arn, TERMINAL)
    assert job["status"] == "Completed", job.get("failureMessage")
    return job


def test_smollm2_and_its_student_are_listed_with_their_limits(bedrock: Any) -> None:
    teacher = bedrock.get_foundation_model(modelIdentifier=SMOLLM2)["modelDetails"]
    assert teacher["customizationsSupported"] == ["FINE_TUNING", "CONTINUED_PRE_TRAINING", "REINFORCEMENT_FINE_TUNING"]
    assert "ON_DEMAND" in teacher["inferenceTypesSupported"]
    assert teacher["providerName"] == "huggingface"
    student = bedrock.get_foundation_model(modelIdentifier=STUDENT)["modelDetails"]
    assert "DISTILLATION" in student["customizationsSupported"]
    distillable = bedrock.list_foundation_models(byCustomizationType="DISTILLATION")["modelSummaries"]
    assert STUDENT in {m["modelId"] for m in distillable}


def test_smollm2_answers_a_factual_question_through_converse(runtime: Any) -> None:
    reply = answer(runtime, SMOLLM2, "What is the capital of France?")
    assert "Paris" in reply, reply


def test_fine_tuning_with_default_hyperparameters_improves_held_out_exact_match(
    bedrock: Any, runtime: Any, extraction: Extraction, fine_tuned: dict[str, Any]
) -> None:
    assert fine_tuned["hyperParameters"]["epochCount"] == "3"  # the defaults, as the job reports them
    before = exact_match(runtime, SMOLLM2, extraction.test)
    pt = bedrock.create_provisioned_model_throughput(
        provisionedModelName=unique("smollm2-pt"), modelId=fine_tuned["outputModelArn"], modelUnits=1
    )["provisionedModelArn"]
    try:
        wait_until(
            lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=pt)["status"],
            lambda status: status in ("InService", "Failed"),
            "the fine-tuned SmolLM2 to be in service",
        )
        after = exact_match(runtime, pt, extraction.test)
    finally:
        bedrock.delete_provisioned_model_throughput(provisionedModelId=pt)
    total = len(extraction.test)
    print(f"SmolLM2 held-out exact match through Converse: {before}/{total} -> {after}/{total}")
    assert after >= before + total // 4, (before, after)


def test_fine_tuned_smollm2_distils_into_its_student(
    bedrock: Any, runtime: Any, server: Server, extraction: Extraction, fine_tuned: dict[str, Any]
) -> None:
    name = unique("smollm2-kd")
    arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=STUDENT,
        customizationType="DISTILLATION",
        trainingDataConfig={"s3Uri": extraction.prompts_uri},
        validationDataConfig={"validators": [{"s3Uri": extraction.validation_uri}]},
        outputDataConfig={"s3Uri": f"s3://tests/output/{name}/"},
        customizationConfig={
            "distillationConfig": {
                "teacherModelConfig": {
                    "teacherModelIdentifier": fine_tuned["outputModelArn"],
                    "maxResponseLengthForInference": 16,
                }
            }
        },
    )["jobArn"]
    job = wait_for_status(bedrock, arn, TERMINAL)
    assert job["status"] == "Completed", job.get("failureMessage")
    store = ObjectStore.from_settings(server.settings)
    root = f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/{layout.job_folder(arn.rsplit('/', 1)[-1])}"
    report = json.loads(store.read_bytes(f"{root}/{layout.DISTILLATION_REPORT}"))
    reference = report["reference"]
    assert reference["prompts"] == 20
    base_student = exact_match(runtime, STUDENT, extraction.validation)
    print(
        f"SmolLM2 student, held-out exact match: {base_student}/20 before, "
        f"{reference['student']:.0%} after (teacher {reference['teacher']:.0%}); "
        f"agreement with the teacher {report['agreement']['student']:.0%}"
    )
    assert reference["student"] * 20 >= base_student + 5
    assert report["agreement"]["student"] >= 0.5
