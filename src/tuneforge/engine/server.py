"""One model replica in its own process: ``python -m tuneforge.engine.server --source S --socket P --status F``.

With ``--multi-adapter`` the engine loads the base model ``S`` once, unmerged, and answers each
request with the LoRA adapter its ``adapter`` names (a custom model folder of that base), loaded on
first use into an LRU cache of ``adapter_cache_bytes`` (:mod:`tuneforge.engine.adapters`); requests
for different adapters share one continuous batch. Without it, a request naming an adapter is refused.

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
import functools
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneforge.engine.adapters import AdapterCache, AdapterLoadError, LoraWeights, load_adapter, wrap_for_adapters
from tuneforge.engine.batching import ContinuousBatcher, Event, Sequence
from tuneforge.engine.static_decode import LoneSequenceStep
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import BUILTIN_SOURCE_PREFIX, load_for_inference, trained_format
from tuneforge.serving.protocol import ADAPTER_LOAD_FAILED, GenerationRequest
from tuneforge.settings import Settings, available_cpus

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


def adapter_loader(
    model: Any, source: str, model_id: str | None, shapes: dict[str, tuple[int, int]]
) -> Callable[[Path], LoraWeights]:
    """:func:`load_adapter` for this engine's base, in the model's dtype and on its device."""
    parameter = next(model.parameters())
    return functools.partial(
        load_adapter,
        base_source=source,
        base_model_id=model_id,
        shapes=shapes,
        dtype=parameter.dtype,
        device=parameter.device,
    )


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

    def __init__(self, sock: socket.socket, batcher: ContinuousBatcher, adapters: AdapterCache | None = None) -> None:
        self.sock = sock
        self.batcher = batcher
        self.adapters = adapters

    def send(self, event: Event) -> None:
        self.sock.sendall(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")

    def serve(self) -> None:
        with self.sock, self.sock.makefile("rb") as reader:
            line = reader.readline()
            if not line:
                return
            adapter: LoraWeights | None = None
            try:
                data = json.loads(line)
                if data.get("event") == "stats":
                    self.send(self.stats())
                    return
                request = GenerationRequest.from_json(data)
                adapter = self.adapter(request)
                rendered = self.batcher.render(request, adapter)
                matcher = self.batcher.matcher(request.response_format)
                self.batcher.check_logit_bias(request.logit_bias)
            except AdapterLoadError as exc:
                self.send({"event": "error", "code": ADAPTER_LOAD_FAILED, "adapter": exc.folder, "message": str(exc)})
                return
            except (ValueError, KeyError, TypeError) as exc:
                self.release(adapter)
                self.send({"event": "error", "code": "ValidationException", "message": str(exc)})
                return
            events: queue.SimpleQueue[Event] = queue.SimpleQueue()
            sequence = Sequence(
                request,
                rendered.ids,
                events.put,
                strip_leading_space=rendered.strip_leading_space,
                matcher=matcher,
                adapter=adapter,
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
                    if event["event"] in ("end", "error"):
                        # Released before the last event goes out: a client that asks for stats
                        # once it has its answer sees the adapter free.
                        self.release(adapter)
                        adapter = None
                        self.send(event)
                        return
                    self.send(event)
            except OSError:
                sequence.cancelled.set()  # the client went away: free its row in the batch
            finally:
                self.release(adapter)

    def adapter(self, request: GenerationRequest) -> LoraWeights | None:
        """The request's adapter from the cache (held until :meth:`release`); ValueError on an engine
        that serves one model, AdapterLoadError for a folder that cannot be served."""
        if request.adapter is None:
            return None
        if self.adapters is None:
            raise ValueError(f"this engine serves one model and cannot answer with adapter {request.adapter}")
        return self.adapters.acquire(request.adapter)

    def release(self, adapter: LoraWeights | None) -> None:
        if adapter is not None and self.adapters is not None:
            self.adapters.release(adapter)

    def stats(self) -> Event:
        return {
            "event": "stats",
            "running": self.batcher.running,
            "multi_adapter": self.adapters is not None,
            "adapter_cache": None if self.adapters is None else self.adapters.stats(),
        }


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
    parser.add_argument(
        "--multi-adapter",
        action="store_true",
        help="serve the base model unmerged, with each request's LoRA adapter (GenerationRequest.adapter)",
    )
    parser.add_argument("--model-id", help="the base's catalog id: a multi-adapter engine serves adapters of it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    parent = os.getppid()
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()

    settings = Settings()
    # Never more threads than CPUs this process may run on: the surplus only spins.
    cpus = available_cpus()
    torch.set_num_threads(min(settings.engine_threads, cpus) if settings.engine_threads else max(1, cpus // 2))
    started = time.monotonic()
    try:
        folder = model_folder(args.source, settings)
        model, tokenizer = load_for_inference(folder, settings.models_dir)
        adapters = None
        router = None
        if args.multi_adapter:
            router, shapes = wrap_for_adapters(model)
            adapters = AdapterCache(
                settings.adapter_cache_bytes, adapter_loader(model, args.source, args.model_id, shapes)
            )
        batcher = ContinuousBatcher(
            model, tokenizer, max_batch=settings.engine_max_batch, trained_format=trained_format(folder), router=router
        )
        warm_up(batcher)
        if settings.engine_compiled_decode_tokens and router is None:  # see ContinuousBatcher._hand_to_lone
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
            threading.Thread(target=Connection(client, batcher, adapters).serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
