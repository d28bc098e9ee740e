"""Many LoRA adapters on one unmerged base model: per-row low-rank updates and an LRU adapter cache.

A multi-adapter engine (``python -m tuneforge.engine.server --multi-adapter``) serves every custom
model of one base from a single copy of the base weights. Each projection a LoRA adapter can target
is wrapped in a :class:`MultiLoraLayer`, which computes, for one forward over a mixed batch,

    y = W x  +  scale_i * B_i (A_i x)      for the rows whose request uses adapter i

(S-LoRA / Punica style): :class:`LoraRouter` lays out the batch's adapters once per batch
composition, and each layer adds every row's update with two batched matmuls. Ranks and scales may
differ per adapter.

Why not peft's mixed-adapter batches (``adapter_names=`` in ``forward``)? Measured on forge-small
(``benchmarks/adapters_bench.py``, docs/performance.md), a decoding-sized forward of 8 rows over 8
adapters took 29.9 ms with peft, 7.3 ms here and 6.0 ms on a merged model: peft registers hooks on
every LoRA layer at every call and loops over the batch's adapters in each layer. And peft's
adapters live inside the model, where loading and evicting them means mutating modules the
batching thread is using. Here an adapter is a plain immutable object (:class:`LoraWeights`) that
a request holds on to, so evicting it from the cache never pulls weights from under a running row.

Adapters load on first use into an :class:`AdapterCache` with a byte budget, least recently used
first out, never one a request in flight holds. A folder that cannot be served (missing or corrupt
files, an adapter of another base model, a LoRA variant this path does not implement) raises
:class:`AdapterLoadError`, whose message names the folder and the reason; the engine answers that
request with an ``AdapterLoadError`` error event and goes on serving everything else.

This module imports torch: it belongs in engine processes.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from tuneforge.model.folders import read_manifest

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_UNSUPPORTED_OPTIONS = ("use_dora", "lora_bias")


class AdapterLoadError(Exception):
    """An adapter folder that cannot be served; the message names the folder and says why."""

    def __init__(self, folder: str, reason: str) -> None:
        super().__init__(f"Adapter {folder} could not be loaded: {reason}")
        self.folder = folder


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """One adapter, loaded: per target module its ``A`` (rank x in), ``B`` (out x rank) and scale."""

    folder: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    trained_format: str | None
    nbytes: int


class LoraRouter:
    """Which rows of the next forward use which adapter; set by the batching thread before each forward.

    Two layouts, chosen per batch composition and kept until it changes (decoding steps between two
    admissions or retirements reuse them):

    - **uniform**: every row uses the same adapter: each layer adds ``scale * B (A x)`` to the whole batch;
    - **stacked** (mixed adapters, or adapters and base rows): per target module, every row's ``A``
      and ``B`` stacked into ``(rows, in, R)`` and ``(rows, R, out)`` tensors, zero-padded to the
      largest rank ``R`` among them, the scale folded into ``B``, zeros for base rows. Each layer
      then adds ``bmm(bmm(x, A), B)``: two batched matmuls however many adapters the batch mixes
      (Punica's BGMV, in plain torch), where a loop over adapters costs four small kernels each
      (measured: 0.52x a merged engine's tokens/s with the loop, 0.80x with this).

    The stacked layout costs memory per row, not per adapter: rows x (in + out) x R per target module
    (at rank 8 with 16 rows: about 16 MB for forge-small, about 160 MB for SmolLM2-135M).
    It lives only while that batch composition runs.
    """

    def __init__(self) -> None:
        self.uniform: LoraWeights | None = None
        self.stacked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rows: list[LoraWeights | None] = []

    def route(self, adapters: list[LoraWeights | None], device: torch.device) -> None:
        if len(adapters) == len(self._rows) and all(a is b for a, b in zip(adapters, self._rows, strict=True)):
            return
        self._rows = list(adapters)
        distinct = list({id(a): a for a in adapters if a is not None}.values())
        self.uniform, self.stacked = None, {}
        if len(distinct) == 1 and all(a is not None for a in adapters):
            self.uniform = distinct[0]
            return
        for name in sorted({module for adapter in distinct for module in adapter.modules}):
            present = [adapter.modules[name] for adapter in distinct if name in adapter.modules]
            rank = max(a.shape[0] for a, _, _ in present)
            a0, b0, _ = present[0]
            stacked_a = torch.zeros((len(adapters), a0.shape[1], rank), dtype=a0.dtype, device=device)
            stacked_b = torch.zeros((len(adapters), rank, b0.shape[0]), dtype=b0.dtype, device=device)
            for row, adapter in enumerate(adapters):
                lora = None if adapter is None else adapter.modules.get(name)
                if lora is not None:
                    a, b, scale = lora
                    stacked_a[row, :, : a.shape[0]] = a.T
                    stacked_b[row, : a.shape[0], :] = b.T * scale
            self.stacked[name] = (stacked_a, stacked_b)


class MultiLoraLayer(torch.nn.Module):
    """A base projection plus, per row, the low-rank update of that row's adapter (if any)."""

    def __init__(self, base: torch.nn.Module, name: str, router: LoraRouter) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.router = router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        uniform = self.router.uniform
        if uniform is not None:
            lora = uniform.modules.get(self.name)
            if lora is not None:
                a, b, scale = lora
                y = y + scale * ((x @ a.T) @ b.T)
            return y
        stacked = self.router.stacked.get(self.name)
        if stacked is not None:
            y = y + torch.bmm(torch.bmm(x, stacked[0]), stacked[1])
        return y


def wrap_for_adapters(model: Any) -> tuple[LoraRouter, dict[str, tuple[int, int]]]:
    """Wrap every linear projection of ``model`` except its output head; return the router and, per
    wrapped module name, its (in, out) features, against which adapters are checked when they load."""
    router = LoraRouter()
    head = model.get_output_embeddings()
    targets: list[tuple[str, torch.nn.Module]] = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    ]
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MultiLoraLayer(module, name, router))
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        out_features, in_features = (
            weight.shape[::-1] if isinstance(module, Conv1D) else weight.shape
        )  # Conv1D: (in, out)
        shapes[name] = (int(in_features), int(out_features))
    return router, shapes


