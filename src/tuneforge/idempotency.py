"""Idempotent Create operations: a request's fingerprint, compared when a ``clientRequestToken`` is reused.

Bedrock answers a repeated Create with the same token by returning the first result, and a token reused
for a *different* request with ConflictException. "Different" means any member but the token itself,
so the fingerprint hashes every field of the request except ``client_request_token``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any


class IdempotentRequest:
    """Mixed into a Create request dataclass that has a ``client_request_token`` field."""

    def fingerprint(self) -> str:
        data: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        data.pop("client_request_token")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
