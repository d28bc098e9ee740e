"""Request bodies: JSON objects, the one parse every surface starts from, and capped uploads."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import Message

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


class BodyTooLarge(Exception):
    """The upload's body went past the cap while it was being read."""


def capped(request: Request, cap: int) -> Request:
    """The same request, whose body reading stops (:class:`BodyTooLarge`) once past ``cap`` bytes.

    A chunked upload declares no Content-Length, and the multipart parser spools whatever arrives to
    disk before any field of the form, or the copy's own cap, can be checked.
    """
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise BodyTooLarge
        return message

    return Request(request.scope, receive)
