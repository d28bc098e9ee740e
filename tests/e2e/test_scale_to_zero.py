"""On-demand engines scale to zero and come back: one start for many concurrent first requests, the
cold start in /metrics, an exit after the idle time, and a SIGKILLed engine restarted by the next
request while the requests it held fail with a retryable error."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import STUDENT_MODEL, Server, make_server, wait_until
from tests.e2e.test_serving_recovery import MESSAGES, engine_pids

pytestmark = pytest.mark.e2e

MODEL_LABEL = STUDENT_MODEL
CONCURRENT = 6


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def cold_starts(server: Server) -> float:
    return scrape(server).get(("tuneforge_engine_cold_start_seconds_count", frozenset({("model", MODEL_LABEL)})), 0.0)


def in_flight(server: Server) -> float:
    samples = scrape(server)
    return sum(v for (name, _), v in samples.items() if name == "tuneforge_generation_requests_in_flight")


def converse(runtime: Any) -> dict[str, Any]:
    response: dict[str, Any] = runtime.converse(
        modelId=STUDENT_MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 2}
    )
    return response


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = make_server(tmp_path, engine_threads=1, on_demand_idle_minutes=0.05)  # 3 s without requests
    srv.start()
    yield srv
    srv.stop()


def test_concurrent_first_requests_start_one_engine_which_exits_when_idle(server: Server) -> None:
    assert server.process is not None
    runtime = server.bedrock_runtime()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda _: converse(runtime), range(CONCURRENT)))
    assert all(a["usage"]["outputTokens"] >= 1 for a in answers)
    assert cold_starts(server) == 1, "concurrent first requests must start exactly one engine"
    assert len(engine_pids(server.process.pid)) == 1

    wait_until(lambda: engine_pids(server.process.pid), lambda pids: not pids, "the idle engine to exit")
    assert converse(runtime)["usage"]["outputTokens"] >= 1, "the next request starts it again and waits"
    assert cold_starts(server) == 2
    samples = scrape(server)
    total = samples[("tuneforge_engine_cold_start_seconds_sum", frozenset({("model", MODEL_LABEL)}))]
    assert total > 0


def test_a_killed_engine_fails_its_requests_retryably_and_the_next_request_restarts_it(server: Server) -> None:
    assert server.process is not None
    runtime = server.bedrock_runtime()
    converse(runtime)
    # No retry: botocore would retry ModelNotReadyException and get the restarted engine's answer.
    once = boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name=server.settings.region,
        aws_access_key_id="AKIDTESTS",
        aws_secret_access_key="test-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    (engine,) = engine_pids(server.process.pid)
    os.kill(engine, signal.SIGSTOP)  # the engine accepts connections but answers nothing: requests are held
    errors: list[str] = []
    statuses: list[int] = []

    def bedrock_request() -> None:
        try:
            converse(once)
            errors.append("answered")
        except ClientError as exc:
            errors.append(exc.response["Error"]["Code"])

    def openai_request() -> None:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        try:
            sdk.chat.completions.create(model=STUDENT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)

    threads = [threading.Thread(target=bedrock_request) for _ in range(3)] + [threading.Thread(target=openai_request)]
    for thread in threads:
        thread.start()
    wait_until(lambda: in_flight(server), lambda n: n == len(threads), "the requests to reach the engine")
    os.kill(engine, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert errors == ["ModelNotReadyException"] * 3, "held requests fail with a retryable error"
    assert statuses == [503]

    assert converse(runtime)["usage"]["outputTokens"] >= 1, "the next request starts a fresh engine"
    assert engine_pids(server.process.pid) - {engine}, "a new engine serves"
    assert cold_starts(server) == 2
    assert server.process.poll() is None
