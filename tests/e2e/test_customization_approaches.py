"""CONTINUED_PRE_TRAINING and DISTILLATION through boto3 against a real server, next to FINE_TUNING.

The expensive part is one module-scoped fixture, :func:`runs`, which starts the jobs so that two
train at once (the session server runs two workers of one thread each): a CPT job beside the
fine-tuning of the teacher, then the distillation job beside the logit-distillation job. The teacher
is a fine-tuned forge-small, named by its custom model ARN; the student is forge-micro.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import BASE_MODEL, ROLE, STUDENT_MODEL, Server, unique, wait_for_status
from tuneforge.data.tasks import make_conversation_task, make_domain_documents, to_prompt_only, write_jsonl
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

TERMINAL = ("Completed", "Failed", "Stopped")
MAX_RESPONSE = 16


def create(bedrock: Any, **request: Any) -> str:
    name = request.pop("jobName", unique(request["customizationType"].lower().replace("_", "-")))
    arn: str = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        outputDataConfig={"s3Uri": f"s3://tests/out/{name}/"},
        **request,
    )["jobArn"]
    return arn


def teacher_config(teacher: str, max_response: int = MAX_RESPONSE) -> dict[str, Any]:
    return {
        "distillationConfig": {
            "teacherModelConfig": {"teacherModelIdentifier": teacher, "maxResponseLengthForInference": max_response}
        }
    }


def output_file(store: ObjectStore, job: dict[str, Any], relative: str) -> bytes:
    """A job output at its documented place: <output s3Uri>/model-customization-job-<id>/<relative>."""
    job_id = job["jobArn"].rsplit("/", 1)[-1]
    return store.read_bytes(f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/{layout.job_folder(job_id)}/{relative}")


@dataclass
class Runs:
    cpt: str
    teacher: dict[str, Any]
    distillation: str
    logit_kd: str
    cpt_test_documents: list[dict[str, Any]]


@pytest.fixture(scope="module")
def runs(bedrock: Any, server: Server, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    store = ObjectStore.from_settings(server.settings)
    folder = tmp_path_factory.mktemp("approaches")

    def upload(name: str, records: list[dict[str, Any]]) -> str:
        uri = f"s3://tests/approaches/{name}.jsonl"
        store.upload_file(write_jsonl(folder / f"{name}.jsonl", records), uri)
        return uri

    documents, test_documents, _ = make_domain_documents(n_train=60, n_test=30, seed=1)
    cpt = create(
        bedrock,
        baseModelIdentifier=BASE_MODEL,
        customizationType="CONTINUED_PRE_TRAINING",
        trainingDataConfig={"s3Uri": upload("documents", documents)},
        validationDataConfig={"validators": [{"s3Uri": upload("test-documents", test_documents)}]},
        hyperParameters={"epochCount": "1", "batchSize": "4"},
    )

    train, test = make_conversation_task(n_train=400, n_test=60, seed=7, system="")
    teacher_arn = create(
        bedrock,
        baseModelIdentifier=BASE_MODEL,
        customizationType="FINE_TUNING",
        trainingDataConfig={"s3Uri": upload("teacher-train", train)},
        hyperParameters={"epochCount": "5"},
    )
    teacher = wait_for_status(bedrock, teacher_arn, TERMINAL)
    assert teacher["status"] == "Completed", teacher.get("failureMessage")

    # Prompts only, plus one repeated prompt the insights report must reject; the validation set
    # keeps its golden answers, which become the report's reference metric.
    prompts = [to_prompt_only(record) for record in train]
    prompts.append(prompts[0])
    distillation = create(
        bedrock,
        baseModelIdentifier=STUDENT_MODEL,
        customizationType="DISTILLATION",
        trainingDataConfig={"s3Uri": upload("prompts", prompts)},
        validationDataConfig={"validators": [{"s3Uri": upload("held-out", test)}]},
        customizationConfig=teacher_config(teacher["outputModelArn"]),
        hyperParameters={"epochCount": "8"},
    )
    logit_kd = create(
        bedrock,
        baseModelIdentifier=STUDENT_MODEL,
        customizationType="DISTILLATION",
        trainingDataConfig={"s3Uri": upload("kd-prompts", prompts[:96])},
        validationDataConfig={"validators": [{"s3Uri": upload("kd-held-out", test[:16])}]},
        customizationConfig=teacher_config(teacher["outputModelArn"]),
        hyperParameters={"logitDistillationWeight": "0.5", "epochCount": "1"},
    )
    return Runs(cpt, teacher, distillation, logit_kd, test_documents)


@pytest.fixture(scope="module")
def cpt_job(bedrock: Any, runs: Runs) -> dict[str, Any]:
    return wait_for_status(bedrock, runs.cpt, TERMINAL)


@pytest.fixture(scope="module")
def distillation_job(bedrock: Any, runs: Runs) -> dict[str, Any]:
    return wait_for_status(bedrock, runs.distillation, TERMINAL)


# -- catalog -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION"])
def test_foundation_models_advertise_and_filter_on_every_approach(bedrock: Any, ctype: str) -> None:
    listed = {m["modelId"] for m in bedrock.list_foundation_models(byCustomizationType=ctype)["modelSummaries"]}
    assert {BASE_MODEL, STUDENT_MODEL} <= listed
    details = bedrock.get_foundation_model(modelIdentifier=STUDENT_MODEL)["modelDetails"]
    assert ctype in details["customizationsSupported"]


# -- continued pre-training ----------------------------------------------------------------------


def test_continued_pretraining_lowers_held_out_domain_perplexity_by_30_percent(
    cpt_job: dict[str, Any], runs: Runs, server: Server, tmp_path: Path
) -> None:
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes.loop import mean_token_loss
    from tuneforge.recipes.tokenising import encode_documents

    assert cpt_job["status"] == "Completed", cpt_job.get("failureMessage")
    assert {d["status"] for d in cpt_job["statusDetails"].values()} == {"Completed"}
    after = math.exp(cpt_job["validationMetrics"][0]["validationLoss"])
    model, tokenizer = load_model_and_tokenizer(server.settings.models_dir / "builtin" / "forge-small")
    windows, _ = encode_documents(write_jsonl(tmp_path / "test.jsonl", runs.cpt_test_documents), tokenizer, 512, 64)
    before = math.exp(mean_token_loss(model, windows, tokenizer.pad_token_id))
    assert after <= 0.7 * before, f"held-out perplexity {before:.1f} (base) -> {after:.1f}"
    store = ObjectStore.from_settings(server.settings)
    rows = list(csv.DictReader(io.StringIO(output_file(store, cpt_job, layout.validation_metrics(0)).decode())))
    assert float(rows[-1]["perplexity"]) == pytest.approx(after, rel=1e-4)


# -- distillation --------------------------------------------------------------------------------


def test_distillation_reports_three_stages_and_teacher_progress(
    distillation_job: dict[str, Any], server: Server
) -> None:
    job = distillation_job
    assert job["status"] == "Completed", job.get("failureMessage")
    assert set(job["statusDetails"]) == {"validationDetails", "dataProcessingDetails", "trainingDetails"}
    assert {d["status"] for d in job["statusDetails"].values()} == {"Completed"}
    url = f"{server.url}/model-customization-jobs/{quote(job['jobArn'], safe='')}/events"
    events = httpx.get(url, timeout=10).json()["events"]
    processing = [e["data"] for e in events if e["kind"] == "processing"]
    assert processing[-1]["done"] == processing[-1]["total"] == 400 + 60  # distinct prompts + held-out


def test_student_agrees_with_the_teacher_and_is_twice_as_fast(distillation_job: dict[str, Any], server: Server) -> None:
    report = json.loads(
        output_file(ObjectStore.from_settings(server.settings), distillation_job, layout.DISTILLATION_REPORT)
    )
    assert report["heldOutPrompts"] == 60
    assert report["agreement"]["student"] >= 0.8, report["summary"]
    assert report["reference"]["prompts"] == 60 and report["reference"]["student"] > 0.5
    assert report["student"]["parameters"] < report["teacher"]["parameters"] / 4
    student, teacher = report["student"], report["teacher"]
    assert student["generationTokensPerSecond"] >= 2 * teacher["generationTokensPerSecond"], report["measurement"]
    assert student["costPerMillionOutputTokens"] < teacher["costPerMillionOutputTokens"]
    assert (
        report["teacher"]["modelArn"]
        == distillation_job["customizationConfig"]["distillationConfig"]["teacherModelConfig"]["teacherModelIdentifier"]
    )


def test_prompt_insights_and_synthetic_sample_are_at_their_documented_paths(
    distillation_job: dict[str, Any], bedrock: Any, server: Server
) -> None:
    store = ObjectStore.from_settings(server.settings)
    insights = json.loads(output_file(store, distillation_job, layout.PROMPT_INSIGHTS))
    assert (insights["prompts"], insights["trained"], insights["heldOut"]) == (461, 400, 60)
    assert insights["rejectedByReason"] == {"duplicate": 1}
    duplicate = next(d for d in insights["details"] if d["status"] == "rejected")
    assert (duplicate["file"], duplicate["line"], duplicate["detail"]) == (
        "prompts.jsonl",
        401,
        "same prompt as line 1",
    )
    assert insights["responses"] == {"teacher": 400, "golden": 0}
    sample = [
        json.loads(line) for line in output_file(store, distillation_job, layout.SYNTHETIC_DATA_SAMPLE).splitlines()
    ]
    assert sample and all(record["messages"][-1]["role"] == "assistant" for record in sample)

    model_arn = distillation_job["outputModelArn"]
    raw = httpx.get(f"{server.url}/custom-models/{quote(model_arn, safe='')}", timeout=10).json()
    job_id = distillation_job["jobArn"].rsplit("/", 1)[-1]
    root = f"{distillation_job['outputDataConfig']['s3Uri'].rstrip('/')}/{layout.job_folder(job_id)}"
    assert raw["outputArtifacts"]["distillationReport"] == f"{root}/{layout.DISTILLATION_REPORT}"
    assert raw["outputArtifacts"]["promptInsights"] == f"{root}/{layout.PROMPT_INSIGHTS}"
    assert bedrock.get_custom_model(modelIdentifier=model_arn)["customizationType"] == "DISTILLATION"


def test_logit_distillation_job_completes_with_its_validation_loss(bedrock: Any, runs: Runs) -> None:
    job = wait_for_status(bedrock, runs.logit_kd, TERMINAL)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["hyperParameters"]["logitDistillationWeight"] == "0.5"
    assert len(job["validationMetrics"]) == 1 and job["validationMetrics"][0]["validationLoss"] > 0
    model = bedrock.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["validationMetrics"] == job["validationMetrics"]


# -- refusals ------------------------------------------------------------------------------------


def test_teacher_of_another_family_is_refused_at_create_time(bedrock: Any, server: Server) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.model.builtin import build_tokenizer
    from tuneforge.services import Services

    folder = server.settings.data_dir / "hf" / unique("tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=260, n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    build_tokenizer(folder)  # the very same tokenizer: the family alone must be enough to refuse
    services = Services.create(server.settings)
    model_id = f"test.{folder.name}"
    services.catalog.register(model_id, str(folder))
    services.close()
    with pytest.raises(ClientError) as exc:
        create(
            bedrock,
            baseModelIdentifier=STUDENT_MODEL,
            customizationType="DISTILLATION",
            trainingDataConfig={"s3Uri": "s3://tests/approaches/prompts.jsonl"},
            customizationConfig=teacher_config(model_id),
        )
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    message = exc.value.response["Error"]["Message"]
    assert "(family gpt2) cannot teach the student model" in message and "same model family and tokenizer" in message


def test_distillation_data_without_a_user_turn_fails_preflight_naming_the_line(bedrock: Any, server: Server) -> None:
    store = ObjectStore.from_settings(server.settings)
    lines = [
        {"messages": [{"role": "user", "content": [{"text": "Ticket: refund\nCategory:"}]}]},
        {"messages": [{"role": "assistant", "content": [{"text": "billing"}]}]},
    ]
    store.write_bytes("s3://tests/approaches/no-user.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    arn = create(
        bedrock,
        baseModelIdentifier=STUDENT_MODEL,
        customizationType="DISTILLATION",
        trainingDataConfig={"s3Uri": "s3://tests/approaches/no-user.jsonl"},
        customizationConfig=teacher_config(BASE_MODEL),
    )
    job = wait_for_status(bedrock, arn, TERMINAL)
    assert job["status"] == "Failed"
    assert "s3://tests/approaches/no-user.jsonl: line 2" in job["failureMessage"]
    assert "needs at least one user message" in job["failureMessage"]
    assert job["statusDetails"]["validationDetails"]["status"] == "Failed"
    assert job["statusDetails"]["dataProcessingDetails"]["status"] == "NotStarted"
