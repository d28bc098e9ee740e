"""The API side of the engine protocol (:mod:`tuneforge.serving.protocol`): asyncio, no torch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from tuneforge.serving.protocol import GenerationRequest

LINE_LIMIT = 64 * 1024 * 1024


class EngineUnavailable(Exception):
    """The engine could not be reached, or it went away before finishing the request."""


async def stream_events(socket_path: Path, request: GenerationRequest) -> AsyncGenerator[dict[str, Any], None]:
    """Send one request and yield the engine's events until ``end`` or ``error``.

    Closing the generator early (a client that hung up) closes the socket, which cancels the
    generation inside the engine.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=LINE_LIMIT)
    except OSError as exc:
        raise EngineUnavailable(f"cannot reach the engine: {exc}") from None
    try:
        writer.write(json.dumps(request.to_json()).encode("utf-8") + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise EngineUnavailable("the engine closed the connection before the response was complete")
            event: dict[str, Any] = json.loads(line)
            yield event
            if event["event"] in ("end", "error"):
                return
    except (ConnectionError, OSError) as exc:
        raise EngineUnavailable(f"lost the engine: {exc}") from None
    finally:
        writer.close()


async def engine_stats(socket_path: Path) -> dict[str, Any]:
    """The engine's ``stats`` answer (:mod:`tuneforge.serving.protocol`): its running rows and adapter cache."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=LINE_LIMIT)
    except OSError as exc:
        raise EngineUnavailable(f"cannot reach the engine: {exc}") from None
    try:
        writer.write(b'{"event": "stats"}\n')
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise EngineUnavailable("the engine closed the connection without its stats")
        stats: dict[str, Any] = json.loads(line)
        return stats
    except (ConnectionError, OSError) as exc:
        raise EngineUnavailable(f"lost the engine: {exc}") from None
    finally:
        writer.close()
