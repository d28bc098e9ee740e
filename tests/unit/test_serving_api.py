"""Provisioned throughput, runtime and OpenAI request handling that needs no engine process.

The app runs without its background threads, so deployments stay ``Creating``: enough to check the
control-plane rules, the runtime's refusals and validation, and authentication on each surface.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_api_process import error_code
from tuneforge.api.app import create_app
from tuneforge.arns import new_id
from tuneforge.db.tables import CustomModel, ProvisionedModel
from tuneforge.serving.throughput import add_months, idle_timeout_seconds
from tuneforge.settings import Settings

SMALL = "tuneforge.forge-small-v1:0:512"
MICRO = "tuneforge.forge-micro-v1:0:512"
SMALL_ARN = f"arn:aws:bedrock:us-east-1::foundation-model/{SMALL}"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path / "data", max_model_units=4), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def add_custom_model(client: TestClient, name: str, base: str = SMALL) -> str:
    services = client.app.state.services  # type: ignore[attr-defined]
    model_id = new_id()
    arn = services.arns.custom_model(base, model_id)
    with services.db.session() as session:
        session.add(
            CustomModel(
                id=model_id,
                arn=arn,
                name=name,
                base_model_id=base,
                base_model_arn=services.arns.foundation_model(base),
                customization_type="FINE_TUNING",
                hyperparameters={},
                training_data={},
                validation_data={},
                output_data={},
                weights_path=str(services.settings.models_dir / "custom" / model_id),
            )
        )
    return arn


def create_pt(client: TestClient, **body: Any) -> Any:
    return client.post("/provisioned-model-throughput", json={"modelUnits": 1, **body})


def converse(client: TestClient, model_id: str, **body: Any) -> Any:
    body.setdefault("messages", [{"role": "user", "content": [{"text": "hi"}]}])
    return client.post(f"/model/{model_id}/converse", json=body)


# -- provisioned throughput ---------------------------------------------------------------------------


def test_create_returns_201_and_get_shows_bedrock_fields_with_the_meter(app_client: TestClient) -> None:
    created = create_pt(app_client, provisionedModelName="pt-a", modelId=SMALL)
    assert created.status_code == 201, created.text
    arn = created.json()["provisionedModelArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/")
    got = app_client.get(f"/provisioned-model-throughput/{arn.replace(':', '%3A').replace('/', '%2F')}").json()
    assert got["status"] == "Creating" and got["modelUnits"] == got["desiredModelUnits"] == 1
    assert got["modelArn"] == got["desiredModelArn"] == got["foundationModelArn"] == SMALL_ARN
    assert got["tuneforge"]["pricePerModelUnitHour"] == 1.0
    assert got["tuneforge"]["idleTimeoutMinutes"] == 60.0
    assert got["tuneforge"]["modelUnitHours"] >= 0
    listed = app_client.get("/provisioned-model-throughputs").json()["provisionedModelSummaries"]
    assert [s["provisionedModelArn"] for s in listed] == [arn]


def test_create_refusals(app_client: TestClient) -> None:
    bad_name = create_pt(app_client, provisionedModelName="bad name!", modelId=SMALL)
    assert bad_name.status_code == 400 and "regular expression pattern" in bad_name.json()["message"]
    assert error_code(create_pt(app_client, provisionedModelName="x", modelId="nobody.nothing-v1")) == (
        "ResourceNotFoundException"
    )
    zero = create_pt(app_client, provisionedModelName="x", modelId=SMALL, modelUnits=0)
    assert "greater than or equal to 1" in zero.json()["message"]
    assert create_pt(app_client, provisionedModelName="dup", modelId=SMALL).status_code == 201
    duplicate = create_pt(app_client, provisionedModelName="dup", modelId=MICRO)
    assert error_code(duplicate) == "ValidationException" and "already exists" in duplicate.json()["message"]
    quota = create_pt(app_client, provisionedModelName="big", modelId=SMALL, modelUnits=4)
    assert error_code(quota) == "ServiceQuotaExceededException"
    tag = [{"key": "tuneforge:idle-timeout-minutes", "value": "soon"}]
    assert "minutes" in create_pt(app_client, provisionedModelName="t", modelId=SMALL, tags=tag).json()["message"]


def test_client_request_token_makes_create_idempotent(app_client: TestClient) -> None:
    body = {"provisionedModelName": "idem", "modelId": SMALL, "clientRequestToken": "token-1"}
    first, second = create_pt(app_client, **body), create_pt(app_client, **body)
    assert first.json() == second.json()
    other = create_pt(app_client, **{**body, "provisionedModelName": "idem2"})
    assert error_code(other) == "ValidationException"


def test_committed_deployment_refuses_delete_until_expiry(app_client: TestClient) -> None:
    arn = create_pt(app_client, provisionedModelName="c", modelId=SMALL, commitmentDuration="OneMonth").json()[
        "provisionedModelArn"
    ]
    refused = app_client.delete(f"/provisioned-model-throughput/{arn}")
    assert error_code(refused) == "ConflictException" and "OneMonth commitment" in refused.json()["message"]
    got = app_client.get("/provisioned-model-throughput/c").json()
    assert got["commitmentDuration"] == "OneMonth" and "commitmentExpirationTime" in got
    assert "idleTimeoutMinutes" not in got["tuneforge"], "committed deployments are never deleted for idleness"
    services = app_client.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as session:
        row = session.query(ProvisionedModel).filter_by(name="c").one()
        row.commitment_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert app_client.delete("/provisioned-model-throughput/c").status_code == 200


def test_deleted_deployment_is_gone_from_get_but_kept_as_history(app_client: TestClient) -> None:
    create_pt(app_client, provisionedModelName="gone", modelId=SMALL)
    assert app_client.delete("/provisioned-model-throughput/gone").json() == {}
    missing = app_client.get("/provisioned-model-throughput/gone")
    assert error_code(missing) == "ResourceNotFoundException" and "was deleted at" in missing.json()["message"]
    assert app_client.get("/provisioned-model-throughputs").json()["provisionedModelSummaries"] == []
    history = app_client.get("/provisioned-model-throughputs", params={"statusEquals": "Deleted"}).json()
    (entry,) = history["provisionedModelSummaries"]
    assert entry["status"] == "Deleted"
    assert entry["tuneforge"]["deletionReason"] == "deleted by DeleteProvisionedModelThroughput"
    assert create_pt(app_client, provisionedModelName="gone", modelId=SMALL).status_code == 201, "name is free again"


def test_update_switches_only_between_siblings_of_a_custom_model(app_client: TestClient) -> None:
    first, sibling = add_custom_model(app_client, "first"), add_custom_model(app_client, "sibling")
    cousin = add_custom_model(app_client, "cousin", base=MICRO)
    create_pt(app_client, provisionedModelName="cm", modelId=first)
    not_ready = app_client.patch("/provisioned-model-throughput/cm", json={"desiredModelId": sibling})
    assert error_code(not_ready) == "ValidationException" and "Creating" in not_ready.json()["message"]
    services = app_client.app.state.services  # type: ignore[attr-defined]
    row = services.throughput.get("cm")
    services.throughput.mark_in_service(row.id)
    wrong = app_client.patch("/provisioned-model-throughput/cm", json={"desiredModelId": cousin})
    assert "customized from it" in wrong.json()["message"]
    assert app_client.patch("/provisioned-model-throughput/cm", json={"desiredModelId": sibling}).status_code == 200
    got = app_client.get("/provisioned-model-throughput/cm").json()
    assert (got["status"], got["modelArn"], got["desiredModelArn"]) == ("Updating", first, sibling)
    in_use = app_client.delete(f"/custom-models/{sibling}")
    assert error_code(in_use) == "ConflictException" and "cm" in in_use.json()["message"]
    assert services.throughput.fail_update(row.id, "OSError: no weights")
    got = app_client.get("/provisioned-model-throughput/cm").json()
    assert (got["status"], got["modelArn"], got["desiredModelArn"]) == ("InService", first, first)
    assert got["failureMessage"] == f"Update to {sibling} failed: OSError: no weights"
    assert app_client.patch("/provisioned-model-throughput/cm", json={"desiredModelId": sibling}).status_code == 200
    assert services.throughput.complete_update(row.id)
    got = app_client.get("/provisioned-model-throughput/cm").json()
    assert (got["status"], got["modelArn"]) == ("InService", sibling)
    assert app_client.delete(f"/custom-models/{first}").status_code == 200, "no longer served"
    renamed = app_client.patch("/provisioned-model-throughput/cm", json={"desiredProvisionedModelName": "cm2"})
    assert renamed.status_code == 200 and app_client.get("/provisioned-model-throughput/cm2").status_code == 200
    create_pt(app_client, provisionedModelName="fm", modelId=SMALL)
    services.throughput.mark_in_service(services.throughput.get("fm").id)
    foundation = app_client.patch("/provisioned-model-throughput/fm", json={"desiredModelId": sibling})
    assert "custom model" in foundation.json()["message"]


def test_commitment_and_idle_timeout_rules() -> None:
    assert add_months(datetime(2024, 1, 31, 12, tzinfo=UTC), 1) == datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert add_months(datetime(2024, 8, 15, tzinfo=UTC), 6) == datetime(2025, 2, 15, tzinfo=UTC)
    tag = "tuneforge:idle-timeout-minutes"
    assert idle_timeout_seconds((), 60) == 3600
    assert idle_timeout_seconds((), 0) is None
    assert idle_timeout_seconds(({"key": tag, "value": "0.05"},), 60) == pytest.approx(3)
    assert idle_timeout_seconds(({"key": tag, "value": "off"},), 60) is None
    assert idle_timeout_seconds(({"key": tag, "value": "0"},), 60) is None


def test_invocation_logging_configuration_round_trips(app_client: TestClient) -> None:
    assert app_client.get("/logging/modelinvocations").json() == {}
    config = {"s3Config": {"bucketName": "logs", "keyPrefix": "tf"}, "textDataDeliveryEnabled": True}
    assert app_client.put("/logging/modelinvocations", json={"loggingConfig": config}).json() == {}
    assert app_client.get("/logging/modelinvocations").json() == {"loggingConfig": config}
    cloudwatch = {"cloudWatchConfig": {"logGroupName": "g", "roleArn": "arn:aws:iam::1:role/r"}}
    assert "S3 only" in app_client.put("/logging/modelinvocations", json={"loggingConfig": cloudwatch}).text
    bad = {"s3Config": {"bucketName": "Bad_Bucket"}}
    assert "bucketName" in app_client.put("/logging/modelinvocations", json={"loggingConfig": bad}).text
    assert app_client.delete("/logging/modelinvocations").json() == {}
    assert app_client.get("/logging/modelinvocations").json() == {}


# -- runtime refusals (before any engine is involved) ---------------------------------------------------


def test_custom_model_without_provisioned_throughput_is_refused(app_client: TestClient) -> None:
    arn = add_custom_model(app_client, "needs-pt")
    for model_id in (arn.replace(":", "%3A").replace("/", "%2F"), "needs-pt"):
        response = converse(app_client, model_id)
        assert error_code(response) == "ValidationException"
        assert "CreateProvisionedModelThroughput" in response.json()["message"]


def test_deployment_still_creating_is_model_not_ready(app_client: TestClient) -> None:
    create_pt(app_client, provisionedModelName="warming", modelId=SMALL)
    response = converse(app_client, "warming")
    assert response.status_code == 429 and error_code(response) == "ModelNotReadyException"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "Member must have length greater than or equal to 1"),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "must start with a user message"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
            "must alternate between user and assistant",
        ),
        ({"messages": [{"role": "system", "content": [{"text": "a"}]}]}, "enum value set: [user, assistant]"),
        ({"inferenceConfig": {"maxTokens": 5000}}, "less than or equal to 256"),
        ({"inferenceConfig": {"maxTokens": 0}}, "greater than or equal to 1"),
        ({"inferenceConfig": {"temperature": 1.5}}, "between 0 and 1"),
        ({"toolConfig": {"tools": []}}, "doesn't support tool use"),
        ({"messages": [{"role": "user", "content": [{"image": {}}]}]}, "doesn't support images"),
    ],
)
def test_converse_validation_errors(app_client: TestClient, body: dict[str, Any], message: str) -> None:
    response = converse(app_client, SMALL, **body)
    assert error_code(response) == "ValidationException", response.text
    assert message in response.json()["message"]


def test_unknown_model_id_is_invalid(app_client: TestClient) -> None:
    response = converse(app_client, "nobody.nothing-v1")
    assert error_code(response) == "ValidationException"
    assert response.json()["message"] == "The provided model identifier is invalid."


def test_native_body_needs_a_prompt(app_client: TestClient) -> None:
    response = app_client.post(f"/model/{SMALL}/invoke", json={"max_gen_len": 3})
    assert error_code(response) == "ValidationException" and "'prompt'" in response.json()["message"]


# -- authentication per surface ----------------------------------------------------------------------


@pytest.fixture
def locked_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "locked", access_keys={"AK": "SK"}, api_keys=["sk-good"], allow_anonymous=False
    )
    with TestClient(create_app(settings, run_supervisor=False), base_url="http://127.0.0.1") as client:
        yield client


def test_openai_routes_need_a_configured_bearer_key(locked_client: TestClient) -> None:
    assert locked_client.get("/v1/models").status_code == 401
    wrong = locked_client.get("/v1/models", headers={"authorization": "Bearer sk-bad"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    good = locked_client.get("/v1/models", headers={"authorization": "Bearer sk-good"})
    assert good.status_code == 200 and SMALL in [m["id"] for m in good.json()["data"]]


def test_runtime_routes_need_sigv4_not_an_api_key(locked_client: TestClient) -> None:
    response = converse(locked_client, SMALL)
    assert response.status_code == 403 and error_code(response) == "AccessDeniedException"
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    bearer = locked_client.post(f"/model/{SMALL}/converse", json=body, headers={"authorization": "Bearer sk-good"})
    assert error_code(bearer) == "AccessDeniedException"


def test_openai_errors_use_the_openai_envelope(app_client: TestClient) -> None:
    response = app_client.post("/v1/chat/completions", json={"model": SMALL, "messages": [], "n": 2})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    empty = app_client.post("/v1/chat/completions", json={"model": SMALL, "messages": []})
    assert "greater than or equal to 1" in empty.json()["error"]["message"]


# -- strict runtime bodies (issue 9, item 23) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inferenceConfig": []}, "'inferenceConfig' failed to satisfy constraint: Member must be a structure"),
        ({"inferenceConfig": {"maxTokens": "5"}}, "'inferenceConfig.maxTokens' failed to satisfy constraint"),
        ({"inferenceConfig": {"temperature": "0.5"}}, "Member must be a number"),
        ({"inferenceConfig": {"maxTokens": 5, "topK": 3}}, "extraneous key [inferenceConfig.topK]"),
        ({"messages": [{"role": "user", "content": [{"text": ""}]}]}, "is blank"),
        ({"system": [{"text": "  "}]}, "is blank"),
        ({"messages": [{"role": "user", "content": [{"text": "hi"}], "name": "x"}]}, "extraneous key"),
        ({"unknownMember": 1}, "extraneous key [unknownMember] is not permitted"),
        ({"additionalModelRequestFields": {"frequency_penalty": 1}}, "frequency_penalty is not supported"),
        ({"additionalModelRequestFields": {"top_k": 0}}, "'additionalModelRequestFields.top_k'"),
        ({"outputConfig": {"effort": "high"}}, "outputConfig.effort is not supported"),
        ({"additionalModelResponseFieldPaths": ["/stop_sequence"]}, "additionalModelResponseFieldPaths"),
    ],
)
def test_converse_bodies_are_parsed_strictly(app_client: TestClient, body: dict[str, Any], message: str) -> None:
    response = converse(app_client, SMALL, **body)
    assert response.status_code == 400 and error_code(response) == "ValidationException", response.text
    assert message in response.json()["message"]


def test_native_bodies_are_parsed_strictly(app_client: TestClient) -> None:
    for body, message in (
        ({"prompt": "hi", "max_gen_len": "5"}, "'max_gen_len' failed to satisfy constraint: Member must be an integer"),
        ({"prompt": "hi", "top_k": 5}, "extraneous key [top_k] is not permitted"),
        ({"prompt": ""}, "'prompt' failed to satisfy constraint"),
    ):
        response = app_client.post(f"/model/{SMALL}/invoke", json=body)
        assert error_code(response) == "ValidationException" and message in response.json()["message"], response.text


def test_converse_tool_config_is_refused_because_the_template_has_no_tools(app_client: TestClient) -> None:
    tool = {"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}
    response = converse(app_client, SMALL, toolConfig={"tools": [tool]})
    assert error_code(response) == "ValidationException"
    assert "toolConfig" in response.json()["message"] and "chat template" in response.json()["message"]


# -- prompt size (issue 9, item 15) ---------------------------------------------------------------------


@pytest.fixture
def small_prompts_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(data_dir=tmp_path / "d", max_prompt_chars=100), run_supervisor=False),
        base_url="http://127.0.0.1",
    ) as c:
        yield c


def test_prompts_over_the_character_limit_are_refused_before_tokenizing(small_prompts_client: TestClient) -> None:
    client = small_prompts_client
    long_text = "x" * 101
    response = converse(client, SMALL, messages=[{"role": "user", "content": [{"text": long_text}]}])
    assert error_code(response) == "ValidationException" and "limit of 100" in response.json()["message"]
    response = converse(
        client, SMALL, system=[{"text": "s" * 60}], messages=[{"role": "user", "content": [{"text": "u" * 41}]}]
    )
    assert "max_prompt_chars" in response.json()["message"], "system and messages count together"
    native = client.post(f"/model/{SMALL}/invoke", json={"prompt": long_text})
    assert error_code(native) == "ValidationException" and "limit of 100" in native.json()["message"]
    chat = client.post(
        "/v1/chat/completions", json={"model": SMALL, "messages": [{"role": "user", "content": long_text}]}
    )
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    completion = client.post("/v1/completions", json={"model": SMALL, "prompt": long_text})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "prompt"
    unknown = converse(client, "nobody.nothing-v1", messages=[{"role": "user", "content": [{"text": long_text}]}])
    assert "limit of 100" in unknown.json()["message"], "the size is checked before the model is even resolved"


# -- OpenAI errors and parameters (issue 9, items 2, 3, 22) ---------------------------------------------


def chat(client: TestClient, **body: Any) -> Any:
    body.setdefault("model", SMALL)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return client.post("/v1/chat/completions", json=body)


def test_openai_unknown_model_is_404_model_not_found(app_client: TestClient) -> None:
    for response in (
        chat(app_client, model="nobody.nothing-v1"),
        app_client.post("/v1/completions", json={"model": "nobody.nothing-v1", "prompt": "x"}),
        app_client.get("/v1/models/nobody.nothing-v1"),
    ):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert error["type"] == "invalid_request_error" and "nobody.nothing-v1" in error["message"]
    found = app_client.get(f"/v1/models/{SMALL}")
    assert found.status_code == 200 and found.json()["id"] == SMALL and found.json()["object"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 9}, "n"),
        ({"n": 2, "stream": True}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"a": 10}}, "logit_bias"),
        ({"logit_bias": {"65": 101}}, "logit_bias"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"no_such_parameter": 1}, "no_such_parameter"),
        ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_openai_chat_refuses_what_it_cannot_honour_naming_the_parameter(
    app_client: TestClient, body: dict[str, Any], param: str
) -> None:
    response = chat(app_client, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_openai_completions_refusals_name_the_parameter(app_client: TestClient) -> None:
    for body, param in (
        ({"logprobs": 6}, "logprobs"),
        ({"echo": True, "logprobs": 1, "stream": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"prompt": ["a", "b"]}, "prompt"),
    ):
        response = app_client.post("/v1/completions", json={"model": SMALL, "prompt": "x", **body})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_openai_seed_of_any_size_maps_into_the_engine_range() -> None:
    from tuneforge.api.openai.protocol import ChatCompletionRequest

    for seed in (2**70, -1, 0, 2**63):
        request = ChatCompletionRequest.model_validate({"model": SMALL, "messages": [], "seed": seed})
        mapped = request.to_sampling().seed
        assert mapped is not None and 0 <= mapped < 2**63 and mapped == seed % 2**63


def test_openai_parameters_that_cannot_change_the_output_are_accepted(app_client: TestClient) -> None:
    response = chat(app_client, model="nobody.nothing-v1", user="u1", metadata={"k": "v"}, store=False)
    assert response.status_code == 404, "parsed and passed on to model resolution: " + response.text
