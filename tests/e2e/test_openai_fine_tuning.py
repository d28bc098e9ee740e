"""OpenAI's fine-tuning API end to end: a real server, the ``openai`` SDK, one tiny LoRA job on forge-micro.

The same job is seen through boto3's ``bedrock`` client, paused mid-training and resumed from its
checkpoint, and its result and checkpoints answer through ``/v1/chat/completions``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, make_server, wait_for_status, wait_until
from tuneforge.data.tasks import make_preference_task
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

QUESTIONS = ("What is the code word?", "Say the word.", "Which word?", "Tell me.")
HELD_OUT = ("Name it.", "And the word is?", "Go on.")
WORD = "zebra"
EPOCHS = 40
STEPS = EPOCHS * len(QUESTIONS)
HYPERPARAMETERS = {"n_epochs": EPOCHS, "batch_size": 1, "learning_rate_multiplier": 3.4}
"""160 steps of one record: enough for forge-micro (random-initialised) to answer with its one word
(learning rate 3.4 x the default 3e-3), and long enough to pause in the middle."""


def chat_lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


TRAINING = chat_lines(
    [
        {
            "messages": [
                {"role": "system", "content": "Answer with the code word."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": WORD},
            ]
        }
        for question in QUESTIONS
    ]
)


@pytest.fixture(scope="module")
def ft_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker at a time, so a second job stays queued while the first trains."""
    srv = make_server(tmp_path_factory.mktemp("openai-ft"), worker_concurrency=1, on_demand_idle_minutes=0.5)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sdk(ft_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ft_server.url}/v1", api_key="placeholder", max_retries=0)