def load_adapter(
    folder: Path,
    *,
    base_source: str,
    base_model_id: str | None = None,
    shapes: dict[str, tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
) -> LoraWeights:
    """Read a custom model folder's LoRA adapter for an engine serving ``base_source``.

    The folder is what a fine-tuning job wrote (:func:`tuneforge.model.folders.save_model`): its
    manifest names the adapter directory, the base model and the data format it was trained on. The
    base must be the engine's: the same catalog id when the engine knows it (``base_model_id``), else
    the same source (``builtin:<name>`` or folder).
    """
    name = str(folder)
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(name, f"its manifest is unreadable ({exc})") from None
    if manifest is None:
        raise AdapterLoadError(name, "it is not a custom model folder (no tuneforge-model.json)")
    if not manifest.get("adapter_dir"):
        raise AdapterLoadError(name, "it holds fully trained weights, not a LoRA adapter")
    if base_model_id is not None:
        if manifest.get("base_model_id") != base_model_id:
            raise AdapterLoadError(
                name, f"it is an adapter of {manifest.get('base_model_id')!r}, and this engine serves {base_model_id!r}"
            )
    elif manifest.get("base_model_source") != base_source:
        raise AdapterLoadError(
            name, f"it is an adapter of {manifest.get('base_model_source')!r}, and this engine serves {base_source!r}"
        )
    adapter_dir = folder / str(manifest["adapter_dir"])
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise AdapterLoadError(name, f"{type(exc).__name__}: {exc}") from None
    for option in _UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise AdapterLoadError(name, f"{option} adapters are not supported on multi-adapter engines")
    if config.get("modules_to_save") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterLoadError(name, "modules_to_save, rank_pattern and alpha_pattern are not supported")
    modules = _lora_modules(name, tensors, config, shapes, dtype, device)
    nbytes = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in modules.values())
    return LoraWeights(name, modules, manifest.get("data_format"), nbytes)


