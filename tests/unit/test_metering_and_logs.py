"""The meter's arithmetic (model-unit-hours, cost, tokens) and the invocation-log record format."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuneforge.services import Services
from tuneforge.serving.invocation_logs import read_records
from tuneforge.serving.throughput import CreateThroughputRequest
from tuneforge.serving.usage import meters, usage_report
from tuneforge.settings import Settings

SMALL = "tuneforge.forge-small-v1:0:512"


def test_meter_bills_units_times_hours_until_deletion_and_counts_tokens(tmp_path: Path, db_url: str | None) -> None:
    services = Services.create(Settings(data_dir=tmp_path, price_per_model_unit_hour=2.5, database_url=db_url))
    row = services.throughput.create(CreateThroughputRequest(name="billed", model_id=SMALL, model_units=3))
    services.meter.record(row.id, row.model_arn, input_tokens=10, output_tokens=4)
    services.meter.record(row.id, row.model_arn, input_tokens=6, output_tokens=2)
    services.meter.record(None, row.model_arn, input_tokens=1, output_tokens=1)  # on demand: tokens, no hours
    services.meter.flush()
    two_hours_later = row.created_at + timedelta(hours=2)
    with services.db.session() as session:
        meter = meters(session, [row.id], now=two_hours_later)[row.id]
    assert meter.model_unit_hours == 6.0 and meter.cost == 15.0
    assert (meter.invocations, meter.input_tokens, meter.output_tokens) == (2, 16, 6)

    services.throughput.delete("billed", reason="deleted by the idle timeout: no requests for 1 minutes")
    report = usage_report(services.db, services.catalog, now=datetime.now(UTC) + timedelta(days=1))
    (deployment,) = report["deployments"]
    assert deployment["status"] == "Deleted" and "idle timeout" in deployment["deletionReason"]
    assert deployment["modelUnitHours"] < 0.01, "billing stops at deletion, not at report time"
    (model,) = report["models"]
    assert model["modelName"] == SMALL and model["invocations"] == 3 and model["inputTokens"] == 17
    assert report["total"]["outputTokens"] == 7
    services.close()


def test_invocation_log_records_follow_bedrocks_schema_and_key_layout(tmp_path: Path) -> None:
    services = Services.create(Settings(data_dir=tmp_path, account_id="111122223333", region="eu-west-1"))
    logs = services.invocation_logs
    record = dict(
        operation="Converse",
        model_id="triage",
        request_id="r-1",
        identity="arn:aws:iam::111122223333:user/AKID",
        input_body={"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        output_body={"output": {"message": {"role": "assistant", "content": [{"text": "billing"}]}}},
        input_tokens=5,
        output_tokens=2,
        request_metadata={"team": "support"},
        extension={"prompt": "User: hi\nAssistant:", "completion": "billing"},
        at=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
    )
    assert not logs.record(**record), "nothing is logged until logging is configured"
    logs.put({"s3Config": {"bucketName": "logs", "keyPrefix": "tf/"}, "textDataDeliveryEnabled": True})
    assert logs.record(**record)
    (uri,) = logs.flush()
    assert uri.startswith("s3://logs/tf/AWSLogs/111122223333/BedrockModelInvocationLogs/eu-west-1/2025/03/04/05/")
    assert uri.endswith(".json.gz")
    (line,) = gzip.decompress(services.store.read_bytes(uri)).decode().splitlines()
    entry = json.loads(line)
    assert entry["schemaType"] == "ModelInvocationLog" and entry["timestamp"] == "2025-03-04T05:06:07.000Z"
    assert entry["input"]["inputBodyJson"] == record["input_body"] and entry["input"]["inputTokenCount"] == 5
    assert entry["output"]["outputTokenCount"] == 2 and entry["requestMetadata"] == {"team": "support"}
    assert entry["tuneforge"]["completion"] == "billing"
    assert logs.flush() == []
    services.store.write_bytes(
        "s3://logs/tf/extra/plain.jsonl", (json.dumps({"operation": "InvokeModel"}) + "\n").encode()
    )
    assert [r["operation"] for r in read_records(services.store, "s3://logs/tf")] == ["Converse", "InvokeModel"]
    services.close()
