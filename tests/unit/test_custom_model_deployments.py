"""Custom model deployments without an engine process: shapes, states, paging, errors, routing decisions,
per-token metering and budgets.

The app runs without its background threads; custom models are database rows over folders holding a
manifest and a hand-written safetensors file, which is all the control plane reads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_api_process import error_code
from tuneforge.api.app import create_app
from tuneforge.arns import new_id
from tuneforge.db.tables import CustomModel, RegisteredModel, UsageSegment
from tuneforge.serving.deployments import BUDGET_TAG
from tuneforge.serving.runtime import RuntimeService
from tuneforge.serving.usage import usage_report
from tuneforge.settings import Settings, TokenPrice

MICRO = "tuneforge.forge-micro-v1:0:512"
SMALL = "tuneforge.forge-small-v1:0:512"
DEPLOYMENTS = "/model-customization/custom-model-deployments"


@pytest.fixture
def app_client(tmp_path: Path, db_url: str | None) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        token_prices={MICRO: TokenPrice(input=1.0, output=2.0)},
    )
    app = create_app(settings, run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def services(client: TestClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]


def runtime(client: TestClient) -> RuntimeService:
    service: RuntimeService = client.app.state.bedrock_runtime.inference.runtime  # type: ignore[attr-defined]
    return service


def write_safetensors(path: Path, *, truncated: bool = False) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = b"\0" * (4 if truncated else 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def add_custom_model(
    client: TestClient, name: str, base: str = MICRO, *, full: bool = False, corrupt: bool = False
) -> str:
    svc = services(client)
    model_id = new_id()
    arn = svc.arns.custom_model(base, model_id)
    folder = svc.settings.models_dir / "custom" / model_id
    sub = "merged" if full else "adapter"
    manifest = {"base_model_id": base, "format": "full" if full else "adapter"}
    manifest |= {"adapter_dir": None if full else "adapter", "merged_dir": "merged" if full else None}
    folder.mkdir(parents=True)
    (folder / "tuneforge-model.json").write_text(json.dumps(manifest))
    write_safetensors(folder / sub / ("model.safetensors" if full else "adapter_model.safetensors"), truncated=corrupt)
    with svc.db.session() as session:
        session.add(
            CustomModel(
                id=model_id,
                arn=arn,
                name=name,
                base_model_id=base,
                base_model_arn=svc.arns.foundation_model(base),
                customization_type="FINE_TUNING",
                hyperparameters={},
                training_data={},
                validation_data={},
                output_data={},
                weights_path=str(folder),
            )
        )
    return arn


def create(client: TestClient, name: str, model_arn: str, **body: Any) -> Any:
    return client.post(DEPLOYMENTS, json={"modelDeploymentName": name, "modelArn": model_arn, **body})


def converse(client: TestClient, model_id: str) -> Any:
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    return client.post(f"/model/{quote(model_id, safe='')}/converse", json=body)


def get(client: TestClient, identifier: str) -> Any:
    return client.get(f"{DEPLOYMENTS}/{quote(identifier, safe='')}")


# -- shapes and states ----------------------------------------------------------------------------


def test_create_is_202_with_the_deployment_arn_and_get_shows_bedrock_fields(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-a")
    created = create(app_client, "dep-a", model, description="first")
    assert created.status_code == 202, created.text
    arn = created.json()["customModelDeploymentArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/")
    assert len(arn.rsplit("/", 1)[1]) == 12
    got = get(app_client, arn).json()
    assert got["customModelDeploymentArn"] == arn and got["modelDeploymentName"] == "dep-a"
    assert got["modelArn"] == model and got["status"] == "Active" and got["description"] == "first"
    assert got["createdAt"].endswith("Z") and "failureMessage" not in got
    assert got["tuneforge"]["serving"] == "adapter"
    assert got["tuneforge"]["engineGroup"] == f"od:{MICRO}"
    assert get(app_client, "dep-a").json()["customModelDeploymentArn"] == arn


def test_create_refusals_name_what_is_wrong(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-b")
    assert create(app_client, "dep-b", model).status_code == 202
    duplicate = create(app_client, "dep-b", model)
    assert error_code(duplicate) == "ConflictException"
    assert "dep-b already exists" in duplicate.json()["message"]
    unknown = create(app_client, "dep-c", model[:-12] + "zzzzzzzzzzzz")
    assert unknown.status_code == 404 and error_code(unknown) == "ResourceNotFoundException"
    bad_name = create(app_client, "bad name!", model)
    assert error_code(bad_name) == "ValidationException" and "modelDeploymentName" in bad_name.json()["message"]
    unknown_member = app_client.post(DEPLOYMENTS, json={"modelDeploymentName": "x", "modelArn": model, "units": 1})
    assert error_code(unknown_member) == "ValidationException" and "units" in unknown_member.json()["message"]
    bad_budget = create(app_client, "dep-d", model, tags=[{"key": BUDGET_TAG, "value": "lots"}])
    assert error_code(bad_budget) == "ValidationException" and BUDGET_TAG in bad_budget.json()["message"]


def test_custom_model_whose_base_is_not_servable_on_demand_is_refused_naming_why(app_client: TestClient) -> None:
    svc = services(app_client)
    with svc.db.session() as session:
        session.add(
            RegisteredModel(model_id="acme.mine", provider="acme", source="/nowhere", family="llama", context_length=64)
        )
    model = add_custom_model(app_client, "cm-registered", base="acme.mine")
    refused = create(app_client, "dep-r", model)
    assert error_code(refused) == "ValidationException"
    assert "base model acme.mine is not servable on demand" in refused.json()["message"]
    assert app_client.get(DEPLOYMENTS).json()["modelDeploymentSummaries"] == []


def test_corrupt_adapter_makes_the_deployment_failed_with_the_reason(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-corrupt", corrupt=True)
    arn = create(app_client, "dep-corrupt", model).json()["customModelDeploymentArn"]
    got = get(app_client, arn).json()
    assert got["status"] == "Failed" and "truncated" in got["failureMessage"]
    refused = converse(app_client, arn)
    assert error_code(refused) == "ValidationException" and "dep-corrupt is Failed" in refused.json()["message"]


def test_list_filters_sorts_and_pages(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-list")
    broken = add_custom_model(app_client, "cm-list-broken", corrupt=True)
    for index in range(3):
        assert create(app_client, f"page-{index}", model).status_code == 202
    assert create(app_client, "other-broken", broken).status_code == 202
    ascending = app_client.get(DEPLOYMENTS, params={"sortOrder": "Ascending", "sortBy": "CreationTime"}).json()
    names = [s["customModelDeploymentName"] for s in ascending["modelDeploymentSummaries"]]
    assert names == ["page-0", "page-1", "page-2", "other-broken"]
    summary = ascending["modelDeploymentSummaries"][0]
    assert set(summary) == {
        "customModelDeploymentArn",
        "customModelDeploymentName",
        "modelArn",
        "createdAt",
        "status",
        "lastUpdatedAt",
    }
    seen: list[str] = []
    params: dict[str, Any] = {"maxResults": 2, "nameContains": "page"}
    while True:
        page = app_client.get(DEPLOYMENTS, params=params).json()
        seen += [s["customModelDeploymentName"] for s in page["modelDeploymentSummaries"]]
        if "nextToken" not in page:
            break
        params["nextToken"] = page["nextToken"]
    assert seen == ["page-2", "page-1", "page-0"]
    failed = app_client.get(DEPLOYMENTS, params={"statusEquals": "Failed"}).json()["modelDeploymentSummaries"]
    assert [s["customModelDeploymentName"] for s in failed] == ["other-broken"]
    by_model = app_client.get(DEPLOYMENTS, params={"modelArnEquals": broken}).json()["modelDeploymentSummaries"]
    assert [s["customModelDeploymentName"] for s in by_model] == ["other-broken"]
    wrong_token = app_client.get(DEPLOYMENTS, params={"maxResults": 1, "nextToken": params["nextToken"]})
    assert error_code(wrong_token) == "ValidationException"
    bad_status = app_client.get(DEPLOYMENTS, params={"statusEquals": "InService"})
    assert error_code(bad_status) == "ValidationException" and "statusEquals" in bad_status.json()["message"]


def test_update_swaps_to_a_sibling_custom_model_only(app_client: TestClient) -> None:
    first = add_custom_model(app_client, "cm-one")
    second = add_custom_model(app_client, "cm-two")
    other_base = add_custom_model(app_client, "cm-small", base=SMALL)
    broken = add_custom_model(app_client, "cm-broken", corrupt=True)
    arn = create(app_client, "dep-u", first).json()["customModelDeploymentArn"]
    swapped = app_client.patch(f"{DEPLOYMENTS}/{quote(arn, safe='')}", json={"modelArn": second})
    assert swapped.status_code == 202 and swapped.json() == {"customModelDeploymentArn": arn}
    got = get(app_client, arn).json()
    assert got["modelArn"] == second and got["updateDetails"] == {"modelArn": second, "updateStatus": "UpdateCompleted"}
    refused = app_client.patch(f"{DEPLOYMENTS}/dep-u", json={"modelArn": other_base})
    assert error_code(refused) == "ValidationException" and MICRO in refused.json()["message"]
    app_client.patch(f"{DEPLOYMENTS}/dep-u", json={"modelArn": broken})
    got = get(app_client, arn).json()
    assert got["modelArn"] == second and got["status"] == "Active"
    assert got["updateDetails"]["updateStatus"] == "UpdateFailed" and "truncated" in got["failureMessage"]


def test_delete_frees_the_name_and_get_is_not_found(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-del")
    arn = create(app_client, "dep-del", model).json()["customModelDeploymentArn"]
    assert app_client.delete(f"{DEPLOYMENTS}/{quote(arn, safe='')}").json() == {}
    gone = get(app_client, arn)
    assert gone.status_code == 404 and error_code(gone) == "ResourceNotFoundException"
    assert error_code(app_client.delete(f"{DEPLOYMENTS}/dep-del")) == "ResourceNotFoundException"
    assert create(app_client, "dep-del", model).status_code == 202
    assert runtime(app_client).deployments.is_deleted(arn.rsplit("/", 1)[1])


# -- routing --------------------------------------------------------------------------------------


def test_lora_deployments_share_their_base_engine_and_full_models_get_their_own(app_client: TestClient) -> None:
    lora_a = add_custom_model(app_client, "cm-lora-a")
    lora_b = add_custom_model(app_client, "cm-lora-b")
    full = add_custom_model(app_client, "cm-full", full=True)
    arns = [
        create(app_client, f"r-{i}", m).json()["customModelDeploymentArn"] for i, m in enumerate((lora_a, lora_b, full))
    ]
    service = runtime(app_client)
    a, b, c = (service.resolve(arn) for arn in arns)
    assert a.group == b.group == f"od:{MICRO}"
    assert a.deployment is not None and b.deployment is not None and c.deployment is not None
    assert a.deployment.adapter != b.deployment.adapter
    assert a.deployment.adapter == services(app_client).custom_models.get("cm-lora-a").weights_path
    assert c.group == f"od:{full}" and c.deployment.adapter is None
    assert c.on_demand is not None and c.on_demand.source.endswith(full.rsplit("/", 1)[1])
    by_name = service.resolve("r-0")
    assert by_name.group == a.group and by_name.deployment == a.deployment
    assert a.price == TokenPrice(input=1.0, output=2.0) and a.model_arn == lora_a


def test_custom_model_invoked_directly_points_to_create_custom_model_deployment(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-direct")
    refused = app_client.post(
        f"/model/{quote(model, safe='')}/converse", json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    )
    assert error_code(refused) == "ValidationException"
    assert "CreateCustomModelDeployment" in refused.json()["message"]


# -- metering and budgets -------------------------------------------------------------------------


def test_tokens_are_billed_per_deployment_at_the_base_models_price(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-meter")
    arn = create(app_client, "dep-meter", model).json()["customModelDeploymentArn"]
    target = runtime(app_client).resolve(arn)
    assert target.deployment is not None
    svc = services(app_client)
    svc.meter.record(None, model, 1000, 500, deployment_id=target.deployment.deployment_id, price=target.price)
    svc.meter.record(None, model, 1000, 500, deployment_id=target.deployment.deployment_id, price=target.price)
    extension = get(app_client, arn).json()["tuneforge"]
    assert extension["inputTokens"] == 2000 and extension["outputTokens"] == 1000
    assert extension["cost"] == pytest.approx(2 * 1.0 + 1 * 2.0)
    report = usage_report(svc.db, svc.catalog)
    [entry] = report["customModelDeployments"]
    assert entry["customModelDeploymentArn"] == arn and entry["cost"] == pytest.approx(4.0)
    assert report["total"]["onDemandCost"] == pytest.approx(4.0) and report["total"]["provisionedCost"] == 0
    # A new price opens a new segment: the tokens already metered keep their price.
    svc.meter.record(
        None, model, 1000, 0, deployment_id=target.deployment.deployment_id, price=TokenPrice(input=3.0, output=3.0)
    )
    svc.meter.flush()
    with svc.db.session() as session:
        prices = [
            s.price_per_1k_input_tokens
            for s in session.query(UsageSegment).filter_by(deployment_id=target.deployment.deployment_id)
        ]
    assert prices == [1.0, 3.0]
    assert usage_report(svc.db, svc.catalog)["total"]["onDemandCost"] == pytest.approx(7.0)


def test_budget_reached_refuses_requests_with_throttling_naming_the_budget(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-budget")
    arn = create(app_client, "dep-budget", model, tags=[{"key": BUDGET_TAG, "value": "0.5"}]).json()[
        "customModelDeploymentArn"
    ]
    target = runtime(app_client).resolve(arn)
    assert target.deployment is not None and get(app_client, arn).json()["tuneforge"]["monthlyBudgetUsd"] == 0.5
    services(app_client).meter.record(
        None, model, 500, 0, deployment_id=target.deployment.deployment_id, price=target.price
    )
    refused = converse(app_client, arn)
    assert refused.status_code == 429 and error_code(refused) == "ThrottlingException"
    assert "monthly budget of 0.5 USD" in refused.json()["message"] and BUDGET_TAG in refused.json()["message"]


def test_budget_tag_can_be_raised_with_tag_resource(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-retag")
    arn = create(app_client, "dep-retag", model, tags=[{"key": BUDGET_TAG, "value": "0"}]).json()[
        "customModelDeploymentArn"
    ]
    assert error_code(converse(app_client, arn)) == "ThrottlingException"
    refused = app_client.post("/tagResource", json={"resourceARN": arn, "tags": [{"key": BUDGET_TAG, "value": "-1"}]})
    assert error_code(refused) == "ValidationException"
    assert (
        app_client.post(
            "/tagResource", json={"resourceARN": arn, "tags": [{"key": BUDGET_TAG, "value": "9"}]}
        ).status_code
        == 200
    )
    assert get(app_client, arn).json()["tuneforge"]["monthlyBudgetUsd"] == 9.0
    assert runtime(app_client).resolve(arn).deployment is not None


def test_a_deployed_custom_model_cannot_be_deleted(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-pinned")
    create(app_client, "dep-pinned", model)
    refused = app_client.delete(f"/custom-models/{quote(model, safe='')}")
    assert error_code(refused) == "ConflictException" and "dep-pinned" in refused.json()["message"]
    app_client.delete(f"{DEPLOYMENTS}/dep-pinned")
    assert app_client.delete(f"/custom-models/{quote(model, safe='')}").status_code == 200


# Deletion mid-stream and an adapter the engine cannot load are tested end to end, with a real engine:
# tests/e2e/test_custom_model_deployments.py.


def test_client_request_token_makes_create_idempotent(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-token")
    first = create(app_client, "dep-token", model, clientRequestToken="tok-1").json()
    assert create(app_client, "dep-token", model, clientRequestToken="tok-1").json() == first
    reused = create(app_client, "dep-token-2", model, clientRequestToken="tok-1")
    assert error_code(reused) == "ConflictException" and "tok-1" in reused.json()["message"]


def test_a_new_month_opens_a_new_segment_so_the_budget_counts_this_month_only(app_client: TestClient) -> None:
    model = add_custom_model(app_client, "cm-month")
    arn = create(app_client, "dep-month", model, tags=[{"key": BUDGET_TAG, "value": "1"}]).json()[
        "customModelDeploymentArn"
    ]
    svc = services(app_client)
    deployment_id = arn.rsplit("/", 1)[1]
    price = TokenPrice(input=1.0, output=2.0)
    svc.meter.record(None, model, 5000, 0, deployment_id, price)
    svc.meter.flush()
    assert error_code(converse(app_client, arn)) == "ThrottlingException"
    with svc.db.session() as session:
        [segment] = session.query(UsageSegment).filter_by(deployment_id=deployment_id).all()
        segment.started_at = segment.started_at - timedelta(days=40)
    assert runtime(app_client).resolve(arn).deployment is not None
    svc.meter.record(None, model, 100, 0, deployment_id, price)
    svc.meter.flush()
    with svc.db.session() as session:
        assert [s.input_tokens for s in session.query(UsageSegment).filter_by(deployment_id=deployment_id)] == [
            5000,
            100,
        ]
    extension = get(app_client, arn).json()["tuneforge"]
    assert extension["monthToDateCost"] == pytest.approx(0.1) and extension["cost"] == pytest.approx(5.1)
