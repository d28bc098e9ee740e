"""The inference core both API surfaces call: which engine answers a ``modelId``, and the generation.

``modelId`` resolution, as Bedrock's runtime does it:

- a **provisioned-model ARN** (or, as an extension, a provisioned throughput's name): its replicas;
  ModelNotReadyException until it is ``InService``;
- a **foundation model** id or ARN that supports on-demand inference, or an **imported model** ARN
  (imported models are served on demand, as on Bedrock): a shared engine started on first use (the
  request waits for it) and stopped after ``on_demand_idle_minutes`` without use;
- a **custom model deployment** ARN or name (CreateCustomModelDeployment): the on-demand engine of
  the custom model's base with the model's folder as the request's adapter, or, for a model trained
  in full, an on-demand engine of its own (see :mod:`tuneforge.serving.deployments`); billed per
  token, refused with ThrottlingException past its monthly budget;
- an OpenAI ``fine_tuned_model`` name (``ft:...``, or a checkpoint's ``ft:...:ckpt-step-N``): served
  as a deployment of it would be, with no deployment to create
  (:meth:`tuneforge.jobs.openai_fine_tuning.FineTuningService.route`);
- a **custom model** ARN or name: refused with ValidationException, because custom models are
  served only through a custom model deployment or provisioned throughput (as on Bedrock);
- anything else: ValidationException ("The provided model identifier is invalid."), which the
  OpenAI surface answers as 404 ``model_not_found`` (:class:`UnknownModel`).

With several API replicas on one database (:mod:`tuneforge.replicas`), the target's engine group
is served by the replica holding its lease. A request reaching another replica is resolved there
(errors in the request come back at once) and **forwarded** as the engine request to the holder's
internal endpoint (``POST /internal/replica/generate``, authenticated with the replica secret),
which answers the engine's events as JSON lines: streaming is preserved for every surface, and the
holder meters the request and takes its serving metrics, once. A group nobody live holds (an
on-demand model's first request, or a dead holder's group) is taken by the replica the request
reached, which then starts its engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from tuneforge import errors
from tuneforge.arns import decode_identifier, is_arn, resource_type
from tuneforge.catalog.models import TokenLimits
from tuneforge.db.tables import CustomModel, ProvisionedModel
from tuneforge.errors import (
    ModelErrorException,
    ModelNotReadyException,
    ResourceNotFoundException,
    ServiceError,
    ValidationException,
    constraint_errors,
    range_violation,
)
from tuneforge.replicas import SECRET_HEADER, Peer, ReplicaRegistry
from tuneforge.serving.deployments import DeploymentRoute, DeploymentService
from tuneforge.serving.engine_client import EngineUnavailable, stream_events
from tuneforge.serving.manager import EngineManager, Replica, on_demand_group, pt_group
from tuneforge.serving.metrics import Api, ServingMetrics
from tuneforge.serving.protocol import ADAPTER_LOAD_FAILED, GenerationRequest
from tuneforge.serving.throughput import DELETED, ServedModel, ThroughputService
from tuneforge.serving.usage import UsageMeter
from tuneforge.settings import TokenPrice

INVALID_MODEL = "The provided model identifier is invalid."
FORWARD_PATH = "/internal/replica/generate"
FORWARDED_ERROR = "forwarded_error"
"""The event a replica answering a forwarded request sends instead of the engine's for a ServiceError."""


class UnknownModel(ValidationException):
    """No model answers to this id: ValidationException on Bedrock, 404 ``model_not_found`` on OpenAI."""

    def __init__(self, model_id: str) -> None:
        super().__init__(INVALID_MODEL)
        self.model_id = model_id