def upload(sdk: openai.OpenAI, content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> Any:
    return sdk.files.create(file=(name, io.BytesIO(content)), purpose=purpose)  # type: ignore[arg-type]


def processed(sdk: openai.OpenAI, file_id: str) -> Any:
    return wait_until(lambda: sdk.files.retrieve(file_id), lambda f: f.status != "uploaded", f"file {file_id}")


def job_status(sdk: openai.OpenAI, job_id: str, statuses: tuple[str, ...]) -> Any:
    return wait_until(
        lambda: sdk.fine_tuning.jobs.retrieve(job_id), lambda j: j.status in statuses, f"{job_id} {statuses}"
    )


def answer(sdk: openai.OpenAI, model: str, question: str) -> str:
    reply = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Answer with the code word."}, {"role": "user", "content": question}],
        max_tokens=8,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_files_lifecycle_and_bad_files(sdk: openai.OpenAI) -> None:
    first = upload(sdk, TRAINING)
    assert (first.object, first.purpose, first.bytes, first.filename) == (
        "file",
        "fine-tune",
        len(TRAINING),
        "train.jsonl",
    )
    assert processed(sdk, first.id).status == "processed"
    assert sdk.files.content(first.id).read() == TRAINING

    bad = upload(
        sdk, TRAINING + b'{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n{oops\n'
    )
    bad = processed(sdk, bad.id)
    assert bad.status == "error"
    assert 'line 5: field "messages[1].role"' in bad.status_details
    assert "line 6: invalid JSON" in bad.status_details

    other = upload(sdk, b'{"custom_id": "1"}\n', name="batch.jsonl", purpose="batch")
    listed = sdk.files.list(purpose="fine-tune")
    assert {first.id, bad.id} <= {f.id for f in listed.data} and other.id not in {f.id for f in listed.data}
    newest = sdk.files.list(limit=1)
    assert [f.id for f in newest.data] == [other.id] and newest.has_more
    after = sdk.files.list(limit=1, after=other.id)
    assert [f.id for f in after.data] == [bad.id]

    for file_id, param, says in [
        (other.id, "training_file", "purpose 'batch'"),
        (bad.id, "training_file", "failed validation: line 5"),
        ("file-missing", "training_file", "not found"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model=STUDENT_MODEL, training_file=file_id)
        error = refused.value.body
        assert isinstance(error, dict) and error["param"] == param and says in error["message"], error
    with pytest.raises(openai.BadRequestError, match="holds chat records"):
        sdk.fine_tuning.jobs.create(
            model=STUDENT_MODEL,
            training_file=first.id,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
        )

    assert sdk.files.delete(other.id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(other.id)


def test_a_supervised_job_through_openai_and_bedrock(sdk: openai.OpenAI, ft_server: Server) -> None:
    bedrock = ft_server.bedrock()
    training = upload(sdk, TRAINING)
    processed(sdk, training.id)
    job = sdk.fine_tuning.jobs.create(
        model=STUDENT_MODEL,
        training_file=training.id,
        suffix="codeword",
        seed=7,
        metadata={"team": "tests"},
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
    )
    assert (job.object, job.seed, job.metadata, job.training_file) == (
        "fine_tuning.job",
        7,
        {"team": "tests"},
        training.id,
    )
    assert job.status in ("queued", "validating_files", "running") and job.fine_tuned_model is None

    # A second job waits in the queue (one worker): pause, resume and cancel it there.
    queued = sdk.fine_tuning.jobs.create(model=STUDENT_MODEL, training_file=training.id)
    assert sdk.fine_tuning.jobs.pause(queued.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(queued.id).status == "queued"
    assert sdk.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert bedrock.get_model_customization_job(jobIdentifier=queued.id)["status"] == "Stopped"
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1).data] == [queued.id]
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1, after=queued.id).data] == [job.id]

    # Pause mid-training: the worker writes a checkpoint and ends; Bedrock still sees InProgress.
    wait_until(
        lambda: sdk.fine_tuning.jobs.list_events(job.id, limit=100).data,
        lambda events: any(e.type == "metrics" for e in events),
        "the first training step",
    )
    sdk.fine_tuning.jobs.pause(job.id)
    paused = job_status(sdk, job.id, ("paused",))
    wait_until(
        lambda: sdk.fine_tuning.jobs.list_events(job.id, limit=5).data,
        lambda e: any("paused" in x.message for x in e),
        "paused",
    )
    assert bedrock.get_model_customization_job(jobIdentifier=job.id)["status"] == "InProgress"
    time.sleep(1.0)
    steps = [e.data["step"] for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert paused.status == "paused" and max(steps) < STEPS

    sdk.fine_tuning.jobs.resume(job.id)
    done = job_status(sdk, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{STUDENT_MODEL}:codeword:")
    assert done.hyperparameters.n_epochs == EPOCHS and done.hyperparameters.batch_size == 1
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    resumed = [m for m in messages if m.startswith("resumed from checkpoint at step")]
    assert resumed and int(resumed[0].split("step ")[1].split("/")[0]) > 0, messages

    # Paging of events: newest first, `after` continues below.
    first_page = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert first_page.has_more and len(first_page.data) == 3
    next_page = sdk.fine_tuning.jobs.list_events(job.id, limit=3, after=first_page.data[-1].id)
    assert int(next_page.data[0].id.split("-")[1]) < int(first_page.data[-1].id.split("-")[1])

    # The same job through Bedrock: its name is the OpenAI id, its custom model is the result.
    got = bedrock.get_model_customization_job(jobIdentifier=job.id)
    assert got["status"] == "Completed" and got["hyperParameters"]["epochCount"] == str(EPOCHS)
    assert got["hyperParameters"]["seed"] == "7"
    assert job.id in {j["jobName"] for j in bedrock.list_model_customization_jobs()["modelCustomizationJobSummaries"]}

    # The result and its checkpoints answer at once, and the result is listed among the models.
    assert done.fine_tuned_model in {m.id for m in sdk.models.list().data}
    for question in QUESTIONS:
        assert answer(sdk, done.fine_tuned_model, question).strip() == WORD
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [STEPS, STEPS - 4, STEPS - 8]  # the last three epochs
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{STEPS}"
    assert answer(sdk, checkpoints[1].fine_tuned_model_checkpoint, QUESTIONS[0]).strip() == WORD
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-missing")

    # The same file and hyperparameters through the Bedrock surface give the same model: held-out
    # questions get the same answers from both.
    ObjectStore.from_settings(ft_server.settings).write_bytes("s3://tests/twin/train.jsonl", TRAINING)
    twin = bedrock.create_model_customization_job(
        jobName="bedrock-twin",
        customModelName="bedrock-twin",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": "s3://tests/twin/train.jsonl"},
        outputDataConfig={"s3Uri": "s3://tests/twin/out/"},
        hyperParameters={
            key: got["hyperParameters"][key] for key in ("epochCount", "batchSize", "learningRate", "seed")
        },
    )
    twin_model = wait_for_status(bedrock, twin["jobArn"], ("Completed", "Failed"))
    assert twin_model["status"] == "Completed", twin_model.get("failureMessage")
    deployment = bedrock.create_custom_model_deployment(
        modelDeploymentName="bedrock-twin", modelArn=twin_model["outputModelArn"]
    )["customModelDeploymentArn"]
    for question in HELD_OUT:
        through_bedrock = ft_server.bedrock_runtime().converse(
            modelId=deployment,
            system=[{"text": "Answer with the code word."}],
            messages=[{"role": "user", "content": [{"text": question}]}],
            inferenceConfig={"maxTokens": 8, "temperature": 0},
        )["output"]["message"]["content"][0]["text"]
        assert through_bedrock and answer(sdk, done.fine_tuned_model, question) == through_bedrock


def test_unknown_members_and_bad_hyperparameters_are_refused(sdk: openai.OpenAI, tmp_path: Path) -> None:
    training = upload(sdk, TRAINING)
    processed(sdk, training.id)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hyperparameters": {"n_epochs": 0}}, "n_epochs must be at least 1"),
        ({"hyperparameters": {"n_epochs": "many"}}, "n_epochs"),
        ({"suffix": "has spaces"}, "suffix"),
        ({"extra_body": {"colour": "red"}}, "Unrecognized request argument supplied: colour"),
    ]
    for extra, says in cases:
        with pytest.raises(openai.BadRequestError, match=says):
            sdk.fine_tuning.jobs.create(model=STUDENT_MODEL, training_file=training.id, **extra)


def test_dpo_and_reinforcement_jobs_through_the_openai_sdk(sdk: openai.OpenAI, ft_server: Server) -> None:
    """The other two methods reach their recipes: DPO on OpenAI's preference records, and reinforcement with an
    OpenAI grader object. Tiny runs: the quality of each is shown in its own module through boto3."""
    pairs, _ = make_preference_task(n_train=8, n_test=0, seed=5)
    preference = upload(sdk, chat_lines(pairs), name="pairs.jsonl")
    prompts = upload(
        sdk,
        chat_lines(
            [
                {"messages": [{"role": "user", "content": f"Say A: {word}{i}"}], "reference_answer": "A"}
                for i in range(4)
                for word in ("apple", "river", "stone", "cloud")
            ]
        ),
        name="prompts.jsonl",
    )
    processed(sdk, preference.id)
    processed(sdk, prompts.id)
    dpo = sdk.fine_tuning.jobs.create(
        model=STUDENT_MODEL,
        training_file=preference.id,
        suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}}},
    )
    grader = {
        "type": "string_check",
        "name": "says_a",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_answer}}",
        "operation": "eq",
    }
    rft = sdk.fine_tuning.jobs.create(
        model=STUDENT_MODEL,
        training_file=prompts.id,
        suffix="rft",
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 1, "batch_size": 16}},
        },
    )
    bedrock = ft_server.bedrock()
    for job, customization_type, says in [
        (dpo, "FINE_TUNING", "DPO loss"),
        (rft, "REINFORCEMENT_FINE_TUNING", "reward"),
    ]:
        done = job_status(sdk, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", done.error
        seen = bedrock.get_model_customization_job(jobIdentifier=job.id)
        assert seen["customizationType"] == customization_type
        messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert any(says in message for message in messages), messages
        assert isinstance(answer(sdk, done.fine_tuned_model, "Say A: maple"), str)
    assert bedrock.get_model_customization_job(jobIdentifier=dpo.id)["hyperParameters"]["beta"] == "0.2"
    # boto3 knows only lambdaGrader in the graderConfig union; the raw response carries the OpenAI grader.
    raw = httpx.get(f"{ft_server.url}/model-customization-jobs/{rft.id}", timeout=10).json()
    assert raw["customizationConfig"]["rftConfig"]["graderConfig"] == {"openai": grader}
