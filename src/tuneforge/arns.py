"""Bedrock ARNs and the 12-character resource ids inside them."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from urllib.parse import unquote

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


@dataclass(frozen=True)
class ArnFactory:
    region: str
    account_id: str

    def foundation_model(self, model_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}::foundation-model/{model_id}"

    def custom_model(self, base_model_id: str, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:custom-model/{base_model_id}/{resource_id}"

    def job(self, base_model_id: str, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:model-customization-job/{base_model_id}/{resource_id}"

    def provisioned_model(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:provisioned-model/{resource_id}"

    def custom_model_deployment(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:custom-model-deployment/{resource_id}"

    def imported_model(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:imported-model/{resource_id}"

    def model_import_job(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:model-import-job/{resource_id}"

    def model_invocation_job(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:model-invocation-job/{resource_id}"

    def evaluation_job(self, resource_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account_id}:evaluation-job/{resource_id}"


def decode_identifier(raw: str) -> str:
    """Path parameters arrive percent-encoded (``arn%3Aaws%3A...%2F...``)."""
    return unquote(raw)


def is_arn(identifier: str) -> bool:
    return identifier.startswith("arn:")


def resource_type(arn: str) -> str:
    """'foundation-model', 'custom-model', 'model-customization-job', ... or '' if not an ARN."""
    parts = arn.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn":
        return ""
    return parts[5].split("/", 1)[0]


def resource_path(arn: str) -> str:
    """The part after the resource type: 'tuneforge.forge-small-v1:0:512' or 'base/abc123def456'."""
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return ""
    return parts[5].partition("/")[2]


def trailing_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]