class InvalidParameter(ValidationException):
    """A request member that cannot be honoured; ``param`` names it (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Target:
    """Where a request goes, resolved from its ``modelId``."""

    model_id: str
    group: str
    model_arn: str
    """What answers: the deployment's current model, or the foundation model."""
    limits: TokenLimits
    provisioned_model_id: str | None = None
    provisioned_model_arn: str | None = None
    on_demand: ServedModel | None = None
    tool_use: bool = False
    """The model's chat template supports tools (see ``FoundationModel.tool_use``)."""
    deployment: DeploymentRoute | None = None
    """Set for a custom model deployment: its id, adapter and price."""
    price: TokenPrice | None = None
    """The on-demand price per 1,000 tokens; None for provisioned throughput (billed by the hour)."""

    @property
    def metrics_label(self) -> str:
        """The ``model`` label of serving metrics: one value per deployment or on-demand model, whichever
        name or ARN the caller used."""
        if self.provisioned_model_arn is not None:
            return self.provisioned_model_arn
        if self.deployment is not None:
            return self.deployment.deployment_arn
        return self.on_demand.foundation.model_id if self.on_demand is not None else self.model_arn


class RuntimeService:
    def __init__(
        self,
        throughput: ThroughputService,
        manager: EngineManager,
        meter: UsageMeter,
        start_timeout_s: float,
        metrics: ServingMetrics | None = None,
        deployments: DeploymentService | None = None,
        replicas: ReplicaRegistry | None = None,
        fine_tuned: Callable[[str], DeploymentRoute | None] | None = None,
    ) -> None:
        self.replicas = replicas
        self.fine_tuned = fine_tuned
        """Routes OpenAI's ``ft:...`` model names (:meth:`FineTuningService.route`), served like deployments."""
        self.throughput = throughput
        self.deployments = deployments
        self.manager = manager
        self.meter = meter
        self.start_timeout_s = start_timeout_s
        self.metrics = metrics or ServingMetrics(CollectorRegistry())

    # -- resolution -----------------------------------------------------------------------------

    def resolve(self, model_id: str) -> Target:
        identifier = decode_identifier(model_id)
        kind = resource_type(identifier) if is_arn(identifier) else ""
        if kind == "provisioned-model":
            return self._provisioned(model_id, self.throughput.get(identifier))
        if kind == "custom-model":
            raise self._needs_provisioned_throughput(identifier)
        if kind == "custom-model-deployment":
            route = self._deployment_route(identifier)
            if route is None:
                raise UnknownModel(model_id)
            return self._deployment(model_id, route)
        on_demand = kind in ("foundation-model", "imported-model")
        if on_demand or (not kind and self.throughput.is_foundation_id(identifier)):
            try:
                served = self.throughput.resolve_model(identifier)
            except ResourceNotFoundException:
                raise UnknownModel(model_id) from None
            return self._on_demand(model_id, served)
        if kind:
            raise UnknownModel(model_id)
        with self.throughput.db.session() as session:
            row = session.scalar(
                select(ProvisionedModel).where(ProvisionedModel.name == identifier, ProvisionedModel.status != DELETED)
            )
            custom = session.scalar(select(CustomModel.arn).where(CustomModel.name == identifier))
        if row is not None:
            return self._provisioned(model_id, row)
        route = self._deployment_route(identifier)
        if route is None and self.fine_tuned is not None and identifier.startswith("ft:"):
            route = self.fine_tuned(identifier)
        if route is not None:
            return self._deployment(model_id, route)
        if custom is not None:
            raise self._needs_provisioned_throughput(custom)
        raise UnknownModel(model_id)

    def _provisioned(self, model_id: str, row: ProvisionedModel) -> Target:
        if row.status == "Creating":
            raise ModelNotReadyException(
                f"The provisioned model throughput {row.name} is Creating; retry when it is InService."
            )
        if row.status == "Failed":
            raise ValidationException(
                f"The provisioned model throughput {row.name} is Failed: {row.failure_message}. "
                "Delete it and create a new one."
            )
        served = self.throughput.resolve_model(row.foundation_model_arn)
        return Target(
            model_id=model_id,
            group=pt_group(row.id),
            model_arn=row.model_arn,
            limits=served.foundation.limits,
            tool_use=served.foundation.tool_use,
            provisioned_model_id=row.id,
            provisioned_model_arn=row.arn,
        )

    def _on_demand(self, model_id: str, served: ServedModel) -> Target:
        if "ON_DEMAND" not in served.foundation.inference_types:
            raise ValidationException(
                f"Invocation of model ID {served.foundation.model_id} with on-demand throughput isn't supported. "
                "Create a provisioned throughput for it and invoke the provisioned model ARN."
            )
        return Target(
            model_id=model_id,
            group=on_demand_group(served.foundation.model_id),
            model_arn=served.arn,
            limits=served.foundation.limits,
            tool_use=served.foundation.tool_use,
            on_demand=served,
            price=self.throughput.settings.token_price(served.foundation.model_id),
        )

    def _deployment_route(self, identifier: str) -> DeploymentRoute | None:
        """The live custom model deployment of this ARN or name, routed (budget and status checked)."""
        deployment = self.deployments.find(identifier) if self.deployments is not None else None
        if self.deployments is None or deployment is None:
            return None
        return self.deployments.route(deployment)

    @staticmethod
    def _deployment(model_id: str, route: DeploymentRoute) -> Target:
        return Target(
            model_id=model_id,
            group=route.group,
            model_arn=route.model_arn,
            limits=route.served.foundation.limits,
            tool_use=route.served.foundation.tool_use,
            on_demand=route.served,
            deployment=route,
            price=route.price,
        )

    @staticmethod
    def _needs_provisioned_throughput(arn: str) -> ValidationException:
        return ValidationException(
            f"Invocation of model ID {arn} with on-demand throughput isn't supported. Custom models are served "
            "through a custom model deployment (CreateCustomModelDeployment, billed per token; invoke the "
            "customModelDeploymentArn it returns) or through Provisioned Throughput "
            "(CreateProvisionedModelThroughput; invoke the provisionedModelArn)."
        )

    def check_max_tokens(self, target: Target, max_tokens: int, member: str) -> None:
        """``maxTokens`` beyond what the model can produce (botocore checks only the minimum)."""
        limit = target.limits.max_output_tokens
        if max_tokens > limit:
            raise constraint_errors([range_violation(max_tokens, member, 1, limit)])
        if max_tokens < 1:
            raise constraint_errors([range_violation(max_tokens, member, 1, None)])

    # -- generation -----------------------------------------------------------------------------

    async def generate(
        self, target: Target, request: GenerationRequest, api: Api = "bedrock", *, forwarded: bool = False
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The engine's events (``start``, ``text``..., ``end``); engine errors become ServiceErrors.

        Usage is metered when the ``end`` event arrives; the replica is released when the caller
        closes the iterator, so a retiring replica stops only after its last response is sent.
        Both API surfaces come through here, so this is where serving metrics are taken, once: from
        the moment the request arrives (waiting for a replica counts) to its end, failure or cancellation.

        A custom model deployment's request carries the model's folder as its ``adapter``; if the
        deployment is deleted while the response streams, the stream ends with ModelErrorException
        (a ``modelStreamErrorException`` event, or an OpenAI error chunk) at the next event.

        A request for a group another live replica holds is forwarded to it (neither metered nor
        measured here: the holder does both); ``forwarded`` marks a request that was forwarded here,
        which is served here whoever holds the group now, so a request never travels twice.
        """
        if not forwarded and self.replicas is not None:
            holder = await asyncio.to_thread(self.replicas.claim_group, target.group)
            if holder != self.replicas.id:
                async for event in self._forward(holder, target, request, api):
                    yield event
                return
        deployment = target.deployment
        if deployment is not None:
            request = dataclasses.replace(request, adapter=deployment.adapter)
        with self.metrics.track(target.metrics_label, api) as tracker:
            replica = await self._acquire(target)
            try:
                async for event in stream_events(replica.socket_path, request):
                    kind = event["event"]
                    if kind == "error":
                        raise self._engine_error(target, event)
                    if deployment is not None and self._deleted(deployment):
                        raise ModelErrorException(
                            f"The custom model deployment {deployment.name} was deleted while this response was "
                            "being generated."
                        )
                    tracker.observe(event)
                    if kind == "end":
                        self.meter.record(
                            target.provisioned_model_id,
                            target.model_arn if deployment is not None else replica.model_arn,
                            int(event["input_tokens"]),
                            int(event["output_tokens"]),
                            None if deployment is None else deployment.deployment_id,
                            target.price,
                        )
                    yield event
            except EngineUnavailable as exc:
                # The engine died (it is restarted on the next request): retryable, unlike a model error.
                raise ModelNotReadyException(f"The model's engine stopped before answering ({exc}); retry.") from None
            finally:
                self.manager.release(replica)

    async def _forward(
        self, holder: str, target: Target, request: GenerationRequest, api: Api
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The holder's events for this request; a holder that cannot be reached is a retryable error."""
        assert self.replicas is not None
        peer = await asyncio.to_thread(self.replicas.peer, holder)
        if peer is None:
            raise ModelNotReadyException(
                f"The replica serving {target.model_id} stopped; another replica takes it over; retry."
            )
        body = {"model_id": target.model_id, "api": api, "request": request.to_json()}
        try:
            async for event in forwarded_events(peer, body):
                yield event
        except httpx.HTTPError as exc:
            raise ModelNotReadyException(
                f"The replica serving {target.model_id} could not be reached ({exc.__class__.__name__}); retry."
            ) from None

    def _deleted(self, deployment: DeploymentRoute) -> bool:
        return self.deployments is not None and self.deployments.is_deleted(deployment.deployment_id)

    def _engine_error(self, target: Target, event: dict[str, Any]) -> ServiceError:
        code = event.get("code")
        message = str(event.get("message", "the model failed"))
        if code == ADAPTER_LOAD_FAILED and target.deployment is not None and self.deployments is not None:
            self.deployments.mark_failed(target.deployment.deployment_id, message)
        return ValidationException(message) if code == "ValidationException" else ModelErrorException(message)

    async def _acquire(self, target: Target) -> Replica:
        replica = self.manager.acquire(target.group)
        if replica is not None:
            return replica
        if target.on_demand is None:
            raise ModelNotReadyException(
                f"No replica of {target.model_id} is ready yet (the deployment is starting its engines); retry."
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            failure = self.manager.start_on_demand(target.on_demand, target.group)
            if failure is not None:
                raise ModelErrorException(f"The model {target.on_demand.foundation.model_id} failed to load: {failure}")
            replica = self.manager.acquire(target.group)
            if replica is not None:
                return replica
            if time.monotonic() > deadline:
                raise ModelNotReadyException(f"The model {target.model_id} is still loading; retry.")
            await asyncio.sleep(0.1)


async def forwarded_events(peer: Peer, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """POST a forwarded request to ``peer`` and yield its events; its ServiceErrors are raised here."""
    timeout = httpx.Timeout(30.0, read=None)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("POST", peer.url + FORWARD_PATH, json=body, headers={SECRET_HEADER: peer.credential}) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            raise ModelNotReadyException(
                f"The replica {peer.id} refused the forwarded request (HTTP {response.status_code}); retry."
            )
        async for line in response.aiter_lines():
            if not line:
                continue
            event: dict[str, Any] = json.loads(line)
            if event["event"] == FORWARDED_ERROR:
                raise error_named(str(event.get("code")), str(event.get("message", "")))
            yield event
            if event["event"] == "end":
                return
    raise ModelNotReadyException(f"The replica {peer.id} closed the response before it was complete; retry.")


def error_named(code: str, message: str) -> ServiceError:
    """The :mod:`tuneforge.errors` exception whose AWS name is ``code`` (a forwarded error, re-raised)."""
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop(0)
        if cls.code == code and cls.__module__ == errors.__name__:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return ServiceError(message)


async def collect(events: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    """The final ``end`` event of a non-streaming generation."""
    end: dict[str, Any] | None = None
    async for event in events:
        if event["event"] == "end":
            end = event
    if end is None:
        raise ServiceError("the engine finished without a result")
    return end
