"""Continuous batching with a KV cache: many requests share every forward pass of one model.

Decoding one token costs nearly the same for 1 sequence as for 8 on these small models (and on a
GPU up to far larger batches): each step is dominated by reading the weights and by per-operator
overhead, not by arithmetic. So an engine keeps one running batch and, **at every step**:

1. **admits** waiting requests: their prompts are prefilled together (left-padded, one forward that
   fills a fresh KV cache), and that cache is merged into the running one;
2. **decodes** one token for every running sequence with a single forward over the merged cache;
3. **retires** finished sequences (end of sequence, ``max_tokens``, a stop sequence, or the client
   went away) by dropping their rows from the cache.

A request therefore never waits for another to finish (unlike static batching), and nobody decodes
alone while others queue (unlike one-request-at-a-time).

**Left padding and position ids.** Sequences of different lengths share one cache of length ``L``:
each row is left-padded, the attention mask hides the padding, and position ids are passed
explicitly (the number of real tokens before each one), so a prompt gets the same positions, and
the same greedy answer, alone or in a batch. Merging two caches pads the shorter one on the left;
retiring rows trims columns that became padding for everyone, so ``L`` stays the longest live row.

**Sampling** is per row: frequency and presence penalties and a logit bias adjust the row's
logits first (OpenAI's definitions); then temperature 0 is greedy; otherwise temperature, then top-k, then top-p
(nucleus), with a per-request generator when a seed is given. A request with a ``response_format``
has its row's logits masked by its grammar first (:mod:`tuneforge.engine.constrained`), so greedy
and sampled decoding alike only pick tokens that keep the output valid JSON. Logprobs, when asked
for, are the model's own distribution (before penalties, bias, temperature and the grammar mask).

This module needs torch; it runs in engine processes (:mod:`tuneforge.engine.server`) and tests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from tuneforge.engine.adapters import LoraRouter, LoraWeights
from tuneforge.engine.constrained import Grammars, Matcher
from tuneforge.engine.static_decode import LoneSequenceStep
from tuneforge.model.prompts import RenderedPrompt, encode_prompt, end_of_turn_ids, serving_prompt
from tuneforge.serving.protocol import GenerationRequest, StopReason

log = logging.getLogger(__name__)

Event = dict[str, Any]
Sink = Callable[[Event], None]


@dataclass(eq=False)
class Sequence:
    """One request inside the engine: its tokens so far and where its events go."""

    request: GenerationRequest
    prompt_ids: list[int]
    sink: Sink
    strip_leading_space: bool = False
    """The plain template ends with ``Assistant:`` and trains answers as `` <text>``: that one
    space belongs to the template, not to the answer (:class:`RenderedPrompt`)."""
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    accepted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    """When the first token (possibly end of sequence) was sampled: queueing and prefill end here."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    matcher: Matcher | None = None
    """The grammar of the request's ``response_format``, if any."""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    """One entry per generated token (EOS aside), when the request asked for logprobs."""
    logprobs_sent: int = 0
    prompt_logprobs: list[dict[str, Any]] = field(default_factory=list)
    adapter: LoraWeights | None = None
    """The LoRA adapter this row decodes with on a multi-adapter engine (None: the base model)."""
    stop_token: int | None = None
    """The end-of-turn token that ended the answer, if one did (it is not in ``generated``)."""

    def __post_init__(self) -> None:
        if self.request.seed is not None:
            self.generator = torch.Generator().manual_seed(self.request.seed)


