"""Serving metrics for Prometheus: what the runtime measures per request, and deployment gauges.

Every generation, from either API surface, passes through
:meth:`tuneforge.serving.runtime.RuntimeService.generate`, which wraps it in :meth:`ServingMetrics.track`.
That is the one place requests are counted and timed, so the Bedrock runtime and the OpenAI routes
report the same numbers the same way.

Labels stay bounded: ``model`` is what the runtime resolved the request to (a provisioned model's
ARN, whichever of its name or ARN the caller sent, or a foundation model's id for on-demand
inference), never the raw request string, and requests refused before resolution (an unknown
``modelId``) are not counted here. ``api`` is ``bedrock`` or ``openai``; ``outcome`` is a stop
reason or one of a few failure kinds (:data:`OUTCOMES`).

The metrics live in a :class:`~prometheus_client.CollectorRegistry` the caller owns (one per app),
not in prometheus_client's process-wide default registry, so several apps in one process (tests)
never collide.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tuneforge.arns import ArnFactory
from tuneforge.errors import ServiceError
from tuneforge.serving.manager import EngineManager
from tuneforge.serving.throughput import ThroughputService

Api = Literal["bedrock", "openai"]

OUTCOMES = ("end_turn", "max_tokens", "stop_sequence", "cancelled", "not_ready", "invalid_request", "model_error")
"""The three stop reasons; the client went away; no replica was ready; the engine refused the request
(a prompt too long for the context); the engine failed or could not be reached."""

FAILURE_OUTCOMES = {"ModelNotReadyException": "not_ready", "ValidationException": "invalid_request"}

TIME_TO_FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 120)
"""Milliseconds for a warm replica, up to minutes for a first on-demand request that waits for the model to load."""
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
RECENT_WINDOW_S = 60.0


class ServingMetrics:
    """The per-request serving metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        labels = ("model", "api")
        self.requests = Counter(
            "tuneforge_generation_requests",
            "Generation requests that reached a model, by how they ended (a stop reason, cancelled, or a failure).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "tuneforge_generation_requests_in_flight",
            "Generation requests being answered now, including those waiting for a replica.",
            labels,
            registry=registry,
        )
        self.input_tokens = Counter(
            "tuneforge_input_tokens",
            "Prompt tokens the engines accepted (counted when generation starts).",
            labels,
            registry=registry,
        )
        self.output_tokens = Counter(
            "tuneforge_output_tokens",
            "Tokens generated (counted when a request ends, including requests cancelled mid-stream).",
            labels,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "tuneforge_time_to_first_token_seconds",
            "From the request reaching the runtime to the model's first output token "
            "(waiting for a replica, queueing and prefill included).",
            labels,
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "tuneforge_generation_duration_seconds",
            "From the request reaching the runtime to the model's last token, for requests that finished.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "tuneforge_time_per_output_token_seconds",
            "Decoding time per output token after the first, for finished requests with at least two.",
            labels,
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=registry,
        )
        self.recent = RecentOutputTokens(RECENT_WINDOW_S, time.monotonic)
        registry.register(self.recent)

    def track(self, model: str, api: Api) -> RequestTracker:
        return RequestTracker(self, model, api)


