"""The event-stream encoder, checked by botocore's own parser (what boto3 runs on our streams)."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from tuneforge.api.runtime import eventstream


def parse(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def test_events_round_trip_through_botocore_parser() -> None:
    frames = [
        eventstream.event("messageStart", {"role": "assistant"}),
        eventstream.event("contentBlockDelta", {"delta": {"text": "héllo ✓"}, "contentBlockIndex": 0}),
        eventstream.event("chunk", {"bytes": base64.b64encode(b'{"generation": "x"}').decode()}),
    ]
    messages = parse(b"".join(frames))
    assert [h[":event-type"] for h, _ in messages] == ["messageStart", "contentBlockDelta", "chunk"]
    assert all(h[":message-type"] == "event" and h[":content-type"] == "application/json" for h, _ in messages)
    assert json.loads(messages[1][1]) == {"delta": {"text": "héllo ✓"}, "contentBlockIndex": 0}


def test_message_split_across_reads_is_reassembled() -> None:
    frame = eventstream.event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}})
    buffer = EventStreamBuffer()
    messages = []
    for i in range(0, len(frame), 7):
        buffer.add_data(frame[i : i + 7])
        messages.extend(buffer)
    assert len(messages) == 1 and json.loads(messages[0].payload)["usage"]["totalTokens"] == 3


def test_exception_frame_carries_type_and_message() -> None:
    ((headers, payload),) = parse(eventstream.exception("modelStreamErrorException", "engine went away"))
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "modelStreamErrorException"
    assert json.loads(payload) == {"message": "engine went away"}


def test_corrupted_frame_fails_the_checksum() -> None:
    frame = bytearray(eventstream.event("messageStop", {"stopReason": "end_turn"}))
    frame[-6] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        parse(bytes(frame))


def test_boto3_parses_a_converse_stream_body() -> None:
    """botocore's response parser turns the frames into the dicts users iterate over."""
    import botocore.session
    from botocore.eventstream import EventStream
    from botocore.parsers import EventStreamJSONParser

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    output = model.operation_model("ConverseStream").output_shape.members["stream"]
    body = b"".join(
        [
            eventstream.event("messageStart", {"role": "assistant"}),
            eventstream.event("contentBlockDelta", {"delta": {"text": "hi"}, "contentBlockIndex": 0}),
            eventstream.event("contentBlockStop", {"contentBlockIndex": 0}),
            eventstream.event("messageStop", {"stopReason": "end_turn"}),
            eventstream.event(
                "metadata",
                {"usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}, "metrics": {"latencyMs": 5}},
            ),
        ]
    )

    class Raw:
        def stream(self) -> list[bytes]:
            return [body]

    events = list(EventStream(Raw(), output, EventStreamJSONParser(), "ConverseStream"))
    assert [next(iter(e)) for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[1]["contentBlockDelta"]["delta"]["text"] == "hi"
    assert events[4]["metadata"]["usage"]["totalTokens"] == 4