class ContinuousBatcher:
    """Owns the model and the running batch; :meth:`run` is the engine's generation loop."""

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        max_batch: int = 16,
        *,
        trained_format: str | None = None,
        router: LoraRouter | None = None,
    ) -> None:
        self.model = model
        self.router = router
        """A multi-adapter engine's (:mod:`tuneforge.engine.adapters`): told each forward's rows' adapters."""
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.trained_format = trained_format
        """The data format a custom model was trained on (:func:`tuneforge.model.folders.trained_format`)."""
        self.context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        """Where the model's weights are: batches and cache indices are built there."""
        self.grammars = Grammars(tokenizer, int(model.config.vocab_size))
        self._pieces = _TokenPieces(tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._waiting: queue.Queue[Sequence] = queue.Queue()
        self._active: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self.lone: LoneSequenceStep | None = None
        """The compiled step a lone sequence decodes with once it is ready (see :meth:`_hand_to_lone`)."""
        self._lone_active = False
        """Whether the running sequence's cache lives in :attr:`lone` (then ``_cache`` is None)."""

    # -- submission (any thread) ----------------------------------------------------------------

    def render(self, request: GenerationRequest, adapter: LoraWeights | None = None) -> RenderedPrompt:
        """The request's prompt as the model (or the ``adapter`` answering it) was trained to see it
        (:func:`serving_prompt`); ValueError when the chat template refuses the conversation or the
        prompt plus ``max_tokens`` exceed the context."""
        with self._tokenizer_lock:
            rendered = serving_prompt(
                self.tokenizer,
                prompt=request.prompt,
                conversation=request.conversation,
                trained_format=self.trained_format if adapter is None else adapter.trained_format,
            )
        self._check_context(rendered.ids, request.max_tokens)
        return rendered

    def tokenize(self, prompt: str, max_tokens: int) -> list[int]:
        """A raw prompt's token ids, or ValueError when prompt plus ``max_tokens`` exceed the context."""
        with self._tokenizer_lock:
            ids = encode_prompt(self.tokenizer, prompt)
        self._check_context(ids, max_tokens)
        return ids

    def _check_context(self, ids: list[int], max_tokens: int) -> None:
        if len(ids) + max_tokens > self.context:
            raise ValueError(
                f"Input is too long for requested model: {len(ids)} prompt tokens plus {max_tokens} "
                f"max tokens exceed the model's context of {self.context} tokens"
            )

    def check_logit_bias(self, logit_bias: dict[int, float] | None) -> None:
        """ValueError for a token id outside the model's vocabulary."""
        vocab = self.grammars.vocab_size
        for token in logit_bias or {}:
            if not 0 <= token < vocab:
                raise ValueError(f"logit_bias: token id {token} is outside the model's vocabulary (0..{vocab - 1})")

    def matcher(self, response_format: dict[str, Any] | None) -> Matcher | None:
        """The grammar state for a request's ``response_format``; ValueError when it cannot be honoured."""
        if response_format is None:
            return None
        with self._tokenizer_lock:
            return self.grammars.matcher(response_format)

    def submit(self, sequence: Sequence) -> None:
        self._waiting.put(sequence)

    @property
    def running(self) -> int:
        """Rows still generating (finished rows leave the batch at the end of the step that finished them)."""
        return sum(not s.cancelled.is_set() for s in list(self._active))

    # -- the loop (one thread) ------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._active:
                try:
                    first = self._waiting.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._waiting.put(first)
            try:
                self.step()
            except Exception as exc:
                log.exception("generation step failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")

    @torch.inference_mode()
    def step(self) -> None:
        """Admit what is waiting (up to ``max_batch``), then decode one token for everyone."""
        admitted: list[Sequence] = []
        while len(self._active) + len(admitted) < self.max_batch:
            try:
                sequence = self._waiting.get_nowait()
            except queue.Empty:
                break
            if not sequence.cancelled.is_set():
                admitted.append(sequence)
        if admitted:
            self._prefill(admitted)
            self._retire()
        if self._active:
            self._decode()
            self._retire()

    # -- prefill, decode, retire -----------------------------------------------------------------

    def _prefill(self, group: list[Sequence]) -> None:
        width = max(len(s.prompt_ids) for s in group)
        ids = torch.full((len(group), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(group), width), dtype=torch.long, device=self.device)
        for row, sequence in enumerate(group):
            n = len(sequence.prompt_ids)
            ids[row, width - n :] = torch.tensor(sequence.prompt_ids)
            mask[row, width - n :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        # Only the last position's logits pick the first token; the output layer over every prompt
        # position (a 49k-word vocabulary costs a quarter of SmolLM2's prefill) is paid only when a
        # request asks for the prompt's logprobs. 0 keeps all positions.
        keep = 0 if any(s.request.prompt_logprobs for s in group) else 1
        self._route(group)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        first = self._sample(out.logits[:, -1, :], group)
        for row, sequence in enumerate(group):
            if sequence.request.prompt_logprobs:
                n = len(sequence.prompt_ids)
                self._prompt_logprobs(sequence, out.logits[row, width - n : width - 1])
        if self._lone_active:  # someone joins the lone sequence: its cache goes back to the dynamic one
            assert self.lone is not None
            self._cache, self._lone_active = self._rebuild(self.lone.export()), False
        if self._cache is None or self._mask is None or self._last is None:
            self._cache, self._mask, self._last = out.cache, mask, first
        else:
            self._cache, self._mask = self._merge(self._cache, self._mask, out.cache, mask)
            self._last = torch.cat([self._last, first])
        self._active.extend(group)
        for sequence, token in zip(group, first.tolist(), strict=True):
            self._accept(sequence, token)

    def _decode(self) -> None:
        assert self._mask is not None and self._last is not None
        if self._lone_active or self._hand_to_lone():
            assert self.lone is not None
            logits = self.lone.step(self._last[:, None])
            self._mask = torch.cat([self._mask, self._mask.new_ones((1, 1))], dim=1)
        else:
            assert self._cache is not None
            positions = self._mask.sum(1, keepdim=True)
            self._mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
            self._route(self._active)
            out = self.model(
                input_ids=self._last[:, None],
                attention_mask=self._mask,
                position_ids=positions,
                cache=self._cache,
                use_cache=True,
            )
            self._cache = out.cache
            logits = out.logits[:, -1, :]
        self._last = self._sample(logits, self._active)
        for sequence, token in zip(self._active, self._last.tolist(), strict=True):
            self._accept(sequence, token)

    def _hand_to_lone(self) -> bool:
        """Move a lone sequence's cache into the compiled step, when it is ready and the sequence fits
        it: a single-model engine (a multi-adapter one routes rows through its adapters, which the
        compiled graph does not), no padding, prompt plus ``max_tokens`` within its length."""
        lone = self.lone
        if lone is None or not lone.ready.is_set() or len(self._active) != 1 or self._cache is None:
            return False
        if self.router is not None:
            return False
        assert self._mask is not None
        sequence = self._active[0]
        if sequence.request.adapter is not None or not bool(self._mask.all()):
            return False
        if not lone.fits(len(sequence.prompt_ids) + sequence.request.max_tokens):
            return False
        lone.load(_kv(self._cache))
        self._cache, self._lone_active = None, True
        return True

    def _route(self, rows: list[Sequence]) -> None:
        if self.router is not None:
            self.router.route([s.adapter for s in rows], self.device)

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self._active) if not s.cancelled.is_set()]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._last = None
            self._lone_active = False
            return
        assert self._cache is not None and self._mask is not None and self._last is not None
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, rows)
        start = int((mask.sum(0) > 0).nonzero()[0].item())
        self._mask = mask[:, start:]
        self._last = self._last.index_select(0, rows)
        self._cache = self._rebuild(
            [
                (k.index_select(0, rows)[:, :, start:], v.index_select(0, rows)[:, :, start:])
                for k, v in _kv(self._cache)
            ]
        )

    def _merge(
        self, cache_a: DynamicCache, mask_a: torch.Tensor, cache_b: DynamicCache, mask_b: torch.Tensor
    ) -> tuple[DynamicCache, torch.Tensor]:
        width = max(mask_a.shape[1], mask_b.shape[1])
        pad_a, pad_b = width - mask_a.shape[1], width - mask_b.shape[1]
        layers = [
            (
                torch.cat([_pad_left(ka, pad_a), _pad_left(kb, pad_b)]),
                torch.cat([_pad_left(va, pad_a), _pad_left(vb, pad_b)]),
            )
            for (ka, va), (kb, vb) in zip(_kv(cache_a), _kv(cache_b), strict=True)
        ]
        mask = torch.cat(
            [torch.nn.functional.pad(mask_a, (pad_a, 0)), torch.nn.functional.pad(mask_b, (pad_b, 0))], dim=0
        )
        return self._rebuild(layers), mask

    def _rebuild(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        return DynamicCache(layers, config=self.model.config)

    # -- tokens -> events ------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, sequences: list[Sequence]) -> torch.Tensor:
        raw = logits
        if any(s.matcher is not None or _adjusts(s.request) for s in sequences):
            logits = logits.clone()
            for row, sequence in enumerate(sequences):
                if _adjusts(sequence.request):
                    self._adjust(logits[row], sequence)
                if sequence.matcher is not None:
                    allowed = sequence.matcher.allowed().to(logits.device)
                    logits[row, : allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
                    logits[row, allowed.shape[0] :] = float("-inf")
        tokens = logits.argmax(dim=-1)
        for row, sequence in enumerate(sequences):
            temperature = sequence.request.temperature
            if temperature <= 0:
                continue
            probs = torch.softmax(logits[row].float() / temperature, dim=-1)
            top_k = sequence.request.top_k
            if top_k is not None and top_k < probs.shape[0]:
                kth = torch.topk(probs, top_k).values[-1]
                probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
            top_p = sequence.request.top_p
            if top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs > top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            if sequence.generator is not None:  # a seeded request's generator lives on the CPU
                probs = probs.cpu()
            tokens[row] = torch.multinomial(probs, 1, generator=sequence.generator)[0]
        for row, sequence in enumerate(sequences):
            if sequence.request.logprobs is not None and not sequence.cancelled.is_set():
                token = int(tokens[row])
                if token not in self.eos_ids:
                    logprobs = torch.log_softmax(raw[row].float(), dim=-1)
                    sequence.logprobs.append(self._logprob_entry(logprobs, token, sequence.request.logprobs))
        return tokens

    def _adjust(self, logits: torch.Tensor, sequence: Sequence) -> None:
        """OpenAI's penalties over the tokens generated so far, then the request's logit bias, in place."""
        request = sequence.request
        if sequence.generated and (request.frequency_penalty or request.presence_penalty):
            ids = torch.tensor(sequence.generated, device=logits.device)
            counts = torch.bincount(ids, minlength=logits.shape[0])[: logits.shape[0]].to(logits.dtype)
            logits -= request.frequency_penalty * counts + request.presence_penalty * (counts > 0).to(logits.dtype)
        for token, bias in (request.logit_bias or {}).items():
            logits[token] += bias

    def _logprob_entry(self, logprobs: torch.Tensor, token: int, top: int) -> dict[str, Any]:
        entry = self._pieces.entry(token, float(logprobs[token]))
        if top > 0:
            values, ids = torch.topk(logprobs, min(top, logprobs.shape[0]))
            alternatives = zip(ids.tolist(), values.tolist(), strict=True)
            entry["top_logprobs"] = [self._pieces.entry(i, v) for i, v in alternatives]
        else:
            entry["top_logprobs"] = []
        return entry

    def _prompt_logprobs(self, sequence: Sequence, logits: torch.Tensor) -> None:
        """Entries for the prompt's tokens; ``logits`` are the prefill's outputs before each token from
        the second on. A leading ``<bos>`` is not text: it gets no entry, and the first text token its
        logprob after it; without a ``<bos>`` the first token's logprob is None, as OpenAI reports it."""
        ids = sequence.prompt_ids
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = sequence.request.logprobs or 0
        bos = self.tokenizer.bos_token_id is not None and ids[:1] == [self.tokenizer.bos_token_id]
        if not bos and ids:
            sequence.prompt_logprobs.append({**self._pieces.entry(ids[0], None), "top_logprobs": []})
        for position, token in enumerate(ids[1:]):
            sequence.prompt_logprobs.append(self._logprob_entry(logprobs[position], token, top))

    def _accept(self, sequence: Sequence, token: int) -> None:
        """Append one token; emit text, or finish the sequence (marking it for retirement)."""
        if sequence.cancelled.is_set():
            return
        if sequence.first_token_at is None:
            sequence.first_token_at = time.monotonic()
        if token in self.eos_ids:
            sequence.stop_token = token
            self._finish(sequence, self._text(sequence), "end_turn")
            return
        if sequence.matcher is not None:
            sequence.matcher.accept(token)
        sequence.generated.append(token)
        text = self._text(sequence)
        for stop in sequence.request.stop:
            at = text.find(stop)
            if at >= 0:
                self._finish(sequence, text[:at], "stop_sequence")
                return
        if len(sequence.generated) >= sequence.request.max_tokens:
            self._finish(sequence, text, "max_tokens")
            return
        if sequence.request.stream:
            safe = _safe_length(text, sequence.request.stop)
            if safe > sequence.emitted_chars:
                sequence.sink(self._text_event(sequence, text[sequence.emitted_chars : safe]))
                sequence.emitted_chars = safe

    def _finish(self, sequence: Sequence, text: str, reason: StopReason) -> None:
        if sequence.request.stream and (
            len(text) > sequence.emitted_chars or len(sequence.logprobs) > sequence.logprobs_sent
        ):
            sequence.sink(self._text_event(sequence, text[sequence.emitted_chars :]))
        end: Event = {
            "event": "end",
            "text": text,
            "stop_reason": reason,
            "input_tokens": len(sequence.prompt_ids),
            "output_tokens": len(sequence.generated),
            "first_token_s": round((sequence.first_token_at or time.monotonic()) - sequence.accepted_at, 6),
        }
        if sequence.request.logprobs is not None:
            end["logprobs"] = sequence.logprobs
        if sequence.request.prompt_logprobs:
            end["prompt_logprobs"] = sequence.prompt_logprobs
        sequence.sink(end)
        sequence.cancelled.set()

    @staticmethod
    def _text_event(sequence: Sequence, text: str) -> Event:
        event: Event = {"event": "text", "text": text, "output_tokens": len(sequence.generated)}
        if sequence.request.logprobs is not None:
            event["logprobs"] = sequence.logprobs[sequence.logprobs_sent :]
            sequence.logprobs_sent = len(sequence.logprobs)
        return event

    def _text(self, sequence: Sequence) -> str:
        text = str(self.tokenizer.decode(sequence.generated, skip_special_tokens=True))
        return text[1:] if sequence.strip_leading_space and text.startswith(" ") else text

    def _fail_all(self, message: str) -> None:
        for sequence in self._active:
            if not sequence.cancelled.is_set():
                sequence.sink({"event": "error", "code": "ModelErrorException", "message": message})
                sequence.cancelled.set()
        self._active = []
        self._cache = self._mask = self._last = None


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values); the engine serves decoders whose layers all keep plain KV tensors."""
    out = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"continuous batching needs plain key/value cache layers, not {type(layer).__name__}")
        out.append((layer.keys, layer.values))
    return out


def _pad_left(states: torch.Tensor, columns: int) -> torch.Tensor:
    """Zero key/value columns in front of ``states`` (batch, heads, length, dim); the mask hides them."""
    if columns == 0:
        return states
    return torch.nn.functional.pad(states, (0, 0, columns, 0))


def _safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent now: not a half-decoded character, nor what may begin a stop sequence."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                held = max(held, size)
                break
    return end - held


def _adjusts(request: GenerationRequest) -> bool:
    return bool(request.frequency_penalty or request.presence_penalty or request.logit_bias)


class _TokenPieces:
    """A token's text and bytes for logprobs entries.

    Byte-level BPE vocabularies (GPT-2 style, the built-in family's) spell bytes as printable
    characters; those are mapped back to the token's exact bytes, so a token holding half of a UTF-8
    character reports its real byte. Other tokenizers report the decoded text's bytes.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = type(getattr(backend, "decoder", None)).__name__
        self.byte_level = decoder == "ByteLevel"
        self._to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}

    def entry(self, token: int, logprob: float | None) -> dict[str, Any]:
        data = self.bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "bytes": list(data), "logprob": logprob}

    def bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self.byte_level and isinstance(piece, str) and all(char in self._to_byte for char in piece):
            return bytes(self._to_byte[char] for char in piece)
        return str(self.tokenizer.decode([token], skip_special_tokens=False)).encode("utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def stop_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends an answer: the model's ``eos_token_id`` (generation config and config,
    an int or a list, as Llama 3 lists ``<|eot_id|>`` there), the tokenizer's ``<eos>``, and the
    chat template's end-of-turn token (:func:`end_of_turn_ids`). None of them is ever returned as text."""
    ids = end_of_turn_ids(tokenizer)
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
