"""Training precision and utilisation: which dtype to compute in, and how close a step runs to the hardware's peak.

**Precision.** ``precision=auto`` (the default) computes in bf16 under ``torch.autocast`` wherever the
hardware has native bf16 arithmetic (CUDA devices that support it; CPUs with AVX-512 BF16 or AMX),
else in fp32. Weights, gradients and optimizer state stay fp32 either way (autocast only lowers the
matmuls), so updates are not lost to bf16 rounding, and transformers' loss upcasts the logits to
fp32. Measured on the project's 2-core CPU (forge-small, LoRA, batch 8, records of 82-512 tokens):
bf16 autocast 3,750-4,390 real tokens/s against fp32's 2,930-3,410 in the same process.

**MFU** (model FLOPs utilisation) = model FLOPs per step / step time / peak FLOP/s, counting only
real (non-padding) tokens, so padding shows up as lost utilisation instead of inflating it. Model
FLOPs follow the usual rule: 6·N per token for full training (forward 2·N, backward 4·N), 4·N for
LoRA (frozen weights get no weight gradients), plus attention's 12·L·H·T per token of a row of T
tokens (L layers, width H); N leaves out the input embedding table (a lookup, not a matmul). The
peak is the card's dense bf16 spec for known GPUs, and otherwise a matmul measured once per
process in the training dtype (CPUs have no useful spec figure).
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

Precision = Literal["bf16", "fp32"]

GPU_PEAK_BF16_FLOPS: dict[str, float] = {
    # Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity). Names are matched as
    # whole words of the device name, first match wins: the PCIe and NVL boards come before the SXM
    # part they share a name with.
    "H200": 989e12,
    "H100 PCIE": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
}


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware rather than being emulated (and so would be slower).

    CUDA: compute capability 8.0 (Ampere) or later; older cards emulate bf16. CPU: AVX-512 BF16 or AMX.
    """
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return False


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto`` -> bf16 where :func:`native_bf16`, else fp32; ``bf16``/``fp32`` as asked."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {requested!r}")
    return "bf16" if requested == "bf16" else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``; nothing for fp32."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def training_device() -> torch.device:
    """Where jobs train: the first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device  # type: ignore[no-any-return]


def spec_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known GPU, from its name; None elsewhere."""
    if device.type != "cuda":
        return None
    return spec_peak_for_name(torch.cuda.get_device_name(device))


def spec_peak_for_name(name: str) -> float | None:
    """The table's peak for a CUDA device name ("NVIDIA H100 80GB HBM3" -> H100), matching whole words."""
    upper = name.upper()
    for key, flops in GPU_PEAK_BF16_FLOPS.items():
        if re.search(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])", upper):
            return flops
    return None


@functools.cache
def measured_peak_flops(device_type: str, precision: Precision, seconds: float = 0.15) -> float:
    """Best matmul FLOP/s over a short burst of square products in the training dtype (1024 on a CPU,
    8192 on a GPU, where smaller products measure launch overhead rather than the peak)."""
    size = 8192 if device_type == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device_type, dtype=dtype)
    b = torch.randn(size, size, device=device_type, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, first-touch of the output
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device, precision: Precision) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU: the GPU's spec when known, else a measured matmul."""
    spec = spec_peak_flops(device)
    if spec is not None:
        return spec, f"{torch.cuda.get_device_name(device)} dense bf16 spec"
    return measured_peak_flops(device.type, precision), f"{precision} matmul measured on {device.type}"


def model_shape(model: Any) -> tuple[int, int]:
    """(layers, hidden width) of a transformers causal LM, for attention FLOPs; (0, 0) if unknown."""
    config = getattr(model, "config", None)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return layers, hidden


class FlopCounter:
    """Model FLOPs of training steps (see the module docstring for the rule).

    N counts the weights that take part in matmuls: the input embedding table is a lookup and is
    left out unless it is tied to the output layer; LoRA adapters (the trainable parameters of a
    model whose base is frozen) add negligible FLOPs and are left out too.
    """

    def __init__(self, model: Any, full: bool) -> None:
        parameters = list(model.parameters())
        frozen_base = any(not p.requires_grad for p in parameters)
        excluded = {id(p) for p in parameters if frozen_base and p.requires_grad}
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if embeddings is not None and (outputs is None or outputs.weight is not embeddings.weight):
            excluded.add(id(embeddings.weight))
        self.parameters = sum(p.numel() for p in parameters if id(p) not in excluded)
        self.per_token = (6 if full else 4) * self.parameters
        self.layers, self.hidden = model_shape(model)

    def rows(self, lengths: Sequence[int]) -> float:
        """FLOPs of one forward + backward over rows of these real lengths."""
        tokens = sum(lengths)
        attention = 12 * self.layers * self.hidden * sum(n * n for n in lengths)
        return float(self.per_token * tokens + attention)
