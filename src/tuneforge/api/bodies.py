"""Request bodies as JSON objects: the one parse every surface starts from."""

from __future__ import annotations

import json
from typing import Any

from tuneforge.errors import ValidationException


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``), or ValidationException."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ValidationException("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationException("The request body must be a JSON object")
    return body
