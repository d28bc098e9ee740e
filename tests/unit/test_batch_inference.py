"""Batch inference jobs: record parsing and per-record errors, the manifest, the offline batched path,
the batch size rule, and the queue's handling of batch jobs whose worker died or that are stopped."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.api.bedrock.invocation_schemas import invocation_job, parse_create_invocation_job
from tuneforge.db.tables import ModelInvocationJob, utcnow
from tuneforge.engine.batching import ContinuousBatcher
from tuneforge.engine.offline import OfflineRequest, generate_offline
from tuneforge.errors import ConflictException, ValidationException
from tuneforge.jobs.invocations import CreateInvocationJobRequest, mark_ended
from tuneforge.jobs.memory import MemoryBudget, builtin_shape, inference_rows
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference
from tuneforge.recipes.batch_inference import Counts, output_lines, parse_record, read_records
from tuneforge.services import Services
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.serving.usage import record_batch_job, usage_report
from tuneforge.settings import Settings, TokenPrice

ROLE = "arn:aws:iam::123456789012:role/tests"
BASE_MODEL = "tuneforge.forge-small-v1:0:512"


def test_a_native_body_becomes_the_request_invoke_model_would_send() -> None:
    record = parse_record(
        0, 1, '{"recordId": "a1", "modelInput": {"prompt": "hi", "max_gen_len": 7}}', "InvokeModel", 64
    )
    assert record.result is None and record.record_id == "a1"
    assert record.request == GenerationRequest(max_tokens=7, prompt="hi")
    defaulted = parse_record(0, 9, '{"modelInput": {"prompt": "hi"}}', "InvokeModel", 64)
    assert defaulted.request is not None and defaulted.request.max_tokens == 64
    assert defaulted.record_id == "00000000009"


def test_a_converse_body_becomes_a_conversation_request() -> None:
    body = json.dumps(
        {
            "modelInput": {
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "inferenceConfig": {"maxTokens": 3},
            }
        }
    )
    record = parse_record(0, 1, body, "Converse", 64)
    assert record.request is not None and record.request.conversation is not None
    assert record.request.conversation["messages"][0]["content"] == [{"text": "hi"}]
    assert record.request.max_tokens == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"recordId": "x", "modelInput": ', "line 3: not valid JSON"),
        ("[1, 2]", "line 3: a record must be a JSON object with recordId and modelInput"),
        ('{"recordId": "x"}', 'line 3: missing key "modelInput" (the InvokeModel request body)'),
        ('{"recordId": 5, "modelInput": {"prompt": "p"}}', 'line 3: "recordId" must be a non-empty string'),
        ('{"modelInput": "p"}', 'line 3: "modelInput" must be a JSON object'),
        ('{"modelInput": {"prompt": "p", "max_gen_len": 65}}', "line 3: modelInput: Value '65' at 'max_gen_len'"),
        ('{"modelInput": {"prompt": "p", "extra": 1}}', "line 3: modelInput: Malformed input request: extraneous key"),
        (
            '{"modelInput": {"max_gen_len": 3}}',
            "line 3: modelInput: 1 validation error detected: Value null at 'prompt'",
        ),
    ],
)
def test_a_bad_record_is_answered_by_an_error_naming_its_line(line: str, message: str) -> None:
    record = parse_record(0, 3, line, "InvokeModel", 64)
    assert record.request is None and record.result is not None
    error = record.result["error"]
    assert error["errorCode"] == 400 and error["errorMessage"].startswith(message), error


def test_blank_lines_are_not_records_and_outputs_keep_input_order() -> None:
    files = [("in.jsonl", b'\xef\xbb\xbf{"modelInput": {"prompt": "a"}}\n\n   \n{"bad\n')]
    (records,) = read_records(files, "InvokeModel", 8)
    assert [r.line for r in records] == [1, 4]
    records[0].result = {"modelOutput": {"generation": "x"}}
    assert output_lines(records).decode().splitlines() == [
        '{"recordId": "00000000001", "modelInput": {"prompt": "a"}, "modelOutput": {"generation": "x"}}',
        '{"recordId": "00000000004", "error": {"errorCode": 400, "errorMessage": "line 4: not valid JSON '
        '(Unterminated string starting at: line 1 column 2 (char 1))"}}',
    ]


def test_a_line_separator_inside_a_json_string_does_not_split_the_record_and_bad_utf8_is_named() -> None:
    """Lines end at "\\n" only: U+2028 is legal raw in a JSON string and str.splitlines cut the
    record in two invalid halves; a line that is not UTF-8 was read with U+FFFD in place of its bytes."""
    line = json.dumps({"modelInput": {"prompt": "one\u2028two"}}, ensure_ascii=False).encode()
    (records,) = read_records([("in.jsonl", line + b"\n" + b'{"modelInput": {"prompt": "\xff"}}\n')], "InvokeModel", 8)
    assert [r.line for r in records] == [1, 2]
    assert records[0].request is not None and records[0].request.prompt == "one\u2028two"
    assert records[1].request is None and records[1].result is not None
    assert (
        records[1].result["error"]["errorMessage"].startswith("line 2: not UTF-8 text (invalid start byte at byte 27)")
    )


def test_the_manifest_counts_processed_as_successes_plus_errors() -> None:
    counts = Counts(total=5, success=3, error=1, input_tokens=30, output_tokens=12)
    assert counts.manifest() == {
        "totalRecordCount": 5,
        "processedRecordCount": 4,
        "successRecordCount": 3,
        "errorRecordCount": 1,
        "inputTokenCount": 30,
        "outputTokenCount": 12,
    }


@pytest.fixture(scope="module")
def batcher(tmp_path_factory: pytest.TempPathFactory) -> ContinuousBatcher:
    torch.set_num_threads(1)
    models = tmp_path_factory.mktemp("models")
    model, tokenizer = load_for_inference(ensure_builtin("forge-micro", models), models)
    return ContinuousBatcher(model, tokenizer, max_batch=2)


def requests(batcher: ContinuousBatcher, count: int, max_tokens: int) -> list[tuple[int, OfflineRequest]]:
    out = []
    for i in range(count):
        request = GenerationRequest(max_tokens=max_tokens, prompt=f"User: question {i}\nAssistant:")
        out.append((i, OfflineRequest(request, batcher.render(request).ids)))
    return out


def test_offline_generation_keeps_the_batch_full_and_answers_each_request_as_alone(batcher: ContinuousBatcher) -> None:
    ends: dict[int, dict[str, Any]] = {}
    peak = 0

    def fed() -> Iterator[tuple[int, OfflineRequest]]:
        nonlocal peak
        for item in requests(batcher, 5, 6):
            peak = max(peak, batcher.running)
            yield item

    assert generate_offline(batcher, fed(), lambda key, event: ends.__setitem__(key, event))
    assert sorted(ends) == [0, 1, 2, 3, 4] and peak <= batcher.max_batch
    alone: dict[int, dict[str, Any]] = {}
    for item in requests(batcher, 5, 6):
        generate_offline(batcher, [item], lambda k, e: alone.__setitem__(k, e))
    assert {k: (e["text"], e["output_tokens"]) for k, e in alone.items()} == {
        k: (e["text"], e["output_tokens"]) for k, e in ends.items()
    }


def test_offline_generation_stops_when_asked_without_answering_the_rest(batcher: ContinuousBatcher) -> None:
    ends: list[int] = []
    steps = iter(range(100))
    finished = generate_offline(
        batcher, requests(batcher, 4, 50), lambda key, _: ends.append(key), lambda: next(steps) >= 2
    )
    assert not finished and len(ends) < 4


def test_the_batch_is_the_largest_that_fits_the_budget_up_to_the_cap() -> None:
    shape = builtin_shape("forge-small")
    assert shape is not None
    roomy = MemoryBudget(64 << 30, "test", gpu=False, bf16=False)
    assert inference_rows(shape, 512, roomy, cap=64)[0] == 64
    weights = 4 * shape.parameters
    tight = MemoryBudget(weights + (10 << 20), "test", gpu=False, bf16=False)
    rows, why = inference_rows(shape, 512, tight, cap=64)
    assert 1 <= rows < 64 and f"batch of {rows} rows" in why
    assert inference_rows(shape, 512, MemoryBudget(1, "test", gpu=False, bf16=False), cap=64)[0] == 1


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", heartbeat_timeout_s=30))
    yield created
    created.close()


def batch_job(services: Services, name: str) -> str:
    job = services.invocation_jobs.create(
        CreateInvocationJobRequest(
            job_name=name,
            role_arn=ROLE,
            model_id=BASE_MODEL,
            input_uri="s3://tests/in.jsonl",
            output_uri="s3://tests/out",
        )
    )
    return job.id


def test_stopping_a_queued_batch_job_stops_it_at_once(services: Services) -> None:
    job_id = batch_job(services, "queued")
    assert services.invocation_jobs.get(job_id).status == "Submitted"
    services.invocation_jobs.stop(job_id)
    job = services.invocation_jobs.get(job_id)
    assert (job.status, job.phase) == ("Stopped", "done") and job.ended_at is not None


@pytest.mark.parametrize(("status", "ends"), [("InProgress", "Failed"), ("Stopping", "Stopped")])
def test_a_batch_job_whose_worker_died_is_failed_or_stopped_not_left_running(
    services: Services, status: str, ends: str
) -> None:
    job_id = batch_job(services, f"lost-{status.lower()}")
    with services.db.session() as session:
        row = session.get(ModelInvocationJob, job_id)
        assert row is not None
        row.phase, row.status, row.worker_host, row.worker_pid = "running", status, socket.gethostname(), 2**22 + 1
        row.heartbeat_at = utcnow()
    Supervisor(services).recover()
    job = services.invocation_jobs.get(job_id)
    assert (job.status, job.phase) == (ends, "done")
    assert job.message is not None and "the worker process ended unexpectedly" in job.message


def test_two_creates_racing_with_one_name_give_a_conflict_not_a_500(services: Services) -> None:
    from tests.unit.races import competitor_before_insert
    from tuneforge.errors import ConflictException

    with (
        competitor_before_insert(services.db.engine, "model_invocation_jobs", lambda: batch_job(services, "racing")),
        pytest.raises(ConflictException, match="A model invocation job named racing"),
    ):
        batch_job(services, "racing")


def test_the_client_request_token_returns_the_same_job_and_refuses_another_request(services: Services) -> None:
    ask = CreateInvocationJobRequest(
        job_name="idempotent",
        role_arn=ROLE,
        model_id=BASE_MODEL,
        input_uri="s3://tests/in.jsonl",
        output_uri="s3://tests/out",
        client_request_token="token-1",
    )
    first = services.invocation_jobs.create(ask)
    assert services.invocation_jobs.create(ask).id == first.id
    with pytest.raises(ConflictException, match="clientRequestToken token-1 was already used"):
        services.invocation_jobs.create(replace(ask, output_uri="s3://tests/elsewhere"))


def test_a_provisioned_model_cannot_run_a_batch_job(services: Services) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdefabcdef"
    with pytest.raises(ValidationException, match="cannot run a batch inference job"):
        services.invocation_jobs.create(
            CreateInvocationJobRequest(
                job_name="pt", role_arn=ROLE, model_id=arn, input_uri="s3://t/in.jsonl", output_uri="s3://t/out"
            )
        )


def test_create_requests_are_checked_with_aws_messages() -> None:
    with pytest.raises(ValidationException) as refused:
        parse_create_invocation_job(
            {
                "jobName": "-bad",
                "roleArn": ROLE,
                "modelId": BASE_MODEL,
                "inputDataConfig": {},
                "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://t/out"}},
                "timeoutDurationInHours": 200,
            }
        )
    message = refused.value.message
    assert "at 'jobName' failed to satisfy constraint" in message
    assert "Value null at 'inputDataConfig.s3InputDataConfig'" in message
    assert "Value '200' at 'timeoutDurationInHours'" in message


def test_a_batch_job_stopped_between_its_claim_and_its_worker_start_ends_stopped(services: Services) -> None:
    from tuneforge.jobs.worker import BatchJobRunner

    job_id = batch_job(services, "claimed-then-stopped")
    with services.db.session() as session:
        row = session.get(ModelInvocationJob, job_id)
        assert row is not None
        row.phase, row.status = "running", "InProgress"
    services.invocation_jobs.stop(job_id)
    assert services.invocation_jobs.get(job_id).status == "Stopping"
    BatchJobRunner(services, job_id).run()
    job = services.invocation_jobs.get(job_id)
    assert (job.status, job.phase, job.message) == ("Stopped", "done", "Stopped before any record was answered")


def test_the_batch_price_is_the_fraction_of_the_base_models_on_demand_price() -> None:
    settings = Settings(
        token_prices={BASE_MODEL: TokenPrice(input=0.002, output=0.004)},
        price_per_1k_input_tokens=0.1,
        price_per_1k_output_tokens=0.3,
        batch_price_fraction=0.25,
    )
    assert settings.batch_token_price(BASE_MODEL) == TokenPrice(input=0.0005, output=0.001)
    assert settings.batch_token_price("other") == TokenPrice(input=0.025, output=0.075)
    assert Settings().batch_price_fraction == 0.5


def test_an_ended_batch_job_bills_its_tokens_once_at_its_batch_price_beside_on_demand_tokens(fast_tmp: Path) -> None:
    services = Services.create(
        Settings(
            data_dir=fast_tmp / "data",
            token_prices={BASE_MODEL: TokenPrice(input=0.002, output=0.004)},
            batch_price_fraction=0.25,
        )
    )
    try:
        job_id = batch_job(services, "billed")
        created = services.invocation_jobs.get(job_id)
        assert (created.price_per_1k_input_tokens, created.price_per_1k_output_tokens) == (0.0005, 0.001)
        with services.db.session() as session:
            row = session.get(ModelInvocationJob, job_id)
            assert row is not None
            row.phase, row.status, row.worker_host = "running", "InProgress", socket.gethostname()
            row.worker_pid, row.heartbeat_at = 2**22 + 1, utcnow()
            row.success_records, row.input_tokens, row.output_tokens = 3, 4000, 1000
        Supervisor(services).recover()  # the worker died after answering 3 records: Failed, tokens billed
        with services.db.session() as session:
            row = session.get(ModelInvocationJob, job_id)
            assert row is not None and row.status == "Failed"
            record_batch_job(session, row, utcnow())  # a second end bills nothing more
        services.meter.record(None, created.model_arn, 1000, 1000, price=TokenPrice(input=0.002, output=0.004))
        services.meter.flush()  # on-demand tokens of the same model get their own segment

        report = usage_report(services.db, services.catalog)
        (billed,) = report["batchJobs"]
        cost = 4 * 0.0005 + 1 * 0.001
        assert billed["jobArn"] == created.arn and billed["status"] == "Failed"
        assert (billed["records"], billed["inputTokens"], billed["outputTokens"]) == (3, 4000, 1000)
        assert billed["cost"] == pytest.approx(cost)
        total = report["total"]
        assert total["batchCost"] == pytest.approx(cost)
        assert total["onDemandCost"] == pytest.approx(0.006)
        assert total["cost"] == pytest.approx(cost + 0.006)
        assert (total["inputTokens"], total["outputTokens"]) == (5000, 2000)
        assert invocation_job(services.invocation_jobs.get(job_id))["tuneforge"]["cost"] == pytest.approx(cost)
    finally:
        services.close()


def test_a_batch_job_that_answered_nothing_bills_nothing(services: Services) -> None:
    job_id = batch_job(services, "unbilled")
    services.invocation_jobs.stop(job_id)
    report = usage_report(services.db, services.catalog)
    assert report["batchJobs"] == [] and report["total"]["batchCost"] == 0.0


def expiring_job(services: Services, name: str, records: list[bytes]) -> str:
    services.store.write_bytes(f"s3://tests/{name}/in.jsonl", b"\n".join(records) + b"\n")
    job = services.invocation_jobs.create(
        CreateInvocationJobRequest(
            job_name=name,
            role_arn=ROLE,
            model_id="tuneforge.forge-micro-v1:0:512",
            input_uri=f"s3://tests/{name}/in.jsonl",
            output_uri=f"s3://tests/{name}/out",
            timeout_hours=24,
        )
    )
    with services.db.session() as session:
        row = session.get(ModelInvocationJob, job.id)
        assert row is not None
        row.phase, row.status = "running", "InProgress"
    return job.id


def test_a_batch_job_whose_timeout_ran_out_while_queued_ends_expired(services: Services) -> None:
    from tuneforge.jobs.worker import EXPIRED_BEFORE_START, BatchJobRunner

    job_id = expiring_job(services, "expired-queued", [b'{"modelInput": {"prompt": "hi", "max_gen_len": 2}}'])
    submitted = services.invocation_jobs.get(job_id).created_at
    BatchJobRunner(services, job_id, clock=lambda: submitted + timedelta(hours=24)).run()
    job = services.invocation_jobs.get(job_id)
    assert (job.status, job.phase, job.message) == ("Expired", "done", EXPIRED_BEFORE_START)


def test_a_running_batch_job_past_its_timeout_ends_expired_with_what_it_answered_written(services: Services) -> None:
    from tuneforge.jobs.worker import BatchJobRunner

    job_id = expiring_job(
        services,
        "expired-running",
        [b"not json", b'{"modelInput": {"prompt": "hi", "max_gen_len": 200}}'],
    )
    submitted = services.invocation_jobs.get(job_id).created_at
    times = iter([submitted])  # the start check sees the job in time; every later look, 24 hours on
    BatchJobRunner(services, job_id, clock=lambda: next(times, submitted + timedelta(hours=24))).run()
    job = services.invocation_jobs.get(job_id)
    assert (job.status, job.phase) == ("Expired", "done")
    assert job.message is not None and "timeoutDurationInHours (24) ran out after 1 of 2 records" in job.message
    out = f"s3://tests/expired-running/out/{job_id}"
    manifest = json.loads(services.store.read_bytes(f"{out}/manifest.json.out"))
    assert (manifest["totalRecordCount"], manifest["processedRecordCount"], manifest["errorRecordCount"]) == (2, 1, 1)
    written = [json.loads(line) for line in services.store.read_bytes(f"{out}/in.jsonl.out").splitlines()]
    assert written[0]["error"]["errorMessage"].startswith("line 1: not valid JSON")


def test_on_demand_tokens_never_land_on_a_batch_jobs_segment_even_at_the_same_price(fast_tmp: Path) -> None:
    services = Services.create(Settings(data_dir=fast_tmp / "data", batch_price_fraction=1.0))
    try:
        job_id = batch_job(services, "same-price")
        with services.db.session() as session:
            row = session.get(ModelInvocationJob, job_id)
            assert row is not None
            row.input_tokens, row.output_tokens = 100, 10
            mark_ended(row, "Stopped", None)
        job = services.invocation_jobs.get(job_id)
        services.meter.record(None, job.model_arn, 7, 3, price=services.settings.token_price(BASE_MODEL))
        services.meter.flush()
        report = usage_report(services.db, services.catalog)
        assert [(b["inputTokens"], b["outputTokens"]) for b in report["batchJobs"]] == [(100, 10)]
        assert report["total"]["onDemandCost"] > 0
    finally:
        services.close()
