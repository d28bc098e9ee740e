"""Batch-1 greedy decoding with a static KV cache, and on CUDA a CUDA-graph-captured decode step.

Decoding one token at batch 1 reads every weight once and does almost no arithmetic, so on a GPU the
limit is memory bandwidth, and in eager PyTorch it is far below that: each of the few hundred small
kernels of one step is launched from Python, and launch overhead, not the GPU, sets the pace. The
cure is to launch the whole step as one CUDA graph. A graph replays fixed memory addresses, hence:

- the KV cache is a :class:`transformers.StaticCache` (preallocated to ``max_length``, written in
  place; transformers marks its tensors as static addresses for ``torch.compile``), and positions
  come from the cache's own on-device length counter, so the step's inputs never change shape;
- the step (forward + argmax) is compiled with ``torch.compile(mode="reduce-overhead")``, which
  records and replays CUDA graphs;
- a graph's outputs live in its private memory pool and are overwritten by the next replay, so every
  step starts with ``torch.compiler.cudagraph_mark_step_begin()`` and the next token is cloned out of
  the pool before it is fed back (feeding the previous output straight back is what fails with
  "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run").

The prompt is prefilled eagerly (its length varies; compiling it would recompile per length). Tokens
stay on the device; the host synchronises only every ``check_every`` steps to look for an end token.

Without ``compile_mode`` the same code runs eagerly on any device (how the tests check that its
tokens equal ``generate``'s greedy tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from transformers import StaticCache


class StaticGreedyDecoder:
    """Greedy continuation of one prompt at a time, up to ``max_length`` tokens of prompt + answer."""

    def __init__(
        self,
        model: Any,
        max_length: int,
        *,
        compile_mode: str | None = None,
        backend: str = "inductor",
        fullgraph: bool = True,
    ) -> None:
        self.model = model
        self.max_length = max_length
        self.device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=max_length)
        self.graphs = compile_mode == "reduce-overhead"
        self._step: Callable[[torch.Tensor], torch.Tensor] = self._decode_step
        if compile_mode is not None or backend != "inductor":
            compiled = torch.compile(self._decode_step, mode=compile_mode, backend=backend, fullgraph=fullgraph)
            self._step = compiled

    def _decode_step(self, token: torch.Tensor) -> torch.Tensor:
        """One token in (shape 1x1), the greedy next token out (1x1); the cache advances by one."""
        logits = self.model(input_ids=token, cache=self.cache, use_cache=True).logits
        next_token: torch.Tensor = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        return next_token

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        eos_ids: Collection[int] = (),
        check_every: int = 16,
    ) -> list[int]:
        """The greedy new tokens (an end token included, when one ends the answer)."""
        if not prompt_ids:
            raise ValueError("an empty prompt has nothing to continue")
        if len(prompt_ids) + max_new_tokens > self.max_length:
            raise ValueError(
                f"{len(prompt_ids)} prompt tokens plus {max_new_tokens} new tokens exceed this decoder's "
                f"max_length of {self.max_length}"
            )
        if max_new_tokens <= 0:
            return []
        self.cache.reset()  # type: ignore[no-untyped-call]
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1).logits
        token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        out = torch.empty(max_new_tokens, dtype=torch.long, device=self.device)
        out[0] = token[0, 0]
        stops = torch.tensor(sorted(eos_ids), dtype=torch.long, device=self.device) if eos_ids else None
        written = 1
        for index in range(1, max_new_tokens):
            if stops is not None and index % check_every == 0 and bool(torch.isin(out[:index], stops).any()):
                break
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            token = self._step(token).clone()
            out[index] = token[0, 0]
            written = index + 1
        tokens = [int(t) for t in out[:written].tolist()]
        if eos_ids:
            for index, value in enumerate(tokens):
                if value in eos_ids:
                    return tokens[: index + 1]
        return tokens
