"""Batch inference jobs end to end: boto3's CreateModelInvocationJob against a real server.

The answers in the output records must be the answers InvokeModel and Converse give to the same
bodies (greedy), bad records must be reported one by one while the rest are answered, and Stop,
Get and List must behave as Bedrock's do.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import BASE_MODEL, ROLE, STUDENT_MODEL, Server, cli, unique, wait_for_status, wait_until
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

PROMPTS = [f"User: question {i} about {word}\nAssistant:" for i, word in enumerate("abcdefghij")]
TERMINAL = ("Completed", "PartiallyCompleted", "Failed", "Stopped")


def store(server: Server) -> ObjectStore:
    return ObjectStore.from_settings(server.settings)


def jsonl(records: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def create(bedrock: Any, name: str, input_uri: str, output_uri: str, **extra: Any) -> str:
    arn: str = bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=extra.pop("modelId", BASE_MODEL),
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        **extra,
    )["jobArn"]
    return arn


def wait_for(bedrock: Any, arn: str, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(
        lambda: bedrock.get_model_invocation_job(jobIdentifier=arn),
        lambda got: got["status"] in statuses,
        f"batch job {arn} to reach {' or '.join(statuses)}",
    )
    return job


def output_records(server: Server, uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store(server).read_bytes(uri).decode().splitlines()]


def test_batch_job_answers_as_invoke_model_and_reports_bad_records_one_by_one(server: Server) -> None:
    bedrock, runtime = server.bedrock(), server.bedrock_runtime()
    prefix = f"s3://tests/batch/{unique('greedy')}"
    bodies = [{"prompt": p, "max_gen_len": 12} for p in PROMPTS]
    records: list[Any] = [{"recordId": f"r{i}", "modelInput": body} for i, body in enumerate(bodies)]
    records[3:3] = [
        b'{"recordId": "broken", "modelInput": ',
        {"recordId": "no-input", "prompt": "where is modelInput?"},
        {"recordId": "bad-body", "modelInput": {"prompt": "x", "temperature": 5}},
    ]
    store(server).write_bytes(f"{prefix}/in/records.jsonl", jsonl(records))
    arn = create(bedrock, unique("greedy"), f"{prefix}/in/records.jsonl", f"{prefix}/out/", timeoutDurationInHours=24)
    job_id = arn.rsplit("/", 1)[-1]
    assert arn.endswith(f":model-invocation-job/{job_id}") and len(job_id) == 12

    job = wait_for(bedrock, arn)
    assert job["status"] == "PartiallyCompleted", job
    assert (job["totalRecordCount"], job["processedRecordCount"]) == (13, 13)
    assert (job["successRecordCount"], job["errorRecordCount"]) == (10, 3)
    assert job["modelId"] == BASE_MODEL and job["timeoutDurationInHours"] == 24 and "endTime" in job

    out = output_records(server, f"{prefix}/out/{job_id}/records.jsonl.out")
    assert [r["recordId"] for r in out] == ["r0", "r1", "r2", "00000000004", "no-input", "bad-body"] + [
        f"r{i}" for i in range(3, 10)
    ]
    errors = {r["recordId"]: r["error"] for r in out if "error" in r}
    assert errors["00000000004"]["errorCode"] == 400
    assert errors["00000000004"]["errorMessage"].startswith("line 4: not valid JSON")
    assert errors["no-input"]["errorMessage"] == 'line 5: missing key "modelInput" (the InvokeModel request body)'
    assert "line 6: modelInput:" in errors["bad-body"]["errorMessage"]
    assert "temperature" in errors["bad-body"]["errorMessage"]

    answers = {r["recordId"]: r for r in out if "modelOutput" in r}
    for i, body in enumerate(bodies):
        expected = json.loads(runtime.invoke_model(modelId=BASE_MODEL, body=json.dumps(body))["body"].read())
        assert answers[f"r{i}"]["modelInput"] == body
        assert answers[f"r{i}"]["modelOutput"] == expected

    manifest = json.loads(store(server).read_bytes(f"{prefix}/out/{job_id}/manifest.json.out"))
    assert manifest == {
        "totalRecordCount": 13,
        "processedRecordCount": 13,
        "successRecordCount": 10,
        "errorRecordCount": 3,
        "inputTokenCount": sum(a["modelOutput"]["prompt_token_count"] for a in answers.values()),
        "outputTokenCount": sum(a["modelOutput"]["generation_token_count"] for a in answers.values()),
    }

    # Billed once ended, at batch_price_fraction of the base model's on-demand price, beside on-demand use.
    on_demand, fraction = server.settings.token_price(BASE_MODEL), server.settings.batch_price_fraction
    assert fraction == 0.5
    cost = (manifest["inputTokenCount"] * on_demand.input + manifest["outputTokenCount"] * on_demand.output) / 2000
    report = json.loads(cli(server, "usage", "--json").stdout)
    (billed,) = [b for b in report["batchJobs"] if b["jobArn"] == arn]
    assert (billed["records"], billed["inputTokens"], billed["outputTokens"]) == (
        10,
        manifest["inputTokenCount"],
        manifest["outputTokenCount"],
    )
    assert (billed["pricePer1kInputTokens"], billed["pricePer1kOutputTokens"]) == (
        on_demand.input / 2,
        on_demand.output / 2,
    )
    assert billed["cost"] == pytest.approx(cost) and report["total"]["batchCost"] >= billed["cost"] > 0
    assert billed["jobName"] in cli(server, "usage").stdout


def test_converse_batch_over_a_prefix_answers_as_converse(server: Server) -> None:
    bedrock, runtime = server.bedrock(), server.bedrock_runtime()
    prefix = f"s3://tests/batch/{unique('converse')}"
    bodies = [
        {"messages": [{"role": "user", "content": [{"text": f"ticket {i}"}]}], "inferenceConfig": {"maxTokens": 8}}
        for i in range(4)
    ]
    store(server).write_bytes(f"{prefix}/in/a.jsonl", jsonl([{"recordId": "a", "modelInput": bodies[0]}]))
    store(server).write_bytes(
        f"{prefix}/in/more/b.jsonl", jsonl([{"recordId": f"b{i}", "modelInput": b} for i, b in enumerate(bodies[1:])])
    )
    store(server).write_bytes(f"{prefix}/in/notes.txt", b"not a record file")
    arn = create(bedrock, unique("converse"), f"{prefix}/in/", f"{prefix}/out", modelInvocationType="Converse")
    job = wait_for(bedrock, arn)
    assert job["status"] == "Completed" and job["modelInvocationType"] == "Converse", job
    job_id = arn.rsplit("/", 1)[-1]
    out = output_records(server, f"{prefix}/out/{job_id}/a.jsonl.out")
    out += output_records(server, f"{prefix}/out/{job_id}/more/b.jsonl.out")
    assert [r["recordId"] for r in out] == ["a", "b0", "b1", "b2"]
    for record, body in zip(out, bodies, strict=True):
        expected = runtime.converse(modelId=BASE_MODEL, **body)
        assert record["modelOutput"]["output"] == expected["output"]
        assert record["modelOutput"]["stopReason"] == expected["stopReason"]
        assert record["modelOutput"]["usage"] == expected["usage"]


def test_stop_ends_a_running_batch_job_stopped_with_what_it_answered(server: Server) -> None:
    bedrock = server.bedrock()
    prefix = f"s3://tests/batch/{unique('stop')}"
    records = [{"modelInput": {"prompt": f"story {i}:", "max_gen_len": 256}} for i in range(3000)]
    store(server).write_bytes(f"{prefix}/in.jsonl", jsonl(records))
    arn = create(bedrock, unique("stop"), f"{prefix}/in.jsonl", f"{prefix}/out", tags=[{"key": "team", "value": "a"}])
    wait_until(
        lambda: bedrock.get_model_invocation_job(jobIdentifier=arn),
        lambda got: got["status"] == "InProgress" and got.get("totalRecordCount") == 3000,
        "the batch job to start answering",
    )
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] in ("Stopping", "Stopped")
    job = wait_for(bedrock, arn)
    assert job["status"] == "Stopped", job
    assert job["processedRecordCount"] < 3000
    manifest = json.loads(store(server).read_bytes(f"{prefix}/out/{arn.rsplit('/', 1)[-1]}/manifest.json.out"))
    assert manifest["totalRecordCount"] == 3000
    assert manifest["processedRecordCount"] == job["processedRecordCount"]
    with pytest.raises(ClientError) as refused:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert refused.value.response["Error"]["Code"] == "ConflictException"

    # The tags given at create are the job's, and can be changed after it ended.
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "a"}]
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "team", "value": "b"}, {"key": "cost-center", "value": "7"}])
    bedrock.untag_resource(resourceARN=arn, tagKeys=["cost-center"])
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "b"}]
    with pytest.raises(ClientError) as missing:
        bedrock.list_tags_for_resource(resourceARN=f"{arn.rsplit('/', 1)[0]}/zzzzzzzzzzzz")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"

    # A stopped job bills the tokens of the records it answered (none, if it stopped before the first).
    report = json.loads(cli(server, "usage", "--json").stdout)
    billed = [(b["status"], b["inputTokens"]) for b in report["batchJobs"] if b["jobArn"] == arn]
    assert billed == ([("Stopped", manifest["inputTokenCount"])] if manifest["inputTokenCount"] else [])


def test_list_pages_filters_and_sorts_and_bad_requests_are_refused(server: Server) -> None:
    bedrock = server.bedrock()
    tag = unique("lst")
    prefix = f"s3://tests/batch/{tag}"
    store(server).write_bytes(f"{prefix}/in.jsonl", jsonl([{"modelInput": {"prompt": "hi", "max_gen_len": 2}}]))
    arns = [create(bedrock, f"{tag}-{i}", f"{prefix}/in.jsonl", f"{prefix}/out") for i in range(3)]

    paginator = bedrock.get_paginator("list_model_invocation_jobs")
    pages = list(paginator.paginate(nameContains=tag, sortOrder="Ascending", PaginationConfig={"PageSize": 1}))
    assert [s["jobArn"] for p in pages for s in p["invocationJobSummaries"]] == arns
    assert all(len(p["invocationJobSummaries"]) == 1 for p in pages)
    newest_first = bedrock.list_model_invocation_jobs(nameContains=tag)["invocationJobSummaries"]
    assert [s["jobArn"] for s in newest_first] == arns[::-1]
    for arn in arns:
        wait_for(bedrock, arn)
    completed = bedrock.list_model_invocation_jobs(nameContains=tag, statusEquals="Completed")
    assert sorted(s["jobArn"] for s in completed["invocationJobSummaries"]) == sorted(arns)
    assert bedrock.list_model_invocation_jobs(nameContains=tag, statusEquals="Failed")["invocationJobSummaries"] == []
    summary = completed["invocationJobSummaries"][0]
    assert summary["modelId"] == BASE_MODEL and summary["roleArn"] == ROLE and "submitTime" in summary
    listed = json.loads(cli(server, "batch", "list", "--name-contains", tag, "--status", "Completed", "--json").stdout)
    assert sorted(job["jobArn"] for job in listed) == sorted(arns)
    shown = cli(server, "batch", "get", arns[0]).stdout
    assert "Completed" in shown and "records 1/1 processed, 1 answered, 0 failed" in shown

    def code(call: Any, **kwargs: Any) -> str:
        with pytest.raises(ClientError) as error:
            call(**kwargs)
        return str(error.value.response["Error"]["Code"])

    assert code(bedrock.get_model_invocation_job, jobIdentifier="abcdefabcdef") == "ResourceNotFoundException"
    assert (
        code(
            bedrock.create_model_invocation_job,
            jobName=f"{tag}-0",
            roleArn=ROLE,
            modelId=BASE_MODEL,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"{prefix}/in.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"{prefix}/out"}},
        )
        == "ConflictException"
    )
    assert (
        code(
            bedrock.create_model_invocation_job,
            jobName=f"{tag}-escape",
            roleArn=ROLE,
            modelId=BASE_MODEL,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": "/etc/passwd"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"{prefix}/out"}},
        )
        == "ValidationException"
    )
    assert code(
        bedrock.create_model_invocation_job,
        jobName=f"{tag}-nomodel",
        roleArn=ROLE,
        modelId="tuneforge.no-such-model-v1",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"{prefix}/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"{prefix}/out"}},
    ) in ("ResourceNotFoundException", "ValidationException")


def test_a_fine_tuned_lora_model_answers_a_batch_job_as_its_provisioned_throughput_does(server: Server) -> None:
    bedrock, runtime = server.bedrock(), server.bedrock_runtime()
    name = unique("batchlora")
    tickets = {"my parcel never came": "shipping", "I was charged twice": "billing", "cannot sign in": "account"}
    training = [
        {
            "messages": [
                {"role": "user", "content": [{"text": ticket}]},
                {"role": "assistant", "content": [{"text": label}]},
            ]
        }
        for ticket, label in tickets.items()
    ]
    store(server).write_bytes(f"s3://tests/batch/{name}/train.jsonl", jsonl(training))
    job = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": f"s3://tests/batch/{name}/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://tests/batch/{name}/training/"},
        hyperParameters={"trainingMethod": "lora", "epochCount": "40", "batchSize": "3", "learningRate": "1e-2"},
    )["jobArn"]
    trained = wait_for_status(bedrock, job, ("Completed", "Failed", "Stopped"))
    assert trained["status"] == "Completed", trained.get("failureMessage")
    custom = trained["outputModelArn"]

    bodies = [
        {"messages": [{"role": "user", "content": [{"text": t}]}], "inferenceConfig": {"maxTokens": 8}} for t in tickets
    ]
    store(server).write_bytes(
        f"{prefix(name)}/in.jsonl", jsonl([{"recordId": str(i), "modelInput": b} for i, b in enumerate(bodies)])
    )
    arn = create(
        bedrock, name, f"{prefix(name)}/in.jsonl", f"{prefix(name)}/out", modelId=custom, modelInvocationType="Converse"
    )
    deployment = bedrock.create_provisioned_model_throughput(provisionedModelName=name, modelId=custom, modelUnits=1)[
        "provisionedModelArn"
    ]
    done = wait_for(bedrock, arn)
    assert done["status"] == "Completed", done
    wait_until(
        lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=deployment)["status"],
        lambda status: status in ("InService", "Failed"),
        "the custom model's deployment",
    )
    out = output_records(server, f"{prefix(name)}/out/{arn.rsplit('/', 1)[-1]}/in.jsonl.out")
    try:
        for record, body in zip(out, bodies, strict=True):
            assert record["modelOutput"]["output"] == runtime.converse(modelId=deployment, **body)["output"]
    finally:
        bedrock.delete_provisioned_model_throughput(provisionedModelId=deployment)


def prefix(name: str) -> str:
    return f"s3://tests/batch/{name}"
