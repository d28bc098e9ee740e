"""boto3 clients pointed at a tuneforge server, for the CLI and the demo.

User code does the same with ``boto3.client("bedrock", endpoint_url=...)``. Credentials come from
the usual AWS chain; when there are none (an anonymous loopback server) placeholder keys are used
so botocore can sign at all.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

PLACEHOLDER_KEY = "tuneforge-anonymous"


def bedrock_client(endpoint_url: str, region: str, service: str = "bedrock") -> Any:
    session = boto3.session.Session()
    credentials = session.get_credentials()
    extra: dict[str, str] = {}
    if credentials is None:
        extra = {"aws_access_key_id": PLACEHOLDER_KEY, "aws_secret_access_key": PLACEHOLDER_KEY}
    return session.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        **extra,
    )