def _lora_modules(
    name: str,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    shapes: dict[str, tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.startswith(_PEFT_PREFIX) and key.endswith(suffix):
                pairs.setdefault(key[len(_PEFT_PREFIX) : -len(suffix)], {})[part] = tensor
                break
        else:
            raise AdapterLoadError(name, f"unexpected tensor {key!r} in {ADAPTER_WEIGHTS}")
    if not pairs:
        raise AdapterLoadError(name, f"{ADAPTER_WEIGHTS} holds no LoRA weights")
    alpha = float(config.get("lora_alpha", 8))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, pair in pairs.items():
        if module not in shapes:
            raise AdapterLoadError(name, f"it targets {module!r}, which the base model has no projection for")
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterLoadError(name, f"{module!r} lacks half of its LoRA pair")
        a, b = pair["lora_A"], pair["lora_B"]
        features_in, features_out = shapes[module]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != features_in or b.shape != (features_out, rank):
            raise AdapterLoadError(
                name,
                f"{module!r} has LoRA shapes {tuple(a.shape)} and {tuple(b.shape)}, which do not fit its "
                f"{features_in} -> {features_out} projection",
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterLoadError(name, f"{module!r} has non-finite LoRA weights")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[module] = (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype), scale)
    return modules


@dataclass
class _Entry:
    weights: LoraWeights
    users: int = 0


@dataclass
class AdapterCache:
    """Adapters by folder, least recently used first, within ``budget_bytes``.

    :meth:`acquire` loads an adapter on first use (outside the lock, so a slow load never blocks
    other requests) and pins it until :meth:`release`: eviction skips adapters that requests hold.
    When pinned adapters alone exceed the budget the cache holds more than it for a while, rather
    than refusing requests; the excess goes as soon as they are released.
    """

    budget_bytes: int
    loader: Callable[[Path], LoraWeights]
    """:func:`load_adapter` with the engine's base bound."""
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    loads: int = 0
    evictions: int = 0

    def acquire(self, folder: str) -> LoraWeights:
        with self._lock:
            entry = self._entries.get(folder)
            if entry is not None:
                entry.users += 1
                self._entries.move_to_end(folder)
                return entry.weights
        try:
            weights = self.loader(Path(folder))
        except AdapterLoadError:
            raise
        except Exception as exc:  # out of memory, a tensor torch cannot convert: still this adapter's failure
            raise AdapterLoadError(folder, f"{type(exc).__name__}: {exc}") from exc
        if weights.nbytes > self.budget_bytes:
            raise AdapterLoadError(
                folder, f"it needs {weights.nbytes} bytes, more than the adapter cache's budget of {self.budget_bytes}"
            )
        with self._lock:
            entry = self._entries.get(folder)
            if entry is None:  # another request may have loaded it meanwhile: keep one copy
                entry = self._entries[folder] = _Entry(weights)
                self.loads += 1
            entry.users += 1
            self._entries.move_to_end(folder)
            self._evict()
            return entry.weights

    def release(self, weights: LoraWeights) -> None:
        with self._lock:
            entry = self._entries.get(weights.folder)
            if entry is not None and entry.weights is weights:
                entry.users -= 1
            self._evict()

    def _evict(self) -> None:
        held = sum(e.weights.nbytes for e in self._entries.values())
        for folder in list(self._entries):
            if held <= self.budget_bytes:
                return
            entry = self._entries[folder]
            if entry.users == 0:
                del self._entries[folder]
                held -= entry.weights.nbytes
                self.evictions += 1

    def stats(self) -> dict[str, Any]:
        """What the cache holds, least recently used first (the engine's ``stats`` answer)."""
        with self._lock:
            return {
                "budget_bytes": self.budget_bytes,
                "held_bytes": sum(e.weights.nbytes for e in self._entries.values()),
                "loads": self.loads,
                "evictions": self.evictions,
                "adapters": [
                    {"adapter": folder, "bytes": e.weights.nbytes, "in_use": e.users}
                    for folder, e in self._entries.items()
                ],
            }
