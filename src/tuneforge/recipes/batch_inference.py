"""A batch inference job (CreateModelInvocationJob): every JSONL record answered, Bedrock's files out.

1. **read**: each input file (the ``s3Uri`` itself, or every ``.jsonl`` under it when it is a prefix)
   line by line. A record is ``{"recordId": ..., "modelInput": {...}}`` where ``modelInput`` is the
   body InvokeModel takes here (or, with ``modelInvocationType: Converse``, the body Converse
   takes), parsed by the runtime's own parsers (:func:`~tuneforge.api.runtime.protocol.parse_native`,
   :func:`~tuneforge.api.runtime.protocol.parse_converse`). A line that is not JSON, has no
   ``modelInput`` or holds a body InvokeModel would refuse gets an output record with an ``error``
   that names the line, and the job goes on.
2. **generate**: the model loaded as an engine loads it (a custom model is its base with the adapter
   merged, :func:`~tuneforge.model.folders.load_for_inference`), each prompt rendered as the engine
   renders it (:meth:`ContinuousBatcher.render`), and every request answered through
   :func:`~tuneforge.engine.offline.generate_offline`: the engines' continuous batcher in this
   process, at the largest batch the memory budget holds
   (:func:`~tuneforge.jobs.memory.inference_rows`). Greedy answers equal InvokeModel's and Converse's.
3. **write**, under ``<outputDataConfig s3Uri>/<job id>/`` as Bedrock lays it out: ``<input
   name>.out`` per input file (records in input order: ``recordId``, ``modelInput`` and either
   ``modelOutput``, the body InvokeModel or Converse would answer, or ``error`` with ``errorCode``
   and ``errorMessage``), then ``manifest.json.out`` with the counts and tokens.

A stopped job writes what it answered so far, and a manifest that counts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneforge.api.runtime.protocol import (
    Sampling,
    converse_response,
    native_response,
    parse_converse,
    parse_native,
)
from tuneforge.data.jsonl import jsonl_lines
from tuneforge.engine.batching import ContinuousBatcher, Event
from tuneforge.engine.offline import OfflineRequest, generate_offline
from tuneforge.errors import ServiceError, ValidationException
from tuneforge.serving.protocol import GenerationRequest

MANIFEST = "manifest.json.out"
INPUT_SUFFIX = ".jsonl"
OUTPUT_SUFFIX = ".out"


@dataclass
class Record:
    """One non-blank input line: its request, or the error that stands for its answer."""

    file: int
    line: int
    record_id: str
    model_input: Any = None
    request: GenerationRequest | None = None
    result: dict[str, Any] | None = None
    """``{"modelOutput": ...}`` or ``{"error": ...}`` once known."""
    submitted: float = 0.0

    def fail(self, message: str, code: int = 400) -> None:
        self.result = {"error": {"errorCode": code, "errorMessage": f"line {self.line}: {message}"}}

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recordId": self.record_id}
        if self.model_input is not None:
            out["modelInput"] = self.model_input
        out.update(self.result or {})
        return out


@dataclass
class Counts:
    """``manifest.json.out``'s members, also the job's record counts in Get/List."""

    total: int = 0
    success: int = 0
    error: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def processed(self) -> int:
        return self.success + self.error

    def manifest(self) -> dict[str, int]:
        return {
            "totalRecordCount": self.total,
            "processedRecordCount": self.processed,
            "successRecordCount": self.success,
            "errorRecordCount": self.error,
            "inputTokenCount": self.input_tokens,
            "outputTokenCount": self.output_tokens,
        }


def parse_record(file: int, line: int, text: str, invocation_type: str, max_output_tokens: int) -> Record:
    """A record from one JSONL line; on a bad line, a record whose ``result`` is its error."""
    record = Record(file=file, line=line, record_id=f"{line:011d}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        record.fail(f"not valid JSON ({exc})")
        return record
    if not isinstance(data, dict):
        record.fail("a record must be a JSON object with recordId and modelInput")
        return record
    record_id = data.get("recordId")
    if record_id is not None:
        if not isinstance(record_id, str) or not record_id:
            record.fail('"recordId" must be a non-empty string')
            return record
        record.record_id = record_id
    if "modelInput" not in data:
        record.fail('missing key "modelInput" (the InvokeModel request body)')
        return record
    record.model_input = data["modelInput"]
    if not isinstance(record.model_input, dict):
        record.fail('"modelInput" must be a JSON object (the InvokeModel request body)')
        return record
    try:
        record.request = _request(record.model_input, invocation_type, max_output_tokens)
    except ServiceError as exc:
        record.fail(f"modelInput: {exc.message}", code=exc.status)
    return record


def _request(body: dict[str, Any], invocation_type: str, max_output_tokens: int) -> GenerationRequest:
    """The engine request InvokeModel (or Converse) would send for ``body``, parsed by the same code."""
    prompt: str | None = None
    conversation: dict[str, Any] | None = None
    if invocation_type == "Converse":
        converse = parse_converse(body)
        if converse.tools:
            raise ValidationException("toolConfig is not supported in batch inference jobs")
        sampling, conversation, member = converse.sampling, dict(converse.conversation), "inferenceConfig.maxTokens"
    else:
        native = parse_native(body)
        sampling, prompt, member = native.sampling, native.prompt, "max_gen_len"
    max_tokens = max_output_tokens if sampling.max_tokens is None else sampling.max_tokens
    if max_tokens > max_output_tokens:
        raise ValidationException(
            f"Value '{max_tokens}' at '{member}' failed to satisfy constraint: "
            f"Member must have value less than or equal to {max_output_tokens}"
        )
    return _generation_request(sampling, max_tokens, prompt, conversation)


def _generation_request(
    sampling: Sampling, max_tokens: int, prompt: str | None, conversation: dict[str, Any] | None
) -> GenerationRequest:
    return GenerationRequest(
        max_tokens=max_tokens,
        prompt=prompt,
        conversation=conversation,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=sampling.seed,
        top_k=sampling.top_k,
        response_format=sampling.response_format,
    )


def read_records(files: list[tuple[str, bytes]], invocation_type: str, max_output_tokens: int) -> list[list[Record]]:
    """Every non-blank line of every file (name, content) as a record, per file; a line that is not
    UTF-8 is a record whose error names it (its bytes are not guessed at)."""
    out: list[list[Record]] = []
    for index, (_, content) in enumerate(files):
        records = []
        for line in jsonl_lines(content):
            if line.error is not None:
                record = Record(file=index, line=line.number, record_id=f"{line.number:011d}")
                record.fail(line.error)
                records.append(record)
            elif line.text.strip():
                records.append(parse_record(index, line.number, line.text, invocation_type, max_output_tokens))
        out.append(records)
    return out


@dataclass
class BatchRun:
    """Renders and answers the records of one job, counting as it goes."""

    batcher: ContinuousBatcher
    invocation_type: str
    counts: Counts = field(default_factory=Counts)

    def render(self, records: list[Record]) -> list[tuple[Record, OfflineRequest]]:
        """Each valid record's prompt as the engine renders it; a prompt the engine would refuse
        (a chat template that refuses the conversation, too long for the context) is the record's error."""
        ready = []
        for record in records:
            if record.request is None:
                continue
            try:
                rendered = self.batcher.render(record.request)
            except ValueError as exc:
                record.request = None
                record.fail(f"modelInput: {exc}")
                continue
            ready.append((record, OfflineRequest(record.request, rendered.ids, rendered.strip_leading_space)))
        return ready

    def answer(
        self,
        ready: list[tuple[Record, OfflineRequest]],
        should_stop: Callable[[], bool],
        progress: Callable[[Counts], None],
    ) -> bool:
        """Answer every rendered record; False when stopped first."""

        def requests() -> Iterator[tuple[Record, OfflineRequest]]:
            for record, request in ready:
                record.submitted = time.perf_counter()
                yield record, request

        def on_end(record: Record, event: Event) -> None:
            if event["event"] != "end":
                record.fail(str(event.get("message", "the model failed")), code=500)
                self.counts.error += 1
            else:
                record.result = {"modelOutput": self._model_output(record, event)}
                self.counts.success += 1
                self.counts.input_tokens += int(event["input_tokens"])
                self.counts.output_tokens += int(event["output_tokens"])
            progress(self.counts)

        return generate_offline(self.batcher, requests(), on_end, should_stop)

    def _model_output(self, record: Record, end: Event) -> dict[str, Any]:
        text, reason = str(end["text"]), end["stop_reason"]
        input_tokens, output_tokens = int(end["input_tokens"]), int(end["output_tokens"])
        if self.invocation_type == "Converse":
            latency = int((time.perf_counter() - record.submitted) * 1000)
            return converse_response(text, reason, input_tokens, output_tokens, latency)
        return native_response(text, reason, input_tokens, output_tokens)


def output_name(input_name: str) -> str:
    """Bedrock's name for the answers to one input file: ``<input file name>.out``."""
    return f"{input_name}{OUTPUT_SUFFIX}"


def output_lines(records: list[Record]) -> bytes:
    """The answered records of one file, in input order, one JSON object per line."""
    return b"".join(
        json.dumps(record.output(), ensure_ascii=False).encode("utf-8") + b"\n"
        for record in records
        if record.result is not None
    )
