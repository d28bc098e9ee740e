"""A model is served as it was trained, through boto3: its chat template, or its raw prompts.

Two tiny fine-tunes memorise four support tickets: a registered Gemma-style folder (its own
tokenizer and chat template) trained on conversations, and the built-in forge-micro trained on
prompt/completion records. Through Converse, the first must answer as its template taught it,
and the second exactly as InvokeModel answers its raw prompt: before tuneforge remembered a
model's data format, Converse rendered that prompt in a template the model never saw.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_for_status, wait_until
from tests.model_folders import build_model_folder

pytestmark = pytest.mark.e2e

TICKETS = {
    "Ticket: my parcel never came": "shipping",
    "Ticket: I was charged twice": "billing",
    "Ticket: cannot sign in": "account",
    "Ticket: the app crashes": "technical",
}
MEMORISE = {"trainingMethod": "full", "epochCount": "60", "batchSize": "4", "learningRate": "1e-2"}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def fine_tune_and_deploy(bedrock: Any, server: Server, base: str, records: list[dict[str, Any]]) -> str:
    from tuneforge.storage import ObjectStore

    name = unique("templates")
    uri = f"s3://templates/{name}.jsonl"
    ObjectStore.from_settings(server.settings).write_bytes(uri, "".join(json.dumps(r) + "\n" for r in records).encode())
    job = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=base,
        trainingDataConfig={"s3Uri": uri},
        outputDataConfig={"s3Uri": f"s3://templates/out/{name}/"},
        hyperParameters=MEMORISE,
    )["jobArn"]
    done = wait_for_status(bedrock, job, ("Completed", "Failed", "Stopped"))
    assert done["status"] == "Completed", done.get("failureMessage")
    arn: str = bedrock.create_provisioned_model_throughput(
        provisionedModelName=name, modelId=done["outputModelArn"], modelUnits=1
    )["provisionedModelArn"]
    deployed = wait_until(
        lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=arn),
        lambda got: got["status"] in ("InService", "Failed"),
        f"deployment {name}",
    )
    assert deployed["status"] == "InService", deployed.get("failureMessage")
    return arn


@pytest.fixture(scope="module")
def gemma_model(server: Server) -> str:
    from tuneforge.services import Services

    folder = build_model_folder("gemma", server.settings.data_dir / "hf" / unique("gemma-tiny"))
    model_id = f"test.{folder.name}"
    services = Services.create(server.settings)
    services.catalog.register(model_id, str(folder))
    services.close()
    return model_id


def test_a_model_trained_on_conversations_answers_through_its_chat_template(
    server: Server, bedrock: Any, gemma_model: str
) -> None:
    records = [
        {"messages": [user(ticket), {"role": "assistant", "content": [{"text": label}]}]}
        for ticket, label in TICKETS.items()
    ]
    arn = fine_tune_and_deploy(bedrock, server, gemma_model, records)
    runtime = server.bedrock_runtime()
    for ticket, label in TICKETS.items():
        response = runtime.converse(modelId=arn, messages=[user(ticket)], inferenceConfig={"maxTokens": 16})
        assert response["output"]["message"]["content"][0]["text"] == label
        assert response["stopReason"] == "end_turn"  # at <end_of_turn>, which never shows in the text
    events = list(runtime.converse_stream(modelId=arn, messages=[user(ticket)])["stream"])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == label


def test_a_model_trained_on_prompts_answers_converse_as_invoke_model_answers_its_raw_prompt(
    server: Server, bedrock: Any
) -> None:
    records = [{"prompt": f"{ticket}\nCategory:", "completion": f" {label}"} for ticket, label in TICKETS.items()]
    arn = fine_tune_and_deploy(bedrock, server, STUDENT_MODEL, records)
    runtime = server.bedrock_runtime()
    for record in records:
        raw = runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": record["prompt"], "max_gen_len": 16}))
        generation = json.loads(raw["body"].read())["generation"]
        response = runtime.converse(modelId=arn, messages=[user(record["prompt"])], inferenceConfig={"maxTokens": 16})
        assert response["output"]["message"]["content"][0]["text"] == generation == record["completion"]
