"""AWS event-stream framing (``application/vnd.amazon.eventstream``), the encoding side.

Bedrock's streaming operations answer with a sequence of binary messages that botocore's
``EventStreamBuffer`` parses; each is::

    prelude   total_length:u32 | headers_length:u32 | prelude_crc:u32      (big-endian)
    headers   name_len:u8 | name | type:u8 (7 = string) | value_len:u16 | value
    payload   the event as JSON
    trailer   message_crc:u32 = CRC32 of everything before it

Only string headers are needed: ``:message-type`` (event | exception), ``:event-type`` or
``:exception-type``, and ``:content-type``.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7
MAX_HEADERS_BYTES = 128 * 1024
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", _STRING, len(raw_value)) + raw_value


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One framed message; header order is kept, names must be unique (a dict guarantees it)."""
    encoded_headers = b"".join(_header(name, value) for name, value in headers.items())
    if len(encoded_headers) > MAX_HEADERS_BYTES:
        raise ValueError(f"event-stream headers of {len(encoded_headers)} bytes exceed {MAX_HEADERS_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"event-stream payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    total = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded_headers + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, body: dict[str, Any]) -> bytes:
    """A modelled event, e.g. ``event("contentBlockDelta", {"delta": {"text": "hi"}, "contentBlockIndex": 0})``."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps(body, separators=(",", ":")).encode("utf-8"))


def exception(exception_type: str, message: str) -> bytes:
    """A modelled exception in the stream (botocore raises it as ``EventStreamError``).

    ``exception_type`` is the stream member name: ``modelStreamErrorException``,
    ``internalServerException``, ``validationException``, ``throttlingException``, ...
    """
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, json.dumps({"message": message}).encode("utf-8"))
