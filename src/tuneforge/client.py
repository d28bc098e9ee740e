"""boto3 clients pointed at a tuneforge server, for the CLI and the demo.

User code does the same with ``boto3.client("bedrock", endpoint_url=...)``. Credentials come from
the usual AWS chain; when there are none (an anonymous loopback server) placeholder keys are used
so botocore can sign at all. :func:`extension_get` signs tuneforge's own endpoints the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import boto3
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

PLACEHOLDER_KEY = "tuneforge-anonymous"


def bedrock_client(endpoint_url: str, region: str, service: str = "bedrock", read_timeout: float = 60) -> Any:
    """``read_timeout``: the demo raises it for a first on-demand request, which waits for the model to load."""
    session = boto3.session.Session()
    credentials = session.get_credentials()
    extra: dict[str, str] = {}
    if credentials is None:
        extra = {"aws_access_key_id": PLACEHOLDER_KEY, "aws_secret_access_key": PLACEHOLDER_KEY}
    return session.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=read_timeout),
        **extra,
    )


class ExtensionError(Exception):
    """A tuneforge extension endpoint answered with an error."""


def extension_get(endpoint_url: str, region: str, path: str, params: dict[str, str] | None = None) -> Any:
    """GET a tuneforge extension endpoint (not in botocore's service model), signed like boto3 signs.

    ``path`` must already be percent-encoded where needed (e.g. an ARN as a path segment).
    """
    session = boto3.session.Session()
    credentials = session.get_credentials() or Credentials(PLACEHOLDER_KEY, PLACEHOLDER_KEY)
    url = f"{endpoint_url.rstrip('/')}{path}" + (f"?{urlencode(sorted((params or {}).items()))}" if params else "")
    request = AWSRequest(method="GET", url=url, data=b"")
    SigV4Auth(credentials, "bedrock", region).add_auth(request)
    response = httpx.get(url, headers=dict(request.headers.items()), timeout=30)
    if response.status_code >= 400:
        code = response.headers.get("x-amzn-errortype", "Error").split(":", 1)[0]
        raise ExtensionError(f"{code}: {response.json().get('message', response.text)}")
    return response.json()
