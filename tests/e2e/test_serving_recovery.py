"""A server killed outright: its engines exit by themselves, and the next server brings every deployment back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import HANG_GUARD_S, STUDENT_MODEL, Server, make_server, server_engines

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def engine_pids(server_pid: int) -> set[int]:
    return set(server_engines(server_pid))


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def converse_when_ready(runtime: Any, model_id: str, timeout: float = HANG_GUARD_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response: dict[str, Any] = runtime.converse(
                modelId=model_id, messages=MESSAGES, inferenceConfig={"maxTokens": 2}
            )
            return response
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ModelNotReadyException", exc
            assert time.monotonic() < deadline, "deployment did not come back"
            time.sleep(0.3)


def test_killed_server_restarts_engines_for_live_deployments(tmp_path: Path) -> None:
    first = make_server(tmp_path, engine_threads=1)
    first.start()
    bedrock, runtime = first.bedrock(), first.bedrock_runtime()
    serving = bedrock.create_provisioned_model_throughput(
        provisionedModelName="serving", modelId=STUDENT_MODEL, modelUnits=1
    )["provisionedModelArn"]
    converse_when_ready(runtime, serving)
    assert first.process is not None
    old_engines = engine_pids(first.process.pid)
    creating = bedrock.create_provisioned_model_throughput(
        provisionedModelName="creating", modelId=STUDENT_MODEL, modelUnits=1
    )["provisionedModelArn"]
    first.kill()

    deadline = time.monotonic() + HANG_GUARD_S
    while any(alive(pid) for pid in old_engines):
        assert time.monotonic() < deadline, "engines outlived their server"
        time.sleep(0.2)

    second = Server(first.settings)  # same data directory, database and port
    second.start()
    try:
        bedrock, runtime = second.bedrock(), second.bedrock_runtime()
        assert converse_when_ready(runtime, serving)["usage"]["outputTokens"] >= 1
        assert converse_when_ready(runtime, creating)["usage"]["outputTokens"] >= 1
        statuses = {
            s["provisionedModelName"]: s["status"]
            for s in bedrock.list_provisioned_model_throughputs()["provisionedModelSummaries"]
        }
        assert statuses == {"serving": "InService", "creating": "InService"}
    finally:
        second.stop()