class RequestTracker:
    """One request's measurements: feed it every engine event; use it as a context manager around the
    whole generation so that failures and cancellations are counted too."""

    def __init__(self, metrics: ServingMetrics, model: str, api: Api) -> None:
        self.metrics = metrics
        self.model = model
        self.api = api
        self.received = metrics.clock()
        self.started: float | None = None
        self.output_tokens = 0
        self.done = False

    def __enter__(self) -> RequestTracker:
        self.metrics.in_flight.labels(self.model, self.api).inc()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.metrics.in_flight.labels(self.model, self.api).dec()
        if self.done:
            return
        if isinstance(exc, GeneratorExit | asyncio.CancelledError):
            outcome = "cancelled"
        elif isinstance(exc, ServiceError):
            outcome = FAILURE_OUTCOMES.get(exc.code, "model_error")
        else:
            outcome = "model_error"
        self._count(outcome)

    def observe(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.started = self.metrics.clock()
            self.metrics.input_tokens.labels(self.model, self.api).inc(int(event["input_tokens"]))
        elif kind == "text":
            self.output_tokens = int(event["output_tokens"])
        elif kind == "end":
            self._finish(event)

    def _finish(self, end: dict[str, Any]) -> None:
        now = self.metrics.clock()
        self.output_tokens = int(end["output_tokens"])
        duration = now - self.received
        labels = (self.model, self.api)
        self.metrics.duration.labels(*labels).observe(duration)
        first_token_s = end.get("first_token_s")
        if first_token_s is not None and self.started is not None:
            to_first = min(duration, self.started - self.received + float(first_token_s))
            self.metrics.time_to_first_token.labels(*labels).observe(to_first)
            if self.output_tokens >= 2:
                per_token = (duration - to_first) / (self.output_tokens - 1)
                self.metrics.time_per_output_token.labels(*labels).observe(per_token)
        self._count(str(end["stop_reason"]))

    def _count(self, outcome: str) -> None:
        self.done = True
        self.metrics.requests.labels(self.model, self.api, outcome).inc()
        if self.output_tokens:
            self.metrics.output_tokens.labels(self.model, self.api).inc(self.output_tokens)
            self.metrics.recent.add(self.model, self.output_tokens)


class RecentOutputTokens(Collector):
    """``tuneforge_output_tokens_per_second``: output tokens of the requests that ended in the last
    ``window_s`` seconds, divided by ``window_s``; for a dashboard without PromQL. With Prometheus,
    ``rate(tuneforge_output_tokens_total[1m])`` says the same over any window."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._ended: dict[str, deque[tuple[float, int]]] = {}

    def add(self, model: str, tokens: int) -> None:
        now = self.clock()
        with self._lock:
            ended = self._ended.setdefault(model, deque())
            ended.append((now, tokens))
            self._prune(ended, now)

    def tokens_per_second(self) -> dict[str, float]:
        now = self.clock()
        with self._lock:
            rates = {}
            for model, ended in self._ended.items():
                self._prune(ended, now)
                rates[model] = sum(tokens for _, tokens in ended) / self.window_s
            return rates

    def _prune(self, ended: deque[tuple[float, int]], now: float) -> None:
        while ended and ended[0][0] < now - self.window_s:
            ended.popleft()

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "tuneforge_output_tokens_per_second",
            f"Output tokens per second over the last {self.window_s:.0f} s (requests that ended in that window).",
            labels=["model"],
        )
        for model, rate in sorted(self.tokens_per_second().items()):
            gauge.add_metric([model], rate)
        yield gauge


class DeploymentCollector(Collector):
    """Provisioned throughputs and engine replicas, read at scrape time from the database and the
    engine manager (no state of its own)."""

    def __init__(self, throughput: ThroughputService, manager: EngineManager, arns: ArnFactory) -> None:
        self.throughput = throughput
        self.manager = manager
        self.arns = arns

    def collect(self) -> Iterator[Metric]:
        units = GaugeMetricFamily(
            "tuneforge_provisioned_model_units",
            "Model units (replicas) of each live provisioned throughput.",
            labels=["model"],
        )
        info = GaugeMetricFamily(
            "tuneforge_provisioned_model_info",
            "Always 1: a live provisioned throughput's name, status and the model it serves "
            "(join on model to name series).",
            labels=["model", "name", "status", "model_arn"],
        )
        for row in sorted(self.throughput.live(), key=lambda r: r.arn):
            units.add_metric([row.arn], row.model_units)
            info.add_metric([row.arn, row.name, row.status, row.model_arn], 1)
        replicas = GaugeMetricFamily(
            "tuneforge_engine_replicas",
            "Engine processes by state (starting, ready, failed, stopping); model as in the serving metrics.",
            labels=["model", "state"],
        )
        for group, states in sorted(self.manager.replica_counts().items()):
            for state, count in sorted(states.items()):
                replicas.add_metric([self._model(group), state], count)
        cold_starts = HistogramMetricFamily(
            "tuneforge_engine_cold_start_seconds",
            "From starting an engine process to its model being loaded and warmed up (what the first request "
            "after a scale to zero waits), by model as in the serving metrics.",
            labels=["model"],
        )
        for group, (buckets, total) in sorted(self.manager.cold_starts.snapshot().items()):
            cold_starts.add_metric(
                [self._model(group)], [(_bucket_label(bound), count) for bound, count in buckets], total
            )
        yield units
        yield info
        yield replicas
        yield cold_starts

    def _model(self, group: str) -> str:
        """An engine group's ``model`` label: the provisioned model's ARN, or the on-demand model's id."""
        kind, _, identifier = group.partition(":")
        return self.arns.provisioned_model(identifier) if kind == "pt" else identifier


def _bucket_label(bound: float) -> str:
    """A histogram bucket's ``le`` as prometheus_client writes its own: ``1.0``, ``7.5``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
