"""Serving metrics (what a request records, however it ends), the scrape-time gauges, and ``GET /metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_api_process import JOB_BODY
from tuneforge.api.app import create_app
from tuneforge.catalog.models import TokenLimits
from tuneforge.db.tables import Job
from tuneforge.errors import ModelNotReadyException, ValidationException
from tuneforge.serving import runtime as runtime_module
from tuneforge.serving.metrics import RecentOutputTokens, ServingMetrics
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.serving.runtime import RuntimeService, Target, collect
from tuneforge.settings import Settings

MODEL = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdefghij12"
SMALL = "tuneforge.forge-small-v1:0:512"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def end_event(stop_reason: str, *, input_tokens: int, output_tokens: int, first_token_s: float) -> dict[str, Any]:
    return {
        "event": "end",
        "text": "x" * output_tokens,
        "stop_reason": stop_reason,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "first_token_s": first_token_s,
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


# -- the tracker: one request's measurements -----------------------------------------------------------


def test_finished_request_counts_tokens_and_times_first_token_duration_and_per_token() -> None:
    registry, clock = CollectorRegistry(), Clock()
    metrics = ServingMetrics(registry, clock)
    with metrics.track(MODEL, "bedrock") as tracker:
        assert value(registry, "tuneforge_generation_requests_in_flight", model=MODEL, api="bedrock") == 1
        clock.now += 0.5  # waiting for a replica, tokenising
        tracker.observe({"event": "start", "input_tokens": 24, "prompt": "..."})
        clock.now += 1.5
        tracker.observe({"event": "text", "text": "bil", "output_tokens": 1})
        tracker.observe(end_event("end_turn", input_tokens=24, output_tokens=5, first_token_s=0.25))
    labels = {"model": MODEL, "api": "bedrock"}
    assert value(registry, "tuneforge_generation_requests_total", outcome="end_turn", **labels) == 1
    assert value(registry, "tuneforge_generation_requests_in_flight", **labels) == 0
    assert value(registry, "tuneforge_input_tokens_total", **labels) == 24
    assert value(registry, "tuneforge_output_tokens_total", **labels) == 5
    assert value(registry, "tuneforge_generation_duration_seconds_sum", **labels) == pytest.approx(2.0)
    # to first token: 0.5 s before the engine accepted it, then 0.25 s of queueing and prefill in the engine
    assert value(registry, "tuneforge_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.75)
    assert value(registry, "tuneforge_time_to_first_token_seconds_bucket", le="0.75", **labels) == 1
    assert value(registry, "tuneforge_time_to_first_token_seconds_bucket", le="0.5", **labels) == 0
    # the remaining 1.25 s decoded the 4 tokens after the first
    assert value(registry, "tuneforge_time_per_output_token_seconds_sum", **labels) == pytest.approx(1.25 / 4)
    assert value(registry, "tuneforge_time_per_output_token_seconds_count", **labels) == 1


def test_single_token_answer_has_no_time_per_output_token() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, Clock())
    with metrics.track(SMALL, "openai") as tracker:
        tracker.observe({"event": "start", "input_tokens": 3})
        tracker.observe(end_event("max_tokens", input_tokens=3, output_tokens=1, first_token_s=0.01))
    labels = {"model": SMALL, "api": "openai"}
    assert value(registry, "tuneforge_generation_requests_total", outcome="max_tokens", **labels) == 1
    assert value(registry, "tuneforge_time_to_first_token_seconds_count", **labels) == 1
    assert value(registry, "tuneforge_time_per_output_token_seconds_count", **labels) == 0


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (ModelNotReadyException("not yet"), "not_ready"),
        (ValidationException("prompt too long"), "invalid_request"),
        (RuntimeError("boom"), "model_error"),
        (GeneratorExit(), "cancelled"),
        (asyncio.CancelledError(), "cancelled"),
    ],
)
def test_a_request_that_does_not_finish_is_counted_by_why(exc: BaseException, outcome: str) -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, Clock())
    with pytest.raises(type(exc)), metrics.track(MODEL, "bedrock") as tracker:
        tracker.observe({"event": "start", "input_tokens": 7})
        tracker.observe({"event": "text", "text": "ab", "output_tokens": 2})
        raise exc
    labels = {"model": MODEL, "api": "bedrock"}
    assert value(registry, "tuneforge_generation_requests_total", outcome=outcome, **labels) == 1
    assert value(registry, "tuneforge_generation_requests_in_flight", **labels) == 0
    assert value(registry, "tuneforge_output_tokens_total", **labels) == 2, "tokens generated before it stopped"
    assert value(registry, "tuneforge_generation_duration_seconds_count", **labels) == 0


def test_recent_tokens_per_second_covers_the_last_window_only() -> None:
    clock = Clock()
    recent = RecentOutputTokens(60.0, clock)
    recent.add(MODEL, 600)
    clock.now += 30
    recent.add(MODEL, 120)
    recent.add(SMALL, 60)
    assert recent.tokens_per_second() == {MODEL: 12.0, SMALL: 1.0}
    clock.now += 45  # the first request's tokens left the window
    assert recent.tokens_per_second() == {MODEL: 2.0, SMALL: 1.0}
    clock.now += 60
    assert recent.tokens_per_second() == {MODEL: 0.0, SMALL: 0.0}


# -- RuntimeService.generate: the one place both API surfaces are measured -----------------------------


@dataclass
class FakeReplica:
    model_arn: str = "arn:aws:bedrock:us-east-1:123456789012:custom-model/x"
    socket_path: Path = Path("/nonexistent.sock")


@dataclass
class FakeManager:
    ready: bool = True
    released: list[FakeReplica] = field(default_factory=list)

    def acquire(self, _group: str) -> FakeReplica | None:
        return FakeReplica() if self.ready else None

    def release(self, replica: FakeReplica) -> None:
        self.released.append(replica)


class FakeMeter:
    def record(self, *_: Any) -> None:
        pass


def engine_events(*events: dict[str, Any]) -> Any:
    async def stream(_path: Path, _request: GenerationRequest) -> AsyncGenerator[dict[str, Any], None]:
        for event in events:
            yield event

    return stream


@pytest.fixture
def runtime() -> tuple[RuntimeService, CollectorRegistry, FakeManager]:
    registry, manager = CollectorRegistry(), FakeManager()
    service = RuntimeService(None, manager, FakeMeter(), 1.0, ServingMetrics(registry))  # type: ignore[arg-type]
    return service, registry, manager


TARGET = Target(
    model_id="my-deployment-name",
    group="pt:abcdefghij12",
    model_arn="arn:aws:bedrock:us-east-1:123456789012:custom-model/x",
    limits=TokenLimits(max_input_tokens=256, max_output_tokens=256, max_total_tokens=512),
    provisioned_model_id="abcdefghij12",
    provisioned_model_arn=MODEL,
)
REQUEST = GenerationRequest(max_tokens=8, prompt="hi", stream=True)
START = {"event": "start", "input_tokens": 4, "prompt": "hi"}
END = end_event("end_turn", input_tokens=4, output_tokens=3, first_token_s=0.0)


def test_generate_labels_by_the_resolved_deployment_not_the_name_sent(
    runtime: tuple[RuntimeService, CollectorRegistry, FakeManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, registry, manager = runtime
    monkeypatch.setattr(runtime_module, "stream_events", engine_events(START, END))
    end = asyncio.run(collect(service.generate(TARGET, REQUEST, "openai")))
    assert end["output_tokens"] == 3 and len(manager.released) == 1
    labels = {"model": MODEL, "api": "openai"}
    assert value(registry, "tuneforge_generation_requests_total", outcome="end_turn", **labels) == 1
    assert value(registry, "tuneforge_output_tokens_total", **labels) == 3
    assert value(registry, "tuneforge_input_tokens_total", **labels) == 4


def test_generate_counts_a_client_that_hung_up_mid_stream_as_cancelled(
    runtime: tuple[RuntimeService, CollectorRegistry, FakeManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, registry, manager = runtime
    text = {"event": "text", "text": "a", "output_tokens": 1}
    monkeypatch.setattr(runtime_module, "stream_events", engine_events(START, text, text, END))

    async def hang_up() -> None:
        events = service.generate(TARGET, REQUEST)
        await anext(events)
        await anext(events)
        await events.aclose()

    asyncio.run(hang_up())
    labels = {"model": MODEL, "api": "bedrock"}
    assert value(registry, "tuneforge_generation_requests_total", outcome="cancelled", **labels) == 1
    assert value(registry, "tuneforge_generation_requests_in_flight", **labels) == 0
    assert value(registry, "tuneforge_output_tokens_total", **labels) == 1
    assert len(manager.released) == 1


def test_generate_counts_engine_errors_and_unready_deployments(
    runtime: tuple[RuntimeService, CollectorRegistry, FakeManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, registry, manager = runtime
    error = {"event": "error", "code": "ValidationException", "message": "Input is too long"}
    monkeypatch.setattr(runtime_module, "stream_events", engine_events(error))
    with pytest.raises(ValidationException):
        asyncio.run(collect(service.generate(TARGET, REQUEST)))
    manager.ready = False
    with pytest.raises(ModelNotReadyException):
        asyncio.run(collect(service.generate(TARGET, REQUEST)))
    labels = {"model": MODEL, "api": "bedrock"}
    assert value(registry, "tuneforge_generation_requests_total", outcome="invalid_request", **labels) == 1
    assert value(registry, "tuneforge_generation_requests_total", outcome="not_ready", **labels) == 1
    assert value(registry, "tuneforge_input_tokens_total", **labels) == 0


# -- GET /metrics ----------------------------------------------------------------------------------------


def scrape(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {family.name: family for family in text_string_to_metric_families(response.text)}


@pytest.fixture
def open_client(fast_tmp: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False), base_url="http://127.0.0.1"
    ) as client:
        yield client


def test_metrics_show_deployments_and_jobs_read_at_scrape_time(open_client: TestClient) -> None:
    created = open_client.post(
        "/provisioned-model-throughput", json={"provisionedModelName": "pt-m", "modelId": SMALL, "modelUnits": 2}
    )
    arn = created.json()["provisionedModelArn"]
    assert open_client.post("/model-customization-jobs", json=JOB_BODY).status_code == 201
    services = open_client.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as session:
        job = session.query(Job).one()
        job.phase = "running"
        job.progress = {"step": 3, "loss": 2.5, "tokensPerSecond": 1234.5, "mfu": 0.31}
    families = scrape(open_client.get("/metrics"))
    (units,) = families["tuneforge_provisioned_model_units"].samples
    assert (units.labels, units.value) == ({"model": arn}, 2)
    (info,) = families["tuneforge_provisioned_model_info"].samples
    assert info.labels == {"model": arn, "name": "pt-m", "status": "Creating", "model_arn": info.labels["model_arn"]}
    jobs = {(s.labels["status"], s.labels["phase"]): s.value for s in families["tuneforge_customization_jobs"].samples}
    assert jobs == {("InProgress", "queued"): 0, ("InProgress", "running"): 1}
    (tokens,) = families["tuneforge_training_tokens_per_second"].samples
    assert tokens.labels["name"] == JOB_BODY["jobName"] and tokens.value == 1234.5
    assert families["tuneforge_training_loss"].samples[0].value == 2.5
    assert families["tuneforge_training_mfu"].samples[0].value == 0.31
    for name in ("tuneforge_generation_requests", "tuneforge_output_tokens", "tuneforge_time_to_first_token_seconds"):
        assert name in families


def test_apps_in_one_process_keep_their_own_registries(open_client: TestClient, tmp_path: Path) -> None:
    with TestClient(
        create_app(Settings(data_dir=tmp_path / "other"), run_supervisor=False), base_url="http://127.0.0.1"
    ) as other:
        open_client.post(
            "/provisioned-model-throughput",
            json={"provisionedModelName": "only-here", "modelId": SMALL, "modelUnits": 1},
        )
        assert "only-here" in open_client.get("/metrics").text
        assert "only-here" not in other.get("/metrics").text


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "locked", access_keys={"AK": "SK"}, api_keys=["sk-good"], allow_anonymous=False
    )
    with TestClient(create_app(settings, run_supervisor=False), base_url="http://127.0.0.1") as client:
        yield client


def sigv4_headers(key: str, secret: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url="http://testserver/metrics", headers={"host": "testserver"})
    SigV4Auth(Credentials(key, secret), "bedrock", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def test_metrics_need_credentials_where_everything_else_does(locked: TestClient) -> None:
    assert locked.get("/healthz").status_code == 200, "health probes stay open"
    for headers in ({}, {"authorization": "Bearer sk-bad"}, sigv4_headers("AK", "wrong")):
        refused = locked.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "tuneforge_" not in refused.text
    scrape(locked.get("/metrics", headers={"authorization": "Bearer sk-good"}))
    scrape(locked.get("/metrics", headers=sigv4_headers("AK", "SK")))


def test_engine_cold_starts_are_a_cumulative_histogram_per_model(open_client: TestClient) -> None:
    engines = open_client.app.state.engines  # type: ignore[attr-defined]
    engines.cold_starts.observe("od:" + SMALL, 0.8)
    engines.cold_starts.observe("od:" + SMALL, 4.2)
    engines.cold_starts.observe("pt:abcdefghij12", 12.0)
    family = scrape(open_client.get("/metrics"))["tuneforge_engine_cold_start_seconds"]
    samples = {(s.name, s.labels["model"], s.labels.get("le")): s.value for s in family.samples}
    name = "tuneforge_engine_cold_start_seconds"
    assert samples[(f"{name}_bucket", SMALL, "0.5")] == 0
    assert samples[(f"{name}_bucket", SMALL, "1.0")] == 1
    assert samples[(f"{name}_bucket", SMALL, "5.0")] == 2
    assert samples[(f"{name}_bucket", SMALL, "+Inf")] == 2
    assert samples[(f"{name}_count", SMALL, None)] == 2
    assert samples[(f"{name}_sum", SMALL, None)] == pytest.approx(5.0)
    deployment = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdefghij12"
    assert samples[(f"{name}_bucket", deployment, "10.0")] == 0
    assert samples[(f"{name}_count", deployment, None)] == 1
