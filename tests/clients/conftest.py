"""One locked-down tuneforge server and one provisioned model, shared by every third-party client test.

The server has access keys and an API key configured and refuses anonymous requests, so every client
below really signs (SigV4) or sends its bearer key. The model is a provisioned throughput of the
built-in forge-micro, created by the docs' AWS CLI snippet: no training, ready in seconds. Clients
are kept on loopback: credentials and endpoints are explicit, the user's AWS and OpenAI configuration
is hidden, and nothing may ask a cloud metadata service, LangSmith or LiteLLM's price list on the
internet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.e2e.conftest import HANG_GUARD_S, Server, make_server, wait_until

KEY_ID, SECRET = "AKIDCLIENTS", "clients-secret"
API_KEY = "sk-tuneforge-clients"
REGION = "us-east-1"
MODEL_NAME = "triage"
PROMPT = "my invoice pls"
MAX_TOKENS = 8
DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
SNIPPET = re.compile(r"<!-- client-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.DOTALL)

NOWHERE = "http://127.0.0.1:9"
"""Where a client that ignores the endpoint it was given goes instead of AWS or OpenAI: the discard
port on loopback, nothing listens, and the test fails at once."""
LOOPBACK_ENV = {
    "AWS_ENDPOINT_URL": NOWHERE,
    "OPENAI_BASE_URL": f"{NOWHERE}/v1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_DEFAULT_OUTPUT": "json",
    "AWS_PAGER": "",
    "OPENAI_API_KEY": API_KEY,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
HIDDEN_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ENDPOINT_URL_BEDROCK",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "OPENAI_ORG_ID",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture(scope="package", autouse=True)
def loopback_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every client in this package, in process or as a subprocess, sees only these settings."""
    nowhere = tmp_path_factory.mktemp("no-aws-config") / "absent"
    with pytest.MonkeyPatch.context() as patch:
        for name in HIDDEN_ENV:
            patch.delenv(name, raising=False)
        for name, value in {
            **LOOPBACK_ENV,
            "AWS_CONFIG_FILE": str(nowhere),
            "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
        }.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("clients"),
        access_keys={KEY_ID: SECRET},
        allow_anonymous=False,
        api_keys=[API_KEY],
        engine_threads=1,
    )
    srv.start()
    yield srv
    srv.stop()


def boto3_client(server: Server, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}, read_timeout=HANG_GUARD_S),
    )


@dataclass(frozen=True)
class Deployment:
    arn: str
    name: str
    answer: str
    """The greedy answer to PROMPT with MAX_TOKENS, as boto3's Converse gets it: every client that sends
    the same conversation must get the same text."""


@pytest.fixture(scope="package")
def deployment(server: Server) -> Deployment:
    """Provisioned by the docs' own AWS CLI snippet; its first answer comes from boto3."""
    bedrock, runtime = boto3_client(server, "bedrock"), boto3_client(server, "bedrock-runtime")
    (created,) = run_shell_snippet("aws-cli-provision", server)
    arn = created["provisionedModelArn"]
    status = wait_until(
        lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=arn)["status"],
        lambda got: got != "Creating",
        "the deployment to leave Creating",
    )
    assert status == "InService", bedrock.get_provisioned_model_throughput(provisionedModelId=arn)
    assert bedrock.get_provisioned_model_throughput(provisionedModelId=arn)["provisionedModelName"] == MODEL_NAME
    reply = runtime.converse(
        modelId=arn,
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": MAX_TOKENS},
    )
    return Deployment(arn, MODEL_NAME, reply["output"]["message"]["content"][0]["text"])


def snippets() -> dict[str, tuple[str, str]]:
    """docs/clients.md's tested snippets by name: (language, code)."""
    return {m["name"]: (m["lang"], m["code"]) for m in SNIPPET.finditer(DOCS.read_text())}


def run_python_snippet(name: str, server: Server, deployment: Deployment) -> dict[str, Any]:
    """Execute the snippet exactly as the docs show it, with the setup values the docs name."""
    lang, code = snippets()[name]
    assert lang == "python", name
    namespace: dict[str, Any] = {
        "URL": server.url,
        "KEY_ID": KEY_ID,
        "SECRET": SECRET,
        "REGION": REGION,
        "MODEL_ARN": deployment.arn,
        "MODEL_NAME": deployment.name,
        "API_KEY": API_KEY,
    }
    exec(compile(code, f"docs/clients.md:{name}", "exec"), namespace)
    return namespace


def json_documents(text: str) -> list[Any]:
    """The JSON documents the AWS CLI printed, one per command."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        while text[position].isspace():
            position += 1
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


def run_shell_snippet(name: str, server: Server, deployment: Deployment | None = None) -> list[Any]:
    """Run the docs' shell snippet with bash, as a user would paste it; return the JSON it printed."""
    lang, code = snippets()[name]
    assert lang == "sh", name
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        env=shell_environment(server, deployment),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr}\n{result.stdout}"
    return json_documents(result.stdout)


def shell_environment(server: Server, deployment: Deployment | None) -> dict[str, str]:
    """What the docs' Setup block exports, with the venv's ``aws`` first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "URL": server.url, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if deployment is not None:
        env |= {"MODEL_ARN": deployment.arn, "MODEL_NAME": deployment.name}
    return env
