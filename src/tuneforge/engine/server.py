"""One model replica in its own process: ``python -m tuneforge.engine.server --source S --socket P --status F``.

The engine loads the model once (a custom model is its base with the LoRA adapter merged in at
load time, see :func:`tuneforge.model.folders.load_for_inference`), renders each request's prompt
as the model was trained to see it (:func:`tuneforge.model.prompts.serving_prompt`: its chat
template, or the bare prompt for a model trained on prompt/completion records), runs the continuous-batching
loop (:mod:`tuneforge.engine.batching`) in one thread, and answers the API process on a Unix socket
(:mod:`tuneforge.serving.protocol`), one thread per connection.

It reports through a small JSON status file, written atomically: ``{"state": "ready"}`` once the
model is loaded and warmed up, or ``{"state": "failed", "message": ...}`` if loading failed. It exits
by itself when the process that started it is gone, so a killed server never leaves engines behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tuneforge.engine.batching import ContinuousBatcher, Event, Sequence
from tuneforge.engine.static_decode import LoneSequenceStep
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import BUILTIN_SOURCE_PREFIX, load_for_inference, trained_format
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.engine")

PARENT_CHECK_S = 1.0


def write_status(path: Path, state: str, **extra: Any) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({"state": state, "pid": os.getpid(), **extra}))
    os.replace(staging, path)


def model_folder(source: str, settings: Settings) -> Path:
    """``builtin:<name>`` (created offline on first use) or a local folder."""
    if source.startswith(BUILTIN_SOURCE_PREFIX):
        return ensure_builtin(source.removeprefix(BUILTIN_SOURCE_PREFIX), settings.models_dir)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist")
    return folder


def warm_up(batcher: ContinuousBatcher) -> None:
    """One short generation, so the first real request does not pay for lazy initialisation."""
    request = GenerationRequest(prompt="warm up", max_tokens=2)
    done = threading.Event()
    sequence = Sequence(request, batcher.tokenize("warm up", 2), lambda e: done.set() if e["event"] != "text" else None)
    batcher.submit(sequence)
    while not done.is_set():
        batcher.step()


class Connection:
    """One client request on one socket: read the request, relay the engine's events back."""

    def __init__(self, sock: socket.socket, batcher: ContinuousBatcher) -> None:
        self.sock = sock
        self.batcher = batcher

    def send(self, event: Event) -> None:
        self.sock.sendall(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")

    def serve(self) -> None:
        with self.sock, self.sock.makefile("rb") as reader:
            line = reader.readline()
            if not line:
                return
            try:
                request = GenerationRequest.from_json(json.loads(line))
                rendered = self.batcher.render(request)
                matcher = self.batcher.matcher(request.response_format)
                self.batcher.check_logit_bias(request.logit_bias)
            except (ValueError, KeyError, TypeError) as exc:
                self.send({"event": "error", "code": "ValidationException", "message": str(exc)})
                return
            events: queue.SimpleQueue[Event] = queue.SimpleQueue()
            sequence = Sequence(
                request, rendered.ids, events.put, strip_leading_space=rendered.strip_leading_space, matcher=matcher
            )
            try:
                self.send({"event": "start", "input_tokens": len(rendered.ids), "prompt": rendered.text})
                self.batcher.submit(sequence)
                pending: Event | None = None
                while True:
                    event = pending or events.get()
                    pending = None
                    while event["event"] == "text":  # coalesce text that piled up while we were sending
                        try:
                            pending = events.get_nowait()
                        except queue.Empty:
                            break
                        if pending["event"] != "text":
                            break
                        merged = {**pending, "text": event["text"] + pending["text"]}
                        if "logprobs" in pending:
                            merged["logprobs"] = [*event["logprobs"], *pending["logprobs"]]
                        event = merged
                        pending = None
                    self.send(event)
                    if event["event"] in ("end", "error"):
                        return
            except OSError:
                sequence.cancelled.set()  # the client went away: free its row in the batch


def watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            log.warning("the server (pid %d) is gone; engine exiting", parent)
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="builtin:<name> or a model folder")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--status", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    parent = os.getppid()
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()

    settings = Settings()
    torch.set_num_threads(settings.engine_threads or max(1, (os.cpu_count() or 2) // 2))
    started = time.monotonic()
    try:
        folder = model_folder(args.source, settings)
        model, tokenizer = load_for_inference(folder, settings.models_dir)
        batcher = ContinuousBatcher(
            model, tokenizer, max_batch=settings.engine_max_batch, trained_format=trained_format(folder)
        )
        warm_up(batcher)
        if settings.engine_compiled_decode_tokens:
            batcher.lone = LoneSequenceStep(model, min(settings.engine_compiled_decode_tokens, batcher.context))
        args.socket.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(args.socket))
        os.chmod(args.socket, 0o600)
        server.listen(256)
    except Exception as exc:
        log.exception("loading %s failed", args.source)
        write_status(args.status, "failed", message=f"{type(exc).__name__}: {exc}")
        return 1

    stop = threading.Event()
    threading.Thread(target=batcher.run, args=(stop,), name="batcher", daemon=True).start()
    if batcher.lone is not None:  # compiles while the engine already serves, eagerly
        threading.Thread(target=batcher.lone.prepare, name="compile", daemon=True).start()
    write_status(args.status, "ready", load_seconds=round(time.monotonic() - started, 3))
    log.info("serving %s on %s (loaded in %.1f s)", args.source, args.socket, time.monotonic() - started)
    with server:
        while True:
            client, _ = server.accept()
            threading.Thread(target=Connection(client, batcher).serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
