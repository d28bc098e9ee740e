"""The wire protocol between the API process and engine processes: JSON lines on a Unix socket.

One connection carries one generation. The client writes a :class:`GenerationRequest` as one
line; the engine answers with lines, each one event:

- ``{"event": "start", "input_tokens": N, "prompt": "..."}``: the prompt (a conversation rendered
  with the model's template) was tokenized and accepted;
- ``{"event": "text", "text": "...", "output_tokens": M}``: new text (only when the request asked
  to stream), with ``"logprobs": [...]`` for the tokens behind it when the request asked for them;
- ``{"event": "end", "text": "<all of it>", "stop_reason": ..., "input_tokens": N, "output_tokens": M,
  "first_token_s": S}``, where ``S`` is the time from the engine accepting the request (just before
  ``start``) to its first sampled token: the queueing and prefill part of time to first token; with
  ``"logprobs"`` (every generated token) and ``"prompt_logprobs"`` when asked.

A logprobs entry is ``{"token": str, "bytes": [int], "logprob": float, "top_logprobs": [{"token",
"bytes", "logprob"}]}`` (OpenAI's chat shape); a prompt entry's ``logprob`` is None for the first
token, which nothing precedes.
- ``{"event": "error", "code": "ValidationException", "message": "..."}`` instead of ``start``: a
  request the model cannot take (too long for its context, a grammar it cannot follow, an
  ``adapter`` sent to an engine that serves one model);
- ``{"event": "error", "code": "AdapterLoadError", "adapter": "<folder>", "message": "Adapter <folder>
  could not be loaded: <reason>"}`` instead of ``start``, from a multi-adapter engine: the request's
  adapter is missing, corrupt, of another base model or of a LoRA variant the engine does not
  implement. The engine goes on serving every other adapter; the control plane marks that custom
  model's deployment failed with the message;
- ``{"event": "error", "code": "ModelErrorException", "message": "..."}`` after ``start``: the
  generation step failed for the whole running batch.

A connection may instead ask for the engine's state: the client writes ``{"event": "stats"}`` and
the engine answers one line, ``{"event": "stats", "running": N, "multi_adapter": bool,
"adapter_cache": {"budget_bytes", "held_bytes", "loads", "evictions", "adapters": [{"adapter",
"bytes", "in_use"}]} | null}`` (adapters least recently used first), and closes it.

Closing the connection cancels the generation. A Unix socket (mode 0600 in the data directory)
keeps engines unreachable from the network and from other users; the API process is their only
client, so authentication happens once, there.

No torch here: both sides import this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]
"""Converse's names; the native and OpenAI surfaces map them onto their own."""

ADAPTER_LOAD_FAILED = "AdapterLoadError"
"""The ``code`` of the error event a multi-adapter engine answers when it cannot load the request's
``adapter``: the API marks that custom model deployment ``Failed`` with the event's message."""


@dataclass(frozen=True)
class GenerationRequest:
    """Either a raw ``prompt`` the model continues verbatim, or a ``conversation`` the engine renders
    (``{"system": [{"text"}], "messages": [{"role", "content": [{"text"}]}]}``, already checked by
    :func:`tuneforge.serving.conversation.check_conversation`)."""

    max_tokens: int
    prompt: str | None = None
    conversation: dict[str, Any] | None = None
    temperature: float = 0.0
    """0 decodes greedily (the default: deterministic answers); above 0 samples."""
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    stream: bool = False
    seed: int | None = None
    """Any non-negative int below 2**63 (the API maps larger ones into that range)."""
    top_k: int | None = None
    """Sample only among the ``top_k`` most likely tokens (None: all)."""
    logprobs: int | None = None
    """None: no logprobs; k: each generated token's logprob and its ``k`` most likely alternatives."""
    prompt_logprobs: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    """OpenAI's penalties: each generated token's logit is lowered by ``frequency_penalty`` times the
    times it was generated so far, plus ``presence_penalty`` once it was generated at all."""
    logit_bias: dict[int, float] | None = None
    """Added to the logits of these token ids (of the model's own vocabulary) before sampling."""
    """Also the prompt's token logprobs (OpenAI completions' ``echo`` with ``logprobs``)."""
    response_format: dict[str, Any] | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "schema": {...}}``: the output is
    constrained to parse as JSON (matching the schema), see :mod:`tuneforge.engine.constrained`."""
    adapter: str | None = None
    """A multi-adapter engine only: the local folder of the custom model (a LoRA adapter of the
    engine's base model, with its manifest) this request is answered by; None: the base model."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRequest:
        if (data.get("prompt") is None) == (data.get("conversation") is None):
            raise ValueError("a generation request needs exactly one of prompt and conversation")
        return cls(
            max_tokens=int(data["max_tokens"]),
            prompt=None if data.get("prompt") is None else str(data["prompt"]),
            conversation=data.get("conversation"),
            temperature=float(data.get("temperature", 0.0)),
            top_p=float(data.get("top_p", 1.0)),
            stop=tuple(str(s) for s in data.get("stop") or ()),
            stream=bool(data.get("stream", False)),
            seed=None if data.get("seed") is None else int(data["seed"]),
            top_k=None if data.get("top_k") is None else int(data["top_k"]),
            logprobs=None if data.get("logprobs") is None else int(data["logprobs"]),
            prompt_logprobs=bool(data.get("prompt_logprobs", False)),
            response_format=data.get("response_format"),
            frequency_penalty=float(data.get("frequency_penalty", 0.0)),
            presence_penalty=float(data.get("presence_penalty", 0.0)),
            logit_bias=None
            if data.get("logit_bias") is None
            else {int(k): float(v) for k, v in data["logit_bias"].items()},
            adapter=None if data.get("adapter") is None else str(data["adapter"]),
        )
